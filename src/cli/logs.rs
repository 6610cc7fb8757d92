//! `webjobs logs`: the last lines of a job's log (or of every job's, merged),
//! filtered by stream and time, coloured by level on a terminal; `-f` goes on
//! from the tail as lines are written. Read from the data folder, as the
//! daemon writes it (a continuous job's `job_log.txt` and its newest rotated
//! file; a triggered run's `output_log.txt`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::term::{self, Paint};
use crate::cli::{CliError, find_job};
use crate::config::Config;
use crate::key::{JobKey, JobKind};
use crate::layout::{JOB_LOG, OUTPUT_LOG};

#[derive(Debug, Default, clap::Args)]
pub struct LogsOptions {
    /// How many lines from the end (default 20; with --since, every line since then).
    #[arg(short = 'n', long, value_name = "N")]
    pub lines: Option<usize>,
    /// Go on printing lines as they are written, from the tail (Ctrl-C ends).
    #[arg(short, long)]
    pub follow: bool,
    /// Only the job's standard output (INFO lines).
    #[arg(long, conflicts_with = "stderr")]
    pub stdout: bool,
    /// Only the job's standard error (ERROR lines).
    #[arg(long)]
    pub stderr: bool,
    /// Only lines written since then: a time back (90s, 10m, 2h, 1d) or an RFC 3339 time.
    #[arg(long, value_name = "AGO|TIME")]
    pub since: Option<String>,
    /// A triggered job's run: its id, or `latest`. Without it, the latest run
    /// and, with --follow, each new run in turn.
    #[arg(long, value_name = "ID|latest")]
    pub run: Option<String>,
    /// Every job's log, merged, each line with its job's name in front.
    #[arg(long, conflicts_with = "run")]
    pub all: bool,
}

const DEFAULT_LINES: usize = 20;

