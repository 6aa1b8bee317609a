//! A checkout waiting for its turn to dial (a connect gate permit, or the open
//! circuit) takes a connection another user returns meanwhile instead of dialing:
//! fewer connects after an outage, and the books still balance when the pool closes
//! during a hand-off or the checkout it was meant for is cancelled. Real loopback
//! sockets; connects are held in the `after_connect` hook where the order matters.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use steadypool::{CircuitState, Connection, Error, Eviction, HookFuture, Pool};
use steadypool_tests::eventually;
use steadypool_tests::flaky::{
    self, Faults, LedgerConnection, LedgerError, LedgerManager, LedgerServer,
};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Generous, and shorter than the pools' `connect_timeout` (10 s): on the code before
/// hand-off, what waits here never finishes by itself, and a held connect must still
/// succeed once the valve opens after it.
const WITHIN: Duration = Duration::from_secs(5);

/// Holds every connect after the first `free` in the `after_connect` hook until
/// opened.
#[derive(Clone)]
struct Valve {
    free: usize,
    entered: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Valve {
    fn new(free: usize) -> Valve {
        Valve {
            free,
            entered: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    fn hook(
        &self,
    ) -> impl for<'c> Fn(&'c mut LedgerConnection) -> HookFuture<'c, LedgerError> + Send + Sync + 'static
    {
        let valve = self.clone();
        move |_conn| {
            let valve = valve.clone();
            Box::pin(async move {
                if valve.entered.fetch_add(1, Ordering::SeqCst) >= valve.free {
                    drop(valve.gate.acquire().await);
                }
                Ok(())
            })
        }
    }

    /// Waits until `n` connects have reached the hook.
    async fn entered(&self, n: usize) {
        assert!(
            eventually(WITHIN, || self.entered.load(Ordering::SeqCst) >= n).await,
            "{n} connects did not reach the hook"
        );
    }

    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

type Checkout = JoinHandle<Result<Connection<LedgerManager>, Error<LedgerError>>>;

fn checkout(pool: &Pool<LedgerManager>) -> Checkout {
    let pool = pool.clone();
    tokio::spawn(async move { pool.get().await })
}

/// Lets the spawned tasks of this current-thread runtime run until they wait.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Awaits `task` for up to [`WITHIN`]; if it is still waiting then, opens `valve`
/// first, so that a test of the code before hand-off fails on its assertions instead
/// of hanging.
async fn finish<T>(mut task: JoinHandle<T>, valve: &Valve) -> T {
    match tokio::time::timeout(WITHIN, &mut task).await {
        Ok(joined) => joined.unwrap(),
        Err(_) => {
            valve.open();
            task.await.unwrap()
        }
    }
}

/// The scene every hand-off test starts from: the test holds one connection (the
/// first), a second checkout's connect is held in its hook (the gate's only permit),
/// and a third checkout waits for its turn to dial.
async fn scene(
    pool: &Pool<LedgerManager>,
    valve: &Valve,
) -> (Connection<LedgerManager>, Checkout, Checkout) {
    let held = pool.get().await.unwrap();
    let dialing = checkout(pool);
    valve.entered(2).await;
    let waiting = checkout(pool);
    settle().await;
    (held, dialing, waiting)
}

/// One connection held by the test, one connect held in its hook (the gate's only
/// permit), and the pool with room for more.
async fn one_held_one_dialing() -> (LedgerServer, LedgerManager, Valve, Pool<LedgerManager>) {
    pool_with(false).await
}

/// [`one_held_one_dialing`], with an on-return hook if `on_return`.
async fn pool_with(on_return: bool) -> (LedgerServer, LedgerManager, Valve, Pool<LedgerManager>) {
    let server = LedgerServer::start(Faults::default()).await.unwrap();
    let manager = LedgerManager::new(server.addr());
    let valve = Valve::new(1);
    let builder = Pool::builder(manager.clone())
        .max_size(4)
        .max_concurrent_connects(1)
        .wait_timeout(Duration::from_secs(60))
        // Longer than a test waits for the valve: a held connect does not time out.
        .connect_timeout(Duration::from_secs(10))
        .after_connect(valve.hook());
    let builder = if on_return {
        builder.on_return(|_conn, _info| Box::pin(async { Ok(()) }))
    } else {
        builder
    };
    (server, manager, valve, builder.build().unwrap())
}

async fn books_balance_after_close(pool: &Pool<LedgerManager>) {
    // Connections on their way back through an on-return hook are still in use.
    assert!(eventually(WITHIN, || pool.status().in_use == 0).await);
    pool.close();
    let stats = pool.stats();
    assert_eq!(
        stats.opened,
        stats.closed(),
        "every connection opened is counted closed: {stats:?}"
    );
    assert_eq!(pool.status().size, 0);
}

/// With one connect allowed at a time and that one slow, a checkout waiting for the
/// gate takes the connection another user returns: one connect fewer than waiting
/// for the gate and dialing (3 before hand-off).
#[tokio::test]
async fn a_checkout_waiting_for_the_gate_takes_a_connection_returned_meanwhile() {
    let (server, manager, valve, pool) = one_held_one_dialing().await;
    let (held, dialing, waiting) = scene(&pool, &valve).await;
    let returned_id = held.id();
    drop(held);
    let mut got = finish(waiting, &valve).await.unwrap();
    assert_eq!(
        got.id(),
        returned_id,
        "the waiting checkout got the returned connection"
    );
    assert_eq!(flaky::run(&mut got, 1).await.unwrap(), 1);
    valve.open();
    let other = dialing.await.unwrap().unwrap();
    assert_ne!(other.id(), returned_id);
    assert_eq!(manager.connects().len(), 2, "connects made");
    assert!(eventually(WITHIN, || server.accepted() == 2).await);
    assert_eq!(server.accepted(), 2, "connects the server saw");
    drop((got, other));
    books_balance_after_close(&pool).await;
}

/// After an outage, the checkouts parked on the open circuit are all answered, and
/// the pool opens fewer connections than there were parked checkouts: the trial's
/// connection and the next one, returned after each request, serve the others while
/// they wait for their turn to dial (each used to dial its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_parked_on_the_circuit_share_the_connections_returned_after_the_outage() {
    const PARKED: u64 = 8;
    let server = LedgerServer::start(Faults::default()).await.unwrap();
    let manager = LedgerManager::new(server.addr());
    let pool = Pool::builder(manager.clone())
        .max_size(PARKED as usize)
        .max_concurrent_connects(1)
        .circuit_open_after(1)
        .wait_timeout(Duration::from_secs(30))
        .circuit_wait(Duration::from_secs(30))
        // A connect slower than a request, as over a real network with a handshake.
        .after_connect(|_conn| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(())
            })
        })
        .build()
        .unwrap();
    server.stop().await;
    let requests: Vec<_> = (0..PARKED)
        .map(|id| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.get().await.map_err(|err| err.to_string())?;
                flaky::run(&mut conn, id)
                    .await
                    .map_err(|err| err.to_string())
            })
        })
        .collect();
    assert!(eventually(WITHIN, || pool.status().circuit == CircuitState::Open).await);
    // Every checkout has met the open circuit (or waits for the gate behind it).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.accepted();
    server.restart().unwrap();
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap(), 1);
    }
    let opened = server.accepted() - before;
    eprintln!("{PARKED} parked checkouts answered over {opened} new connections");
    assert!(
        opened < PARKED as usize,
        "{opened} connections opened for {PARKED} parked checkouts"
    );
    assert_eq!(pool.stats().opened, opened as u64);
    books_balance_after_close(&pool).await;
}

