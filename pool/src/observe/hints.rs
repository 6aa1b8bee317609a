//! The hint on each reset warning: what most likely happened, and what to change.
//!
//! The text follows the three production causes: an idle-timeout conflict with a
//! middlebox (a close found after idling, with the learned interval and the
//! `idle_timeout` to set), an upstream crash or exhaustion (refused connects, busy
//! connections reset), and a silent black hole (timeouts).

use std::time::Duration;

use crate::cause::{Phase, ResetCause};
use crate::diagnosis::{IdleLimit, MIN_EVIDENCE_IDLE, Reading};

/// A duration the way an operator reads it: "61 s", "2.4 s", "350 ms". The pool's
/// hints and the `steadypool` tool print durations with it, so both read alike.
///
/// ```
/// use std::time::Duration;
/// use steadypool::human_duration as human;
///
/// assert_eq!(human(Duration::from_millis(61_400)), "61 s");
/// assert_eq!(human(Duration::from_millis(2_449)), "2.4 s");
/// assert_eq!(human(Duration::from_millis(350)), "350 ms");
/// ```
pub fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 10.0 {
        format!("{secs:.0} s")
    } else if secs >= 1.0 {
        format!("{secs:.1} s")
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Like [`human`], but never above `d`: for values to stay below.
fn human_floor(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 10.0 {
        format!("{} s", d.as_secs())
    } else if secs >= 1.0 {
        format!("{:.1} s", (secs * 10.0).floor() / 10.0)
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn closed_how(cause: ResetCause) -> &'static str {
    match cause {
        ResetCause::PeerClosed => "closed by the peer (FIN)",
        ResetCause::BrokenPipe => "broken pipe (EPIPE)",
        _ => "reset (RST)",
    }
}

/// The hint for a connection lost with `cause` in `phase` after `idle` (for one
/// lost in use: the idle time before that checkout), given what the reset said about
/// the path and what is known of its idle limit. `enforcing`: the pool evicts by the
/// learned limit.
pub(crate) fn hint(
    cause: ResetCause,
    phase: Phase,
    idle: Duration,
    reading: Reading,
    limit: &IdleLimit,
    enforcing: bool,
) -> String {
    match (reading, cause) {
        (Reading::AfterIdle, _) => after_idle(cause, idle, limit, enforcing),
        (Reading::UpstreamFailure, ResetCause::Refused) => {
            "connect refused: upstream down or its listen backlog full; check that it runs and keeps up with accepting".to_owned()
        }
        // A lone close of a busy connection is no evidence either way, but says the
        // same about the upstream as a burst of them.
        (Reading::UpstreamFailure, _)
        | (
            Reading::Unrelated,
            ResetCause::PeerClosed | ResetCause::PeerReset | ResetCause::BrokenPipe,
        ) => {
            let when = if phase == Phase::InUse && idle < MIN_EVIDENCE_IDLE {
                "while in use".to_owned()
            } else if idle < MIN_EVIDENCE_IDLE {
                format!("only {} after its last use", human(idle))
            } else {
                format!(
                    "after {} idle, together with refused connects or busy connections failing",
                    human(idle)
                )
            };
            format!(
                "{} {when}: the upstream crashed, restarted or shed load (max_connections, OOM kill), not an idle timeout; check its logs and restarts",
                closed_how(cause)
            )
        }
        (Reading::Unrelated, cause) => unrelated(cause, idle),
    }
}

fn after_idle(cause: ResetCause, idle: Duration, limit: &IdleLimit, enforcing: bool) -> String {
    let range = match (limit.lower, limit.upper) {
        // Two bounds that read the same at this precision would say "between 1.5 s
        // and 1.5 s".
        (Some(lower), Some(upper)) if human(lower) == human(upper) => {
            format!("at about {}", human(upper))
        }
        (Some(lower), Some(upper)) => format!("between {} and {}", human(lower), human(upper)),
        (None, Some(upper)) => format!("after at most {}", human(upper)),
        (_, None) => format!("after at most {}", human(idle)),
    };
    let below = limit.recommended_idle_timeout().unwrap_or(idle);
    let mut text = format!(
        "{} after {} idle: an intermediary (load balancer, NAT, firewall) or the server's own idle timeout closes idle connections {range}; set idle_timeout below {}",
        closed_how(cause),
        human(idle),
        human_floor(below),
    );
    if enforcing && let Some(after) = limit.evict_after {
        text.push_str(&format!(
            " (meanwhile the pool closes connections idle for {})",
            human_floor(after)
        ));
    }
    text
}

/// The hint on the event for an idle timeout the upstream announced: how the pool
/// keeps it, and whether `idle_timeout` should change, given the pool's own idle
/// `limit`.
pub(crate) fn announced(announced: Duration, limit: &IdleLimit) -> String {
    let kept = format!(
        "the upstream closes connections idle for {}, as it announced; each is closed before that by its manager (counted as server_limit evictions, not resets)",
        human(announced)
    );
    match limit.evict_after {
        Some(after) if after < announced => format!(
            "{kept}, or by the pool's own idle limit ({}), which is shorter",
            human_floor(after)
        ),
        Some(after) => format!(
            "{kept}; idle_timeout ({}) is longer: set it below {} to have the pool close them itself and keep min_idle connections it can use",
            human(after),
            human_floor(announced)
        ),
        None => format!(
            "{kept}; idle_timeout is not set: set it below {} to have the pool close them itself and keep min_idle connections it can use",
            human_floor(announced)
        ),
    }
}

fn unrelated(cause: ResetCause, idle: Duration) -> String {
    match cause {
        ResetCause::ConnectTimeout => "no connection within connect_timeout: a firewall drops the SYNs (black hole), the host is down, or the upstream's accept backlog is full".to_owned(),
        ResetCause::KeepaliveTimeout => "peer unreachable: a firewall or NAT dropped this flow, or the host died (keepalive probes went unanswered); keep the keepalive idle time below the path's state timeout".to_owned(),
        ResetCause::UserTimeout => "black hole mid-request: sent data went unacknowledged for user_timeout (a firewall or NAT dropped the flow, or the host vanished)".to_owned(),
        ResetCause::UnexpectedData => "bytes arrived on an idle connection: a reply read late or never (a cancelled request left its response behind: protocol desync), or a notice the server sent before closing".to_owned(),
        ResetCause::PingFailed => format!(
            "the socket looked open but the ping failed after {} idle: the server is stuck or overloaded, or a middlebox dropped the flow silently; check the server and ping_timeout",
            human(idle)
        ),
        _ => "an unclassified failure; the error says more".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(Duration::from_millis(61_400)), "61 s");
        assert_eq!(human(Duration::from_millis(2_449)), "2.4 s");
        assert_eq!(human(Duration::from_millis(350)), "350 ms");
        assert_eq!(human_floor(Duration::from_millis(45_750)), "45 s");
        assert_eq!(human_floor(Duration::from_millis(1_999)), "1.9 s");
    }

    #[test]
    fn a_close_after_idle_names_the_interval_and_the_fix() {
        let limit = IdleLimit {
            lower: Some(45 * S),
            upper: Some(61 * S),
            evict_after: Some(Duration::from_millis(45_750)),
        };
        let text = hint(
            ResetCause::PeerReset,
            Phase::Checkout,
            61 * S,
            Reading::AfterIdle,
            &limit,
            false,
        );
        assert!(text.contains("after 61 s idle"), "{text}");
        assert!(
            text.contains("closes idle connections between 45 s and 61 s"),
            "{text}"
        );
        assert!(text.contains("set idle_timeout below 45 s"), "{text}");
        assert!(!text.contains("meanwhile"), "{text}");
    }

    #[test]
    fn bounds_that_read_alike_are_not_given_as_an_interval() {
        let limit = IdleLimit {
            lower: Some(Duration::from_millis(1_460)),
            upper: Some(Duration::from_millis(1_540)),
            evict_after: Some(Duration::from_millis(1_400)),
        };
        let text = hint(
            ResetCause::PeerReset,
            Phase::Checkout,
            Duration::from_millis(1_540),
            Reading::AfterIdle,
            &limit,
            false,
        );
        assert!(!text.contains("between 1.5 s and 1.5 s"), "{text}");
        assert!(
            text.contains("closes idle connections at about 1.5 s"),
            "{text}"
        );
    }

    #[test]
    fn an_announced_idle_timeout_says_who_closes_first() {
        let pooled = |evict_after| IdleLimit {
            evict_after,
            ..IdleLimit::default()
        };
        let text = announced(5 * S, &pooled(Some(90 * S)));
        assert!(
            text.contains("closes connections idle for 5.0 s, as it announced"),
            "{text}"
        );
        assert!(
            text.contains("server_limit evictions, not resets"),
            "{text}"
        );
        assert!(
            text.contains("idle_timeout (90 s) is longer: set it below 5.0 s"),
            "{text}"
        );
        let text = announced(5 * S, &pooled(None));
        assert!(
            text.contains("idle_timeout is not set: set it below 5.0 s"),
            "{text}"
        );
        let text = announced(60 * S, &pooled(Some(30 * S)));
        assert!(
            text.contains("by the pool's own idle limit (30 s), which is shorter"),
            "{text}"
        );
        assert!(!text.contains("set it below"), "{text}");
    }

    #[test]
    fn every_cause_gets_a_hint_that_says_what_to_look_at() {
        let none = IdleLimit::default();
        let refused = hint(
            ResetCause::Refused,
            Phase::Connect,
            Duration::ZERO,
            Reading::UpstreamFailure,
            &none,
            true,
        );
        assert!(refused.contains("upstream down or its listen backlog full"));
        let crash = hint(
            ResetCause::PeerReset,
            Phase::InUse,
            Duration::ZERO,
            Reading::UpstreamFailure,
            &none,
            true,
        );
        assert!(crash.contains("while in use") && crash.contains("crashed"));
        let keepalive = hint(
            ResetCause::KeepaliveTimeout,
            Phase::Idle,
            20 * S,
            Reading::Unrelated,
            &none,
            true,
        );
        assert!(keepalive.contains("peer unreachable: a firewall or NAT dropped this flow"));
        for cause in ResetCause::ALL {
            for reading in [
                Reading::AfterIdle,
                Reading::UpstreamFailure,
                Reading::Unrelated,
            ] {
                assert!(!hint(cause, Phase::Idle, S, reading, &none, true).is_empty());
            }
        }
    }
}
