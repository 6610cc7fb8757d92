//! What an actor publishes about its job, for the API to read and, seldom,
//! to wait on (a start, a stop, an actor's end).
//!
//! Like a `tokio::sync::watch` channel without what ten thousand jobs could
//! not afford: a watch channel keeps nine notifiers (about 340 bytes) beside
//! its value. This keeps one lock, the value, how many publishers are left,
//! and the wakers of whoever waits.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

/// The actor's end: changes the value, waking those who wait.
#[derive(Debug)]
pub struct Publisher<S>(Arc<Mutex<State<S>>>);

/// The readers' end.
#[derive(Debug)]
pub struct Published<S>(Arc<Mutex<State<S>>>);

#[derive(Debug)]
struct State<S> {
    value: S,
    /// Publishers still there; none: the value stays as it is.
    publishers: u32,
    waiting: Vec<Waker>,
}

/// A value published from now on, and its first reader.
pub fn new<S>(initial: S) -> (Publisher<S>, Published<S>) {
    let state = Arc::new(Mutex::new(State { value: initial, publishers: 1, waiting: Vec::new() }));
    (Publisher(state.clone()), Published(state))
}

fn lock<S>(state: &Mutex<State<S>>) -> MutexGuard<'_, State<S>> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A read of the value (the lock is held while it lives: keep it short).
pub struct Ref<'a, S>(MutexGuard<'a, State<S>>);

impl<S> std::ops::Deref for Ref<'_, S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.0.value
    }
}

impl<S> Publisher<S> {
    /// Changes the value; those who wait look at it again.
    pub fn send_modify(&self, change: impl FnOnce(&mut S)) {
        self.send_if_modified(|value| {
            change(value);
            true
        });
    }

    /// Changes the value; wakes those who wait if `change` says it changed.
    pub fn send_if_modified(&self, change: impl FnOnce(&mut S) -> bool) -> bool {
        let mut state = lock(&self.0);
        let changed = change(&mut state.value);
        if changed {
            state.waiting.drain(..).for_each(Waker::wake);
        }
        changed
    }

    /// Replaces the value; returns the one before.
    pub fn send_replace(&self, value: S) -> S {
        let mut state = lock(&self.0);
        let old = std::mem::replace(&mut state.value, value);
        state.waiting.drain(..).for_each(Waker::wake);
        old
    }
}

impl<S> Clone for Publisher<S> {
    fn clone(&self) -> Self {
        lock(&self.0).publishers += 1;
        Publisher(self.0.clone())
    }
}

impl<S> Drop for Publisher<S> {
    fn drop(&mut self) {
        let mut state = lock(&self.0);
        state.publishers -= 1;
        if state.publishers == 0 {
            state.waiting.drain(..).for_each(Waker::wake);
        }
    }
}

impl<S> Published<S> {
    /// A value nobody publishes (a job not picked up yet, or whose actor failed).
    pub fn fixed(value: S) -> Published<S> {
        Published(Arc::new(Mutex::new(State { value, publishers: 0, waiting: Vec::new() })))
    }

    pub fn borrow(&self) -> Ref<'_, S> {
        Ref(lock(&self.0))
    }

    /// Waits until `ready` holds for the value (looked at now and after each
    /// change); false if the publishers are gone and it does not.
    pub async fn wait_for(&self, mut ready: impl FnMut(&S) -> bool) -> bool {
        self.wait(|state| if ready(&state.value) { Some(true) } else { (state.publishers == 0).then_some(false) }).await
    }

    /// Waits until every publisher is gone (the actor has ended).
    pub async fn closed(&self) {
        self.wait(|state| (state.publishers == 0).then_some(())).await
    }

    async fn wait<T>(&self, mut done: impl FnMut(&State<S>) -> Option<T>) -> T {
        // A wait given up (a timeout) takes its waker back: it would keep the
        // waiting task alive until the next change, which may never come.
        let mut registered = Registered { state: &self.0, waker: None };
        poll_fn(|cx| {
            let mut state = lock(&self.0);
            if let Some(answer) = done(&state) {
                return Poll::Ready(answer);
            }
            if !state.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                state.waiting.push(cx.waker().clone());
            }
            registered.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// The waker a wait left with the value, taken back when the wait ends.
struct Registered<'a, S> {
    state: &'a Mutex<State<S>>,
    waker: Option<Waker>,
}

impl<S> Drop for Registered<'_, S> {
    fn drop(&mut self) {
        if let Some(waker) = &self.waker {
            lock(self.state).waiting.retain(|w| !w.will_wake(waker));
        }
    }
}

impl<S> Clone for Published<S> {
    fn clone(&self) -> Self {
        Published(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_waiter_sees_the_change_it_waits_for_and_the_publishers_end() {
        let (publisher, published) = new(0u32);
        let waiter = tokio::spawn({
            let published = published.clone();
            async move { published.wait_for(|v| *v == 2).await }
        });
        publisher.send_modify(|v| *v = 1);
        assert!(!publisher.send_if_modified(|_| false));
        publisher.send_replace(2);
        assert!(tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap());
        assert_eq!(*published.borrow(), 2);

        // A value that never comes: the wait ends (false) once the last publisher is gone.
        let second = publisher.clone();
        let waiter = tokio::spawn({
            let published = published.clone();
            async move { published.wait_for(|v| *v == 3).await }
        });
        let closed = tokio::spawn({
            let published = published.clone();
            async move { published.closed().await }
        });
        drop(publisher);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished() && !closed.is_finished(), "one publisher is left");
        drop(second);
        assert!(!tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap());
        tokio::time::timeout(Duration::from_secs(5), closed).await.unwrap().unwrap();
        assert_eq!(*Published::fixed(7).borrow(), 7);
        Published::fixed(7).closed().await;
    }

    #[tokio::test]
    async fn a_wait_given_up_leaves_nothing_behind() {
        let (publisher, published) = new(0u32);
        for _ in 0..3 {
            let gave_up = tokio::time::timeout(Duration::from_millis(1), published.wait_for(|v| *v == 1)).await;
            assert!(gave_up.is_err());
        }
        assert_eq!(lock(&published.0).waiting.len(), 0, "no waker kept for a wait that ended");
        publisher.send_replace(1);
        assert!(published.wait_for(|v| *v == 1).await);
    }
}
