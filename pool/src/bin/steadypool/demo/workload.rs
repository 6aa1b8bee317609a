//! The demo's workload: when the workers pause (idle gaps), when the upstream
//! crashes, and which requests each worker sends. All of it follows from the seed, so
//! both pools get the same workload and a run can be repeated.

use std::time::Duration;

use crate::kv::Op;

/// The share of requests that are `SET`s; the rest are `GET`s.
const SET_SHARE: f64 = 0.2;
/// Keys per run: few enough that `GET`s find values.
const KEYSPACE: u32 = 1000;
/// The pause after each request, drawn from this range: a steady load that leaves
/// the machine room for two pools, two proxies and the upstream.
const THINK_MICROS: std::ops::Range<u64> = 2_000..8_000;
/// A gap must end at least this long before the run does, so requests come after it.
const TAIL: Duration = Duration::from_millis(500);
/// How far a paced worker's pause strays from the close it straddles, either way.
pub(crate) const PACING_SPREAD: f64 = 0.1;

/// When the workers pause and when the upstream crashes, as offsets from the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// Idle gaps, `(start, end)`, in order.
    pub(crate) gaps: Vec<(Duration, Duration)>,
    /// Crash times, in order, always while the workers are busy.
    pub(crate) crashes: Vec<Duration>,
}

impl Schedule {
    /// A schedule for a run of `duration` on a path whose idle limit is `lb_idle`.
    ///
    /// Busy spells of one to two idle limits alternate with idle gaps: a long one
    /// (1.2 to 1.5 idle limits, so every pooled connection dies) and then a short one
    /// (0.55 to 0.9: they survive, which teaches steadypool how long idling is fine).
    /// The first busy spell is shorter, so even a 5 s run has a long gap. Crashes come
    /// every `crash_every` (give or take 10 %), or once half-way through a run shorter
    /// than that, moved out of any gap into the busy spell after it.
    pub(crate) fn new(
        duration: Duration,
        lb_idle: Duration,
        seed: u64,
        gaps: bool,
        crash_every: Option<Duration>,
    ) -> Schedule {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5C4E_D01E);
        let mut spans = Vec::new();
        if gaps {
            let mut at = lb_idle.mul_f64(0.5 + 0.25 * rng.f64());
            let mut long = true;
            loop {
                let (share, least) = if long {
                    (1.2 + 0.3 * rng.f64(), 1.15)
                } else {
                    (0.55 + 0.35 * rng.f64(), 0.5)
                };
                let room = duration.saturating_sub(TAIL).saturating_sub(at);
                let len = lb_idle.mul_f64(share).min(room);
                if len < lb_idle.mul_f64(least) {
                    break;
                }
                spans.push((at, at + len));
                at += len + lb_idle.mul_f64(1.0 + rng.f64());
                long = !long;
            }
        }
        let mut crashes = Vec::new();
        if let Some(every) = crash_every {
            let mut nominal: Vec<Duration> = (1..)
                .map(|k| every.mul_f64(f64::from(k) * (0.9 + 0.2 * rng.f64())))
                .take_while(|at| *at + TAIL < duration)
                .collect();
            if nominal.is_empty() {
                nominal.push(duration / 2);
            }
            for at in nominal {
                let at = match spans.iter().position(|(s, e)| at >= *s && at < *e) {
                    Some(i) => {
                        let busy_until = spans.get(i + 1).map_or(duration, |next| next.0);
                        (spans[i].1 + busy_until) / 2
                    }
                    None => at,
                };
                if crashes.last().is_none_or(|last| at > *last) {
                    crashes.push(at);
                }
            }
        }
        Schedule {
            gaps: spans,
            crashes,
        }
    }

    /// If `at` falls in an idle gap, when that gap ends.
    pub(crate) fn gap_end(&self, at: Duration) -> Option<Duration> {
        self.gaps
            .iter()
            .find(|(start, end)| at >= *start && at < *end)
            .map(|(_, end)| *end)
    }
}

/// One worker's requests and pauses, the same sequence for both pools.
#[derive(Debug)]
pub(crate) struct Requests {
    rng: fastrand::Rng,
    prefix: &'static str,
    around: Option<Duration>,
    worker: usize,
}

