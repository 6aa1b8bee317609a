//! Runs every benchmark scenario of steadypool against its peers and prints one JSON
//! line per measured value (scenario, case, pool, metric, value, ratio to steadypool).
//!
//! ```text
//! cargo run --release -p steadypool-benches --bin bench-all -- --quick
//! cargo run --release -p steadypool-benches --bin bench-all -- --full --plots benches/plots --tables tables.md
//! ```

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use steadypool_benches::BenchError;
use steadypool_benches::dead_peer::{self, Hole};
use steadypool_benches::pools::Kind;
use steadypool_benches::report::{self, Record};
use steadypool_benches::{checkout, goodput, http, storm};

/// steadypool against deadpool, bb8, mobc and r2d2: checkout cost, goodput under
/// faults, dead-peer detection and reconnect storms; its HTTP client against reqwest
/// and hyper-util's across the keep-alive race.
#[derive(Debug, Parser)]
#[command(name = "bench-all")]
struct Args {
    /// Short runs (the default): all scenarios in a few minutes.
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// Longer runs, for publishing.
    #[arg(long)]
    full: bool,
    /// Only these scenarios (checkout, goodput, dead-peer, storm, outage, http); all by
    /// default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only these pools (labels as in the results, e.g. steadypool,bb8-ping); all by
    /// default.
    #[arg(long, value_delimiter = ',')]
    pools: Vec<String>,
    /// Checkout: only these pool sizes (default 8,32). Sizes whose connections do not
    /// fit under the open-file limit are refused before anything runs.
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Checkout: only these task counts (default 1,16,64,256).
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<usize>,
    /// Tiny sizes, to check that everything runs (seconds, not minutes).
    #[arg(long, hide = true)]
    smoke: bool,
    /// Write the plots (SVG) into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Write the markdown tables into this file.
    #[arg(long)]
    tables: Option<PathBuf>,
    /// Make the dead-peer black hole with the chaos proxy even where iptables works.
    #[arg(long, hide = true)]
    chaos_hole: bool,
    /// Internal: run the dead-peer scenario in this process, which `unshare --net`
    /// started in a network namespace of its own, waiting at most this many seconds.
    #[arg(long, hide = true)]
    dead_peer_child: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Smoke,
    Quick,
    Full,
}

impl Args {
    fn mode(&self) -> Mode {
        if self.smoke {
            Mode::Smoke
        } else if self.full {
            Mode::Full
        } else {
            Mode::Quick
        }
    }

