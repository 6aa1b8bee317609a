//! The idle-limit learner: every lost and every reused connection is a measurement.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cause::ResetCause;
use crate::clock::{CoarseDuration, CoarseInstant};

/// Closes found sooner than this after a connection's last use are upstream failures,
/// not idle-limit evidence: middlebox idle timers run for seconds to hours.
pub(crate) const MIN_EVIDENCE_IDLE: Duration = Duration::from_secs(1);
/// Evidence older than this is forgotten.
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(10 * 60);
/// How close to an upstream failure a close counts as part of it rather than as
/// idle-limit evidence, on top of one reaper interval (the time the reaper needs to
/// find the idle victims). A crash's victims are all found within that interval; the
/// refused connect that gives the crash away comes when the next checkout needs a
/// new connection, usually soon after. Wider would throw away real evidence that
/// merely happened near an unrelated failure.
pub(crate) const UPSTREAM_FAILURE_WINDOW: Duration = Duration::from_secs(1);
/// Busy connections breaking this close together are one upstream failure: a crash
/// resets every connection at once, while independent resets (1 % of requests at
/// 1,000 requests per second) almost never land four within 20 ms.
pub(crate) const CRASH_BURST: u32 = 4;
/// See [`CRASH_BURST`].
pub(crate) const CRASH_BURST_SPAN: Duration = Duration::from_millis(20);
/// The share of the lower bound the pool lets connections idle.
const LOWER_MARGIN: f64 = 0.95;
/// The share of the upper bound the pool lets connections idle.
const UPPER_SHARE: f64 = 0.75;
/// A healthy reuse at least this share of the lower bound keeps the bound fresh.
const REFRESH_SHARE: f64 = 0.9;
/// Keepalive probes recommended: with the shortest interval, a dead peer is found
/// within seconds, and one lost probe is not taken for a dead peer.
const KEEPALIVE_PROBES: u32 = 3;
/// "None" in the atomics below.
const NEVER: u64 = u64::MAX;

