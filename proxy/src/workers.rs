//! Thread-per-core serving: `server.workers` threads, each running a single-threaded tokio
//! runtime, share the accepted client connections round-robin. A connection lives on one
//! worker for its whole life, and so do the upstream connections its requests open (each
//! worker has its own upstream clients, see `upstream::Clients`), so a streamed chunk is
//! read, passed and written by one thread: no task hand-off between threads, no cross-thread
//! wake-up per chunk, no work stealing.
//!
//! A worker's runtime ends when the [`Workers`] that started it is dropped (after the drain
//! grace), cutting what it still serves, as the grace's end always has.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;
use tokio::sync::watch;

thread_local! {
    /// This thread's worker number; 0 off the workers (the main runtime, tests).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker number of the calling thread: picks that worker's own upstream clients.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// The running worker threads, ended when this is dropped.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropping the sender ends every worker's runtime.
    _stop: watch::Sender<()>,
}

impl Workers {
    /// Start `count` worker threads (at least one).
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let (stop, stopped) = watch::channel(());
        let mut handles = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("keyrelay-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    runtime.block_on(async move {
                        // Ends when the sender is dropped.
                        while stopped.changed().await.is_ok() {}
                    });
                    // Dropped here, on its own thread: its tasks are cancelled.
                    drop(runtime);
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop,
        })
    }

    /// Run `task` on the next worker, round-robin.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        drop(self.handles[n].spawn(task));
    }
}

/// The default worker count: one per core this process may run on.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[tokio::test]
    async fn tasks_go_round_robin_and_each_knows_its_worker() {
        let workers = Workers::start(3).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..6 {
            let tx = tx.clone();
            workers.spawn(async move {
                let name = std::thread::current().name().map(str::to_owned);
                tx.send((current(), name)).unwrap();
            });
        }
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(rx.recv().await.unwrap());
        }
        seen.sort();
        let expected: Vec<_> = [0, 0, 1, 1, 2, 2]
            .into_iter()
            .map(|i| (i, Some(format!("keyrelay-worker-{i}"))))
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(current(), 0);
    }

    #[tokio::test]
    async fn dropping_the_workers_ends_their_tasks() {
        let workers = Workers::start(1).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        workers.spawn(async move {
            let _held = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        // The sender is dropped with its cancelled task, so the channel closes.
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv()).await;
        assert_eq!(closed.unwrap(), None);
    }
}
