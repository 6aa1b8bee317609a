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
//! [`run`] returns a [`Report`]: per pool, the requests, the failures the application
//! saw, the retries, the connections lost by cause and phase (steadypool's from its
//! own metrics), latencies, and what each proxy injected; and what steadypool learned
//! about the path's idle limit, with the settings it recommends.

mod clients;
mod report;
mod tally;
mod workload;

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use steadypool::chaos::{ChaosError, ChaosProxy, Faults, IdleClose, Latency};
use steadypool::diagnosis::human;
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::clients::Client;
pub(crate) use self::clients::Protocol;
use self::report::PoolMetrics;
pub(crate) use self::report::{FaultSummary, Learned, PoolReport, Report, ScheduleSummary};
use self::tally::Tally;
use self::workload::{Requests, Schedule};
use crate::console::{Console, Verbosity, parse_duration};
use crate::recommend::ClosedBy;

/// How long steadypool's reaper may take to find what the proxy did last: its
/// default interval, and a margin.
const DRAIN: Duration = Duration::from_millis(1300);
/// How long workers may take to finish their request after Ctrl-C.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long the checks of a `--target` may take.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(3);
/// Added latency per chunk with `latency` on.
const LATENCY: Latency = Latency::new(Duration::from_millis(1), Duration::from_millis(2));

/// Which faults the proxies inject, and the workload's idle gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FaultSet {
    /// The load balancer's idle timeout, and how it closes.
    pub(crate) idle: Option<ClosedBy>,
    /// Resets mid-request.
    pub(crate) resets: bool,
    /// Upstream crashes.
    pub(crate) crash: bool,
    /// Idle gaps in the workload.
    pub(crate) gaps: bool,
    /// Added latency.
    pub(crate) latency: bool,
}

impl FaultSet {
    /// No faults, no gaps.
    pub(crate) const NONE: FaultSet = FaultSet {
        idle: None,
        resets: false,
        crash: false,
        gaps: false,
        latency: false,
    };

    /// Whether any fault needs a chaos proxy in the path.
    pub(crate) fn needs_proxy(&self) -> bool {
        self.idle.is_some() || self.resets || self.crash || self.latency
    }

    fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        match self.idle {
            Some(ClosedBy::Fin) => names.push("idle-fin"),
            Some(_) => names.push("idle"),
            None => {}
        }
        for (on, name) in [
            (self.resets, "resets"),
            (self.crash, "crash"),
            (self.gaps, "gaps"),
            (self.latency, "latency"),
        ] {
            if on {
                names.push(name);
            }
        }
        names
    }
}

impl Default for FaultSet {
    /// `idle,resets,crash,gaps`: production, scaled down.
    fn default() -> Self {
        FaultSet {
            idle: Some(ClosedBy::Rst),
            resets: true,
            crash: true,
            gaps: true,
            latency: false,
        }
    }
}

impl FromStr for FaultSet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut set = FaultSet::NONE;
        for name in text.split(',').map(str::trim) {
            match name {
                "idle" => set.idle = Some(ClosedBy::Rst),
                "idle-fin" => set.idle = Some(ClosedBy::Fin),
                "resets" => set.resets = true,
                "crash" => set.crash = true,
                "gaps" => set.gaps = true,
                "latency" => set.latency = true,
                "all" => {
                    set = FaultSet {
                        latency: true,
                        ..FaultSet::default()
                    }
                }
                "none" => {}
                other => {
                    return Err(format!(
                        "unknown fault {other:?}: choose from idle, idle-fin, resets, crash, \
                         gaps, latency, all, none (comma separated)"
                    ));
                }
            }
        }
        Ok(set)
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// Where the demo's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The embedded key-value server.
    Embedded,
    /// A server you run, at `host:port`.
    Remote {
        /// `host:port`.
        addr: String,
        /// What it speaks.
        protocol: Protocol,
    },
}