    fn wants_pool(&self, label: &str) -> bool {
        self.pools.is_empty() || self.pools.iter().any(|p| p == label)
    }

    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

fn checkout_settings(mode: Mode) -> checkout::Settings {
    match mode {
        Mode::Smoke => checkout::Settings {
            sizes: checkout::POOL_SIZES.to_vec(),
            tasks: checkout::TASKS.to_vec(),
            warm_up: Duration::from_millis(5),
            batch: Duration::from_millis(5),
            batches: 1,
        },
        Mode::Quick => checkout::Settings {
            sizes: checkout::POOL_SIZES.to_vec(),
            tasks: checkout::TASKS.to_vec(),
            warm_up: Duration::from_millis(100),
            batch: Duration::from_millis(40),
            batches: 5,
        },
        Mode::Full => checkout::Settings {
            sizes: checkout::POOL_SIZES.to_vec(),
            tasks: checkout::TASKS.to_vec(),
            warm_up: Duration::from_millis(500),
            batch: Duration::from_millis(100),
            batches: 15,
        },
    }
}

fn goodput_settings(mode: Mode) -> goodput::Settings {
    match mode {
        Mode::Smoke => goodput::Settings {
            requests: 300,
            tasks: 16,
            pool_size: 8,
            seeds: vec![1],
        },
        Mode::Quick => goodput::Settings {
            requests: 10_000,
            tasks: 64,
            pool_size: 16,
            seeds: vec![1],
        },
        Mode::Full => goodput::Settings {
            requests: 10_000,
            tasks: 64,
            pool_size: 16,
            seeds: vec![1, 2, 3],
        },
    }
}

fn http_settings(mode: Mode) -> http::Settings {
    match mode {
        Mode::Smoke => http::Settings {
            workers: 4,
            duration: Duration::from_secs(3),
            happy_requests: 200,
        },
        Mode::Quick => http::Settings {
            workers: 32,
            duration: Duration::from_secs(12),
            happy_requests: 3000,
        },
        Mode::Full => http::Settings {
            workers: 32,
            duration: Duration::from_secs(40),
            happy_requests: 10_000,
        },
    }
}

/// Carries the starting process's network namespace into the dead-peer run, which
/// checks that it runs somewhere else before it adds a firewall rule.
const OUTSIDE_NAMESPACE: &str = "STEADYPOOL_BENCH_OUTSIDE_NETNS";

fn dead_peer_cap(mode: Mode) -> Duration {
    match mode {
        Mode::Smoke => Duration::from_secs(3),
        Mode::Quick => Duration::from_secs(35),
        Mode::Full => Duration::from_secs(60),
    }
}

fn storm_settings(mode: Mode) -> storm::Settings {
    match mode {
        Mode::Smoke => storm::Settings {
            pools: 5,
            size: 4,
            workers: 4,
            tick: Duration::from_millis(100),
            before: Duration::from_millis(500),
            down_for: Duration::from_millis(500),
            after: Duration::from_secs(1),
        },
        Mode::Quick => storm::Settings {
            pools: 50,
            size: 8,
            workers: 8,
            tick: Duration::from_millis(100),
            before: Duration::from_secs(1),
            down_for: Duration::from_secs(2),
            after: Duration::from_secs(4),
        },
        Mode::Full => storm::Settings {
            pools: 50,
            size: 8,
            workers: 8,
            tick: Duration::from_millis(100),
            before: Duration::from_secs(2),
            down_for: Duration::from_secs(5),
            after: Duration::from_secs(8),
        },
    }
}

/// The outages the fleet of the storm goes through: a short restart and a long
/// outage, each with the storm's 1 s cap per request, and a 1 s outage under a 5 s
/// cap, which a request may wait out.
fn storm_outages(mode: Mode) -> Vec<storm::Outage> {
    let outage = |down_ms, cap_s| storm::Outage {
        down_for: Duration::from_millis(down_ms),
        request_timeout: Duration::from_secs(cap_s),
    };
    match mode {
        Mode::Smoke => vec![outage(500, 1), outage(1_000, 2)],
        Mode::Quick => vec![outage(500, 1), outage(10_000, 1), outage(1_000, 5)],
        Mode::Full => vec![outage(500, 1), outage(30_000, 1), outage(1_000, 5)],
    }
}

/// Runs the dead-peer scenario with an iptables black hole in a child process that
/// lives in a network namespace of its own, or with the chaos proxy's black hole
/// when that is not possible here.
async fn dead_peer(cap: Duration, force_chaos: bool) -> Result<Vec<Record>, BenchError> {
    if force_chaos {
        return dead_peer::measure(Hole::Chaos, cap).await;
    }
    if !dead_peer::netns_available() {
        eprintln!(
            "dead-peer: NOTE: no network namespace with iptables here (needs root, unshare, ip, \
             iptables); using the chaos proxy's black hole, which keepalive cannot see"
        );
        return dead_peer::measure(Hole::Chaos, cap).await;
    }
    let exe = std::env::current_exe()?;
    let child = tokio::process::Command::new("unshare")
        .env(OUTSIDE_NAMESPACE, dead_peer::namespace_id()?)
        .arg("--net")
        .arg("--")
        .arg(exe)
        .arg("--dead-peer-child")
        .arg(cap.as_secs().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()?;
    let output = child.wait_with_output().await?;
    if !output.status.success() {
        return Err(BenchError::Command {
            command: "unshare --net -- bench-all --dead-peer-child".to_owned(),
            message: output.status.to_string(),
        });
    }
    let mut records = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        records.push(serde_json::from_str(line)?);
    }
    Ok(records)
}

async fn run(args: &Args) -> Result<Vec<Record>, BenchError> {
    let mode = args.mode();
    let mut records = Vec::new();
    if args.wants("checkout") {
        let kinds: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|k| args.wants_pool(k.label()))
            .collect();
        let mut settings = checkout_settings(mode);
        if !args.sizes.is_empty() {
            settings.sizes.clone_from(&args.sizes);
        }
        if !args.tasks.is_empty() {
            settings.tasks.clone_from(&args.tasks);
        }
        records.extend(checkout::scenario(settings, &kinds).await?);
    }
    if args.wants("goodput") {
        let contenders: Vec<goodput::Contender> = goodput::CONTENDERS
            .into_iter()
            .filter(|c| args.wants_pool(&c.label()))
            .collect();
        let (found, runs) = goodput::scenario(&goodput_settings(mode), &contenders).await?;
        records.extend(found);
        if let Some(dir) = &args.plots {
            steadypool_benches::plot::goodput(dir, &runs)?;
        }
    }
    if args.wants("dead-peer") {
        records.extend(dead_peer(dead_peer_cap(mode), args.chaos_hole).await?);
    }
    if args.wants("storm") {
        let settings = storm_settings(mode);
        let kinds: Vec<Kind> = storm::KINDS
            .into_iter()
            .filter(|k| args.wants_pool(k.label()))
            .collect();
        let (found, runs) = storm::scenario(settings, &kinds).await?;
        records.extend(found);
        if let Some(dir) = &args.plots {
            steadypool_benches::plot::storm(dir, &runs, settings.after)?;
        }
    }
    if args.wants("outage") {
        let contenders: Vec<_> = storm::OUTAGE_CONTENDERS
            .into_iter()
            .filter(|c| args.wants_pool(&c.label()))
            .collect();
        records
            .extend(storm::outages(storm_settings(mode), &storm_outages(mode), &contenders).await?);
    }
    if args.wants("http") {
        let contenders: Vec<http::Contender> = http::Contender::ALL
            .into_iter()
            .filter(|c| args.wants_pool(c.label()))
            .collect();
        let found = http::scenario(&http_settings(mode), &contenders).await?;
        if let Some(dir) = &args.plots {
            steadypool_benches::plot::http(dir, &found)?;
        }
        records.extend(found);
    }
    Ok(records)
}

