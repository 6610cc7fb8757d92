//! The run slot of a triggered job: starting a run (run lock, run folder,
//! process), its end (by itself, or ended by us: cancel, timeout, idle,
//! replace, shutdown), and what follows (a retry, the next queued request).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::queue::Dispatch;
use super::{Accepted, Active, Actor, End, Latest, Refused};
use crate::actor::launch::Launch;
use crate::coordination::{Lease, Taken};
use crate::history::{self, RunState, RunStatus};
use crate::jobs::Runnable;
use crate::logs::{Level, LogFile, format_time};
use crate::queue::Entry;
use crate::run::{Run, human};

impl Actor {
    /// Starts a run of the request taken from the queue (the run lock and a
    /// run slot held); returns the run's id. A run that cannot start is
    /// recorded as Failed (and its request retried or dead).
    pub(super) async fn start_run(
        &mut self,
        job: &Arc<Runnable>,
        mut taken: Taken,
        lease: Lease,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> String {
        let started = std::time::SystemTime::now();
        let id = self.next_run_id();
        taken.entry.attempts += 1;
        // The folder first (the run may write its result and progress there
        // at once); then the process; the rest of the files after it.
        let made = history::create_run_dir_named(&self.data_dir, &id);
        let (id, spawned) = match made {
            Ok(dir) => {
                let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(id);
                let spawned = self.spawn(job, &id, &dir, &taken.entry, &lease).await;
                (id, spawned)
            }
            Err(e) => (id, Err(e)),
        };
        taken.entry.runs.push(id.clone());
        // Let other jobs due at the same tick spawn before this one writes its files.
        tokio::task::yield_now().await;
        let (dir, mut log) = match self.open_run_files(&id).await {
            Ok(files) => files,
            Err(e) => {
                if let Ok(mut run) = spawned {
                    run.discard().await;
                }
                let why = format!("cannot create the run folder or its log: {e}");
                self.scheduler_log.sys(Level::SysError, &format!("run {id}: {why}"));
                drop(lease);
                self.put_away(taken, RunState::Failed, &id, Some(why)).await;
                return id;
            }
        };
        let request = &taken.entry;
        let args = if request.arguments.is_empty() {
            String::new()
        } else {
            format!(" with arguments {:?}", request.arguments)
        };
        let attempt = if request.attempts > 1 { format!(" (attempt {})", request.attempts) } else { String::new() };
        log.line(
            Level::SysInfo,
            format!("run {id} triggered by {}{args}{attempt}", request.trigger).as_bytes(),
            started,
        );
        if request.payload.is_some() {
            let _ = std::fs::hard_link(self.locks.payload_path(&request.id), dir.join(crate::layout::RUN_PAYLOAD));
        }
        let mut status = RunStatus {
            status: RunState::Running,
            start_time: format_time(started),
            end_time: None,
            trigger: request.trigger.clone(),
            exit_code: None,
            signal: None,
            instance: self.shared.instance.to_string(),
            pid: None,
            arguments: request.arguments.clone(),
            error: None,
            duration_ms: None,
            cpu_ms: None,
            memory_peak: None,
            request: Some(request.id.clone()),
            attempt: Some(request.attempts),
            correlation_id: request.correlation_id.clone(),
            payload_bytes: request.payload,
            result: None,
            result_error: None,
            progress: None,
            parent: request.parent.clone(),
            children: Vec::new(),
        };
        match spawned {
            Ok(run) => {
                log.sys(Level::SysInfo, &format!("started process {}: {}", run.pid, run.command_line));
                status.pid = Some(run.pid.as_raw());
                let _ = history::write_status(&dir, &status);
                self.share_run(&id, &status, false).await;
                self.run_event("run.started", &id, &status);
                self.publish_run(Some(Latest::new(&id, &status)));
                let idle = job.settings.idle_timeout.unwrap_or(self.config.switches.idle_timeout);
                let deadline = job.settings.timeout.map(|t| tokio::time::Instant::now() + t);
                let active = Active {
                    id: id.clone(),
                    dir,
                    run,
                    log,
                    status,
                    _lease: lease,
                    _permit: permit,
                    taken,
                    deadline,
                    idle,
                    last_bytes: 0,
                    last_cpu: 0,
                    last_activity: tokio::time::Instant::now(),
                    last_checked: tokio::time::Instant::now(),
                    ending: None,
                    cancels: Vec::new(),
                };
                // One at a time (a job's second run is rare): not four.
                self.active.reserve_exact(1);
                self.active.push(active);
                id
            }
            Err(e) => {
                log.sys(Level::SysError, &format!("failed to start: {e}"));
                status.status = RunState::Failed;
                status.error = Some(format!("failed to start: {e}"));
                status.end_time = Some(format_time(std::time::SystemTime::now()));
                let _ = history::write_status(&dir, &status);
                self.share_run(&id, &status, true).await;
                self.shared.metrics.run_finished(&self.key.name, "Failed", Duration::ZERO);
                self.run_event("run.ended", &id, &status);
                self.publish_run(Some(Latest::new(&id, &status)));
                drop((lease, permit));
                self.end_of(taken, RunState::Failed, &id, status.error).await;
                id
            }
        }
    }

    /// The run's folder, pruned history, and its log (off the runtime).
    pub(super) async fn open_run_files(&self, id: &str) -> std::io::Result<(PathBuf, LogFile)> {
        let (data_dir, id, instance) = (self.data_dir.clone(), id.to_owned(), self.shared.instance.clone());
        let keep = self.config.switches.history_size as usize;
        self.shared
            .starts
            .run(move || {
                let dir = data_dir.join(&id);
                if !dir.is_dir() {
                    let missing = format!("{} is missing", dir.display());
                    return Err(std::io::Error::new(std::io::ErrorKind::NotFound, missing));
                }
                history::prune(&data_dir, keep, &[&id]);
                let log = LogFile::open(&dir.join(crate::layout::OUTPUT_LOG), instance, None)?;
                Ok((dir, log))
            })
            .await
    }

    /// Nothing of the active run is left: record how it ended (by its exit
    /// code, or as we ended it).
    pub(super) async fn on_over(&mut self, n: usize) {
        if n >= self.active.len() {
            return;
        }
        let mut active = self.active.remove(n);
        if self.active.is_empty() {
            // An idle actor keeps no room for runs (most of ten thousand are idle).
            self.active = Vec::new();
        }
        let (state, error) = match active.ending.take() {
            Some((state, why)) => (state, (state != RunState::Success).then_some(why)),
            None if active.run.exit_status().and_then(|s| s.code()) == Some(0) => (RunState::Success, None),
            None => (RunState::Failed, None),
        };
        let cancels = std::mem::take(&mut active.cancels);
        let id = active.id.clone();
        self.finish(active, state, error).await;
        for reply in cancels {
            let _ = reply.send(Ok(id.clone()));
        }
        self.start_replacement().await;
    }

    /// Starts the request that replaces the run just ended (`overlap:
    /// replace`), or the queue's head.
    pub(super) async fn start_replacement(&mut self) {
        let Some((slot, reply)) = self.replacement.take().map(|r| *r) else {
            self.fill().await;
            return;
        };
        let id = slot.id.to_string();
        let result = match self.dispatch(Some(slot)).await {
            Dispatch::Started { request, run, .. } if request == id => Ok(Accepted::Started { run, request }),
            _ => Ok(Accepted::Queued(id)),
        };
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    /// Begins ending every active run (shutdown, replace, cancel of all).
    pub(super) fn end_all(&mut self, end: End) {
        for n in 0..self.active.len() {
            self.end_run(n, end.clone());
        }
    }

    /// Begins ending active run `n` by the stop protocol and notes why; the
    /// run is over (and recorded) when [`Run::over`] says so. A shutdown
    /// while it is already being stopped kills what is left at once.
    pub(super) fn end_run(&mut self, n: usize, end: End) {
        let grace = self.grace();
        let Some(active) = self.active.get_mut(n) else { return };
        if active.ending.is_some() {
            // It ends as it was being ended (a cancel stays a cancel), only sooner.
            if let End::Shutdown(_) = end {
                active.run.kill_now(&mut active.log, "the daemon is stopping");
            }
            return;
        }
        let (state, why) = match &end {
            End::Cancelled => (RunState::Cancelled, "cancelled".to_string()),
            End::Replaced => (RunState::Cancelled, "replaced by a new run (overlap: replace)".to_string()),
            End::Timeout(t) => (RunState::Failed, format!("timeout: the run took longer than {}", human(*t))),
            End::Idle(t) => (
                RunState::Failed,
                format!(
                    "idle_timeout: no output and no CPU time for {}; raise idle_timeout in settings.job (or WEBJOBS_IDLE_TIMEOUT)",
                    human(*t)
                ),
            ),
            End::Shutdown(why) => (RunState::Aborted, format!("the daemon is stopping ({why})")),
            End::LeaseLost(why) => (RunState::Aborted, format!("run lock lost: {why}")),
        };
        active.run.begin_stop(&mut active.log, grace, &why);
        active.ending = Some((state, why));
    }

    /// Writes the run's end (status, log line), releases the lock, and starts
    /// what follows: a retry or the next queued run.
    pub(super) async fn finish(&mut self, mut active: Active, state: RunState, error: Option<String>) {
        let exit = active.run.exit_status();
        let duration = active.run.started.elapsed();
        let usage = active.run.finish_usage();
        let s = &mut active.status;
        s.cpu_ms = usage.cpu_ms;
        s.memory_peak = usage.memory_peak;
        s.status = state;
        s.end_time = Some(format_time(std::time::SystemTime::now()));
        s.duration_ms = Some(duration.as_millis() as u64);
        s.exit_code = exit.and_then(|e| e.code());
        s.signal =
            exit.and_then(|e| std::os::unix::process::ExitStatusExt::signal(&e)).map(crate::process::signal_name);
        s.pid = None;
        if state == RunState::Failed && error.is_none() {
            s.error = Some(format!("Job failed due to {}", active.run.describe_exit()));
        } else {
            s.error = error;
        }
        s.progress = history::Progress::read(&active.dir);
        match history::read_result(&active.dir) {
            Ok(result) => s.result = result,
            Err(why) => {
                s.result_error = Some(why.clone());
                active.log.sys(Level::SysWarn, &why);
            }
        }
        let level = if state == RunState::Success { Level::SysInfo } else { Level::SysError };
        let what = active.run.describe_exit();
        active
            .log
            .sys(level, &format!("run {} ended: {} ({what}) after {}", active.id, state.as_str(), human(duration)));
        match history::write_status(&active.dir, &active.status) {
            Ok(()) => crate::repeats::clear("run status", &self.key),
            Err(e) => crate::repeats::report("run status", &self.key, |held| {
                tracing::error!(job = %self.key, error = %e, "cannot write the run status{}", crate::repeats::held_note(held));
            }),
        }
        self.share_run(&active.id, &active.status, true).await;
        self.shared.metrics.run_finished(&self.key.name, state.as_str(), duration);
        self.shared.metrics.cpu_used("triggered", &self.key.name, usage.cpu_ms);
        self.shared.metrics.output("triggered", &self.key.name, active.run.output.bytes);
        self.run_event("run.ended", &active.id, &active.status);
        self.publish_run(Some(Latest::new(&active.id, &active.status)));
        let Active { id, taken, status, .. } = active;
        self.end_of(taken, state, &id, status.error).await;
    }

    /// Records run `id` in the cluster's history, when daemons share one
    /// (with the end of its output once it `ended`).
    pub(super) async fn share_run(&mut self, id: &str, status: &RunStatus, ended: bool) {
        if !self.locks.shared_history() {
            return;
        }
        let keep = self.config.switches.history_size;
        let log = self.data_dir.join(id).join(crate::layout::OUTPUT_LOG);
        let tail = ended.then(|| history::tail_text(&log, crate::coordination::postgres::OUTPUT_TAIL));
        self.locks.record_later(id, &self.shared.instance, status, tail, keep);
    }

    /// After run `id` ended: who waits for it hears, and its request is put away.
    pub(super) async fn end_of(&mut self, taken: Taken, state: RunState, id: &str, error: Option<String>) {
        for (_, waiter) in self.waiters.extract_if(.., |(run, _)| run == id) {
            let _ = waiter.send(());
        }
        // Cancelled or replaced: done, never retried.
        let state = if state == RunState::Cancelled { RunState::Success } else { state };
        self.put_away(taken, state, id, error).await;
    }

    /// A request came due, or the run lock may be free again.
    pub(super) async fn on_later(&mut self) {
        self.later = None;
        if !self.unsettled.is_empty() {
            self.settle().await;
        }
        self.fill().await;
    }

    /// Cancels run `run` (or every active run); answered once it is over.
    pub(super) fn cancel(&mut self, run: Option<String>, reply: oneshot::Sender<Result<String, Refused>>) {
        let matching: Vec<usize> =
            (0..self.active.len()).filter(|n| run.as_ref().is_none_or(|r| *r == self.active[*n].id)).collect();
        let Some(last) = matching.last().copied() else {
            let _ = reply.send(Err(Refused::NoActiveRun(run.map(|r| format!(" {r}")).unwrap_or_default())));
            return;
        };
        for n in &matching {
            self.end_run(*n, End::Cancelled);
        }
        // Answered when the newest of them is over.
        self.active[last].cancels.push(reply);
    }

    /// Timeout and idle checks of the active runs.
    pub(super) async fn on_check(&mut self) {
        let now = tokio::time::Instant::now();
        for n in 0..self.active.len() {
            let active = &mut self.active[n];
            // Each run on its own period (or at its deadline).
            if active.ending.is_some() || next_check(active) > now {
                continue;
            }
            active.last_checked = now;
            let output = active.run.output.bytes;
            // CPU time is only read when the output says nothing.
            let cpu = if output == active.last_bytes { active.run.cpu_so_far() } else { active.last_cpu };
            let seen = Seen { output, cpu };
            let before = Seen { output: active.last_bytes, cpu: active.last_cpu };
            match verdict(now, active.deadline, before, seen, active.last_activity.elapsed(), active.idle) {
                Verdict::Timeout => {
                    let limit = self.definition.good.as_ref().and_then(|j| j.settings.timeout).unwrap_or_default();
                    self.end_run(n, End::Timeout(limit));
                }
                Verdict::Busy => {
                    (active.last_bytes, active.last_cpu) = (seen.output, seen.cpu);
                    active.last_activity = now;
                }
                Verdict::Idle => {
                    let idle = active.idle;
                    self.end_run(n, End::Idle(idle));
                }
                Verdict::Quiet => {}
            }
        }
    }

    pub(super) async fn spawn(
        &mut self,
        job: &Arc<Runnable>,
        id: &str,
        dir: &std::path::Path,
        request: &Entry,
        lease: &crate::coordination::Lease,
    ) -> std::io::Result<Run> {
        let payload = request.payload.map(|_| self.locks.payload_path(&request.id));
        let mut env = crate::actor::launch::fence_env(Some(lease));
        env.extend([
            ("WEBJOBS_ATTEMPT".into(), request.attempts.to_string().into()),
            ("WEBJOBS_REQUEST_ID".into(), request.id.clone().into()),
            ("WEBJOBS_RESULT_FILE".into(), dir.join(crate::layout::RUN_RESULT).into()),
            ("WEBJOBS_PROGRESS_FILE".into(), dir.join(crate::layout::RUN_PROGRESS).into()),
        ]);
        if let Some(file) = &payload {
            env.push(("WEBJOBS_PAYLOAD_FILE".into(), file.into()));
        }
        if let Some(file) = &request.trigger_file {
            env.push(("WEBJOBS_TRIGGER_FILE".into(), file.into()));
        }
        if let Some(tick) = request.tick_ms.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()) {
            env.push(("WEBJOBS_TICK".into(), tick.to_string().into()));
        }
        if let Some(correlation) = &request.correlation_id {
            env.push(("WEBJOBS_CORRELATION_ID".into(), correlation.into()));
        }
        if let Some(parent) = &request.parent {
            env.push(("WEBJOBS_PARENT_JOB".into(), parent.job.clone().into()));
            if let Some(run) = &parent.run {
                env.push(("WEBJOBS_PARENT_RUN".into(), run.into()));
                let result = self
                    .config
                    .job_data_dir(&crate::key::JobKey::new(crate::key::JobKind::Triggered, &parent.job))
                    .join(run)
                    .join(crate::layout::RUN_RESULT);
                if result.exists() {
                    env.push(("WEBJOBS_PARENT_RESULT_FILE".into(), result.into()));
                }
            }
        }
        Launch {
            job,
            config: &self.config,
            shared: &self.shared,
            nonce: id,
            run_id: id,
            arguments: &request.arguments,
            arguments_text: &request.text,
            port: None,
            inherit: None,
            env,
            stdin: payload,
        }
        .start()
        .await
    }
}

/// How often a run's limits are looked at.
fn check_period(active: &Active) -> Duration {
    (active.idle / 10).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// The next time an active run's limits must be looked at.
pub(super) fn next_check(active: &Active) -> tokio::time::Instant {
    let next = active.last_checked + check_period(active);
    active.deadline.map_or(next, |d| d.min(next))
}

/// What a run was last seen doing: bytes of output so far, CPU time so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seen {
    pub output: u64,
    pub cpu: u64,
}

/// What a check of the active run's limits finds.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Past its `timeout`.
    Timeout,
    /// It wrote or computed since the last check.
    Busy,
    /// Neither for `idle_timeout`.
    Idle,
    /// Neither, not yet for long.
    Quiet,
}

