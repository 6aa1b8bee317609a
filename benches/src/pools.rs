//! The pools under test, each set up the way its own documentation shows, all holding
//! the same kind of connection: a loopback TCP stream to an [`EchoServer`](crate::echo::EchoServer).
//!
//! | [`Kind`] | pool | check on checkout |
//! |---|---|---|
//! | `steadypool` | steadypool, defaults | lifetime/idle limits and the free probe; a ping only after 500 ms idle |
//! | `deadpool-bare` | deadpool 0.13 | nothing (`recycle` returns `Ok`) |
//! | `deadpool-peek` | deadpool 0.13 | a non-blocking one-byte `peek` on the socket |
//! | `bb8-ping` | bb8 0.9, defaults | `test_on_check_out(true)`: a one-byte round trip |
//! | `bb8-nocheck` | bb8 0.9 | `test_on_check_out(false)` |
//! | `mobc-ping` | mobc 0.9, defaults | `check`: a one-byte round trip |
//! | `mobc-nocheck` | mobc 0.9 | `test_on_check_out(false)` |
//! | `r2d2-ping` | r2d2 0.8 (threads), defaults | `is_valid`: a one-byte round trip |
//! | `r2d2-nocheck` | r2d2 0.8 (threads) | `test_on_check_out(false)` |
//!
//! Every connection has `TCP_NODELAY` on, as steadypool sets it. mobc keeps only 2
//! idle connections by default; its `max_idle` is raised to the pool size so that it
//! pools at all. Broken connections are discarded the way each pool offers:
//! deadpool's `Object::take`, bb8's `has_broken`, mobc's `validate`, r2d2's
//! `has_broken`; steadypool's [`Pool::run_idempotent`](steadypool::Pool::run_idempotent)
//! does it (and the retry) itself.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool::managed::{Metrics, Object, RecycleError, RecycleResult};
use steadypool::{Address, Dialer, SocketRef};
use tokio::net::TcpStream;

use crate::error::BenchError;
use crate::wire;

/// One pool set-up under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// steadypool with its defaults.
    Steadypool,
    /// deadpool whose `recycle` does nothing.
    DeadpoolBare,
    /// deadpool whose `recycle` peeks at the socket.
    DeadpoolPeek,
    /// bb8 with `test_on_check_out(true)` (its default): a ping per checkout.
    Bb8Ping,
    /// bb8 with `test_on_check_out(false)`.
    Bb8NoCheck,
    /// mobc with its health check (its default): a ping per checkout.
    MobcPing,
    /// mobc with `test_on_check_out(false)`.
    MobcNoCheck,
    /// r2d2 with `test_on_check_out(true)` (its default): a ping per checkout.
    R2d2Ping,
    /// r2d2 with `test_on_check_out(false)`.
    R2d2NoCheck,
}

impl Kind {
    /// Every set-up, in table order.
    pub const ALL: [Kind; 9] = [
        Kind::Steadypool,
        Kind::DeadpoolBare,
        Kind::DeadpoolPeek,
        Kind::Bb8Ping,
        Kind::Bb8NoCheck,
        Kind::MobcPing,
        Kind::MobcNoCheck,
        Kind::R2d2Ping,
        Kind::R2d2NoCheck,
    ];

    /// The name used in results and tables.
    ///
    /// ```
    /// assert_eq!(steadypool_benches::pools::Kind::Bb8Ping.label(), "bb8-ping");
    /// ```
    pub const fn label(self) -> &'static str {
        match self {
            Kind::Steadypool => "steadypool",
            Kind::DeadpoolBare => "deadpool-bare",
            Kind::DeadpoolPeek => "deadpool-peek",
            Kind::Bb8Ping => "bb8-ping",
            Kind::Bb8NoCheck => "bb8-nocheck",
            Kind::MobcPing => "mobc-ping",
            Kind::MobcNoCheck => "mobc-nocheck",
            Kind::R2d2Ping => "r2d2-ping",
            Kind::R2d2NoCheck => "r2d2-nocheck",
        }
    }
}

