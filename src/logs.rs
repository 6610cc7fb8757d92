//! Job logs: the line format, splitting output into lines with bounded memory,
//! and append-only log files with size rotation.
//!
//! Every line is `[<UTC time with ms>Z > <instance>: <LEVEL>] <text>`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a line is: the job's stdout or stderr, or the daemon speaking about the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
    SysInfo,
    SysWarn,
    SysError,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Error => "ERROR",
            Level::SysInfo => "SYS INFO",
            Level::SysWarn => "SYS WARN",
            Level::SysError => "SYS ERROR",
        }
    }
}

/// Formats a time as RFC 3339 UTC with milliseconds: `2026-11-21T09:30:00.123Z`.
pub fn format_time(t: SystemTime) -> String {
    let mut out = [0u8; 24];
    write_time(&mut out, t);
    String::from_utf8_lossy(&out).into_owned()
}

fn write_time(out: &mut [u8; 24], t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    let ms = since.subsec_millis();
    let fields: [(usize, u64, usize); 7] = [
        (0, y as u64, 4),
        (5, m as u64, 2),
        (8, d as u64, 2),
        (11, rem / 3600, 2),
        (14, rem % 3600 / 60, 2),
        (17, rem % 60, 2),
        (20, u64::from(ms), 3),
    ];
    out.copy_from_slice(b"0000-00-00T00:00:00.000Z");
    for (at, mut value, width) in fields {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Builds line prefixes; the time part is re-rendered at most once per millisecond.
#[derive(Debug, Clone)]
pub struct Stamper {
    /// Shared: every log of a daemon names the same instance.
    instance: std::sync::Arc<str>,
    last_ms: u64,
    time: [u8; 24],
}

impl Stamper {
    pub fn new(instance: impl Into<std::sync::Arc<str>>) -> Stamper {
        Stamper { instance: instance.into(), last_ms: u64::MAX, time: [b'0'; 24] }
    }

    /// Appends `[<time> > <instance>: <LEVEL>] ` to `out`.
    pub fn prefix(&mut self, out: &mut Vec<u8>, level: Level, now: SystemTime) {
        let ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        if ms != self.last_ms {
            write_time(&mut self.time, now);
            self.last_ms = ms;
        }
        out.push(b'[');
        out.extend_from_slice(&self.time);
        out.extend_from_slice(b" > ");
        out.extend_from_slice(self.instance.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(level.label().as_bytes());
        out.extend_from_slice(b"] ");
    }
}

/// Appends `text` keeping it readable: valid UTF-8 as is, each invalid byte
/// and each NUL as `\xNN` (a NUL would make tools take the log for binary), a
/// trailing carriage return dropped, and no newline inside.
pub fn push_readable(out: &mut Vec<u8>, text: &[u8]) {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if let Ok(s) = std::str::from_utf8(text)
        && memchr::memchr(0, text).is_none()
    {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for chunk in text.utf8_chunks() {
        for piece in chunk.valid().as_bytes().split_inclusive(|b| *b == 0) {
            match piece.split_last() {
                Some((0, rest)) => {
                    out.extend_from_slice(rest);
                    out.extend_from_slice(b"\\x00");
                }
                _ => out.extend_from_slice(piece),
            }
        }
        for b in chunk.invalid() {
            out.extend_from_slice(format!("\\x{b:02X}").as_bytes());
        }
    }
}

/// Splits a byte stream into lines. Holds at most `max` bytes of an unfinished
/// line; a longer line is emitted in pieces of `max` bytes (cut on a UTF-8
/// character boundary where possible).
#[derive(Debug)]
pub struct LineSplitter {
    partial: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter { partial: Vec::new(), max: max.max(4) }
    }

    /// Feeds bytes; calls `emit` for every complete (or over-long) line.
    pub fn feed(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(&[u8])) {
        while let Some(nl) = memchr::memchr(b'\n', chunk) {
            let (line, rest) = (&chunk[..nl], &chunk[nl + 1..]);
            if self.partial.is_empty() {
                self.emit_bounded(line, emit);
            } else {
                self.push_partial(line, emit);
                emit(&std::mem::take(&mut self.partial));
            }
            chunk = rest;
        }
        self.push_partial(chunk, emit);
        if self.partial.capacity() > self.max.min(64 * 1024) && self.partial.is_empty() {
            self.partial = Vec::new();
        }
    }

    /// Emits what is left of an unfinished last line.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&std::mem::take(&mut self.partial));
        }
    }

    fn emit_bounded(&mut self, mut line: &[u8], emit: &mut impl FnMut(&[u8])) {
        while line.len() > self.max {
            let cut = utf8_cut(line, self.max);
            emit(&line[..cut]);
            line = &line[cut..];
        }
        emit(line);
    }

    fn push_partial(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&[u8])) {
        while self.partial.len() + bytes.len() > self.max {
            let room = self.max - self.partial.len();
            self.partial.extend_from_slice(&bytes[..room]);
            // The character at the end of the buffer may go on in the bytes not read in yet.
            let cut = match bytes.get(room) {
                Some(next) if next & 0xC0 == 0x80 => utf8_cut(&self.partial, self.max - 1),
                _ => utf8_cut(&self.partial, self.max),
            };
            let tail = self.partial.split_off(cut);
            emit(&self.partial);
            self.partial.clear();
            self.partial.extend_from_slice(&tail);
            bytes = &bytes[room..];
        }
        self.partial.extend_from_slice(bytes);
    }
}

