//! Rate limiting of repeated identical warnings.
//!
//! When an upstream goes down, every connection and every connect fails with the
//! same cause within a second; one warning per failure would bury the log (and cost
//! more than the failures). The first warning of a kind (cause and phase) goes out,
//! the next ones within [`WARN_EVERY`] are only counted, and the first one after that
//! carries the count of those it stood for. The metrics still count every one.

use std::collections::HashMap;
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

/// Decides which warnings go out. One per pool.
#[derive(Debug, Default)]
pub(crate) struct WarnThrottle {
    kinds: Mutex<HashMap<(ResetCause, Phase), Kind>>,
}

impl WarnThrottle {
    /// `Some(n)` when a warning of this kind may go out now, `n` being the number of
    /// identical ones held back since the last; `None` when it must be held back.
    pub(crate) fn admit(&self, cause: ResetCause, phase: Phase, now: CoarseInstant) -> Option<u64> {
        let mut kinds = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match kinds.get_mut(&(cause, phase)) {
            Some(kind) if now.saturating_duration_since(kind.last_warned) < WARN_EVERY => {
                kind.suppressed += 1;
                None
            }
            Some(kind) => {
                kind.last_warned = now;
                Some(std::mem::take(&mut kind.suppressed))
            }
            None => {
                kinds.insert(
                    (cause, phase),
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