/// When each connect attempt started (whether it succeeded or not), from one origin.
///
/// ```
/// let log = steadypool_benches::pools::ConnectLog::new();
/// log.record();
/// assert_eq!(log.attempts().len(), 1);
/// ```
#[derive(Debug)]
pub struct ConnectLog {
    origin: Instant,
    attempts: Mutex<Vec<Duration>>,
}

impl Default for ConnectLog {
    fn default() -> Self {
        ConnectLog::new()
    }
}

impl ConnectLog {
    /// An empty log whose origin is now.
    pub fn new() -> ConnectLog {
        ConnectLog {
            origin: Instant::now(),
            attempts: Mutex::new(Vec::new()),
        }
    }

    /// The instant the offsets count from.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// Notes an attempt starting now.
    pub fn record(&self) {
        let at = self.origin.elapsed();
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(at);
    }

    /// Every attempt so far, as offsets from the origin.
    pub fn attempts(&self) -> Vec<Duration> {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn note(log: Option<&Arc<ConnectLog>>) {
    if let Some(log) = log {
        log.record();
    }
}

async fn connect(addr: SocketAddr, log: Option<&Arc<ConnectLog>>) -> io::Result<TcpStream> {
    note(log);
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// steadypool's manager for the echo protocol: the probe sees the stream, the ping is
/// a one-byte round trip.
#[derive(Debug, Clone)]
pub struct SteadyEcho {
    addr: Address,
    log: Option<Arc<ConnectLog>>,
}

impl steadypool::Manager for SteadyEcho {
    type Connection = TcpStream;
    type Error = io::Error;

    async fn connect(&self, dialer: &Dialer) -> io::Result<TcpStream> {
        note(self.log.as_ref());
        Ok(dialer.connect(&self.addr).await?)
    }

    fn socket<'a>(&self, conn: &'a TcpStream) -> Option<SocketRef<'a>> {
        Some(SocketRef::Tokio(conn))
    }

    async fn ping(&self, conn: &mut TcpStream) -> io::Result<()> {
        wire::ping(conn).await
    }
}

/// What a deadpool `recycle` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recycle {
    Nothing,
    Peek,
}

/// deadpool's manager for the echo protocol.
#[derive(Debug)]
pub struct DeadpoolEcho {
    addr: SocketAddr,
    recycle: Recycle,
    log: Option<Arc<ConnectLog>>,
}

impl deadpool::managed::Manager for DeadpoolEcho {
    type Type = TcpStream;
    type Error = io::Error;

    async fn create(&self) -> io::Result<TcpStream> {
        connect(self.addr, self.log.as_ref()).await
    }

    async fn recycle(&self, conn: &mut TcpStream, _: &Metrics) -> RecycleResult<io::Error> {
        match self.recycle {
            Recycle::Nothing => Ok(()),
            Recycle::Peek if wire::peek_alive(conn) => Ok(()),
            Recycle::Peek => Err(RecycleError::message("peer closed or reset")),
        }
    }
}

/// A connection that remembers it broke, for pools that ask on return.
#[derive(Debug)]
pub struct EchoConn {
    stream: TcpStream,
    broken: bool,
}

impl EchoConn {
    /// One request; a failure marks the connection broken, for its pool to discard
    /// when it comes back.
    async fn echo(&mut self, id: u64) -> Result<(), String> {
        let result = wire::echo(&mut self.stream, id).await;
        self.broken = result.is_err();
        result.map_err(|e| e.to_string())
    }
}

/// bb8's manager for the echo protocol: `is_valid` pings.
#[derive(Debug)]
pub struct Bb8Echo {
    addr: SocketAddr,
    log: Option<Arc<ConnectLog>>,
}

impl bb8::ManageConnection for Bb8Echo {
    type Connection = EchoConn;
    type Error = io::Error;

