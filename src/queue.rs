//! The durable run queue of a triggered job: what a queued request is, how
//! queued requests are ordered, and when a failed one is tried again.
//!
//! Every run request (API, CLI, schedule tick, retry) is written to the queue
//! before it is acknowledged, and taken from it when it starts; its entry
//! stays (as *taken*) until the run's end decides what follows: nothing
//! (done), another attempt later (requeued), or `Dead` after the last
//! attempt. A daemon killed at any moment leaves every acknowledged request
//! queued or taken; taken entries of a daemon that is gone are recovered as
//! Aborted attempts (at-least-once). Storage is the coordination backend's
//! ([`crate::coordination::JobCoordination`]); this module is plain data.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Priorities run from -100 (last) to 100 (first); the default is 0.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -100..=100;

/// A queued request, as stored (its payload, if any, beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The request's id (sorts by the time it was queued).
    pub id: String,
    #[serde(default)]
    pub priority: i32,
    /// When it was queued, ms since the epoch.
    pub queued_ms: i64,
    /// Not before this time, ms since the epoch: a retry's back-off or a
    /// one-off run's time (`--at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_ms: Option<i64>,
    /// Attempts made so far (0 before the first).
    #[serde(default)]
    pub attempts: u32,
    pub trigger: String,
    #[serde(default)]
    pub arguments: Vec<String>,
    /// The arguments as one string (`WEBJOBS_COMMAND_ARGUMENTS`).
    #[serde(default)]
    pub text: String,
    /// The dedup key: a second request with it is refused while this one is
    /// queued or running (and for the job's `dedup_window` after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Size of the payload, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<u64>,
    /// The runs made for it so far (one per attempt).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<String>,
    /// Why its last attempt failed (a dead request's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The file that triggered it (claimed in its inbox's `.processing/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_file: Option<String>,
    /// The run whose end started it (`then`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<RunRef>,
    /// The jobs of the chain that led to it, oldest first: a job already in
    /// it is not started again (a loop).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
    /// The schedule tick it runs for (`WEBJOBS_TICK`), ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_ms: Option<i64>,
}

/// A run of a job (a chain's parent), or a request (a child).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRef {
    pub job: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

impl Entry {
    pub fn new(trigger: String, arguments: Vec<String>, text: String) -> Entry {
        let now = Timestamp::now();
        Entry {
            id: new_id(now),
            priority: 0,
            queued_ms: now.as_millisecond(),
            due_ms: None,
            attempts: 0,
            trigger,
            arguments,
            text,
            key: None,
            correlation_id: None,
            payload: None,
            runs: Vec::new(),
            error: None,
            trigger_file: None,
            parent: None,
            chain: Vec::new(),
            tick_ms: None,
        }
    }

    /// Where it sits in the queue.
    pub fn slot(&self) -> Slot {
        Slot { priority: self.priority, id: self.id.clone().into_boxed_str(), due_ms: self.due_ms.unwrap_or(0) }
    }
}

/// A queued request as the queue's index knows it: what orders it, no more
/// (its entry is read when it starts). The file name of the entry encodes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Slot {
    pub priority: i32,
    pub id: Box<str>,
    /// Not before this time (ms since the epoch; 0 = at once).
    pub due_ms: i64,
}

impl Slot {
    /// `<100 - priority>-<id>-<due>.run`: names sort as the queue runs.
    pub fn file_name(&self) -> String {
        format!("{:03}-{}-{}.run", 100 - self.priority, self.id, self.due_ms)
    }

    pub fn parse(name: &str) -> Option<Slot> {
        let rest = name.strip_suffix(".run")?;
        let (rank, rest) = rest.split_once('-')?;
        let (id, due) = rest.rsplit_once('-')?;
        let priority = 100 - rank.parse::<i32>().ok()?;
        if !PRIORITY_RANGE.contains(&priority) || id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        Some(Slot { priority, id: id.into(), due_ms: due.parse().ok()? })
    }

    /// The time it was queued (from its id), ms since the epoch.
    pub fn queued_ms(&self) -> Option<i64> {
        self.id.get(..13)?.parse().ok()
    }
}

/// A new request id: the time in ms (13 digits), then a per-process sequence
/// and random bits, so ids sort by time and never clash between daemons.
pub fn new_id(now: Timestamp) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) & 0xffff;
    format!("{:013}{seq:04x}{:06x}", now.as_millisecond().max(0), random() & 0xff_ffff)
}

