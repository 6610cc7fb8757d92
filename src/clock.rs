//! Wall-clock timers for schedules.
//!
//! A schedule tick is a wall-clock instant. A `timerfd` on `CLOCK_REALTIME`
//! armed with an absolute time fires exactly then (the kernel's hrtimer, not a
//! millisecond wheel), and with `TFD_TIMER_CANCEL_ON_SET` it also wakes up
//! when the system clock is set (a step by NTP or an admin), so the schedule is
//! recomputed at once instead of firing an hour early or late. Nothing polls.
//!
//! One timerfd serves every job of the daemon ([`Clock`]): a task keeps the
//! armed times in order and the descriptor armed for the earliest, so ten
//! thousand scheduled jobs cost one descriptor, not ten thousand.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, mpsc};

/// Why a [`WallTimer`] woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The armed time has come.
    Due,
    /// The system clock was set; recompute.
    ClockChanged,
}

/// The daemon's wall clock: hands out [`WallTimer`]s that share one timerfd.
#[derive(Debug, Clone)]
pub struct Clock {
    tx: mpsc::UnboundedSender<Command>,
    next_id: Arc<AtomicU64>,
}

#[derive(Debug)]
enum Command {
    Set { id: u64, generation: u64, at: Option<Timestamp>, slot: Arc<Slot> },
    Forget { id: u64 },
}

/// Where the clock task leaves a timer's wake-up.
#[derive(Debug, Default)]
struct Slot {
    /// The generation of the arming it answers, and why it woke.
    wake: Mutex<Option<(u64, Wake)>>,
    notify: Notify,
}

impl Slot {
    fn wake(&self, generation: u64, wake: Wake) {
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, wake));
        self.notify.notify_one();
    }
}

impl Clock {
    /// Starts the clock's task on the current runtime.
    pub fn start() -> io::Result<Clock> {
        let fd = TimerFd::new()?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(serve(fd, rx));
        Ok(Clock { tx, next_id: Arc::new(AtomicU64::new(1)) })
    }

    /// A new, disarmed timer.
    pub fn timer(&self) -> WallTimer {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        WallTimer { clock: self.tx.clone(), id, generation: 0, armed: false, slot: Arc::default() }
    }
}

/// A one-shot timer at a wall-clock time.
pub struct WallTimer {
    clock: mpsc::UnboundedSender<Command>,
    id: u64,
    generation: u64,
    armed: bool,
    slot: Arc<Slot>,
}

impl WallTimer {
    /// Arms the timer for `at` (replacing any earlier time), or disarms it.
    pub fn set(&mut self, at: Option<Timestamp>) -> io::Result<()> {
        self.generation += 1;
        self.armed = at.is_some();
        let command = Command::Set { id: self.id, generation: self.generation, at, slot: self.slot.clone() };
        self.clock.send(command).map_err(|_| io::Error::other("the daemon's clock has stopped"))
    }

    /// Waits until the armed time or a clock change; pending while disarmed.
    pub async fn wait(&mut self) -> Wake {
        loop {
            if !self.armed {
                return std::future::pending().await;
            }
            let notified = self.slot.notify.notified();
            let woken = self.slot.wake.lock().unwrap_or_else(|e| e.into_inner()).take();
            match woken {
                // A wake-up for an earlier arming is stale.
                Some((generation, wake)) if generation == self.generation => {
                    self.armed = false;
                    return wake;
                }
                _ => notified.await,
            }
        }
    }
}

impl Drop for WallTimer {
    fn drop(&mut self) {
        let _ = self.clock.send(Command::Forget { id: self.id });
    }
}

/// The times armed, in order, and for whom.
#[derive(Default)]
struct Armed {
    order: BTreeSet<(Timestamp, u64)>,
    by_id: HashMap<u64, (Timestamp, u64, Arc<Slot>)>,
}

impl Armed {
    fn forget(&mut self, id: u64) {
        if let Some((at, _, _)) = self.by_id.remove(&id) {
            self.order.remove(&(at, id));
        }
    }

    fn set(&mut self, id: u64, generation: u64, at: Option<Timestamp>, slot: Arc<Slot>) {
        self.forget(id);
        if let Some(at) = at {
            self.order.insert((at, id));
            self.by_id.insert(id, (at, generation, slot));
        }
    }

    /// Wakes every timer due at `now` and forgets it.
    fn fire_due(&mut self, now: Timestamp) {
        while let Some(&(at, id)) = self.order.first() {
            if at > now {
                break;
            }
            self.order.pop_first();
            if let Some((_, generation, slot)) = self.by_id.remove(&id) {
                slot.wake(generation, Wake::Due);
            }
        }
    }

