//! TLS connections against an in-process rustls server (TLS 1.2 and 1.3): records the
//! TLS layer sends on its own (session tickets, KeyUpdate) never cost a healthy
//! connection, a close_notify is `peer_closed` and teaches the pool the server's idle
//! limit, a fatal alert is a reset, and application bytes on an idle connection are
//! still `unexpected_data`.
//!
//! The cases of the TLS table are rows of two tables, [`KEPT`] and [`CLOSED`]: each
//! row runs once per protocol version it names, all rows at once, each against a
//! server and a pool of its own, set up by [`server`] and [`pool`]. A failing row is
//! named in its panic, and the test lists every row that failed.

use std::future::Future;
use std::time::Duration;

use rustls::SupportedProtocolVersion;
use steadypool::drivers::tls::{TlsManager, TlsStream};
use steadypool::{Phase, Pool, ResetCause};
use steadypool_tests::tls::{Act, TLS12, TLS13, TestCa, TlsServer, TlsServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Versions = &'static [&'static SupportedProtocolVersion];

const BOTH: &[(&str, Versions)] = &[("TLS 1.3", TLS13), ("TLS 1.2", TLS12)];
/// KeyUpdate is a TLS 1.3 message.
const TLS13_ONLY: &[(&str, Versions)] = &[("TLS 1.3", TLS13)];

/// Long enough for the server's records to reach the client's socket.
const SETTLE: Duration = Duration::from_millis(100);
/// The idle timeout of the server in the close_notify row.
const SERVER_IDLE: Duration = Duration::from_millis(800);

/// What a row asks of the server, and of the pool beyond [`pool`]'s defaults.
#[derive(Clone, Copy)]
struct Setup {
    key_update_after_reply: bool,
    server_idle: Option<Duration>,
    max_size: usize,
    min_idle: usize,
    reaper_interval: Duration,
    idle_timeout: Option<Duration>,
}

/// A server and a pool as they are unless a row says otherwise.
const PLAIN: Setup = Setup {
    key_update_after_reply: false,
    server_idle: None,
    max_size: 4,
    min_idle: 0,
    reaper_interval: Duration::from_secs(3600),
    idle_timeout: None,
};

async fn server(ca: &TestCa, versions: Versions, row: Setup) -> TlsServer {
    TlsServer::start(
        ca,
        TlsServerOptions {
            versions,
            key_update_after_reply: row.key_update_after_reply,
            idle_timeout: row.server_idle,
        },
    )
    .await
}

/// A pool for `server`. Unless the row says otherwise, the probe alone decides (no
/// idle timeout of the pool's own in the way) and no reaper tick comes during a row:
/// its first comes half an interval after the build at the earliest.
fn pool(ca: &TestCa, server: &TlsServer, row: Setup) -> Pool<TlsManager> {
    let manager = TlsManager::new(server.addr(), ca.client_config(), "localhost").unwrap();
    Pool::builder(manager)
        .max_size(row.max_size)
        .min_idle(row.min_idle)
        .idle_timeout(row.idle_timeout)
        .reaper_interval(row.reaper_interval)
        .build()
        .unwrap()
}

/// One request: `PING`, answered by `PONG`.
async fn ping(conn: &mut TlsStream) {
    conn.write_all(b"PING\n").await.unwrap();
    let mut reply = [0u8; 5];
    conn.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"PONG\n");
}

fn protocol(conn: &mut TlsStream) -> rustls::ProtocolVersion {
    conn.session().protocol_version().unwrap()
}

/// Runs every row once per version, all at once, and fails naming each row that
/// failed (its own panic says what went wrong).
async fn run_table<R, F>(
    rows: &[R],
    versions_of: impl Fn(&R) -> &'static [(&'static str, Versions)],
    name_of: impl Fn(&R) -> &'static str,
    run: impl Fn(TestCa, R, String, Versions) -> F,
) where
    R: Copy,
    F: Future<Output = ()> + Send + 'static,
{
    let ca = TestCa::new();
    let mut runs = Vec::new();
    for row in rows {
        for (version, versions) in versions_of(row) {
            let label = format!("{}, {version}", name_of(row));
            let task = tokio::spawn(run(ca.clone(), *row, label.clone(), versions));
            runs.push((label, task));
        }
    }
    assert!(!runs.is_empty(), "an empty table");
    let mut failed = Vec::new();
    for (label, task) in runs {
        if task.await.is_err() {
            failed.push(label);
        }
    }
    assert!(failed.is_empty(), "rows failed: {failed:?}");
}

/// Traffic that must cost no connection: every connection the server saw is still
/// the pool's when the row ends.
#[derive(Clone, Copy)]
enum Traffic {
    /// `rounds` checkouts of one pool, a request on each, `pause` between them; then
    /// the server does `then` to the idle connection and one more request follows.
    Requests {
        rounds: usize,
        pause: Duration,
        then: Option<Act>,
    },
    /// `rounds` new pools of one connection each, returned unused (TLS 1.3's session
    /// tickets arrive while it is idle), then checked out again for a request.
    UnusedThenReused { rounds: usize },
    /// No checkout at all: the reaper opens `min_idle` and probes it every tick.
    ReaperOnly { watch: Duration },
}

