//! The pool's own promises that outside tests broke: a manager's `broken()` heard on
//! return and by the reaper, with its reason; a reaper that no fault in the manager's
//! code can stop; every connection counted when it closes, whatever path closed it; a
//! `min_idle` refill that never holds an idle connection away from a user; checkout
//! rejections counted; exchanges abandoned half-way never reaching the next user;
//! distinct default names; log fields a person can read; a planned close before a
//! server's limit counted as an eviction, and the limit the server announced
//! published. Real loopback sockets.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use steadypool::drivers::tcp::TcpManager;
use steadypool::metrics::{ANNOUNCED_IDLE_TIMEOUT, CHECKOUT_ERRORS, EVICTIONS, RESETS};
use steadypool::{
    Address, Broken, Dialer, Error, Eviction, Manager, Phase, Pool, ResetCause, RetryPolicy,
    SocketRef,
};
use steadypool_tests::eventually;
use steadypool_tests::line_manager::{LineManager, request};
use steadypool_tests::recorded::RecordedMetrics;
use steadypool_tests::servers::LineServer;
use steadypool_tests::unreliable::{Behaviour, UnreliableManager};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing_test::traced_test;

const TICK: Duration = Duration::from_millis(50);
/// What "within a few reaper ticks" may stretch to on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(5);
const HOUR: Duration = Duration::from_secs(3600);

/// Raw TCP connections whose `broken()` says what the test decides, and can panic,
/// and whose server announces the idle timeout the test decides.
#[derive(Debug, Clone)]
struct Judged {
    addr: Address,
    verdict: Arc<Mutex<Option<Broken>>>,
    panic: Arc<AtomicBool>,
    announced: Arc<Mutex<Option<Duration>>>,
}

impl Judged {
    fn new(addr: SocketAddr) -> Judged {
        Judged {
            addr: addr.into(),
            verdict: Arc::default(),
            panic: Arc::default(),
            announced: Arc::default(),
        }
    }

    fn judge(&self, verdict: Option<Broken>) {
        *self.verdict.lock().unwrap() = verdict;
    }

    fn announce(&self, idle_timeout: Duration) {
        *self.announced.lock().unwrap() = Some(idle_timeout);
    }
}

impl Manager for Judged {
    type Connection = TcpStream;
    type Error = io::Error;

    async fn connect(&self, dialer: &Dialer) -> io::Result<TcpStream> {
        Ok(dialer.connect(&self.addr).await?)
    }

    fn socket<'a>(&self, conn: &'a TcpStream) -> Option<SocketRef<'a>> {
        Some(SocketRef::Tokio(conn))
    }

    fn broken(&self, _: &TcpStream) -> Option<Broken> {
        assert!(!self.panic.load(Ordering::SeqCst), "a bug in broken()");
        self.verdict.lock().unwrap().clone()
    }

    fn announced_idle_limit(&self, _: &TcpStream) -> Option<Duration> {
        *self.announced.lock().unwrap()
    }
}

fn admin_shutdown() -> Broken {
    let mut broken = Broken::new(ResetCause::PeerClosed);
    broken.detail = Some("57P01: terminating connection due to administrator command".into());
    broken
}

/// A server, a [`Judged`] manager for it, and a pool that probes its idle
/// connections every [`TICK`] (and never pings them), with one connection idle.
async fn judged_pool_with_one_idle() -> (LineServer, Judged, Pool<Judged>) {
    let server = LineServer::start().await.unwrap();
    let manager = Judged::new(server.addr());
    let pool = Pool::builder(manager.clone())
        .reaper_interval(TICK)
        .check_after(HOUR)
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    (server, manager, pool)
}

#[tokio::test]
async fn a_connection_the_manager_calls_broken_is_closed_on_return_with_its_cause() {
    let server = LineServer::start().await.unwrap();
    let manager = Judged::new(server.addr());
    let pool = Pool::builder(manager.clone())
        .reaper_interval(HOUR)
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    manager.judge(Some(admin_shutdown()));
    drop(conn);
    let stats = pool.stats();
    assert_eq!(
        stats.resets(ResetCause::PeerClosed, Phase::InUse),
        1,
        "{stats:?}"
    );
    assert_eq!(
        pool.status().size,
        0,
        "a broken connection went back to the pool"
    );
    assert!(eventually(SLACK, || server.live() == 0).await);
}

