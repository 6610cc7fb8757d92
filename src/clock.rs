//! Notices when the system clock is set (a step by NTP or an admin), so that
//! schedules, which live in wall-clock time, are recomputed at once instead
//! of firing an hour late or early.
//!
//! A `timerfd` on `CLOCK_REALTIME` armed far in the future with
//! `TFD_TIMER_CANCEL_ON_SET` becomes readable (with `ECANCELED`) exactly when
//! the clock is set; nothing polls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// Starts the watcher; the receiver's value changes on every clock step.
pub fn watch_clock() -> io::Result<watch::Receiver<u64>> {
    let fd = arm(create()?)?;
    // SAFETY: an `OwnedFd` stays open and unchanged for the AsyncFd's life.
    let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(io::Error::from)?;
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable().await else { return };
            let mut buf = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte buffer from an open timerfd.
            let n = unsafe { libc::read(fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            let err = io::Error::last_os_error();
            if n < 0 && err.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            if n < 0 && err.raw_os_error() == Some(libc::ECANCELED) {
                tracing::warn!("the system clock was set; recomputing schedules");
                tx.send_modify(|n| *n += 1);
            }
            if set_far_future(fd.get_ref()).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

fn create() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn arm(fd: OwnedFd) -> io::Result<OwnedFd> {
    set_far_future(&fd)?;
    Ok(fd)
}

fn set_far_future(fd: &OwnedFd) -> io::Result<()> {
    let spec = libc::itimerspec {
        it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
        it_value: libc::timespec { tv_sec: i64::from(i32::MAX) * 8, tv_nsec: 0 },
    };
    let flags = libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET;
    // SAFETY: valid fd and a valid itimerspec; the old value is not requested.
    let r = unsafe { libc::timerfd_settime(fd.as_raw_fd(), flags, &spec, std::ptr::null_mut()) };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}
