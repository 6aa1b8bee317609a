//! The demo: production's resets, scaled down to half a minute, hitting steadypool
//! and a plain deadpool pool side by side.
//!
//! An embedded key-value server stands in for the upstream. Each pool reaches it
//! through its own [chaos proxy](steadypool::chaos), both set alike and seeded alike:
//!
//! * a load balancer's idle timeout (2 s, reset: `idle`; or a clean close: `idle-fin`),
//! * 1 % of requests reset mid-request (`resets`),
//! * an upstream crash every ~10 s that resets every open connection (`crash`),
//! * idle gaps in the workload, some longer than the idle timeout (`gaps`),
//! * optionally 1 to 3 ms of added latency (`latency`).
//!
//! The same workers (the same requests, the same pauses) run against each pool. Every
//! request is a `GET` or a `SET` of a fixed value, so steadypool may retry all of them
//! ([`Pool::run_idempotent`](steadypool::Pool::run_idempotent)). The plain pool gets
//! a careful user (a connection that failed is discarded) but no checks and no
//! retries: whatever breaks reaches its application.
//!
//! With `--protocol http` the upstream is a Node.js `http.createServer` the demo
//! starts (`keepAliveTimeout` 1 s: it announces `Keep-Alive: timeout=1` and closes
//! idle connections a second later), or a `--target http://HOST:PORT`; the peer is
//! reqwest with its defaults, one client per worker on each side; and the workers
//! pause within 10 % of the server's keep-alive close after each `GET` or `PUT`, so
//! requests and the server's closes cross (see [`http`]).
//!
//! [`run`] returns a [`Report`]: per pool, the requests, the failures the application
//! saw, the retries, the connections lost by cause and phase (steadypool's from its
//! own [`Pool::stats`](steadypool::Pool::stats)), latencies, and what each proxy injected; and what steadypool learned
//! about the path's idle limit, with the settings it recommends.

mod args;
mod clients;
mod http;
mod node;
mod report;
mod table;
mod tally;
mod workload;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use steadypool::chaos::{ChaosProxy, Faults, IdleClose, Latency};
use steadypool::human_duration as human;
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub(crate) use self::args::{DemoArgs, DemoConfig, DemoError, Target};
use self::clients::Client;
pub(crate) use self::clients::Protocol;
pub(crate) use self::report::{
    FaultSummary, HttpSummary, Learned, PoolReport, Report, ScheduleSummary,
};
use self::tally::Tally;
use self::workload::{Requests, Schedule};
use crate::console::Console;
use crate::recommend::ClosedBy;

/// How long steadypool's reaper may take to find what the proxy did last: its
/// default interval, and a margin.
const DRAIN: Duration = Duration::from_millis(1300);
/// How much later than the `Keep-Alive: timeout` it announces Node.js closes an
/// idle connection: the pauses straddle the real close.
const NODE_CLOSE_DELAY: Duration = Duration::from_secs(1);
/// How long workers may take to finish their request after Ctrl-C.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long the checks of a `--target` may take.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(3);
/// Added latency per chunk with `latency` on.
const LATENCY: Latency = Latency::new(Duration::from_millis(1), Duration::from_millis(2));
/// Added latency per chunk with `latency` on over HTTP: a request and its answer
/// cross the proxy in 10 to 20 ms, the time in which a request and the server's
/// keep-alive close can cross.
const HTTP_LATENCY: Latency = Latency::new(Duration::from_millis(5), Duration::from_millis(5));

/// The names of the two sides, in the report's order.
const POOLS: [&str; 2] = ["steadypool", "deadpool"];
/// The same over HTTP.
const HTTP_PEERS: [&str; 2] = ["steadypool", "reqwest"];