#[tokio::test]
#[traced_test]
async fn the_reaper_asks_the_manager_and_logs_what_it_said() {
    let (_server, manager, pool) = judged_pool_with_one_idle().await;
    manager.judge(Some(admin_shutdown()));
    assert!(
        eventually(SLACK, || pool.status().size == 0).await,
        "the reaper kept a connection its manager called broken"
    );
    assert_eq!(pool.stats().resets(ResetCause::PeerClosed, Phase::Idle), 1);
    assert!(logs_contain(
        "terminating connection due to administrator command"
    ));
    assert!(logs_contain("cause=\"peer_closed\""));
}

#[tokio::test]
async fn a_panic_in_the_managers_code_does_not_stop_the_reaper() {
    let (_server, manager, pool) = judged_pool_with_one_idle().await;
    // The reaper calls broken() under deadpool's slot lock: a panic there must cost
    // that connection only, and neither the lock nor the reaper.
    manager.panic.store(true, Ordering::SeqCst);
    assert!(eventually(SLACK, || pool.status().size == 0).await);
    assert_eq!(pool.stats().resets(ResetCause::Other, Phase::Idle), 1);
    manager.panic.store(false, Ordering::SeqCst);

    drop(pool.get().await.unwrap());
    manager.judge(Some(admin_shutdown()));
    assert!(
        eventually(SLACK, || pool.status().size == 0).await,
        "the reaper stopped after the panic"
    );
    assert_eq!(pool.stats().resets(ResetCause::PeerClosed, Phase::Idle), 1);
}

/// Due to close before the server's limit: nothing broke.
fn due() -> Broken {
    Broken::server_limit("closed before the server's announced Keep-Alive: timeout=5 would")
}

#[tokio::test]
#[traced_test]
async fn a_planned_close_is_an_eviction_counted_once_wherever_it_is_found() {
    let server = LineServer::start().await.unwrap();
    let manager = Judged::new(server.addr());
    let (pool, metrics) = RecordedMetrics::build(
        Pool::builder(manager.clone())
            .reaper_interval(TICK)
            .check_after(HOUR),
    )
    .unwrap();

    // On return.
    let conn = pool.get().await.unwrap();
    manager.judge(Some(due()));
    drop(conn);
    assert_eq!(pool.status().size, 0, "a connection due to close was kept");
    // Idle: found by the checkout (or by the reaper, should its tick come first),
    // which then opens another.
    manager.judge(None);
    drop(pool.get().await.unwrap());
    manager.judge(Some(due()));
    let conn = pool.get().await.unwrap();
    manager.judge(None);
    drop(conn);
    // Idle, found by the reaper.
    manager.judge(Some(due()));
    assert!(
        eventually(SLACK, || pool.status().size == 0).await,
        "the reaper kept a connection due to close"
    );

    let stats = pool.stats();
    assert_eq!(stats.opened, 3, "{stats:?}");
    assert_eq!(stats.evictions(Eviction::ServerLimit), 3, "{stats:?}");
    assert_eq!(stats.closed(), 3, "each close counted once: {stats:?}");
    assert_eq!(metrics.counter(EVICTIONS, &[("reason", "server_limit")]), 3);
    assert_eq!(
        metrics.counter(RESETS, &[]),
        0,
        "a planned close is no reset"
    );
    assert_eq!(
        pool.idle_limit().upper,
        None,
        "a planned close taught the idle-limit learner a bound"
    );
    assert!(logs_contain("reason=\"server_limit\""));
    assert!(logs_contain("timeout=5 would"));
    assert!(!logs_contain("connection reset"));
    assert!(eventually(SLACK, || server.live() == 0).await);
}

