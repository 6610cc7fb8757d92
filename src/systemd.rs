//! systemd integration: `Type=notify` readiness, watchdog pings, status text.
//! Every call is a no-op when the daemon is not run by systemd.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::daemon::Notifier;

/// Talks to systemd through `$NOTIFY_SOCKET`.
pub struct Systemd {
    watchdog: Option<Duration>,
}

impl Systemd {
    pub fn from_env() -> Systemd {
        Systemd { watchdog: sd_notify::watchdog_enabled() }
    }
}

impl Notifier for Systemd {
    fn ready(&self) {
        let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status("jobs loaded")]);
    }

    fn alive(&self) {
        let _ = sd_notify::notify(&[NotifyState::Watchdog]);
    }

    /// Half the watchdog timeout systemd asked for, as sd_watchdog_enabled(3) advises.
    fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// Shortens the watchdog systemd enforces (`WATCHDOG_USEC=`), when it enforces one.
    fn limit_watchdog(&mut self, max: Duration) {
        if let Some(current) = self.watchdog
            && current > max
        {
            let _ = sd_notify::notify(&[NotifyState::WatchdogUsec(max.as_micros().min(u32::MAX as u128) as u32)]);
            self.watchdog = Some(max);
        }
    }
}
