//! Notifications on their way to their receivers. Each is a file in
//! `data/outbox/` written when its event happens (so a daemon killed at any
//! moment loses none), then sent by one task of the daemon: POSTed as JSON,
//! signed when `notify_secret` is set, retried with back-off while the
//! receiver is down, slow or answers 5xx, in order per job and receiver, and
//! never holding up a job. One that cannot be delivered (a 4xx answer, or a
//! day of failures) moves to `data/outbox/failed/`, where `webjobs
//! notifications` shows it with the reason.

use std::collections::{HashMap, HashSet, VecDeque};
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
    /// The receiver: a URL (empty for a command).
    #[serde(default)]
    pub url: String,
    /// Or a command run by `/bin/sh -c`, the body on its stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
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
    pub fn add(&self, name: &str, event: &crate::events::Event, target: &crate::notify::Target) -> io::Result<()> {
        let body = serde_json::to_value(event).map_err(io::Error::other)?;
        match target {
            crate::notify::Target::Url(url) => self.add_body(name, &event.job, url, body, None),
            crate::notify::Target::Command(command) => {
                self.add_body(name, &event.job, command, body, Some(Via::Command))
            }
        }
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
        via: Option<Via<'_>>,
    ) -> io::Result<()> {
        let hook = match via {
            Some(Via::Hook(hook)) => Some(hook),
            _ => None,
        };
        let command = matches!(via, Some(Via::Command));
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
            url: if command { String::new() } else { url.to_string() },
            command: command.then(|| url.to_string()),
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

/// How a notification is sent when it is not POSTed to a rule's URL.
#[derive(Debug, Clone, Copy)]
pub enum Via<'a> {
    /// To a Kudu web hook (its body is Kudu's own).
    Hook(&'a crate::hooks::Hook),
    /// By running the command given as the receiver.
    Command,
}

impl Delivery {
    /// Who receives it: its URL or its command (a key for order and back-off).
    pub fn receiver(&self) -> &str {
        self.command.as_deref().unwrap_or(&self.url)
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
    commands: Commands,
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
    let commands = std::sync::Arc::new(commands);
    // Receivers that failed: failures in a row, and when to try again.
    let mut down: HashMap<String, (u32, tokio::time::Instant)> = HashMap::new();
    // Deliveries under way, each on its own (a slow receiver or a hanging
    // command holds up only its own job's next ones to it).
    let mut running: tokio::task::JoinSet<(Delivery, Outcome)> = tokio::task::JoinSet::new();
    let mut busy: HashSet<(String, String)> = HashSet::new();
    loop {
        let notified = outbox.wake.notified();
        let room = PARALLEL.saturating_sub(running.len());
        for d in heads(&outbox, &down, &busy, tokio::time::Instant::now(), room) {
            busy.insert((d.job.clone(), d.receiver().to_string()));
            let client = if d.insecure_ssl { clients.1.clone() } else { clients.0.clone() };
            let (secret, commands, dir) = (secret.clone(), commands.clone(), outbox.dir.clone());
            running.spawn(async move {
                let outcome = match &d.command {
                    Some(command) => run_command(command, &d, &commands, &dir).await,
                    None => send(&client, secret.as_deref(), &d).await,
                };
                (d, outcome)
            });
        }
        metrics.notifications_pending(outbox.pending());
        let next = down.values().map(|(_, at)| *at).filter(|at| *at > tokio::time::Instant::now()).min();
        tokio::select! {
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok((delivery, outcome)) = done {
                    busy.remove(&(delivery.job.clone(), delivery.receiver().to_string()));
                    settle(&outbox, &mut down, delivery, outcome, &metrics);
                }
            }
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
    busy: &HashSet<(String, String)>,
    now: tokio::time::Instant,
    room: usize,
) -> Vec<Delivery> {
    let queue = outbox.queue.lock().unwrap_or_else(|e| e.into_inner());
    let mut seen = HashSet::new();
    let mut batch = Vec::new();
    for d in queue.iter() {
        if batch.len() >= room {
            break;
        }
        if !seen.insert((d.job.as_str(), d.receiver())) {
            continue;
        }
        if busy.contains(&(d.job.clone(), d.receiver().to_string())) {
            continue;
        }
        if down.get(d.receiver()).is_some_and(|(_, at)| *at > now) {
            continue;
        }
        batch.push(d.clone());
    }
    batch
}

/// What running notification commands needs.
pub struct Commands {
    /// The data folder (runs' outputs and results are named to the command).
    pub data_dir: PathBuf,
    pub instance: String,
    /// The daemon's run marker prefix: a command left running by a daemon
    /// that was killed is stopped by the next, as runs are.
    pub marker_prefix: String,
}

/// How long a notification command may run before the stop protocol ends it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Between SIGTERM and SIGKILL for a command over its time.
const COMMAND_GRACE: Duration = Duration::from_secs(5);

/// Runs a notification command: `/bin/sh -c COMMAND`, the body on stdin, the
/// run's facts in the environment, its output in `data/outbox/commands.log`.
async fn run_command(command: &str, delivery: &Delivery, commands: &Commands, dir: &Path) -> Outcome {
    let stdin = dir.join(format!(".stdin-{}", delivery.id));
    if let Err(e) = std::fs::write(&stdin, serde_json::to_vec(&delivery.body).unwrap_or_default()) {
        return Outcome::Retry(format!("cannot write the command's stdin: {e}"));
    }
    let text = |key: &str| delivery.body[key].as_str().unwrap_or_default().to_string();
    let run_dir = commands.data_dir.join("jobs").join("triggered").join(&delivery.job).join(text("run"));
    let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = vec![
        ("WEBJOBS_EVENT".into(), delivery.event.clone().into()),
        ("WEBJOBS_JOB_NAME".into(), delivery.job.clone().into()),
        ("WEBJOBS_RUN_ID".into(), text("run").into()),
        ("WEBJOBS_RUN_STATUS".into(), text("status").into()),
        ("WEBJOBS_EXIT_CODE".into(), delivery.body["detail"]["ExitCode"].to_string().replace("null", "").into()),
        ("WEBJOBS_OUTPUT_TAIL".into(), text("output_tail").into()),
    ];
    if !text("run").is_empty() {
        env.push(("WEBJOBS_OUTPUT_PATH".into(), run_dir.join(crate::layout::OUTPUT_LOG).into()));
        let result = run_dir.join(crate::layout::RUN_RESULT);
        if result.exists() {
            env.push(("WEBJOBS_RESULT_FILE".into(), result.into()));
        }
    }
    let process = crate::process::Command {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), command.into()],
        cwd: commands.data_dir.clone(),
        env,
        marker: format!("{}notify/{}", commands.marker_prefix, delivery.id),
        inherit: None,
        stdin: Some(stdin.clone()),
        die_with_daemon: false,
    };
    let mut log = crate::logs::LogFile::lazy(
        &dir.join("commands.log"),
        commands.instance.as_str(),
        Some(crate::logs::Rotation { max_size: 1024 * 1024, keep: 1 }),
    );
    let shutdown_file = dir.join(format!(".shutdown-{}", delivery.id));
    let outcome = match crate::run::Run::start(&process, shutdown_file, 64 * 1024, None, COMMAND_GRACE) {
        Err(e) => Outcome::Retry(format!("cannot start the command: {e}")),
        Ok(mut run) => {
            let what = format!("notification {} ({} of {})", delivery.id, delivery.event, delivery.job);
            log.sys(crate::logs::Level::SysInfo, &format!("{what}: started process {}: {command}", run.pid));
            let timed_out = tokio::time::timeout(COMMAND_TIMEOUT, run.over(&mut log)).await.is_err();
            if timed_out {
                let why = format!("the command took longer than {} s", COMMAND_TIMEOUT.as_secs());
                run.begin_stop(&mut log, COMMAND_GRACE, &why);
                run.over(&mut log).await;
            }
            log.sys(crate::logs::Level::SysInfo, &format!("{what}: {}", run.describe_exit()));
            match (timed_out, run.exit_status().and_then(|s| s.code())) {
                (true, _) => {
                    Outcome::Retry(format!("the command did not end within {} s; stopped", COMMAND_TIMEOUT.as_secs()))
                }
                (false, Some(0)) => Outcome::Delivered,
                _ => Outcome::Retry(format!("the command ended with {}", run.describe_exit())),
            }
        }
    };
    log.flush();
    let _ = std::fs::remove_file(&stdin);
    outcome
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
            down.remove(delivery.receiver());
            let _ = std::fs::remove_file(file(&outbox.dir, &delivery.id));
            done(outbox, &delivery.id);
            metrics.notification("delivered");
        }
        Outcome::Retry(why) if jiff::Timestamp::now().as_millisecond() - delivery.created_ms < GIVE_UP_AFTER_MS => {
            let failures = down.get(delivery.receiver()).map_or(0, |(n, _)| *n) + 1;
            down.insert(delivery.receiver().to_string(), (failures, tokio::time::Instant::now() + backoff(failures)));
            if failures == 1 {
                tracing::warn!(receiver = %delivery.receiver(), error = %why, "a notification receiver failed; trying again with back-off");
            }
            delivery.last_error = Some(why);
            let _ = write(&outbox.dir, &delivery);
            let mut queue = outbox.queue.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(d) = queue.iter_mut().find(|d| d.id == delivery.id) {
                *d = delivery;
            }
        }
        Outcome::Retry(why) | Outcome::GiveUp(why) => {
            tracing::error!(receiver = %delivery.receiver(), id = %delivery.id, error = %why, "a notification was given up");
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
            outbox.add("x", &event, &crate::notify::Target::Url("http://127.0.0.1:9/".into())).unwrap();
        }
        let again = Outbox::open(d.path());
        let statuses: Vec<_> =
            again.queue.lock().unwrap().iter().map(|d| d.body["status"].as_str().unwrap().to_string()).collect();
        assert_eq!(statuses, ["Failed", "Success"]);
        assert_eq!(again.queue.lock().unwrap()[0].body["event"], "x");
    }
}