#[tokio::test]
#[traced_test]
async fn an_announced_idle_timeout_is_published_when_it_changes_and_teaches_no_bound() {
    let server = LineServer::start().await.unwrap();
    let manager = Judged::new(server.addr());
    let (pool, metrics) = RecordedMetrics::build(
        Pool::builder(manager.clone())
            .reaper_interval(HOUR)
            .check_after(HOUR)
            .idle_timeout(Some(Duration::from_secs(90))),
    )
    .unwrap();
    drop(pool.get().await.unwrap());
    assert_eq!(pool.stats().announced_idle_timeout, None);
    assert!(
        metrics
            .gauge(ANNOUNCED_IDLE_TIMEOUT, &[])
            .is_some_and(f64::is_nan)
    );

    manager.announce(Duration::from_secs(5));
    for _ in 0..3 {
        drop(pool.get().await.unwrap());
    }
    assert_eq!(
        pool.stats().announced_idle_timeout,
        Some(Duration::from_secs(5))
    );
    assert_eq!(metrics.gauge(ANNOUNCED_IDLE_TIMEOUT, &[]), Some(5.0));
    assert!(logs_contain("announced_secs=5.0"));
    assert!(logs_contain(
        "idle_timeout (90 s) is longer: set it below 5.0 s"
    ));

    // A change is published at once; its event waits out the throttle.
    manager.announce(Duration::from_secs(2));
    drop(pool.get().await.unwrap());
    assert_eq!(
        pool.stats().announced_idle_timeout,
        Some(Duration::from_secs(2))
    );
    assert_eq!(metrics.gauge(ANNOUNCED_IDLE_TIMEOUT, &[]), Some(2.0));
    logs_assert(|lines: &[&str]| {
        match lines
            .iter()
            .filter(|l| l.contains("the upstream announced its idle timeout"))
            .count()
        {
            1 => Ok(()),
            n => Err(format!("{n} announcement events, expected 1")),
        }
    });

    let limit = pool.idle_limit();
    assert_eq!(limit.upper, None, "{limit:?}");
    assert_eq!(
        limit.evict_after,
        Some(Duration::from_secs(90)),
        "{limit:?}"
    );
    assert_eq!(pool.stats().closed(), 0);
}

/// A server that accepts and never answers, holding every connection.
async fn silent_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn connections_dropped_by_deadlines_cancellations_and_detach_are_all_counted() {
    let (addr, _server) = silent_server().await;
    let (pool, metrics) = RecordedMetrics::build(
        Pool::builder(LineManager::new(addr))
            .max_size(8)
            .reaper_interval(HOUR)
            .connect_timeout(Duration::from_millis(200))
            .retry_policy(
                RetryPolicy::default()
                    .deadline(Duration::from_millis(300))
                    .max_attempts(1),
            ),
    )
    .unwrap();

    // Cut by the retry deadline while waiting for a reply.
    for _ in 0..4 {
        let result = pool.run(async |conn| request(conn, "PAY 10").await).await;
        assert!(result.is_err());
    }
    // Dropped by the caller while waiting for a reply.
    for _ in 0..3 {
        let run = pool.run(async |conn| request(conn, "PAY 10").await);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), run)
                .await
                .is_err()
        );
    }
    // Taken out of the pool by the application.
    drop(pool.get().await.unwrap().detach());

    let stats = pool.stats();
    assert_eq!(stats.opened, 8, "{stats:?}");
    assert_eq!(stats.evictions(Eviction::Deadline), 4, "{stats:?}");
    assert_eq!(stats.evictions(Eviction::Cancelled), 3, "{stats:?}");
    assert_eq!(stats.evictions(Eviction::Detached), 1, "{stats:?}");
    assert_eq!(pool.status().size, 0);
    assert_eq!(stats.opened, pool.status().size as u64 + stats.closed());
    // The metrics say the same.
    for (reason, n) in [
        (Eviction::Deadline, 4),
        (Eviction::Cancelled, 3),
        (Eviction::Detached, 1),
    ] {
        assert_eq!(
            metrics.counter(EVICTIONS, &[("reason", reason.as_str())]),
            n,
            "{reason:?}"
        );
    }
}

