//! Kudu's web hooks, stored: `data/hooks.json`, a list of `{id, event, url,
//! insecure_ssl}` (Kudu's `WebHook`). The API subscribes and unsubscribes
//! (`/api/hooks`); events are sent through the [`crate::outbox`], which drops
//! a hook whose receiver answers 410 Gone, as Kudu does.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The events a hook can subscribe to.
pub const EVENTS: &[&str] = &["TriggeredJobFinished", "PostDeployment"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub id: String,
    pub event: String,
    pub url: String,
    #[serde(default)]
    pub insecure_ssl: bool,
}

/// Read-modify-write of the file, one at a time within the daemon.
static LOCK: Mutex<()> = Mutex::new(());

fn file(data_dir: &Path) -> PathBuf {
    data_dir.join(crate::layout::HOOKS)
}

/// Every hook (none when the file is missing or unreadable).
pub fn all(data_dir: &Path) -> Vec<Hook> {
    std::fs::read(file(data_dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn save(data_dir: &Path, hooks: &[Hook]) -> io::Result<()> {
    let path = file(data_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(hooks).map_err(io::Error::other)?)?;
    std::fs::rename(&tmp, &path)
}

/// What a subscription came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Subscribed {
    /// A new hook (Kudu: 201).
    Added(Hook),
    /// The URL was subscribed to this event already: that hook (Kudu: 201 too).
    Existing(Hook),
    /// The URL is subscribed to another event (Kudu: 409).
    Conflict(Hook),
}

/// Subscribes `url` to `event`, as Kudu does: one hook per URL.
pub fn subscribe(data_dir: &Path, event: &str, url: &str, insecure_ssl: bool) -> io::Result<Subscribed> {
    let _held = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut hooks = all(data_dir);
    let url = url.trim();
    if let Some(existing) = hooks.iter().find(|h| h.url.eq_ignore_ascii_case(url)) {
        return Ok(if existing.event.eq_ignore_ascii_case(event) {
            Subscribed::Existing(existing.clone())
        } else {
            Subscribed::Conflict(existing.clone())
        });
    }
    // Kudu's ids are the time in ticks; ours are the time in nanoseconds, unique here.
    let mut id = jiff::Timestamp::now().as_nanosecond().to_string();
    while hooks.iter().any(|h| h.id == id) {
        id.push('0');
    }
    let hook = Hook { id, event: event.to_string(), url: url.to_string(), insecure_ssl };
    hooks.push(hook.clone());
    save(data_dir, &hooks)?;
    Ok(Subscribed::Added(hook))
}

/// Removes hook `id` (nothing when there is none); whether it was there.
pub fn remove(data_dir: &Path, id: &str) -> io::Result<bool> {
    let _held = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut hooks = all(data_dir);
    let before = hooks.len();
    hooks.retain(|h| !h.id.eq_ignore_ascii_case(id));
    if hooks.len() == before {
        return Ok(false);
    }
    save(data_dir, &hooks)?;
    Ok(true)
}

/// The hooks subscribed to `event`.
pub fn subscribed(data_dir: &Path, event: &str) -> Vec<Hook> {
    all(data_dir).into_iter().filter(|h| h.event.eq_ignore_ascii_case(event)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hook_per_url_as_kudu_keeps_them() {
        let d = tempfile::tempdir().unwrap();
        let Subscribed::Added(a) = subscribe(d.path(), "TriggeredJobFinished", " http://h/a ", false).unwrap() else {
            panic!()
        };
        assert_eq!(a.url, "http://h/a");
        assert_eq!(
            subscribe(d.path(), "triggeredjobfinished", "http://h/a", false).unwrap(),
            Subscribed::Existing(a.clone())
        );
        assert_eq!(
            subscribe(d.path(), "PostDeployment", "http://h/a", false).unwrap(),
            Subscribed::Conflict(a.clone())
        );
        assert_eq!(subscribed(d.path(), "TriggeredJobFinished"), std::slice::from_ref(&a));
        assert!(remove(d.path(), &a.id).unwrap());
        assert!(!remove(d.path(), &a.id).unwrap());
        assert!(all(d.path()).is_empty());
    }
}