pub fn logs(config: &Config, job: Option<&str>, o: &LogsOptions, paint: Paint) -> anyhow::Result<ExitCode> {
    let filter = Filter::new(o)?;
    let limit = o.lines.or(if o.since.is_some() { None } else { Some(DEFAULT_LINES) });
    let mut sources = match (job, o.all) {
        (Some(_), true) => return Err(CliError::Usage("name a job or give --all, not both".into()).into()),
        (None, false) => return Err(CliError::Usage("name a job, or give --all for every job".into()).into()),
        (None, true) => crate::jobs::scan_all(config).into_iter().map(|d| Source::new(config, d.key, None)).collect(),
        (Some(spec), false) => {
            let def = find_job(config, spec)?;
            let source = Source::new(config, def.key.clone(), o.run.clone());
            if def.key.kind == JobKind::Triggered && source.path.is_none() {
                let which = o.run.as_deref().map_or("yet".to_string(), |r| format!("`{r}`"));
                if !o.follow || o.run.is_some() {
                    return Err(CliError::NotFound(format!("{} has no run {which}", def.key)).into());
                }
            }
            vec![source]
        }
    };
    let printer = Printer { paint, names: o.all };
    // The tail: each source's last lines, merged by time.
    let mut tail: Vec<(i64, usize, Vec<u8>)> = Vec::new();
    for (i, source) in sources.iter_mut().enumerate() {
        for line in source.tail(limit, &filter) {
            tail.push((stamp(&line).unwrap_or(i64::MIN), i, line));
        }
    }
    tail.sort_by_key(|(t, _, _)| *t);
    let skip = limit.map_or(0, |n| tail.len().saturating_sub(n));
    let mut out = std::io::stdout().lock();
    for (_, i, line) in tail.into_iter().skip(skip) {
        if printer.print(&mut out, &sources[i].name, &line).is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let _ = out.flush();
    drop(out);
    if o.follow {
        follow(config, sources, &filter, printer, o.all);
    }
    Ok(ExitCode::SUCCESS)
}

/// Which lines to show.
struct Filter {
    level: Option<&'static str>,
    since_ms: Option<i64>,
}

impl Filter {
    fn new(o: &LogsOptions) -> Result<Filter, CliError> {
        let level = if o.stdout {
            Some("INFO")
        } else if o.stderr {
            Some("ERROR")
        } else {
            None
        };
        let since_ms = o.since.as_deref().map(since).transpose().map_err(CliError::Usage)?;
        Ok(Filter { level, since_ms })
    }

    fn keeps(&self, line: &[u8]) -> bool {
        let level_ok = self.level.is_none_or(|want| level(line) == Some(want));
        let time_ok = match (self.since_ms, stamp(line)) {
            (Some(since), Some(t)) => t >= since,
            _ => true,
        };
        level_ok && time_ok
    }
}

/// `--since`: a time back from now, or a time.
fn since(text: &str) -> Result<i64, String> {
    if let Ok(back) = crate::queue::parse_in(text) {
        return Ok(jiff::Timestamp::now().as_millisecond() - back.as_millis() as i64);
    }
    term::millis(text).ok_or_else(|| {
        format!(
            "--since {text:?} is neither a time back (90s, 10m, 2h, 1d) nor an RFC 3339 time (2026-11-24T09:00:00Z)"
        )
    })
}

/// The inside of a line's `[…]` prefix: `time > instance: LEVEL`.
fn prefix(line: &[u8]) -> Option<&str> {
    let end = memchr::memchr(b']', line)?;
    std::str::from_utf8(line.get(1..end)?).ok().filter(|_| line.first() == Some(&b'['))
}

/// The time a line was written (ms since the epoch).
fn stamp(line: &[u8]) -> Option<i64> {
    term::millis(prefix(line)?.split_once(" > ")?.0)
}

fn level(line: &[u8]) -> Option<&str> {
    Some(prefix(line)?.rsplit_once(": ")?.1)
}

#[derive(Clone, Copy)]
struct Printer {
    paint: Paint,
    /// Each line with its job's name in front (`--all`).
    names: bool,
}

impl Printer {
    fn print(&self, out: &mut impl Write, name: &str, line: &[u8]) -> std::io::Result<()> {
        if self.names {
            write!(out, "{} | ", self.paint.paint(term::name_colour(name), name))?;
        }
        let text = String::from_utf8_lossy(line);
        if !self.paint.0 {
            return writeln!(out, "{text}");
        }
        let colour = match level(line) {
            Some("ERROR" | "SYS ERROR") => term::RED,
            Some("SYS WARN") => term::YELLOW,
            Some(l) if l.starts_with("SYS") => term::CYAN,
            _ => "",
        };
        // The stamp dimmed, the text in its level's colour.
        match memchr::memchr(b']', line).filter(|_| line.first() == Some(&b'[')) {
            Some(end) => {
                let (head, rest) = text.split_at(end + 1);
                let rest = if colour.is_empty() { rest.to_string() } else { self.paint.paint(colour, rest) };
                writeln!(out, "{}{rest}", self.paint.paint(term::DIM, head))
            }
            None => writeln!(out, "{text}"),
        }
    }
}

/// One log being read: a continuous job's, or a triggered job's run output.
struct Source {
    key: JobKey,
    name: String,
    data: PathBuf,
    /// A triggered job: the run asked for (`None`: the latest, then each new one).
    run: Option<String>,
    /// The file now read, and the run it belongs to.
    path: Option<PathBuf>,
    run_id: Option<String>,
    file: Option<File>,
    partial: Vec<u8>,
    /// `follow`: its data folder is watched, and which run folder is.
    watched: bool,
    watched_run: Option<PathBuf>,
}

impl Source {
    fn new(config: &Config, key: JobKey, run: Option<String>) -> Source {
        let data = config.job_data_dir(&key);
        let name = key.name.to_string();
        let mut source = Source {
            key,
            name,
            data,
            run,
            path: None,
            run_id: None,
            file: None,
            partial: Vec::new(),
            watched: false,
            watched_run: None,
        };
        source.path = source.current();
        source
    }

    /// The file this source reads now.
    fn current(&mut self) -> Option<PathBuf> {
        match self.key.kind {
            JobKind::Continuous => Some(self.data.join(JOB_LOG)),
            JobKind::Triggered => {
                let id = match self.run.as_deref() {
                    None | Some("latest") => crate::history::run_ids(&self.data).into_iter().next()?,
                    Some(id) => id.to_string(),
                };
                let dir = self.data.join(&id);
                self.run_id = Some(id);
                dir.is_dir().then(|| dir.join(OUTPUT_LOG))
            }
        }
    }

    /// The last `limit` lines that `filter` keeps (all of them since its
    /// time, when no limit), read backwards from the end; the file is left
    /// open at its end for following.
    fn tail(&mut self, limit: Option<usize>, filter: &Filter) -> Vec<Vec<u8>> {
        let Some(path) = self.path.clone() else { return Vec::new() };
        let mut lines = Vec::new();
        let mut files = vec![path.clone()];
        if self.key.kind == JobKind::Continuous {
            files.push(crate::logs::rotated_path(&path, 1));
        }
        for (i, file) in files.iter().enumerate() {
            let Ok(mut f) = File::open(file) else { continue };
            let done = read_backwards(&mut f, limit, filter, &mut lines);
            if i == 0 {
                let _ = f.seek(SeekFrom::End(0));
                self.file = Some(f);
            }
            if done {
                break;
            }
        }
        lines.reverse();
        lines
    }

    /// New whole lines since the last read; follows a rotation (the old
    /// file read to its end first) and, for a triggered job's latest run,
    /// moves on to a newer run.
    fn read_new(&mut self, filter: &Filter, mut emit: impl FnMut(&[u8])) {
        if self.file.is_none()
            && let Some(path) = &self.path
        {
            self.file = File::open(path).ok();
        }
        let mut buf = Vec::new();
        if let Some(f) = self.file.as_mut() {
            let _ = f.read_to_end(&mut buf);
        }
        self.emit_lines(&buf, filter, &mut emit);
        let replaced = match (&mut self.file, &self.path) {
            (Some(f), Some(path)) => {
                let (ours, now, read) = (f.metadata().ok(), std::fs::metadata(path).ok(), f.stream_position().ok());
                matches!((ours, now, read), (Some(a), Some(b), Some(at)) if a.ino() != b.ino() || b.len() < at)
            }
            _ => false,
        };
        if replaced {
            // Rotated (or truncated): what reached the old file since the
            // read above, then the new file from its start.
            let mut rest = Vec::new();
            if let Some(f) = self.file.as_mut() {
                let _ = f.read_to_end(&mut rest);
            }
            self.emit_lines(&rest, filter, &mut emit);
            self.flush_partial(filter, &mut emit);
            self.file = self.path.as_ref().and_then(|p| File::open(p).ok());
            self.read_new(filter, emit);
        }
    }

    /// Whether a newer run of this job has started (and is to be followed).
    fn newer_run(&self, id: &str) -> bool {
        self.key.kind == JobKind::Triggered
            && matches!(self.run.as_deref(), None | Some("latest"))
            && self.run_id.as_deref().is_none_or(|current| id > current)
    }

    /// Moves on to run `id`: what is left of the old run first.
    fn switch_to(&mut self, id: &str, filter: &Filter, emit: &mut impl FnMut(&[u8])) {
        self.read_new(filter, &mut *emit);
        self.flush_partial(filter, emit);
        self.run_id = Some(id.to_string());
        self.path = Some(self.data.join(id).join(OUTPUT_LOG));
        self.file = None;
    }

    fn emit_lines(&mut self, buf: &[u8], filter: &Filter, emit: &mut impl FnMut(&[u8])) {
        self.partial.extend_from_slice(buf);
        let Some(last) = memchr::memrchr(b'\n', &self.partial) else { return };
        let rest = self.partial.split_off(last + 1);
        for line in self.partial.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if filter.keeps(line) {
                emit(line);
            }
        }
        self.partial = rest;
    }

    fn flush_partial(&mut self, filter: &Filter, emit: &mut impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            if filter.keeps(&line) {
                emit(&line);
            }
        }
    }

    /// The run followed has ended (`--run ID -f` stops then).
    fn run_ended(&self) -> bool {
        let fixed = self.key.kind == JobKind::Triggered && self.run.is_some();
        let dir = self.path.as_deref().and_then(Path::parent);
        fixed && dir.and_then(crate::history::read_status).is_some_and(|s| s.status.is_final())
    }
}

