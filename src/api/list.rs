//! `GET /api/webjobs`: the job list, rendered off the runtime and served
//! from memory.
//!
//! With thousands of jobs and runs starting every second, the list changes
//! faster than it can be rendered (JSON of 10,000 jobs, and its gzip). So a
//! request is answered at once with the newest body rendered, and a fresh one
//! is rendered in the background (one at a time per variant, at most every
//! [`REFRESH`]); a client therefore sees background changes within a render.
//! Its own writes are another matter: after an API write (deploy, settings,
//! start, stop, delete, run) the list it asks for next is rendered at or after
//! that write ([`ApiState::mark_written`]). A body nobody asked for in
//! [`KEEP`] is dropped ([`expire`]): at ten thousand jobs it is 12 MB of JSON.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use tokio::sync::watch;

use super::views::JobView;
use super::{ApiState, accepts_gzip, base_url, json_response};
use crate::key::JobKind;

/// A rendered body older than this is rendered again (in the background)
/// when asked for and something changed.
const REFRESH: Duration = Duration::from_millis(250);

/// A body not asked for in this long is dropped (the dashboard asks every
/// 3 s while it is open); the next request renders a fresh one.
pub const KEEP: Duration = Duration::from_secs(30);

/// Rendered lists by base URL and kind filter.
pub type Lists = std::sync::Mutex<HashMap<(String, Option<JobKind>), Rendered>>;

/// One variant of the list: the newest body and whether one is being made.
pub struct Rendered {
    /// The change generation the body shows (0: none yet).
    generation: u64,
    at: Instant,
    /// When a client last asked for it (on the runtime's clock, as the
    /// timer that drops it).
    asked: tokio::time::Instant,
    /// The length of the last body made (the next one is sized like it).
    hint: usize,
    body: Option<Bytes>,
    gzip: Option<Bytes>,
    etag: String,
    /// Some client asked for gzip: render it too.
    gzip_wanted: bool,
    rendering: bool,
    /// Sends the generation of each body made.
    done: watch::Sender<u64>,
}

impl Default for Rendered {
    fn default() -> Self {
        Rendered {
            generation: 0,
            at: Instant::now(),
            asked: tokio::time::Instant::now(),
            hint: 0,
            body: None,
            gzip: None,
            etag: String::new(),
            gzip_wanted: false,
            rendering: false,
            done: watch::channel(0).0,
        }
    }
}

pub async fn list(State(state): State<ApiState>, headers: HeaderMap, kind: Option<JobKind>) -> Response {
    let key = (base_url(&headers), kind);
    let gzip = accepts_gzip(&headers);
    let needed = state.written.load(Ordering::Acquire);
    loop {
        let mut made = {
            let mut lists = state.lists.lock().unwrap_or_else(|e| e.into_inner());
            let r = lists.entry(key.clone()).or_default();
            r.gzip_wanted |= gzip;
            r.asked = tokio::time::Instant::now();
            let current = state.shared.generation.load(Ordering::Acquire);
            let usable = r.body.is_some() && r.generation >= needed && (!gzip || r.gzip.is_some());
            let outdated = r.generation < current && r.at.elapsed() >= REFRESH;
            if !r.rendering && (!usable || outdated) {
                r.rendering = true;
                render(state.clone(), key.clone(), r.gzip_wanted);
            }
            if usable {
                let body = r.body.clone().expect("usable");
                let (compressed, etag) = (r.gzip.clone().filter(|_| gzip), r.etag.clone());
                drop(lists);
                return json_response(&headers, body, compressed, &etag);
            }
            r.done.subscribe()
        };
        let _ = made.changed().await;
    }
}

/// Renders the list for `key` off the runtime and keeps it.
fn render(state: ApiState, key: (String, Option<JobKind>), gzip: bool) {
    tokio::task::spawn_blocking(move || {
        // Should the render fail, the next request starts another (nobody waits forever).
        let _unmark = Unmark { state: state.clone(), key: key.clone() };
        let generation = state.shared.generation.load(Ordering::Acquire);
        let catalog = state.catalog.borrow().clone();
        let (base, kind) = &key;
        let views = Views { catalog: &catalog, base, kind: *kind, config: &state.config };
        // Sized like the last body, so that it is not grown by doubling (and
        // kept at up to twice its size) for ten thousand jobs.
        let last = state.lists.lock().unwrap_or_else(|e| e.into_inner()).get(&key).map_or(0, |r| r.hint);
        let mut body = Vec::with_capacity(last + last / 8);
        let _ = serde_json::to_writer(&mut body, &views);
        if body.capacity() > body.len() + body.len() / 4 {
            body.shrink_to_fit();
        }
        let body = Bytes::from(body);
        let etag = format!("\"{:016x}\"", crate::hash::fnv1a(&body));
        let compressed = gzip.then(|| super::gzip(&body));
        let mut lists = state.lists.lock().unwrap_or_else(|e| e.into_inner());
        let r = lists.entry(key).or_default();
        r.hint = body.len();
        (r.generation, r.at, r.body, r.gzip, r.etag, r.rendering) =
            (generation.max(1), Instant::now(), Some(body), compressed, etag, false);
        r.done.send_replace(r.generation);
    });
}

