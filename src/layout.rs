//! Where everything lives on disk. Every file and folder name the daemon,
//! the CLI and the API use is here, and only here.
//!
//! ```text
//! jobs/<kind>/<job>/                      the job's files (settings.job, disable.job)
//! data/api-token                          the API's bearer token
//! data/instances/<id>.lock|.sock|.addr    a daemon: its registration, socket, TCP address
//! data/jobs/<kind>/<job>/                 a job's data folder (WEBJOBS_DATA_PATH):
//!     job_log.txt, status_<instance>      continuous: its log, its status per daemon
//!     job_scheduler.log, <run id>/        triggered: schedule log, one folder per run
//!         status, output_log.txt              (the run's status and output)
//!     singleton.job.lock, triggeredJob.lock, schedule.json   coordination files
//!     queue/                                  the run queue (queued, taken, dead requests; payloads)
//! temp/jobs/<kind>/<job>/<instance>-<fingerprint>/           working copies
//! temp/JobsShutdown/<kind>/<job>/<instance>-<nonce>          shutdown files
//! ```

use std::path::{Path, PathBuf};

use crate::key::{JobKey, JobKind};

/// A job's settings, in its script folder.
pub const SETTINGS_FILE: &str = "settings.job";
/// Present in a job's script folder: the job is stopped.
pub const DISABLE_FILE: &str = "disable.job";
/// Written by the WebJobs SDK into a job's data folder.
pub const SDK_MARKER: &str = "webjobssdk.marker";

/// A continuous job's log, in its data folder.
pub const JOB_LOG: &str = "job_log.txt";
/// A triggered job's schedule log, in its data folder.
pub const SCHEDULER_LOG: &str = "job_scheduler.log";
/// A run's output, in its run folder.
pub const OUTPUT_LOG: &str = "output_log.txt";
/// A run's status, in its run folder.
pub const RUN_STATUS: &str = "status";
/// Begins a continuous job's status file (one per daemon).
pub const STATUS_PREFIX: &str = "status_";

/// Held by the daemon running a singleton continuous job.
pub const SINGLETON_LOCK: &str = "singleton.job.lock";
/// Held while a triggered job has an active run (on any daemon).
pub const RUN_LOCK: &str = "triggeredJob.lock";

/// Run lock `slot` of a triggered job (`max_parallel` of them):
/// `triggeredJob.lock`, then `triggeredJob.1.lock` …
pub fn run_lock(job_data_dir: &Path, slot: u32) -> PathBuf {
    match slot {
        0 => job_data_dir.join(RUN_LOCK),
        n => job_data_dir.join(format!("triggeredJob.{n}.lock")),
    }
}
/// The last schedule tick any daemon claimed.
pub const SCHEDULE_RECORD: &str = "schedule.json";
/// A triggered job's run queue (see `coordination::queue`).
pub const QUEUE_DIR: &str = "queue";
/// A run's payload (a hard link of its request's), in its run folder.
pub const RUN_PAYLOAD: &str = "payload";
/// Where a run may write its JSON result (`WEBJOBS_RESULT_FILE`), in its run folder.
pub const RUN_RESULT: &str = "result.json";
/// Where a run may write its progress (`WEBJOBS_PROGRESS_FILE`), in its run folder.
pub const RUN_PROGRESS: &str = "progress";

/// The API's bearer token, in the data folder.
pub const API_TOKEN: &str = "api-token";
/// Kudu's web hooks (`data/hooks.json`).
pub const HOOKS: &str = "hooks.json";
/// Notifications on their way (`data/outbox/`; given up ones in `failed/`).
pub const OUTBOX: &str = "outbox";

/// The folder of the jobs of `kind`.
pub fn kind_dir(jobs_dir: &Path, kind: JobKind) -> PathBuf {
    jobs_dir.join(kind.as_str())
}

/// A job's folder.
pub fn job_dir(jobs_dir: &Path, key: &JobKey) -> PathBuf {
    kind_dir(jobs_dir, key.kind).join(&*key.name)
}

/// The folder of every job's data folder (the API's `/vfs/data/jobs/` root).
pub fn jobs_data_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("jobs")
}

/// The data folder of one job: logs, status, history, coordination files.
pub fn job_data_dir(data_dir: &Path, key: &JobKey) -> PathBuf {
    jobs_data_dir(data_dir).join(key.kind.as_str()).join(&*key.name)
}

/// Where deploys are unpacked before they are swapped in (beside the jobs,
/// on the same file system).
pub fn staging_dir(jobs_dir: &Path) -> PathBuf {
    jobs_dir.join(".staging")
}

/// A continuous job's status as one daemon wrote it.
pub fn status_file(job_data_dir: &Path, instance: &str) -> PathBuf {
    job_data_dir.join(format!("{STATUS_PREFIX}{instance}"))
}

/// Where the daemons of a data folder register.
pub fn instances_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("instances")
}

/// Held by daemon `id` for its whole life.
pub fn instance_lock(data_dir: &Path, id: &str) -> PathBuf {
    instances_dir(data_dir).join(format!("{id}.lock"))
}

/// The Unix socket of daemon `id`'s API.
pub fn socket(data_dir: &Path, id: &str) -> PathBuf {
    instances_dir(data_dir).join(format!("{id}.sock"))
}

/// The TCP address daemon `id` listens on (for tools and tests).
pub fn address(data_dir: &Path, id: &str) -> PathBuf {
    instances_dir(data_dir).join(format!("{id}.addr"))
}

/// The folder all working copies of a job live in.
pub fn job_temp_dir(temp_dir: &Path, key: &JobKey) -> PathBuf {
    temp_dir.join("jobs").join(key.kind.as_str()).join(&*key.name)
}

/// The shutdown file of one process run (`nonce`: the run id, or a start's own).
pub fn shutdown_file(temp_dir: &Path, key: &JobKey, instance: &str, nonce: &str) -> PathBuf {
    temp_dir.join("JobsShutdown").join(key.kind.as_str()).join(&*key.name).join(format!("{instance}-{nonce}"))
}
