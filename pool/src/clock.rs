//! The clock that checkouts read: the kernel's coarse monotonic clock.
//!
//! Every checkout reads the time twice: at checkout, to test the lifetime and idle
//! limits and to decide whether a ping is due, and at return, to start the idle
//! clock. `std::time::Instant::now()` reads the precise monotonic clock, ~30-37 ns in
//! a KVM guest (the vDSO reads the hypervisor's clock page and the TSC): two of them
//! were a fifth of a whole checkout. `CLOCK_MONOTONIC_COARSE` returns the time of the
//! last kernel tick: ~8 ns, with the tick's resolution (1 to 10 ms, by the kernel's
//! `HZ`). Every decision made with this clock is about idle times and lifetimes of
//! seconds to minutes, or `check_after` intervals of a second or more; a few
//! milliseconds of error changes none of them.
//!
//! Timings that are reported rather than compared with a limit (connect and checkout
//! durations, the retry deadline) keep the precise clock.
//!
//! The checkout path also compares in the clock's own format, [`CoarseDuration`]: a
//! span is one integer (seconds in 32.32 fixed point), so testing an idle time
//! against a limit is a subtraction and a comparison. A `Duration` is converted in
//! only when a limit is configured or learned, and out only to report.

use std::time::Duration;

/// A point on the coarse monotonic clock. Comparable, and subtractable into a
/// [`Duration`]; never goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct CoarseInstant(coarsetime::Instant);

/// Durations beyond this (68 years) do not fit the clock's fixed-point format; adding
/// one gives "never".
const LONGEST: Duration = Duration::from_secs(1 << 31);

impl CoarseInstant {
    /// An instant no reading of the clock reaches: a deadline that never comes.
    /// One integer where an `Option` would take two, and compared like any other.
    pub(crate) const NEVER: CoarseInstant =
        CoarseInstant(coarsetime::Instant::from_ticks(u64::MAX));

    /// The time of the kernel's last tick.
    #[inline]
    pub(crate) fn now() -> CoarseInstant {
        // Not `now()`: that also stores the reading in a process-wide atomic, a cache
        // line every worker thread would write on every checkout.
        CoarseInstant(coarsetime::Instant::now_without_cache_update())
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    pub(crate) fn saturating_duration_since(self, earlier: CoarseInstant) -> Duration {
        self.saturating_since(earlier).to_std()
    }

    /// The time from `earlier` to `self` in the clock's format, or zero if `earlier` is
    /// later.
    #[inline]
    pub(crate) fn saturating_since(self, earlier: CoarseInstant) -> CoarseDuration {
        CoarseDuration(self.0 - earlier.0)
    }

    /// The instant as one integer, for an atomic to hold.
    #[inline]
    pub(crate) fn ticks(self) -> u64 {
        self.0.as_ticks()
    }

    /// The time since `self`.
    pub(crate) fn elapsed(self) -> Duration {
        CoarseInstant::now().saturating_duration_since(self)
    }

    /// `self + duration`, or `None` when that lies beyond the clock's range (a
    /// duration of more than 68 years: in effect, never).
    pub(crate) fn checked_add(self, duration: Duration) -> Option<CoarseInstant> {
        if duration >= LONGEST {
            return None;
        }
        self.0
            .checked_add(coarsetime::Duration::from(duration))
            .map(CoarseInstant)
    }
}

/// A span of time in the coarse clock's format: 32.32 fixed-point seconds, to within
/// a nanosecond. Ordered like the `Duration` it came from; spans beyond the format's
/// 136 years saturate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CoarseDuration(coarsetime::Duration);

impl CoarseDuration {
    /// No time at all.
    pub(crate) const ZERO: CoarseDuration = CoarseDuration::from_std(Duration::ZERO);

    /// The most a coarse reading can lag the true time: one kernel tick at the
    /// slowest common `HZ` (100). A span between two readings can be overestimated by
    /// that much (the earlier reading was late by a tick, the later one on time), so a
    /// limit that must never fire early, such as `idle_timeout`, is compared with the
    /// span less this.
    pub(crate) const MAX_LAG: CoarseDuration = CoarseDuration::from_std(Duration::from_millis(10));

    /// `self + other`, saturating.
    #[inline]
    pub(crate) fn saturating_add(self, other: CoarseDuration) -> CoarseDuration {
        CoarseDuration::from_ticks(self.ticks().saturating_add(other.ticks()))
    }

