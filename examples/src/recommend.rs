//! From a path's idle limit to the pool settings that keep its connections clear of
//! it.

use std::time::Duration;

use serde::Serialize;
use steadypool::IdleLimit;
use steadypool::Keepalive;

use crate::console::human;

/// How a path ends the connections that idled past its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    /// A clean close: a server's own idle timeout, or an L7 proxy's.
    Fin,
    /// A reset: a load balancer, NAT or firewall that dropped the flow.
    Rst,
    /// Nothing at all: the flow was forgotten and packets vanish (NAT, firewall).
    Silence,
}

impl ClosedBy {
    /// How the examples name it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Fin => "FIN",
            ClosedBy::Rst => "RST",
            ClosedBy::Silence => "silence",
        }
    }
}

/// The settings to give a steadypool pool on a path with a known idle limit.
///
/// ```
/// use std::time::Duration;
/// use steadypool_examples::recommend::Recommendation;
///
/// let alb = Recommendation::for_limit(Duration::from_secs(60), None, None);
/// assert_eq!(alb.idle_timeout, Duration::from_secs(45));
/// assert_eq!(alb.keepalive.idle, Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recommendation {
    /// The `idle_timeout` to set.
    pub idle_timeout: Duration,
    /// The keepalive timing to set.
    pub keepalive: Keepalive,
    /// How the path closes idle connections, when known.
    pub closed_by: Option<ClosedBy>,
}

/// The longest keepalive idle time recommended: steadypool's default.
const KEEPALIVE_IDLE_MAX: Duration = Duration::from_secs(10);
/// The longest keepalive interval recommended: steadypool's default.
const KEEPALIVE_INTERVAL_MAX: Duration = Duration::from_secs(3);
const KEEPALIVE_COUNT: u32 = 3;

impl Recommendation {
    /// Settings for a path where a connection died after sitting idle for `upper`,
    /// and, if known, one idle for `lower` was still fine.
    ///
    /// `idle_timeout` is 75 % of `upper` (the share steadypool's own learner keeps
    /// to, [`IdleLimit::recommended_idle_timeout`]), but never above `lower`: a dead
    /// connection is often *found* well after the path closed it, so `upper` can lie
    /// far past the real limit, while `lower` is proven harmless. It is rounded down to
    /// 100 ms (whole seconds from 10 s). Keepalive starts probing at half of it (whole
    /// seconds, 1 s to 10 s), so a NAT or L4 load balancer that counts keepalive as
    /// traffic never sees a pooled connection idle that long.
    pub fn for_limit(
        upper: Duration,
        lower: Option<Duration>,
        closed_by: Option<ClosedBy>,
    ) -> Recommendation {
        let share = IdleLimit {
            lower: None,
            upper: Some(upper),
            evict_after: None,
        }
        .recommended_idle_timeout()
        .unwrap_or(upper);
        let safe = lower.map_or(share, |lower| share.min(lower));
        let idle_timeout = if safe >= Duration::from_secs(10) {
            Duration::from_secs(safe.as_secs())
        } else {
            Duration::from_millis(safe.as_millis() as u64 / 100 * 100)
                .max(Duration::from_millis(100))
        };
        let keepalive_idle =
            Duration::from_secs((idle_timeout.as_secs() / 2).max(1)).min(KEEPALIVE_IDLE_MAX);
        let keepalive_interval =
            Duration::from_secs((keepalive_idle.as_secs() / 3).max(1)).min(KEEPALIVE_INTERVAL_MAX);
        Recommendation {
            idle_timeout,
            keepalive: Keepalive::new(keepalive_idle, keepalive_interval, KEEPALIVE_COUNT),
            closed_by,
        }
    }

    /// The builder calls to paste, one per line.
    pub fn builder_lines(&self) -> Vec<String> {
        vec![
            format!(".idle_timeout(Some({}))", rust_duration(self.idle_timeout)),
            format!(
                ".keepalive(Some(Keepalive::new({}, {}, {})))",
                rust_duration(self.keepalive.idle),
                rust_duration(self.keepalive.interval),
                self.keepalive.count
            ),
        ]
    }

