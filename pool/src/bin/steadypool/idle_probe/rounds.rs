//! The probe's rounds: connections opened together or staggered, watched and checked,
//! and what they found.

use std::sync::Arc;
use std::time::Duration;

use steadypool::Manager;
use steadypool::human_duration as human;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::watch::{Evidence, Watcher};
use super::{BISECT_CHECKS, PRECISION, STAGGER_SPAN, STAGGERED, TIMED};
use crate::console::Console;
use crate::recommend::ClosedBy;

/// What all rounds found so far.
#[derive(Debug, Default)]
pub(super) struct Findings {
    pub(super) evidence: Vec<Evidence>,
    pub(super) rounds: u32,
    pub(super) connections: u32,
    pub(super) searched_up_to: Duration,
}

impl Findings {
    /// The shortest idle time after which a connection died, and how.
    pub(super) fn first_death(&self) -> Option<(Duration, ClosedBy)> {
        self.evidence
            .iter()
            .filter_map(Evidence::died_after)
            .min_by_key(|(after, _)| *after)
    }

    /// The longest idle time after which a checked connection answered, below `below`.
    pub(super) fn alive_below(&self, below: Option<Duration>) -> Option<Duration> {
        self.evidence
            .iter()
            .filter_map(|e| match e {
                Evidence::Alive { after } => Some(*after),
                _ => None,
            })
            .filter(|after| below.is_none_or(|b| *after < b))
            .max()
    }

    pub(super) fn unprompted(&self) -> bool {
        self.evidence
            .iter()
            .any(|e| matches!(e, Evidence::Closed { .. }))
    }
}

/// One round: connections opened after their delays from the round's start, each
/// checked at its idle time (or only watched, for `None`).
pub(super) struct Round {
    label: String,
    /// How long a connection's handshake may take.
    handshake: Duration,
    checks: Vec<Option<Duration>>,
    delays: Vec<Duration>,
}

impl Round {
    /// Connections opened together.
    pub(super) fn together(
        label: String,
        handshake: Duration,
        checks: Vec<Option<Duration>>,
    ) -> Round {
        let delays = vec![Duration::ZERO; checks.len()];
        Round {
            label,
            handshake,
            checks,
            delays,
        }
    }

    /// Connections that are only watched, opened after `delays`.
    pub(super) fn watched(label: String, handshake: Duration, delays: Vec<Duration>) -> Round {
        Round {
            label,
            handshake,
            checks: vec![None; delays.len()],
            delays,
        }
    }
}

/// A connection the path closed unprompted: when it opened, and after how long idle.
#[derive(Debug, Clone, Copy)]
pub(super) struct Close {
    opened: Instant,
    pub(super) after: Duration,
}

/// How long to watch connections of a path that closed one after `limit` idle: long
/// enough to see how far its closes spread.
pub(super) fn watch_time(limit: Duration) -> Duration {
    limit.mul_f64(1.6).max(limit + Duration::from_secs(2))
}

/// The path closes idle connections by itself, after about `limit`: find its
/// earliest close.
///
/// Servers that keep time in whole seconds (Redis) close a connection once the
/// *second* it was last used is far enough back: depending on where in its second a
/// connection opened, it lives from the limit to a second longer. Connections opened
/// a twelfth of a second apart over a whole second cover one turn of it; their closes fall in two
/// batches a second apart, which tells when the server's second turns. A last few
/// connections, opened just before it turns (and few, so the server's sweep reaches
/// each at once), close the soonest after their last use that the server allows.
pub(super) async fn refine_unprompted<M: Manager>(
    watcher: &Arc<Watcher<M>>,
    limit: Duration,
    handshake: Duration,
    end: Instant,
    console: &Console,
    findings: &mut Findings,
) {
    let watch_for = watch_time(limit);
    if Instant::now() + STAGGER_SPAN + watch_for > end {
        return;
    }
    let step = STAGGER_SPAN / (STAGGERED - 1);
    let round = Round::watched(
        format!(
            "staggered: {STAGGERED} connections opened {} apart, watched for {}",
            human(step),
            human(watch_for)
        ),
        handshake,
        (0..STAGGERED).map(|i| step * i).collect(),
    );
    let closes = run_round(watcher, round, end, console, findings).await;
    let Some((after, before)) = second_turn(&closes) else {
        return;
    };
    // The same point in a later second, far enough ahead to open the connections.
    let period = Duration::from_secs(1);
    let mut turn_after = after;
    while turn_after < Instant::now() + Duration::from_millis(200) {
        turn_after += period;
    }
    let window = before.saturating_duration_since(after);
    let last_open = turn_after + window;
    if last_open + watch_for > end {
        return;
    }
    let now = Instant::now();
    // Half a window apart, from half a window before the last connection of the
    // first batch to the first of the second: the server's clock and ours tick a
    // little apart, and the first two stay before the turn even so.
    let delays: Vec<Duration> = (0..TIMED)
        .map(|i| (turn_after + window * i / 2 - window / 2).saturating_duration_since(now))
        .collect();
    let round = Round::watched(
        format!(
            "timed: {TIMED} connections opened just before the server's second turns, watched for {}",
            human(watch_for)
        ),
        handshake,
        delays,
    );
    run_round(watcher, round, end, console, findings).await;
}

