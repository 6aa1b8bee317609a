//! The idle probe: how long may a connection to this server sit idle before
//! something on the path (a load balancer, a NAT, a firewall, the server itself)
//! closes it? And which pool settings stay clear of that?
//!
//! It opens connections, leaves them idle, and watches them:
//!
//! 1. **A ladder**: one connection per common idle limit (1 s, 2 s, 3 s, 5 s, 8 s, 10 s,
//!    15 s, ... up to `--max-time`), all at once. Each is watched the whole time: a
//!    close the path sends by itself (FIN or RST) is seen within 20 ms. At its rung
//!    each connection is checked once, by a round trip in the protocol (`redis`:
//!    `PING`, `postgres`: an empty query) or, for `tcp`, by a TCP keepalive probe, so
//!    a flow the path forgot silently shows up too.
//! 2. **Refinement**. When the path closes connections by itself, thirteen more are
//!    opened over one second, a twelfth of a second apart. A server whose idle timer
//!    counts whole seconds (Redis) closes them in two batches a second apart, which
//!    shows when its second turns; four last connections, opened just before it
//!    turns, show its earliest close. When connections only turned out dead
//!    when checked, the interval between the last good rung and the first dead one is
//!    bisected, several checks at once, until it is narrower than 5 %.
//!
//! The estimate is the shortest idle time after which a connection died. The
//! settings recommended are the library's for that bound and the longest idle time a
//! checked connection survived (see [`Recommendation`]). Everything ends by
//! `--max-time`.

mod watch;

use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use steadypool::diagnosis::{IdleLimit, human};
use steadypool::drivers::postgres::PgManager;
use steadypool::drivers::redis::RedisManager;
use steadypool::drivers::tcp::TcpManager;
use steadypool::{Dialer, Manager};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::watch::{Check, Evidence, OpenError, Watcher};
use crate::console::{Console, Verbosity, parse_duration};
use crate::recommend::{ClosedBy, Recommendation, RecommendationSummary};

/// The idle times the ladder tries: the usual limits of servers, proxies, load
/// balancers and NAT gateways.
const RUNGS_SECS: [u64; 24] = [
    1, 2, 3, 5, 8, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 350, 450, 600, 900, 1200, 1800,
    2700, 3600,
];
/// Connections of the staggered refinement round: the first and the last open a
/// whole second apart, so their second always turns in between.
const STAGGERED: u32 = 13;
/// Connections of the round timed to a server's turning second: few, so a server
/// that sweeps a handful of connections per tick reaches each at once.
const TIMED: u32 = 4;
/// Over how long their opening is spread: one tick of a once-a-second idle timer.
const STAGGER_SPAN: Duration = Duration::from_secs(1);
/// Checks per bisection round.
const BISECT_CHECKS: u32 = 5;
/// Bisection stops when the interval is narrower than this share of its top.
const PRECISION: f64 = 0.05;
/// The time a rung's connection usually needs to open, kept free of `--max-time`.
const OPEN_ALLOWANCE: Duration = Duration::from_secs(1);

/// What the target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProbeProtocol {
    /// Nothing is sent; connections are checked with TCP keepalive probes.
    Tcp,
    /// Redis: checked with `PING`.
    Redis,
    /// PostgreSQL: checked with an empty query.
    Postgres,
}

impl fmt::Display for ProbeProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeProtocol::Tcp => "tcp",
            ProbeProtocol::Redis => "redis",
            ProbeProtocol::Postgres => "postgres",
        })
    }
}

/// Everything a probe needs. [`ProbeArgs`] builds one from the command line.
#[derive(Debug, Clone)]
pub(crate) struct ProbeConfig {
    /// `host:port`.
    pub(crate) target: String,
    /// What it speaks.
    pub(crate) protocol: ProbeProtocol,
    /// The longest the whole probe may take. Default 60 s.
    pub(crate) max_time: Duration,
    /// How long a check's round trip may take before the connection counts as
    /// silently dropped; also how long a TCP connect, and then a handshake, may take.
    /// Default 2 s.
    pub(crate) rtt_timeout: Duration,
    /// Connection settings for `postgres` besides host and port (libpq style).
    /// Default `user=postgres dbname=postgres`.
    pub(crate) postgres_options: String,
    /// What to print while running. Default [`Verbosity::Auto`].
    pub(crate) verbosity: Verbosity,
}

