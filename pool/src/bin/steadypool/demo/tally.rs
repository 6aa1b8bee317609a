//! What one pool's application saw: requests, failures, retries, latencies.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use steadypool::{Phase, ResetCause};

/// The slowest latency the histogram tells apart (longer ones are counted as this).
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// A request's end, as the application saw it.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// `Ok`, or what the application got instead of a reply.
    pub(crate) result: Result<(), Failure>,
    /// Times the request was sent (1 without retries).
    pub(crate) attempts: u32,
}

/// A request that failed, as the application saw it.
#[derive(Debug)]
pub(crate) struct Failure {
    /// A short, fixed label (`peer_reset / in_use`, `timeout`, ...).
    pub(crate) label: String,
    /// The broken connection behind it, when the application's own pool counts
    /// nothing itself (the plain pool): its cause and phase.
    pub(crate) reset: Option<(ResetCause, Phase)>,
    /// The error's message.
    pub(crate) message: String,
}

/// Failures with one label.
#[derive(Debug, Clone, Default)]
pub(crate) struct FailureKind {
    pub(crate) count: u64,
    pub(crate) example: String,
}

/// Counters shared by one pool's workers and the live display.
#[derive(Debug)]
pub(crate) struct Tally {
    requests: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    inner: Mutex<Details>,
}

#[derive(Debug)]
struct Details {
    latency: Histogram<u64>,
    failures: BTreeMap<String, FailureKind>,
    resets: BTreeMap<(ResetCause, Phase), u64>,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    pub(crate) requests: u64,
    pub(crate) failures: u64,
    pub(crate) retries: u64,
}

/// Everything a tally holds, for the report.
#[derive(Debug, Clone)]
pub(crate) struct Totals {
    pub(crate) counts: Counts,
    pub(crate) latency: Histogram<u64>,
    pub(crate) failures: BTreeMap<String, FailureKind>,
    pub(crate) resets: BTreeMap<(ResetCause, Phase), u64>,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        // Three significant digits up to a minute: the bounds are constants that
        // hdrhistogram accepts.
        let latency = Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
            .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"));
        Tally {
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            inner: Mutex::new(Details {
                latency,
                failures: BTreeMap::new(),
                resets: BTreeMap::new(),
            }),
        }
    }

    fn details(&self) -> std::sync::MutexGuard<'_, Details> {
        // Plain counters: a panicking holder cannot leave them inconsistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a finished request that took `took`.
    pub(crate) fn record(&self, outcome: Outcome, took: Duration) {
        let micros = u64::try_from(took.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_MICROS);
        let mut details = self.details();
        details.latency.saturating_record(micros);
        if let Err(failure) = outcome.result {
            let kind = details.failures.entry(failure.label).or_default();
            kind.count += 1;
            if kind.example.is_empty() {
                kind.example = failure.message;
            }
            if let Some(reset) = failure.reset {
                *details.resets.entry(reset).or_default() += 1;
            }
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        drop(details);
        self.retries.fetch_add(
            u64::from(outcome.attempts.saturating_sub(1)),
            Ordering::Relaxed,
        );
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    /// Everything so far.
    pub(crate) fn totals(&self) -> Totals {
        let details = self.details();
        Totals {
            counts: self.counts(),
            latency: details.latency.clone(),
            failures: details.failures.clone(),
            resets: details.resets.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_retries_and_resets_are_counted_once_each() {
        let tally = Tally::new();
        tally.record(
            Outcome {
                result: Ok(()),
                attempts: 3,
            },
            Duration::from_micros(300),
        );
        for _ in 0..2 {
            tally.record(
                Outcome {
                    result: Err(Failure {
                        label: "peer_reset / in_use".to_owned(),
                        reset: Some((ResetCause::PeerReset, Phase::InUse)),
                        message: "connection reset".to_owned(),
                    }),
                    attempts: 1,
                },
                Duration::from_millis(2),
            );
        }
        let totals = tally.totals();
        assert_eq!(
            totals.counts,
            Counts {
                requests: 3,
                failures: 2,
                retries: 2
            }
        );
        assert_eq!(totals.failures["peer_reset / in_use"].count, 2);
        assert_eq!(totals.resets[&(ResetCause::PeerReset, Phase::InUse)], 2);
        assert_eq!(totals.latency.len(), 3);
    }
}
