//! The demo's result as a table for a person to read.

use std::fmt::Write as _;
use std::time::Duration;

use steadypool::human_duration as human;
use steadypool::{Eviction, Phase, ResetCause};

use super::report::{ChaosSummary, HttpSummary, PoolReport, Report};

/// A column of the table: one value per pool.
struct Row {
    label: String,
    cells: Vec<String>,
}

const LABEL_WIDTH: usize = 38;
const CELL_WIDTH: usize = 14;

fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn secs(s: f64) -> String {
    human(Duration::from_secs_f64(s))
}

fn http_text(http: &HttpSummary) -> String {
    let mut parts = vec![match http.announced_keep_alive_secs {
        Some(timeout) => format!("announces Keep-Alive: timeout={timeout}"),
        None => "announces no Keep-Alive timeout".to_owned(),
    }];
    if let Some(node) = http.node_keep_alive_timeout_secs {
        parts.push(format!(
            "Node.js closes idle connections about a second after its keepAliveTimeout of {}",
            secs(node)
        ));
    }
    if let Some([from, to]) = http.request_gap_secs {
        parts.push(format!(
            "each worker pauses {} to {} after a request, around that close",
            secs(from),
            secs(to)
        ));
    }
    parts.join("; ")
}

impl Report {
    /// The report as the table the demo prints.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.headline());
        let _ = writeln!(out, "faults: {}", self.fault_text());
        if let Some(http) = &self.http {
            let _ = writeln!(out, "server: {}", http_text(http));
        }
        let _ = writeln!(out);
        let mut rows = vec![Row {
            label: String::new(),
            cells: self.pools.iter().map(|p| p.name.clone()).collect(),
        }];
        let per_pool = |label: &str, f: &dyn Fn(&PoolReport) -> String| Row {
            label: label.to_owned(),
            cells: self.pools.iter().map(f).collect(),
        };
        rows.push(per_pool("requests", &|p| count(p.requests)));
        rows.push(per_pool("failures seen by the application", &|p| {
            count(p.failures)
        }));
        rows.push(per_pool("retries", &|p| count(p.retries)));
        rows.push(per_pool("connections lost (resets)", &|p| {
            count(p.resets.iter().map(|r| r.count).sum())
        }));
        let mut kinds: Vec<(&str, &str)> = Vec::new();
        for phase in Phase::ALL {
            for cause in ResetCause::ALL {
                let key = (cause.as_str(), phase.as_str());
                let seen = self.pools.iter().any(|p| {
                    p.resets
                        .iter()
                        .any(|r| (r.cause, r.phase) == key && r.count > 0)
                });
                if seen {
                    kinds.push(key);
                }
            }
        }
        for (cause, phase) in kinds {
            rows.push(per_pool(&format!("  {cause} · {phase}"), &|p| {
                p.resets
                    .iter()
                    .find(|r| (r.cause, r.phase) == (cause, phase))
                    .map_or("-".to_owned(), |r| count(r.count))
            }));
        }
        if self.pools.iter().any(|p| p.closed_idle > 0) {
            rows.push(per_pool(
                "idle connections closed by the pool",
                &|p| match p.closed_idle {
                    0 => "-".to_owned(),
                    n => count(n),
                },
            ));
        }
        let mut reasons: Vec<&String> = self
            .pools
            .iter()
            .flat_map(|p| p.evictions.keys())
            .filter(|reason| reason.as_str() != Eviction::IdleExpired.as_str())
            .collect();
        reasons.sort();
        reasons.dedup();
        for reason in reasons {
            rows.push(per_pool(&format!("  closed by the pool: {reason}"), &|p| {
                p.evictions
                    .get(reason)
                    .map_or("-".to_owned(), |n| count(*n))
            }));
        }
        rows.push(per_pool("latency p50", &|p| millis(p.latency_ms.p50)));
        rows.push(per_pool("latency p99", &|p| millis(p.latency_ms.p99)));
        rows.push(per_pool("latency max", &|p| millis(p.latency_ms.max)));
        // Over HTTP a proxy that only adds latency ends nothing: no rows for it.
        let proxy_ended = self
            .pools
            .iter()
            .any(|p| p.chaos.is_some_and(|c| c.ended_by_faults > 0));
        if self.pools.iter().any(|p| p.chaos.is_some()) && (self.http.is_none() || proxy_ended) {
            rows.push(per_pool("ended by its chaos proxy", &|p| {
                p.chaos.map_or("-".to_owned(), |c| count(c.ended_by_faults))
            }));
            let chaos_row = |label: &str, f: fn(&ChaosSummary) -> u64| {
                self.pools
                    .iter()
                    .any(|p| p.chaos.is_some_and(|c| f(&c) > 0))
                    .then(|| per_pool(label, &|p| p.chaos.map_or("-".to_owned(), |c| count(f(&c)))))
            };
            rows.extend(chaos_row("  idle timeout (RST)", |c| c.idle_rst));
            rows.extend(chaos_row("  idle timeout (FIN)", |c| c.idle_fin));
            rows.extend(chaos_row("  reset mid-request", |c| c.reset_random));
            rows.extend(chaos_row("  upstream crash", |c| c.crash_resets));
            rows.extend(chaos_row("  other", |c| c.other_resets));
        }
        for row in rows {
            let _ = write!(out, "{:<LABEL_WIDTH$}", row.label);
            for cell in row.cells {
                let _ = write!(out, "{cell:>CELL_WIDTH$}");
            }
            let _ = writeln!(out);
        }
        self.write_failures(&mut out);
        self.write_learned(&mut out);
        out
    }

    fn headline(&self) -> String {
        let ran = if self.interrupted {
            format!(
                "interrupted after {} of {}",
                secs(self.ran_secs),
                secs(self.planned_secs)
            )
        } else {
            secs(self.ran_secs)
        };
        format!(
            "steadypool demo: {ran}, {} workers per pool, seed {}, {} ({})",
            self.concurrency, self.seed, self.target, self.protocol
        )
    }

    fn fault_text(&self) -> String {
        let f = &self.faults;
        let mut parts = Vec::new();
        if let (Some(after), Some(with)) = (f.lb_idle_timeout_secs, f.lb_idle_close) {
            parts.push(format!(
                "load balancer idle timeout {} ({})",
                secs(after),
                with.as_str()
            ));
        }
        if let Some(rate) = f.reset_rate {
            parts.push(format!("{}% of requests reset", rate * 100.0));
        }
        if let Some(every) = f.crash_every_secs {
            parts.push(format!("upstream crash every ~{}", secs(every)));
        }
        if f.names.iter().any(|n| n == "latency") {
            parts.push("added latency".to_owned());
        }
        if f.names.iter().any(|n| n == "gaps") {
            parts.push("idle gaps in the workload".to_owned());
        }
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }

    fn write_failures(&self, out: &mut String) {
        for pool in &self.pools {
            if pool.failures == 0 {
                continue;
            }
            let _ = writeln!(out);
            let _ = writeln!(out, "{}'s application got these errors:", pool.name);
            let mut kinds: Vec<_> = pool.failures_by_kind.iter().collect();
            kinds.sort_by(|a, b| b.1.cmp(a.1));
            for (kind, n) in kinds {
                let example = pool
                    .failure_examples
                    .get(kind)
                    .map_or(String::new(), |e| format!(": {e}"));
                let _ = writeln!(out, "  {:>7}  {kind}{example}", count(*n));
            }
        }
    }

    fn write_learned(&self, out: &mut String) {
        let Some(steady) = self.pools.first() else {
            return;
        };
        // Over HTTP the server closes connections itself, and the proxy (if any)
        // only adds latency: its count says nothing about steadypool's.
        if let Some(chaos) = steady.chaos.filter(|_| self.http.is_none()) {
            let _ = writeln!(out);
            let ended = chaos.ended_by_faults;
            let lost = steady.connections_lost;
            let accounting = if lost == ended {
                "every one of them".to_owned()
            } else if lost < ended && lost + steady.closed_idle >= ended {
                format!(
                    "the other {} were past its learned idle limit when it found them, \
                     and went as planned closes",
                    count(ended - lost)
                )
            } else {
                "the difference ended in the last moments of the run".to_owned()
            };
            let _ = writeln!(
                out,
                "{}'s proxy ended {} connections; steadypool counted {} lost connections \
                 ({accounting}), and its application saw {} failures.",
                steady.name,
                count(ended),
                count(lost),
                count(steady.failures)
            );
        }
        if let Some(timeout) = self.http.as_ref().and_then(|h| h.announced_keep_alive_secs) {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "steadypool read `Keep-Alive: timeout={timeout}` in the server's answers: each \
                 connection closes itself before it has sat idle that long (less \
                 HttpManager::keep_alive_margin), before the server's close can meet a request."
            );
        }
        let _ = writeln!(out);
        let learned = &self.learned;
        let (Some(upper), Some(recommendation)) =
            (learned.idle_limit_upper_secs, learned.recommendation)
        else {
            let found_after_idling = steady.resets.iter().any(|r| {
                (r.phase == Phase::Idle.as_str() || r.phase == Phase::Checkout.as_str())
                    && matches!(r.cause, "peer_reset" | "peer_closed" | "broken_pipe")
            });
            let why = if found_after_idling {
                "the connections it found closed after idling went together with upstream \
                 failures (crashes, resets mid-request), which it does not take for an idle limit"
            } else {
                "no connection was found closed after idling"
            };
            let _ = writeln!(
                out,
                "steadypool settled on no idle limit for this path: {why}."
            );
            return;
        };
        let _ = writeln!(out, "What steadypool learned about this path's idle limit:");
        let how = recommendation
            .closed_by
            .map_or(String::new(), |c| format!(" ({})", c.as_str()));
        match learned.idle_limit_lower_secs {
            Some(lower) => {
                let _ = writeln!(
                    out,
                    "  connections idle {} were fine; one idle {} had been closed{how}",
                    secs(lower),
                    secs(upper)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  a connection idle {} had been closed{how}",
                    secs(upper)
                );
            }
        }
        if let Some(after) = learned.evict_after_secs {
            let _ = writeln!(
                out,
                "  so it now closes connections idle {} itself, before the path does",
                secs(after)
            );
        }
        let _ = writeln!(out, "Recommended settings for this path:");
        let _ = writeln!(out, "    Pool::builder(manager)");
        for line in recommendation.builder_lines() {
            let _ = writeln!(out, "        {line}");
        }
        let _ = writeln!(out, "  {}", recommendation.rationale());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_in_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }
}
