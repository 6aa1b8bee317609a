//! Workloads, pools and scenarios shared by the criterion benches and the `bench-all`
//! runner: steadypool side by side with deadpool, bb8, mobc and r2d2, on the same
//! loopback connections and under the same faults; and its HTTP client beside reqwest
//! and hyper-util's.
//!
//! See `BENCHMARKS.md` at the repository root for the scenarios, the commands and the
//! numbers.

pub mod checkout;
pub mod dead_peer;
pub mod echo;
mod error;
pub mod goodput;
pub mod http;
pub mod plot;
pub mod pools;
pub mod report;
pub mod stats;
pub mod storm;
pub mod wire;

pub use crate::error::BenchError;

/// The runtime every benchmark runs on: multi-threaded, two workers (the machines it
/// is published from have two cores), I/O and timers on.
///
/// # Errors
/// When the runtime cannot start.
///
/// ```
/// let runtime = steadypool_benches::runtime().unwrap();
/// runtime.block_on(async {});
/// ```
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
