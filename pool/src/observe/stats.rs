//! The pool's books: connections opened and closed, by cause and reason, checkouts,
//! retries and runs, kept in process with atomic counters.
//! [`Pool::stats`](crate::Pool::stats) reads them; no metrics exporter is needed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cause::{Eviction, Phase, ResetCause};
use crate::metrics::{CheckoutFailure, RetryOutcome, RunOutcome};

const CAUSES: usize = ResetCause::ALL.len();
const PHASES: usize = Phase::ALL.len();
const REASONS: usize = Eviction::ALL.len();
const RETRY_OUTCOMES: usize = RetryOutcome::ALL.len();
const RUN_OUTCOMES: usize = RunOutcome::ALL.len();
const FAILURES: usize = CheckoutFailure::ALL.len();

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Books {
    opened: AtomicU64,
    connect_failures: AtomicU64,
    resets: [[AtomicU64; PHASES]; CAUSES],
    evictions: [AtomicU64; REASONS],
    /// Checkouts that found a connection on their first attempt, not yet recorded in
    /// the wait histogram (the reaper moves them there on its tick).
    immediate_unrecorded: AtomicU64,
    immediate_recorded: AtomicU64,
    waited: AtomicU64,
    checkout_errors: [AtomicU64; FAILURES],
    retries: [[AtomicU64; RETRY_OUTCOMES]; CAUSES],
    runs: [AtomicU64; RUN_OUTCOMES],
    gate_rejections: AtomicU64,
    /// The idle limit the upstream last announced, in milliseconds plus one; 0 while
    /// none was (so that an announced 0 s still reads as announced).
    announced_ms: AtomicU64,
}

fn index<T: PartialEq>(all: &[T], item: &T) -> usize {
    all.iter().position(|x| x == item).unwrap_or(0)
}

