//! A job's definition as its actor holds it: the newest one read from disk,
//! the last one that could run (kept while the files are broken, so a typo in
//! settings.job never stops a running job), and which problems were already
//! told, so each is written to the job's log once.

use std::sync::Arc;

use crate::jobs::{JobDef, Runnable};
use crate::logs::{Level, LogFile};

/// Said after an error while the last valid configuration stays in force.
pub const KEPT: &str = "(the job keeps its last valid configuration)";

pub struct Definition {
    /// As last read from disk.
    pub def: Arc<JobDef>,
    /// The last configuration that could run.
    pub good: Option<Arc<Runnable>>,
    reported: Vec<String>,
}

impl Definition {
    pub fn new(def: Arc<JobDef>) -> Definition {
        Definition { good: def.runnable(), def, reported: Vec::new() }
    }

    /// Takes in a new reading of the job's files; returns the errors when
    /// the files just became invalid (they had none before).
    pub fn update(&mut self, def: Arc<JobDef>) -> Option<Vec<String>> {
        let was_valid = self.def.errors().is_empty();
        if let Some(job) = def.runnable() {
            self.good = Some(job);
        }
        self.def = def;
        let errors = self.def.errors();
        (was_valid && !errors.is_empty()).then_some(errors)
    }

    /// The `job.invalid` event of `errors`: the files are wrong (the last
    /// valid definition, if any, goes on running).
    pub fn invalid_event(&self, errors: Vec<String>) -> crate::events::Event {
        let kept = self.good.is_some();
        crate::events::Event::about(&self.def.key, "job.invalid")
            .status("Invalid")
            .detail(serde_json::json!({"errors": errors, "last_valid_kept": kept}))
    }

    /// The job's own notification rules (of the last valid definition).
    pub fn notify_rules(&self) -> Vec<crate::notify::Rule> {
        self.good.as_ref().map(|j| j.settings.notify.clone()).unwrap_or_default()
    }

    /// What is wrong with the files, said the same way by both kinds of job.
    pub fn errors(&self) -> Vec<String> {
        let errors = self.def.errors();
        if self.good.is_some() { errors.into_iter().map(|e| format!("{e} {KEPT}")).collect() } else { errors }
    }

    /// The errors as one line (a status's `error`), if any.
    pub fn error_text(&self) -> Option<String> {
        let errors = self.errors();
        (!errors.is_empty()).then(|| errors.join("; "))
    }

    /// Writes errors and warnings not told yet to `log` (each once, until
    /// they change).
    pub fn report(&mut self, log: &mut LogFile) {
        let errors = self.errors();
        let warnings = self.def.warnings();
        let all: Vec<String> = errors.iter().chain(&warnings).cloned().collect();
        if all == self.reported {
            return;
        }
        for line in &errors {
            log.sys(Level::SysError, line);
        }
        for line in &warnings {
            log.sys(Level::SysWarn, line);
        }
        self.reported = all;
    }
}