/// Everything a run needs. [`DemoArgs`] builds one from the command line.
#[derive(Debug, Clone)]
pub(crate) struct DemoConfig {
    /// How long the workload runs. Default 30 s.
    pub(crate) duration: Duration,
    /// Workers per pool, and each pool's `max_size`. Default 8.
    pub(crate) concurrency: usize,
    /// Which faults. Default [`FaultSet::default`].
    pub(crate) faults: FaultSet,
    /// The seed of the workload and of both proxies. Default 7.
    pub(crate) seed: u64,
    /// Where requests go. Default [`Target::Embedded`].
    pub(crate) target: Target,
    /// The load balancer's idle timeout. Default 2 s.
    pub(crate) lb_idle_timeout: Duration,
    /// The share of requests reset mid-request. Default 0.01.
    pub(crate) reset_rate: f64,
    /// The time between upstream crashes. Default 10 s.
    pub(crate) crash_every: Duration,
    /// What to print while running. Default [`Verbosity::Auto`].
    pub(crate) verbosity: Verbosity,
}

/// The demo's command line.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How long to run the workload (e.g. 5s, 30s, 2min).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Workers per pool (and each pool's max_size).
    #[arg(long, default_value_t = 8)]
    pub(crate) concurrency: usize,
    /// Faults to inject, comma separated: idle (load balancer idle timeout, RST),
    /// idle-fin (the same with FIN), resets (mid-request), crash (upstream), gaps
    /// (idle gaps in the workload), latency; or all, none.
    #[arg(long, default_value = "idle,resets,crash,gaps")]
    pub(crate) faults: FaultSet,
    /// Seed for the workload and the faults.
    #[arg(long, default_value_t = 7)]
    pub(crate) seed: u64,
    /// Print a JSON summary on standard output instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Run against your own server at HOST:PORT instead of the embedded one (the chaos
    /// proxies still sit in between, unless --faults none).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) target: Option<String>,
    /// What the --target speaks: kv (the demo's key-value protocol) or redis.
    #[arg(long, value_enum, default_value_t = Protocol::Kv)]
    pub(crate) protocol: Protocol,
    /// The load balancer's idle timeout.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) lb_idle_timeout: Duration,
    /// The share of requests reset mid-request (0 to 0.5).
    #[arg(long, default_value_t = 0.01)]
    pub(crate) reset_rate: f64,
    /// The time between upstream crashes.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) crash_every: Duration,
    /// Print nothing while running.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

