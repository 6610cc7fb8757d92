//! What the two job actors (continuous, triggered) share: the plumbing (a
//! control channel in, a published state out: the supervisor holds the
//! [`Handle`], the API reads the state), the daemon's [`context`], the one
//! start path ([`launch`]) and the job's definition as it changes
//! ([`definition`]).

pub mod context;
pub mod definition;
pub mod launch;
pub mod published;
pub mod starts;

pub use context::Shared;

use futures_channel::mpsc;
pub use published::{Published, Publisher};

/// The supervisor's handle on one actor. The control channel is a linked
/// list with a node per message in flight: ten thousand idle actors each
/// have one, and keep about a hundred bytes for it (tokio's keeps a block of
/// 32 slots and cache-padded ends, about 800).
#[derive(Debug)]
pub struct Handle<C, S> {
    tx: mpsc::UnboundedSender<C>,
    /// What the actor publishes about its job, updated on every change.
    pub state: Published<S>,
}

impl<C, S> Clone for Handle<C, S> {
    fn clone(&self) -> Self {
        Handle { tx: self.tx.clone(), state: self.state.clone() }
    }
}

impl<C, S> Handle<C, S> {
    /// Sends a control message; one sent to an actor that has ended is dropped.
    pub fn send(&self, control: C) {
        let _ = self.tx.unbounded_send(control);
    }
}

/// The actor's side: where controls arrive, and where it publishes its state.
pub struct Inbox<C, S> {
    pub rx: Mailbox<C>,
    pub state: Publisher<S>,
}

/// Where an actor's controls arrive.
pub struct Mailbox<C>(mpsc::UnboundedReceiver<C>);

impl<C> Mailbox<C> {
    /// The next control; `None` once every handle is gone. Cancel-safe.
    pub async fn recv(&mut self) -> Option<C> {
        use futures_util::Stream;
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.0).poll_next(cx)).await
    }
}

/// The two ends of a new actor's channels.
pub fn channels<C, S>(initial: S) -> (Handle<C, S>, Inbox<C, S>) {
    let (tx, rx) = mpsc::unbounded();
    let (state_tx, state) = published::new(initial);
    (Handle { tx, state }, Inbox { rx: Mailbox(rx), state: state_tx })
}

/// Publishes `event`, and stores a notification for each `notify` rule (the
/// job's `own`, then the daemon's) that wants it; with `run_dir`, a run's end
/// carries the last lines of its output. A notification that cannot be
/// stored is said in `log`.
pub fn tell(
    shared: &Shared,
    own: &[crate::notify::Rule],
    daemon: &[crate::notify::Rule],
    mut event: crate::events::Event,
    run_dir: Option<&std::path::Path>,
    log: &mut crate::logs::LogFile,
) {
    if let Some(name) = crate::notify::name_of(event.kind, event.status.as_deref()) {
        let rules: Vec<&crate::notify::Rule> = own.iter().chain(daemon).filter(|r| r.wants(name)).collect();
        if !rules.is_empty() {
            event.output_tail = run_dir.and_then(output_tail);
        }
        for rule in rules {
            if let Err(e) = shared.outbox.add(name, &event, &rule.target) {
                log.sys(crate::logs::Level::SysError, &format!("cannot store the {name} notification: {e}"));
            }
        }
        // The stream's listeners read the output themselves.
        event.output_tail = None;
    }
    shared.events.publish(event);
}

/// The last lines of a run's output (at most 20, from its last 4 KiB).
fn output_tail(run_dir: &std::path::Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(run_dir.join(crate::layout::OUTPUT_LOG)).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut text = String::new();
    file.take(4096).read_to_string(&mut text).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    // A partial first line (the read began mid-file) is left out.
    let from = lines.len().saturating_sub(20).max(usize::from(len > 4096));
    Some(lines[from..].join("\n"))
}