    /// The clock was set: every timer recomputes its time.
    fn clock_changed(&mut self) {
        self.order.clear();
        for (_, (_, generation, slot)) in self.by_id.drain() {
            slot.wake(generation, Wake::ClockChanged);
        }
    }
}

async fn serve(fd: TimerFd, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut armed = Armed::default();
    loop {
        if let Err(e) = fd.arm(armed.order.first().map(|(at, _)| *at)) {
            tracing::error!(error = %e, "cannot arm the schedule timer");
        }
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Set { id, generation, at, slot }) => armed.set(id, generation, at, slot),
                Some(Command::Forget { id }) => armed.forget(id),
                None => return,
            },
            wake = fd.wait() => match wake {
                Wake::Due => armed.fire_due(Timestamp::now()),
                Wake::ClockChanged => armed.clock_changed(),
            },
        }
        // Many commands arrive together (a reload): take them all before re-arming.
        while let Ok(command) = commands.try_recv() {
            match command {
                Command::Set { id, generation, at, slot } => armed.set(id, generation, at, slot),
                Command::Forget { id } => armed.forget(id),
            }
        }
    }
}

/// A timerfd on `CLOCK_REALTIME`, armed at absolute times, cancelled when the clock is set.
struct TimerFd {
    fd: AsyncFd<OwnedFd>,
}

impl TimerFd {
    fn new() -> io::Result<TimerFd> {
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
        Ok(TimerFd { fd })
    }

    /// Arms for `at`, or disarms. Armed or not, a clock change wakes it
    /// (armed far away when idle, so that `CANCEL_ON_SET` applies).
    fn arm(&self, at: Option<Timestamp>) -> io::Result<()> {
        let value = match at {
            // A zero value would disarm: an instant in the past becomes 1 ns after the epoch.
            Some(t) => libc::timespec {
                tv_sec: t.as_second().max(0),
                tv_nsec: libc::c_long::from(t.subsec_nanosecond().max(0)).max(1),
            },
            None => libc::timespec { tv_sec: libc::time_t::from(i32::MAX), tv_nsec: 0 },
        };
        let spec = libc::itimerspec { it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 }, it_value: value };
        let flags = libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET;
        // SAFETY: valid fd and itimerspec; the old value is not requested.
        let r = unsafe { libc::timerfd_settime(self.fd.get_ref().as_raw_fd(), flags, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until the armed time or a clock change. Cancel-safe.
    async fn wait(&self) -> Wake {
        loop {
            let Ok(mut guard) = self.fd.readable().await else { return std::future::pending().await };
            let mut buf = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte buffer from an open timerfd.
            let n = unsafe { libc::read(guard.get_inner().as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
            if n == 8 {
                return Wake::Due;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ECANCELED) => return Wake::ClockChanged,
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
        let clock = Clock::start().unwrap();
        let mut timer = clock.timer();
        let at = Timestamp::now() + jiff::SignedDuration::from_millis(30);
        timer.set(Some(at)).unwrap();
        assert_eq!(timer.wait().await, Wake::Due);
        let late = Timestamp::now().duration_since(at);
        assert!(late >= jiff::SignedDuration::ZERO, "never early");
        let mut past = clock.timer();
        past.set(Some(Timestamp::UNIX_EPOCH)).unwrap();
        assert_eq!(past.wait().await, Wake::Due, "a time in the past fires at once");
    }

    #[tokio::test]
    async fn many_timers_share_one_clock_and_fire_in_order() {
        let clock = Clock::start().unwrap();
        let now = Timestamp::now();
        let mut timers: Vec<WallTimer> = (0..200).map(|_| clock.timer()).collect();
        for (i, t) in timers.iter_mut().enumerate() {
            t.set(Some(now + jiff::SignedDuration::from_millis(20 + (i as i64 % 10) * 5))).unwrap();
        }
        // Re-arming replaces: this one fires later, not at its first time.
        timers[0].set(Some(now + jiff::SignedDuration::from_millis(120))).unwrap();
        for (i, t) in timers.iter_mut().enumerate().skip(1) {
            assert_eq!(t.wait().await, Wake::Due, "timer {i}");
        }
        assert_eq!(timers[0].wait().await, Wake::Due);
        assert!(Timestamp::now() >= now + jiff::SignedDuration::from_millis(120), "fired at its second time");
        // Disarmed timers never fire.
        let mut off = clock.timer();
        off.set(Some(now)).unwrap();
        off.set(None).unwrap();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), off.wait()).await;
        assert!(waited.is_err());
    }
}
