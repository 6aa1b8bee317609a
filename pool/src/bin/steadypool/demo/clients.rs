//! The two ways the demo sends a request: through steadypool with idempotent
//! retries, and through a plain deadpool pool that discards a connection once it
//! failed but checks and retries nothing. Each speaks the demo's key-value protocol
//! or Redis; HTTP's pair is in [`super::http`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use deadpool::managed::{Object, PoolError};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use steadypool::IdleLimit;
use steadypool::drivers::redis::{RedisConnection, RedisDriverError, RedisManager};
use steadypool::{
    AttemptError, Classify, Disposition, GiveUp, Manager, Phase, Pool, ResetCause, RunError,
};

use super::report::PoolCounts;
use super::tally::{Failure, Outcome};
use crate::kv::{KvConnection, KvError, KvManager, Op, PlainKvManager};

/// The longest the plain pool's application waits for a reply. steadypool's own
/// bound is its retry deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Redis keys the demo writes live, so none outlives a run for long.
const REDIS_KEY_TTL_SECS: u64 = 300;

/// A request in flight.
pub(crate) type CallFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// One pool, as the workers use it.
pub(crate) trait Client: Send + Sync {
    /// Sends worker `worker`'s request (with whatever retrying the pool does) and
    /// reports its end.
    fn call(&self, worker: usize, op: Op) -> CallFuture<'_>;

    /// What the pool learned about the path's idle limit, if it learns.
    fn idle_limit(&self) -> Option<IdleLimit>;

    /// The pool's own counts of the connections it lost and closed, if it keeps
    /// them.
    fn counts(&self) -> Option<PoolCounts>;

    /// Closes the pool's connections.
    fn close(&self);
}

/// The protocols the demo speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Protocol {
    /// The demo's key-value line protocol (the embedded server's).
    Kv,
    /// Redis (`GET` and `SET ... EX 300`).
    Redis,
    /// HTTP/1.1 (`GET` and `PUT` of `/items/N`): against a Node.js server the demo
    /// starts, or a `--target http://HOST:PORT`.
    Http,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Kv => "kv",
            Protocol::Redis => "redis",
            Protocol::Http => "http",
        })
    }
}

/// The future of one request on a steadypool connection: boxed, so that each
/// protocol's sender fits one function pointer type.
type SendFuture<'c, E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'c>>;

/// Sends one request on a steadypool connection.
type SteadySend<M> =
    for<'c> fn(&'c mut <M as Manager>::Connection, Op) -> SendFuture<'c, <M as Manager>::Error>;

/// steadypool, retrying every request (all are idempotent) on broken connections.
pub(crate) struct Steady<M: Manager> {
    pool: Pool<M>,
    send: SteadySend<M>,
}

impl<M: Manager> Client for Steady<M> {
    fn call(&self, _worker: usize, op: Op) -> CallFuture<'_> {
        Box::pin(async move {
            let send = self.send;
            // Owned by the operation (`async move`): this future must be `Send`, and
            // the compiler cannot yet prove that for an async closure borrowing from
            // it (rust-lang/rust#138207).
            let attempts = Arc::new(AtomicU32::new(0));
            let counted = Arc::clone(&attempts);
            let result = self
                .pool
                .run_idempotent(async move |conn| {
                    counted.fetch_add(1, Ordering::Relaxed);
                    send(conn, op.clone()).await
                })
                .await;
            Outcome {
                result: result.map_err(|err| steady_failure(&err)),
                attempts: attempts.load(Ordering::Relaxed).max(1),
            }
        })
    }

    fn idle_limit(&self) -> Option<IdleLimit> {
        Some(self.pool.idle_limit())
    }

    fn counts(&self) -> Option<PoolCounts> {
        Some(PoolCounts::read(&self.pool.stats()))
    }

    fn close(&self) {
        self.pool.close();
    }
}