/// Reads `file` backwards in blocks, pushing the lines `filter` keeps
/// (newest first) until `limit` are found or a line is older than the
/// filter's time. Returns whether it is done (no older file is needed).
fn read_backwards(file: &mut File, limit: Option<usize>, filter: &Filter, lines: &mut Vec<Vec<u8>>) -> bool {
    const BLOCK: u64 = 64 * 1024;
    let Ok(mut end) = file.seek(SeekFrom::End(0)) else { return false };
    let mut carry: Vec<u8> = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let mut block = vec![0; (end - start) as usize];
        if file.seek(SeekFrom::Start(start)).is_err() || file.read_exact(&mut block).is_err() {
            return false;
        }
        block.extend_from_slice(&carry);
        // The first piece may be cut: kept for the next block unless at the start.
        let mut pieces: Vec<&[u8]> = block.split(|b| *b == b'\n').collect();
        carry = if start > 0 { pieces.remove(0).to_vec() } else { Vec::new() };
        for line in pieces.into_iter().rev().filter(|l| !l.is_empty()) {
            if let (Some(since), Some(t)) = (filter.since_ms, stamp(line))
                && t < since
            {
                return true;
            }
            if filter.keeps(line) {
                lines.push(line.to_vec());
                if limit.is_some_and(|n| lines.len() >= n) {
                    return true;
                }
            }
        }
        end = start;
    }
    false
}