/// A cut point at most `max` bytes in that does not split a UTF-8 character
/// (unless the data is not UTF-8 there anyway).
fn utf8_cut(bytes: &[u8], max: usize) -> usize {
    let max = max.min(bytes.len());
    (max.saturating_sub(3)..=max)
        .rev()
        .find(|&i| i > 0 && (i == bytes.len() || (bytes[i] & 0xC0) != 0x80))
        .unwrap_or(max)
}

/// Rotation policy of a log file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rotation {
    pub max_size: u64,
    pub keep: u32,
}

/// An append-only log file with a write buffer and optional size rotation.
/// Several daemons may append to the same file (shared data folder); rotation
/// is done under a lock and noticed by the others.
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    rotation: Option<Rotation>,
    size: u64,
    stamper: Stamper,
    buf: Vec<u8>,
    /// When the file was last checked for having been deleted.
    checked: Option<std::time::Instant>,
    /// Set while lines cannot be written (a full disk, say). Boxed: ten
    /// thousand jobs' scheduler logs are seldom in trouble.
    trouble: Option<Box<Trouble>>,
    /// Closed after every flush (a log written seldom, kept for many jobs).
    closing: bool,
}

/// Lines lost since the log file stopped taking them, to be told in the file
/// once it takes them again; the daemon's log hears of it once a minute.
struct Trouble {
    since: SystemTime,
    error: String,
    lost: u64,
    /// A line was cut in the middle by the failing write.
    torn: bool,
    repeats: crate::repeats::Repeats,
}

