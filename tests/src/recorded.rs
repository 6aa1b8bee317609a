//! The metrics one pool recorded, for assertions.
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
//! use steadypool::{drivers::tcp::TcpManager, Phase, Pool, ResetCause};
//! use steadypool_tests::recorded::RecordedMetrics;
//!
//! let (pool, metrics) = RecordedMetrics::build(Pool::builder(TcpManager::new("127.0.0.1:7000")))?;
//! // ... a connection breaks ...
//! assert_eq!(metrics.resets(ResetCause::PeerClosed, Phase::Checkout), 1);
//! # drop(pool); Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::registry::{AtomicStorage, Registry};
use steadypool::metrics::{CONNECTS, EVICTIONS, RESETS, RETRIES, RUNS, RetryOutcome, RunOutcome};
use steadypool::{BuildError, Eviction, Manager, Phase, Pool, PoolBuilder, ResetCause};

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

    /// Connections that broke with `cause` in `phase`.
    pub fn resets(&self, cause: ResetCause, phase: Phase) -> u64 {
        self.counter(
            RESETS,
            &[("cause", cause.as_str()), ("phase", phase.as_str())],
        )
    }

    /// Connections that broke with `cause`, in any phase.
    pub fn resets_with_cause(&self, cause: ResetCause) -> u64 {
        self.counter(RESETS, &[("cause", cause.as_str())])
    }

    /// Every connection that broke, whatever the cause.
    pub fn all_resets(&self) -> u64 {
        self.counter(RESETS, &[])
    }

    /// Connections closed on purpose for `reason`.
    pub fn evictions(&self, reason: Eviction) -> u64 {
        self.counter(EVICTIONS, &[("reason", reason.as_str())])
    }

    /// Operations that hit a broken connection and ended with `outcome`, whatever the
    /// cause.
    pub fn retries(&self, outcome: RetryOutcome) -> u64 {
        self.counter(RETRIES, &[("outcome", outcome.as_str())])
    }

    /// Operations that hit a failure with `cause` and ended with `outcome`.
    pub fn retries_with_cause(&self, cause: ResetCause, outcome: RetryOutcome) -> u64 {
        self.counter(
            RETRIES,
            &[("cause", cause.as_str()), ("outcome", outcome.as_str())],
        )
    }

    /// Operations that hit a failure, whatever became of them.
    pub fn all_retries(&self) -> u64 {
        self.counter(RETRIES, &[])
    }

    /// `run` calls that returned `outcome` to their caller.
    pub fn runs(&self, outcome: RunOutcome) -> u64 {
        self.counter(RUNS, &[("outcome", outcome.as_str())])
    }

    /// `run` calls that returned, whatever they returned.
    pub fn all_runs(&self) -> u64 {
        self.counter(RUNS, &[])
    }

    /// Every cause and phase with resets counted, and how many: for failure messages
    /// and a test's report.
    pub fn reset_table(&self) -> Vec<(ResetCause, Phase, u64)> {
        ResetCause::ALL
            .iter()
            .flat_map(|cause| Phase::ALL.iter().map(move |phase| (*cause, *phase)))
            .map(|(cause, phase)| (cause, phase, self.resets(cause, phase)))
            .filter(|(.., n)| *n > 0)
            .collect()
    }

    /// Connect attempts with `outcome` (`"ok"` or a cause's label).
    pub fn connects(&self, outcome: &str) -> u64 {
        self.counter(CONNECTS, &[("outcome", outcome)])
    }

    /// Prints what the pool went through, for the log of a fault test.
    pub fn report(&self, test: &str) {
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
            self.connects("ok"),
            self.connects(ResetCause::Refused.as_str()),
        );
    }
}
