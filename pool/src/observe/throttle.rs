//! Rate limiting of repeated identical warnings.
//!
//! When an upstream goes down, every connection and every connect fails with the
//! same cause within a second; one warning per failure would bury the log (and cost
//! more than the failures). The first warning of a kind (cause and phase) goes out,
//! the next ones within [`WARN_EVERY`] are only counted, and the first one after that
//! carries the count of those it stood for. The metrics still count every one. The
//! same throttle holds back news that can flap (an idle limit announced by servers
//! that disagree), keyed by the news' kind.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use crate::cause::{Phase, ResetCause};
use crate::clock::CoarseInstant;

/// At most one warning per cause and phase in this time.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Kind {
    last_warned: CoarseInstant,
    suppressed: u64,
}

/// Decides which warnings go out, by kind: a reset's cause and phase unless told
/// otherwise. One per pool.
#[derive(Debug)]
pub(crate) struct WarnThrottle<K = (ResetCause, Phase)> {
    kinds: Mutex<HashMap<K, Kind>>,
}

impl<K> Default for WarnThrottle<K> {
    fn default() -> Self {
        WarnThrottle {
            kinds: Mutex::new(HashMap::new()),
        }
    }
}

impl WarnThrottle {
    /// `Some(n)` when a warning of this kind may go out now, `n` being the number of
    /// identical ones held back since the last; `None` when it must be held back.
    pub(crate) fn admit(&self, cause: ResetCause, phase: Phase, now: CoarseInstant) -> Option<u64> {
        self.admit_kind((cause, phase), now)
    }
}

impl<K: Hash + Eq> WarnThrottle<K> {
    /// [`WarnThrottle::admit`] for an event of kind `kind`.
    pub(crate) fn admit_kind(&self, kind: K, now: CoarseInstant) -> Option<u64> {
        let mut kinds = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match kinds.get_mut(&kind) {
            Some(seen) if now.saturating_duration_since(seen.last_warned) < WARN_EVERY => {
                seen.suppressed += 1;
                None
            }
            Some(seen) => {
                seen.last_warned = now;
                Some(std::mem::take(&mut seen.suppressed))
            }
            None => {
                kinds.insert(
                    kind,
                    Kind {
                        last_warned: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_held_back_and_counted_in_the_next_warning() {
        let throttle = WarnThrottle::default();
        let t = CoarseInstant::now();
        let refused = (ResetCause::Refused, Phase::Connect);
        assert_eq!(throttle.admit(refused.0, refused.1, t), Some(0));
        for i in 1..=5 {
            assert_eq!(
                throttle.admit(refused.0, refused.1, t + i * Duration::from_millis(10)),
                None
            );
        }
        // another kind is not held back by the first
        assert_eq!(
            throttle.admit(ResetCause::PeerReset, Phase::InUse, t),
            Some(0)
        );
        assert_eq!(
            throttle.admit(refused.0, refused.1, t + WARN_EVERY),
            Some(5)
        );
        assert_eq!(throttle.admit(refused.0, refused.1, t + WARN_EVERY), None);
    }
}