/// Random bits (from the standard library's randomly keyed hasher).
pub fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Timestamp::now().as_nanosecond() as u64);
    h.finish()
}

/// The queued requests of one job, in the order they start: the highest
/// priority first, then the oldest; requests not yet due wait aside.
#[derive(Debug, Default)]
pub struct Index {
    ready: BTreeSet<(Reverse<i32>, Box<str>)>,
    waiting: BTreeSet<(i64, Reverse<i32>, Box<str>)>,
}

impl Index {
    pub fn insert(&mut self, slot: Slot) {
        if slot.due_ms > 0 {
            self.waiting.insert((slot.due_ms, Reverse(slot.priority), slot.id));
        } else {
            self.ready.insert((Reverse(slot.priority), slot.id));
        }
    }

    pub fn remove(&mut self, slot: &Slot) {
        if slot.due_ms > 0 {
            self.waiting.remove(&(slot.due_ms, Reverse(slot.priority), slot.id.clone()));
        } else {
            self.ready.remove(&(Reverse(slot.priority), slot.id.clone()));
        }
        // An emptied set keeps its node (about 280 bytes): let it go, as
        // most of ten thousand jobs have an empty queue most of the time.
        if self.ready.is_empty() {
            self.ready = BTreeSet::new();
        }
        if self.waiting.is_empty() {
            self.waiting = BTreeSet::new();
        }
    }

    /// The request that starts next at `now_ms`, if any is due. Requests
    /// that became due go by priority, like any other ready one.
    pub fn next(&self, now_ms: i64) -> Option<Slot> {
        let ready = self.ready.first().map(|(p, id)| Slot { priority: p.0, id: id.clone(), due_ms: 0 });
        let due = self
            .waiting
            .iter()
            .take_while(|(due, ..)| *due <= now_ms)
            .min_by(|a, b| (a.1, &a.2).cmp(&(b.1, &b.2)))
            .map(|(due, p, id)| Slot { priority: p.0, id: id.clone(), due_ms: *due });
        match (ready, due) {
            (Some(r), Some(d)) => Some(if (Reverse(d.priority), &d.id) < (Reverse(r.priority), &r.id) { d } else { r }),
            (r, d) => r.or(d),
        }
    }

    /// When the first request not yet due becomes due.
    pub fn next_due(&self) -> Option<i64> {
        self.waiting.first().map(|(due, ..)| *due)
    }