/// steadypool's resets are in its stats; the failure is what the caller got.
pub(super) fn steady_failure<E: std::error::Error + 'static>(err: &RunError<E>) -> Failure {
    let cause = err.cause().map_or("no cause", ResetCause::as_str);
    let label = match err {
        RunError::Operation(_) => "server error".to_owned(),
        RunError::MaybeExecuted {
            reason: GiveUp::NotIdempotent,
            ..
        } => format!("not retried, may have run: {cause}"),
        RunError::MaybeExecuted { reason, .. } => {
            format!("gave up ({reason}), may have run: {cause}")
        }
        RunError::NotExecuted {
            source: Some(AttemptError::Checkout(steadypool::Error::CircuitOpen { .. })),
            ..
        } => "circuit open".to_owned(),
        RunError::NotExecuted {
            reason: GiveUp::NoConnection,
            ..
        } => format!("no connection: {cause}"),
        RunError::NotExecuted { reason, .. } => format!("gave up ({reason}): {cause}"),
        _ => format!("failed: {cause}"),
    };
    Failure {
        label,
        reset: None,
        message: crate::error_chain(err),
    }
}

/// Sends one request on a plain pool's connection: a broken connection's failure
/// carries its cause (phase `in_use`).
type PlainSend<T> =
    for<'c> fn(&'c mut T, Op) -> Pin<Box<dyn Future<Output = Result<(), Failure>> + Send + 'c>>;

/// A plain deadpool pool: one attempt, a connection that failed is discarded.
pub(crate) struct Plain<M: deadpool::managed::Manager> {
    pool: deadpool::managed::Pool<M>,
    send: PlainSend<M::Type>,
    connect_cause: fn(&M::Error) -> ResetCause,
}

impl<M> Client for Plain<M>
where
    M: deadpool::managed::Manager + 'static,
    M::Type: Send,
    M::Error: fmt::Display + Send,
{
    fn call(&self, _worker: usize, op: Op) -> CallFuture<'_> {
        Box::pin(async move {
            let mut conn = match self.pool.get().await {
                Ok(conn) => conn,
                Err(PoolError::Backend(err)) => {
                    let cause = (self.connect_cause)(&err);
                    return failed(Failure {
                        label: format!("{cause} / connect"),
                        reset: Some((cause, Phase::Connect)),
                        message: err.to_string(),
                    });
                }
                Err(err) => {
                    return failed(Failure {
                        label: "no connection".to_owned(),
                        reset: None,
                        message: err.to_string(),
                    });
                }
            };
            let result =
                match tokio::time::timeout(REQUEST_TIMEOUT, (self.send)(&mut conn, op)).await {
                    Ok(result) => result,
                    Err(_) => Err(Failure {
                        label: "timeout".to_owned(),
                        reset: None,
                        message: format!("no reply within {REQUEST_TIMEOUT:?}"),
                    }),
                };
            if let Err(failure) = &result
                && (failure.reset.is_some() || failure.label == "timeout")
            {
                // A careful user of a plain pool: never hand out a connection again
                // once a request on it broke.
                drop(Object::take(conn));
            }
            Outcome {
                result,
                attempts: 1,
            }
        })
    }

    fn idle_limit(&self) -> Option<IdleLimit> {
        None
    }

    fn counts(&self) -> Option<PoolCounts> {
        None
    }

    fn close(&self) {
        self.pool.close();
    }
}

fn failed(failure: Failure) -> Outcome {
    Outcome {
        result: Err(failure),
        attempts: 1,
    }
}

/// A failure of a connection in use, with the cause the pool would have recorded.
fn broken(cause: ResetCause, message: String) -> Failure {
    Failure {
        label: format!("{cause} / in_use"),
        reset: Some((cause, Phase::InUse)),
        message,
    }
}

/// steadypool for the key-value protocol.
pub(crate) fn steady_kv(
    addr: &str,
    size: usize,
) -> Result<Steady<KvManager>, steadypool::BuildError> {
    fn send(conn: &mut KvConnection, op: Op) -> SendFuture<'_, KvError> {
        Box::pin(async move { op.call(conn).await.map(drop) })
    }
    Ok(Steady {
        pool: steady_builder(KvManager::new(addr), size).build()?,
        send,
    })
}