async fn dead_peer_child(cap: Duration) -> Result<Vec<Record>, BenchError> {
    let outside = std::env::var(OUTSIDE_NAMESPACE).map_err(|_| {
        BenchError::Setup(format!(
            "{OUTSIDE_NAMESPACE} is not set: the dead-peer run is started by bench-all only"
        ))
    })?;
    dead_peer::prepare_namespace(&outside)?;
    dead_peer::measure(Hole::Iptables, cap).await
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match steadypool_benches::runtime() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("bench-all: could not start a tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(cap) = args.dead_peer_child {
        let outcome = runtime
            .block_on(dead_peer_child(Duration::from_secs(cap)))
            .and_then(|records| {
                let mut stdout = std::io::stdout().lock();
                for record in &records {
                    writeln!(stdout, "{}", record.to_json()?)?;
                }
                Ok(())
            });
        runtime.shutdown_timeout(Duration::from_secs(1));
        return match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("bench-all (dead-peer, in its namespace): {err}");
                ExitCode::FAILURE
            }
        };
    }
    let outcome = runtime.block_on(run(&args)).and_then(|mut records| {
        report::fill_ratios(&mut records);
        let mut stdout = std::io::stdout().lock();
        for record in &records {
            writeln!(stdout, "{}", record.to_json()?)?;
        }
        if let Some(path) = &args.tables {
            std::fs::write(path, report::markdown(&records))?;
        }
        Ok(())
    });
    // Blocked r2d2 threads must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-all: {err}");
            ExitCode::FAILURE
        }
    }
}
