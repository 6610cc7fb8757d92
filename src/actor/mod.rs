//! What the two job actors (continuous, triggered) share: the plumbing (a
//! control channel in, a published state out: the supervisor holds the
//! [`Handle`], the API reads the state), the daemon's [`context`], the one
//! start path ([`launch`]) and the job's definition as it changes
//! ([`definition`]).

pub mod context;
pub mod definition;
pub mod launch;

pub use context::Shared;

use tokio::sync::{mpsc, watch};

/// The supervisor's handle on one actor. Messages travel boxed: a channel's
/// first block holds 32 of them, and ten thousand idle actors each have one.
#[derive(Debug)]
pub struct Handle<C, S> {
    tx: mpsc::UnboundedSender<Box<C>>,
    /// What the actor publishes about its job, updated on every change.
    pub state: watch::Receiver<S>,
}

impl<C, S> Clone for Handle<C, S> {
    fn clone(&self) -> Self {
        Handle { tx: self.tx.clone(), state: self.state.clone() }
    }
}

impl<C, S> Handle<C, S> {
    /// Sends a control message; one sent to an actor that has ended is dropped.
    pub fn send(&self, control: C) {
        let _ = self.tx.send(Box::new(control));
    }
}

/// The actor's side: where controls arrive, and where it publishes its state.
pub struct Inbox<C, S> {
    pub rx: mpsc::UnboundedReceiver<Box<C>>,
    pub state: watch::Sender<S>,
}

/// The two ends of a new actor's channels.
pub fn channels<C, S>(initial: S) -> (Handle<C, S>, Inbox<C, S>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (state_tx, state) = watch::channel(initial);
    (Handle { tx, state }, Inbox { rx, state: state_tx })
}