/// How often a log in use is checked for having been deleted under us.
const DELETED_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl LogFile {
    pub fn open(
        path: &Path,
        instance: impl Into<std::sync::Arc<str>>,
        rotation: Option<Rotation>,
    ) -> io::Result<LogFile> {
        let mut log = LogFile::lazy(path, instance, rotation);
        log.ensure_open()?;
        Ok(log)
    }

    /// A log whose file is created at the first line written (no disk access now).
    pub fn lazy(path: &Path, instance: impl Into<std::sync::Arc<str>>, rotation: Option<Rotation>) -> LogFile {
        LogFile {
            path: path.to_path_buf(),
            file: None,
            rotation,
            size: 0,
            stamper: Stamper::new(instance),
            buf: Vec::new(),
            checked: None,
            trouble: None,
            closing: false,
        }
    }

    fn ensure_open(&mut self) -> io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        let open = || OpenOptions::new().create(true).append(true).open(&self.path);
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(self.path.parent().unwrap_or(Path::new(".")))?;
                open()?
            }
            other => other?,
        };
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    /// Closes the file after every flush: a log written a few times a minute
    /// holds no descriptor in between (ten thousand scheduled jobs' logs).
    pub fn closing(mut self) -> LogFile {
        self.closing = true;
        self.file = None;
        self
    }

    /// Buffers one line of job output (or any text) stamped with `now`.
    pub fn line(&mut self, level: Level, text: &[u8], now: SystemTime) {
        self.stamper.prefix(&mut self.buf, level, now);
        push_readable(&mut self.buf, text);
        self.buf.push(b'\n');
    }

    /// Writes one daemon line about the job, at once.
    pub fn sys(&mut self, level: Level, text: &str) {
        for line in text.lines() {
            self.line(level, line.as_bytes(), SystemTime::now());
        }
        self.flush();
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Writes the buffer out. Lines that cannot be written (a full disk) are
    /// counted; the first line written again says how many were lost.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        self.reopen_if_deleted();
        if self.trouble.is_none() || self.recovered() {
            let buf = std::mem::take(&mut self.buf);
            let mut rest = buf.as_slice();
            if let Err((e, torn)) = self.write_rotating(&mut rest) {
                self.lost(&e, memchr::memchr_iter(b'\n', rest).count(), torn);
            }
            self.buf = buf;
        } else {
            let lines = memchr::memchr_iter(b'\n', &self.buf).count();
            self.lost_again(lines);
        }
        self.buf.clear();
        if self.closing || self.buf.capacity() > 256 * 1024 {
            // A log written seldom keeps neither its file nor its buffer.
            self.buf = Vec::new();
        }
        if self.closing {
            self.file = None;
        }
    }

    /// Lines could not be written: counts them, reports now or later.
    fn lost(&mut self, error: &io::Error, lines: usize, torn: bool) {
        // Opened afresh at the next flush: the folder may have gone, the disk may have room again.
        self.file = None;
        let trouble = self.trouble.get_or_insert_with(|| {
            Box::new(Trouble {
                since: SystemTime::now(),
                error: error.to_string(),
                lost: 0,
                torn: false,
                repeats: Default::default(),
            })
        });
        trouble.torn |= torn;
        trouble.error = error.to_string();
        self.lost_again(lines);
    }

    fn lost_again(&mut self, lines: usize) {
        let Some(trouble) = self.trouble.as_mut() else { return };
        trouble.lost += lines as u64;
        if trouble.repeats.occurred(std::time::Instant::now()).is_some() {
            tracing::error!(
                path = %self.path.display(),
                error = %trouble.error,
                lines_lost = trouble.lost,
                "cannot write job log; its lines are lost until it can (told again once a minute)"
            );
        }
    }

    /// While in trouble, tries to write the line that says how many lines
    /// were lost; true once it is written (the trouble is over).
    fn recovered(&mut self) -> bool {
        let Some(trouble) = self.trouble.as_ref() else { return true };
        let mut notice = Vec::new();
        if trouble.torn {
            notice.push(b'\n');
        }
        self.stamper.prefix(&mut notice, Level::SysWarn, SystemTime::now());
        let text = format!(
            "{} log lines were lost from {} until now: the log could not be written ({})",
            trouble.lost,
            format_time(trouble.since),
            trouble.error
        );
        push_readable(&mut notice, text.as_bytes());
        notice.push(b'\n');
        let mut rest = notice.as_slice();
        match self.write_rotating(&mut rest) {
            Ok(()) => {
                let trouble = self.trouble.take().expect("checked above");
                tracing::warn!(
                    path = %self.path.display(),
                    lines_lost = trouble.lost,
                    "job log writable again; the lines lost are counted in it"
                );
                true
            }
            Err((e, torn)) => {
                self.lost(&e, 0, torn);
                false
            }
        }
    }

    /// A log file deleted while in use (by hand, or with its whole data
    /// folder) would swallow every later line and keep its disk space: at most
    /// once a second, see whether ours still has a name, and if not start a
    /// new file (and folder), saying so in it.
    fn reopen_if_deleted(&mut self) {
        let now = std::time::Instant::now();
        if self.checked.is_some_and(|t| now.duration_since(t) < DELETED_CHECK) {
            return;
        }
        self.checked = Some(now);
        let deleted = self.file.as_ref().is_some_and(|f| f.metadata().is_ok_and(|m| m.nlink() == 0));
        if deleted {
            self.file = None;
            let mut warning = Vec::new();
            self.stamper.prefix(&mut warning, Level::SysWarn, SystemTime::now());
            warning.extend_from_slice(b"the log file was deleted while in use; this new one goes on from here\n");
            warning.append(&mut self.buf);
            self.buf = warning;
            tracing::warn!(path = %self.path.display(), "a job log was deleted while in use; writing a new one");
        }
    }

    /// Writes whole lines; rotates before a line that would not fit (a line
    /// longer than the whole file size goes alone into a fresh file). On an
    /// error, `rest` is what was not written, and the flag says whether a line
    /// was cut in the middle.
    fn write_rotating(&mut self, rest: &mut &[u8]) -> Result<(), (io::Error, bool)> {
        self.ensure_open().map_err(|e| (e, false))?;
        while !rest.is_empty() {
            let fits = match self.rotation {
                None => rest.len(),
                Some(r) => {
                    let room = r.max_size.saturating_sub(self.size) as usize;
                    match memchr::memrchr(b'\n', &rest[..room.min(rest.len())]) {
                        _ if rest.len() <= room => rest.len(),
                        Some(i) => i + 1,
                        None if self.size == 0 => memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1),
                        None => 0,
                    }
                }
            };
            if fits == 0 {
                let rotation = self.rotation.expect("only rotating logs run out of room");
                self.rotate(rotation).map_err(|e| (e, false))?;
                continue;
            }
            let whole: &[u8] = rest;
            let (chunk, after) = whole.split_at(fits);
            if let Err((n, e)) = self.append(chunk) {
                *rest = &whole[n..];
                return Err((e, n > 0 && chunk[n - 1] != b'\n'));
            }
            *rest = after;
        }
        Ok(())
    }

    /// Appends bytes; on an error, how many of them were written.
    fn append(&mut self, bytes: &[u8]) -> Result<(), (usize, io::Error)> {
        self.ensure_open().map_err(|e| (0, e))?;
        let file = self.file.as_mut().expect("opened above");
        let mut done = 0;
        while done < bytes.len() {
            match file.write(&bytes[done..]) {
                Ok(0) => return Err((done, io::Error::from(io::ErrorKind::WriteZero))),
                Ok(n) => {
                    done += n;
                    self.size += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((done, e)),
            }
        }
        Ok(())
    }

    /// Moves `job_log.txt` to `job_log.1.txt` (and so on), unless another
    /// daemon already did, in which case only our handle is renewed.
    fn rotate(&mut self, rotation: Rotation) -> io::Result<()> {
        let lock_path = self.path.with_extension("lock");
        let lock_file = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
        let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io::Error::from(e))?;
        let ours = self.file.as_ref().map(|f| f.metadata()).transpose()?;
        let current = std::fs::metadata(&self.path).ok();
        let same = matches!((&ours, &current), (Some(a), Some(b)) if a.ino() == b.ino() && a.dev() == b.dev());
        if same && current.as_ref().is_some_and(|m| m.len() >= rotation.max_size.min(self.size)) {
            self.shift_rotated(rotation.keep)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn shift_rotated(&self, keep: u32) -> io::Result<()> {
        if keep == 0 {
            return std::fs::remove_file(&self.path);
        }
        for i in (1..keep).rev() {
            let _ = std::fs::rename(rotated_path(&self.path, i), rotated_path(&self.path, i + 1));
        }
        std::fs::rename(&self.path, rotated_path(&self.path, 1))
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        self.flush();
    }
}

/// `job_log.txt` → `job_log.<n>.txt`.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    path.with_file_name(format!("{stem}.{n}{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn time_format_is_rfc3339_utc_millis() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_253_400_123);
        assert_eq!(format_time(t), "2026-11-21T09:30:00.123Z");
        assert_eq!(format_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(format_time(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn prefix_has_the_contract_format() {
        let mut s = Stamper::new("a1b2c3");
        let mut out = Vec::new();
        s.prefix(&mut out, Level::SysWarn, UNIX_EPOCH + Duration::from_millis(1_795_253_400_123));
        assert_eq!(out, b"[2026-11-21T09:30:00.123Z > a1b2c3: SYS WARN] ");
    }

    #[test]
    fn invalid_utf8_is_escaped_and_cr_dropped() {
        let mut out = Vec::new();
        push_readable(&mut out, b"ok \xff\xfe caf\xc3\xa9\r");
        assert_eq!(String::from_utf8(out).unwrap(), "ok \\xFF\\xFE café");
    }

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::new(max);
        let mut lines = Vec::new();
        let mut emit = |l: &[u8]| lines.push(String::from_utf8_lossy(l).into_owned());
        for c in chunks {
            s.feed(c, &mut emit);
        }
        s.finish(&mut emit);
        lines
    }

    #[test]
    fn lines_across_chunks() {
        assert_eq!(split(100, &[b"a\nb", b"c\n", b"\nd"]), ["a", "bc", "", "d"]);
    }

    #[test]
    fn long_lines_are_split_and_memory_stays_bounded() {
        let mut s = LineSplitter::new(8);
        let mut count = 0;
        for _ in 0..1000 {
            s.feed(&[b'x'; 5], &mut |l: &[u8]| {
                assert_eq!(l.len(), 8);
                count += 1;
            });
            assert!(s.partial.len() <= 8);
        }
        assert_eq!(count, 624, "the last full piece waits for more bytes or the end");
        assert_eq!(split(4, &[b"abcdefghij\n"]), ["abcd", "efgh", "ij"]);
    }

    #[test]
    fn split_does_not_cut_a_character() {
        let lines = split(5, &["aaaé€b\n".as_bytes()]);
        assert_eq!(lines, ["aaaé", "€b"]);
    }

    #[test]
    fn a_line_over_the_limit_is_cut_on_character_boundaries_however_it_arrives() {
        // "aé€" * 200 without a newline, fed in chunks that split characters.
        let text = "aé€".repeat(200);
        for chunk in [1, 2, 3, 7, 64] {
            let pieces: Vec<&[u8]> = text.as_bytes().chunks(chunk).collect();
            let lines = split(10, &pieces);
            assert_eq!(lines.concat(), text, "chunks of {chunk}");
            assert!(lines.iter().all(|l| l.len() <= 10 && !l.contains('\u{FFFD}')), "chunks of {chunk}: {lines:?}");
        }
    }

    #[test]
    fn nul_bytes_are_escaped() {
        let mut out = Vec::new();
        push_readable(&mut out, b"a\0b\0");
        assert_eq!(String::from_utf8(out).unwrap(), "a\\x00b\\x00");
    }

    #[test]
    fn rotation_keeps_the_configured_number_of_files() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("job_log.txt");
        let mut log = LogFile::open(&path, "i", Some(Rotation { max_size: 200, keep: 2 })).unwrap();
        for i in 0..40 {
            log.sys(Level::SysInfo, &format!("line {i}"));
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
        assert!(rotated_path(&path, 1).exists() && rotated_path(&path, 2).exists());
        assert!(!rotated_path(&path, 3).exists());
        let newest = std::fs::read_to_string(&path).unwrap();
        assert!(newest.ends_with("SYS INFO] line 39\n"), "{newest}");
    }

    #[test]
    fn lines_lost_to_a_full_disk_are_counted_in_the_log_once_it_works_again() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("job_log.txt");
        // Every write to /dev/full fails with ENOSPC, as on a full disk.
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        let mut log = LogFile::lazy(&path, "i", None);
        for i in 0..5 {
            log.line(Level::Info, format!("lost {i}").as_bytes(), SystemTime::now());
            log.line(Level::Error, b"lost too", SystemTime::now());
            log.flush();
        }
        assert_eq!(log.trouble.as_ref().map(|t| t.lost), Some(10));
        std::fs::remove_file(&path).unwrap(); // room again
        log.line(Level::Info, b"written", SystemTime::now());
        log.flush();
        assert!(log.trouble.is_none());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("SYS WARN] 10 log lines were lost from "), "{text}");
        assert!(lines[0].contains("No space left on device"), "{text}");
        assert!(lines[1].ends_with("INFO] written"), "{text}");
    }
}