/// The idle probe's command line.
#[derive(Debug, clap::Args)]
pub(crate) struct ProbeArgs {
    /// The server, as HOST:PORT.
    #[arg(value_name = "HOST:PORT")]
    pub(crate) target: String,
    /// What the server speaks (tcp sends nothing and checks with keepalive probes).
    #[arg(long, value_enum, default_value_t = ProbeProtocol::Tcp)]
    pub(crate) protocol: ProbeProtocol,
    /// The longest the probe may take in all (e.g. 30s, 5min); limits longer than
    /// about this cannot be found.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) max_time: Duration,
    /// How long a check's round trip may take before the connection counts as
    /// silently dropped (also the limit for connecting, and for the handshake).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) rtt_timeout: Duration,
    /// PostgreSQL connection settings besides host and port.
    #[arg(long, default_value = "user=postgres dbname=postgres")]
    pub(crate) postgres_options: String,
    /// Print a JSON summary on standard output instead of the text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print nothing while running.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

impl ProbeArgs {
    /// Checks the values and turns them into a [`ProbeConfig`].
    ///
    /// # Errors
    /// [`ProbeError::Config`] saying which value is wrong.
    pub(crate) fn config(&self) -> Result<ProbeConfig, ProbeError> {
        if !self.target.contains(':') {
            return Err(ProbeError::Config(format!(
                "{:?} needs a port: write HOST:PORT",
                self.target
            )));
        }
        if self.max_time < Duration::from_secs(2) {
            return Err(ProbeError::Config(format!(
                "--max-time {} is too short: the shortest limit it finds is 1 s, so allow 2s or more",
                human(self.max_time)
            )));
        }
        Ok(ProbeConfig {
            target: self.target.clone(),
            protocol: self.protocol,
            max_time: self.max_time,
            rtt_timeout: self.rtt_timeout,
            postgres_options: self.postgres_options.clone(),
            verbosity: if self.quiet {
                Verbosity::Quiet
            } else {
                Verbosity::Auto
            },
        })
    }
}

/// Why the probe could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ProbeError {
    /// A flag's value is wrong.
    #[error("{0}")]
    Config(String),
    /// No connection could be opened.
    #[error("could not reach {target}: {reason}")]
    Unreachable {
        /// The target.
        target: String,
        /// Why.
        reason: String,
    },
    /// A connection opened, but the server did not answer in the protocol.
    #[error("{target} does not answer as {protocol}: {reason}")]
    NotSpeaking {
        /// The target.
        target: String,
        /// The protocol tried.
        protocol: ProbeProtocol,
        /// What happened instead.
        reason: String,
    },
}

impl ProbeError {
    /// The process exit code: 2 for bad flags, 1 otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            ProbeError::Config(_) => 2,
            _ => 1,
        }
    }
}

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
    recommendation: Option<Recommendation>,
}

