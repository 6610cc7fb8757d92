//! What happens to jobs and runs, as one stream of events: the job actors
//! publish (a run queued, started, ended, retried or dead; a job's status),
//! and whoever listens subscribes (the API's `GET /api/events`, server-sent
//! events; `webjobs events`).
//!
//! Publishing never waits for a listener: events go to a broadcast channel,
//! and a listener that falls behind by more than it holds is told how many it
//! missed. The newest [`RECENT`] are kept, so a client that reconnects with
//! the id of the last event it saw (`Last-Event-ID`) gets what it missed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::key::JobKey;

/// Events kept for clients that reconnect.
pub const RECENT: usize = 256;
/// Events a listener may fall behind by before it misses some.
const CAPACITY: usize = 1024;

/// One thing that happened.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increasing within this daemon's life (the SSE `id`).
    pub id: u64,
    pub time: String,
    /// `run.queued`, `run.started`, `run.ended`, `run.retry`, `run.dead`,
    /// `job.status`, `daemon.stopping`, `daemon.stopped` (the last one: the
    /// stream ends).
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub job: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub job_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The queued request the run is an attempt of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The run's or the job's status (`Running`, `Success`, `Failed`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// More about it: the run's status record for `run.started` and
    /// `run.ended`, the request for `run.queued`, the reason for `job.status`.
    /// Kept as JSON text: a few hundred bytes where a parsed value took
    /// kilobytes (the stream keeps the newest [`RECENT`], its channel more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Box<serde_json::value::RawValue>>,
    /// The last lines of the run's output (in notifications of its end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tail: Option<String>,
}

impl Event {
    /// An event about `key`, of `kind`, happening now (its id comes when it is published).
    pub fn about(key: &JobKey, kind: &'static str) -> Event {
        Event {
            id: 0,
            time: crate::logs::format_time(std::time::SystemTime::now()),
            kind,
            job: key.name.to_string(),
            job_type: key.kind.as_str(),
            run: None,
            request: None,
            status: None,
            detail: None,
            output_tail: None,
        }
    }

    /// An event about the daemon itself (`daemon.stopping`, `daemon.stopped`).
    pub fn daemon(kind: &'static str) -> Event {
        Event::about(&JobKey { kind: crate::key::JobKind::Triggered, name: "".into() }, kind).no_job()
    }

    fn no_job(mut self) -> Event {
        self.job_type = "";
        self
    }

    pub fn run(mut self, run: &str) -> Event {
        self.run = Some(run.to_string());
        self
    }

    pub fn request(mut self, request: Option<&str>) -> Event {
        self.request = request.map(str::to_string);
        self
    }

    pub fn status(mut self, status: &str) -> Event {
        self.status = Some(status.to_string());
        self
    }

    pub fn detail(mut self, detail: impl Serialize) -> Event {
        self.detail = serde_json::value::to_raw_value(&detail).ok().filter(|v| v.get() != "null");
        self
    }
}

/// Where events are published and listened to.
#[derive(Debug)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Event>>,
    next: AtomicU64,
    /// The newest events, and the lock that keeps a subscription and a
    /// publication apart (a new listener sees each event once: replayed or live).
    recent: Mutex<VecDeque<Arc<Event>>>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus { tx: broadcast::channel(CAPACITY).0, next: AtomicU64::new(1), recent: Mutex::new(VecDeque::new()) }
    }
}

impl Bus {
    /// Stamps `event` with the next id and sends it to every listener.
    pub fn publish(&self, mut event: Event) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        event.id = self.next.fetch_add(1, Ordering::Relaxed);
        let event = Arc::new(event);
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        let _ = self.tx.send(event);
    }

    /// Listens from now on; with `after` (the id of the last event a client
    /// saw), also the kept events newer than it.
    pub fn subscribe(&self, after: Option<u64>) -> (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let replay = match after {
            Some(after) => recent.iter().filter(|e| e.id > after).cloned().collect(),
            None => Vec::new(),
        };
        (replay, self.tx.subscribe())
    }
}

/// Which events a listener wants: one job's, and/or types starting with a prefix.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub job: Option<String>,
    pub kind: Option<String>,
}

impl Filter {
    pub fn wants(&self, event: &Event) -> bool {
        // The daemon's own events concern every listener.
        if event.kind.starts_with("daemon.") {
            return true;
        }
        self.job.as_ref().is_none_or(|j| *j == event.job)
            && self.kind.as_ref().is_none_or(|k| event.kind.starts_with(k.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::JobKind;

    fn key(name: &str) -> JobKey {
        JobKey { kind: JobKind::Triggered, name: name.into() }
    }

    #[test]
    fn a_listener_that_reconnects_gets_what_it_missed_once() {
        let bus = Bus::default();
        bus.publish(Event::about(&key("a"), "run.queued"));
        bus.publish(Event::about(&key("a"), "run.started").run("r1"));
        let (replay, mut rx) = bus.subscribe(Some(1));
        assert_eq!(replay.iter().map(|e| e.id).collect::<Vec<_>>(), [2]);
        bus.publish(Event::about(&key("b"), "run.ended").run("r2").status("Success"));
        let live = rx.try_recv().unwrap();
        assert_eq!((live.id, live.kind, live.job.as_str()), (3, "run.ended", "b"));
        assert!(rx.try_recv().is_err(), "each event once");
        let (replay, _) = bus.subscribe(None);
        assert!(replay.is_empty(), "no id seen: from now on");
    }

    #[test]
    fn only_the_newest_events_are_kept() {
        let bus = Bus::default();
        for _ in 0..RECENT + 10 {
            bus.publish(Event::about(&key("a"), "run.queued"));
        }
        let (replay, _) = bus.subscribe(Some(0));
        assert_eq!(replay.len(), RECENT);
        assert_eq!(replay[0].id, 11);
    }

    #[test]
    fn filters_by_job_and_type_and_always_pass_the_daemons_own() {
        let filter = Filter { job: Some("a".into()), kind: Some("run.".into()) };
        assert!(filter.wants(&Event::about(&key("a"), "run.ended")));
        assert!(!filter.wants(&Event::about(&key("b"), "run.ended")));
        assert!(!filter.wants(&Event::about(&key("a"), "job.status")));
        assert!(filter.wants(&Event::daemon("daemon.stopping")));
    }
}
