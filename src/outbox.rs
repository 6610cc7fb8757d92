//! Notifications on their way to their receivers. Each is a file in
//! `data/outbox/` written when its event happens (so a daemon killed at any
//! moment loses none), then sent by one task of the daemon: POSTed as JSON,
//! signed when `notify_secret` is set, retried with back-off while the
//! receiver is down, slow or answers 5xx, in order per job and receiver, and
//! never holding up a job. One that cannot be delivered (a 4xx answer, or a
//! day of failures) moves to `data/outbox/failed/`, where `webjobs
//! notifications` shows it with the reason.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a receiver has to answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two tries of a receiver that is down: short, so
/// that a backlog goes out soon after it is back.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A notification undelivered this long is given up.
const GIVE_UP_AFTER_MS: i64 = 24 * 3600 * 1000;
/// Deliveries in flight at once (to different jobs or receivers).
const PARALLEL: usize = 32;

/// One notification, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    /// Unique and kept across tries: receivers can tell a repeat.
    pub id: String,
    pub url: String,
    pub job: String,
    /// `failed`, `dead`, … (see [`crate::notify::EVENTS`]).
    pub event: String,
    /// What is POSTed.
    pub body: serde_json::Value,
    pub created_ms: i64,
    pub attempts: u32,
    /// The Kudu web hook it is for ([`crate::hooks`]): dropped at a 410 Gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// The hook asked for certificates not to be checked (Kudu's `insecure_ssl`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_ssl: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The store, and what the sender has yet to send (oldest first).
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    queue: Mutex<VecDeque<Delivery>>,
    wake: tokio::sync::Notify,
}

impl Outbox {
    /// The outbox of data folder `data_dir`, with what a previous life left in it.
    pub fn open(data_dir: &Path) -> Outbox {
        let dir = data_dir.join(crate::layout::OUTBOX);
        let (pending, _) = read(&dir);
        Outbox { dir, queue: Mutex::new(pending.into()), wake: tokio::sync::Notify::new() }
    }

    /// Stores a notification of `event` (named `name`) for `url`; the sender
    /// takes it from there.
    pub fn add(&self, name: &str, event: &crate::events::Event, url: &str) -> io::Result<()> {
        let body = serde_json::to_value(event).map_err(io::Error::other)?;
        self.add_body(name, &event.job, url, body, None)
    }

    /// Stores a notification named `name` about `job` with `body` for `url`
    /// (a JSON object gets its delivery `id` and `event` name, unless it is
    /// for a Kudu `hook`, whose body is Kudu's own).
    pub fn add_body(
        &self,
        name: &str,
        job: &str,
        url: &str,
        mut body: serde_json::Value,
        hook: Option<&crate::hooks::Hook>,
    ) -> io::Result<()> {
        let created_ms = jiff::Timestamp::now().as_millisecond();
        // Ordered by name as they were made (the sequence), unique across lives (the random part).
        static SEQUENCE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1_000_000;
        let id = format!("{created_ms:013}-{seq:06}-{:04x}", crate::queue::random() as u16);
        if let (Some(map), None) = (body.as_object_mut(), &hook) {
            map.insert("id".into(), id.clone().into());
            map.insert("event".into(), name.into());
        }
        let delivery = Delivery {
            id,
            url: url.to_string(),
            job: job.to_string(),
            event: name.to_string(),
            body,
            created_ms,
            attempts: 0,
            hook: hook.map(|h| h.id.clone()),
            insecure_ssl: hook.is_some_and(|h| h.insecure_ssl),
            last_error: None,
        };
        write(&self.dir, &delivery)?;
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).push_back(delivery);
        self.wake.notify_one();
        Ok(())
    }

    /// Notifications waiting to be sent.
    pub fn pending(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The pending and the given-up notifications in `dir` (`data/outbox/`), oldest first.
pub fn read(dir: &Path) -> (Vec<Delivery>, Vec<Delivery>) {
    let load = |dir: &Path| -> Vec<Delivery> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        names.sort();
        names.iter().filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok()).collect()
    };
    (load(dir), load(&dir.join("failed")))
}

