//! The one start path of a job's process, for both kinds: working copy,
//! environment, command line, cgroup, spawn.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::jobs::Runnable;
use crate::process::Command;
use crate::run::{JobEnv, Run};

use super::Shared;

/// One start of a job's process.
pub struct Launch<'a> {
    pub job: &'a Arc<Runnable>,
    pub config: &'a Config,
    pub shared: &'a Arc<Shared>,
    /// Tells this start apart (a triggered run's id; a continuous start's own).
    pub nonce: &'a str,
    /// `WEBJOBS_RUN_ID` (empty for a continuous job).
    pub run_id: &'a str,
    /// Words after the script's own argv (a triggered run's arguments).
    pub arguments: &'a [String],
    /// `WEBJOBS_COMMAND_ARGUMENTS`.
    pub arguments_text: &'a str,
    /// `WEBJOBS_PORT` (a continuous job's passthrough port).
    pub port: Option<u16>,
    /// A descriptor the process keeps as fd 3 (a singleton's lock).
    pub inherit: Option<std::os::fd::RawFd>,
    /// More `WEBJOBS_*` variables (a triggered run's request).
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// The process's stdin (a run's payload); /dev/null when `None`.
    pub stdin: Option<PathBuf>,
}

impl Launch<'_> {
    /// Spawns the process: its working copy is reused when its content is
    /// unchanged (one `stat`), else made off the runtime; the cgroup and the
    /// spawn are done where [`super::starts`] says.
    pub async fn start(self) -> std::io::Result<Run> {
        let job = self.job;
        let key = job.key();
        let temp = &self.config.temp_dir;
        let instance = &self.shared.instance;
        let work_dir = match crate::workcopy::existing(temp, instance, job) {
            Some(dir) => dir,
            None => {
                let (temp, instance, copy_of) = (temp.clone(), instance.clone(), job.clone());
                tokio::task::spawn_blocking(move || crate::workcopy::prepare(&temp, &instance, &copy_of))
                    .await
                    .map_err(std::io::Error::other)??
            }
        };
        let shutdown_file = crate::layout::shutdown_file(temp, key, instance, self.nonce);
        let data_dir = self.config.job_data_dir(key);
        let env = JobEnv {
            name: &key.name,
            kind: key.kind.as_str(),
            work_dir: &work_dir,
            data_dir: &data_dir,
            run_id: self.run_id,
            arguments: self.arguments_text,
            shutdown_file: &shutdown_file,
            port: self.port,
        };
        let mut vars = env.vars(&job.settings.env);
        vars.extend(self.env);
        let mut command = command(job, work_dir.clone(), vars, self.shared.marker(key, self.nonce));
        command.args.extend(self.arguments.iter().map(Into::into));
        command.inherit = self.inherit;
        command.stdin = self.stdin;
        // A run under a database lease does not outlive this daemon: once the
        // daemon is gone, another takes the lease over (after its grace).
        command.die_with_daemon = command.env.iter().any(|(k, _)| k == "WEBJOBS_FENCE");
        // Runs side by side (max_parallel) each need a cgroup of their own.
        let own = job.settings.max_parallel > 1;
        let limits = job.settings.limits.as_deref().copied().unwrap_or_default();
        let (shared, key, nonce) = (self.shared.clone(), key.clone(), self.nonce.to_owned());
        let (max_line, grace) = (self.config.log.max_line, job.settings.stopping_wait_time);
        self.shared
            .starts
            .run(move || {
                let cgroup = shared.run_cgroup(&key, &nonce, &limits, own)?;
                Run::start(&command, shutdown_file, max_line, cgroup, grace)
            })
            .await
    }
}

/// The command line: host program and its arguments, then the script.
pub fn command(
    job: &Runnable,
    cwd: PathBuf,
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    marker: String,
) -> Command {
    let script = job.script.file.clone();
    let (program, mut args): (PathBuf, Vec<std::ffi::OsString>) = match job.script.host.split_first() {
        Some((program, rest)) => (program.into(), rest.iter().map(Into::into).collect()),
        None => (cwd.join(&script), Vec::new()),
    };
    if !job.script.host.is_empty() {
        args.push(script.into());
    }
    Command { program, args, cwd, env, marker, inherit: None, stdin: None, die_with_daemon: false }
}

/// `WEBJOBS_FENCE`: the fencing token of the lease a run holds (a database
/// backend), for the job to check on its own writes.
pub fn fence_env(lease: Option<&crate::coordination::Lease>) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let fence = lease.and_then(crate::coordination::Lease::fence);
    fence.map(|f| ("WEBJOBS_FENCE".into(), f.to_string().into())).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Runnable {
        Runnable::example(std::path::Path::new("/x"), 0)
    }

    #[test]
    fn command_puts_the_script_after_the_host() {
        let mut j = job();
        j.script.host = vec!["/usr/bin/java".into(), "-jar".into()];
        j.script.file = "app.jar".into();
        let c = command(&j, "/w".into(), vec![], "m".into());
        assert_eq!(c.display(), "/usr/bin/java -jar app.jar");
        j.script.host.clear();
        j.script.file = "run".into();
        assert_eq!(command(&j, "/w".into(), vec![], "m".into()).display(), "/w/run");
    }
}
