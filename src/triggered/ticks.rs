//! A triggered job's schedule: arming the next tick, firing a tick (claimed
//! once across daemons), ticks missed while the daemon was down or the clock
//! jumped.

use std::time::Duration;

use jiff::Timestamp;

use super::{Accepted, Actor, Refused, RunRequest};
use crate::logs::Level;
use crate::run::human;
use crate::settings::{CatchUp, RunMode};

/// A tick handled later than this counts as missed (downtime, clock step, suspend).
const LATE: Duration = Duration::from_secs(2);

impl Actor {
    /// Computes the next tick; at start-up, handles the ticks missed while down.
    pub(super) async fn arm_schedule(&mut self, startup: bool) {
        self.set_next_tick(None);
        let Some(schedule) = self.schedule() else { return };
        let tz = self.zone();
        let now = Timestamp::now();
        let last = self.locks.last_tick().await;
        if startup && let Some(last) = last {
            self.handle_missed(last, now).await;
        }
        let from = last.map_or(now, |l| l.max(now));
        self.set_next_tick(schedule.next_after(from, &tz));
        match self.next_tick {
            Some(t) => self.scheduler_log.sys(
                Level::SysInfo,
                &format!(
                    "schedule \"{schedule}\" ({tz_name}): next run at {}",
                    crate::schedule::rfc3339(t, &tz),
                    tz_name = tz.iana_name().unwrap_or("local")
                ),
            ),
            None => {
                self.scheduler_log.sys(Level::SysWarn, &format!("schedule \"{schedule}\" has no future occurrence"))
            }
        }
    }

    /// The schedule in force, if ticks should fire.
    pub(super) fn schedule(&self) -> Option<crate::schedule::Schedule> {
        let job = self.definition.good.as_ref()?;
        if self.config.switches.disable_schedule
            || self.config.switches.stopped
            || self.def().disabled
            || job.settings.run_mode == RunMode::OnDemand
        {
            return None;
        }
        job.settings.schedule.clone()
    }

    /// Sets the next tick and arms the wall-clock timer for it.
    pub(super) fn set_next_tick(&mut self, tick: Option<Timestamp>) {
        self.next_tick = tick;
        self.summary.send_modify(|s| s.next_tick = tick);
        self.shared.changed();
        if let Err(e) = self.timer.set(tick) {
            self.scheduler_log.sys(Level::SysError, &format!("cannot arm the schedule timer: {e}"));
        }
    }

    /// The system clock was set: ticks now in the past were missed (catch-up
    /// rules apply); after a step back, nothing fires twice (the last claimed
    /// tick is the floor).
    pub(super) fn on_clock_set(&mut self) {
        self.scheduler_log
            .sys(Level::SysWarn, "the system clock was set; the next tick is recomputed from the new time");
        self.set_next_tick(self.next_tick);
    }

    pub(super) async fn on_tick(&mut self) {
        let (Some(tick), Some(schedule)) = (self.next_tick, self.schedule()) else { return };
        let now = Timestamp::now();
        // After the tick itself: a tick that passed while this one was being
        // handled (a slow claim) is handled next, on time or as missed.
        let from = match timing(tick, now) {
            Timing::Early => return self.set_next_tick(Some(tick)), // woken early by a clock step back
            Timing::Late => {
                let last = self.locks.last_tick().await.unwrap_or(tick - jiff::SignedDuration::from_secs(1));
                self.handle_missed(last.min(tick - jiff::SignedDuration::from_nanos(1)), now).await;
                tick.max(now)
            }
            Timing::OnTime => {
                self.fire(tick, &schedule, None).await;
                tick
            }
        };
        let tz = self.zone();
        self.set_next_tick(schedule.next_after(from, &tz));
    }

    /// Claims `tick` across daemons and asks for a run.
    pub(super) async fn fire(&mut self, tick: Timestamp, schedule: &crate::schedule::Schedule, missed: Option<String>) {
        // A database claims the tick with its request (in `store`).
        if !self.locks.claims_tick_on_enqueue() {
            match self.locks.claim_tick(tick).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    self.scheduler_log.sys(Level::SysError, &format!("cannot claim the schedule tick: {e}"));
                    return;
                }
            }
        }
        self.shared.metrics.tick_started(Timestamp::now().duration_since(tick).unsigned_abs());
        let trigger = format!("Schedule - {schedule}{}", missed.unwrap_or_default());
        let mut request = RunRequest::new(trigger, Vec::new(), String::new());
        request.tick = Some(tick);
        let Some(result) = self.request_run(request, true, None).await else {
            return self.scheduler_log.sys(Level::SysInfo, &format!("tick {tick}: replacing the active run"));
        };
        match result {
            Ok(Accepted::Started { run: id, .. }) => {
                self.scheduler_log.sys(Level::SysInfo, &format!("tick {tick}: started run {id}"))
            }
            Ok(Accepted::Queued(id)) => {
                self.scheduler_log.sys(Level::SysInfo, &format!("tick {tick}: queued as request {id}"))
            }
            // Skipped while a run is active here: said where it was decided.
            Err(Refused::Running(why)) if self.active.is_empty() => {
                // A run active on another daemon (overlap: skip).
                let text = format!("schedule tick {tick} skipped: {why} (overlap: skip)");
                self.scheduler_log.sys(Level::SysWarn, &text);
                let event = crate::events::Event::about(&self.key, "tick.skipped").status("Skipped");
                self.tell(event.detail(serde_json::json!({"reason": why})));
            }
            Err(Refused::Running(_) | Refused::TickTaken) => {}
            Err(e) => self.scheduler_log.sys(Level::SysWarn, &format!("tick {tick}: not run: {e}")),
        }
    }

    /// Ticks in (`last`, `now`] were missed: one catch-up run per `catch_up`.
    pub(super) async fn handle_missed(&mut self, last: Timestamp, now: Timestamp) {
        let (Some(schedule), Some(job)) = (self.schedule(), self.definition.good.clone()) else { return };
        let tz = self.zone();
        let Some(Missed { count: missed, newest, age, run }) = missed(&schedule, &tz, last, now, job.settings.catch_up)
        else {
            return;
        };
        let outcome = if run { "running it now" } else { "not run (catch_up)" };
        self.scheduler_log.sys(
            Level::SysWarn,
            &format!(
                "missed {missed} schedule(s), most recent at {} ({} ago): {outcome}",
                crate::schedule::rfc3339(newest, &tz),
                human(age)
            ),
        );
        let event =
            crate::events::Event::about(&self.key, "tick.missed").status(if run { "CaughtUp" } else { "Missed" });
        let detail = serde_json::json!({"missed": missed, "newest": newest.to_string(), "caught_up": run});
        self.tell(event.detail(detail));
        if run {
            self.fire(newest, &schedule, Some(format!(" (missed tick at {newest})"))).await;
        } else {
            let _ = self.locks.claim_tick(newest).await;
        }
    }
}