    async fn connect(&self) -> io::Result<EchoConn> {
        Ok(EchoConn {
            stream: connect(self.addr, self.log.as_ref()).await?,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut EchoConn) -> io::Result<()> {
        wire::ping(&mut conn.stream).await
    }

    fn has_broken(&self, conn: &mut EchoConn) -> bool {
        conn.broken
    }
}

/// mobc's manager for the echo protocol: `check` pings.
#[derive(Debug)]
pub struct MobcEcho {
    addr: SocketAddr,
    log: Option<Arc<ConnectLog>>,
}

#[mobc::async_trait]
impl mobc::Manager for MobcEcho {
    type Connection = EchoConn;
    type Error = io::Error;

    async fn connect(&self) -> io::Result<EchoConn> {
        Ok(EchoConn {
            stream: connect(self.addr, self.log.as_ref()).await?,
            broken: false,
        })
    }

    async fn check(&self, mut conn: EchoConn) -> io::Result<EchoConn> {
        wire::ping(&mut conn.stream).await?;
        Ok(conn)
    }

    fn validate(&self, conn: &mut EchoConn) -> bool {
        !conn.broken
    }
}

/// A blocking connection for r2d2.
#[derive(Debug)]
pub struct BlockingConn {
    stream: std::net::TcpStream,
    broken: bool,
}

/// r2d2's manager for the echo protocol: `is_valid` pings.
#[derive(Debug)]
pub struct R2d2Echo {
    addr: SocketAddr,
    log: Option<Arc<ConnectLog>>,
}

impl r2d2::ManageConnection for R2d2Echo {
    type Connection = BlockingConn;
    type Error = io::Error;

    fn connect(&self) -> io::Result<BlockingConn> {
        note(self.log.as_ref());
        let stream = std::net::TcpStream::connect(self.addr)?;
        stream.set_nodelay(true)?;
        Ok(BlockingConn {
            stream,
            broken: false,
        })
    }

    fn is_valid(&self, conn: &mut BlockingConn) -> io::Result<()> {
        wire::ping_blocking(&mut conn.stream)
    }

    fn has_broken(&self, conn: &mut BlockingConn) -> bool {
        conn.broken
    }
}

/// A boxed future, as the one dispatch over pool types returns it.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a scenario asks of a pool, whatever its crate: each pool type answers the way
/// its own users would. Only [`AnyPool`] calls it, through one trait object; the
/// timed loops inside run on each pool's own future.
pub trait EchoPool: Send + Sync {
    /// The pool's crate.
    fn crate_name(&self) -> &'static str;
    /// One checkout, returned at once.
    fn get_and_drop(&self) -> BoxFuture<'_, Result<(), String>>;
    /// One request, the way the pool's users make one.
    fn request(&self, id: u64) -> BoxFuture<'_, Result<(), String>>;
    /// One request on a checked-out connection, discarded if it failed; no retry.
    fn request_on_checkout(&self, id: u64) -> BoxFuture<'_, Result<(), String>>;
    /// Connections the pool holds now, idle and in use.
    fn open_connections(&self) -> BoxFuture<'_, usize>;
    /// Checks `n` connections out together, then returns them all.
    fn fill(&self, n: usize) -> BoxFuture<'_, Result<(), String>>;
    /// Runs `per_task` checkouts in each of `tasks` tasks (threads, for a blocking
    /// pool) and returns the time they took.
    fn time_checkouts(
        &self,
        tasks: usize,
        per_task: u64,
    ) -> BoxFuture<'_, Result<Duration, String>>;
}

/// An async pool, by what sets it apart from the others: how it checks a connection
/// out, how a request on it is made and a broken one discarded, how it counts its
/// connections. The rest of [`EchoPool`] follows from these, once for all of them.
pub trait AsyncEchoPool: Clone + Send + Sync + 'static {
    /// A checked-out connection.
    type Conn<'a>: Send
    where
        Self: 'a;
    /// The pool's crate.
    const CRATE: &'static str;

    /// One checkout.
    fn checkout(&self) -> impl Future<Output = Result<Self::Conn<'_>, String>> + Send;

    /// One request on a checked-out connection, discarded if it failed.
    fn request_on_checkout(&self, id: u64) -> impl Future<Output = Result<(), String>> + Send;

    /// Connections the pool holds now, idle and in use.
    fn open_connections(&self) -> impl Future<Output = usize> + Send;

    /// One request, the way the pool's users make one: on a checkout, unless the pool
    /// offers more.
    fn request(&self, id: u64) -> impl Future<Output = Result<(), String>> + Send {
        AsyncEchoPool::request_on_checkout(self, id)
    }

    /// One checkout, returned at once: the operation the checkout scenario times.
    /// Each pool calls its own `get` here, with nothing around it: a call through
    /// `checkout` adds a layer of future to every measured checkout (about 14
    /// instructions under callgrind, for every pool alike).
    fn get_and_drop(&self) -> impl Future<Output = Result<(), String>> + Send;
}

impl<P: AsyncEchoPool> EchoPool for P {
    fn crate_name(&self) -> &'static str {
        P::CRATE
    }