fn file(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

/// Writes a delivery whole (a temporary file renamed over it).
fn write(dir: &Path, delivery: &Delivery) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", delivery.id));
    std::fs::write(&tmp, serde_json::to_vec(delivery).map_err(io::Error::other)?)?;
    std::fs::rename(&tmp, file(dir, &delivery.id))
}

/// What came of one try.
#[derive(Debug, PartialEq)]
enum Outcome {
    Delivered,
    /// Worth trying again later (no answer, a timeout, 408, 429, 5xx).
    Retry(String),
    /// Not worth trying again (another 4xx, such as 410 Gone).
    GiveUp(String),
}

fn outcome_of(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::Retry(format!("the receiver answered {status}")),
        _ => Outcome::GiveUp(format!("the receiver answered {status}; not tried again")),
    }
}

/// The wait before trying a receiver again after `failures` failed tries in a row.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(250).saturating_mul(2u32.saturating_pow(failures.min(16))).min(MAX_BACKOFF)
}

/// Sends what is in the outbox, for the life of the daemon.
pub async fn send_forever(
    outbox: std::sync::Arc<Outbox>,
    secret: Option<String>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    let builder =
        || reqwest::Client::builder().timeout(TIMEOUT).user_agent(concat!("webjobs/", env!("CARGO_PKG_VERSION")));
    let clients =
        builder().build().and_then(|checked| Ok((checked, builder().danger_accept_invalid_certs(true).build()?)));
    let clients = match clients {
        Ok(clients) => clients,
        Err(e) => {
            tracing::error!(error = %e, "cannot make the HTTP client of notifications; none will be sent");
            return;
        }
    };
    // Receivers that failed: failures in a row, and when to try again.
    let mut down: HashMap<String, (u32, tokio::time::Instant)> = HashMap::new();
    loop {
        let now = tokio::time::Instant::now();
        let batch = heads(&outbox, &down, now);
        let sent = futures_util::future::join_all(batch.iter().map(|d| {
            let client = if d.insecure_ssl { &clients.1 } else { &clients.0 };
            send(client, secret.as_deref(), d)
        }))
        .await;
        for (delivery, outcome) in batch.into_iter().zip(sent) {
            settle(&outbox, &mut down, delivery, outcome, &metrics);
        }
        metrics.notifications_pending(outbox.pending());
        let next = down.values().map(|(_, at)| *at).min();
        let notified = outbox.wake.notified();
        if !heads(&outbox, &down, tokio::time::Instant::now()).is_empty() {
            continue;
        }
        tokio::select! {
            () = notified => {}
            () = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// The oldest notification of each job and receiver, where the receiver may be tried now.
fn heads(
    outbox: &Outbox,
    down: &HashMap<String, (u32, tokio::time::Instant)>,
    now: tokio::time::Instant,
) -> Vec<Delivery> {
    let queue = outbox.queue.lock().unwrap_or_else(|e| e.into_inner());
    let mut seen = std::collections::HashSet::new();
    let mut batch = Vec::new();
    for d in queue.iter() {
        if !seen.insert((d.job.as_str(), d.url.as_str())) {
            continue;
        }
        if down.get(&d.url).is_some_and(|(_, at)| *at > now) {
            continue;
        }
        batch.push(d.clone());
        if batch.len() == PARALLEL {
            break;
        }
    }
    batch
}

async fn send(client: &reqwest::Client, secret: Option<&str>, delivery: &Delivery) -> Outcome {
    let body = serde_json::to_vec(&delivery.body).unwrap_or_default();
    let mut request = client
        .post(&delivery.url)
        .header("content-type", "application/json")
        .header("x-webjobs-event", &delivery.event)
        .header("x-webjobs-delivery", &delivery.id);
    if let Some(secret) = secret {
        request = request.header("x-webjobs-signature", signature(secret, &body));
    }
    match request.body(body).send().await {
        Ok(answer) => outcome_of(answer.status().as_u16()),
        Err(e) if e.is_timeout() => Outcome::Retry(format!("no answer within {} s", TIMEOUT.as_secs())),
        Err(e) => Outcome::Retry(describe(&e)),
    }
}

/// An error with its causes (reqwest's own text says little: "error sending request").
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` with `secret` (GitHub's form).
pub fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Takes in the outcome of a try: the file removed, kept for later, or moved to `failed/`.
fn settle(
    outbox: &Outbox,
    down: &mut HashMap<String, (u32, tokio::time::Instant)>,
    mut delivery: Delivery,
    outcome: Outcome,
    metrics: &crate::metrics::Metrics,
) {
    let done = |outbox: &Outbox, id: &str| {
        outbox.queue.lock().unwrap_or_else(|e| e.into_inner()).retain(|d| d.id != id);
    };
    delivery.attempts += 1;
    match outcome {
        Outcome::Delivered => {
            down.remove(&delivery.url);
            let _ = std::fs::remove_file(file(&outbox.dir, &delivery.id));
            done(outbox, &delivery.id);
            metrics.notification("delivered");
        }
        Outcome::Retry(why) if jiff::Timestamp::now().as_millisecond() - delivery.created_ms < GIVE_UP_AFTER_MS => {
            let failures = down.get(&delivery.url).map_or(0, |(n, _)| *n) + 1;
            down.insert(delivery.url.clone(), (failures, tokio::time::Instant::now() + backoff(failures)));
            if failures == 1 {
                tracing::warn!(url = %delivery.url, error = %why, "a notification receiver failed; trying again with back-off");
            }
            delivery.last_error = Some(why);
            let _ = write(&outbox.dir, &delivery);
            let mut queue = outbox.queue.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(d) = queue.iter_mut().find(|d| d.id == delivery.id) {
                *d = delivery;
            }
        }
        Outcome::Retry(why) | Outcome::GiveUp(why) => {
            tracing::error!(url = %delivery.url, id = %delivery.id, error = %why, "a notification was given up");
            if let (Some(hook), true) = (&delivery.hook, why.contains("answered 410"))
                && let Some(data_dir) = outbox.dir.parent()
            {
                // As Kudu does: a receiver that is gone unsubscribes its hook.
                match crate::hooks::remove(data_dir, hook) {
                    Ok(_) => {
                        tracing::info!(hook = %hook, url = %delivery.url, "web hook removed: its receiver answered 410 Gone")
                    }
                    Err(e) => {
                        tracing::error!(hook = %hook, error = %e, "cannot remove a web hook whose receiver is gone")
                    }
                }
            }
            delivery.last_error = Some(why);
            let failed = outbox.dir.join("failed");
            let _ = write(&failed, &delivery);
            let _ = std::fs::remove_file(file(&outbox.dir, &delivery.id));
            done(outbox, &delivery.id);
            metrics.notification("failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decide_between_done_again_and_given_up() {
        assert_eq!(outcome_of(204), Outcome::Delivered);
        assert!(matches!(outcome_of(503), Outcome::Retry(_)));
        assert!(matches!(outcome_of(429), Outcome::Retry(_)));
        assert!(matches!(outcome_of(410), Outcome::GiveUp(_)));
        assert!(matches!(outcome_of(404), Outcome::GiveUp(_)));
    }

    #[test]
    fn back_off_doubles_up_to_five_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(10), MAX_BACKOFF);
    }

    #[test]
    fn the_signature_is_githubs_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn stored_notifications_come_back_in_order() {
        let d = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(d.path());
        let key = crate::key::JobKey { kind: crate::key::JobKind::Triggered, name: "a".into() };
        for status in ["Failed", "Success"] {
            let event = crate::events::Event::about(&key, "run.ended").status(status);
            outbox.add("x", &event, "http://127.0.0.1:9/").unwrap();
        }
        let again = Outbox::open(d.path());
        let statuses: Vec<_> =
            again.queue.lock().unwrap().iter().map(|d| d.body["status"].as_str().unwrap().to_string()).collect();
        assert_eq!(statuses, ["Failed", "Success"]);
        assert_eq!(again.queue.lock().unwrap()[0].body["event"], "x");
    }
}