impl ProbeReport {
    /// The result as text.
    pub(crate) fn text(&self) -> String {
        let mut out = String::new();
        let secs = |s: f64| human(Duration::from_secs_f64(s));
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
            let _ = writeln!(
                out,
                "  {} connections were closed unprompted, after {} to {} idle.",
                unprompted.len(),
                secs(limit),
                secs(latest)
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

/// Probes the path to `config.target` and reports its idle limit.
///
/// # Errors
/// [`ProbeError::Unreachable`] when no connection opens, [`ProbeError::NotSpeaking`]
/// when the server does not answer in the protocol, [`ProbeError::Config`] for
/// PostgreSQL options that do not parse.
pub(crate) async fn run(config: ProbeConfig) -> Result<ProbeReport, ProbeError> {
    // No keepalive: its probes would keep NAT flows alive and hide the limit.
    let dialer = Dialer::new()
        // A connect is one round trip: it gets as long as a check's round trip.
        .connect_timeout(config.rtt_timeout)
        .keepalive(None)
        .user_timeout(None);
    let ping = Check::Ping(config.rtt_timeout);
    match config.protocol {
        ProbeProtocol::Tcp => {
            let watcher = Watcher {
                manager: TcpManager::new(config.target.as_str()),
                dialer,
                check: Check::Keepalive,
                drain: Some(drain),
            };
            probe(watcher, &config).await
        }
        ProbeProtocol::Redis => {
            let manager = RedisManager::new(format!("redis://{}/0", config.target).as_str())
                .map_err(|e| ProbeError::Config(format!("{}: {e}", config.target)))?
                .connection_config(
                    redis::AsyncConnectionConfig::new()
                        .set_response_timeout(Some(config.rtt_timeout)),
                );
            let watcher = Watcher {
                manager,
                dialer,
                check: ping,
                drain: None,
            };
            probe(watcher, &config).await
        }
        ProbeProtocol::Postgres => {
            let (host, port) = split_host_port(&config.target)?;
            let pg_config: tokio_postgres::Config =
                format!("host={host} port={port} {}", config.postgres_options)
                    .parse()
                    .map_err(|e| ProbeError::Config(format!("--postgres-options: {e}")))?;
            let manager = PgManager::new(pg_config)
                .map_err(|e| ProbeError::Config(format!("--postgres-options: {e}")))?;
            let watcher = Watcher {
                manager,
                dialer,
                check: ping,
                drain: None,
            };
            probe(watcher, &config).await
        }
    }
}

/// Reads away whatever a server sent unasked, leaving an end of stream in place.
fn drain(stream: &TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.try_read(&mut buf) {
        if n == 0 {
            return;
        }
    }
}

fn split_host_port(target: &str) -> Result<(String, u16), ProbeError> {
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| ProbeError::Config(format!("{target:?} needs a port: write HOST:PORT")))?;
    let port = port
        .parse()
        .map_err(|_| ProbeError::Config(format!("{port:?} in {target:?} is not a port number")))?;
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    ))
}

/// What all rounds found so far.
#[derive(Debug, Default)]
struct Findings {
    evidence: Vec<Evidence>,
    rounds: u32,
    connections: u32,
    searched_up_to: Duration,
}

impl Findings {
    /// The shortest idle time after which a connection died, and how.
    fn first_death(&self) -> Option<(Duration, ClosedBy)> {
        self.evidence
            .iter()
            .filter_map(Evidence::died_after)
            .min_by_key(|(after, _)| *after)
    }

    /// The longest idle time after which a checked connection answered, below `below`.
    fn alive_below(&self, below: Option<Duration>) -> Option<Duration> {
        self.evidence
            .iter()
            .filter_map(|e| match e {
                Evidence::Alive { after } => Some(*after),
                _ => None,
            })
            .filter(|after| below.is_none_or(|b| *after < b))
            .max()
    }

    fn unprompted(&self) -> bool {
        self.evidence
            .iter()
            .any(|e| matches!(e, Evidence::Closed { .. }))
    }
}

/// One round: connections opened after their delays from the round's start, each
/// checked at its idle time (or only watched, for `None`).
struct Round {
    label: String,
    /// How long a connection's handshake may take.
    handshake: Duration,
    checks: Vec<Option<Duration>>,
    delays: Vec<Duration>,
}

impl Round {
    /// Connections opened together.
    fn together(label: String, handshake: Duration, checks: Vec<Option<Duration>>) -> Round {
        let delays = vec![Duration::ZERO; checks.len()];
        Round {
            label,
            handshake,
            checks,
            delays,
        }
    }

