//! Wall-clock timers for schedules.
//!
//! A schedule tick is a wall-clock instant. A `timerfd` on `CLOCK_REALTIME`
//! armed with an absolute time fires exactly then (the kernel's hrtimer, not a
//! millisecond wheel), and with `TFD_TIMER_CANCEL_ON_SET` it also wakes up
//! when the system clock is set (a step by NTP or an admin), so the schedule is
//! recomputed at once instead of firing an hour early or late. Nothing polls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// Why a [`WallTimer`] woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The armed time has come.
    Due,
    /// The system clock was set; recompute.
    ClockChanged,
}

/// A one-shot timer at a wall-clock time.
pub struct WallTimer {
    fd: AsyncFd<OwnedFd>,
    armed: bool,
}

impl WallTimer {
    pub fn new() -> io::Result<WallTimer> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an `OwnedFd` stays open and unchanged for the AsyncFd's life.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(io::Error::from)?;
        Ok(WallTimer { fd, armed: false })
    }

    /// Arms the timer for `at` (replacing any earlier time), or disarms it.
    pub fn set(&mut self, at: Option<jiff::Timestamp>) -> io::Result<()> {
        let value = match at {
            // A zero value would disarm: an instant in the past becomes 1 ns after the epoch.
            Some(t) => libc::timespec {
                tv_sec: t.as_second().max(0),
                tv_nsec: libc::c_long::from(t.subsec_nanosecond().max(0)).max(1),
            },
            None => libc::timespec { tv_sec: 0, tv_nsec: 0 },
        };
        let spec = libc::itimerspec { it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 }, it_value: value };
        let flags = libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET;
        // SAFETY: valid fd and itimerspec; the old value is not requested.
        let r = unsafe { libc::timerfd_settime(self.fd.get_ref().as_raw_fd(), flags, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed = at.is_some();
        Ok(())
    }

    /// Waits until the armed time or a clock change; pending while disarmed.
    pub async fn wait(&mut self) -> Wake {
        if !self.armed {
            return std::future::pending().await;
        }
        loop {
            let Ok(mut guard) = self.fd.readable().await else { return std::future::pending().await };
            let mut buf = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte buffer from an open timerfd.
            let n = unsafe { libc::read(guard.get_inner().as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            if n == 8 {
                self.armed = false;
                return Wake::Due;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ECANCELED) => {
                    self.armed = false;
                    return Wake::ClockChanged;
                }
                _ => guard.clear_ready(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_at_the_wall_clock_time() {
        let mut timer = WallTimer::new().unwrap();
        let at = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(30);
        timer.set(Some(at)).unwrap();
        assert_eq!(timer.wait().await, Wake::Due);
        let late = jiff::Timestamp::now().duration_since(at);
        assert!(late >= jiff::SignedDuration::ZERO, "never early");
        let mut past = WallTimer::new().unwrap();
        past.set(Some(jiff::Timestamp::UNIX_EPOCH)).unwrap();
        assert_eq!(past.wait().await, Wake::Due, "a time in the past fires at once");
    }
}
