//! # steadypool
//!
//! An async connection pool for TCP and database connections (tokio) that survives the
//! real causes of `ECONNRESET` in production, and tells you which one struck: an idle
//! connection a load balancer, NAT or firewall dropped; an upstream that crashed or
//! ran out of connections; a middlebox that silently black-holes a flow.
//!
//! * **Every socket is tuned** ([`Dialer`]): TCP keepalive (10 s / 3 s / 3) and
//!   `TCP_USER_TIMEOUT` find dead peers and black holes in seconds, not the kernel's
//!   two hours; `TCP_NODELAY` is on; connects time out.
//! * **Checkout never hands out a zombie** ([`probe()`]): a connection the peer closed
//!   or reset while it sat idle is discarded before you see it, at the cost of an
//!   atomic load; connections idle past `check_after` are also pinged.
//! * **A reaper** closes dead and expired idle connections every second, and keeps
//!   `min_idle` ready.
//! * **Every discarded connection is labelled** ([`metrics`], [`Pool::stats`]) with a
//!   [`ResetCause`] and a [`Phase`], and the pool learns the path's idle limit
//!   ([`IdleLimit`]).
//! * **Transparent reconnect that never replays** ([`RetryPolicy`]):
//!   [`Pool::run_idempotent`] retries an operation on a fresh connection when its
//!   connection broke; [`Pool::run`] retries only when the request provably never
//!   left. Waits are jittered, attempts and time bounded, and a per-pool retry budget
//!   keeps an outage from multiplying the load. Every failure says in its type whether
//!   the request may have taken effect ([`RunError::MaybeExecuted`]) or provably did
//!   not ([`RunError::NotExecuted`]), and every call counts in
//!   `steadypool_runs_total{outcome}`.
//! * **A connect gate** ([`CircuitState`]): a few connects in flight at most (up to
//!   16 while connects succeed, 2 after a failure or an outage), and a circuit that
//!   stops dialing while the upstream is down: checkouts that need a connection wait
//!   for a trial connect to succeed (bounded by `circuit_wait`), instead of every
//!   waiter dialing it.
//!
//! Built on [`deadpool::managed`](https://docs.rs/deadpool): its queue and semaphore,
//! plus everything it leaves to you.
//!
//! ## Example
//!
//! A pool of raw TCP connections to a line-based server, used directly and through a
//! retried operation:
//!
//! ```no_run
//! use std::time::Duration;
//! use steadypool::{Pool, drivers::tcp::TcpManager};
//! use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = Pool::builder(TcpManager::new("127.0.0.1:7000"))
//!         .name("upstream") // the `pool` label on every metric
//!         .max_size(16)
//!         .idle_timeout(Some(Duration::from_secs(50))) // below the load balancer's 60 s
//!         .build()?;
//!
//!     // A checkout never returns a connection already seen closed or reset.
//!     let mut conn = pool.get().await?;
//!     conn.write_all(b"PING\n").await?;
//!     let mut reply = String::new();
//!     BufReader::new(&mut *conn).read_line(&mut reply).await?;
//!     drop(conn); // back to the pool
//!
//!     // A read may safely run twice: if its connection breaks, it runs again on
//!     // another one. Writes go through `pool.run`, which never replays a request
//!     // that may have reached the server.
//!     let visits = pool
//!         .run_idempotent(async |conn| {
//!             conn.write_all(b"GET visits\n").await?;
//!             let mut line = String::new();
//!             BufReader::new(conn).read_line(&mut line).await?;
//!             Ok(line)
//!         })
//!         .await?;
//!
//!     println!("{reply:?} {visits:?} {:?}", pool.status());
//!     Ok(())
//! }
//! ```
//!
//! For your own protocol, implement [`Manager`]: open the socket with the pool's
//! [`Dialer`], show the pool the socket ([`SocketRef`]), optionally ping. Map your
//! error type to what the pool must do with [`Classify`], or derive it (feature
//! `derive`). [`drivers`] has ready-made managers for raw TCP, PostgreSQL, Redis and
//! any existing deadpool manager.
//!
//! ## Cargo features
//!
//! | feature | default | enables |
//! |---|---|---|
//! | `derive` | yes | `#[derive(Classify)]` (the [`Classify`](derive@Classify) derive macro, from `steadypool-derive`) |
//! | `chaos` | no | [`chaos`]: [`ChaosProxy`](chaos::ChaosProxy), a fault-injecting TCP proxy for testing what your client does when connections reset, idle out or vanish |
//! | `postgres` | no | [`drivers::postgres`]: PostgreSQL through `tokio-postgres`, on the pool's socket |
//! | `http` | no | [`drivers::http`]: HTTP/1.1 through hyper on the pool's sockets, Keep-Alive learned, and an `HttpClient` with the retry rules of RFC 9110 |
//! | `redis` | no | [`drivers::redis`]: Redis through `redis`'s multiplexed connection, on the pool's socket |
//! | `serde` | no | [`PoolConfig`]: every builder knob read from a file or the environment, durations as `"45s"` |
//! | `cli` | no | the `steadypool` command-line tool (`cargo install steadypool --features cli`): `steadypool demo`, and `steadypool idle-probe HOST:PORT`, which finds a path's idle limit and prints the settings for it; adds nothing to the library's API |
//!
//! Without any feature the crate still has the pool, the raw TCP driver
//! ([`drivers::tcp`]), the deadpool adapter ([`drivers::deadpool`]), retries and
//! metrics.
//!
//! ## Modules
//!
//! Every type is at the crate root; only [`drivers`], [`chaos`] and the [`metrics`]
//! catalog are public modules. Inside, each module has one job (`ARCHITECTURE.md` in
//! the repository shows how a checkout and a `run` flow through them):
//!
//! | module | its job |
//! |---|---|
//! | `pool` | the [`Pool`], its builder, checkout, return, reaper and hooks |
//! | `manager` | the [`Manager`] trait a protocol implements |
//! | `dial` | opening sockets with every TCP setting applied ([`Dialer`]) |
//! | `probe` | the free liveness check run on every checkout ([`probe()`]) |
//! | `cause` | why a connection died and what an error means ([`ResetCause`], [`Phase`], [`Classify`]) |
//! | `retry` | running an operation with safe retries ([`Pool::run`], [`RetryPolicy`]) |
//! | `breaker` | the connect gate: admits connects and says how its circuit moved ([`CircuitState`]) |
//! | `diagnosis` | learning the path's idle limit from lost and reused connections ([`IdleLimit`]) |
//! | `observe` | the one module that reports: the books ([`Stats`]), the metrics and the `tracing` events with their hints |
//! | `clock` | the coarse clock the checkout path reads |
//! | `config` | the pool's configuration from a file or the environment ([`PoolConfig`], feature `serde`) |
//! | [`metrics`] | every metric's name, labels and meaning |
//! | [`drivers`] | ready-made managers |
//! | [`chaos`] | the fault-injecting proxy (feature `chaos`) |
//!
//! The [README](https://github.com/steadypool/steadypool/blob/main/README.md) has the
//! knobs and their defaults, how to read the metrics for each production cause, and
//! runnable [examples](https://github.com/steadypool/steadypool/tree/main/examples).
//!
//! ## Supported Rust versions
//!
//! Rust 1.88 or later; CI checks the crate with every feature on Rust 1.88.
#![deny(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod cause;
#[cfg(feature = "chaos")]
#[cfg_attr(docsrs, doc(cfg(feature = "chaos")))]
pub mod chaos;
mod classify;
mod clock;
#[cfg(feature = "serde")]
mod config;
mod diagnosis;
mod dial;
pub mod drivers;
mod manager;
pub mod metrics;
mod observe;
mod pool;
mod probe;
mod retry;

pub use crate::breaker::CircuitState;
pub use crate::cause::{Classify, Disposition, Eviction, Phase, ResetCause, Sent};
pub use crate::classify::{classify_source_chain, permanent_in_source_chain};
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub use crate::config::{BackoffConfig, BudgetConfig, KeepaliveConfig, PoolConfig, RetryConfig};
pub use crate::diagnosis::IdleLimit;
pub use crate::dial::{Address, DialError, Dialer, Keepalive, SocketSettingError};
pub use crate::manager::{Broken, Manager};
pub use crate::observe::{Stats, human_duration};
pub use crate::pool::builder::PoolBuilder;
pub use crate::pool::{
    BuildError, Connection, ConnectionInfo, Error, Exchange, HookFuture, Pool, QueueMode, Status,
    WarmUpError,
};
pub use crate::probe::{
    Layer, Liveness, RawSocket, SocketRef, TcpState, check as probe, tcp_state,
};
#[allow(deprecated)] // kept so that code naming it gets the deprecation note, not an error
pub use crate::retry::OperationFuture;
pub use crate::retry::{AttemptError, GiveUp, Idempotency, PolicyError, RetryPolicy, RunError};
#[cfg(feature = "derive")]
pub use steadypool_derive::Classify;
