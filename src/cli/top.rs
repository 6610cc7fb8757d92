//! `webjobs top`: a live view of the jobs in the terminal (as pm2's `monit`
//! or `top`): status, CPU share and memory of each job's process group,
//! uptime and restarts, refreshed every second; `q` or Ctrl-C quits and puts
//! the terminal back. Not on a terminal, it prints one view and ends.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::termios::{self, LocalFlags, SetArg, Termios};
use serde_json::Value;

use crate::cli::CliError;
use crate::cli::client::Client;
use crate::cli::term::{self, Clock, Paint};
use crate::config::Config;

/// Set by SIGTERM/SIGHUP: leave as after `q`.
static QUIT: AtomicBool = AtomicBool::new(false);

extern "C" fn quit(_: libc::c_int) {
    QUIT.store(true, Ordering::Relaxed);
}

pub fn top(config: &Config, interval: Duration, paint: Paint) -> anyhow::Result<ExitCode> {
    let client = Client::connect(config)?;
    let live = std::io::stdout().is_terminal();
    let mut previous: HashMap<String, (u64, i64)> = HashMap::new();
    let first = frame(&client, &mut previous, paint, term::width(), None)?;
    if !live {
        print!("{first}");
        return Ok(ExitCode::SUCCESS);
    }
    let _screen = Screen::enter();
    for signal in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGHUP] {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(quit),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { nix::sys::signal::sigaction(signal, &action) };
    }
    let mut shown = first;
    loop {
        let mut out = std::io::stdout().lock();
        // Home, the view, and clear what is left of the old one.
        let _ = write!(out, "\x1b[H{}\x1b[J", shown.replace('\n', "\x1b[K\n"));
        let _ = out.flush();
        drop(out);
        if wait_key(interval) {
            return Ok(ExitCode::SUCCESS);
        }
        let rows = term::size().map(|(_, rows)| rows);
        shown = match frame(&client, &mut previous, paint, term::width(), rows) {
            Ok(view) => view,
            Err(e) => format!("webjobs top: {e:#}\n(trying again; q quits)\n"),
        };
    }
}

/// Waits up to `interval` for `q`/Ctrl-C (true) or a signal to quit.
fn wait_key(interval: Duration) -> bool {
    let deadline = Instant::now() + interval;
    loop {
        if QUIT.load(Ordering::Relaxed) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let stdin = std::io::stdin();
        let mut fds = [nix::poll::PollFd::new(stdin.as_fd(), nix::poll::PollFlags::POLLIN)];
        let wait = nix::poll::PollTimeout::try_from(left.min(Duration::from_millis(200)))
            .unwrap_or(nix::poll::PollTimeout::ZERO);
        if nix::poll::poll(&mut fds, wait).unwrap_or(0) > 0 {
            let mut byte = [0u8; 16];
            let n = nix::unistd::read(&stdin, &mut byte).unwrap_or(0);
            // q, Q, Ctrl-C, Ctrl-D; end of input too.
            if n == 0 || byte[..n].iter().any(|b| matches!(b, b'q' | b'Q' | 3 | 4)) {
                return true;
            }
        }
    }
}

