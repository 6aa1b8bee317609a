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
//! An HTTP server often says its limit: Node.js answers `Keep-Alive: timeout=5`.
//! The probe reads it from the first answer and, instead of the ladder, verifies
//! it: connections checked at half and nine tenths of it, one checked half a second
//! past it, and three only watched, for at most twice the timeout and a few
//! seconds. Node.js, for one, closes a second later than it says.
//!
//! The estimate is the shortest idle time after which a connection died. The
//! settings recommended are the library's for that bound and the longest idle time a
//! checked connection survived (see [`Recommendation`]). Everything ends by
//! `--max-time`.

mod args;
mod report;
mod rounds;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use steadypool::drivers::http::{HttpConnection, HttpManager};
use steadypool::drivers::postgres::PgManager;
use steadypool::drivers::redis::RedisManager;
use steadypool::drivers::tcp::TcpManager;
use steadypool::{Dialer, Manager};
use steadypool::{IdleLimit, human_duration as human};
use tokio::net::TcpStream;
use tokio::time::Instant;

pub(crate) use self::args::{ProbeArgs, ProbeConfig, ProbeError, ProbeProtocol};
pub(crate) use self::report::{Death, ProbeReport};
use self::rounds::{Findings, Round, bisect, refine_unprompted, run_round};
use self::watch::{Check, Evidence, OpenError, Watcher};
use crate::console::Console;
use crate::recommend::Recommendation;

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
/// How far past twice an announced timeout the verification watches: a server
/// may close later than it says (Node.js: a second later).
const VERIFY_SLACK: Duration = Duration::from_secs(3);
/// Connections of the verification that are only watched.
const VERIFY_WATCHED: usize = 3;

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
                warm: false,
                announced: |_| None,
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
                warm: false,
                announced: |_| None,
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
                warm: false,
                announced: |_| None,
            };
            probe(watcher, &config).await
        }
        ProbeProtocol::Http => {
            let origin = format!("http://{}", config.target);
            let manager = HttpManager::new(&origin)
                .and_then(|m| m.health_path(&config.http_path))
                .map_err(|e| ProbeError::Config(e.to_string()))?;
            let watcher = Watcher {
                manager,
                dialer,
                check: ping,
                drain: None,
                warm: true,
                announced: HttpConnection::announced_keep_alive,
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
    let announced = (watcher.announced)(&first);
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
    if let Some(timeout) = announced {
        console.line(format!(
            "the server announces Keep-Alive: timeout={}: verifying it",
            timeout.as_secs()
        ));
        let round = verification(timeout, handshake, verdict, config.max_time);
        let verify_end = end.min(Instant::now() + timeout * 2 + VERIFY_SLACK + handshake);
        run_round(&watcher, round, verify_end, &console, &mut findings).await;
        if findings.first_death().is_some() && !findings.unprompted() {
            bisect(&watcher, end, &console, &mut findings).await;
        }
        console.clear();
        return Ok(report(config, started, announced, &findings));
    }
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
    console.clear();
    Ok(report(config, started, None, &findings))
}

/// The round that verifies an announced timeout: connections checked at half and
/// nine tenths of it and half a second past it, and some only watched, for a close
/// that comes later than announced.
fn verification(
    timeout: Duration,
    handshake: Duration,
    verdict: Duration,
    max_time: Duration,
) -> Round {
    let mut checks: Vec<Option<Duration>> = [
        timeout / 2,
        timeout.mul_f64(0.9),
        timeout + Duration::from_millis(500),
    ]
    .into_iter()
    .filter(|at| *at + verdict + OPEN_ALLOWANCE <= max_time)
    .map(Some)
    .collect();
    checks.extend([None; VERIFY_WATCHED]);
    let label = format!(
        "verifying: {} connections, checked after {}, {VERIFY_WATCHED} only watched",
        checks.len(),
        checks
            .iter()
            .flatten()
            .map(|d| human(*d))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Round::together(label, handshake, checks)
}

fn report(
    config: &ProbeConfig,
    started: Instant,
    announced: Option<Duration>,
    findings: &Findings,
) -> ProbeReport {
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
    ProbeReport {
        target: config.target.clone(),
        protocol: config.protocol,
        elapsed_secs: started.elapsed().as_secs_f64(),
        announced_keep_alive_secs: announced.map(|d| d.as_secs_f64()),
        later_than_announced_secs: announced
            .zip(limit)
            .map(|(said, (after, _))| after.as_secs_f64() - said.as_secs_f64()),
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
    }
}