    fn get_and_drop(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(AsyncEchoPool::get_and_drop(self))
    }

    fn request(&self, id: u64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(AsyncEchoPool::request(self, id))
    }

    fn request_on_checkout(&self, id: u64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(AsyncEchoPool::request_on_checkout(self, id))
    }

    fn open_connections(&self) -> BoxFuture<'_, usize> {
        Box::pin(AsyncEchoPool::open_connections(self))
    }

    fn fill(&self, n: usize) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut held = Vec::with_capacity(n);
            for _ in 0..n {
                held.push(self.checkout().await?);
            }
            Ok(())
        })
    }

    fn time_checkouts(
        &self,
        tasks: usize,
        per_task: u64,
    ) -> BoxFuture<'_, Result<Duration, String>> {
        Box::pin(crate::checkout::run_tasks(self, tasks, per_task))
    }
}

impl AsyncEchoPool for steadypool::Pool<SteadyEcho> {
    type Conn<'a> = steadypool::Connection<SteadyEcho>;
    const CRATE: &'static str = "steadypool";

    async fn checkout(&self) -> Result<Self::Conn<'_>, String> {
        self.get().await.map_err(|e| e.to_string())
    }

    async fn get_and_drop(&self) -> Result<(), String> {
        self.get().await.map(drop).map_err(|e| e.to_string())
    }

    async fn request_on_checkout(&self, id: u64) -> Result<(), String> {
        let mut conn = self.checkout().await?;
        let result = wire::echo(&mut *conn, id).await;
        if let Err(err) = &result {
            conn.mark_broken(steadypool::ResetCause::of_io(err, steadypool::Phase::InUse));
        }
        result.map_err(|e| e.to_string())
    }

    async fn open_connections(&self) -> usize {
        self.status().size
    }

    /// Through `run_idempotent`: reconnect and retry included.
    async fn request(&self, id: u64) -> Result<(), String> {
        self.run_idempotent(async move |conn| wire::echo(conn, id).await)
            .await
            .map_err(|e| e.to_string())
    }
}

impl AsyncEchoPool for deadpool::managed::Pool<DeadpoolEcho> {
    type Conn<'a> = Object<DeadpoolEcho>;
    const CRATE: &'static str = "deadpool";

    async fn checkout(&self) -> Result<Self::Conn<'_>, String> {
        self.get().await.map_err(|e| e.to_string())
    }

    async fn get_and_drop(&self) -> Result<(), String> {
        self.get().await.map(drop).map_err(|e| e.to_string())
    }

    async fn request_on_checkout(&self, id: u64) -> Result<(), String> {
        let mut conn = self.checkout().await?;
        let result = wire::echo(&mut *conn, id).await;
        if result.is_err() {
            drop(Object::take(conn));
        }
        result.map_err(|e| e.to_string())
    }

    async fn open_connections(&self) -> usize {
        self.status().size
    }
}

impl AsyncEchoPool for bb8::Pool<Bb8Echo> {
    type Conn<'a> = bb8::PooledConnection<'a, Bb8Echo>;
    const CRATE: &'static str = "bb8";

    async fn checkout(&self) -> Result<Self::Conn<'_>, String> {
        self.get().await.map_err(|e| e.to_string())
    }

    async fn get_and_drop(&self) -> Result<(), String> {
        self.get().await.map(drop).map_err(|e| e.to_string())
    }

    async fn request_on_checkout(&self, id: u64) -> Result<(), String> {
        self.checkout().await?.echo(id).await
    }

    async fn open_connections(&self) -> usize {
        self.state().connections as usize
    }
}

impl AsyncEchoPool for mobc::Pool<MobcEcho> {
    type Conn<'a> = mobc::Connection<MobcEcho>;
    const CRATE: &'static str = "mobc";

