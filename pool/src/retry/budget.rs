//! The pool's retry budget, and the seed each run's backoff is drawn from.
//!
//! A plain state machine: it counts requests and grants or refuses retries; what a
//! refusal means for a run is the run loop's business, and reporting it the pool's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

use super::policy::RetryPolicy;

/// How long the budget remembers requests and retries.
const BUDGET_WINDOW_SECS: u64 = 10;

/// The pool's retry budget: a token bucket whose deposits expire. Each request
/// deposits `ratio` of a token, each retry withdraws one, `floor` tokens are always
/// there; what was deposited or withdrawn more than 10 s ago no longer counts. So
/// retries <= ratio x recent requests + floor, at every moment.
#[derive(Debug)]
pub(crate) struct Budget {
    ratio: f64,
    floor: f64,
    started: Instant,
    window: Mutex<[Second; BUDGET_WINDOW_SECS as usize]>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Second {
    at: u64,
    requests: u64,
    retries: u64,
}

impl Budget {
    pub(crate) fn new(ratio: f64, floor: u32) -> Budget {
        Budget {
            ratio,
            floor: f64::from(floor),
            started: Instant::now(),
            window: Mutex::new([Second::default(); BUDGET_WINDOW_SECS as usize]),
        }
    }

    fn with_current<R>(&self, f: impl FnOnce(&mut [Second], usize, u64) -> R) -> R {
        // The slots are plain counters: a panic elsewhere cannot leave them
        // half-updated, so a poisoned lock is still sound.
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        // Seconds are counted from 1, so a never-used slot (at 0) is never current.
        let now = Instant::now()
            .saturating_duration_since(self.started)
            .as_secs()
            + 1;
        let index = (now % BUDGET_WINDOW_SECS) as usize;
        if window[index].at != now {
            window[index] = Second {
                at: now,
                ..Second::default()
            };
        }
        f(&mut window[..], index, now)
    }

    /// Counts a request (a `run` call).
    pub(crate) fn deposit(&self) {
        self.with_current(|window, index, _| window[index].requests += 1);
    }

    /// Takes one retry from the budget, if there is one.
    pub(crate) fn withdraw(&self) -> bool {
        self.with_current(|window, index, now| {
            let recent = window
                .iter()
                .filter(|s| s.at + BUDGET_WINDOW_SECS > now && s.at > 0);
            let (requests, retries) =
                recent.fold((0u64, 0u64), |(q, r), s| (q + s.requests, r + s.retries));
            let allowed = self.ratio * requests as f64 + self.floor;
            if (retries + 1) as f64 <= allowed {
                window[index].retries += 1;
                true
            } else {
                false
            }
        })
    }
}

/// A pool's retry state: the budget and the counter that gives each run its own
/// jitter sequence.
#[derive(Debug)]
pub(crate) struct RetryState {
    pub(crate) budget: Budget,
    runs: AtomicU64,
}

impl RetryState {
    pub(crate) fn new(policy: &RetryPolicy) -> RetryState {
        RetryState {
            budget: Budget::new(policy.budget_ratio, policy.budget_floor),
            runs: AtomicU64::new(0),
        }
    }

    pub(crate) fn next_seed(&self, policy: &RetryPolicy) -> u64 {
        match policy.jitter_seed {
            Some(seed) => {
                let run = self.runs.fetch_add(1, Ordering::Relaxed);
                seed ^ run.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            }
            // Only a seeded policy numbers its runs: a shared counter is a cache line
            // every run on every thread would otherwise write.
            None => fastrand::u64(..),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn runs_of_a_seeded_policy_get_different_but_reproducible_seeds() {
        let policy = RetryPolicy::default().jitter_seed(42);
        let seeds =
            |state: &RetryState| (0..4).map(|_| state.next_seed(&policy)).collect::<Vec<_>>();
        let first = seeds(&RetryState::new(&policy));
        assert_eq!(first, seeds(&RetryState::new(&policy)));
        let mut unique = first.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), first.len());
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_ratio_of_recent_requests_plus_floor() {
        let budget = Budget::new(0.5, 2);
        for _ in 0..10 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 7, "0.5 x 10 requests + 2");
        // Ten seconds later the old requests and retries no longer count.
        tokio::time::advance(Duration::from_secs(BUDGET_WINDOW_SECS)).await;
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 2, "only the floor is left");
    }

    #[tokio::test(start_paused = true)]
    async fn budget_counts_a_sliding_window() {
        let budget = Budget::new(1.0, 0);
        for _ in 0..4 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..4 {
            budget.deposit();
        }
        assert_eq!((0..100).filter(|_| budget.withdraw()).count(), 8);
        tokio::time::advance(Duration::from_secs(6)).await;
        // The first four requests aged out; the retries taken since still count.
        assert_eq!((0..100).filter(|_| budget.withdraw()).count(), 0);
    }
}