/// Follows `sources` until Ctrl-C (or a fixed run's end): woken by inotify
/// on each job's data folder and on the run folder it reads (never a
/// recursive watch: ten thousand jobs with fifty runs each would be half a
/// million), with a poll every half second as a fallback. With `--all`, jobs
/// that appear meanwhile are followed too. Nothing is created: a job whose
/// data folder does not exist yet is polled until it does.
fn follow(config: &Config, mut sources: Vec<Source>, filter: &Filter, printer: Printer, all: bool) {
    let (tx, rx) = std::sync::mpsc::channel::<notify::Result<notify::Event>>();
    let mut watches = Watches { watcher: notify::recommended_watcher(tx).ok() };
    let jobs_data = config.data_dir.join("jobs");
    let mut index: HashMap<JobKey, usize> = sources.iter().enumerate().map(|(i, s)| (s.key.clone(), i)).collect();
    if all {
        for kind in JobKind::ALL {
            watches.add(&jobs_data.join(kind.as_str()));
        }
    }
    for source in &mut sources {
        watches.source(source);
    }
    loop {
        let mut failed = false;
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(Ok(event)) => {
                for path in &event.paths {
                    let Some((key, run)) = owner(&jobs_data, path) else { continue };
                    let i = match index.get(&key) {
                        Some(&i) => i,
                        None if all => {
                            // A job that appeared after the start.
                            let mut source = Source::new(config, key.clone(), None);
                            watches.source(&mut source);
                            sources.push(source);
                            index.insert(key, sources.len() - 1);
                            sources.len() - 1
                        }
                        None => continue,
                    };
                    let new_run = run.filter(|id| sources[i].newer_run(id));
                    let switched = new_run.is_some();
                    failed |= read_source(&mut sources[i], new_run, filter, printer);
                    if switched || !sources[i].watched {
                        watches.source(&mut sources[i]);
                    }
                }
            }
            Ok(Err(_)) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                for source in &mut sources {
                    // Unwatched (its folder not there yet): looked for by hand.
                    let newest = match (source.key.kind, &source.run, source.watched) {
                        (JobKind::Triggered, None, false) => crate::history::run_ids(&source.data).into_iter().next(),
                        _ => None,
                    };
                    let new_run = newest.filter(|id| source.newer_run(id));
                    failed |= read_source(source, new_run, filter, printer);
                    if !source.watched {
                        watches.source(source);
                    }
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(500)),
        }
        if failed {
            return;
        }
        if !all && sources.iter().all(Source::run_ended) {
            for source in &mut sources {
                read_source(source, None, filter, printer);
            }
            return;
        }
    }
}

