//! Fixtures for the system tests: real servers on loopback and a manager for them, the
//! kernel's view of this process's sockets, and the metrics a pool recorded; real
//! PostgreSQL and Redis servers, private network namespaces for kernel-level faults,
//! what the machine offers (with the rule for skipping when it lacks something), a
//! manager that misbehaves on command, a server that counts how many times each
//! request ran, with a fault chosen per request, Node.js and HAProxy for the HTTP
//! driver, and the `steadypool` tool, built and run as a process.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub mod exec_server;
pub mod faults;
pub mod flaky;
pub mod host;
pub mod http;
pub mod ledger;
pub mod line_manager;
mod lines;
pub mod load;
pub mod netns;
pub mod postgres;
pub mod recorded;
pub mod redis;
pub mod servers;
pub mod sockets;
pub mod tls;
pub mod tool;
pub mod unreliable;

/// The README's complete programs (its `rust` and `rust,no_run` blocks), compiled as
/// doctests, so that a change of the API cannot leave them behind. Its fragments of
/// a larger program are marked `ignore`: they are not compiled.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct Readme;

/// Checks `condition` every 10 ms until it holds or `within` passes; returns whether
/// it held. Timing-dependent tests wait with a generous `within` instead of sleeping a
/// guessed amount.
pub async fn eventually(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Locks `mutex`, also after a panic elsewhere poisoned it: a fixture's books must
/// still be readable by the test that reports the failure.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
