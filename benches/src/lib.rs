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