    /// Why these values, in a sentence or two.
    pub fn rationale(&self) -> String {
        let idle = format!(
            "idle_timeout {} closes pooled connections well before the path does",
            human(self.idle_timeout)
        );
        let keepalive = format!(
            "keepalive every {} after {} idle",
            human(self.keepalive.interval),
            human(self.keepalive.idle)
        );
        match self.closed_by {
            Some(ClosedBy::Fin) => format!(
                "{idle}. The path closes with FIN, as a server or an L7 proxy does: their idle \
                 timers ignore TCP keepalive, so the idle_timeout is what prevents the errors; \
                 {keepalive} still finds dead peers fast."
            ),
            Some(ClosedBy::Rst | ClosedBy::Silence) => format!(
                "{idle}. The path drops the flow ({}), as a NAT, firewall or L4 load balancer \
                 does: {keepalive} keeps such flows alive, and finds dead ones within {}.",
                self.closed_by.map_or("", ClosedBy::as_str),
                human(self.keepalive.detection_time())
            ),
            None => format!("{idle}; {keepalive} finds dead peers fast."),
        }
    }

    /// The settings as JSON-ready numbers.
    pub fn summary(&self) -> RecommendationSummary {
        RecommendationSummary {
            idle_timeout_secs: self.idle_timeout.as_secs_f64(),
            keepalive_idle_secs: self.keepalive.idle.as_secs(),
            keepalive_interval_secs: self.keepalive.interval.as_secs(),
            keepalive_count: self.keepalive.count,
        }
    }
}

/// [`Recommendation`] for `--json` output.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RecommendationSummary {
    /// `idle_timeout`, in seconds.
    pub idle_timeout_secs: f64,
    /// Keepalive idle time, in seconds.
    pub keepalive_idle_secs: u64,
    /// Keepalive interval, in seconds.
    pub keepalive_interval_secs: u64,
    /// Keepalive probes.
    pub keepalive_count: u32,
}

fn rust_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("Duration::from_secs({})", d.as_secs())
    } else {
        format!("Duration::from_millis({})", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_limits_get_short_timeouts_and_the_fastest_keepalive() {
        let r = Recommendation::for_limit(Duration::from_millis(2050), None, Some(ClosedBy::Fin));
        assert_eq!(r.idle_timeout, Duration::from_millis(1500));
        assert_eq!(
            r.keepalive,
            Keepalive::new(Duration::from_secs(1), Duration::from_secs(1), 3)
        );
        assert_eq!(
            r.builder_lines()[0],
            ".idle_timeout(Some(Duration::from_millis(1500)))"
        );
        assert!(r.rationale().contains("FIN"));
    }

    #[test]
    fn a_loose_upper_bound_gives_way_to_the_proven_lower_one() {
        // Found dead only 2.9 s after its last use, on a path that closes at 2 s:
        // 75 % of 2.9 s would be past the limit, 1.72 s idle was proven fine.
        let r = Recommendation::for_limit(
            Duration::from_millis(2900),
            Some(Duration::from_millis(1720)),
            Some(ClosedBy::Rst),
        );
        assert_eq!(r.idle_timeout, Duration::from_millis(1700));
        // A narrow interval leaves 75 % of the upper bound in force.
        let r =
            Recommendation::for_limit(Duration::from_secs(60), Some(Duration::from_secs(58)), None);
        assert_eq!(r.idle_timeout, Duration::from_secs(45));
    }

    #[test]
    fn long_limits_keep_steadypools_defaults_for_keepalive() {
        let nat =
            Recommendation::for_limit(Duration::from_secs(350), None, Some(ClosedBy::Silence));
        assert_eq!(nat.idle_timeout, Duration::from_secs(262));
        assert_eq!(nat.keepalive, Keepalive::default());
        assert!(
            nat.builder_lines()[1].contains("Duration::from_secs(10)"),
            "{:?}",
            nat.builder_lines()
        );
    }
}
