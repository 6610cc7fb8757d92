//! The job's side of its durable queue: storing a request before it is
//! acknowledged, starting the queue's head when the job, the daemon and the
//! other daemons allow, putting a request away after its run (done, retried
//! after a back-off, or dead), and recovering what a daemon that is gone had
//! taken.

use std::time::Duration;

use jiff::Timestamp;

use super::{Actor, Refused, RunRequest};
use crate::coordination::{Next, Taken};
use crate::events::Event;
use crate::history::RunState;
use crate::logs::Level;
use crate::queue::{After, Entry, Slot, after, backoff};
use crate::run::human;

/// What starting the queue's head came to.
#[derive(Debug)]
pub(super) enum Dispatch {
    Started {
        request: String,
        run: String,
        /// It took the last run slot free across daemons: trying again would find none.
        last_slot: bool,
    },
    /// Every run slot is held by another daemon (or runs ending here).
    Busy,
    /// Nothing may start now (a run is active, nothing is due, no run slot
    /// of the daemon is free, the job is stopped or invalid).
    Waiting,
}

impl Actor {
    /// Writes a request to the queue (with its payload): from here on it
    /// survives the daemon.
    pub(super) async fn store(&mut self, request: RunRequest) -> Result<Slot, Refused> {
        let mut entry = Entry::new(request.trigger, request.arguments, request.text);
        entry.priority =
            request.priority.clamp(*crate::queue::PRIORITY_RANGE.start(), *crate::queue::PRIORITY_RANGE.end());
        entry.due_ms = request.at.map(|t| t.as_millisecond().max(1));
        entry.key = request.key;
        entry.correlation_id = request.correlation_id;
        entry.payload = request.payload.as_ref().map(|p| p.len() as u64);
        entry.tick_ms = request.tick.map(|t| t.as_millisecond());
        self.persist(&entry, request.payload.as_deref()).await
    }