/// When closes of connections opened a little apart fall in two batches a second
/// apart, the server counts idle time in whole seconds: the second turned between
/// the last connection of the first batch and the first of the second. Returns those
/// two opening times.
fn second_turn(closes: &[Close]) -> Option<(Instant, Instant)> {
    let mut closes = closes.to_vec();
    closes.sort_by_key(|c| c.opened);
    let died = |c: &Close| c.opened + c.after;
    let jumps: Vec<usize> = closes
        .windows(2)
        .enumerate()
        .filter(|(_, pair)| {
            let gap = died(&pair[1]).saturating_duration_since(died(&pair[0]));
            gap >= Duration::from_millis(500)
        })
        .map(|(i, _)| i)
        .collect();
    match jumps.as_slice() {
        [i] => Some((closes[*i].opened, closes[*i + 1].opened)),
        _ => None,
    }
}

/// Narrows the interval between the last rung that answered and the first found
/// dead, several checks at once, until it is narrow enough or time runs out.
pub(super) async fn bisect<M: Manager>(
    watcher: &Arc<Watcher<M>>,
    end: Instant,
    console: &Console,
    findings: &mut Findings,
) {
    let verdict = watcher.check.verdict_time();
    while let Some((upper, _)) = findings.first_death() {
        let lower = findings.alive_below(Some(upper)).unwrap_or(Duration::ZERO);
        let width = upper.saturating_sub(lower);
        if width <= upper.mul_f64(PRECISION) || Instant::now() + upper + verdict > end {
            return;
        }
        let step = width / (BISECT_CHECKS + 1);
        let checks: Vec<Option<Duration>> = (1..=BISECT_CHECKS)
            .map(|i| lower + step * i)
            .filter(|d| *d >= Duration::from_millis(100))
            .map(Some)
            .collect();
        if checks.is_empty() {
            return;
        }
        let label = format!(
            "bisecting {} to {}: {} checks",
            human(lower),
            human(upper),
            checks.len()
        );
        let before = findings.evidence.len();
        run_round(
            watcher,
            Round::together(label, verdict, checks),
            end,
            console,
            findings,
        )
        .await;
        if findings.evidence.len() == before {
            return;
        }
    }
}

