//! From a path's idle limit to the pool settings that keep its connections clear of
//! it.

use std::time::Duration;

use serde::Serialize;
use steadypool::IdleLimit;
use steadypool::Keepalive;

use steadypool::human_duration as human;

/// How a path ends the connections that idled past its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ClosedBy {
    /// A clean close: a server's own idle timeout, or an L7 proxy's.
    Fin,
    /// A reset: a load balancer, NAT or firewall that dropped the flow.
    Rst,
    /// Nothing at all: the flow was forgotten and packets vanish (NAT, firewall).
    Silence,
}

impl ClosedBy {
    /// How the tool names it.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Fin => "FIN",
            ClosedBy::Rst => "RST",
            ClosedBy::Silence => "silence",
        }
    }
}

/// The settings to give a steadypool pool on a path, as the library recommends them
/// for what was learned about its idle limit
/// ([`IdleLimit::recommended_idle_timeout`], [`IdleLimit::recommended_keepalive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recommendation {
    /// The `idle_timeout` to set.
    pub(crate) idle_timeout: Duration,
    /// The keepalive timing to set.
    pub(crate) keepalive: Keepalive,
    /// How the path closes idle connections, when known.
    pub(crate) closed_by: Option<ClosedBy>,
}

impl Recommendation {
    /// The library's settings for `limit`, the `idle_timeout` rounded down to a value
    /// a person would type (100 ms steps, whole seconds from 10 s). `None` while no
    /// upper bound is known.
    pub(crate) fn for_limit(
        limit: IdleLimit,
        closed_by: Option<ClosedBy>,
    ) -> Option<Recommendation> {
        let timeout = limit.recommended_idle_timeout()?;
        let idle_timeout = if timeout >= Duration::from_secs(10) {
            Duration::from_secs(timeout.as_secs())
        } else {
            Duration::from_millis(timeout.as_millis() as u64 / 100 * 100)
                .max(Duration::from_millis(100))
        };
        Some(Recommendation {
            idle_timeout,
            keepalive: limit.recommended_keepalive()?,
            closed_by,
        })
    }

    /// The builder calls to paste, one per line.
    pub(crate) fn builder_lines(&self) -> Vec<String> {
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
    pub(crate) fn rationale(&self) -> String {
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
    pub(crate) fn summary(&self) -> RecommendationSummary {
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
pub(crate) struct RecommendationSummary {
    /// `idle_timeout`, in seconds.
    pub(crate) idle_timeout_secs: f64,
    /// Keepalive idle time, in seconds.
    pub(crate) keepalive_idle_secs: u64,
    /// Keepalive interval, in seconds.
    pub(crate) keepalive_interval_secs: u64,
    /// Keepalive probes.
    pub(crate) keepalive_count: u32,
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

    fn limit(lower: Option<u64>, upper: u64) -> IdleLimit {
        IdleLimit {
            lower: lower.map(Duration::from_millis),
            upper: Some(Duration::from_millis(upper)),
            evict_after: None,
        }
    }

    #[test]
    fn short_limits_get_short_timeouts_and_the_fastest_keepalive() {
        let r = Recommendation::for_limit(limit(None, 2050), Some(ClosedBy::Fin)).unwrap();
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
    fn the_timeout_is_the_librarys_rounded_down() {
        // The library takes the larger of the proven lower bound and 75 % of the
        // upper one.
        let r = Recommendation::for_limit(limit(Some(1720), 2000), Some(ClosedBy::Rst)).unwrap();
        assert_eq!(r.idle_timeout, Duration::from_millis(1700));
        let r = Recommendation::for_limit(limit(Some(40_000), 60_000), None).unwrap();
        assert_eq!(r.idle_timeout, Duration::from_secs(45));
        assert_eq!(Recommendation::for_limit(IdleLimit::default(), None), None);
    }

    #[test]
    fn long_limits_keep_steadypools_defaults_for_keepalive() {
        let nat = Recommendation::for_limit(limit(None, 350_000), Some(ClosedBy::Silence)).unwrap();
        assert_eq!(nat.idle_timeout, Duration::from_secs(262));
        assert_eq!(nat.keepalive, Keepalive::default());
        assert!(
            nat.builder_lines()[1].contains("Duration::from_secs(10)"),
            "{:?}",
            nat.builder_lines()
        );
    }
}