    /// Stores `entry` and adds it to the index (and the queue's figures).
    pub(super) async fn persist(&mut self, entry: &Entry, payload: Option<&[u8]>) -> Result<Slot, Refused> {
        match self.locks.enqueue(entry, payload).await {
            Ok(Ok(())) => {}
            Ok(Err(crate::coordination::Unstored::TickTaken)) => return Err(Refused::TickTaken),
            Ok(Err(duplicate)) => return Err(Refused::Duplicate(duplicate.to_string())),
            Err(e) => {
                let full = e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT);
                return Err(Refused::Storage { why: e.to_string(), full });
            }
        }
        let slot = entry.slot();
        self.index.insert(slot.clone());
        self.shared.metrics.queued(&self.key.name);
        let event = Event::about(&self.key, "run.queued").request(Some(&entry.id)).status("Queued").detail(entry);
        self.shared.events.publish(event);
        self.publish_queue();
        Ok(slot)
    }

    /// Starts the queue's head (or `prefer`, a replacement) if the job is
    /// free: no active run here, the run lock free across daemons, a run slot
    /// of the daemon free, and a request due.
    pub(super) async fn dispatch(&mut self, prefer: Option<Slot>) -> Dispatch {
        if self.exiting || self.def().disabled || self.config.switches.stopped {
            return Dispatch::Waiting;
        }
        let Some(job) = self.definition.good.clone() else { return Dispatch::Waiting };
        if self.active.len() as u32 >= job.settings.max_parallel {
            return Dispatch::Waiting;
        }
        let mut prefer = prefer;
        let grace = job.settings.stopping_wait_time + Duration::from_secs(1);
        // A shared queue (a database) is read again when its head was taken elsewhere.
        let mut reread = self.locks.shared_queue();
        loop {
            let now = Timestamp::now().as_millisecond();
            let Some(slot) = prefer.take().or_else(|| self.index.next(now)) else {
                self.later = self.index.next_due().map(|due| {
                    tokio::time::Instant::now() + Duration::from_millis(due.saturating_sub(now).max(0) as u64)
                });
                return Dispatch::Waiting;
            };
            let permit = match (self.permit.take(), &self.shared.run_permits) {
                (Some(permit), _) => Some(permit),
                (None, None) => None,
                (None, Some(permits)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        self.want_permit = true;
                        return Dispatch::Waiting;
                    }
                },
            };
            let replacing = self.replacement.as_ref().is_some_and(|r| r.0 == slot);
            if self.locks.shared_queue() && !replacing {
                // Whatever is due first, with a run slot, in one statement.
                let busy: Vec<String> =
                    self.active.iter().filter_map(|a| a._lease.name().map(str::to_string)).collect();
                let next = self.locks.take_next(&self.shared.instance, job.settings.max_parallel, grace, &busy).await;
                let ((lease, taken), last_slot) = match next {
                    Ok(Some(Next::Got(got, last))) => (*got, last),
                    Ok(Some(Next::Busy)) => {
                        self.permit = permit;
                        self.later = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                        return Dispatch::Busy;
                    }
                    Ok(_) if reread => {
                        // Taken elsewhere: what is left is read again, once.
                        self.permit = permit;
                        reread = false;
                        if self.reread_queue().await.is_err() {
                            self.index.clear();
                        }
                        continue;
                    }
                    Ok(_) => {
                        self.permit = permit;
                        self.index.remove(&slot);
                        return Dispatch::Waiting;
                    }
                    Err(e) => {
                        self.permit = permit;
                        self.later = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                        self.scheduler_log.sys(Level::SysError, &format!("cannot take a queued request: {e}"));
                        return Dispatch::Waiting;
                    }
                };
                self.index.remove(&taken.entry.slot());
                self.publish_queue();
                let request = taken.entry.id.clone();
                let run = self.start_run(&job, taken, lease, permit).await;
                return Dispatch::Started { request, run, last_slot };
            }
            let busy: Vec<String> = self.active.iter().filter_map(|a| a._lease.name().map(str::to_string)).collect();
            let lease = match self.locks.try_run(&self.shared.instance, job.settings.max_parallel, grace, &busy).await {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    // A run is active on another daemon, which we cannot hear end.
                    self.permit = permit;
                    self.later = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    return Dispatch::Busy;
                }
                Err(e) => {
                    self.permit = permit;
                    self.later = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    self.scheduler_log.sys(Level::SysError, &format!("cannot take the run lock: {e}"));
                    return Dispatch::Waiting;
                }
            };
            self.index.remove(&slot);
            let taken = self.locks.take(&slot, &self.shared.instance, grace).await;
            let taken = match taken {
                Ok(Some(taken)) => taken,
                Ok(None) => {
                    self.permit = permit;
                    continue; // another daemon took it first, or it was cancelled
                }
                Err(e) => {
                    self.permit = permit;
                    self.scheduler_log
                        .sys(Level::SysError, &format!("queued request {} cannot be read, set aside: {e}", slot.id));
                    continue;
                }
            };
            self.publish_queue();
            let request = taken.entry.id.clone();
            let run = self.start_run(&job, taken, lease, permit).await;
            return Dispatch::Started { request, run, last_slot: false };
        }
    }

    /// Requests are due in the shared queue: started while slots are free;
    /// the queue is read first when this daemon knows of none due.
    pub(super) async fn on_due(&mut self) {
        let now = Timestamp::now().as_millisecond();
        if self.index.next(now).is_none()
            && let Err(e) = self.reread_queue().await
        {
            return self.scheduler_log.sys(Level::SysError, &format!("cannot read the queue: {e}"));
        }
        self.fill().await;
    }

    /// Reads the queue again into the index (a shared queue changes under us).
    async fn reread_queue(&mut self) -> std::io::Result<()> {
        let slots = self.locks.scan().await?;
        self.index.clear();
        slots.into_iter().for_each(|s| self.index.insert(s));
        self.publish_queue();
        Ok(())
    }

    /// Starts queued requests while the job has free run slots (one at a
    /// time would leave `max_parallel` unused after a restart or a burst),
    /// not asking once the last free one is taken.
    pub(super) async fn fill(&mut self) {
        while let Dispatch::Started { last_slot: false, .. } = self.dispatch(None).await {}
    }

    /// After attempt `taken.entry.attempts` ended in `state`: the request is
    /// done, tried again after a back-off, or dead.
    pub(super) async fn put_away(&mut self, mut taken: Taken, state: RunState, run: &str, error: Option<String>) {
        let settings = self.definition.good.as_ref().map(|j| j.settings.clone());
        let defaults = || std::sync::Arc::new(crate::settings::Settings::defaults(crate::key::JobKind::Triggered));
        let settings = settings.unwrap_or_else(defaults);
        let failed = matches!(state, RunState::Failed | RunState::Aborted);
        let attempt = taken.entry.attempts;
        let entry = &mut taken.entry;
        let outcome = after(failed, attempt, settings.retries);
        if let (Some(file), After::Done | After::Dead) = (&entry.trigger_file, &outcome) {
            let done = outcome == After::Done;
            match crate::inbox::put_away(std::path::Path::new(file), done) {
                Ok(to) => self.scheduler_log.sys(Level::SysInfo, &format!("trigger file of run {run} moved to {}", to.display())),
                Err(e) => self.scheduler_log.sys(
                    Level::SysError,
                    &format!("the trigger file {file} of run {run} cannot be moved to {}: {e}; it was hidden in .processing/ so that it never runs again", if done { "processed/" } else { "failed/" }),
                ),
            }
        }
        // The request's end (after its retries) starts the jobs of `then`.
        if outcome != After::Retry {
            let succeeded = outcome == After::Done && state == crate::history::RunState::Success;
            let entry = taken.entry.clone();
            self.start_children(&entry, run, succeeded, &settings.then).await;
        }
        // What the store is told; kept to tell it again if it does not answer.
        let settle = match outcome {
            After::Done => Settle::Done(settings.dedup_window),
            After::Retry => Settle::Requeue,
            After::Dead => Settle::Bury(self.config.switches.history_size as usize),
        };
        let shared = self.locks.shared_queue();
        let copy: Option<Taken>;
        let result = match outcome {
            After::Done if self.locks.done_later(&taken, settings.dedup_window) => {
                copy = None;
                Ok(())
            }
            After::Done => {
                copy = shared.then(|| taken.clone());
                self.locks.done(taken, settings.dedup_window).await
            }
            After::Retry => {
                let entry = &mut taken.entry;
                let delay = backoff(settings.retry_delay, settings.max_retry_delay, attempt, unit_random());
                entry.due_ms = Some(Timestamp::now().as_millisecond() + delay.as_millis() as i64);
                entry.error = error;
                entry.trigger = format!("Retry {attempt}/{} of {run}", settings.retries);
                let waits = if self.def().disabled { "; it waits until the job is started" } else { "" };
                self.scheduler_log.sys(
                    Level::SysInfo,
                    &format!("retry {attempt}/{} of run {run} in {}{waits}", settings.retries, human(delay)),
                );
                let entry = entry.clone();
                let event = Event::about(&self.key, "run.retry").run(run).request(Some(&entry.id)).status("Queued");
                self.shared.events.publish(event.detail(&entry));
                copy = shared.then(|| taken.clone());
                match self.locks.requeue(taken, &entry).await {
                    Ok(slot) => {
                        self.index.insert(slot);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            After::Dead => {
                let entry = &mut taken.entry;
                entry.error = error.or_else(|| Some(format!("run {run} ended {}", state.as_str())));
                self.scheduler_log.sys(
                    Level::SysWarn,
                    &format!(
                        "request {} is dead after {attempt} attempt(s) (last: run {run}); `webjobs retry {} {run}` queues it again",
                        entry.id, self.key.name
                    ),
                );
                self.shared.metrics.dead(&self.key.name);
                let entry = entry.clone();
                let event = Event::about(&self.key, "run.dead").run(run).request(Some(&entry.id)).status("Dead");
                self.tell(event.detail(&entry));
                copy = shared.then(|| taken.clone());
                self.locks.bury(taken, &entry, self.config.switches.history_size as usize).await
            }
        };
        if let Err(e) = result {
            match copy {
                // A database that does not answer: told again every second
                // (the request stays this daemon's while its session lives).
                Some(taken) => {
                    self.scheduler_log.sys(
                        Level::SysWarn,
                        &format!("cannot put away the request of run {run} yet ({e}); trying again every second"),
                    );
                    self.unsettled.push((taken, settle));
                    self.retry_unsettled_at(tokio::time::Instant::now() + Duration::from_secs(1));
                }
                None => {
                    self.scheduler_log.sys(Level::SysError, &format!("cannot put away the request of run {run}: {e}"))
                }
            }
        }
        self.publish_queue();
    }

    /// Tells the store again what became of requests it did not take in.
    pub(super) async fn settle(&mut self) {
        let mut left = Vec::new();
        for (taken, settle) in std::mem::take(&mut self.unsettled) {
            let entry = taken.entry.clone();
            let result = match &settle {
                Settle::Done(window) => self.locks.done(taken.clone(), *window).await,
                Settle::Requeue => self.locks.requeue(taken.clone(), &entry).await.map(|slot| self.index.insert(slot)),
                Settle::Bury(keep) => self.locks.bury(taken.clone(), &entry, *keep).await,
            };
            match result {
                Ok(()) => self.scheduler_log.sys(Level::SysInfo, &format!("request {} put away", entry.id)),
                Err(_) => left.push((taken, settle)),
            }
        }
        if !left.is_empty() {
            self.retry_unsettled_at(tokio::time::Instant::now() + Duration::from_secs(1));
        }
        self.unsettled = left;
    }

    fn retry_unsettled_at(&mut self, at: tokio::time::Instant) {
        self.later = Some(self.later.map_or(at, |l| l.min(at)));
    }

    /// Queues a request of each job of `then` for the end of run `run` (of
    /// request `entry`): durably, in the child's own queue, with the parent's
    /// correlation id and its result as payload; the parent's status lists them.
    async fn start_children(&mut self, entry: &Entry, run: &str, succeeded: bool, then: &crate::settings::Then) {
        let mut started = Vec::new();
        let result = std::fs::read(self.data_dir.join(run).join(crate::layout::RUN_RESULT)).ok();
        let outcome = if succeeded { "success" } else { "failure" };
        for child in then.children(succeeded) {
            let mut chain = entry.chain.clone();
            chain.push(self.key.name.to_string());
            if chain.contains(child) {
                let path = format!("{} → {child}", chain.join(" → "));
                let text = format!("then: {child} is not started again: a loop ({path})");
                self.scheduler_log.sys(Level::SysError, &text);
                continue;
            }
            let key = crate::key::JobKey::new(crate::key::JobKind::Triggered, child);
            if !crate::layout::job_dir(&self.config.jobs_dir, &key).is_dir() {
                self.scheduler_log.sys(Level::SysError, &format!("then: there is no triggered job {child}"));
                continue;
            }
            let mut request =
                Entry::new(format!("Chain - {}/{run} ({outcome})", self.key.name), Vec::new(), String::new());
            request.correlation_id = entry.correlation_id.clone();
            request.parent =
                Some(crate::queue::RunRef { job: self.key.name.to_string(), run: Some(run.into()), request: None });
            request.chain = chain;
            request.payload = result.as_ref().map(|r| r.len() as u64);
            let stored = match self.shared.coordinator.job(&key).await {
                Ok(child_queue) => child_queue.enqueue(&request, result.as_deref()).await,
                Err(e) => Err(e),
            };
            match stored {
                Ok(Ok(())) => {
                    self.scheduler_log
                        .sys(Level::SysInfo, &format!("then ({outcome}): queued request {} of {child}", request.id));
                    let _ = self.shared.chained.send(child.clone());
                    started.push(crate::queue::RunRef { job: child.clone(), run: None, request: Some(request.id) });
                }
                Ok(Err(duplicate)) => self.scheduler_log.sys(Level::SysWarn, &format!("then: {child}: {duplicate}")),
                Err(e) => {
                    self.scheduler_log.sys(Level::SysError, &format!("then: cannot queue a request of {child}: {e}"))
                }
            }
        }
        if started.is_empty() {
            return;
        }
        let dir = self.data_dir.join(run);
        if let Some(mut status) = crate::history::read_status(&dir) {
            status.children = started;
            let _ = crate::history::write_status(&dir, &status);
            self.share_run(run, &status, false).await;
        }
    }

    /// Requests taken by a daemon that is gone (at start, this instance's
    /// previous life included: `own`) were in flight: each is an Aborted
    /// attempt, retried per `retries`. Then the queue is read again.
    pub(super) async fn recover_queue(&mut self, own: bool) {
        match self.locks.orphans(&self.shared.coordinator, &self.shared.instance, own).await {
            Ok(orphans) => {
                for mut taken in orphans {
                    taken.entry.attempts += 1;
                    let run = taken.entry.runs.last().cloned().unwrap_or_else(|| "(not started)".into());
                    let why = "the daemon running it stopped before the run ended".to_string();
                    if let Err(e) = self.locks.abort_run(&run, &why).await {
                        self.scheduler_log
                            .sys(Level::SysWarn, &format!("run {run} stays Running in the cluster's history: {e}"));
                    }
                    self.scheduler_log.sys(
                        Level::SysWarn,
                        &format!(
                            "request {} was in flight when its daemon stopped: attempt {} Aborted",
                            taken.entry.id, taken.entry.attempts
                        ),
                    );
                    self.put_away(taken, RunState::Aborted, &run, Some(why)).await;
                }
            }
            Err(e) => self.scheduler_log.sys(Level::SysError, &format!("cannot recover taken requests: {e}")),
        }
        match self.locks.scan().await {
            Ok(slots) => {
                self.index.clear();
                for slot in slots {
                    if own && slot.due_ms > 0 && slot.due_ms < Timestamp::now().as_millisecond() - 1000 {
                        self.missed(slot).await;
                    } else {
                        self.index.insert(slot);
                    }
                }
            }
            Err(e) => self.scheduler_log.sys(Level::SysError, &format!("cannot read the queue: {e}")),
        }
        self.publish_queue();
        self.fill().await;
    }

    /// A request whose time passed while no daemon ran: a one-off run runs
    /// late or is dead by the job's `catch_up`; a retry runs now.
    async fn missed(&mut self, slot: Slot) {
        let catch_up = self.definition.good.as_ref().map(|j| j.settings.catch_up);
        let catch_up = catch_up.unwrap_or(crate::settings::CatchUp::MaxAge(Duration::from_secs(600)));
        let now = Timestamp::now().as_millisecond();
        let late = human(Duration::from_millis((now - slot.due_ms).max(0) as u64));
        let grace = self.grace() + Duration::from_secs(1);
        let one_off = match self.locks.take(&slot, &self.shared.instance, grace).await {
            Ok(Some(taken)) if taken.entry.attempts == 0 => taken,
            Ok(Some(taken)) => {
                let entry = taken.entry.clone();
                return self.keep(taken, &entry).await;
            }
            Ok(None) | Err(_) => return,
        };
        let mut entry = one_off.entry.clone();
        if crate::queue::run_missed(slot.due_ms, now, &catch_up) {
            self.scheduler_log.sys(
                Level::SysWarn,
                &format!("one-off request {} missed its time by {late}: running it now", entry.id),
            );
            return self.keep(one_off, &entry).await;
        }
        entry.error = Some(format!("missed its time by {late} while no daemon ran (catch_up)"));
        self.scheduler_log.sys(
            Level::SysWarn,
            &format!("one-off request {} missed its time by {late}: not run (catch_up)", entry.id),
        );
        if let Err(e) = self.locks.bury(one_off, &entry, self.config.switches.history_size as usize).await {
            self.scheduler_log.sys(Level::SysError, &format!("cannot set request {} aside: {e}", entry.id));
        }
    }

    /// Puts a request taken for a look back in the queue, unchanged.
    async fn keep(&mut self, taken: Taken, entry: &Entry) {
        match self.locks.requeue(taken, entry).await {
            Ok(slot) => self.index.insert(slot),
            Err(e) => self.scheduler_log.sys(Level::SysError, &format!("cannot queue request {} again: {e}", entry.id)),
        }
    }

    /// Removes a queued request that has not started.
    pub(super) async fn dequeue(&mut self, id: &str) -> Result<Entry, Refused> {
        match self.locks.remove_queued(id).await {
            Ok(Some(entry)) => {
                self.index.remove(&entry.slot());
                if self.replacement.as_ref().is_some_and(|r| &*r.0.id == id) {
                    self.replacement = None;
                }
                self.scheduler_log.sys(Level::SysInfo, &format!("queued request {id} cancelled"));
                self.publish_queue();
                Ok(entry)
            }
            Ok(None) => Err(Refused::NoActiveRun(format!(" or queued request {id}"))),
            Err(e) => Err(Refused::Failed(format!("cannot remove queued request {id}: {e}"))),
        }
    }

    /// Queues a dead request again, its attempts from the start.
    pub(super) async fn revive(&mut self, id: &str) -> Result<Entry, Refused> {
        match self.locks.revive(id).await {
            Ok(Some(entry)) => {
                self.index.insert(entry.slot());
                self.scheduler_log.sys(Level::SysInfo, &format!("dead request {} queued again", entry.id));
                self.publish_queue();
                self.fill().await;
                Ok(entry)
            }
            Ok(None) => Err(Refused::Failed(format!("no dead request or run {id} in this job's queue"))),
            Err(e) => Err(Refused::Failed(format!("cannot queue {id} again: {e}"))),
        }
    }

    /// Publishes the queue's depth and age (API, metrics).
    pub(super) fn publish_queue(&mut self) {
        let queued = self.index.len() as u32;
        let oldest = self.index.oldest_ready_ms();
        let changed = self.summary.send_if_modified(|s| {
            let changed = s.queued != queued || s.oldest_queued_ms != oldest;
            (s.queued, s.oldest_queued_ms) = (queued, oldest);
            changed
        });
        if changed {
            self.shared.metrics.queue_depth(&self.key.name, queued, oldest);
            self.shared.changed();
        }
    }
}

/// What the end of a request's run comes to, as the store is told.
#[derive(Debug)]
pub(super) enum Settle {
    /// Done; its key held for the window.
    Done(Duration),
    /// Queued again (a retry): the entry says when.
    Requeue,
    /// Dead; the newest so many kept.
    Bury(usize),
}

/// A number in 0..1 (for the jitter of retries).
fn unit_random() -> f64 {
    (crate::queue::random() >> 11) as f64 / (1u64 << 53) as f64
}
