//! The reaper keeps idle connections honest without any checkout: it closes those the
//! peer closed (no socket lingers in `CLOSE_WAIT`, as the kernel reports it), those
//! idle past `idle_timeout`, those past their jittered `max_lifetime`, and keeps
//! `min_idle` ready. Real loopback sockets; time bounds are generous.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use steadypool::TcpState;
use steadypool::{Dialer, Eviction, Manager, Phase, Pool, ResetCause, SocketRef};
use steadypool_tests::line_manager::{LineConnection, LineManager};
use steadypool_tests::recorded::Books;
use steadypool_tests::servers::{Ending, LineServer};
use steadypool_tests::{eventually, sockets};
use tokio::io::BufReader;

const HOUR: Duration = Duration::from_secs(3600);
const TICK: Duration = Duration::from_millis(100);
/// What "within one reaper tick" may stretch to on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(2);

async fn open_idle<M: Manager>(pool: &Pool<M>, server: &LineServer, n: usize) {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.get().await.unwrap());
    }
    assert!(eventually(SLACK, || server.live() == n).await);
}

#[tokio::test]
async fn no_socket_stays_in_close_wait_longer_than_a_reaper_tick() {
    let server = LineServer::start().await.unwrap();
    let port = server.addr().port();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .reaper_interval(TICK)
        .check_after(HOUR)
        .build()
        .unwrap();
    open_idle(&pool, &server, 4).await;
    assert_eq!(
        sockets::count_in_state(port, TcpState::Established).unwrap(),
        4
    );

    assert_eq!(server.close_all().await, 4);
    let closed_at = tokio::time::Instant::now();
    let gone = eventually(TICK + SLACK, || {
        sockets::count_in_state(port, TcpState::CloseWait).unwrap() == 0
            && sockets::to_port(port).unwrap().is_empty()
    })
    .await;
    assert!(
        gone,
        "sockets still held after {:?}: {:?}",
        closed_at.elapsed(),
        sockets::to_port(port).unwrap()
    );
    assert_eq!(pool.stats().resets(ResetCause::PeerClosed, Phase::Idle), 4);
    assert_eq!(pool.status().size, 0);
}

#[tokio::test]
async fn reset_idle_connections_are_closed_by_the_reaper() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .reaper_interval(TICK)
        .check_after(HOUR)
        .build()
        .unwrap();
    open_idle(&pool, &server, 2).await;

    assert_eq!(server.reset_all().await, 2);
    let gone = eventually(TICK + SLACK, || pool.status().size == 0).await;
    assert!(gone, "reset connections stayed in the pool");
    assert_eq!(pool.stats().resets(ResetCause::PeerReset, Phase::Idle), 2);
}

/// A line connection that notes, on the precise clock, when the pool closed it.
struct TimedConnection {
    conn: LineConnection,
    serial: usize,
    closed: Arc<Mutex<HashMap<usize, Instant>>>,
}

impl Drop for TimedConnection {
    fn drop(&mut self) {
        let at = Instant::now();
        lock(&self.closed).insert(self.serial, at);
    }
}

/// Opens [`TimedConnection`]s to a line server.
struct TimedManager {
    addr: SocketAddr,
    opened: AtomicUsize,
    closed: Arc<Mutex<HashMap<usize, Instant>>>,
}

impl Manager for TimedManager {
    type Connection = TimedConnection;
    type Error = io::Error;

    async fn connect(&self, dialer: &Dialer) -> io::Result<TimedConnection> {
        let stream = dialer.connect(&self.addr.into()).await?;
        Ok(TimedConnection {
            conn: BufReader::new(stream),
            serial: self.opened.fetch_add(1, Ordering::SeqCst),
            closed: Arc::clone(&self.closed),
        })
    }