#[derive(Clone, Copy)]
struct Kept {
    name: &'static str,
    versions: &'static [(&'static str, Versions)],
    setup: Setup,
    traffic: Traffic,
    handshakes: usize,
}

const KEPT: &[Kept] = &[
    Kept {
        name: "a request on every checkout keeps one connection",
        versions: BOTH,
        setup: PLAIN,
        traffic: Traffic::Requests {
            rounds: 200,
            pause: Duration::ZERO,
            then: None,
        },
        handshakes: 1,
    },
    Kept {
        name: "a new connection returned unused is reused",
        versions: BOTH,
        setup: Setup {
            max_size: 1,
            ..PLAIN
        },
        traffic: Traffic::UnusedThenReused { rounds: 20 },
        handshakes: 20,
    },
    Kept {
        name: "the reaper keeps its own idle connections",
        versions: BOTH,
        setup: Setup {
            min_idle: 2,
            reaper_interval: Duration::from_millis(200),
            ..PLAIN
        },
        traffic: Traffic::ReaperOnly {
            watch: Duration::from_secs(3),
        },
        handshakes: 2,
    },
    Kept {
        name: "key updates cost no connection",
        versions: TLS13_ONLY,
        setup: Setup {
            key_update_after_reply: true,
            ..PLAIN
        },
        // The KeyUpdate sent after each reply reaches the idle connection in the
        // pause; then one sent to a connection that has been idle a while.
        traffic: Traffic::Requests {
            rounds: 30,
            pause: Duration::from_millis(20),
            then: Some(Act::KeyUpdate),
        },
        handshakes: 1,
    },
];