    /// `duration` in the clock's format; usable in constants.
    pub(crate) const fn from_std(duration: Duration) -> CoarseDuration {
        CoarseDuration(coarsetime::Duration::new(
            duration.as_secs(),
            duration.subsec_nanos(),
        ))
    }

    /// The span as a `Duration`, for reports and for arithmetic.
    pub(crate) fn to_std(self) -> Duration {
        self.0.into()
    }

    /// The span as one integer, for an atomic to hold.
    #[inline]
    pub(crate) fn ticks(self) -> u64 {
        self.0.as_ticks()
    }

    /// The span an atomic held (see [`CoarseDuration::ticks`]).
    #[inline]
    pub(crate) fn from_ticks(ticks: u64) -> CoarseDuration {
        CoarseDuration(coarsetime::Duration::from_ticks(ticks))
    }
}

impl From<Duration> for CoarseDuration {
    fn from(duration: Duration) -> CoarseDuration {
        CoarseDuration::from_std(duration)
    }
}

/// Panics beyond the clock's range, as `std::time::Instant + Duration` does; only
/// tests, which add small durations, use it.
#[cfg(test)]
impl std::ops::Add<Duration> for CoarseInstant {
    type Output = CoarseInstant;

    fn add(self, duration: Duration) -> CoarseInstant {
        self.checked_add(duration)
            .expect("a test adds a duration within the clock's range")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_to_well_under_the_tick() {
        let start = CoarseInstant::now();
        for duration in [
            Duration::ZERO,
            Duration::from_millis(1),
            Duration::from_secs(59),
            Duration::from_secs(86_400 * 365),
        ] {
            let later = start.checked_add(duration).expect("within range");
            let back = later.saturating_duration_since(start);
            assert!(
                back.abs_diff(duration) < Duration::from_micros(1),
                "{duration:?} came back as {back:?}"
            );
        }
    }

    #[test]
    fn never_goes_back_and_saturates_at_zero() {
        let first = CoarseInstant::now();
        let second = CoarseInstant::now();
        assert!(second >= first);
        assert_eq!(
            first.saturating_duration_since(
                second
                    .checked_add(Duration::from_secs(1))
                    .expect("in range")
            ),
            Duration::ZERO
        );
    }

    #[test]
    fn spans_compare_as_their_durations_do_and_saturate() {
        let spans = [
            Duration::ZERO,
            Duration::from_nanos(3),
            Duration::from_millis(500),
            Duration::from_secs(1),
            Duration::from_secs(61),
            Duration::from_secs(86_400 * 365),
        ];
        for pair in spans.windows(2) {
            let (shorter, longer) = (CoarseDuration::from(pair[0]), CoarseDuration::from(pair[1]));
            assert!(shorter < longer, "{:?} !< {:?}", pair[0], pair[1]);
            assert_eq!(CoarseDuration::from_ticks(longer.ticks()), longer);
            assert!(longer.to_std().abs_diff(pair[1]) < Duration::from_nanos(2));
        }
        const MINUTE: CoarseDuration = CoarseDuration::from_std(Duration::from_secs(60));
        assert!(MINUTE < CoarseDuration::from(Duration::from_secs(61)));
        assert_eq!(CoarseDuration::from(Duration::ZERO), CoarseDuration::ZERO);
        assert!(CoarseDuration::from(Duration::MAX) > CoarseDuration::from(LONGEST));
    }

    #[test]
    fn a_duration_beyond_the_range_is_never() {
        assert_eq!(CoarseInstant::now().checked_add(Duration::MAX), None);
        assert_eq!(CoarseInstant::now().checked_add(LONGEST), None);
    }

    #[test]
    fn follows_the_precise_clock_within_a_tick() {
        // Each coarse reading is bracketed by precise ones, so a descheduled thread
        // widens the brackets, not the error.
        let outer_start = std::time::Instant::now();
        let coarse_start = CoarseInstant::now();
        let inner_start = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        let inner_end = std::time::Instant::now();
        let coarse = coarse_start.elapsed();
        let outer_end = std::time::Instant::now();
        // A coarse reading lags the precise clock by up to one tick (10 ms at HZ=100).
        let tick = Duration::from_millis(10);
        let (shortest, longest) = (inner_end - inner_start, outer_end - outer_start);
        assert!(
            coarse + tick >= shortest && coarse <= longest + tick,
            "coarse {coarse:?} outside {shortest:?}..{longest:?} +/- {tick:?}"
        );
    }
}
