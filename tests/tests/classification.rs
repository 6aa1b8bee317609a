//! The classification matrix: each fault injected for real on loopback, and the
//! cause and phase the pool counted for it, read from `Pool::stats`.
//!
//! | fault | cause / phase |
//! |---|---|
//! | the server closes an idle connection (FIN), found by the reaper | `peer_closed` / `idle` |
//! | the server resets an idle connection (RST), found by the reaper | `peer_reset` / `idle` |
//! | the same, found by a checkout | `peer_reset` / `checkout` |
//! | the server crashes with requests in flight (RST on unread requests) | `peer_reset` / `in_use` |
//! | nothing listens any more | `refused` / `connect` |
//! | the listener's accept queue is full, so SYNs are dropped | `connect_timeout` / `connect` |
//! | the server writes on an idle connection | `unexpected_data` / `idle` |
//! | the server hangs, and the checkout ping times out | `ping_failed` / `checkout` |
//! | a driver's task read the server's goodbye, then an RST came (reaper or checkout) | `peer_closed`, as the driver recorded |
//! | the server resets a connection its manager calls due for a planned close | `peer_reset` / `checkout`, no `server_limit` |
//!
//! Each test also checks that nothing else was recorded: one fault, one label.
//! The black-hole causes (`keepalive_timeout`, `user_timeout`) need packets dropped by
//! the kernel and are covered with the other kernel-level faults.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use steadypool::{
    Address, Broken, Classify, Dialer, Disposition, Eviction, Manager, Phase, Pool, PoolBuilder,
    ResetCause, SocketRef,
};
use steadypool_tests::eventually;
use steadypool_tests::faults;
use steadypool_tests::line_manager::{LineManager, request};
use steadypool_tests::recorded::Books;
use steadypool_tests::servers::LineServer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::{JoinHandle, JoinSet};

const HOUR: Duration = Duration::from_secs(3600);
/// Generous: these are waits for loopback events, which take microseconds.
const PATIENCE: Duration = Duration::from_secs(10);

/// A pool whose idle connections only the reaper looks at (every 50 ms).
fn reaped(server: &LineServer) -> PoolBuilder<LineManager> {
    Pool::builder(LineManager::new(server.addr()))
        .reaper_interval(Duration::from_millis(50))
        .check_after(HOUR)
}

/// A pool whose idle connections only a checkout looks at.
fn checked_out(server: &LineServer) -> PoolBuilder<LineManager> {
    Pool::builder(LineManager::new(server.addr()))
        .reaper_interval(HOUR)
        .check_after(HOUR)
}

/// Opens one connection, uses it, and leaves it idle in the pool.
async fn one_idle(pool: &Pool<LineManager>, server: &LineServer) {
    let mut conn = pool.get().await.unwrap();
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
    drop(conn);
    assert!(eventually(PATIENCE, || server.live() == 1).await);
}

/// Waits until the pool's stats show `n` resets with `cause` in `phase`, then checks
/// that nothing else was counted.
async fn recorded<M: Manager>(pool: &Pool<M>, cause: ResetCause, phase: Phase, n: u64) {
    let seen = eventually(PATIENCE, || pool.stats().resets(cause, phase) >= n).await;
    assert!(
        seen,
        "expected {n} x {cause}/{phase}, recorded {}",
        pool.stats().resets(cause, phase)
    );
    assert_eq!(pool.stats().resets(cause, phase), n);
    assert_eq!(
        pool.stats().all_resets(),
        n,
        "another label was recorded as well"
    );
}

#[tokio::test]
async fn fin_on_an_idle_connection_is_peer_closed_idle() {
    let server = LineServer::start().await.unwrap();
    let pool = reaped(&server).build().unwrap();
    one_idle(&pool, &server).await;

    assert_eq!(server.close_all().await, 1);
    recorded(&pool, ResetCause::PeerClosed, Phase::Idle, 1).await;
    assert_eq!(pool.status().size, 0);
}

#[tokio::test]
async fn rst_on_an_idle_connection_is_peer_reset_idle() {
    let server = LineServer::start().await.unwrap();
    let pool = reaped(&server).build().unwrap();
    one_idle(&pool, &server).await;

    assert_eq!(server.reset_all().await, 1);
    recorded(&pool, ResetCause::PeerReset, Phase::Idle, 1).await;
}

