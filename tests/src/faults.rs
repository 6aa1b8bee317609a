//! What the fault-under-load tests share, whatever the driver: a pool set up to be
//! watched through a fault, a retry policy that rides out an outage, the checks after
//! the load stopped (no request failed, every reset has an allowed cause, nothing left
//! in use or in `CLOSE_WAIT`), and the timing they allow.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use steadypool::{Pool, ResetCause};
//! use steadypool_tests::faults::{self, Allowed};
//! use steadypool_tests::line_manager::{LineManager, request};
//! use steadypool_tests::load::Load;
//! use steadypool_tests::servers::LineServer;
//!
//! let server = LineServer::start().await.unwrap();
//! let builder = faults::watched(LineManager::new(server.addr()), "example", 4)
//!     .retry_policy(faults::ride_out_an_outage());
//! let pool = builder.build().unwrap();
//! let load = {
//!     let pool = pool.clone();
//!     Load::start(4, move |_, _| {
//!         let pool = pool.clone();
//!         async move { pool.run_idempotent(async |conn| request(conn, "PING").await).await.map(drop) }
//!     })
//! };
//! assert!(load.until_succeeded(100, faults::SLACK).await);
//! faults::stop_without_failures(load, &pool, "example").await;
//! faults::assert_resets_only(&pool.stats(), "example", &[Allowed::any_phase(ResetCause::PeerReset)]);
//! faults::assert_settled(&pool, server.addr().port()).await;
//! # }
//! ```

use std::time::Duration;

use steadypool::{Error, Manager, Phase, Pool, PoolBuilder, ResetCause, RetryPolicy, Stats};

use crate::load::{Load, Outcome};
use crate::recorded::Books;
use crate::sockets;

/// How often the reaper of a [`watched`] pool runs.
pub const TICK: Duration = Duration::from_millis(200);
/// Generous room for timing on a loaded 2-core machine.
pub const SLACK: Duration = Duration::from_secs(15);

/// A pool of at most `size` connections named `name`, whose reaper looks every
/// [`TICK`] and which does not learn an idle limit: the connections a fault closes
/// are the fault's, not a limit to learn.
pub fn watched<M: Manager>(manager: M, name: &str, size: usize) -> PoolBuilder<M> {
    Pool::builder(manager)
        .name(name)
        .max_size(size)
        .reaper_interval(TICK)
        .learn_idle_limit(false)
}

/// Enough attempts, time and budget to ride out an outage of a few seconds (a
/// restart, a firewall rule): the budget's own job, shedding retries in a long
/// outage, is tested elsewhere.
///
/// ```
/// let policy = steadypool_tests::faults::ride_out_an_outage();
/// # drop(policy);
/// ```
pub fn ride_out_an_outage() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(100)
        .deadline(Duration::from_secs(30))
        .backoff(Duration::from_millis(10), Duration::from_millis(250))
        .budget(1.0, 1_000)
}

/// Stops `load`, prints what `pool` went through under the title `what`, and checks
/// that no request failed.
///
/// # Panics
/// When a request failed (the message lists the first errors).
pub async fn stop_without_failures<M: Manager>(load: Load, pool: &Pool<M>, what: &str) -> Outcome {
    let outcome = load.stop().await;
    pool.stats().report(what);
    eprintln!(
        "{what}: {} requests succeeded, {} failed",
        outcome.succeeded, outcome.failed
    );
    assert_eq!(outcome.failed, 0, "{what}: {:#?}", outcome.errors);
    outcome
}

/// Checks that nothing is in use or waiting in `pool`, and that no socket of this
/// process to `port` stays in `CLOSE_WAIT` beyond one reaper round and [`SLACK`].
///
/// # Panics
/// When a connection is still in use, a checkout still waits, or a socket lingers.
pub async fn assert_settled<M: Manager>(pool: &Pool<M>, port: u16) {
    let status = pool.status();
    assert_eq!((status.in_use, status.waiting), (0, 0), "{status:?}");
    sockets::assert_close_wait_cleared(port, TICK + SLACK).await;
}

/// A cause of reset a fault may leave, in one phase or in any.
#[derive(Debug, Clone, Copy)]
pub struct Allowed {
    cause: ResetCause,
    phase: Option<Phase>,
}

impl Allowed {
    /// `cause`, in whatever phase.
    pub const fn any_phase(cause: ResetCause) -> Allowed {
        Allowed { cause, phase: None }
    }

    /// `cause`, only in `phase`.
    pub const fn in_phase(cause: ResetCause, phase: Phase) -> Allowed {
        Allowed {
            cause,
            phase: Some(phase),
        }
    }

    fn counted(self, stats: &Stats) -> u64 {
        match self.phase {
            Some(phase) => stats.resets(self.cause, phase),
            None => stats.resets_with_cause(self.cause),
        }
    }
}

/// Checks that every reset a pool's books (`stats`, from `Pool::stats`) counted is
/// one of `allowed`, and returns how many there were.
///
/// # Panics
/// When a reset has another cause or phase (the message shows every one counted).
pub fn assert_resets_only(stats: &Stats, what: &str, allowed: &[Allowed]) -> u64 {
    let accounted: u64 = allowed.iter().map(|a| a.counted(stats)).sum();
    assert_eq!(
        stats.all_resets(),
        accounted,
        "{what}: a reset other than {allowed:?}: {:?}",
        stats.reset_table()
    );
    accounted
}

/// Checks that a checkout failed as a refused connect.
///
/// # Panics
/// When it succeeded or failed otherwise.
///
/// ```no_run
/// # #[tokio::main] async fn main() {
/// use steadypool::{Pool, drivers::tcp::TcpManager};
///
/// // Port 9 (discard) has no listener here.
/// let pool = Pool::builder(TcpManager::new("127.0.0.1:9")).build().unwrap();
/// steadypool_tests::faults::assert_refused(pool.get().await);
/// # }
/// ```
pub fn assert_refused<T, E: std::error::Error>(result: Result<T, Error<E>>) {
    match result {
        Err(Error::Connect {
            cause: ResetCause::Refused,
            ..
        }) => {}
        Err(other) => panic!("expected a refused connect, got {other}"),
        Ok(_) => panic!("expected a refused connect, got a connection"),
    }
}

/// Waits until `pool` dropped every connection to a server that went away, and checks
/// that each of the `n` it held was counted as closed or reset by the peer, and
/// nothing else was.
///
/// # Panics
/// When connections stay in the pool for [`SLACK`], or the counts differ.
pub async fn assert_emptied_by_the_peer<M: Manager>(pool: &Pool<M>, n: u64) {
    assert!(
        crate::eventually(SLACK, || pool.status().size == 0).await,
        "connections to the departed server stayed in the pool: {:?}",
        pool.status()
    );
    let closed = assert_resets_only(
        &pool.stats(),
        "a departed server",
        &[
            Allowed::any_phase(ResetCause::PeerClosed),
            Allowed::any_phase(ResetCause::PeerReset),
        ],
    );
    assert_eq!(
        closed, n,
        "every connection counted as peer_closed or peer_reset"
    );
}
