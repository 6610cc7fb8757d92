//! Capturing a run's stdout and stderr into its log: both pipes read in one
//! loop, each line stamped on arrival and marked INFO or ERROR.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::SystemTime;

use tokio::io::unix::AsyncFd;

use crate::logs::{Level, LineSplitter, LogFile};

/// Reads per wake-up before giving the other stream and the rest of the daemon a turn.
const READS_PER_TURN: usize = 16;
const READ_SIZE: usize = 64 * 1024;
/// Flush the log buffer once it holds this much, so it stays small.
const FLUSH_AT: usize = 128 * 1024;

const LEVELS: [Level; 2] = [Level::Info, Level::Error];

/// The two output pipes of one run (index 0 stdout, 1 stderr).
pub struct Output {
    fds: [Option<AsyncFd<OwnedFd>>; 2],
    lines: [LineSplitter; 2],
    /// Bytes read so far (both streams).
    pub bytes: u64,
}

impl Output {
    pub fn new(stdout: OwnedFd, stderr: OwnedFd, max_line: usize) -> io::Result<Output> {
        Ok(Output {
            fds: [Some(register(stdout)?), Some(register(stderr)?)],
            lines: [LineSplitter::new(max_line), LineSplitter::new(max_line)],
            bytes: 0,
        })
    }

    /// Whether either pipe can still deliver data.
    pub fn is_open(&self) -> bool {
        self.fds.iter().any(Option::is_some)
    }

    /// Waits until a pipe has data (or closes), moves what it has into `log`.
    /// Pending forever once both pipes are closed.
    pub async fn pump(&mut self, log: &mut LogFile) {
        let [out, err] = &self.fds;
        let (index, guard) = tokio::select! {
            r = readable(out) => (0, r),
            r = readable(err) => (1, r),
        };
        let outcome = match guard {
            Ok(mut guard) => {
                let fd = guard.get_inner().as_raw_fd();
                let outcome = drain(&mut self.bytes, &mut self.lines[index], LEVELS[index], fd, log);
                if outcome == Drain::WouldBlock {
                    guard.clear_ready();
                }
                outcome
            }
            Err(_) => Drain::Closed,
        };
        if outcome == Drain::Closed {
            self.close(index, log);
        }
        log.flush();
    }

    fn close(&mut self, index: usize, log: &mut LogFile) {
        self.fds[index] = None;
        self.lines[index].finish(&mut |line: &[u8]| log.line(LEVELS[index], line, SystemTime::now()));
    }

    /// Stops reading: what the pipes still hold and unfinished last lines are
    /// written, the pipes are closed.
    pub fn finish(&mut self, log: &mut LogFile) {
        for (index, level) in LEVELS.into_iter().enumerate() {
            if let Some(fd) = self.fds[index].as_ref().map(|f| f.get_ref().as_raw_fd()) {
                drain(&mut self.bytes, &mut self.lines[index], level, fd, log);
                self.close(index, log);
            }
        }
        log.flush();
    }
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is open, owned, and always returns the same fd
    // until it is dropped together with the `AsyncFd`.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(io::Error::from)
}

async fn readable(fd: &Option<AsyncFd<OwnedFd>>) -> io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Drain {
    WouldBlock,
    Closed,
    Yield,
}

/// Reads what the pipe has (a bounded number of reads) and writes the lines.
/// The read buffer lives on this (synchronous) stack frame, not in any task.
fn drain(bytes: &mut u64, lines: &mut LineSplitter, level: Level, fd: i32, log: &mut LogFile) -> Drain {
    let mut buf = [0u8; READ_SIZE];
    for _ in 0..READS_PER_TURN {
        // SAFETY: `fd` is an open pipe owned by the caller; `buf` is a valid writable buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => return Drain::Closed,
            n if n > 0 => {
                let n = n as usize;
                *bytes += n as u64;
                let now = SystemTime::now();
                lines.feed(&buf[..n], &mut |line: &[u8]| log.line(level, line, now));
                if log.buffered() >= FLUSH_AT {
                    log.flush();
                }
            }
            _ => match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock => return Drain::WouldBlock,
                io::ErrorKind::Interrupted => continue,
                _ => return Drain::Closed,
            },
        }
    }
    Drain::Yield
}