impl Books {
    pub(crate) fn opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connect_failed(&self, cause: ResetCause) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        self.reset(cause, Phase::Connect);
    }

    pub(crate) fn reset(&self, cause: ResetCause, phase: Phase) {
        self.resets[index(&ResetCause::ALL, &cause)][index(&Phase::ALL, &phase)]
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn evicted(&self, reason: Eviction) {
        self.evictions[index(&Eviction::ALL, &reason)].fetch_add(1, Ordering::Relaxed);
    }

    /// A checkout that finished on its first attempt: one relaxed add, the whole cost
    /// of recording it on the checkout path.
    #[inline]
    pub(crate) fn immediate_checkout(&self) {
        self.immediate_unrecorded.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the immediate checkouts not yet recorded in the wait histogram.
    pub(crate) fn take_immediate(&self) -> u64 {
        let taken = self.immediate_unrecorded.swap(0, Ordering::Relaxed);
        self.immediate_recorded.fetch_add(taken, Ordering::Relaxed);
        taken
    }

    pub(crate) fn waited_checkout(&self) {
        self.waited.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn checkout_error(&self, failure: CheckoutFailure) {
        self.checkout_errors[index(&CheckoutFailure::ALL, &failure)]
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retry(&self, cause: ResetCause, outcome: RetryOutcome) {
        self.retries[index(&ResetCause::ALL, &cause)][index(&RetryOutcome::ALL, &outcome)]
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn run(&self, outcome: RunOutcome) {
        self.runs[index(&RunOutcome::ALL, &outcome)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn gate_rejection(&self) {
        self.gate_rejections.fetch_add(1, Ordering::Relaxed);
    }

    /// Books the idle limit the upstream announced; whether it is news. Returns
    /// after one load when it is not, the common case on every return.
    #[inline]
    pub(crate) fn announce(&self, limit: Duration) -> bool {
        let encoded = u64::try_from(limit.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        self.announced_ms.load(Ordering::Relaxed) != encoded
            && self.announced_ms.swap(encoded, Ordering::Relaxed) != encoded
    }

    /// The idle limit the upstream last announced.
    pub(crate) fn announced(&self) -> Option<Duration> {
        match self.announced_ms.load(Ordering::Relaxed) {
            0 => None,
            encoded => Some(Duration::from_millis(encoded - 1)),
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            opened: load(&self.opened),
            connect_failures: load(&self.connect_failures),
            resets: self.resets.each_ref().map(|row| row.each_ref().map(load)),
            evictions: self.evictions.each_ref().map(load),
            checkouts_immediate: load(&self.immediate_recorded) + load(&self.immediate_unrecorded),
            checkouts_waited: load(&self.waited),
            checkout_errors: self.checkout_errors.iter().map(load).sum(),
            checkout_failures: self.checkout_errors.each_ref().map(load),
            retries: self.retries.each_ref().map(|row| row.each_ref().map(load)),
            runs: self.runs.each_ref().map(load),
            gate_rejections: load(&self.gate_rejections),
            announced_idle_timeout: self.announced(),
        }
    }
}

/// What a pool has done since it was built: a snapshot of its counters, the same
/// counts the [metrics](crate::metrics) carry, read in process (each counter is one
/// relaxed atomic add where it happens, so a snapshot taken while the pool works may
/// be a moment behind on some of them).
///
/// The books always balance: every connection opened is open now, or was counted
/// closed exactly once, as a reset (outside the connect phase) or an eviction,
/// whatever path closed it (a cancelled future, a deadline, a panic, a resize, the
/// pool's close or drop):
/// `opened == open now + closed()`.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use steadypool::metrics::{RetryOutcome, RunOutcome};
/// use steadypool::{drivers::tcp::TcpManager, Eviction, Phase, Pool, ResetCause};
///
/// let pool = Pool::builder(TcpManager::new("127.0.0.1:7000")).build()?;
/// drop(pool.get().await?);
/// let stats = pool.stats();
/// assert_eq!(stats.opened, 1);
/// assert_eq!(stats.closed(), 0);
/// println!(
///     "reset while idle in the pool: {}",
///     stats.resets(ResetCause::PeerClosed, Phase::Idle)
/// );
/// println!("closed idle on purpose: {}", stats.evictions(Eviction::IdleExpired));
/// println!("runs that may have taken effect: {}", stats.runs(RunOutcome::MaybeExecuted));
/// println!("retried and recovered: {}", stats.retries(RetryOutcome::Succeeded));
/// println!("closed before the server's limit: {}", stats.evictions(Eviction::ServerLimit));
/// println!("the server keeps idle connections: {:?}", stats.announced_idle_timeout);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections opened.
    pub opened: u64,
    /// Connects that failed (also counted by cause as resets in phase `connect`;
    /// not connections, so not in [`Stats::closed`]).
    pub connect_failures: u64,
    resets: [[u64; PHASES]; CAUSES],
    evictions: [u64; REASONS],
    /// Checkouts that found a usable connection on their first attempt.
    pub checkouts_immediate: u64,
    /// Checkouts that had to wait (the pool was exhausted, or a connect or ping was
    /// needed) and got a connection.
    pub checkouts_waited: u64,
    /// Checkouts that failed: timed out, the pool closed, a connect failed, the
    /// connect circuit was open, or a defect in steadypool
    /// ([`Stats::checkout_failures`] tells them apart).
    pub checkout_errors: u64,
    checkout_failures: [u64; FAILURES],
    retries: [[u64; RETRY_OUTCOMES]; CAUSES],
    runs: [u64; RUN_OUTCOMES],
    /// Connects the connect gate turned away without dialing, because its circuit
    /// was open (or half-open with its trial connect in flight): for checkouts and
    /// for the reaper's refills alike.
    pub gate_rejections: u64,
    /// The idle timeout the upstream last announced on a connection, as its manager
    /// reads it ([`Manager::announced_idle_limit`](crate::Manager::announced_idle_limit):
    /// an HTTP server's `Keep-Alive: timeout=5` is 5 s); `None` while none did. The
    /// manager closes each connection before it, counted as
    /// [`Eviction::ServerLimit`].
    pub announced_idle_timeout: Option<Duration>,
}

impl Stats {
    /// Connections that broke with `cause` in `phase`, and were closed; in phase
    /// `connect`, connects that failed with `cause`.
    pub fn resets(&self, cause: ResetCause, phase: Phase) -> u64 {
        self.resets[index(&ResetCause::ALL, &cause)][index(&Phase::ALL, &phase)]
    }

    /// Connections closed on purpose for `reason`.
    pub fn evictions(&self, reason: Eviction) -> u64 {
        self.evictions[index(&Eviction::ALL, &reason)]
    }

    /// Checkouts that failed with `failure`.
    pub fn checkout_failures(&self, failure: CheckoutFailure) -> u64 {
        self.checkout_failures[index(&CheckoutFailure::ALL, &failure)]
    }

    /// Operations that hit a connection broken with `cause`, and ended in `outcome`
    /// (counted once per run, with the cause of the last broken connection).
    pub fn retries_by_cause(&self, cause: ResetCause, outcome: RetryOutcome) -> u64 {
        self.retries[index(&ResetCause::ALL, &cause)][index(&RetryOutcome::ALL, &outcome)]
    }

    /// Failed attempts of operations (a broken connection, a failed connect, a
    /// transient error, counted with cause `other`) that ended in `outcome`, whatever
    /// the cause.
    pub fn retries(&self, outcome: RetryOutcome) -> u64 {
        let at = index(&RetryOutcome::ALL, &outcome);
        self.retries.iter().map(|row| row[at]).sum()
    }

    /// `run` calls (and their siblings) that returned `outcome` to their caller.
    pub fn runs(&self, outcome: RunOutcome) -> u64 {
        self.runs[index(&RunOutcome::ALL, &outcome)]
    }

    /// Every connection closed: resets in every phase but `connect`, and evictions.
    pub fn closed(&self) -> u64 {
        let connect = index(&Phase::ALL, &Phase::Connect);
        let resets: u64 = self
            .resets
            .iter()
            .flat_map(|row| {
                row.iter()
                    .enumerate()
                    .filter(move |(phase, _)| *phase != connect)
                    .map(|(_, n)| *n)
            })
            .sum();
        resets + self.evictions.iter().sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announced_idle_limit_is_news_once_per_change() {
        let books = Books::default();
        assert_eq!(books.snapshot().announced_idle_timeout, None);
        assert!(books.announce(Duration::from_secs(5)));
        assert!(!books.announce(Duration::from_secs(5)));
        assert!(books.announce(Duration::ZERO), "0 s is a limit, not none");
        assert_eq!(
            books.snapshot().announced_idle_timeout,
            Some(Duration::ZERO)
        );
        assert!(books.announce(Duration::from_millis(2_500)));
        assert_eq!(books.announced(), Some(Duration::from_millis(2_500)));
    }
}