    fn socket<'a>(&self, conn: &'a TimedConnection) -> Option<SocketRef<'a>> {
        Some(SocketRef::from(&conn.conn))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_idle_timeout() {
    const CONNECTIONS: usize = 8;
    let server = LineServer::start().await.unwrap();
    let idle_timeout = Duration::from_millis(300);
    let closed = Arc::new(Mutex::new(HashMap::new()));
    let pool = Pool::builder(TimedManager {
        addr: server.addr(),
        opened: AtomicUsize::new(0),
        closed: Arc::clone(&closed),
    })
    .max_size(CONNECTIONS)
    .reaper_interval(Duration::from_millis(5))
    .idle_timeout(Some(idle_timeout))
    .check_after(HOUR)
    .build()
    .unwrap();
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        held.push(pool.get().await.unwrap());
    }
    // Idle from the moment each is returned, on the precise clock: noted just before
    // the return, so the idle time measured below is never shorter than the pool's.
    // The server's view (accept to close) would include the connect, and hide a
    // close that came early by less than that.
    let mut returned = HashMap::new();
    for conn in held {
        returned.insert(conn.serial, Instant::now());
        drop(conn);
        // Spread the returns over the coarse clock's ticks.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let all_closed = eventually(idle_timeout + SLACK, || lock(&closed).len() == CONNECTIONS).await;
    assert!(all_closed, "idle connections were not closed");
    let idle: Vec<Duration> = lock(&closed)
        .iter()
        .map(|(serial, at)| at.duration_since(returned[serial]))
        .collect();
    for idle in &idle {
        assert!(
            *idle >= idle_timeout,
            "closed after {idle:?} idle, before idle_timeout {idle_timeout:?}"
        );
    }
    assert!(eventually(SLACK, || server.ended().len() == CONNECTIONS).await);
    assert!(server.ended().iter().all(|e| e.how == Ending::ClientClosed));
    assert_eq!(
        pool.stats().evictions(Eviction::IdleExpired),
        CONNECTIONS as u64
    );
    assert_eq!(pool.stats().all_resets(), 0);
    assert_eq!(pool.status().size, 0);
}

#[tokio::test]
async fn lifetimes_are_jittered_within_max_lifetime_minus_jitter_and_max_lifetime() {
    const CONNECTIONS: usize = 8;
    let server = LineServer::start().await.unwrap();
    let lifetime = Duration::from_millis(1500);
    let jitter = Duration::from_millis(1000);
    let tick = Duration::from_millis(20);
    let pool = Pool::builder(LineManager::new(server.addr()))
        .max_size(CONNECTIONS)
        .reaper_interval(tick)
        .idle_timeout(None)
        .max_lifetime(Some(lifetime))
        .max_lifetime_jitter(jitter)
        .check_after(HOUR)
        .build()
        .unwrap();
    open_idle(&pool, &server, CONNECTIONS).await;

    let all_retired = eventually(lifetime + SLACK, || server.ended().len() == CONNECTIONS).await;
    assert!(all_retired, "only {} retired", server.ended().len());
    let lived: Vec<Duration> = server.ended().iter().map(|e| e.lived).collect();
    // The server accepted each connection a moment after the pool opened it, and the
    // reaper notices a retirement up to a tick (plus scheduling delay) late.
    let earliest = lifetime - jitter - Duration::from_millis(50);
    let latest = lifetime + tick + SLACK;
    for l in &lived {
        assert!(
            (earliest..=latest).contains(l),
            "a connection lived {l:?}, outside [{earliest:?}, {latest:?}]"
        );
    }
    let spread = lived
        .iter()
        .max()
        .unwrap()
        .saturating_sub(*lived.iter().min().unwrap());
    // Eight draws from a 1 s window all falling within 50 ms: odds about 1e-8.
    assert!(
        spread > Duration::from_millis(50),
        "lifetimes not jittered: {lived:?}"
    );
    assert_eq!(
        pool.stats().evictions(Eviction::MaxLifetime),
        CONNECTIONS as u64
    );
    assert_eq!(pool.stats().all_resets(), 0);
}

