//! webjobs: a Linux daemon that does what Azure App Service WebJobs do.
//!
//! Drop a script into `jobs/continuous/<name>/` or `jobs/triggered/<name>/` and
//! it runs as a child process: continuous jobs are kept alive, triggered jobs
//! run on demand or on a schedule; every line of output is stamped and kept in
//! a log file per job or per run.
//!
//! Theory of operation: one [`supervisor`] task owns the job table and
//! supervises one actor per job ([`continuous`], [`triggered`]; what they
//! share is in [`actor`]: the daemon's context, the one start path, the
//! definition kept while files are broken). The [`watcher`] turns file events
//! into debounced hints; the supervisor rescans the named jobs ([`jobs`],
//! [`settings`]; identity in [`key`], every path in [`layout`]) and tells each
//! actor what changed. An actor owns its process ([`run`]: a state machine it
//! drives from its select loop, so it answers while a run stops; [`process`],
//! [`spawn`], [`cgroup`]), its log ([`logs`], [`output`]) and its status
//! ([`status`], [`history`]). What daemons sharing a job set agree on goes
//! through one contract ([`coordination`]). See `docs/architecture.md`.

pub mod actor;
pub mod api;
pub mod arguments;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod config;
pub mod continuous;
pub mod coordination;
pub mod daemon;
pub mod events;
pub mod hash;
pub mod history;
pub mod hooks;
pub mod inbox;
pub mod jobs;
pub mod key;
pub mod layout;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod output;
pub mod problems;
pub mod process;
pub mod queue;
pub mod repeats;
pub mod run;
pub mod schedule;
pub mod settings;
pub mod spawn;
pub mod status;
pub mod supervisor;
pub mod systemd;
pub mod triggered;
pub mod usage;
pub mod watcher;
pub mod workcopy;
