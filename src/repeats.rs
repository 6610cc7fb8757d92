//! Errors that repeat in a loop (a full disk, `Too many open files`) are
//! reported once, then at most once a minute with how many were held back,
//! so the daemon's log says what is wrong without drowning everything else.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How often a repeating error is reported again.
pub const EVERY: Duration = Duration::from_secs(60);

/// One kind of error that may repeat: when it was last reported and how many
/// times it happened since.
#[derive(Debug, Default, Clone)]
pub struct Repeats {
    last: Option<Instant>,
    held: u64,
}

impl Repeats {
    /// Notes one occurrence at `now`: `Some(n)` when it is to be reported now,
    /// `n` being how many occurrences were held back since the last report.
    pub fn occurred(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|last| now.saturating_duration_since(last) < EVERY) {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }

    /// The error went away: how many occurrences were never reported.
    pub fn cleared(&mut self) -> u64 {
        self.last = None;
        std::mem::take(&mut self.held)
    }
}

static SITES: LazyLock<Mutex<HashMap<(&'static str, String), Repeats>>> = LazyLock::new(Default::default);
/// Some error is being counted: until then, [`clear`] (called on every
/// success, on hot paths) costs one atomic load.
static COUNTING: AtomicBool = AtomicBool::new(false);

/// Calls `report` with the number held back if an error of kind `site` about
/// `subject` (a job, a path) is due to be reported now.
pub fn report(site: &'static str, subject: &dyn Display, report: impl FnOnce(u64)) {
    let due = {
        let mut sites = SITES.lock().unwrap_or_else(|e| e.into_inner());
        COUNTING.store(true, Ordering::Release);
        sites.entry((site, subject.to_string())).or_default().occurred(Instant::now())
    };
    if let Some(held) = due {
        report(held);
    }
}

/// The error of kind `site` about `subject` went away; forgets it.
pub fn clear(site: &'static str, subject: &dyn Display) {
    if !COUNTING.load(Ordering::Acquire) {
        return;
    }
    let mut sites = SITES.lock().unwrap_or_else(|e| e.into_inner());
    sites.remove(&(site, subject.to_string()));
    COUNTING.store(!sites.is_empty(), Ordering::Release);
}

/// "" or " (and 12 more times since)" for a report.
pub fn held_note(held: u64) -> String {
    match held {
        0 => String::new(),
        1 => " (once more since the last report)".to_string(),
        n => format!(" ({n} more times since the last report)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_in_a_loop_is_reported_once_a_minute_with_a_count() {
        let t0 = Instant::now();
        let mut r = Repeats::default();
        assert_eq!(r.occurred(t0), Some(0), "the first is reported at once");
        for i in 1..=100 {
            assert_eq!(r.occurred(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(r.occurred(t0 + EVERY), Some(100), "a minute later, with the 100 held back");
        assert_eq!(r.occurred(t0 + EVERY + Duration::from_secs(1)), None);
        assert_eq!(r.cleared(), 1);
        assert_eq!(r.occurred(t0 + EVERY + Duration::from_secs(2)), Some(0), "a new episode is reported at once");
    }

    #[test]
    fn sites_and_subjects_are_counted_apart() {
        let mut seen = Vec::new();
        for subject in ["a", "b", "a", "b", "a"] {
            report("test-site", &subject, |held| seen.push((subject, held)));
        }
        assert_eq!(seen, [("a", 0), ("b", 0)]);
        clear("test-site", &"a");
        report("test-site", &"a", |held| seen.push(("a", held)));
        assert_eq!(seen.last(), Some(&("a", 0)));
    }
}