#[tokio::test]
async fn refilling_min_idle_never_holds_an_idle_connection_away_from_a_user() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = Pool::builder(manager.clone())
        .max_size(4)
        .min_idle(4)
        .reaper_interval(TICK)
        .check_after(HOUR)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(eventually(SLACK, || pool.status().idle == 4).await);

    // One connection breaks; the connect that replaces it hangs (a full backlog).
    manager.set_connects(Behaviour::Hang);
    manager.report_broken(1);
    assert!(
        eventually(SLACK, || manager.attempts() == 5).await,
        "the refill did not start a connect: {} attempts, {:?}, {:?}",
        manager.attempts(),
        pool.status(),
        pool.stats()
    );
    assert_eq!(pool.status().idle, 3);

    // Three healthy idle connections: a checkout takes one on its first poll.
    let mut get = pin!(pool.get());
    let first = std::future::poll_fn(|cx| Poll::Ready(get.as_mut().poll(cx))).await;
    assert!(
        matches!(first, Poll::Ready(Ok(_))),
        "get() waited while idle connections sat in the pool"
    );
}

#[tokio::test]
async fn every_checkout_rejected_while_the_upstream_is_down_is_counted() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    manager.set_connects(Behaviour::Fail);
    let (pool, metrics) = RecordedMetrics::build(
        Pool::builder(manager)
            .reaper_interval(HOUR)
            .circuit_open_for(HOUR)
            // The fixed open period and the fail-fast checkout these checks were written for.
            .circuit_first_open(HOUR)
            .circuit_wait(Duration::ZERO),
    )
    .unwrap();
    let mut circuit_open = 0;
    for _ in 0..13 {
        match pool.get().await {
            Err(Error::CircuitOpen { .. }) => circuit_open += 1,
            Err(Error::Connect { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(circuit_open >= 10, "the circuit did not open");
    assert_eq!(pool.stats().checkout_errors, 13);
    assert_eq!(metrics.counter(CHECKOUT_ERRORS, &[]), 13);
    assert_eq!(
        metrics.counter(CHECKOUT_ERRORS, &[("error", "circuit_open")]),
        circuit_open
    );
}

/// A server and a pool of one connection for it, with no reaper tick during a test:
/// the next checkout gets the connection the last one left, or its replacement.
async fn one_connection_pool() -> (LineServer, Pool<LineManager>) {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .max_size(1)
        .reaper_interval(HOUR)
        .build()
        .unwrap();
    (server, pool)
}

#[tokio::test]
async fn an_exchange_abandoned_half_way_never_hands_its_reply_to_the_next_user() {
    let (_server, pool) = one_connection_pool().await;

    // A task aborted after sending its request, before reading the reply.
    let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await.unwrap();
            let mut exchange = conn.exchange();
            exchange.write_all(b"FIRST\n").await.unwrap();
            exchange.flush().await.unwrap();
            sent_tx.send(()).unwrap();
            std::future::pending::<()>().await;
        }
    });
    sent_rx.await.unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    let mut conn = pool.get().await.unwrap();
    let mut exchange = conn.exchange();
    assert_eq!(request(&mut exchange, "SECOND").await.unwrap(), "SECOND");
    exchange.finish();
    drop(conn);
    assert_eq!(pool.stats().evictions(Eviction::Cancelled), 1);
    // A finished exchange returns its connection to the pool.
    assert_eq!(pool.status().idle, 1);
}

#[tokio::test]
async fn a_connection_returned_with_unread_bytes_is_not_reused_by_the_next_exchange() {
    let (_server, pool) = one_connection_pool().await;
    let mut conn = pool.get().await.unwrap();
    {
        // An error mid-exchange (here: the reply was never read) leaves it open.
        let mut exchange = conn.exchange();
        exchange.write_all(b"LATE\n").await.unwrap();
        exchange.flush().await.unwrap();
    }
    let first = conn.id();
    drop(conn);
    let mut conn = pool.get().await.unwrap();
    assert_ne!(conn.id(), first);
    let mut buf = [0u8; 7];
    conn.write_all(b"FRESH\n").await.unwrap();
    conn.flush().await.unwrap();
    conn.read_exact(&mut buf[..6]).await.unwrap();
    assert_eq!(&buf[..6], b"FRESH\n");
}