/// Runs the demo until its duration is over or `interrupt` completes (Ctrl-C), and
/// reports what happened so far.
///
/// # Errors
/// [`DemoError`] when the run cannot start: a bad configuration, a `--target` that
/// is down or speaks another protocol, no free port.
pub(crate) async fn run(
    config: DemoConfig,
    interrupt: impl Future<Output = ()> + Send,
) -> Result<Report, DemoError> {
    let console = Arc::new(Console::new(config.verbosity));
    let mut node = None;
    let (server, upstream, protocol, target_text) = match &config.target {
        Target::Node => {
            let started = node::NodeServer::start().await?;
            let addr = started.addr().to_owned();
            node = Some(started);
            (
                None,
                addr,
                Protocol::Http,
                format!(
                    "Node.js http.createServer (keepAliveTimeout {})",
                    human(node::KEEP_ALIVE_TIMEOUT)
                ),
            )
        }
        Target::Embedded => {
            let server = crate::kv::KvServer::start()
                .await
                .map_err(DemoError::Server)?;
            let addr = server.addr().to_string();
            (
                Some(server),
                addr,
                Protocol::Kv,
                "embedded key-value server".to_owned(),
            )
        }
        Target::Remote { addr, protocol } => {
            let text = match protocol {
                Protocol::Http => format!("http://{addr}"),
                _ => addr.clone(),
            };
            (None, addr.clone(), *protocol, text)
        }
    };
    let announced = preflight(&upstream, protocol).await?;
    let names = if protocol == Protocol::Http {
        HTTP_PEERS
    } else {
        POOLS
    };
    let proxies = if config.faults.needs_proxy() {
        let faults = chaos_faults(&config, protocol);
        let mut proxies = Vec::new();
        for _ in names {
            let proxy = ChaosProxy::builder(upstream.as_str())
                .seed(config.seed)
                .faults(faults)
                .start()
                .await?;
            proxies.push(Arc::new(proxy));
        }
        Some(proxies)
    } else {
        None
    };
    let addr_of = |i: usize| {
        proxies
            .as_ref()
            .map_or(upstream.clone(), |p| p[i].local_addr().to_string())
    };

    let size = config.concurrency;
    let (steady, plain): (Arc<dyn Client>, Arc<dyn Client>) = match protocol {
        Protocol::Kv => {
            let steady = clients::steady_kv(&addr_of(0), size)
                .map_err(|e| DemoError::Setup(e.to_string()))?;
            let plain = clients::plain_kv(&addr_of(1), size)
                .map_err(|e| DemoError::Setup(e.to_string()))?;
            (Arc::new(steady), Arc::new(plain))
        }
        Protocol::Redis => {
            let steady = clients::steady_redis(&addr_of(0), size)?;
            (
                Arc::new(steady),
                Arc::new(clients::plain_redis(&addr_of(1), size)?),
            )
        }
        Protocol::Http => (
            Arc::new(http::SteadyHttp::new(&addr_of(0), size)?),
            Arc::new(http::Reqwest::new(&addr_of(1), size)?),
        ),
    };
    let clients = [steady, plain];

    // Over HTTP the pauses between requests are the idle gaps.
    let paced_around = (protocol == Protocol::Http && config.faults.gaps).then(|| {
        match (config.faults.idle, announced) {
            (None, Some(timeout)) => timeout + NODE_CLOSE_DELAY,
            _ => config.lb_idle_timeout,
        }
    });
    let schedule = Arc::new(Schedule::new(
        config.duration,
        config.lb_idle_timeout,
        config.seed,
        config.faults.gaps && paced_around.is_none(),
        config.faults.crash.then_some(config.crash_every),
    ));
    let tallies: [Arc<Tally>; 2] = [Arc::new(Tally::new()), Arc::new(Tally::new())];
    let key_prefix = match protocol {
        Protocol::Kv => "key:",
        Protocol::Redis => "steadypool-demo:",
        Protocol::Http => "/items/",
    };

    console.line(format!(
        "steadypool demo: {} workers per pool for {}, faults {} (seed {}); Ctrl-C prints the results so far",
        config.concurrency,
        human(config.duration),
        config.faults,
        config.seed
    ));
    let started = Instant::now();
    let end = started + config.duration;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = JoinSet::new();
    for (client, tally) in clients.iter().zip(&tallies) {
        for worker in 0..config.concurrency {
            let requests = Requests::new(config.seed, worker, key_prefix);
            workers.spawn(work(
                Arc::clone(client),
                Arc::clone(tally),
                Arc::clone(&schedule),
                match paced_around {
                    Some(close) => requests.paced_around(close),
                    None => requests,
                },
                started,
                end,
                stop_rx.clone(),
            ));
        }
    }
    let mut background = JoinSet::new();
    if let Some(proxies) = &proxies {
        background.spawn(crash(
            proxies.clone(),
            Arc::clone(&schedule),
            started,
            Arc::clone(&console),
        ));
    }
    background.spawn(live(
        Arc::clone(&console),
        names,
        tallies.clone(),
        Arc::clone(&schedule),
        started,
        config.duration,
        config.faults.idle.map(|_| config.lb_idle_timeout),
    ));

    let interrupted = tokio::select! {
        () = drain(&mut workers) => false,
        () = interrupt => true,
    };
    let _ = stop_tx.send(true);
    let ran = started.elapsed().min(config.duration);
    background.abort_all();
    while background.join_next().await.is_some() {}
    console.clear();
    if interrupted {
        console.line("interrupted: finishing the requests in flight");
        if tokio::time::timeout(STOP_GRACE, drain(&mut workers))
            .await
            .is_err()
        {
            workers.abort_all();
        }
    }

    if let Some(proxies) = &proxies {
        for proxy in proxies {
            // Nothing new may happen now; a proxy that cannot listen again keeps
            // refusing, which the demo never asks it to do.
            let _ = proxy.clear();
        }
        // Let steadypool's reaper find the connections the proxy ended last.
        tokio::time::sleep(DRAIN).await;
    }
    let counts = clients[0].counts();
    let learned = clients[0].idle_limit();
    let chaos = |i: usize| proxies.as_ref().map(|p| p[i].stats());
    let steady_report = PoolReport::new(names[0], tallies[0].totals(), counts, chaos(0));
    let plain_report = PoolReport::new(names[1], tallies[1].totals(), None, chaos(1));
    let closed_by = steady_report.idle_closes().or(config.faults.idle);
    for client in &clients {
        client.close();
    }
    drop(proxies);
    drop(server);
    drop(node);

    Ok(Report {
        seed: config.seed,
        planned_secs: config.duration.as_secs_f64(),
        ran_secs: ran.as_secs_f64(),
        interrupted,
        concurrency: config.concurrency,
        target: target_text,
        protocol,
        faults: fault_summary(&config),
        schedule: ScheduleSummary {
            gaps: schedule
                .gaps
                .iter()
                .map(|(a, b)| [a.as_secs_f64(), b.as_secs_f64()])
                .collect(),
            crashes: schedule.crashes.iter().map(Duration::as_secs_f64).collect(),
        },
        pools: vec![steady_report, plain_report],
        learned: Learned::new(learned, closed_by),
        http: (protocol == Protocol::Http).then(|| HttpSummary {
            announced_keep_alive_secs: announced.map(|d| d.as_secs_f64()),
            node_keep_alive_timeout_secs: matches!(config.target, Target::Node)
                .then(|| node::KEEP_ALIVE_TIMEOUT.as_secs_f64()),
            request_gap_secs: paced_around.map(|close| {
                [
                    close.mul_f64(1.0 - workload::PACING_SPREAD).as_secs_f64(),
                    close.mul_f64(1.0 + workload::PACING_SPREAD).as_secs_f64(),
                ]
            }),
        }),
    })
}