/// The inotify watches of `follow`.
struct Watches {
    watcher: Option<notify::RecommendedWatcher>,
}

impl Watches {
    fn add(&mut self, dir: &Path) -> bool {
        use notify::Watcher;
        self.watcher.as_mut().is_some_and(|w| w.watch(dir, notify::RecursiveMode::NonRecursive).is_ok())
    }

    fn remove(&mut self, dir: &Path) {
        use notify::Watcher;
        if let Some(w) = self.watcher.as_mut() {
            let _ = w.unwatch(dir);
        }
    }

    /// Watches a source's data folder and the run folder it reads now.
    fn source(&mut self, source: &mut Source) {
        if !source.watched {
            source.watched = self.add(&source.data);
        }
        let run_dir =
            source.path.as_deref().and_then(Path::parent).filter(|d| *d != source.data).map(Path::to_path_buf);
        if run_dir != source.watched_run {
            if let Some(old) = source.watched_run.take() {
                self.remove(&old);
            }
            source.watched_run = run_dir.filter(|d| self.add(d));
        }
    }
}

/// Prints what `source` has new (moving on to `new_run` first, when given);
/// true when standard output is gone.
fn read_source(source: &mut Source, new_run: Option<String>, filter: &Filter, printer: Printer) -> bool {
    let name = source.name.clone();
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    let mut emit = |line: &[u8]| failed |= printer.print(&mut out, &name, line).is_err();
    match new_run {
        Some(id) => source.switch_to(&id, filter, &mut emit),
        None => source.read_new(filter, &mut emit),
    }
    failed || out.flush().is_err()
}

