//! Capturing a run's stdout and stderr into its log: both pipes read in one
//! loop, each line stamped on arrival and marked INFO or ERROR.
//!
//! Arrival order across the two pipes: both are watched by an epoll instance
//! of their own (edge-triggered), whose ready list is first-in first-out, so a
//! wake-up tells which stream got data first; streams are drained in that
//! order. (Two readable pipes polled side by side carry no order at all:
//! stdout then stderr written a microsecond apart could be logged either way.)

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
    /// An epoll instance watching both pipes; itself watched by the runtime.
    epoll: AsyncFd<OwnedFd>,
    fds: [Option<OwnedFd>; 2],
    lines: [LineSplitter; 2],
    /// Streams that may hold unread data, in the order they became readable.
    ready: VecDeque<usize>,
    /// Bytes read so far (both streams).
    pub bytes: u64,
}

impl Output {
    pub fn new(stdout: OwnedFd, stderr: OwnedFd, max_line: usize) -> io::Result<Output> {
        let epoll = new_epoll()?;
        for (index, fd) in [&stdout, &stderr].into_iter().enumerate() {
            watch(&epoll, fd, index)?;
        }
        Ok(Output {
            epoll: register(epoll)?,
            fds: [Some(stdout), Some(stderr)],
            lines: [LineSplitter::new(max_line), LineSplitter::new(max_line)],
            ready: VecDeque::with_capacity(2),
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
        while self.ready.is_empty() {
            if !self.is_open() {
                return std::future::pending().await;
            }
            if self.wait_ready().await.is_err() {
                // The epoll instance failed (it never should): read both pipes in turn.
                self.ready.extend((0..2).filter(|i| self.fds[*i].is_some()));
            }
        }
        let index = self.ready[0];
        let Some(fd) = self.fds[index].as_ref().map(AsRawFd::as_raw_fd) else {
            self.ready.pop_front();
            return;
        };
        match drain(&mut self.bytes, &mut self.lines[index], LEVELS[index], fd, log) {
            Drain::WouldBlock => {
                self.ready.pop_front();
            }
            Drain::Closed => {
                self.ready.pop_front();
                self.close(index, log);
            }
            // More to read: the other stream gets a turn first.
            Drain::Yield => self.ready.rotate_left(1),
        }
        log.flush();
    }

    /// Waits for the epoll instance and appends the streams it reports, in its order.
    async fn wait_ready(&mut self) -> io::Result<()> {
        let mut guard = self.epoll.readable().await?;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        // SAFETY: a valid epoll fd and a buffer of `events.len()` entries; no waiting (timeout 0).
        let n = unsafe { libc::epoll_wait(guard.get_inner().as_raw_fd(), events.as_mut_ptr(), 2, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
        }
        if n == 0 {
            guard.clear_ready();
        }
        for event in &events[..n as usize] {
            let index = event.u64 as usize;
            if index < 2 && !self.ready.contains(&index) {
                self.ready.push_back(index);
            }
        }
        Ok(())
    }

    fn close(&mut self, index: usize, log: &mut LogFile) {
        self.ready.retain(|i| *i != index);
        if let Some(fd) = self.fds[index].take() {
            // SAFETY: removing a registered fd from our epoll instance; errors are harmless.
            unsafe {
                libc::epoll_ctl(
                    self.epoll.get_ref().as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd.as_raw_fd(),
                    std::ptr::null_mut(),
                )
            };
        }
        self.lines[index].finish(&mut |line: &[u8]| log.line(LEVELS[index], line, SystemTime::now()));
    }

    /// Stops reading: what the pipes still hold and unfinished last lines are
    /// written, the pipes are closed.
    pub fn finish(&mut self, log: &mut LogFile) {
        for (index, level) in LEVELS.into_iter().enumerate() {
            if let Some(fd) = self.fds[index].as_ref().map(AsRawFd::as_raw_fd) {
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

fn new_epoll() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Edge-triggered: an event each time new data arrives (or the writer closes),
/// queued at the tail of the ready list.
fn watch(epoll: &OwnedFd, fd: &OwnedFd, index: usize) -> io::Result<()> {
    let mut event = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: index as u64 };
    // SAFETY: both fds are open; `event` is a valid epoll_event.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut event) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
