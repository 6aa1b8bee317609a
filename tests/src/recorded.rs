//! The metrics one pool recorded, for tests that check the metrics themselves; and
//! [`Books`], the counts tests read from `Pool::stats()` (no label is parsed back
//! into a cause).
//!
//! A pool binds its metric handles when it is built, so [`RecordedMetrics::build`]
//! builds it with a fresh [`DebuggingRecorder`] installed for that moment only: every
//! later increment, on any thread, lands in this test's recorder and no other. Tests
//! can run in parallel, on any runtime.
//!
//! Gauges are kept apart from the [`DebuggingRecorder`]: its snapshot swaps every
//! gauge to 0, so a gauge set once (the idle limit's) would read 0 after the first
//! look, and a gauge that is 0 could not be told from one nobody set since. Here a
//! gauge keeps its last value, as a scraped exporter's does.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use steadypool::metrics::RESETS;
//! use steadypool::{drivers::tcp::TcpManager, Phase, Pool, ResetCause};
//! use steadypool_tests::recorded::{Books, RecordedMetrics};
//!
//! let (pool, metrics) = RecordedMetrics::build(Pool::builder(TcpManager::new("127.0.0.1:7000")))?;
//! // ... a connection breaks ...
//! assert_eq!(pool.stats().resets(ResetCause::PeerClosed, Phase::Checkout), 1);
//! assert_eq!(pool.stats().all_resets(), 1);
//! assert_eq!(metrics.counter(RESETS, &[("cause", "peer_closed"), ("phase", "checkout")]), 1);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::registry::{AtomicStorage, Registry};
use steadypool::metrics::{RetryOutcome, RunOutcome};
use steadypool::{BuildError, Manager, Phase, Pool, PoolBuilder, ResetCause, Stats};

/// A counter series: its name and its labels, sorted.
type Series = (String, Vec<(String, String)>);

/// The counters one pool recorded since it was built, and its gauges' last values.
pub struct RecordedMetrics {
    snapshotter: Snapshotter,
    /// Taking a snapshot resets the recorder's counters, so the totals live here.
    totals: Mutex<HashMap<Series, u64>>,
    gauges: Arc<Registry<Key, AtomicStorage>>,
}

/// Counters and histograms to a [`DebuggingRecorder`], gauges to a registry that
/// reading does not reset.
struct Recording {
    debugging: DebuggingRecorder,
    gauges: Arc<Registry<Key, AtomicStorage>>,
}

impl metrics::Recorder for Recording {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.debugging.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.debugging.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.debugging.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.debugging.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.gauges
            .get_or_create_gauge(key, |gauge| Gauge::from_arc(Arc::clone(gauge)))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.debugging.register_histogram(key, metadata)
    }
}

impl RecordedMetrics {
    /// Builds the pool with its metrics going to a recorder of its own.
    ///
    /// # Errors
    /// The builder's [`BuildError`].
    pub fn build<M: Manager>(
        builder: PoolBuilder<M>,
    ) -> Result<(Pool<M>, RecordedMetrics), BuildError> {
        let debugging = DebuggingRecorder::new();
        let snapshotter = debugging.snapshotter();
        let gauges = Arc::new(Registry::atomic());
        let recorder = Recording {
            debugging,
            gauges: Arc::clone(&gauges),
        };
        let pool = metrics::with_local_recorder(&recorder, || builder.build())?;
        Ok((
            pool,
            RecordedMetrics {
                snapshotter,
                totals: Mutex::new(HashMap::new()),
                gauges,
            },
        ))
    }

    /// The last value of gauge `name` in the series whose labels include all of
    /// `labels`; `None` if no such series was registered.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.gauges
            .get_gauge_handles()
            .into_iter()
            .find(|(key, _)| {
                key.name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(_, value)| f64::from_bits(value.load(std::sync::atomic::Ordering::Acquire)))
    }

    /// The sum of counter `name` over every series whose labels include all of
    /// `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut totals = self.totals.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            if let DebugValue::Counter(n) = value {
                let key = key.key();
                let mut series_labels: Vec<(String, String)> = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                series_labels.sort();
                *totals
                    .entry((key.name().to_owned(), series_labels))
                    .or_default() += n;
            }
        }
        totals
            .iter()
            .filter(|((series, series_labels), _)| {
                series == name
                    && labels
                        .iter()
                        .all(|(k, v)| series_labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|(_, n)| n)
            .sum()
    }
}

/// Sums and tables over a pool's [`Stats`], for assertions and a fault test's log.
pub trait Books {
    /// Every connection that broke, and every connect that failed, whatever the cause.
    fn all_resets(&self) -> u64;
    /// Connections that broke with `cause` (and connects that failed with it), in any
    /// phase.
    fn resets_with_cause(&self, cause: ResetCause) -> u64;
    /// Every cause and phase with resets counted, and how many.
    fn reset_table(&self) -> Vec<(ResetCause, Phase, u64)>;
    /// Operations that hit a broken connection, whatever became of them.
    fn all_retries(&self) -> u64;
    /// `run` calls that returned, whatever they returned.
    fn all_runs(&self) -> u64;
    /// Prints what the pool went through, for the log of a fault test.
    fn report(&self, test: &str);
}

impl Books for Stats {
    fn all_resets(&self) -> u64 {
        self.reset_table().iter().map(|(.., n)| n).sum()
    }

    fn resets_with_cause(&self, cause: ResetCause) -> u64 {
        Phase::ALL
            .iter()
            .map(|phase| self.resets(cause, *phase))
            .sum()
    }

    fn reset_table(&self) -> Vec<(ResetCause, Phase, u64)> {
        ResetCause::ALL
            .iter()
            .flat_map(|cause| Phase::ALL.iter().map(move |phase| (*cause, *phase)))
            .map(|(cause, phase)| (cause, phase, self.resets(cause, phase)))
            .filter(|(.., n)| *n > 0)
            .collect()
    }

    fn all_retries(&self) -> u64 {
        RetryOutcome::ALL.iter().map(|o| self.retries(*o)).sum()
    }

    fn all_runs(&self) -> u64 {
        RunOutcome::ALL.iter().map(|o| self.runs(*o)).sum()
    }

    fn report(&self, test: &str) {
        eprintln!(
            "{test}: resets {:?}; retried operations: {} succeeded, {} gave up, {} budget \
             spent, {} not safe; runs: {} ok, {} operation errors, {} may have taken \
             effect, {} not executed; connects: {} ok, {} refused",
            self.reset_table(),
            self.retries(RetryOutcome::Succeeded),
            self.retries(RetryOutcome::GaveUp),
            self.retries(RetryOutcome::BudgetSpent),
            self.retries(RetryOutcome::NotSafe),
            self.runs(RunOutcome::Ok),
            self.runs(RunOutcome::OperationError),
            self.runs(RunOutcome::MaybeExecuted),
            self.runs(RunOutcome::NotExecuted),
            self.opened,
            self.resets(ResetCause::Refused, Phase::Connect),
        );
    }
}
