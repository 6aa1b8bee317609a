//! The idle probe: finds how long connections to a server may sit idle before the
//! path (a load balancer, NAT, firewall, or the server itself) closes them, and
//! prints the steadypool settings that stay clear of it.
//!
//! ```text
//! cargo run -p steadypool-examples --example idle-probe -- 127.0.0.1:6379 --protocol redis
//! cargo run -p steadypool-examples --example idle-probe -- db.internal:5432 --protocol postgres --max-time 5min
//! ```
//!
//! See `steadypool_examples::idle_probe` for how it works, and `--help` for every flag.

use std::process::ExitCode;

use clap::Parser;
use steadypool_examples::idle_probe::{self, ProbeArgs};
use steadypool_examples::outcome;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ProbeArgs::parse();
    let result = match args.config() {
        Ok(config) => idle_probe::run(config).await,
        Err(err) => Err(err),
    };
    outcome::finish(result, args.json)
}