impl DemoArgs {
    /// Checks the values and turns them into a [`DemoConfig`].
    ///
    /// # Errors
    /// [`DemoError::Config`] saying which value is wrong and what is allowed.
    pub(crate) fn config(&self) -> Result<DemoConfig, DemoError> {
        if !(1..=256).contains(&self.concurrency) {
            return Err(DemoError::Config(format!(
                "--concurrency {} is out of range: use 1 to 256",
                self.concurrency
            )));
        }
        if !(0.0..=0.5).contains(&self.reset_rate) {
            return Err(DemoError::Config(format!(
                "--reset-rate {} is out of range: use 0 to 0.5 (0.01 is 1 % of requests)",
                self.reset_rate
            )));
        }
        if self.lb_idle_timeout < Duration::from_secs(1) {
            return Err(DemoError::Config(format!(
                "--lb-idle-timeout {} is too short: use 1s or more (idle times under 1 s teach \
                 steadypool nothing about a path)",
                human(self.lb_idle_timeout)
            )));
        }
        let target = match (&self.target, self.protocol) {
            (Some(addr), protocol) => {
                if !addr.contains(':') {
                    return Err(DemoError::Config(format!(
                        "--target {addr:?} needs a port: write HOST:PORT"
                    )));
                }
                Target::Remote {
                    addr: addr.clone(),
                    protocol,
                }
            }
            (None, Protocol::Kv) => Target::Embedded,
            (None, protocol) => {
                return Err(DemoError::Config(format!(
                    "--protocol {protocol} needs --target HOST:PORT: the embedded server speaks \
                     the demo's key-value protocol"
                )));
            }
        };
        Ok(DemoConfig {
            duration: self.duration,
            concurrency: self.concurrency,
            faults: self.faults,
            seed: self.seed,
            target,
            lb_idle_timeout: self.lb_idle_timeout,
            reset_rate: self.reset_rate,
            crash_every: self.crash_every,
            verbosity: if self.quiet {
                Verbosity::Quiet
            } else {
                Verbosity::Auto
            },
        })
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum DemoError {
    /// A flag's value is out of range or inconsistent.
    #[error("{0}")]
    Config(String),
    /// The embedded server could not listen.
    #[error("could not start the embedded key-value server: {0}")]
    Server(#[source] std::io::Error),
    /// A chaos proxy could not start.
    #[error("could not start the chaos proxy: {0}")]
    Proxy(#[from] ChaosError),
    /// The `--target` is unreachable or does not speak the protocol.
    #[error("--target {addr} ({protocol}): {reason}")]
    Target {
        /// The target.
        addr: String,
        /// The protocol it was expected to speak.
        protocol: Protocol,
        /// What went wrong.
        reason: String,
    },
    /// A pool could not be built.
    #[error("could not set up the pools: {0}")]
    Setup(String),
}

impl DemoError {
    /// The process exit code for this error: 2 for bad flags, 1 otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            DemoError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// The names of the two pools, in the report's order.
const POOLS: [&str; 2] = ["steadypool", "deadpool"];

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
    let (server, upstream, protocol, target_text) = match &config.target {
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
            preflight(addr, *protocol).await?;
            (None, addr.clone(), *protocol, addr.clone())
        }
    };
    let proxies = if config.faults.needs_proxy() {
        let faults = chaos_faults(&config);
        let mut proxies = Vec::new();
        for _ in POOLS {
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
    };
    let clients = [steady, plain];

    let schedule = Arc::new(Schedule::new(
        config.duration,
        config.lb_idle_timeout,
        config.seed,
        config.faults.gaps,
        config.faults.crash.then_some(config.crash_every),
    ));
    let tallies: [Arc<Tally>; 2] = [Arc::new(Tally::new()), Arc::new(Tally::new())];
    let key_prefix = match protocol {
        Protocol::Kv => "key:",
        Protocol::Redis => "steadypool-demo:",
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
            workers.spawn(work(
                Arc::clone(client),
                Arc::clone(tally),
                Arc::clone(&schedule),
                Requests::new(config.seed, worker, key_prefix),
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
    let metrics = clients[0].stats().map(|stats| PoolMetrics::read(&stats));
    let learned = clients[0].idle_limit();
    let chaos = |i: usize| proxies.as_ref().map(|p| p[i].stats());
    let steady_report = PoolReport::new(POOLS[0], tallies[0].totals(), metrics, chaos(0));
    let plain_report = PoolReport::new(POOLS[1], tallies[1].totals(), None, chaos(1));
    let closed_by = steady_report.idle_closes().or(config.faults.idle);
    for client in &clients {
        client.close();
    }
    drop(proxies);
    drop(server);

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
    })
}

async fn drain(set: &mut JoinSet<()>) {
    while set.join_next().await.is_some() {}
}

fn chaos_faults(config: &DemoConfig) -> Faults {
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
        latency: f.latency.then_some(LATENCY),
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
                let outcome = client.call(op).await;
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
    tallies: [Arc<Tally>; 2],
    schedule: Arc<Schedule>,
    started: Instant,
    duration: Duration,
    lb_idle: Option<Duration>,
) {
    let total_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let bar = console.bar(total_ms, "  {bar:40} {msg}");
    let lines: Vec<_> = POOLS.iter().map(|_| console.status_line()).collect();
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
        let status: Vec<String> = POOLS
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

/// Checks that a `--target` answers in its protocol before the run starts.
async fn preflight(addr: &str, protocol: Protocol) -> Result<(), DemoError> {
    let fail = |reason: String| DemoError::Target {
        addr: addr.to_owned(),
        protocol,
        reason,
    };
    let answered = tokio::time::timeout(PREFLIGHT_TIMEOUT, async {
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
        }
        Ok::<(), String>(())
    })
    .await;
    match answered {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(fail(reason)),
        Err(_) => Err(fail(format!(
            "no answer within {}: is it up, and does it speak {protocol}?",
            human(PREFLIGHT_TIMEOUT)
        ))),
    }
}

impl crate::outcome::Failure for DemoError {
    fn exit_code(&self) -> u8 {
        DemoError::exit_code(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_sets_read_and_print_as_their_flag() {
        let faults: FaultSet = "idle-fin,crash".parse().unwrap();
        assert!(faults.crash && !faults.resets && !faults.gaps);
        assert_eq!(faults.to_string(), "idle-fin,crash");
        assert!(
            "idle,flood"
                .parse::<FaultSet>()
                .unwrap_err()
                .contains("flood")
        );
        assert_eq!(
            "all".parse::<FaultSet>().unwrap().to_string(),
            "idle,resets,crash,gaps,latency"
        );
    }
}
