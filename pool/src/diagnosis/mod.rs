//! Reset-cause diagnosis: which of the three production causes struck, and what to
//! change.
//!
//! Every lost connection goes through here. It is counted
//! (`steadypool_resets_total{cause, phase}`, see [`crate::metrics`]), it teaches the
//! pool about the path's idle limit ([`IdleLimit`]), and it is logged as a `warn`
//! event with the cause, the phase, how long the connection sat idle, its age, the
//! peer's address, and a hint that says what most likely happened and what to change:
//!
//! ```text
//! WARN connection reset pool=api conn=17 cause="peer_reset" phase="checkout"
//!   idle_secs=61.2 age_secs=600.4 peer=10.0.3.7:443 suppressed=0
//!   hint=reset (RST) after 61 s idle: an intermediary (load balancer, NAT, firewall) or
//!   the server's own idle timeout closes idle connections between 45 s and 61 s;
//!   set idle_timeout below 45 s
//! ```
//!
//! | what the pool saw | likely production cause | the hint says |
//! |---|---|---|
//! | FIN / RST found after idling | an idle-timeout conflict (LB, NAT, firewall, server) | the learned interval, and the `idle_timeout` to set |
//! | refused connects; busy connections reset; closes within a second of use | upstream crash, restart or exhaustion | check the upstream's logs, restarts, backlog |
//! | connect, keepalive or user timeouts | a silent black hole | which timeout fired, and where packets vanish |
//!
//! Identical warnings (same cause and phase) are rate limited to one per 10 s per
//! pool; the next one that goes out says how many it stands for (`suppressed`).

mod hints;
mod idle_limit;
mod throttle;

use std::fmt;
use std::time::Duration;

pub use self::hints::human;
pub use self::idle_limit::IdleLimit;
use self::idle_limit::{IdleLimitLearner, MIN_EVIDENCE_IDLE};
use self::throttle::WarnThrottle;
use crate::cause::{Phase, ResetCause};
use crate::clock::{CoarseDuration, CoarseInstant};
use crate::metrics::Recorder;
use crate::pool::Obituary;

/// Whether a connection that sat idle this long before its checkout says anything
/// about the path's idle limit when it comes back healthy. Shorter idle times say
/// nothing the pool can use, so the return path skips them without a lock.
pub(crate) fn teaches_idle_limit(idle: CoarseDuration) -> bool {
    const TEACHES_FROM: CoarseDuration = CoarseDuration::from_std(MIN_EVIDENCE_IDLE);
    idle >= TEACHES_FROM
}

/// One pool's diagnosis: the idle-limit learner and the warning throttle.
#[derive(Debug)]
pub(crate) struct Diagnosis {
    learner: IdleLimitLearner,
    throttle: WarnThrottle,
    enforcing: bool,
}

impl Diagnosis {
    /// Diagnosis for a pool with this `idle_timeout` that evicts by the learned limit
    /// when `learn_idle_limit` is set, and reaps every `reaper_interval`.
    pub(crate) fn new(
        idle_timeout: Option<Duration>,
        learn_idle_limit: bool,
        reaper_interval: Duration,
    ) -> Diagnosis {
        Diagnosis {
            learner: IdleLimitLearner::new(idle_timeout, learn_idle_limit, reaper_interval),
            throttle: WarnThrottle::default(),
            enforcing: learn_idle_limit,
        }
    }

    /// The idle time after which a connection is closed now: `idle_timeout`, or the
    /// learned limit when that is lower (and learning is on).
    pub(crate) fn evict_after(
        &self,
        now: CoarseInstant,
        recorder: &Recorder,
    ) -> Option<CoarseDuration> {
        self.learner.evict_after(now, recorder)
    }

    /// What is known of the path's idle limit (also published as gauges).
    pub(crate) fn idle_limit(&self, now: CoarseInstant, recorder: &Recorder) -> IdleLimit {
        self.learner.snapshot(now, recorder)
    }

    /// A connection that sat idle for `idle` before its checkout came back healthy.
    pub(crate) fn reused(&self, idle: Duration, now: CoarseInstant, recorder: &Recorder) {
        self.learner.reused(idle, now, recorder);
    }

    /// A connection was lost with `cause` in `phase`; `lost.idle` is how long it sat
    /// idle (for a connection lost in use: before that checkout). `detail` is what
    /// the manager or the server said, when known. The loss is counted when the
    /// connection's slot drops (see `pool::slot`), not here.
    pub(crate) fn reset(
        &self,
        pool: &str,
        recorder: &Recorder,
        cause: ResetCause,
        phase: Phase,
        lost: &Obituary,
        detail: Option<&str>,
    ) {
        let now = CoarseInstant::now();
        let reading = self.learner.reset(cause, lost.idle, now, recorder);
        let Some(suppressed) = self.throttle.admit(cause, phase, now) else {
            return;
        };
        let limit = self.learner.snapshot(now, recorder);
        let hint = hints::hint(cause, phase, lost.idle, reading, &limit, self.enforcing);
        tracing::warn!(
            pool = %pool,
            conn = lost.id,
            cause = cause.as_str(),
            phase = phase.as_str(),
            idle_secs = secs(lost.idle),
            age_secs = secs(lost.age),
            peer = %Peer(lost.peer),
            detail = detail.unwrap_or("none"),
            suppressed,
            hint = %hint,
            "connection reset",
        );
    }

    /// A new connection could not be opened.
    pub(crate) fn connect_failed(
        &self,
        pool: &str,
        recorder: &Recorder,
        cause: ResetCause,
        error: &dyn fmt::Display,
    ) {
        let now = CoarseInstant::now();
        recorder.reset(cause, Phase::Connect);
        let reading = self.learner.reset(cause, Duration::ZERO, now, recorder);
        let Some(suppressed) = self.throttle.admit(cause, Phase::Connect, now) else {
            return;
        };
        let limit = self.learner.snapshot(now, recorder);
        let hint = hints::hint(
            cause,
            Phase::Connect,
            Duration::ZERO,
            reading,
            &limit,
            self.enforcing,
        );
        tracing::warn!(
            pool = %pool,
            cause = cause.as_str(),
            phase = Phase::Connect.as_str(),
            error = %error,
            suppressed,
            hint = %hint,
            "connect failed",
        );
    }
}

/// A duration for a log field: seconds, rounded to the millisecond (`1.304`, not
/// `1.3040000379999999`).
pub(crate) fn secs(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

/// A peer address for a log field: the address, or `unknown` when the manager does
/// not expose the socket.
struct Peer(Option<std::net::SocketAddr>);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}
