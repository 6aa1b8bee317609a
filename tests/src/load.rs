//! A steady workload for fault tests: workers that send one request after another
//! until stopped, counting what succeeded and keeping what failed, so a test can
//! strike the upstream mid-load and then check that nothing reached the application.
//!
//! Each request gets a number unique within the load (for keys, request ids or
//! query parameters); a failed request's error is kept with its whole `source()`
//! chain, since the chain is where a pool error names its cause.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use std::time::Duration;
//! use steadypool_tests::load::Load;
//!
//! let load = Load::start(8, |_worker, n| async move {
//!     tokio::time::sleep(Duration::from_millis(1)).await;
//!     Ok::<u64, std::io::Error>(n).map(drop)
//! });
//! assert!(load.until_succeeded(100, Duration::from_secs(10)).await);
//! // ... strike the upstream here ...
//! let outcome = load.stop().await;
//! assert_eq!(outcome.failed, 0, "{:?}", outcome.errors);
//! # }
//! ```

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinSet;

/// How many failures a load keeps the message of; the rest are only counted.
const KEPT_ERRORS: usize = 20;
/// How long a stopped load may take to finish the requests in flight.
const STOP_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Tally {
    next: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// Workers sending requests until [`Load::stop`]. See the [module docs](self).
#[derive(Debug)]
pub struct Load {
    running: Arc<AtomicBool>,
    tally: Arc<Tally>,
    workers: JoinSet<()>,
}

/// What a load did, from its start to its stop.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Requests that succeeded.
    pub succeeded: u64,
    /// Requests whose error reached the caller.
    pub failed: u64,
    /// The first failures, each with its error's `source()` chain.
    pub errors: Vec<String>,
}

impl Load {
    /// Starts `workers` tasks, each calling `request(worker, n)` and awaiting it, again
    /// and again, `n` counting up across all workers from 0.
    pub fn start<F, Fut, E>(workers: usize, request: F) -> Load
    where
        F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: StdError + 'static,
    {
        let running = Arc::new(AtomicBool::new(true));
        let tally = Arc::new(Tally::default());
        let request = Arc::new(request);
        let mut tasks = JoinSet::new();
        for worker in 0..workers {
            let running = Arc::clone(&running);
            let tally = Arc::clone(&tally);
            let request = Arc::clone(&request);
            tasks.spawn(async move {
                while running.load(Ordering::SeqCst) {
                    let n = tally.next.fetch_add(1, Ordering::SeqCst);
                    match request(worker, n).await {
                        Ok(()) => {
                            tally.succeeded.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(err) => {
                            tally.failed.fetch_add(1, Ordering::SeqCst);
                            let mut kept =
                                tally.errors.lock().unwrap_or_else(PoisonError::into_inner);
                            if kept.len() < KEPT_ERRORS {
                                kept.push(format!("request {n}: {}", error_chain(&err)));
                            }
                        }
                    }
                }
            });
        }
        Load {
            running,
            tally,
            workers: tasks,
        }
    }

    /// Requests that succeeded so far.
    pub fn succeeded(&self) -> u64 {
        self.tally.succeeded.load(Ordering::SeqCst)
    }

    /// Requests that failed so far.
    pub fn failed(&self) -> u64 {
        self.tally.failed.load(Ordering::SeqCst)
    }

    /// Waits until `more` requests succeeded after this call, or `within` passed;
    /// returns whether they did. A test calls it before a fault (so the fault strikes
    /// a running load) and after (so the load is seen to go on).
    pub async fn until_succeeded(&self, more: u64, within: Duration) -> bool {
        let target = self.succeeded() + more;
        crate::eventually(within, || self.succeeded() >= target).await
    }

    /// Stops the workers, waits for the requests in flight, and reports.
    ///
    /// # Panics
    /// When a worker panicked, or requests in flight did not finish within 60 s.
    pub async fn stop(mut self) -> Outcome {
        self.running.store(false, Ordering::SeqCst);
        let drained = tokio::time::timeout(STOP_WITHIN, async {
            while let Some(joined) = self.workers.join_next().await {
                if let Err(e) = joined {
                    panic!("a load worker failed: {e}");
                }
            }
        })
        .await;
        assert!(
            drained.is_ok(),
            "requests in flight did not finish within {STOP_WITHIN:?} of stopping the load"
        );
        Outcome {
            succeeded: self.succeeded(),
            failed: self.failed(),
            errors: self
                .tally
                .errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// An error and every error in its `source()` chain, joined with `: `.
///
/// ```
/// use steadypool_tests::load::error_chain;
/// let err = std::io::Error::other(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
/// assert!(error_chain(&err).contains("reset"));
/// ```
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let shown = inner.to_string();
        // Wrappers that display their source (`#[error(transparent)]`, "...: {0}")
        // would repeat it.
        if !text.contains(&shown) {
            let _ = write!(text, ": {shown}");
        }
        source = inner.source();
    }
    text
}