async fn run_kept(ca: TestCa, row: Kept, label: String, versions: Versions) {
    let server = server(&ca, versions, row.setup).await;
    // Connections the pools closed, and the last pool's stats to show with a failure.
    let (closed, stats) = match row.traffic {
        Traffic::Requests {
            rounds,
            pause,
            then,
        } => {
            let pool = pool(&ca, &server, row.setup);
            for _ in 0..rounds {
                let mut conn = pool.get().await.unwrap();
                assert_eq!(protocol(&mut conn), versions[0].version, "{label}");
                ping(&mut conn).await;
                drop(conn);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            if let Some(act) = then {
                assert_eq!(server.act(act), 1, "{label}");
                tokio::time::sleep(SETTLE).await;
                let mut conn = pool.get().await.unwrap();
                ping(&mut conn).await;
            }
            (pool.stats().closed(), pool.stats())
        }
        Traffic::UnusedThenReused { rounds } => {
            let mut closed = 0;
            let mut last = None;
            for _ in 0..rounds {
                let pool = pool(&ca, &server, row.setup);
                let mut conn = pool.get().await.unwrap();
                assert_eq!(protocol(&mut conn), versions[0].version, "{label}");
                drop(conn);
                tokio::time::sleep(SETTLE).await;
                let mut conn = pool.get().await.unwrap();
                ping(&mut conn).await;
                drop(conn);
                closed += pool.stats().closed();
                last = Some(pool.stats());
            }
            (closed, last.expect("a row of no rounds"))
        }
        Traffic::ReaperOnly { watch } => {
            let pool = pool(&ca, &server, row.setup);
            tokio::time::sleep(watch).await;
            (pool.stats().closed(), pool.stats())
        }
    };
    assert_eq!(server.handshakes(), row.handshakes, "{label}: {stats:?}");
    assert_eq!(closed, 0, "{label}: {stats:?}");
}

#[tokio::test]
async fn healthy_connections_are_kept() {
    run_table(KEPT, |row| row.versions, |row| row.name, run_kept).await;
}

/// How a row makes the server end, or spoil, the pool's idle connection.
#[derive(Clone, Copy)]
enum Provoke {
    /// Nothing: the server's idle timeout ([`SERVER_IDLE`]) sends close_notify, then
    /// FIN, while the connection idles.
    ServerIdle,
    /// The server does this to the idle connection.
    Act(Act),
    /// Two requests in one write, one reply read: both replies reach the socket, one
    /// read takes both records off it, and rustls keeps the second reply: the kernel
    /// has nothing left to show.
    UnreadReply,
}

/// Who must find the dead connection.
#[derive(Clone, Copy)]
enum Finder {
    /// The next checkout, before the application touches it (or the return of the
    /// connection, where `phases` says so).
    Checkout,
    /// A reaper tick, with no checkout at all.
    Reaper,
}

#[derive(Clone, Copy)]
struct Closed {
    name: &'static str,
    setup: Setup,
    provoke: Provoke,
    finder: Finder,
    cause: ResetCause,
    /// The phases the close may be counted in: exactly one close in all of them.
    phases: &'static [Phase],
}

const CLOSED: &[Closed] = &[
    Closed {
        name: "close_notify is peer_closed and teaches the idle limit",
        setup: Setup {
            server_idle: Some(SERVER_IDLE),
            // A limit of the pool's own above the server's, for it to learn below.
            idle_timeout: Some(Duration::from_secs(45)),
            ..PLAIN
        },
        provoke: Provoke::ServerIdle,
        finder: Finder::Checkout,
        cause: ResetCause::PeerClosed,
        phases: &[Phase::Checkout],
    },
    Closed {
        name: "the reaper finds a close_notify as peer_closed",
        setup: Setup {
            reaper_interval: Duration::from_millis(100),
            ..PLAIN
        },
        provoke: Provoke::Act(Act::CloseNotify),
        finder: Finder::Reaper,
        cause: ResetCause::PeerClosed,
        phases: &[Phase::Idle],
    },
    Closed {
        name: "a fatal alert is a reset",
        setup: PLAIN,
        provoke: Provoke::Act(Act::FatalAlert),
        finder: Finder::Checkout,
        cause: ResetCause::PeerReset,
        phases: &[Phase::Checkout],
    },
    Closed {
        name: "application bytes on an idle connection are unexpected_data",
        setup: PLAIN,
        provoke: Provoke::Act(Act::Data),
        finder: Finder::Checkout,
        cause: ResetCause::UnexpectedData,
        phases: &[Phase::Checkout],
    },
    Closed {
        name: "a reply left unread in the TLS layer is unexpected_data",
        setup: Setup {
            max_size: 1,
            ..PLAIN
        },
        provoke: Provoke::UnreadReply,
        finder: Finder::Checkout,
        cause: ResetCause::UnexpectedData,
        // Found when the connection comes back, or at the next checkout.
        phases: &[Phase::Checkout, Phase::InUse],
    },
];

async fn run_closed(ca: TestCa, row: Closed, label: String, versions: Versions) {
    let server = server(&ca, versions, row.setup).await;
    let pool = pool(&ca, &server, row.setup);
    let mut conn = pool.get().await.unwrap();
    assert_eq!(protocol(&mut conn), versions[0].version, "{label}");
    if let Provoke::UnreadReply = row.provoke {
        conn.write_all(b"PING\nPING\n").await.unwrap();
        tokio::time::sleep(SETTLE).await;
        let mut reply = [0u8; 5];
        conn.read_exact(&mut reply).await.unwrap();
    } else {
        ping(&mut conn).await;
    }
    drop(conn);
    match row.provoke {
        Provoke::ServerIdle => tokio::time::sleep(SERVER_IDLE + Duration::from_millis(400)).await,
        Provoke::Act(act) => {
            assert_eq!(server.act(act), 1, "{label}");
            tokio::time::sleep(SETTLE).await;
        }
        Provoke::UnreadReply => {}
    }
    match row.finder {
        Finder::Checkout => {
            let mut conn = pool.get().await.unwrap();
            ping(&mut conn).await;
        }
        Finder::Reaper => {
            let found = steadypool_tests::eventually(Duration::from_secs(10), || {
                pool.stats().resets(row.cause, Phase::Idle) == 1
            })
            .await;
            assert!(found, "{label}: {:?}", pool.stats());
        }
    }
    let stats = pool.stats();
    let counted: u64 = row
        .phases
        .iter()
        .map(|phase| stats.resets(row.cause, *phase))
        .sum();
    assert_eq!(counted, 1, "{label}: {stats:?}");
    assert_eq!(stats.closed(), 1, "{label}: {stats:?}");
    // The checkout that found the close opened the next connection.
    let handshakes = match row.finder {
        Finder::Checkout => 2,
        Finder::Reaper => 1,
    };
    assert_eq!(server.handshakes(), handshakes, "{label}: {stats:?}");
    if let Some(server_idle) = row.setup.server_idle {
        let limit = pool.idle_limit();
        let upper = limit.upper.expect("the close taught an upper bound");
        assert!(
            upper >= server_idle && upper < Duration::from_secs(3),
            "{label}: {limit:?}"
        );
        // One close is evidence enough to evict below it from now on, instead of
        // meeting the same close after every idle spell.
        let evict_after = limit.evict_after.unwrap();
        assert!(evict_after < upper, "{label}: {limit:?}");
    }
}

#[tokio::test]
async fn every_close_is_counted_with_its_cause_and_phase() {
    run_table(CLOSED, |_| BOTH, |row| row.name, run_closed).await;
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let ca = TestCa::new();
    let server = TlsServer::start(&ca, TlsServerOptions::default()).await;
    let manager = TlsManager::new(server.addr(), ca.client_config(), "db.internal").unwrap();
    let pool = Pool::builder(manager).build().unwrap();
    let err = pool.get().await.unwrap_err();
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
    let stranger = TestCa::new();
    let manager = TlsManager::new(server.addr(), stranger.client_config(), "localhost").unwrap();
    let pool = Pool::builder(manager).build().unwrap();
    let err = pool.get().await.unwrap_err();
    // The stranger's authority has the same name as the server's: the signature
    // gives it away.
    assert!(format!("{err:?}").contains("InvalidCertificate"), "{err:?}");
    assert_eq!(server.handshakes(), 0);
}