async fn drain(set: &mut JoinSet<()>) {
    while set.join_next().await.is_some() {}
}

fn chaos_faults(config: &DemoConfig, protocol: Protocol) -> Faults {
    let f = &config.faults;
    Faults {
        idle_close: f.idle.map(|with| match with {
            ClosedBy::Fin => IdleClose::fin(config.lb_idle_timeout),
            ClosedBy::Rst | ClosedBy::Silence => IdleClose::rst(config.lb_idle_timeout),
        }),
        // The proxy draws once per chunk, and a request is two chunks (the request
        // and its reply): this per-chunk chance resets `reset_rate` of requests.
        reset_probability: if f.resets {
            1.0 - (1.0 - config.reset_rate).sqrt()
        } else {
            0.0
        },
        latency: f.latency.then_some(if protocol == Protocol::Http {
            HTTP_LATENCY
        } else {
            LATENCY
        }),
        ..Faults::none()
    }
}

fn fault_summary(config: &DemoConfig) -> FaultSummary {
    let f = &config.faults;
    FaultSummary {
        names: f.names().into_iter().map(str::to_owned).collect(),
        lb_idle_timeout_secs: f.idle.map(|_| config.lb_idle_timeout.as_secs_f64()),
        lb_idle_close: f.idle,
        reset_rate: f.resets.then_some(config.reset_rate),
        crash_every_secs: f.crash.then_some(config.crash_every.as_secs_f64()),
    }
}

/// One worker: the schedule's requests, paused during idle gaps, until the end.
async fn work(
    client: Arc<dyn Client>,
    tally: Arc<Tally>,
    schedule: Arc<Schedule>,
    mut requests: Requests,
    started: Instant,
    end: Instant,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let now = Instant::now();
        if *stop.borrow() || now >= end {
            return;
        }
        let pause_until = match schedule.gap_end(now - started) {
            Some(gap_end) => (started + gap_end).min(end),
            None => {
                let (op, think) = requests.next_request();
                let sent = Instant::now();
                let outcome = client.call(requests.worker(), op).await;
                tally.record(outcome, sent.elapsed());
                Instant::now() + think
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(pause_until) => {}
            changed = stop.changed() => if changed.is_err() { return },
        }
    }
}