/// When a tick is handled, against when it was due.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Timing {
    /// Before it (the clock was set back): wait again.
    Early,
    OnTime,
    /// More than [`LATE`] after it: missed (downtime, a clock step, suspend).
    Late,
}

pub(super) fn timing(tick: Timestamp, now: Timestamp) -> Timing {
    if now < tick {
        Timing::Early
    } else if now.duration_since(tick).unsigned_abs() > LATE {
        Timing::Late
    } else {
        Timing::OnTime
    }
}

/// The ticks of a schedule missed in (`last`, `now`].
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Missed {
    pub count: usize,
    pub newest: Timestamp,
    /// How long ago the newest was due.
    pub age: Duration,
    /// Whether `catch_up` runs the newest now.
    pub run: bool,
}

/// Past this many missed ticks, counting stops (a per-second schedule down
/// for 11 days): the newest is then looked for in the last day only.
const COUNT_LIMIT: usize = 1_000_000;

/// The ticks missed between the last one claimed and `now`, and whether
/// the newest is run now (`catch_up`: `none`, `last`, or a maximum age).
pub(super) fn missed(
    schedule: &crate::schedule::Schedule,
    tz: &jiff::tz::TimeZone,
    last: Timestamp,
    now: Timestamp,
    catch_up: CatchUp,
) -> Option<Missed> {
    let mut count = 0usize;
    let mut newest = None;
    let mut t = last;
    while let Some(next) = schedule.next_after(t, tz) {
        if next > now {
            break;
        }
        count += 1;
        newest = Some(next);
        t = next;
        if count == COUNT_LIMIT {
            t = t.max(now - jiff::SignedDuration::from_hours(24));
        }
    }
    let count = count.min(COUNT_LIMIT);
    let newest = newest?;
    let age = now.duration_since(newest).unsigned_abs();
    let run = match catch_up {
        CatchUp::None => false,
        CatchUp::Last => true,
        CatchUp::MaxAge(max) => age <= max,
    };
    Some(Missed { count, newest, age, run })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_tick_is_early_on_time_or_late() {
        let tick = at("2026-11-23T10:00:00Z");
        assert_eq!(timing(tick, at("2026-11-23T09:59:59.9Z")), Timing::Early);
        assert_eq!(timing(tick, tick), Timing::OnTime);
        assert_eq!(timing(tick, at("2026-11-23T10:00:02Z")), Timing::OnTime);
        assert_eq!(timing(tick, at("2026-11-23T10:00:02.001Z")), Timing::Late);
    }

    #[test]
    fn ticks_missed_while_down_are_counted_and_the_newest_caught_up_per_policy() {
        let every_5m = Schedule::parse("0 */5 * * * *").unwrap();
        let utc = jiff::tz::TimeZone::UTC;
        let (last, now) = (at("2026-11-23T10:00:00Z"), at("2026-11-23T10:17:30Z"));
        let m = missed(&every_5m, &utc, last, now, CatchUp::Last).unwrap();
        assert_eq!((m.count, m.newest, m.age), (3, at("2026-11-23T10:15:00Z"), Duration::from_secs(150)));
        assert!(m.run);
        assert!(!missed(&every_5m, &utc, last, now, CatchUp::None).unwrap().run);
        assert!(missed(&every_5m, &utc, last, now, CatchUp::MaxAge(Duration::from_secs(150))).unwrap().run);
        assert!(!missed(&every_5m, &utc, last, now, CatchUp::MaxAge(Duration::from_secs(149))).unwrap().run);
        assert_eq!(missed(&every_5m, &utc, last, at("2026-11-23T10:04:59Z"), CatchUp::Last), None, "none missed");
    }

    #[test]
    fn counting_missed_ticks_is_bounded() {
        let every_second = Schedule::parse("* * * * * *").unwrap();
        let m = missed(
            &every_second,
            &jiff::tz::TimeZone::UTC,
            at("2026-01-01T00:00:00Z"),
            at("2026-11-23T00:00:00Z"),
            CatchUp::None,
        )
        .unwrap();
        assert_eq!(m.count, COUNT_LIMIT);
        assert_eq!(m.newest, at("2026-11-23T00:00:00Z"), "the newest is still the newest");
    }
}