#[tokio::test]
async fn min_idle_is_filled_and_refilled_after_the_peer_closes_everything() {
    let server = LineServer::start().await.unwrap();
    let port = server.addr().port();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .max_size(5)
        .min_idle(3)
        .reaper_interval(TICK)
        .check_after(HOUR)
        .build()
        .unwrap();

    let filled = eventually(TICK + SLACK, || {
        let s = pool.status();
        s.idle == 3 && s.size == 3
    })
    .await;
    assert!(filled, "min_idle not reached: {:?}", pool.status());
    assert!(eventually(SLACK, || server.live() == 3).await);
    assert_eq!(server.accepts(), 3);

    assert_eq!(server.close_all().await, 3);
    let refilled = eventually(2 * TICK + SLACK, || {
        server.accepts() == 6 && pool.status().idle == 3 && server.live() == 3
    })
    .await;
    assert!(
        refilled,
        "not refilled: {:?}, accepts {}",
        pool.status(),
        server.accepts()
    );
    assert_eq!(pool.stats().resets(ResetCause::PeerClosed, Phase::Idle), 3);
    assert_eq!(
        sockets::count_in_state(port, TcpState::CloseWait).unwrap(),
        0
    );
    assert_eq!(
        sockets::count_in_state(port, TcpState::Established).unwrap(),
        3
    );
    // The refill never grows the pool past min_idle.
    tokio::time::sleep(3 * TICK).await;
    assert_eq!(server.accepts(), 6);
}

/// A pool with an hour's interval must not tick in the first second after build (a
/// random phase over the whole interval once did, in a test that needed no tick),
/// while pools built together still spread their ticks.
#[tokio::test]
async fn the_first_tick_comes_between_half_an_interval_and_one_interval_after_build() {
    const POOLS: usize = 20;
    let interval = Duration::from_secs(6);
    let server = LineServer::start().await.unwrap();
    let built = tokio::time::Instant::now();
    let mut pools = Vec::new();
    for _ in 0..POOLS {
        let pool = Pool::builder(LineManager::new(server.addr()))
            .reaper_interval(interval)
            .check_after(HOUR)
            .build()
            .unwrap();
        drop(pool.get().await.unwrap());
        pools.push(pool);
    }
    assert!(eventually(SLACK, || server.live() == POOLS).await);
    // From now on, a tick of any pool counts its connection's FIN.
    assert_eq!(server.close_all().await, POOLS);
    let watch_until = built + interval / 2 - Duration::from_millis(200);
    let ready = built.elapsed();
    assert!(
        built + ready < watch_until,
        "the set-up took {ready:?}: no time was left to watch"
    );
    let ticked =
        |pool: &Pool<LineManager>| pool.stats().resets(ResetCause::PeerClosed, Phase::Idle);
    tokio::time::sleep_until(watch_until).await;
    let early: Vec<u64> = pools.iter().map(ticked).collect();
    assert!(early.iter().all(|n| *n == 0), "ticked early: {early:?}");
    let all = eventually(interval + SLACK, || {
        pools.iter().all(|pool| ticked(pool) == 1)
    })
    .await;
    let late: Vec<u64> = pools.iter().map(ticked).collect();
    assert!(all, "not ticked within an interval: {late:?}");
}

#[tokio::test]
async fn min_idle_refill_leaves_room_for_checkouts_and_respects_max_size() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .max_size(2)
        .min_idle(2)
        .reaper_interval(Duration::from_millis(20))
        .check_after(HOUR)
        .build()
        .unwrap();
    assert!(eventually(SLACK, || pool.status().idle == 2).await);
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    // Both in use: the refill may not open a third.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pool.status().size, 2);
    assert_eq!(server.accepts(), 2);
    drop((a, b));
    assert_eq!(pool.status().idle, 2);
}

#[tokio::test]
async fn closing_the_pool_closes_idle_connections_and_stops_the_reaper() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .min_idle(2)
        .reaper_interval(Duration::from_millis(20))
        .check_after(HOUR)
        .build()
        .unwrap();
    assert!(eventually(SLACK, || server.live() == 2).await);

    pool.close();
    assert!(eventually(SLACK, || server.live() == 0).await);
    assert_eq!(pool.stats().evictions(Eviction::Closed), 2);
    // A running reaper would refill min_idle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.accepts(), 2);
    assert!(pool.get().await.is_err());
}