    async fn checkout(&self) -> Result<Self::Conn<'_>, String> {
        self.get().await.map_err(|e| e.to_string())
    }

    async fn get_and_drop(&self) -> Result<(), String> {
        self.get().await.map(drop).map_err(|e| e.to_string())
    }

    async fn request_on_checkout(&self, id: u64) -> Result<(), String> {
        self.checkout().await?.echo(id).await
    }

    async fn open_connections(&self) -> usize {
        usize::try_from(self.state().await.connections).unwrap_or(usize::MAX)
    }
}

/// r2d2 is a blocking pool: what may wait runs on a blocking thread, as its users'
/// code would run on threads of their own.
impl EchoPool for r2d2::Pool<R2d2Echo> {
    fn crate_name(&self) -> &'static str {
        "r2d2"
    }

    fn get_and_drop(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.get().map(drop).map_err(|e| e.to_string()) })
    }

    fn request(&self, id: u64) -> BoxFuture<'_, Result<(), String>> {
        self.request_on_checkout(id)
    }

    fn request_on_checkout(&self, id: u64) -> BoxFuture<'_, Result<(), String>> {
        let pool = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = pool.get().map_err(|e| e.to_string())?;
                let result = wire::echo_blocking(&mut conn.stream, id);
                conn.broken = result.is_err();
                result.map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }

    fn open_connections(&self) -> BoxFuture<'_, usize> {
        Box::pin(async move { self.state().connections as usize })
    }

    fn fill(&self, n: usize) -> BoxFuture<'_, Result<(), String>> {
        let pool = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut held = Vec::with_capacity(n);
                for _ in 0..n {
                    held.push(pool.get().map_err(|e| e.to_string())?);
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }

    fn time_checkouts(
        &self,
        tasks: usize,
        per_task: u64,
    ) -> BoxFuture<'_, Result<Duration, String>> {
        let pool = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                crate::checkout::run_threads(&pool, tasks, per_task)
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }
}

/// A built pool of any [`Kind`]. Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct AnyPool(Arc<dyn EchoPool>);

impl std::fmt::Debug for AnyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AnyPool")
            .field(&self.0.crate_name())
            .finish()
    }
}

/// How to build a pool: its kind, size and where it connects.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), steadypool_benches::BenchError> {
/// use steadypool_benches::echo::EchoServer;
/// use steadypool_benches::pools::{Kind, PoolSpec};
///
/// let server = EchoServer::start().await?;
/// let pool = PoolSpec::new(Kind::Bb8Ping, server.addr(), 8).build().await?;
/// pool.request(1).await.map_err(steadypool_benches::BenchError::Setup)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PoolSpec {
    kind: Kind,
    addr: SocketAddr,
    size: usize,
    log: Option<Arc<ConnectLog>>,
    steady: fn(steadypool::PoolBuilder<SteadyEcho>) -> steadypool::PoolBuilder<SteadyEcho>,
}

impl PoolSpec {
    /// A pool of `kind` with at most `size` connections to `addr`, otherwise as its
    /// documentation sets it up.
    pub fn new(kind: Kind, addr: SocketAddr, size: usize) -> PoolSpec {
        PoolSpec {
            kind,
            addr,
            size,
            log: None,
            steady: |builder| builder,
        }
    }

    /// Notes every connect attempt in `log`.
    #[must_use]
    pub fn log_connects(mut self, log: Arc<ConnectLog>) -> PoolSpec {
        self.log = Some(log);
        self
    }

    /// Adjusts the steadypool builder (ignored for the other kinds).
    #[must_use]
    pub fn steadypool(
        mut self,
        adjust: fn(steadypool::PoolBuilder<SteadyEcho>) -> steadypool::PoolBuilder<SteadyEcho>,
    ) -> PoolSpec {
        self.steady = adjust;
        self
    }