/// The job (and run id) a path under `data/jobs` belongs to.
fn owner(jobs_data: &Path, path: &Path) -> Option<(JobKey, Option<String>)> {
    let mut parts = path.strip_prefix(jobs_data).ok()?.components().map(|c| c.as_os_str().to_str());
    let kind = JobKind::parse(parts.next()??)?;
    let name = parts.next()??;
    let run = parts.next().flatten().filter(|p| crate::history::is_run_id(p)).map(str::to_string);
    Some((JobKey::new(kind, name), run))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(time: &str, level: &str, text: &str) -> String {
        format!("[{time} > a1b2c3: {level}] {text}")
    }

    #[test]
    fn lines_are_kept_by_stream_and_time() {
        let out = line("2026-11-24T09:00:00.000Z", "INFO", "out");
        let err = line("2026-11-24T09:00:01.000Z", "ERROR", "err");
        let sys = line("2026-11-24T09:00:02.000Z", "SYS INFO", "started");
        let stdout = Filter { level: Some("INFO"), since_ms: None };
        assert!(stdout.keeps(out.as_bytes()) && !stdout.keeps(err.as_bytes()) && !stdout.keeps(sys.as_bytes()));
        let recent = Filter { level: None, since_ms: term::millis("2026-11-24T09:00:01Z") };
        assert!(!recent.keeps(out.as_bytes()) && recent.keeps(err.as_bytes()) && recent.keeps(sys.as_bytes()));
        assert_eq!(level(sys.as_bytes()), Some("SYS INFO"));
        assert_eq!(stamp(b"not a log line"), None);
    }

    #[test]
    fn the_tail_is_read_backwards_across_blocks_and_stops_at_the_time() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("job_log.txt");
        let mut text = String::new();
        for i in 0..5000 {
            let level = if i % 2 == 0 { "INFO" } else { "ERROR" };
            text += &line(&format!("2026-11-24T09:{:02}:{:02}.000Z", i / 60 % 60, i % 60), level, &format!("line {i}"));
            text.push('\n');
        }
        text += "partial";
        std::fs::write(&path, text).unwrap();
        let mut lines = Vec::new();
        let all = Filter { level: None, since_ms: None };
        assert!(read_backwards(&mut File::open(&path).unwrap(), Some(3), &all, &mut lines));
        let shown: Vec<String> = lines.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
        assert!(shown[0] == "partial" && shown[1].ends_with("line 4999") && shown[2].ends_with("line 4998"));
        lines.clear();
        let errors = Filter { level: Some("ERROR"), since_ms: None };
        read_backwards(&mut File::open(&path).unwrap(), Some(2000), &errors, &mut lines);
        assert_eq!(lines.len(), 2000);
        assert!(String::from_utf8_lossy(&lines[1999]).ends_with("line 1001"), "crossed blocks line by line");
        lines.clear();
        let since = Filter { level: None, since_ms: term::millis("2026-11-24T09:23:10Z") };
        assert!(read_backwards(&mut File::open(&path).unwrap(), None, &since, &mut lines));
        // 09:23:10 is line 1390 (and 4990): the last hour's wrap keeps only those after the last older line.
        assert!(String::from_utf8_lossy(lines.last().unwrap()).ends_with("line 4990"));
    }

    #[test]
    fn following_reads_across_a_rotation_and_a_truncation_losing_nothing() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("job_log.txt");
        std::fs::write(&log, "old 1\nold 2\n").unwrap();
        let mut source = Source {
            key: JobKey::new(JobKind::Continuous, "j"),
            name: "j".into(),
            data: d.path().to_path_buf(),
            run: None,
            path: Some(log.clone()),
            run_id: None,
            file: None,
            partial: Vec::new(),
            watched: false,
            watched_run: None,
        };
        let all = Filter { level: None, since_ms: None };
        assert_eq!(source.tail(Some(1), &all), [b"old 2".to_vec()]);
        let mut seen = Vec::new();
        let mut read =
            |source: &mut Source| source.read_new(&all, |l: &[u8]| seen.push(String::from_utf8_lossy(l).into_owned()));
        // A line reaches the old file, then it is rotated and the new one written.
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"old 3\n").unwrap();
        std::fs::rename(&log, crate::logs::rotated_path(&log, 1)).unwrap();
        std::fs::write(&log, "new 1\n").unwrap();
        read(&mut source);
        // Truncated under the reader (and shorter than what was read).
        std::fs::write(&log, "ok\n").unwrap();
        read(&mut source);
        assert_eq!(seen, ["old 3", "new 1", "ok"]);
    }

    #[test]
    fn a_path_is_attributed_to_its_job_and_run() {
        let root = Path::new("/d/jobs");
        let run = owner(root, Path::new("/d/jobs/triggered/report/202611240900000001/output_log.txt"));
        assert_eq!(run, Some((JobKey::new(JobKind::Triggered, "report"), Some("202611240900000001".into()))));
        let log = owner(root, Path::new("/d/jobs/continuous/heartbeat/job_log.txt"));
        assert_eq!(log, Some((JobKey::new(JobKind::Continuous, "heartbeat"), None)));
        assert_eq!(owner(root, Path::new("/elsewhere/x")), None);
    }
}
