//! Learning the path's idle limit from the connections the pool loses and reuses.
//!
//! Every lost connection is a measurement (see [`IdleLimit`] and the learner's own
//! docs); this module only learns, and returns what it learned. The observation
//! module ([`crate::observe`]) turns a lesson into the idle-limit gauges and into the
//! hint on each reset warning.

mod idle_limit;

pub use self::idle_limit::IdleLimit;
pub(crate) use self::idle_limit::{IdleLimitLearner, Lesson, MIN_EVIDENCE_IDLE, Reading};
use crate::clock::CoarseDuration;

/// Whether a connection that sat idle this long before its checkout says anything
/// about the path's idle limit when it comes back healthy. Shorter idle times say
/// nothing the pool can use, so the return path skips them without a lock.
pub(crate) fn teaches_idle_limit(idle: CoarseDuration) -> bool {
    const TEACHES_FROM: CoarseDuration = CoarseDuration::from_std(MIN_EVIDENCE_IDLE);
    idle >= TEACHES_FROM
}