    /// Builds the pool (opening no connection, except r2d2, which opens `size` at once).
    ///
    /// # Errors
    /// [`BenchError::Build`] when the pool refuses its configuration.
    pub async fn build(self) -> Result<AnyPool, BenchError> {
        let kind = self.kind;
        let refused = |message: String| BenchError::Build {
            pool: kind.label(),
            message,
        };
        let size32 = u32::try_from(self.size).map_err(|e| refused(e.to_string()))?;
        let log = self.log;
        let addr = self.addr;
        Ok(match kind {
            Kind::Steadypool => {
                let builder = steadypool::Pool::builder(SteadyEcho {
                    addr: addr.into(),
                    log,
                })
                .name(kind.label())
                .max_size(self.size);
                AnyPool::new(
                    (self.steady)(builder)
                        .build()
                        .map_err(|e| refused(e.to_string()))?,
                )
            }
            Kind::DeadpoolBare | Kind::DeadpoolPeek => {
                let recycle = if kind == Kind::DeadpoolPeek {
                    Recycle::Peek
                } else {
                    Recycle::Nothing
                };
                let manager = DeadpoolEcho { addr, recycle, log };
                AnyPool::new(
                    deadpool::managed::Pool::builder(manager)
                        .max_size(self.size)
                        .build()
                        .map_err(|e| refused(e.to_string()))?,
                )
            }
            Kind::Bb8Ping | Kind::Bb8NoCheck => AnyPool::new(
                bb8::Pool::builder()
                    .max_size(size32)
                    .test_on_check_out(kind == Kind::Bb8Ping)
                    .build_unchecked(Bb8Echo { addr, log }),
            ),
            Kind::MobcPing | Kind::MobcNoCheck => AnyPool::new(
                mobc::Pool::builder()
                    .max_open(self.size as u64)
                    .max_idle(self.size as u64)
                    .test_on_check_out(kind == Kind::MobcPing)
                    .build(MobcEcho { addr, log }),
            ),
            Kind::R2d2Ping | Kind::R2d2NoCheck => {
                let manager = R2d2Echo { addr, log };
                let test = kind == Kind::R2d2Ping;
                let built = tokio::task::spawn_blocking(move || {
                    r2d2::Pool::builder()
                        .max_size(size32)
                        .test_on_check_out(test)
                        .build(manager)
                })
                .await
                .map_err(|e| refused(e.to_string()))?;
                AnyPool::new(built.map_err(|e| refused(e.to_string()))?)
            }
        })
    }
}

impl AnyPool {
    fn new(pool: impl EchoPool + 'static) -> AnyPool {
        AnyPool(Arc::new(pool))
    }

    /// One checkout, returned at once.
    ///
    /// # Errors
    /// The pool's checkout error, as text.
    pub async fn get_and_drop(&self) -> Result<(), String> {
        self.0.get_and_drop().await
    }

    /// One request, the way each pool's users make one: steadypool through
    /// `run_idempotent` (reconnect and retry included); the others check a connection
    /// out, use it, and discard it if it failed.
    ///
    /// # Errors
    /// What failed, as text.
    pub async fn request(&self, id: u64) -> Result<(), String> {
        self.0.request(id).await
    }

    /// One request on a checked-out connection, without any retry (for steadypool:
    /// `get()` and raw I/O, bounded only by its socket options).
    ///
    /// # Errors
    /// What failed, as text.
    pub async fn request_on_checkout(&self, id: u64) -> Result<(), String> {
        self.0.request_on_checkout(id).await
    }

    /// Connections the pool holds now, idle and in use.
    pub async fn open_connections(&self) -> usize {
        self.0.open_connections().await
    }

    /// Opens `n` connections at once (checking them out together) and returns them
    /// all to the pool, so that `n` sit idle.
    ///
    /// # Errors
    /// [`BenchError::Checkout`] when a checkout fails.
    pub async fn fill(&self, kind: Kind, n: usize) -> Result<(), BenchError> {
        self.0
            .fill(n)
            .await
            .map_err(|message| BenchError::Checkout {
                pool: kind.label(),
                message,
            })
    }

    /// Runs `per_task` checkouts in each of `tasks` tasks (OS threads for r2d2),
    /// returned at once, and returns the time they took.
    ///
    /// # Errors
    /// The first failed checkout, as text.
    pub async fn time_checkouts(&self, tasks: usize, per_task: u64) -> Result<Duration, String> {
        self.0.time_checkouts(tasks, per_task).await
    }
}