/// `close()` right after a returned connection was handed to a checkout waiting for
/// the gate: the connection closes with the pool (counted `closed`), the checkout
/// ends with `Closed` without dialing, and the books balance.
#[tokio::test]
async fn a_pool_closed_during_a_hand_off_closes_the_connection_and_dials_no_more() {
    let (_server, manager, valve, pool) = one_held_one_dialing().await;
    let (held, dialing, waiting) = scene(&pool, &valve).await;
    drop(held);
    pool.close();
    let ended = finish(waiting, &valve).await;
    assert!(matches!(ended, Err(Error::Closed)), "{ended:?}");
    assert_eq!(
        manager.connects().len(),
        2,
        "the waiting checkout did not dial after close()"
    );
    valve.open();
    assert!(matches!(dialing.await.unwrap(), Err(Error::Closed)));
    let stats = pool.stats();
    assert_eq!(stats.opened, 2);
    assert_eq!(stats.evictions(Eviction::Closed), 2, "{stats:?}");
    books_balance_after_close(&pool).await;
}

/// The checkout a returned connection was handed to is cancelled before it took it:
/// the wake-up passes to the next checkout waiting for the gate, which takes it
/// without dialing, and the books balance.
#[tokio::test]
async fn a_hand_off_whose_checkout_was_cancelled_goes_to_the_next_one() {
    let (server, manager, valve, pool) = one_held_one_dialing().await;
    let (held, dialing, first) = scene(&pool, &valve).await;
    let returned_id = held.id();
    let second = checkout(&pool);
    settle().await;
    // The first checkout is woken, and cancelled before it runs.
    drop(held);
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let got = finish(second, &valve).await.unwrap();
    assert_eq!(got.id(), returned_id, "the next waiting checkout got it");
    valve.open();
    let other = dialing.await.unwrap().unwrap();
    let other_id = other.id();
    assert_eq!(manager.connects().len(), 2, "connects made");
    drop((got, other));
    // Nothing stranded: both connections are back, and a checkout takes one.
    assert_eq!(pool.status().idle, 2);
    let again = pool.get().await.unwrap();
    assert!([returned_id, other_id].contains(&again.id()));
    assert_eq!(manager.connects().len(), 2);
    assert!(eventually(WITHIN, || server.accepted() == 2).await);
    drop(again);
    books_balance_after_close(&pool).await;
}