/// What the pool knows about the path's idle limit (how long a connection may sit
/// idle on this path before something on it, a load balancer, a NAT gateway, a
/// firewall or the server's own keepalive timeout, closes it), as returned by
/// [`Pool::idle_limit`](crate::Pool::idle_limit).
///
/// Nobody tells the client that limit, but every reset is a measurement of it:
///
/// * a connection found closed or reset (FIN, RST, `EPIPE`) after sitting idle for
///   `d` bounds the limit **from above**: the limit is at most `d`;
/// * a connection reused after sitting idle for `d` that came back healthy bounds it
///   **from below**: the limit is above `d`.
///
/// The pool keeps the shortest such upper bound and the longest such lower bound.
/// Once an upper bound is known (and `learn_idle_limit` is on) the pool closes idle
/// connections after `max(95 % of the lower bound, 75 % of the upper bound)`, and never
/// later than the configured `idle_timeout`. The lower bound is proven harmless, and the
/// 5 % margin keeps timer jitter on either side from crossing it; 75 % of the upper
/// bound covers the time the pool needs to notice a close (up to a reaper interval).
/// Every further reset narrows the interval, so resets stop after a few.
///
/// What is not an idle limit must not teach one:
///
/// * A close found less than a second (`MIN_EVIDENCE_IDLE`) after the connection's last use is
///   no idle-limit evidence. One alone is background noise (a proxy shedding one
///   request, a server's per-connection limit) and teaches nothing. A burst of them
///   (4 within 20 ms) says the upstream failed (crash,
///   restart), and so does a refused connect. Such an upstream failure also voids any
///   upper bound learned shortly before it and shortly after it
///   (within a second plus a reaper interval): when a server crashes, every idle connection dies
///   with it, whatever its idle time. Counting every lone close as a failure would
///   keep a path with a steady trickle of resets from ever learning its limit.
/// * A close the pool made itself is no evidence: an eviction, including one a
///   manager asked for before a limit the server announced
///   ([`Broken::server_limit`](crate::Broken::server_limit)), and the announced limit
///   itself ([`Manager::announced_idle_limit`](crate::Manager::announced_idle_limit)),
///   which is a promise the manager keeps for each connection, shown in
///   [`Stats::announced_idle_timeout`](crate::Stats::announced_idle_timeout). Taken as
///   an upper bound, it would close every connection at 75 % of it for nothing.
/// * Evidence against evidence: the newest wins. A healthy reuse at or past the upper
///   bound drops it; a reset at or below the lower bound drops that.
/// * Evidence older than 10 minutes is forgotten, so a path that changed (a
///   new load balancer, a raised timeout) is learned again. A lower bound stays fresh
///   while connections keep being reused close to it.
///
/// A crash with no request in flight and no refused connect afterwards (the server
/// restarted at once) cannot be told from an idle limit; it may teach a limit that
/// is too low. That costs extra connects (planned evictions), never resets, and is
/// forgotten after 10 minutes.
///
/// ```
/// use std::time::Duration;
/// use steadypool::IdleLimit;
///
/// let limit = IdleLimit {
///     lower: Some(Duration::from_secs(45)),
///     upper: Some(Duration::from_secs(61)),
///     evict_after: Some(Duration::from_millis(45_750)),
/// };
/// assert!(limit.contains(Duration::from_secs(60)));
/// assert!(!limit.contains(Duration::from_secs(30)));
/// assert_eq!(limit.recommended_idle_timeout(), Some(Duration::from_millis(45_750)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdleLimit {
    /// The longest idle time after which a connection was reused and came back
    /// healthy: the limit is above it. `None` until a connection was reused.
    pub lower: Option<Duration>,
    /// The shortest idle time after which a connection was found closed or reset by
    /// the peer or a middlebox: the limit is at most that. `None` while no such close
    /// was seen (or it was forgotten).
    pub upper: Option<Duration>,
    /// After how long idle the pool closes a connection now: `idle_timeout`, or less
    /// when the learned limit is below it. `None`: never.
    pub evict_after: Option<Duration>,
}

impl IdleLimit {
    /// Whether `idle` lies in the learned interval (`lower < idle <= upper`); false
    /// while no upper bound is known.
    pub fn contains(&self, idle: Duration) -> bool {
        self.upper.is_some_and(|upper| idle <= upper) && self.lower.is_none_or(|lower| idle > lower)
    }

    /// The longest `idle_timeout` this path tolerates, as far as the evidence goes:
    /// the larger of the lower bound and 75 % of the upper bound. `None` while no
    /// upper bound is known.
    pub fn recommended_idle_timeout(&self) -> Option<Duration> {
        let upper = self.upper?.mul_f64(UPPER_SHARE);
        Some(self.lower.map_or(upper, |lower| lower.max(upper)))
    }

    /// Keepalive timing for this path, to go with
    /// [`recommended_idle_timeout`](Self::recommended_idle_timeout): probing starts
    /// at half of that timeout (whole seconds, 1 s to the default 10 s), every third
    /// of that (1 s to the default 3 s), 3 probes. A NAT or L4 load balancer that
    /// counts keepalive as traffic then never sees a pooled connection idle as long
    /// as its limit, and a dead peer is found within seconds. `None` while no upper
    /// bound is known.
    ///
    /// ```
    /// use std::time::Duration;
    /// use steadypool::{IdleLimit, Keepalive};
    ///
    /// let nat = IdleLimit { upper: Some(Duration::from_secs(4)), ..IdleLimit::default() };
    /// assert_eq!(
    ///     nat.recommended_keepalive(),
    ///     Some(Keepalive::new(Duration::from_secs(1), Duration::from_secs(1), 3))
    /// );
    /// let alb = IdleLimit { upper: Some(Duration::from_secs(60)), ..IdleLimit::default() };
    /// assert_eq!(alb.recommended_keepalive(), Some(Keepalive::default()));
    /// ```
    pub fn recommended_keepalive(&self) -> Option<crate::dial::Keepalive> {
        let timeout = self.recommended_idle_timeout()?;
        let defaults = crate::dial::Keepalive::default();
        let idle = Duration::from_secs((timeout.as_secs() / 2).max(1)).min(defaults.idle);
        let interval = Duration::from_secs((idle.as_secs() / 3).max(1)).min(defaults.interval);
        Some(crate::dial::Keepalive::new(
            idle,
            interval,
            KEEPALIVE_PROBES,
        ))
    }
}