/// One view: a summary line, then a row per job (busiest first).
fn frame(
    client: &Client,
    previous: &mut HashMap<String, (u64, i64)>,
    paint: Paint,
    width: Option<usize>,
    rows: Option<usize>,
) -> anyhow::Result<String> {
    let jobs = client.get("/api/webjobs")?;
    if jobs.status != 200 {
        return Err(CliError::from_status(jobs.status, jobs.error()));
    }
    let jobs: Vec<Value> = serde_json::from_slice(&jobs.body)?;
    let usage = client.get("/api/usage")?.json();
    let time_ms = usage["time_ms"].as_i64().unwrap_or_default();
    let mut by_job: HashMap<String, &Value> = HashMap::new();
    for u in usage["jobs"].as_array().into_iter().flatten() {
        by_job.insert(format!("{}/{}", u["type"].as_str().unwrap_or(""), u["name"].as_str().unwrap_or("")), u);
    }
    let clock = Clock::now(false);
    let mut counts: Vec<(String, usize)> = Vec::new();
    let mut table: Vec<(f64, Vec<String>)> = Vec::new();
    let mut seen = HashMap::new();
    for j in &jobs {
        let status = j["status"].as_str().unwrap_or_default().to_string();
        match counts.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => counts.push((status.clone(), 1)),
        }
        let id = format!("{}/{}", j["type"].as_str().unwrap_or(""), j["name"].as_str().unwrap_or(""));
        let (cpu, memory) = match by_job.get(&id) {
            Some(u) => {
                let cpu_ms = u["cpu_ms"].as_u64().unwrap_or_default();
                // The share since the last view of the same process group.
                let key = format!("{id}@{}", u["pid"]);
                let share = previous.get(&key).and_then(|&(was, at)| {
                    let wall = (time_ms - at) as f64;
                    (wall > 0.0).then(|| cpu_ms.saturating_sub(was) as f64 * 100.0 / wall)
                });
                seen.insert(key, (cpu_ms, time_ms));
                (share, u["memory_bytes"].as_u64())
            }
            None => (None, None),
        };
        let text = |k: &str| j[k].as_str().unwrap_or_default().to_string();
        table.push((
            cpu.unwrap_or(-1.0),
            vec![
                text("name"),
                text("type"),
                paint.status(&status),
                j["pid"].as_i64().map_or("-".into(), |p| p.to_string()),
                cpu.map_or("-".into(), |c| format!("{c:.1}")),
                memory.map_or("-".into(), bytes),
                j["started"].as_str().map_or("-".into(), |t| clock.since(t)),
                j["restarts"].as_u64().map_or("-".into(), |n| n.to_string()),
                j["error"]
                    .as_str()
                    .map(str::to_string)
                    .or(j["last_exit"].as_str().map(|e| format!("last: {e}")))
                    .unwrap_or_default(),
            ],
        ));
    }
    *previous = seen;
    table.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1[0].cmp(&b.1[0])));
    let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {}", paint.status(s))).collect();
    let mut view = format!(
        "{}  {} jobs: {}   (q quits)\n\n",
        paint.paint(term::BOLD, "webjobs top"),
        jobs.len(),
        summary.join(", ")
    );
    let fit = rows.map_or(table.len(), |r| r.saturating_sub(4)).min(table.len());
    let cells: Vec<Vec<String>> = table.into_iter().take(fit).map(|(_, row)| row).collect();
    let header = ["NAME", "TYPE", "STATUS", "PID", "CPU%", "MEM", "UPTIME", "RESTARTS", "DETAIL"];
    view.push_str(&term::table(&header, &cells, width, paint));
    if fit < jobs.len() {
        view.push_str(&format!("… and {} more (a taller terminal shows them)\n", jobs.len() - fit));
    }
    Ok(view)
}

/// `12.3M`: bytes in binary units, as `top` shows memory.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1}G", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1}M", n as f64 / (1u64 << 20) as f64),
        n => format!("{}K", n / 1024),
    }
}

/// The alternate screen, no cursor, keys read one at a time without echo;
/// all put back when dropped (also when the view fails).
struct Screen {
    saved: Option<Termios>,
}

impl Screen {
    fn enter() -> Screen {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(saved) = &saved {
            let mut raw = saved.clone();
            // No line editing, no echo; Ctrl-C arrives as a key (and quits cleanly).
            raw.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG);
            let _ = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw);
        }
        print!("\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        Screen { saved }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_reads_in_binary_units() {
        assert_eq!(super::bytes(512 * 1024), "512K");
        assert_eq!(super::bytes(5 * 1024 * 1024 + 300 * 1024), "5.3M");
        assert_eq!(super::bytes(3 << 30), "3.0G");
    }
}
