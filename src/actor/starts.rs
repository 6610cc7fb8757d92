//! Where the blocking part of a start (file system, cgroup, fork) is done.
//!
//! At a tick hundreds of jobs start together. Done on the runtime's threads
//! (about 0.5 ms each), their starts held up every API request meanwhile:
//! with 10,000 jobs ticking, the job list's p99 was 200 ms. So a start
//! while others are under way is done on a blocking thread, a few at once;
//! a start alone (a restart, a run on demand) is done in place, as the hop
//! to another thread would cost it more than it holds anyone up.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The starts under way, and the blocking threads they may use.
#[derive(Debug)]
pub struct Starts {
    /// Starts done at once on blocking threads.
    slots: tokio::sync::Semaphore,
    /// Starts under way, wherever they are done.
    under_way: AtomicUsize,
}

impl Default for Starts {
    /// One blocking start per core.
    fn default() -> Self {
        Starts::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }
}

impl Starts {
    pub fn new(slots: usize) -> Starts {
        Starts { slots: tokio::sync::Semaphore::new(slots), under_way: AtomicUsize::new(0) }
    }

    /// Does `work`: in place when no other start is under way, else on a
    /// blocking thread once a slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let alone = self.under_way.fetch_add(1, Ordering::AcqRel) == 0;
        let _done = Done(&self.under_way);
        if alone {
            return work();
        }
        // Never closed: a slot is always there to wait for.
        let _slot = self.slots.acquire().await.map_err(std::io::Error::other)?;
        tokio::task::spawn_blocking(work).await.map_err(std::io::Error::other)?
    }
}

/// Counts a start as over however it ends (its future may be dropped).
struct Done<'a>(&'a AtomicUsize);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::thread::{ThreadId, current};
    use std::time::Duration;

    /// Runs `run` as a task; sends the thread the task ran on and the one
    /// its work ran on.
    fn start(
        rt: &tokio::runtime::Runtime,
        starts: &Arc<Starts>,
        hold: Option<mpsc::Receiver<()>>,
    ) -> mpsc::Receiver<(ThreadId, ThreadId)> {
        let (tx, rx) = mpsc::channel();
        let starts = starts.clone();
        rt.spawn(async move {
            let task = current().id();
            let work = starts
                .run(move || {
                    if let Some(hold) = hold {
                        let _ = hold.recv_timeout(Duration::from_secs(10));
                    }
                    Ok(current().id())
                })
                .await
                .expect("the work returns Ok");
            let _ = tx.send((task, work));
        });
        rx
    }

    #[test]
    fn a_start_alone_runs_in_place_and_one_beside_it_on_another_thread() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        let starts = Arc::new(Starts::new(1));
        // The first start blocks its runtime thread until released.
        let (release, hold) = mpsc::channel();
        let first = start(&rt, &starts, Some(hold));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while starts.under_way.load(Ordering::Acquire) == 0 {
            assert!(std::time::Instant::now() < deadline, "the first start never began");
            std::thread::yield_now();
        }
        // A second start meanwhile ends without waiting for the first, on a
        // thread other than the runtime's.
        let (task, work) = start(&rt, &starts, None).recv_timeout(Duration::from_secs(10)).expect("second start done");
        assert_ne!(task, work, "a start beside another is done off the runtime thread");
        release.send(()).unwrap();
        let (task, work) = first.recv_timeout(Duration::from_secs(10)).expect("first start done");
        assert_eq!(task, work, "a start alone is done in place");
        assert_eq!(starts.under_way.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_start_that_panics_is_an_error_and_is_no_longer_under_way() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        let starts = Starts::new(1);
        starts.under_way.fetch_add(1, Ordering::AcqRel); // another start, so this one goes off
        let result = rt.block_on(starts.run(|| -> std::io::Result<()> { panic!("in the start") }));
        assert!(result.is_err());
        assert_eq!(starts.under_way.load(Ordering::Acquire), 1);
    }
}