/// What a reset taught: what it says about the path, and the limit now when it
/// changed (for the observer to publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lesson {
    pub(crate) reading: Reading,
    pub(crate) changed: Option<IdleLimit>,
}

/// What a reset says about the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// Found closed after idling: the idle limit is at most that idle time.
    AfterIdle,
    /// The upstream itself failed (busy connections broke together, a connect was
    /// refused, or the close came together with such a failure).
    UpstreamFailure,
    /// Not a close by the peer: a timeout, stray bytes, a failed ping.
    Unrelated,
}

#[derive(Debug, Clone, Copy)]
struct Bound {
    value: Duration,
    seen: CoarseInstant,
}

#[derive(Debug, Default)]
struct Evidence {
    lower: Option<Bound>,
    upper: Option<Bound>,
    upstream_failed_at: Option<CoarseInstant>,
    /// The current run of closes on connections busy a moment ago: when it began and
    /// how many it holds.
    busy_closes: Option<(CoarseInstant, u32)>,
    /// The limit as last computed: what [`IdleLimitLearner::current`] returns, and
    /// what a change is measured against.
    limit: IdleLimit,
}

/// One pool's learner. Every checkout reads the limit in force; only evidence takes
/// the lock, and healthy reuses well below the lower bound (the common case) do not.
#[derive(Debug)]
pub(crate) struct IdleLimitLearner {
    evidence: Mutex<Evidence>,
    /// The limit in force, in [`CoarseDuration`] ticks, or [`NEVER`]: every checkout
    /// compares an idle time with it, in the clock's format.
    evict_after: AtomicU64,
    /// Healthy reuses idle at least this long ([`CoarseDuration`] ticks) are news.
    news_from: AtomicU64,
    /// When the oldest bound expires, in [`CoarseInstant`] ticks, or [`NEVER`].
    expires: AtomicU64,
    configured: Option<Duration>,
    enforce: bool,
    failure_window: Duration,
}

/// `d` in the clock's format; a span beyond its range saturates to [`NEVER`].
fn ticks(d: Duration) -> u64 {
    CoarseDuration::from(d).ticks()
}

impl IdleLimitLearner {
    /// A learner for a pool configured with `idle_timeout`; it evicts by what it
    /// learned only when `enforce` is set, and treats closes within
    /// `reaper_interval` + [`UPSTREAM_FAILURE_WINDOW`] of an upstream failure as part
    /// of it.
    pub(crate) fn new(
        idle_timeout: Option<Duration>,
        enforce: bool,
        reaper_interval: Duration,
    ) -> IdleLimitLearner {
        IdleLimitLearner {
            evidence: Mutex::new(Evidence {
                limit: IdleLimit {
                    evict_after: idle_timeout,
                    ..IdleLimit::default()
                },
                ..Evidence::default()
            }),
            evict_after: AtomicU64::new(idle_timeout.map_or(NEVER, ticks)),
            news_from: AtomicU64::new(0),
            expires: AtomicU64::new(NEVER),
            configured: idle_timeout,
            enforce,
            failure_window: UPSTREAM_FAILURE_WINDOW.saturating_add(reaper_interval),
        }
    }

