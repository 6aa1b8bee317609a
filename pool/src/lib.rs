//! # steadypool
//!
//! An async connection pool for TCP and database connections that survives the real
//! causes of `ECONNRESET` in production, and tells you which one struck.
//!
//! * **Every socket is tuned** ([`dial`]): TCP keepalive (10 s / 3 s / 3) and
//!   `TCP_USER_TIMEOUT` find dead peers and black holes in seconds, not the kernel's
//!   two hours; `TCP_NODELAY` is on; connects time out.
//! * **Checkout never hands out a zombie** ([`probe`]): a connection the peer closed or
//!   reset while it sat idle is discarded before you see it, at the cost of an atomic
//!   load; connections idle past `check_after` are also pinged.
//! * **A reaper** closes dead and expired idle connections every second, and keeps
//!   `min_idle` ready.
//! * **Every discarded connection is labelled** ([`cause`], [`metrics`]) with a
//!   [`ResetCause`] and a [`Phase`].
//! * **Transparent reconnect that never replays** ([`retry`]): [`Pool::run_idempotent`]
//!   retries an operation on a fresh connection when its connection broke;
//!   [`Pool::run`] retries only when the request provably never left. Waits are
//!   jittered, attempts and time bounded, and a per-pool retry budget keeps an outage
//!   from multiplying the load.
//! * **A connect gate** ([`breaker`]): a few connects in flight at most, and a circuit
//!   that makes checkouts fail fast while the upstream is down, instead of every
//!   waiter dialing it.
//!
//! Built on [`deadpool::managed`](https://docs.rs/deadpool): its queue and semaphore,
//! plus everything it leaves to you.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use steadypool::{drivers::tcp::TcpManager, Pool};
//! use tokio::io::AsyncWriteExt;
//!
//! let pool = Pool::builder(TcpManager::new("127.0.0.1:7000"))
//!     .name("upstream")
//!     .max_size(16)
//!     .idle_timeout(Some(Duration::from_secs(50)))
//!     .build()?;
//!
//! let mut conn = pool.get().await?;
//! conn.write_all(b"PING\r\n").await?;
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod breaker;
pub mod cause;
#[cfg(feature = "chaos")]
pub mod chaos;
mod clock;
pub mod diagnosis;
pub mod dial;
pub mod drivers;
mod manager;
pub mod metrics;
mod pool;
pub mod probe;
pub mod retry;

pub use crate::breaker::CircuitState;
pub use crate::cause::{
    Classify, Disposition, Eviction, Phase, ResetCause, Sent, classify_source_chain,
};
pub use crate::dial::{Address, DialError, Dialer, Keepalive};
pub use crate::manager::{Broken, Manager};
pub use crate::pool::{BuildError, Connection, Error, Pool, PoolBuilder, QueueMode, Status};
pub use crate::probe::SocketRef;
pub use crate::retry::{
    AttemptError, GiveUp, Idempotency, OperationFuture, PolicyError, RetryPolicy, RunError,
};
#[cfg(feature = "derive")]
pub use steadypool_derive::Classify;
