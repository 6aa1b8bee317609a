//! `steadypool`: the pool's command-line companion.
//!
//! * `steadypool demo`: production's connection resets, scaled down to half a
//!   minute, hitting steadypool and a plain deadpool pool side by side
//!   (`--protocol http`: steadypool's HTTP client and reqwest, against Node.js).
//! * `steadypool idle-probe HOST:PORT`: finds how long connections to a server may
//!   sit idle before the path closes them, and the pool settings that stay clear of it
//!   (`http://HOST:PORT`: reads the Keep-Alive timeout the server announces, and
//!   verifies it).
//!
//! ```text
//! cargo install steadypool --features cli
//! steadypool demo --duration 10s
//! steadypool idle-probe 127.0.0.1:6379 --protocol redis --max-time 60s
//! steadypool demo --protocol http --duration 10s
//! steadypool idle-probe http://127.0.0.1:3000
//! ```
//!
//! Both print their summary on standard output (`--json` for a machine-readable
//! one), their progress on standard error, and exit with 2 on bad flags, 1 when the
//! run failed.

mod console;
mod demo;
mod idle_probe;
mod kv;
mod outcome;
mod recommend;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "steadypool",
    version,
    about = "steadypool's demo and idle probe",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Production's connection resets, scaled down: steadypool and a plain deadpool
    /// pool side by side (over HTTP: steadypool's client and reqwest).
    Demo(demo::DemoArgs),
    /// Finds how long connections to a server may sit idle before the path closes
    /// them, and the steadypool settings that stay clear of it.
    IdleProbe(idle_probe::ProbeArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo(args) => {
            let config = match args.config() {
                Ok(config) => config,
                Err(err) => return outcome::finish::<demo::Report, _>(Err(err), args.json),
            };
            let interrupt = async {
                // Without a Ctrl-C handler the run simply cannot be interrupted early.
                if tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            outcome::finish(demo::run(config, interrupt).await, args.json)
        }
        Command::IdleProbe(args) => {
            let result = match args.config() {
                Ok(config) => idle_probe::run(config).await,
                Err(err) => Err(err),
            };
            outcome::finish(result, args.json)
        }
    }
}

/// An error's message followed by its sources' messages, each once.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = inner.source();
    }
    text
}