/// The check of a run at `now`: `quiet` is how long since it was last busy.
pub(super) fn verdict(
    now: tokio::time::Instant,
    deadline: Option<tokio::time::Instant>,
    before: Seen,
    seen: Seen,
    quiet: Duration,
    idle: Duration,
) -> Verdict {
    if deadline.is_some_and(|d| now >= d) {
        Verdict::Timeout
    } else if seen != before {
        Verdict::Busy
    } else if quiet >= idle {
        Verdict::Idle
    } else {
        Verdict::Quiet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_judged_at_fixed_instants() {
        let t0 = tokio::time::Instant::now();
        let s = |output, cpu| Seen { output, cpu };
        let idle = Duration::from_secs(10);
        let quiet = |secs| Duration::from_secs(secs);
        assert_eq!(verdict(t0, Some(t0), s(0, 0), s(5, 0), quiet(0), idle), Verdict::Timeout, "timeout first");
        assert_eq!(verdict(t0, Some(t0 + idle), s(0, 0), s(5, 0), quiet(60), idle), Verdict::Busy);
        assert_eq!(verdict(t0, None, s(5, 7), s(5, 8), quiet(60), idle), Verdict::Busy, "silent but computing");
        assert_eq!(verdict(t0, None, s(5, 7), s(5, 7), quiet(9), idle), Verdict::Quiet);
        assert_eq!(verdict(t0, None, s(5, 7), s(5, 7), quiet(10), idle), Verdict::Idle);
    }
}