/// A connection returned through the on-return hook is handed off too, once its hook
/// has passed.
#[tokio::test]
async fn a_connection_returned_through_the_on_return_hook_is_handed_off_after_it() {
    let (_server, manager, valve, pool) = pool_with(true).await;
    let (held, dialing, waiting) = scene(&pool, &valve).await;
    let returned_id = held.id();
    drop(held);
    let got = finish(waiting, &valve).await.unwrap();
    assert_eq!(got.id(), returned_id);
    valve.open();
    let other = dialing.await.unwrap().unwrap();
    assert_eq!(manager.connects().len(), 2, "connects made");
    drop((got, other));
    books_balance_after_close(&pool).await;
}

/// `resize()` down while a handed-off connection waits for its checkout in the spare
/// stock: the cap holds (the connection is closed as `resize`, and no more than the
/// new size stay open), and the books balance.
#[tokio::test]
async fn a_resize_down_during_a_hand_off_keeps_the_cap() {
    let (_server, _manager, valve, pool) = one_held_one_dialing().await;
    let (held, dialing, waiting) = scene(&pool, &valve).await;
    drop(held);
    pool.resize(1);
    assert_eq!(pool.stats().evictions(Eviction::Resize), 1);
    valve.open();
    // The dialed connection finds the pool at its new size and is closed; the waiting
    // checkout dials the one connection the cap allows, then hands it on.
    let first = waiting.await.unwrap().unwrap();
    assert_eq!(pool.status().size, 1, "{:?}", pool.status());
    drop(first);
    let second = dialing.await.unwrap().unwrap();
    assert_eq!(pool.status().size, 1, "{:?}", pool.status());
    drop(second);
    assert_eq!(pool.stats().evictions(Eviction::Resize), 2);
    books_balance_after_close(&pool).await;
}