    /// The idle time after which a connection is closed now.
    ///
    /// Inlined into every checkout: two atomic loads and a comparison, with the rare
    /// refresh kept out of line.
    #[inline]
    pub(crate) fn evict_after(&self, now: CoarseInstant) -> Option<CoarseDuration> {
        if now.ticks() >= self.expires.load(Ordering::Relaxed) {
            self.forget_expired(now);
        }
        match self.evict_after.load(Ordering::Relaxed) {
            NEVER => None,
            value => Some(CoarseDuration::from_ticks(value)),
        }
    }

    /// Drops evidence that has expired. The checkout that finds it expired does not
    /// publish the change: the reaper's next tick does (see [`Self::snapshot`]).
    #[cold]
    #[inline(never)]
    fn forget_expired(&self, now: CoarseInstant) {
        self.update(now, |_| ());
    }

    /// The interval and the limit in force, forgetting expired evidence first.
    pub(crate) fn snapshot(&self, now: CoarseInstant) -> IdleLimit {
        self.update(now, |_| ()).0
    }

    /// The limit as last computed, without forgetting anything: a plain read.
    pub(crate) fn current(&self) -> IdleLimit {
        self.lock().limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Evidence> {
        // Every change is computed first and stored in whole fields: a panic cannot
        // leave the evidence half-written, so a poisoned lock is still usable.
        self.evidence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection reused after sitting idle for `idle` came back healthy. Returns
    /// the limit when that changed it.
    pub(crate) fn reused(&self, idle: Duration, now: CoarseInstant) -> Option<IdleLimit> {
        if idle < MIN_EVIDENCE_IDLE
            || (ticks(idle) < self.news_from.load(Ordering::Relaxed)
                && now.ticks() < self.expires.load(Ordering::Relaxed))
        {
            return None;
        }
        self.update(now, |evidence| {
            if evidence.upper.is_some_and(|upper| idle >= upper.value) {
                evidence.upper = None;
            }
            match &mut evidence.lower {
                Some(lower) if idle < lower.value => {
                    if idle >= lower.value.mul_f64(REFRESH_SHARE) {
                        lower.seen = now;
                    }
                }
                lower => {
                    *lower = Some(Bound {
                        value: idle,
                        seen: now,
                    })
                }
            }
        })
        .1
    }

    /// A connection broke with `cause` after sitting idle for `idle` (for one broken
    /// in use: idle before that checkout). Returns what that says about the path.
    pub(crate) fn reset(&self, cause: ResetCause, idle: Duration, now: CoarseInstant) -> Lesson {
        let closed_by_peer = matches!(
            cause,
            ResetCause::PeerClosed | ResetCause::PeerReset | ResetCause::BrokenPipe
        );
        let learned = |reading, changed| Lesson { reading, changed };
        if cause == ResetCause::Refused {
            return learned(Reading::UpstreamFailure, self.upstream_failed(now));
        }
        if closed_by_peer && idle < MIN_EVIDENCE_IDLE {
            return if self.busy_close_is_a_crash(now) {
                learned(Reading::UpstreamFailure, self.upstream_failed(now))
            } else {
                learned(Reading::Unrelated, None)
            };
        }
        if !closed_by_peer {
            return learned(Reading::Unrelated, None);
        }
        let mut reading = Reading::AfterIdle;
        let window = self.failure_window;
        let (_, changed) = self.update(now, |evidence| {
            if evidence
                .upstream_failed_at
                .is_some_and(|at| now.saturating_duration_since(at) < window)
            {
                reading = Reading::UpstreamFailure;
                return;
            }
            if evidence.lower.is_some_and(|lower| lower.value >= idle) {
                evidence.lower = None;
            }
            if evidence.upper.is_none_or(|upper| idle <= upper.value) {
                evidence.upper = Some(Bound {
                    value: idle,
                    seen: now,
                });
            }
        });
        learned(reading, changed)
    }

    /// Counts a close on a connection busy a moment ago; true once the run of such
    /// closes is long enough to be a crash.
    fn busy_close_is_a_crash(&self, now: CoarseInstant) -> bool {
        let mut evidence = self.lock();
        let run = match evidence.busy_closes {
            Some((began, count)) if now.saturating_duration_since(began) <= CRASH_BURST_SPAN => {
                (began, count + 1)
            }
            _ => (now, 1),
        };
        evidence.busy_closes = Some(run);
        run.1 >= CRASH_BURST
    }

    fn upstream_failed(&self, now: CoarseInstant) -> Option<IdleLimit> {
        let window = self.failure_window;
        self.update(now, |evidence| {
            evidence.upstream_failed_at = Some(now);
            if evidence
                .upper
                .is_some_and(|upper| now.saturating_duration_since(upper.seen) < window)
            {
                evidence.upper = None;
            }
        })
        .1
    }

    /// Applies `change` under the lock after forgetting expired evidence. Returns the
    /// limit, and the limit again when it changed.
    fn update(
        &self,
        now: CoarseInstant,
        change: impl FnOnce(&mut Evidence),
    ) -> (IdleLimit, Option<IdleLimit>) {
        let mut evidence = self.lock();
        let fresh = |bound: &Option<Bound>| {
            bound.filter(|b| now.saturating_duration_since(b.seen) < FORGET_AFTER)
        };
        evidence.lower = fresh(&evidence.lower);
        evidence.upper = fresh(&evidence.upper);
        change(&mut evidence);

        let mut limit = IdleLimit {
            lower: evidence.lower.map(|b| b.value),
            upper: evidence.upper.map(|b| b.value),
            evict_after: self.configured,
        };
        if self.enforce
            && let Some(upper) = limit.upper
        {
            let learned = limit
                .lower
                .map_or(Duration::ZERO, |lower| lower.mul_f64(LOWER_MARGIN))
                .max(upper.mul_f64(UPPER_SHARE));
            limit.evict_after = Some(self.configured.map_or(learned, |c| c.min(learned)));
        }
        let expires = [evidence.lower, evidence.upper]
            .into_iter()
            .flatten()
            .map(|b| {
                b.seen
                    .checked_add(FORGET_AFTER)
                    .map_or(NEVER, CoarseInstant::ticks)
            })
            .min()
            .unwrap_or(NEVER);
        let news_from = limit
            .lower
            .map_or(0, |lower| ticks(lower.mul_f64(REFRESH_SHARE)));
        self.evict_after
            .store(limit.evict_after.map_or(NEVER, ticks), Ordering::Relaxed);
        self.news_from.store(news_from, Ordering::Relaxed);
        self.expires.store(expires, Ordering::Relaxed);
        let changed = (evidence.limit != limit).then_some(limit);
        evidence.limit = limit;
        (limit, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn learner(idle_timeout: Option<Duration>, enforce: bool) -> IdleLimitLearner {
        IdleLimitLearner::new(idle_timeout, enforce, S)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Equal to within a microsecond (the shares are applied in floating point).
    fn about(actual: Option<Duration>, expected: Duration) -> bool {
        actual.is_some_and(|a| a.abs_diff(expected) < Duration::from_micros(1))
    }

    #[test]
    fn idle_timeout_rules_until_a_close_after_idle_is_seen() {
        let l = learner(Some(45 * S), true);
        let t = CoarseInstant::now();
        assert_eq!(l.evict_after(t), Some((45 * S).into()));
        // Reuses within a second of the last use say nothing about a middlebox.
        l.reused(ms(500), t);
        assert_eq!(l.snapshot(t).lower, None);
        l.reused(40 * S, t);
        assert_eq!(l.evict_after(t), Some((45 * S).into()));
        assert_eq!(l.snapshot(t).lower, Some(40 * S));
    }

    #[test]
    fn a_reset_after_idle_bounds_the_limit_and_evictions_follow() {
        let l = learner(Some(45 * S), true);
        let t = CoarseInstant::now();
        l.reused(ms(1900), t);
        assert_eq!(
            l.reset(ResetCause::PeerClosed, ms(2100), t).reading,
            Reading::AfterIdle
        );
        let limit = l.snapshot(t);
        assert_eq!(limit.lower, Some(ms(1900)));
        assert_eq!(limit.upper, Some(ms(2100)));
        assert!(limit.contains(2 * S));
        // max(95 % of 1.9 s, 75 % of 2.1 s) = 1.805 s
        assert!(about(limit.evict_after, ms(1805)), "{limit:?}");
        // a shorter reset narrows it
        l.reset(ResetCause::PeerReset, ms(2020), t);
        assert_eq!(l.snapshot(t).upper, Some(ms(2020)));
        // a longer one does not widen it
        l.reset(ResetCause::PeerReset, 3 * S, t);
        assert_eq!(l.snapshot(t).upper, Some(ms(2020)));
    }

    #[test]
    fn learned_eviction_never_exceeds_idle_timeout() {
        let l = learner(Some(10 * S), true);
        let t = CoarseInstant::now();
        l.reused(50 * S, t);
        l.reset(ResetCause::PeerReset, 61 * S, t);
        assert_eq!(l.evict_after(t), Some((10 * S).into()));
    }

    #[test]
    fn switched_off_it_measures_but_does_not_evict() {
        let l = learner(Some(45 * S), false);
        let t = CoarseInstant::now();
        l.reset(ResetCause::PeerClosed, 2 * S, t);
        let limit = l.snapshot(t);
        assert_eq!(limit.upper, Some(2 * S));
        assert_eq!(limit.evict_after, Some(45 * S));
    }

    #[test]
    fn without_idle_timeout_the_learned_limit_alone_applies() {
        let l = learner(None, true);
        let t = CoarseInstant::now();
        assert_eq!(l.evict_after(t), None);
        l.reset(ResetCause::PeerClosed, 4 * S, t);
        assert_eq!(l.evict_after(t), Some((3 * S).into()));
    }

    #[test]
    fn newest_evidence_wins_over_contradicting_evidence() {
        let l = learner(None, false);
        let t = CoarseInstant::now();
        l.reused(30 * S, t);
        // the path's limit dropped below what was fine before
        l.reset(ResetCause::PeerReset, 20 * S, t + S);
        let limit = l.snapshot(t + S);
        assert_eq!((limit.lower, limit.upper), (None, Some(20 * S)));
        // and went up again
        l.reused(25 * S, t + 2 * S);
        let limit = l.snapshot(t + 2 * S);
        assert_eq!((limit.lower, limit.upper), (Some(25 * S), None));
    }

    #[test]
    fn a_lone_busy_close_teaches_nothing_and_voids_nothing() {
        let l = learner(Some(45 * S), true);
        let t = CoarseInstant::now();
        l.reset(ResetCause::PeerClosed, 3 * S, t);
        assert_eq!(
            l.reset(ResetCause::PeerReset, ms(3), t + ms(100)).reading,
            Reading::Unrelated
        );
        assert_eq!(
            l.reset(ResetCause::PeerReset, ms(5), t + ms(200)).reading,
            Reading::Unrelated
        );
        assert_eq!(l.snapshot(t + S).upper, Some(3 * S));
    }

    #[test]
    fn busy_close_bursts_and_refusals_are_upstream_failures_not_evidence() {
        let l = learner(Some(45 * S), true);
        let t = CoarseInstant::now();
        for i in 0..CRASH_BURST - 1 {
            assert_eq!(
                l.reset(ResetCause::PeerReset, ms(3), t + ms(u64::from(i)))
                    .reading,
                Reading::Unrelated
            );
        }
        assert_eq!(
            l.reset(ResetCause::PeerReset, ms(3), t + ms(5)).reading,
            Reading::UpstreamFailure
        );
        // an idle connection killed by the same crash, found by the reaper
        assert_eq!(
            l.reset(ResetCause::PeerClosed, 7 * S, t + S).reading,
            Reading::UpstreamFailure
        );
        assert_eq!(l.snapshot(t + S).upper, None);
        // long after the failure, the same close is evidence again
        assert_eq!(
            l.reset(ResetCause::PeerClosed, 7 * S, t + 60 * S).reading,
            Reading::AfterIdle
        );
        assert_eq!(
            l.reset(ResetCause::KeepaliveTimeout, 30 * S, t + 60 * S)
                .reading,
            Reading::Unrelated
        );
    }

    #[test]
    fn a_failure_voids_the_bound_learned_just_before_it() {
        let l = learner(Some(45 * S), true);
        let t = CoarseInstant::now();
        l.reset(ResetCause::PeerClosed, 3 * S, t);
        assert_eq!(l.snapshot(t).upper, Some(3 * S));
        assert_eq!(
            l.reset(ResetCause::Refused, Duration::ZERO, t + S).reading,
            Reading::UpstreamFailure
        );
        assert_eq!(l.evict_after(t + S), Some((45 * S).into()));
    }

    #[test]
    fn old_evidence_is_forgotten_unless_refreshed() {
        let l = learner(Some(45 * S), true);
        let t = CoarseInstant::now();
        l.reused(ms(1900), t);
        l.reset(ResetCause::PeerClosed, ms(2100), t);
        // reuses near the lower bound keep it fresh; the upper bound ages out
        let later = t + (FORGET_AFTER - S);
        l.reused(ms(1750), later);
        let after = t + FORGET_AFTER + S;
        let limit = l.snapshot(after);
        assert_eq!(limit.lower, Some(ms(1900)));
        assert_eq!(limit.upper, None);
        assert_eq!(limit.evict_after, Some(45 * S));
        let gone = l.snapshot(later + FORGET_AFTER);
        assert_eq!(
            gone,
            IdleLimit {
                lower: None,
                upper: None,
                evict_after: Some(45 * S)
            }
        );
    }

    #[test]
    fn a_change_of_the_limit_is_returned_and_the_current_limit_read_without_it() {
        let l = learner(Some(45 * S), true);
        let t = CoarseInstant::now();
        let configured = IdleLimit {
            lower: None,
            upper: None,
            evict_after: Some(45 * S),
        };
        assert_eq!(l.current(), configured);
        let lower = l.reused(40 * S, t);
        assert_eq!(lower.map(|limit| limit.lower), Some(Some(40 * S)));
        // The same evidence again changes nothing.
        assert_eq!(l.reused(40 * S, t), None);
        let lesson = l.reset(ResetCause::PeerClosed, 60 * S, t);
        assert_eq!(lesson.reading, Reading::AfterIdle);
        let changed = lesson
            .changed
            .expect("a first upper bound changes the limit");
        assert_eq!(changed.upper, Some(60 * S));
        assert_eq!(l.current(), changed);
        // A timeout says nothing about the idle limit.
        let timeout = l.reset(ResetCause::KeepaliveTimeout, 60 * S, t);
        assert_eq!(
            (timeout.reading, timeout.changed),
            (Reading::Unrelated, None)
        );
        // Expired evidence stays in the current limit until something forgets it.
        let later = t + FORGET_AFTER + S;
        assert_eq!(l.current(), changed);
        assert_eq!(l.snapshot(later), configured);
        assert_eq!(l.current(), configured);
    }

    #[test]
    fn recommendation_follows_the_evidence() {
        let limit = IdleLimit {
            lower: Some(S),
            upper: Some(61 * S),
            evict_after: None,
        };
        assert_eq!(limit.recommended_idle_timeout(), Some(ms(45_750)));
        assert_eq!(IdleLimit::default().recommended_idle_timeout(), None);
        assert!(!IdleLimit::default().contains(S));
    }
}
