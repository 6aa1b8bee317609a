//! The demo: production's connection resets, scaled down to half a minute, hitting
//! steadypool and a plain deadpool pool side by side.
//!
//! ```text
//! cargo run -p steadypool-examples --example demo
//! cargo run -p steadypool-examples --example demo -- --duration 5s --json
//! cargo run -p steadypool-examples --example demo -- --target 127.0.0.1:6379 --protocol redis
//! ```
//!
//! See `steadypool_examples::demo` for what it does, and `--help` for every flag.

use std::process::ExitCode;

use clap::Parser;
use steadypool_examples::demo::{self, DemoArgs};
use steadypool_examples::outcome;

#[tokio::main]
async fn main() -> ExitCode {
    let args = DemoArgs::parse();
    let config = match args.config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(err.exit_code());
        }
    };
    let interrupt = async {
        // Without a Ctrl-C handler the run simply cannot be interrupted early.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    outcome::finish(demo::run(config, interrupt).await, args.json)
}