    pub fn len(&self) -> usize {
        self.ready.len() + self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the oldest ready request was queued (ms since the epoch). Ids
    /// begin with that time, so within a priority the first is the oldest:
    /// one look per priority, not a walk through the queue (asked after
    /// every start, it made draining 10,000 requests quadratic).
    pub fn oldest_ready_ms(&self) -> Option<i64> {
        use std::ops::Bound;
        let queued = |id: &str| id.get(..13)?.parse::<i64>().ok();
        let mut oldest: Option<i64> = None;
        let mut from = Bound::Unbounded;
        while let Some((Reverse(priority), _)) = self.ready.range((from, Bound::Unbounded)).next() {
            let priority = *priority;
            let group = self.ready.range((Reverse(priority), Box::<str>::from(""))..);
            let first = group.take_while(|(p, _)| p.0 == priority).find_map(|(_, id)| queued(id));
            if let Some(t) = first {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
            match priority.checked_sub(1) {
                Some(lower) => from = Bound::Included((Reverse(lower), Box::<str>::from(""))),
                None => break,
            }
        }
        oldest
    }

    pub fn clear(&mut self) {
        self.ready.clear();
        self.waiting.clear();
    }
}

/// The delay before attempt `attempt + 1` after attempt `attempt` (1 = the
/// first run) failed: `retry_delay` doubled per attempt, at most `max`, then
/// spread by ±20 % (`spread` in 0..1 picks where) so that runs that failed
/// together do not all come back together.
pub fn backoff(retry_delay: Duration, max: Duration, attempt: u32, spread: f64) -> Duration {
    let doubled = retry_delay.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let base = doubled.min(max.max(retry_delay));
    base.mul_f64(0.8 + 0.4 * spread.clamp(0.0, 1.0))
}

/// What follows the end of attempt number `attempt` (1 = the first run).
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// Done: its entry goes away.
    Done,
    /// Tried again after a back-off.
    Retry,
    /// No attempt left: it is Dead (kept, listed, can be requeued).
    Dead,
}

/// Failed and Aborted attempts are tried again while `retries` allow;
/// success and cancellation end the request.
pub fn after(failed: bool, attempt: u32, retries: u32) -> After {
    match (failed, attempt <= retries) {
        (false, _) => After::Done,
        (true, true) => After::Retry,
        (true, false) => After::Dead,
    }
}

/// Takes `from` by renaming it to `to` (creating `to`'s folder when
/// missing): the one caller whose rename succeeds has it. `false` when
/// `from` is gone (someone else took it).
pub fn take_by_rename(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<bool> {
    let missing_dir =
        |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound && to.parent().is_some_and(|d| !d.exists());
    let moved = match std::fs::rename(from, to) {
        Err(e) if missing_dir(&e) => {
            std::fs::create_dir_all(to.parent().unwrap_or(std::path::Path::new(".")))?;
            std::fs::rename(from, to)
        }
        other => other,
    };
    match moved {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether a one-off run whose time (`due_ms`) passed while no daemon ran
/// still runs at `now_ms`: the schedules' `catch_up` rule (none: no; last:
/// yes; a maximum age: if it is at most that late).
pub fn run_missed(due_ms: i64, now_ms: i64, catch_up: &crate::settings::CatchUp) -> bool {
    use crate::settings::CatchUp;
    match catch_up {
        CatchUp::None => false,
        CatchUp::Last => true,
        CatchUp::MaxAge(age) => now_ms - due_ms <= age.as_millis() as i64,
    }
}

/// A one-off run's time: RFC 3339 with its offset (`2026-12-01T09:00:00+01:00`, `…Z`).
pub fn parse_at(text: &str) -> Result<Timestamp, String> {
    text.trim().parse::<Timestamp>().map_err(|_| {
        format!("{text:?} is not a time with its offset, such as 2026-12-01T09:00:00+01:00 or 2026-12-01T08:00:00Z")
    })
}

/// A delay such as `90s`, `15m`, `2h`, `1d` or `1h30m`.
pub fn parse_in(text: &str) -> Result<jiff::SignedDuration, String> {
    let bad = || format!("{text:?} is not a delay such as 90s, 15m, 2h, 1d or 1h30m");
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        let n: i64 = std::mem::take(&mut number).parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
    }
    if !number.is_empty() || total == 0 && !text.trim().starts_with('0') {
        return Err(bad());
    }
    Ok(jiff::SignedDuration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_ready_request_is_found_across_priorities_and_ignores_waiting_ones() {
        let mut index = Index::default();
        assert_eq!(index.oldest_ready_ms(), None);
        let slot = |priority: i32, queued: i64, n: u32, due_ms: i64| Slot {
            priority,
            id: format!("{queued:013}{n:010x}").into(),
            due_ms,
        };
        // Priorities from -100 to 100, times out of order; the oldest is at priority -100.
        let mut all = Vec::new();
        for (n, priority) in [0, 100, -100, 7, 0, -3, 100, i32::MIN + 1].into_iter().enumerate() {
            let queued =
                1_700_000_000_000 + ((n as i64 * 7_919) % 13) * 1000 - if priority == -100 { 99_000 } else { 0 };
            all.push(queued);
            index.insert(slot(priority, queued, n as u32, 0));
        }
        // Waiting requests (due later) are not ready, however old.
        index.insert(slot(5, 1_000_000_000_000, 99, 2_000_000_000_000));
        // An id that is not a time is passed over.
        index.insert(Slot { priority: -100, id: "not-a-time".into(), due_ms: 0 });
        assert_eq!(index.oldest_ready_ms(), all.iter().copied().min());
        index.remove(&slot(-100, all[2], 2, 0));
        all.remove(2);
        assert_eq!(index.oldest_ready_ms(), all.iter().copied().min());
    }

    #[test]
    fn a_missed_one_off_run_follows_catch_up() {
        use crate::settings::CatchUp;
        let ten_minutes = CatchUp::MaxAge(Duration::from_secs(600));
        assert!(run_missed(0, 600_000, &ten_minutes));
        assert!(!run_missed(0, 600_001, &ten_minutes));
        assert!(run_missed(0, 86_400_000, &CatchUp::Last));
        assert!(!run_missed(0, 1, &CatchUp::None));
    }

    #[test]
    fn one_off_times_and_delays_are_read() {
        assert_eq!(parse_at("2026-12-01T09:00:00+01:00").unwrap().to_string(), "2026-12-01T08:00:00Z");
        assert!(parse_at("2026-12-01 09:00").unwrap_err().contains("offset"));
        assert_eq!(parse_in("15m").unwrap().as_secs(), 900);
        assert_eq!(parse_in("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_in("1d").unwrap().as_secs(), 86400);
        for bad in ["15", "m", "1w", "", "-5m"] {
            assert!(parse_in(bad).is_err(), "{bad}");
        }
    }

    fn slot(priority: i32, id: &str, due_ms: i64) -> Slot {
        Slot { priority, id: id.into(), due_ms }
    }

    #[test]
    fn a_slot_survives_its_file_name() {
        for s in [slot(0, "1764000000000000aabcdef", 0), slot(100, "17a", 5), slot(-100, "x", 1764000000000)] {
            assert_eq!(Slot::parse(&s.file_name()), Some(s.clone()));
        }
        assert_eq!(Slot::parse("050-abc-0.run.tmp"), None);
        assert_eq!(Slot::parse("999-abc-0.run"), None, "priority out of range");
        assert_eq!(Slot::parse("100-../x-0.run"), None);
        let mut names = [slot(0, "2", 0), slot(5, "3", 0), slot(0, "1", 0), slot(-1, "0", 0)].map(|s| s.file_name());
        names.sort();
        assert_eq!(names.map(|n| Slot::parse(&n).unwrap().id.to_string()), ["3", "1", "2", "0"]);
    }

    #[test]
    fn requests_start_by_priority_then_age_once_due() {
        let mut q = Index::default();
        q.insert(slot(0, "0002", 0));
        q.insert(slot(0, "0001", 0));
        q.insert(slot(5, "0003", 0));
        q.insert(slot(9, "0004", 1_000));
        assert_eq!(q.next(0).unwrap().id.as_ref(), "0003");
        assert_eq!(q.next(1_000).unwrap().id.as_ref(), "0004", "due now, and first by priority");
        q.remove(&slot(5, "0003", 0));
        assert_eq!(q.next(0).unwrap().id.as_ref(), "0001", "the oldest of one priority");
        assert_eq!(q.next_due(), Some(1_000));
        assert_eq!(q.len(), 3);
        q.remove(&slot(0, "0001", 0));
        q.remove(&slot(0, "0002", 0));
        assert_eq!(q.next(999), None, "nothing due yet");
        assert_eq!(q.next(1_000).unwrap().due_ms, 1_000);
    }

    #[test]
    fn ids_sort_by_time_and_differ() {
        let t: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let (a, b) = (new_id(t), new_id(t + jiff::SignedDuration::from_millis(1)));
        assert!(a < b && a.len() == 23 && a.starts_with("1795428000000"), "{a} {b}");
        assert_ne!(new_id(t), new_id(t));
        assert_eq!(Slot::parse(&slot(0, &a, 0).file_name()).unwrap().queued_ms(), Some(1795428000000));
    }

    #[test]
    fn retries_back_off_exponentially_with_a_cap_and_jitter() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(10), s(300), 1, 0.5), s(10));
        assert_eq!(backoff(s(10), s(300), 2, 0.5), s(20));
        assert_eq!(backoff(s(10), s(300), 4, 0.5), s(80));
        assert_eq!(backoff(s(10), s(300), 9, 0.5), s(300), "capped");
        assert_eq!(backoff(s(10), s(300), 500, 0.5), s(300), "no overflow");
        assert_eq!(backoff(s(10), s(300), 1, 0.0), s(8));
        assert_eq!(backoff(s(10), s(300), 1, 1.0), s(12));
        assert_eq!(backoff(s(10), s(1), 3, 0.5), s(10), "a cap below the delay is the delay");
    }

    #[test]
    fn failed_attempts_are_retried_then_dead() {
        assert_eq!(after(true, 1, 2), After::Retry);
        assert_eq!(after(true, 2, 2), After::Retry);
        assert_eq!(after(true, 3, 2), After::Dead);
        assert_eq!(after(true, 1, 0), After::Dead);
        assert_eq!(after(false, 1, 0), After::Done);
    }
}
