//! The job's inbox (`"trigger": {"inbox": …}`): a request per file that
//! lands there (see [`crate::inbox`]).

use std::path::PathBuf;
use std::time::SystemTime;

use super::Actor;
use crate::inbox::{self, Arrival};
use crate::logs::Level;
use crate::queue::Entry;

impl Actor {
    /// Watches the folder the settings name (or stops watching), and reads it soon.
    pub(super) async fn arm_inbox(&mut self) {
        let wanted = self.definition.good.as_ref().and_then(|j| j.settings.trigger.clone()).map(|t| {
            let dir = PathBuf::from(&t.inbox);
            if dir.is_absolute() { dir } else { self.config.data_dir.join(dir) }
        });
        if wanted == self.inbox {
            return;
        }
        if let Some(old) = self.inbox.take() {
            self.shared.inboxes.unwatch(&self.key.name, &old);
            self.scan_at = None;
        }
        let Some(dir) = wanted else { return };
        match self.shared.inboxes.watch(&self.key.name, &dir) {
            Ok(()) => self.scheduler_log.sys(Level::SysInfo, &format!("watching the inbox {}", dir.display())),
            Err(e) => self.scheduler_log.sys(
                Level::SysError,
                &format!("cannot watch the inbox {}: {e}; it is read every scan_interval instead", dir.display()),
            ),
        }
        self.inbox = Some(dir);
        self.scan_at = Some(tokio::time::Instant::now());
    }

    fn pattern(&self) -> String {
        self.definition
            .good
            .as_ref()
            .and_then(|j| j.settings.trigger.as_ref())
            .map_or("*".into(), |t| t.pattern.clone())
    }

    pub(super) async fn on_arrival(&mut self, arrival: Arrival) {
        match arrival {
            Arrival::File(name) if inbox::wanted(&name, &self.pattern()) => self.take_file(&name).await,
            Arrival::File(_) => {}
            Arrival::Rescan => self.scan_inbox().await,
        }
    }

    /// Reads the inbox: every settled file is taken; then again after `scan_interval`.
    pub(super) async fn scan_inbox(&mut self) {
        let Some(dir) = self.inbox.clone() else { return };
        let interval = self.definition.good.as_ref().and_then(|j| j.settings.trigger.as_ref()).map(|t| t.scan_interval);
        self.scan_at = interval.map(|i| tokio::time::Instant::now() + i);
        match inbox::ready(&dir, &self.pattern(), SystemTime::now()) {
            Ok(names) => {
                crate::repeats::clear("inbox", &self.key);
                for name in names {
                    self.take_file(&name).await;
                }
            }
            Err(e) => {
                let text = format!("cannot read the inbox {}: {e}", dir.display());
                let log = &mut self.scheduler_log;
                crate::repeats::report("inbox", &self.key, |held| {
                    log.sys(Level::SysError, &format!("{text}{}", crate::repeats::held_note(held)));
                });
            }
        }
    }

    /// Claims a file and queues its request (`File - <name>`, the path as its argument).
    async fn take_file(&mut self, name: &str) {
        if self.exiting || self.definition.good.is_none() {
            return;
        }
        let Some(dir) = self.inbox.clone() else { return };
        let mut entry = Entry::new(format!("File - {name}"), Vec::new(), String::new());
        match inbox::claim(&dir, name, &entry.id) {
            Ok(Some(path)) => {
                let path = path.to_string_lossy().into_owned();
                entry.arguments = vec![path.clone()];
                entry.text = crate::arguments::join(&entry.arguments);
                entry.trigger_file = Some(path);
                self.queue_file(entry).await;
            }
            Ok(None) => {} // another daemon took it
            Err(e) => self.scheduler_log.sys(
                Level::SysError,
                &format!("cannot claim {name} in the inbox {} (it stays there): {e}", dir.display()),
            ),
        }
    }

    /// Queues the request of a claimed file and starts what may start.
    async fn queue_file(&mut self, entry: Entry) {
        match self.persist(&entry, None).await {
            Ok(_) => {
                self.fill().await;
            }
            Err(e) => self.scheduler_log.sys(
                Level::SysError,
                &format!(
                    "{e}; the file {} stays claimed and is queued at the next start",
                    entry.trigger_file.as_deref().unwrap_or_default()
                ),
            ),
        }
    }

    /// Files claimed by a daemon that died before it queued their requests.
    pub(super) async fn recover_inbox(&mut self) {
        let Some(dir) = self.inbox.clone() else { return };
        for (id, path) in inbox::claimed(&dir) {
            if self.locks.known(&id).await {
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.split_once('.')).map(|(_, n)| n);
            let mut entry = Entry::new(format!("File - {}", name.unwrap_or_default()), Vec::new(), String::new());
            entry.id = id;
            let path = path.to_string_lossy().into_owned();
            entry.arguments = vec![path.clone()];
            entry.text = crate::arguments::join(&entry.arguments);
            entry.trigger_file = Some(path);
            self.queue_file(entry).await;
        }
    }
}