#[tokio::test]
async fn rst_on_an_idle_connection_found_at_checkout_is_peer_reset_checkout() {
    let server = LineServer::start().await.unwrap();
    let pool = checked_out(&server).build().unwrap();
    one_idle(&pool, &server).await;

    assert_eq!(server.reset_all().await, 1);
    // Let the RST reach the client's socket and tokio's reactor.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut conn = pool.get().await.unwrap();
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
    recorded(&pool, ResetCause::PeerReset, Phase::Checkout, 1).await;
}

#[tokio::test]
async fn server_crash_with_requests_in_flight_is_peer_reset_in_use() {
    let server = LineServer::start().await.unwrap();
    let pool = checked_out(&server).max_size(3).build().unwrap();
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(pool.get().await.unwrap());
    }
    assert!(eventually(PATIENCE, || server.live() == 3).await);
    // The server stops reading, the requests go out and wait for replies, then the
    // server dies. A process that dies with unread requests in its sockets resets
    // them: that is what the zero-linger close does here.
    assert_eq!(server.freeze_all().await, 3);
    let mut in_flight = JoinSet::new();
    for mut conn in conns {
        in_flight.spawn(async move {
            let result = request(&mut conn, "SET k v").await;
            if let Err(err) = &result
                && let Disposition::Broken { cause, .. } = err.classify()
            {
                conn.mark_broken(cause);
            }
            result
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.reset_all().await, 3);

    while let Some(outcome) = in_flight.join_next().await {
        let err = outcome.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    }
    recorded(&pool, ResetCause::PeerReset, Phase::InUse, 3).await;
    assert_eq!(pool.status().size, 0);
}

#[tokio::test]
async fn connect_with_nothing_listening_is_refused_connect() {
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let pool = Pool::builder(LineManager::new(addr)).build().unwrap();

    faults::assert_refused(pool.get().await);
    recorded(&pool, ResetCause::Refused, Phase::Connect, 1).await;
    assert_eq!(pool.stats().resets(ResetCause::Refused, Phase::Connect), 1);
    assert_eq!(pool.stats().opened, 0);
}

/// A listener that never accepts, with an accept queue of one, already taken: the
/// kernel drops every further SYN, so a connect neither succeeds nor fails. This is
/// what an upstream too busy to accept looks like, and, from the client, a black
/// hole as well; no root or packet filter is needed for it.
fn listener_with_a_full_queue() -> (Socket, std::net::TcpStream, std::net::SocketAddr) {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let queued = std::net::TcpStream::connect(addr).unwrap();
    (listener, queued, addr)
}

#[tokio::test]
async fn connect_to_a_listener_that_never_accepts_is_connect_timeout() {
    let (_listener, _queued, addr) = listener_with_a_full_queue();
    let pool = Pool::builder(LineManager::new(addr))
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();

    let err = pool.get().await.unwrap_err();
    assert_eq!(err.cause(), Some(ResetCause::ConnectTimeout), "{err}");
    recorded(&pool, ResetCause::ConnectTimeout, Phase::Connect, 1).await;
    assert_eq!(
        pool.stats()
            .resets(ResetCause::ConnectTimeout, Phase::Connect),
        1
    );
}

#[tokio::test]
async fn bytes_on_an_idle_connection_are_unexpected_data_idle() {
    let server = LineServer::start().await.unwrap();
    let pool = reaped(&server).build().unwrap();
    one_idle(&pool, &server).await;

    assert_eq!(server.send_all(b"NOTICE going away\n").await, 1);
    recorded(&pool, ResetCause::UnexpectedData, Phase::Idle, 1).await;
}

#[tokio::test]
async fn a_ping_the_server_never_answers_is_ping_failed_checkout() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .reaper_interval(HOUR)
        .check_after(Duration::from_millis(50))
        .ping_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    one_idle(&pool, &server).await;

    assert_eq!(server.freeze_all().await, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The hung connection fails its ping; a new one (the server still accepts and
    // serves new connections) takes its place.
    let mut conn = pool.get().await.unwrap();
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
    assert_eq!(pool.manager().pings(), 1);
    recorded(&pool, ResetCause::PingFailed, Phase::Checkout, 1).await;
}

/// A connection whose socket a background task reads, as tokio-postgres' and redis'
/// do: the pool probes a duplicate of it ([`SocketRef::Raw`]), and the task records
/// the first thing that ends the session, a server's `BYE` line.
struct DrivenConnection {
    duplicate: Socket,
    goodbye: Arc<OnceLock<String>>,
    reader: JoinHandle<()>,
}

impl Drop for DrivenConnection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Opens [`DrivenConnection`]s to a [`LineServer`]; counts the goodbyes read. Once
/// `due`, calls every connection due for a planned close.
struct DrivenManager {
    addr: SocketAddr,
    goodbyes: Arc<AtomicUsize>,
    due: AtomicBool,
}

impl Manager for DrivenManager {
    type Connection = DrivenConnection;
    type Error = io::Error;

    async fn connect(&self, dialer: &Dialer) -> io::Result<DrivenConnection> {
        let stream = dialer.connect(&Address::from(self.addr)).await?;
        let duplicate = socket2::SockRef::from(&stream).try_clone()?;
        let goodbye = Arc::new(OnceLock::new());
        let (recorded, goodbyes) = (goodbye.clone(), self.goodbyes.clone());
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("BYE") && recorded.set(line).is_ok() {
                    goodbyes.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Ok(DrivenConnection {
            duplicate,
            goodbye,
            reader,
        })
    }

    fn socket<'a>(&self, conn: &'a DrivenConnection) -> Option<SocketRef<'a>> {
        Some(SocketRef::Raw(conn.duplicate.as_fd()))
    }

    async fn ping(&self, _: &mut DrivenConnection) -> io::Result<()> {
        Ok(())
    }

    fn broken(&self, conn: &DrivenConnection) -> Option<Broken> {
        match conn.goodbye.get() {
            Some(goodbye) => Some(Broken::new(ResetCause::PeerClosed).with_detail(goodbye.clone())),
            None => self
                .due
                .load(Ordering::SeqCst)
                .then(|| Broken::server_limit("idle close to the server's limit")),
        }
    }
}

/// A pool of one idle [`DrivenConnection`] to `server`.
async fn one_driven(server: &LineServer, reaper_interval: Duration) -> Pool<DrivenManager> {
    let manager = DrivenManager {
        addr: server.addr(),
        goodbyes: Arc::default(),
        due: AtomicBool::new(false),
    };
    let pool = Pool::builder(manager)
        .reaper_interval(reaper_interval)
        .check_after(HOUR)
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    assert!(eventually(PATIENCE, || server.live() == 1).await);
    pool
}

/// The server says `BYE`, the connection's task records it, then the server resets
/// the connection.
async fn goodbye_then_rst(server: &LineServer, pool: &Pool<DrivenManager>) {
    assert_eq!(server.send_all(b"BYE terminating connection\n").await, 1);
    let goodbyes = &pool.manager().goodbyes;
    assert!(eventually(PATIENCE, || goodbyes.load(Ordering::SeqCst) == 1).await);
    assert_eq!(server.reset_all().await, 1);
}

#[tokio::test]
async fn a_goodbye_the_driver_read_before_an_rst_is_peer_closed_idle() {
    let server = LineServer::start().await.unwrap();
    let pool = one_driven(&server, Duration::from_millis(200)).await;

    // The RST right behind the goodbye the task recorded: the reaper's next look
    // (most likely after the RST) finds the duplicate reset.
    goodbye_then_rst(&server, &pool).await;
    recorded(&pool, ResetCause::PeerClosed, Phase::Idle, 1).await;
}

#[tokio::test]
async fn a_goodbye_the_driver_read_before_an_rst_is_peer_closed_at_checkout() {
    let server = LineServer::start().await.unwrap();
    let pool = one_driven(&server, HOUR).await;

    goodbye_then_rst(&server, &pool).await;
    // Let the RST reach the client's socket, where the probe's peek finds it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(pool.get().await.unwrap());
    recorded(&pool, ResetCause::PeerClosed, Phase::Checkout, 1).await;
}

#[tokio::test]
async fn an_rst_before_a_planned_close_is_peer_reset_not_the_plan() {
    let server = LineServer::start().await.unwrap();
    let pool = one_driven(&server, HOUR).await;

    // The server reset the connection before the pool's planned close, which the
    // manager now calls due: the reset is what happened, and evidence of its limit.
    assert_eq!(server.reset_all().await, 1);
    pool.manager().due.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Held, not returned: on its return the new connection is due as well.
    let _new = pool.get().await.unwrap();
    recorded(&pool, ResetCause::PeerReset, Phase::Checkout, 1).await;
    assert_eq!(pool.stats().evictions(Eviction::ServerLimit), 0);
}
