//! Checks connections out of one pool, with one task on a current-thread runtime: a
//! fixed amount of work whose instructions valgrind can count.
//!
//! Wall time on a shared virtual machine drifts by 10 to 30 % between runs and
//! settles into different levels (BENCHMARKS.md); the number of instructions a
//! checkout executes does not. Run the loop twice under callgrind with different
//! counts: the difference in instructions over the difference in checkouts is what
//! one checkout costs, with the set-up (server, pool, connects) cancelled out.
//!
//! ```text
//! cargo build --release -p steadypool-benches --bin checkout-loop
//! for n in 100000 300000; do
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!         target/release/checkout-loop --pool deadpool-bare --checkouts $n 2>&1 | grep Collected
//! done
//! ```

use std::process::ExitCode;

use clap::Parser;
use steadypool_benches::BenchError;
use steadypool_benches::checkout;
use steadypool_benches::echo::EchoServer;
use steadypool_benches::pools::Kind;

/// One pool's checkout loop, for counting instructions.
#[derive(Debug, Parser)]
#[command(name = "checkout-loop")]
struct Args {
    /// The pool, by its label in the results (steadypool, deadpool-bare, bb8-nocheck, ...).
    #[arg(long, default_value = "steadypool")]
    pool: String,
    /// Checkouts to run, after the pool's connections are open.
    #[arg(long, default_value_t = 100_000)]
    checkouts: u64,
    /// Connections in the pool.
    #[arg(long, default_value_t = 8)]
    size: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(kind) = Kind::ALL.into_iter().find(|k| k.label() == args.pool) else {
        let known: Vec<_> = Kind::ALL.iter().map(|k| k.label()).collect();
        eprintln!(
            "checkout-loop: unknown pool {:?}; one of {}",
            args.pool,
            known.join(", ")
        );
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("checkout-loop: no tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(kind, &args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("checkout-loop: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(kind: Kind, args: &Args) -> Result<(), BenchError> {
    let server = EchoServer::start().await?;
    let pool = checkout::prepare(kind, server.addr(), args.size).await?;
    let took = checkout::run(kind, &pool, 1, args.checkouts).await?;
    println!(
        "{} {} checkouts, {:.0} ns each",
        kind.label(),
        args.checkouts,
        took.as_secs_f64() * 1e9 / args.checkouts.max(1) as f64
    );
    Ok(())
}