/// The plain pool for the key-value protocol.
pub(crate) fn plain_kv(
    addr: &str,
    size: usize,
) -> Result<Plain<PlainKvManager>, deadpool::managed::BuildError> {
    fn send(
        conn: &mut KvConnection,
        op: Op,
    ) -> Pin<Box<dyn Future<Output = Result<(), Failure>> + Send + '_>> {
        Box::pin(async move {
            op.call(conn).await.map(drop).map_err(|err| {
                let message = err.to_string();
                match err {
                    KvError::Io(io) => broken(ResetCause::of_io(&io, Phase::InUse), message),
                    KvError::Garbage(_) => broken(ResetCause::UnexpectedData, message),
                    KvError::Dial(dial) => broken(dial.cause(), message),
                    KvError::Server(_) => Failure {
                        label: "server error".to_owned(),
                        reset: None,
                        message,
                    },
                }
            })
        })
    }
    Ok(Plain {
        pool: deadpool::managed::Pool::builder(PlainKvManager::new(addr))
            .max_size(size)
            .build()?,
        send,
        connect_cause: |err| ResetCause::of_io(err, Phase::Connect),
    })
}

fn steady_builder<M: Manager>(manager: M, size: usize) -> steadypool::PoolBuilder<M> {
    Pool::builder(manager).name("steadypool").max_size(size)
}

fn redis_command(op: Op) -> redis::Cmd {
    match op {
        Op::Get(key) => redis::cmd("GET").arg(key).clone(),
        Op::Set(key, value) => redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(REDIS_KEY_TTL_SECS)
            .clone(),
    }
}

fn redis_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(2)))
}

fn redis_url(addr: &str) -> String {
    format!("redis://{addr}/0")
}

/// steadypool for Redis.
pub(crate) fn steady_redis(
    addr: &str,
    size: usize,
) -> Result<Steady<RedisManager>, super::DemoError> {
    fn send(conn: &mut RedisConnection, op: Op) -> SendFuture<'_, RedisDriverError> {
        Box::pin(async move {
            redis_command(op)
                .query_async::<redis::Value>(&mut **conn)
                .await
                .map(drop)
                .map_err(RedisDriverError::from)
        })
    }
    let manager = RedisManager::new(redis_url(addr).as_str())
        .map_err(|e| super::DemoError::Setup(e.to_string()))?
        .connection_config(redis_config());
    Ok(Steady {
        pool: steady_builder(manager, size)
            .build()
            .map_err(|e| super::DemoError::Setup(e.to_string()))?,
        send,
    })
}

/// A plain deadpool manager for Redis: a multiplexed connection per slot, handed
/// out unchecked.
pub(crate) struct PlainRedisManager {
    client: redis::Client,
}

impl deadpool::managed::Manager for PlainRedisManager {
    type Type = MultiplexedConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        self.client
            .get_multiplexed_async_connection_with_config(&redis_config())
            .await
    }

    async fn recycle(
        &self,
        _: &mut MultiplexedConnection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<redis::RedisError> {
        Ok(())
    }
}

/// The plain pool for Redis.
pub(crate) fn plain_redis(
    addr: &str,
    size: usize,
) -> Result<Plain<PlainRedisManager>, super::DemoError> {
    fn send(
        conn: &mut MultiplexedConnection,
        op: Op,
    ) -> Pin<Box<dyn Future<Output = Result<(), Failure>> + Send + '_>> {
        Box::pin(async move {
            redis_command(op)
                .query_async::<redis::Value>(conn)
                .await
                .map(drop)
                .map_err(|err| match err.classify() {
                    Disposition::Broken { cause, .. } => broken(cause, err.to_string()),
                    Disposition::Transient | Disposition::Application => Failure {
                        label: "server error".to_owned(),
                        reset: None,
                        message: err.to_string(),
                    },
                })
        })
    }
    let client = redis::Client::open(redis_url(addr).as_str())
        .map_err(|e| super::DemoError::Setup(e.to_string()))?;
    Ok(Plain {
        pool: deadpool::managed::Pool::builder(PlainRedisManager { client })
            .max_size(size)
            .build()
            .map_err(|e| super::DemoError::Setup(e.to_string()))?,
        send,
        connect_cause: |err| match err.classify() {
            Disposition::Broken { cause, .. } => cause,
            Disposition::Transient | Disposition::Application => ResetCause::Other,
        },
    })
}