/// The job list, each job's view made as it is written (not all of them
/// first: ten thousand views held at once took more memory than the body).
struct Views<'a> {
    catalog: &'a crate::supervisor::Catalog,
    base: &'a str,
    kind: Option<JobKind>,
    config: &'a crate::config::Config,
}

impl serde::Serialize for Views<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(None)?;
        for entry in self.catalog.jobs.values().filter(|e| self.kind.is_none_or(|k| e.def.key.kind == k)) {
            seq.serialize_element(&JobView::from_catalog(self.base, entry).redacted(self.config))?;
        }
        seq.end()
    }
}

/// Drops the bodies nobody asked for since `now - KEEP`; returns when the
/// next one that is kept would be dropped.
fn drop_unasked(
    lists: &mut HashMap<(String, Option<JobKind>), Rendered>,
    now: tokio::time::Instant,
) -> Option<tokio::time::Instant> {
    let mut next = None::<tokio::time::Instant>;
    for r in lists.values_mut().filter(|r| r.body.is_some()) {
        let until = r.asked + KEEP;
        if until <= now {
            (r.body, r.gzip) = (None, None);
        } else {
            next = Some(next.map_or(until, |n| n.min(until)));
        }
    }
    next
}

/// Drops rendered bodies once nobody asks for them (see [`KEEP`]), until
/// the API's state is gone.
pub async fn expire(lists: std::sync::Weak<Lists>) {
    loop {
        let next = {
            let Some(lists) = lists.upgrade() else { return };
            let mut lists = lists.lock().unwrap_or_else(|e| e.into_inner());
            let now = tokio::time::Instant::now();
            drop_unasked(&mut lists, now).unwrap_or(now + KEEP)
        };
        tokio::time::sleep_until(next).await;
    }
}

/// Clears the "rendering" mark of a list however its render ends.
struct Unmark {
    state: ApiState,
    key: (String, Option<JobKind>),
}

impl Drop for Unmark {
    fn drop(&mut self) {
        let mut lists = self.state.lists.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = lists.get_mut(&self.key)
            && r.rendering
        {
            r.rendering = false;
            r.done.send_modify(|_| {});
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(asked: tokio::time::Instant) -> Rendered {
        Rendered {
            asked,
            body: Some(Bytes::from_static(b"[]")),
            gzip: Some(Bytes::from_static(b"gz")),
            ..Rendered::default()
        }
    }

    #[test]
    fn a_body_nobody_asks_for_is_dropped_after_keep() {
        let t0 = tokio::time::Instant::now();
        let mut lists = HashMap::new();
        lists.insert(("http://a".to_string(), None), rendered(t0));
        lists.insert(("http://b".to_string(), None), rendered(t0 + Duration::from_secs(10)));
        // Both asked for within KEEP: kept; the next drop is the first one's.
        assert_eq!(drop_unasked(&mut lists, t0 + Duration::from_secs(29)), Some(t0 + KEEP));
        assert!(lists.values().all(|r| r.body.is_some() && r.gzip.is_some()));
        // KEEP after the first was asked for: it goes, the other stays.
        let next = drop_unasked(&mut lists, t0 + KEEP);
        assert_eq!(next, Some(t0 + Duration::from_secs(10) + KEEP));
        let a = &lists[&("http://a".to_string(), None)];
        assert!(a.body.is_none() && a.gzip.is_none());
        assert!(lists[&("http://b".to_string(), None)].body.is_some());
        // Nothing left to drop: no next time.
        assert_eq!(drop_unasked(&mut lists, t0 + Duration::from_secs(60)), None);
        assert!(lists.values().all(|r| r.body.is_none()));
    }
}