/// Runs one round to its end (every connection resolved), or until time runs out,
/// or until closes have settled: once a connection was closed unprompted after `t`,
/// the others get `max(t / 2, 1 s)` more to show how much the closes spread.
/// Returns the unprompted closes.
pub(super) async fn run_round<M: Manager>(
    watcher: &Arc<Watcher<M>>,
    round: Round,
    end: Instant,
    console: &Console,
    findings: &mut Findings,
) -> Vec<Close> {
    findings.rounds += 1;
    console.line(format!("round {}: {}", findings.rounds, round.label));
    let status = console.status_line();
    let started = Instant::now();
    let mut set = JoinSet::new();
    for (check_at, delay) in round
        .checks
        .iter()
        .copied()
        .zip(round.delays.iter().copied())
    {
        let watcher = Arc::clone(watcher);
        let handshake = round.handshake;
        set.spawn(async move {
            tokio::time::sleep(delay).await;
            let conn = watcher.open(handshake).await.ok()?;
            let opened = Instant::now();
            Some((opened, watcher.watch(conn, opened, check_at).await))
        });
        findings.connections += 1;
    }
    let mut cutoff = end;
    let mut found: Vec<Evidence> = Vec::new();
    let mut closes: Vec<Close> = Vec::new();
    let mut lost = 0u32;
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                None => break,
                Some(Ok(Some((opened, evidence)))) => {
                    if let Evidence::Closed { after, .. } = evidence {
                        if closes.is_empty() {
                            let settle = (after / 2).max(Duration::from_secs(1));
                            cutoff = cutoff.min(Instant::now() + settle);
                        }
                        closes.push(Close { opened, after });
                    }
                    found.push(evidence);
                }
                Some(Ok(None) | Err(_)) => lost += 1,
            },
            () = tokio::time::sleep_until(cutoff) => {
                set.abort_all();
                while set.join_next().await.is_some() {}
                break;
            }
            _ = ticker.tick() => {
                status.set_message(format!(
                    "  round {}: {:.1} s, {} of {} connections resolved",
                    findings.rounds,
                    started.elapsed().as_secs_f64(),
                    found.len(),
                    round.checks.len()
                ));
            }
        }
    }
    status.finish_and_clear();
    // The round's first connection opened at its start (give or take a handshake)
    // and was watched, unless something ended it sooner, until now.
    findings.searched_up_to = findings.searched_up_to.max(started.elapsed());
    console.line(format!("  {}", summarize(&found, lost)));
    findings.evidence.extend(found);
    closes
}

fn summarize(found: &[Evidence], lost: u32) -> String {
    let mut parts = Vec::new();
    let alive: Vec<String> = found
        .iter()
        .filter_map(|e| match e {
            Evidence::Alive { after } => Some(human(*after)),
            _ => None,
        })
        .collect();
    if !alive.is_empty() {
        parts.push(format!("answered after {}", alive.join(", ")));
    }
    for (unprompted, what) in [(true, "closed unprompted"), (false, "dead when checked")] {
        let deaths: Vec<(Duration, ClosedBy)> = found
            .iter()
            .filter(|e| matches!(e, Evidence::Closed { .. }) == unprompted)
            .filter_map(Evidence::died_after)
            .collect();
        if let (Some(min), Some(max)) = (
            deaths.iter().map(|d| d.0).min(),
            deaths.iter().map(|d| d.0).max(),
        ) {
            let mut kinds: Vec<&str> = deaths.iter().map(|d| d.1.as_str()).collect();
            kinds.sort_unstable();
            kinds.dedup();
            let (min, max) = (human(min), human(max));
            // Times that print alike are one time to the reader.
            let range = if min == max {
                min
            } else {
                format!("{min} to {max}")
            };
            parts.push(format!(
                "{} {what} after {range} ({})",
                deaths.len(),
                kinds.join(", ")
            ));
        }
    }
    if lost > 0 {
        parts.push(format!("{lost} could not be opened"));
    }
    if parts.is_empty() {
        "still open when the round ended".to_owned()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rounds_line_says_what_answered_and_what_died_after_how_long() {
        let closed = |ms| Evidence::Closed {
            after: Duration::from_millis(ms),
            by: ClosedBy::Fin,
        };
        let alive = Evidence::Alive {
            after: Duration::from_secs(1),
        };
        let dead = Evidence::DeadOnCheck {
            after: Duration::from_secs(5),
            by: ClosedBy::Silence,
        };
        assert_eq!(
            summarize(&[alive, closed(2_010), closed(2_040)], 0),
            "answered after 1.0 s; 2 closed unprompted after 2.0 s (FIN)"
        );
        assert_eq!(
            summarize(&[closed(2_040), closed(3_000), dead], 1),
            "2 closed unprompted after 2.0 s to 3.0 s (FIN); 1 dead when checked after 5.0 s \
             (silence); 1 could not be opened"
        );
        assert_eq!(summarize(&[], 0), "still open when the round ended");
    }
}
