//! What the probe found: the text a person reads, and the same as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use steadypool::human_duration as human;

use super::ProbeProtocol;
use crate::recommend::{ClosedBy, Recommendation, RecommendationSummary};

/// A connection that died, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Death {
    /// After how long idle, in seconds.
    pub(crate) after_secs: f64,
    /// How the path ended it.
    pub(crate) closed_by: ClosedBy,
    /// Whether the path closed it by itself (true) or it was found dead when
    /// checked (false).
    pub(crate) unprompted: bool,
}

/// What the probe found (what `--json` prints).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProbeReport {
    /// The server probed.
    pub(crate) target: String,
    /// What it speaks.
    pub(crate) protocol: ProbeProtocol,
    /// How long the probe took, in seconds.
    pub(crate) elapsed_secs: f64,
    /// The idle limit the server announced (HTTP's `Keep-Alive: timeout=N`), in
    /// seconds; the probe verified it instead of searching. `None` when it said none.
    pub(crate) announced_keep_alive_secs: Option<f64>,
    /// How much later than announced the server closed idle connections, in seconds
    /// (`limit_secs` less `announced_keep_alive_secs`; Node.js: 1). Negative when it
    /// closed sooner.
    pub(crate) later_than_announced_secs: Option<f64>,
    /// The longest idle time after which a connection still answered, below the
    /// limit, in seconds.
    pub(crate) alive_after_secs: Option<f64>,
    /// The shortest idle time after which a connection died: the path's idle limit,
    /// in seconds. `None` when none died.
    pub(crate) limit_secs: Option<f64>,
    /// How the connection that died first was ended.
    pub(crate) closed_by: Option<ClosedBy>,
    /// The longest idle time tried, in seconds.
    pub(crate) searched_up_to_secs: f64,
    /// Every connection that died.
    pub(crate) deaths: Vec<Death>,
    /// The idle times after which a checked connection answered, in seconds.
    pub(crate) alive: Vec<f64>,
    /// Rounds of connections.
    pub(crate) rounds: u32,
    /// Connections opened.
    pub(crate) connections: u32,
    /// The settings recommended, when a limit was found.
    pub(crate) recommended: Option<RecommendationSummary>,
    #[serde(skip)]
    pub(super) recommendation: Option<Recommendation>,
}

impl ProbeReport {
    /// The result as text.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        let secs = |s: f64| human(Duration::from_secs_f64(s.max(0.0)));
        if let Some(announced) = self.announced_keep_alive_secs {
            let _ = writeln!(
                out,
                "{} announces Keep-Alive: timeout={announced}: it says it closes connections idle {}.",
                self.target,
                secs(announced)
            );
            if let Some(later) = self.later_than_announced_secs {
                let when = if later.abs() < 0.1 {
                    "when it says".to_owned()
                } else if later > 0.0 {
                    format!("{} later than it says", secs(later))
                } else {
                    format!("{} sooner than it says", secs(-later))
                };
                let _ = writeln!(out, "Measured: it closes them {when}.");
            }
        }
        let (Some(limit), Some(by)) = (self.limit_secs, self.closed_by) else {
            let _ = writeln!(
                out,
                "{} ({}): no idle limit found: connections idle up to {} stayed open \
                 ({} connections in {}).",
                self.target,
                self.protocol,
                secs(self.searched_up_to_secs),
                self.connections,
                secs(self.elapsed_secs)
            );
            let _ = writeln!(
                out,
                "A longer limit may exist: run with a larger --max-time to look further. \
                 steadypool's defaults (idle_timeout 45 s, keepalive 10 s / 3 s / 3) need no change for idle times up to {}.",
                secs(self.searched_up_to_secs)
            );
            return out;
        };
        let who = match by {
            ClosedBy::Fin => "closed with FIN (by the server, or a proxy in front of it)",
            ClosedBy::Rst => "reset (RST) by the server or a middlebox",
            ClosedBy::Silence => {
                "silently dropped (a NAT or firewall forgot the flow: no answer, no reset)"
            }
        };
        let _ = writeln!(
            out,
            "{} ({}): idle connections are {who} after {}.",
            self.target,
            self.protocol,
            secs(limit)
        );
        let unprompted: Vec<f64> = self
            .deaths
            .iter()
            .filter(|d| d.unprompted)
            .map(|d| d.after_secs)
            .collect();
        if unprompted.len() > 1 {
            let latest = unprompted.iter().copied().fold(f64::MIN, f64::max);
            // Times that print alike are one time to the reader.
            let range = if secs(limit) == secs(latest) {
                secs(limit)
            } else {
                format!("{} to {}", secs(limit), secs(latest))
            };
            let _ = writeln!(
                out,
                "  {} connections were closed unprompted, after {range} idle.",
                unprompted.len(),
            );
        }
        if let Some(alive) = self.alive_after_secs {
            let _ = writeln!(out, "  Connections idle {} still answered.", secs(alive));
        }
        let _ = writeln!(
            out,
            "  ({} connections in {} rounds, {}.)",
            self.connections,
            self.rounds,
            secs(self.elapsed_secs)
        );
        if let Some(recommendation) = self.recommendation {
            if self.announced_keep_alive_secs.is_some() {
                let _ = writeln!(
                    out,
                    "steadypool's HTTP driver reads the Keep-Alive header itself and closes each \
                     connection before the announced timeout (less HttpManager::keep_alive_margin); \
                     the idle_timeout below covers answers that do not announce it."
                );
            }
            let _ = writeln!(out, "Recommended steadypool settings for this path:");
            let _ = writeln!(out, "    Pool::builder(manager)");
            for line in recommendation.builder_lines() {
                let _ = writeln!(out, "        {line}");
            }
            let _ = writeln!(out, "  {}", recommendation.rationale());
        }
        out
    }

    /// The report as pretty-printed JSON.
    ///
    /// # Errors
    /// Only if serialization fails, which the report's plain fields rule out.
    pub(crate) fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

impl crate::outcome::Summary for ProbeReport {
    fn to_json(&self) -> Result<String, serde_json::Error> {
        ProbeReport::to_json(self)
    }

    fn text(&self) -> String {
        ProbeReport::text(self)
    }
}