#[tokio::test]
async fn unnamed_pools_get_distinct_names_from_their_target() {
    let server = LineServer::start().await.unwrap();
    let first = Pool::builder(TcpManager::new(server.addr()))
        .build()
        .unwrap();
    let second = Pool::builder(TcpManager::new(server.addr()))
        .build()
        .unwrap();
    let named = |pool: &Pool<TcpManager>| {
        let debug = format!("{pool:?}");
        let start = debug.find("name: \"").unwrap() + 7;
        debug[start..start + debug[start..].find('"').unwrap()].to_owned()
    };
    assert_ne!(named(&first), named(&second));
    assert_eq!(named(&first), server.addr().to_string());
    assert_eq!(named(&second), format!("{}#2", server.addr()));
}

#[tokio::test]
#[traced_test]
async fn log_fields_give_seconds_to_the_millisecond() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .reaper_interval(TICK)
        .check_after(HOUR)
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    tokio::time::sleep(Duration::from_millis(130)).await;
    server.reset_all().await;
    assert!(eventually(SLACK, || pool.status().size == 0).await);
    logs_assert(|lines| {
        let fields: Vec<&str> = lines
            .iter()
            .flat_map(|line| line.split_whitespace())
            .filter(|word| word.starts_with("idle_secs=") || word.starts_with("age_secs="))
            .collect();
        if fields.is_empty() {
            return Err("no idle_secs field logged".into());
        }
        for field in fields {
            let value = field.split('=').nth(1).unwrap_or_default();
            let decimals = value.split('.').nth(1).map_or(0, str::len);
            if decimals > 3 {
                return Err(format!("{field}: more than milliseconds"));
            }
        }
        Ok(())
    });
}

/// A checkout on a task of its own; its connection's id once it has one.
fn spawn_checkout(
    pool: &Pool<UnreliableManager>,
) -> tokio::task::JoinHandle<Result<u64, Error<io::Error>>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.get().await.map(|conn| conn.id()) })
}

#[tokio::test]
async fn a_connect_under_way_when_close_returns_does_not_hand_out_a_connection() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    manager.set_connects(Behaviour::Stall(Duration::from_millis(300)));
    let pool = Pool::builder(manager.clone())
        .reaper_interval(HOUR)
        .build()
        .unwrap();
    let checkout = spawn_checkout(&pool);
    assert!(eventually(SLACK, || manager.attempts() == 1).await);
    pool.close();
    let result = checkout.await.unwrap();
    assert!(
        matches!(result, Err(Error::Closed)),
        "a checkout connecting when close() returned got {result:?}"
    );
    let stats = pool.stats();
    assert_eq!(stats.opened, 1, "{stats:?}");
    assert_eq!(stats.evictions(Eviction::Closed), 1, "{stats:?}");
    assert_eq!(pool.status().size, 0);
}

#[tokio::test]
async fn a_connect_under_way_when_resize_returns_does_not_exceed_the_new_size() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = Pool::builder(manager.clone())
        .max_size(2)
        .reaper_interval(HOUR)
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    let held_id = held.id();
    manager.set_connects(Behaviour::Stall(Duration::from_millis(300)));
    let checkout = spawn_checkout(&pool);
    assert!(eventually(SLACK, || manager.attempts() == 2).await);
    pool.resize(1);
    // The stalled connect finishes; with one connection busy and a size of one, the
    // checkout waits for that one instead of keeping a second.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !checkout.is_finished(),
        "a second connection was handed out"
    );
    assert!(pool.status().size <= 1, "{:?}", pool.status());
    drop(held);
    assert_eq!(checkout.await.unwrap().unwrap(), held_id);
    let stats = pool.stats();
    assert_eq!(stats.evictions(Eviction::Resize), 1, "{stats:?}");
    assert_eq!(stats.opened, pool.status().size as u64 + stats.closed());
}