impl Requests {
    /// Worker `worker`'s sequence for `seed`; keys start with `prefix`.
    pub(crate) fn new(seed: u64, worker: usize, prefix: &'static str) -> Requests {
        let mixed = seed.wrapping_add((worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Requests {
            rng: fastrand::Rng::with_seed(mixed),
            prefix,
            around: None,
            worker,
        }
    }

    /// The worker these requests are for.
    pub(crate) fn worker(&self) -> usize {
        self.worker
    }

    /// The same requests, each followed by a pause within 10 % of `close`: when a
    /// server closes idle connections after `close`, about half of the requests go
    /// out on a connection it is about to close or has just closed.
    pub(crate) fn paced_around(self, close: Duration) -> Requests {
        Requests {
            around: Some(close),
            ..self
        }
    }

    /// The next request and the pause after it.
    pub(crate) fn next_request(&mut self) -> (Op, Duration) {
        let key = format!("{}{}", self.prefix, self.rng.u32(..KEYSPACE));
        let op = if self.rng.f64() < SET_SHARE {
            Op::set(key, format!("v{}", self.rng.u32(..)))
        } else {
            Op::get(key)
        };
        let pause = match self.around {
            Some(close) => close.mul_f64(1.0 + PACING_SPREAD * (2.0 * self.rng.f64() - 1.0)),
            None => Duration::from_micros(self.rng.u64(THINK_MICROS)),
        };
        (op, pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB: Duration = Duration::from_secs(2);

    #[test]
    fn a_default_run_has_long_and_short_gaps_and_crashes_while_busy() {
        for seed in 0..50 {
            let s = Schedule::new(
                Duration::from_secs(30),
                LB,
                seed,
                true,
                Some(Duration::from_secs(10)),
            );
            assert!(s.gaps.iter().any(|(a, b)| *b - *a > LB), "{s:?}");
            assert!(s.gaps.iter().any(|(a, b)| *b - *a < LB), "{s:?}");
            assert!(s.crashes.len() >= 2, "{s:?}");
            for crash in &s.crashes {
                assert!(s.gap_end(*crash).is_none(), "crash in a gap: {s:?}");
                assert!(*crash < Duration::from_secs(30));
            }
        }
    }

    #[test]
    fn a_five_second_run_still_has_a_long_gap_and_a_crash() {
        for seed in 0..50 {
            let s = Schedule::new(
                Duration::from_secs(5),
                LB,
                seed,
                true,
                Some(Duration::from_secs(10)),
            );
            assert_eq!(s.gaps.len(), 1, "{s:?}");
            let (start, end) = s.gaps[0];
            assert!(
                end - start > LB && end + TAIL <= Duration::from_secs(5),
                "{s:?}"
            );
            assert_eq!(s.crashes.len(), 1, "{s:?}");
            assert!(s.gap_end(s.crashes[0]).is_none(), "{s:?}");
        }
    }

    #[test]
    fn both_pools_get_the_same_requests() {
        let mut a = Requests::new(7, 3, "k:");
        let mut b = Requests::new(7, 3, "k:");
        let mut other = Requests::new(7, 4, "k:");
        let first: Vec<_> = (0..100).map(|_| a.next_request()).collect();
        let second: Vec<_> = (0..100).map(|_| b.next_request()).collect();
        let third: Vec<_> = (0..100).map(|_| other.next_request()).collect();
        assert_eq!(first, second);
        assert_ne!(first, third);
    }

    #[test]
    fn paced_requests_pause_within_a_tenth_of_the_close_either_way() {
        let close = Duration::from_secs(2);
        let mut paced = Requests::new(7, 0, "/items/").paced_around(close);
        let pauses: Vec<Duration> = (0..200).map(|_| paced.next_request().1).collect();
        assert!(
            pauses
                .iter()
                .all(|p| close.mul_f64(0.9) <= *p && *p <= close.mul_f64(1.1))
        );
        assert!(pauses.iter().any(|p| *p < close) && pauses.iter().any(|p| *p > close));
    }
}