    /// Connections that are only watched, opened after `delays`.
    fn watched(label: String, handshake: Duration, delays: Vec<Duration>) -> Round {
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
struct Close {
    opened: Instant,
    after: Duration,
}

async fn probe<M: Manager>(
    watcher: Watcher<M>,
    config: &ProbeConfig,
) -> Result<ProbeReport, ProbeError> {
    let console = Console::new(config.verbosity);
    let started = Instant::now();
    let end = started + config.max_time;
    let watcher = Arc::new(watcher);

    let mut first = watcher
        .open(config.rtt_timeout)
        .await
        .map_err(|err| match err {
            OpenError::Unreachable(reason) => ProbeError::Unreachable {
                target: config.target.clone(),
                reason,
            },
            OpenError::Handshake(reason) => ProbeError::NotSpeaking {
                target: config.target.clone(),
                protocol: config.protocol,
                reason,
            },
        })?;
    watcher
        .ping(&mut first)
        .await
        .map_err(|reason| ProbeError::NotSpeaking {
            target: config.target.clone(),
            protocol: config.protocol,
            reason,
        })?;
    drop(first);
    console.line(format!(
        "idle-probe: {} ({}), at most {}",
        config.target,
        config.protocol,
        human(config.max_time)
    ));

    let verdict = watcher.check.verdict_time();
    let handshake = config.rtt_timeout;
    let mut findings = Findings::default();
    let rungs: Vec<Option<Duration>> = RUNGS_SECS
        .iter()
        .map(|s| Duration::from_secs(*s))
        .filter(|d| *d + verdict + OPEN_ALLOWANCE <= config.max_time)
        .map(Some)
        .collect();
    let label = format!(
        "ladder: {} connections, checked after {}",
        rungs.len(),
        rungs
            .iter()
            .flatten()
            .map(|d| human(*d))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let ladder = Round::together(label, handshake, rungs);
    run_round(&watcher, ladder, end, &console, &mut findings).await;

    if let Some((limit, _)) = findings.first_death() {
        if findings.unprompted() {
            refine_unprompted(&watcher, limit, handshake, end, &console, &mut findings).await;
        } else {
            bisect(&watcher, end, &console, &mut findings).await;
        }
    }

    let limit = findings.first_death();
    let alive = findings.alive_below(limit.map(|(after, _)| after));
    let recommendation = limit.and_then(|(after, by)| {
        let learned = IdleLimit {
            lower: alive,
            upper: Some(after),
            evict_after: None,
        };
        Recommendation::for_limit(learned, Some(by))
    });
    console.clear();
    Ok(ProbeReport {
        target: config.target.clone(),
        protocol: config.protocol,
        elapsed_secs: started.elapsed().as_secs_f64(),
        alive_after_secs: alive.map(|d| d.as_secs_f64()),
        limit_secs: limit.map(|(after, _)| after.as_secs_f64()),
        closed_by: limit.map(|(_, by)| by),
        searched_up_to_secs: findings.searched_up_to.as_secs_f64(),
        deaths: findings
            .evidence
            .iter()
            .filter_map(|e| match *e {
                Evidence::Closed { after, by } => Some(Death {
                    after_secs: after.as_secs_f64(),
                    closed_by: by,
                    unprompted: true,
                }),
                Evidence::DeadOnCheck { after, by } => Some(Death {
                    after_secs: after.as_secs_f64(),
                    closed_by: by,
                    unprompted: false,
                }),
                Evidence::Alive { .. } => None,
            })
            .collect(),
        alive: findings
            .evidence
            .iter()
            .filter_map(|e| match e {
                Evidence::Alive { after } => Some(after.as_secs_f64()),
                _ => None,
            })
            .collect(),
        rounds: findings.rounds,
        connections: findings.connections,
        recommended: recommendation.map(|r| r.summary()),
        recommendation,
    })
}

/// How long to watch connections of a path that closed one after `limit` idle: long
/// enough to see how far its closes spread.
fn watch_time(limit: Duration) -> Duration {
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
async fn refine_unprompted<M: Manager>(
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
async fn bisect<M: Manager>(
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
async fn run_round<M: Manager>(
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
            let range = if max - min < Duration::from_millis(50) {
                human(min)
            } else {
                format!("{} to {}", human(min), human(max))
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

impl crate::outcome::Failure for ProbeError {
    fn exit_code(&self) -> u8 {
        ProbeError::exit_code(self)
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
