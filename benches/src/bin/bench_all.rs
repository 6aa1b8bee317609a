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
use steadypool_benches::report::{self, Record};
use steadypool_benches::{checkout, goodput};

/// steadypool against deadpool, bb8, mobc and r2d2: checkout cost, goodput under
/// faults, dead-peer detection and reconnect storms.
#[derive(Debug, Parser)]
#[command(name = "bench-all")]
struct Args {
    /// Short runs (the default): all scenarios in a few minutes.
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// Longer runs, for publishing.
    #[arg(long)]
    full: bool,
    /// Only these scenarios (checkout, goodput, dead-peer, storm); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Tiny sizes, to check that everything runs (seconds, not minutes).
    #[arg(long, hide = true)]
    smoke: bool,
    /// Write the plots (SVG) into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Write the markdown tables into this file.
    #[arg(long)]
    tables: Option<PathBuf>,
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

    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

fn checkout_settings(mode: Mode) -> checkout::Settings {
    match mode {
        Mode::Smoke => checkout::Settings {
            warm_up: Duration::from_millis(5),
            batch: Duration::from_millis(5),
            batches: 1,
        },
        Mode::Quick => checkout::Settings {
            warm_up: Duration::from_millis(100),
            batch: Duration::from_millis(40),
            batches: 5,
        },
        Mode::Full => checkout::Settings {
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

async fn run(args: &Args) -> Result<Vec<Record>, BenchError> {
    let mode = args.mode();
    let mut records = Vec::new();
    if args.wants("checkout") {
        let kinds = steadypool_benches::pools::Kind::ALL;
        records.extend(checkout::scenario(checkout_settings(mode), &kinds).await?);
    }
    if args.wants("goodput") {
        let (found, runs) = goodput::scenario(&goodput_settings(mode), &goodput::CONTENDERS).await?;
        records.extend(found);
        if let Some(dir) = &args.plots {
            steadypool_benches::plot::goodput(dir, &runs)?;
        }
    }
    Ok(records)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("bench-all: could not start a tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
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