/// Crashes the upstream (both proxies at once) at the schedule's times.
async fn crash(
    proxies: Vec<Arc<ChaosProxy>>,
    schedule: Arc<Schedule>,
    started: Instant,
    console: Arc<Console>,
) {
    for at in &schedule.crashes {
        tokio::time::sleep_until(started + *at).await;
        let mut crashes = JoinSet::new();
        for proxy in &proxies {
            let proxy = Arc::clone(proxy);
            crashes.spawn(async move { proxy.crash().await });
        }
        let mut reset = Vec::new();
        while let Some(Ok(n)) = crashes.join_next().await {
            reset.push(n);
        }
        console.line(format!(
            "{}  upstream crashed and restarted: open connections reset ({})",
            stamp(started.elapsed()),
            reset
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    }
}

fn stamp(at: Duration) -> String {
    format!("{:>6.1} s", at.as_secs_f64())
}

/// The live display: a bar and a line per pool on a terminal; event lines and a
/// status line every 10 s elsewhere.
async fn live(
    console: Arc<Console>,
    names: [&'static str; 2],
    tallies: [Arc<Tally>; 2],
    schedule: Arc<Schedule>,
    started: Instant,
    duration: Duration,
    lb_idle: Option<Duration>,
) {
    let total_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let bar = console.bar(total_ms, "  {bar:40} {msg}");
    let lines: Vec<_> = names.iter().map(|_| console.status_line()).collect();
    let tick = if console.is_live() {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(10)
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next_gap = 0;
    let mut next_status = tick;
    loop {
        ticker.tick().await;
        let elapsed = started.elapsed();
        while let Some((start, end)) = schedule.gaps.get(next_gap).copied() {
            if start > elapsed {
                break;
            }
            next_gap += 1;
            let note = match lb_idle {
                Some(lb) if end - start > lb => format!(
                    ": longer than the load balancer's {} idle timeout",
                    human(lb)
                ),
                Some(_) => ": shorter than the idle timeout".to_owned(),
                None => String::new(),
            };
            console.line(format!(
                "{}  workers pause for {}{note}",
                stamp(start),
                human(end - start)
            ));
        }
        let status: Vec<String> = names
            .iter()
            .zip(&tallies)
            .map(|(name, tally)| {
                let c = tally.counts();
                format!(
                    "{name:>10}: {:>7} requests {:>5} failures {:>5} retries",
                    c.requests, c.failures, c.retries
                )
            })
            .collect();
        if console.is_live() {
            bar.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
            let phase = if schedule.gap_end(elapsed).is_some() {
                "idle gap"
            } else {
                "busy"
            };
            bar.set_message(format!(
                "{:.1} s / {} · {phase}",
                elapsed.as_secs_f64(),
                human(duration)
            ));
            for (line, text) in lines.iter().zip(&status) {
                line.set_message(text.clone());
            }
        } else if elapsed >= next_status {
            next_status += tick;
            console.line(format!("{}  {}", stamp(elapsed), status.join(" |")));
        }
    }
}

/// Checks that the upstream answers in its protocol before the run starts; over
/// HTTP, returns the `Keep-Alive: timeout` its answer announced.
async fn preflight(addr: &str, protocol: Protocol) -> Result<Option<Duration>, DemoError> {
    let fail = |reason: String| DemoError::Target {
        addr: addr.to_owned(),
        protocol,
        reason,
    };
    let answered = tokio::time::timeout(PREFLIGHT_TIMEOUT, async {
        let mut announced = None;
        match protocol {
            Protocol::Kv => {
                let stream = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("could not connect: {e}"))?;
                let mut conn = BufStream::new(stream);
                crate::kv::ping(&mut conn).await.map_err(|e| {
                    format!(
                        "connected, but PING got no PONG ({e}): is it the demo's key-value \
                         server? (use --protocol redis for Redis)"
                    )
                })?;
            }
            Protocol::Redis => {
                let client = redis::Client::open(format!("redis://{addr}/0"))
                    .map_err(|e| format!("not a usable address: {e}"))?;
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| format!("could not open a Redis connection: {e}"))?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .map_err(|e| format!("connected, but PING failed: {e}"))?;
            }
            Protocol::Http => {
                announced = http::announced_keep_alive(addr)
                    .await
                    .map_err(|e| format!("GET / got no HTTP answer: {e}"))?;
            }
        }
        Ok::<_, String>(announced)
    })
    .await;
    match answered {
        Ok(Ok(announced)) => Ok(announced),
        Ok(Err(reason)) => Err(fail(reason)),
        Err(_) => Err(fail(format!(
            "no answer within {}: is it up, and does it speak {protocol}?",
            human(PREFLIGHT_TIMEOUT)
        ))),
    }
}
