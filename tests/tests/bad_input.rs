//! Bad input gets a clear error naming the problem, never a panic: every configuration
//! `build()` refuses (one table, pool and retry policy alike), and addresses that do
//! not resolve, refuse, or never answer.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use steadypool::drivers::postgres::PgManager;
use steadypool::drivers::redis::RedisManager;
use steadypool::drivers::tcp::TcpManager;
use steadypool::{
    BuildError, Classify, Dialer, Error, GiveUp, Keepalive, Manager, PolicyError, Pool,
    PoolBuilder, ResetCause, RetryPolicy, RunError, SocketSettingError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn builder() -> PoolBuilder<TcpManager> {
    Pool::builder(TcpManager::new("127.0.0.1:9"))
}

/// One configuration `build()` must refuse.
struct Refusal {
    name: &'static str,
    configure: fn(PoolBuilder<TcpManager>) -> PoolBuilder<TcpManager>,
    /// What the error's message must name.
    names: &'static str,
    expected: fn(&BuildError) -> bool,
}

fn keepalive(idle: Duration, interval: Duration, count: u32) -> Option<Keepalive> {
    Some(Keepalive::new(idle, interval, count))
}

const REFUSALS: &[Refusal] = &[
    Refusal {
        name: "zero max_size",
        configure: |b| b.max_size(0),
        names: "max_size",
        expected: |e| *e == BuildError::ZeroMaxSize,
    },
    Refusal {
        name: "min_idle above max_size",
        configure: |b| b.max_size(2).min_idle(3),
        names: "min_idle",
        expected: |e| {
            *e == BuildError::MinIdleAboveMaxSize {
                min_idle: 3,
                max_size: 2,
            }
        },
    },
    Refusal {
        name: "zero keepalive interval",
        configure: |b| b.keepalive(keepalive(Duration::from_secs(10), Duration::ZERO, 3)),
        names: "keepalive interval",
        expected: |e| {
            matches!(
                e,
                BuildError::Socket(SocketSettingError::KeepaliveOutOfRange { .. })
            )
        },
    },
    Refusal {
        name: "zero keepalive count",
        configure: |b| {
            b.keepalive(keepalive(
                Duration::from_secs(10),
                Duration::from_secs(3),
                0,
            ))
        },
        names: "keepalive count",
        expected: |e| {
            matches!(
                e,
                BuildError::Socket(SocketSettingError::KeepaliveOutOfRange { .. })
            )
        },
    },
    Refusal {
        name: "sub-second keepalive idle, which the kernel cannot express",
        configure: |b| {
            b.keepalive(keepalive(
                Duration::from_millis(500),
                Duration::from_secs(1),
                3,
            ))
        },
        names: "keepalive idle",
        expected: |e| {
            matches!(
                e,
                BuildError::Socket(SocketSettingError::KeepaliveOutOfRange { .. })
            )
        },
    },
    Refusal {
        name: "zero connect_timeout",
        configure: |b| b.connect_timeout(Duration::ZERO),
        names: "connect_timeout",
        expected: |e| *e == BuildError::Socket(SocketSettingError::ZeroConnectTimeout),
    },
    Refusal {
        name: "zero wait_timeout",
        configure: |b| b.wait_timeout(Duration::ZERO),
        names: "wait_timeout",
        expected: |e| {
            *e == BuildError::ZeroDuration {
                knob: "wait_timeout",
            }
        },
    },
    Refusal {
        name: "zero ping_timeout",
        configure: |b| b.ping_timeout(Duration::ZERO),
        names: "ping_timeout",
        expected: |e| {
            *e == BuildError::ZeroDuration {
                knob: "ping_timeout",
            }
        },
    },
    Refusal {
        name: "zero reaper_interval",
        configure: |b| b.reaper_interval(Duration::ZERO),
        names: "reaper_interval",
        expected: |e| {
            *e == BuildError::ZeroDuration {
                knob: "reaper_interval",
            }
        },
    },
    Refusal {
        name: "zero circuit_open_for",
        configure: |b| b.circuit_open_for(Duration::ZERO),
        names: "circuit_open_for",
        expected: |e| {
            *e == BuildError::ZeroDuration {
                knob: "circuit_open_for",
            }
        },
    },
    Refusal {
        name: "circuit_wait above wait_timeout",
        configure: |b| {
            b.wait_timeout(Duration::from_secs(1))
                .circuit_wait(Duration::from_secs(3))
        },
        names: "circuit_wait",
        expected: |e| {
            *e == BuildError::CircuitWaitAboveWaitTimeout {
                circuit_wait: Duration::from_secs(3),
                wait_timeout: Duration::from_secs(1),
            }
        },
    },
    Refusal {
        name: "zero circuit_first_open",
        configure: |b| b.circuit_first_open(Duration::ZERO),
        names: "circuit_first_open",
        expected: |e| {
            *e == BuildError::ZeroDuration {
                knob: "circuit_first_open",
            }
        },
    },
    Refusal {
        name: "circuit_first_open above circuit_open_for",
        configure: |b| {
            b.circuit_open_for(Duration::from_millis(200))
                .circuit_first_open(Duration::from_millis(300))
        },
        names: "circuit_first_open",
        expected: |e| {
            *e == BuildError::FirstOpenAboveOpenFor {
                first: Duration::from_millis(300),
                open_for: Duration::from_millis(200),
            }
        },
    },
    Refusal {
        name: "zero idle_timeout",
        configure: |b| b.idle_timeout(Some(Duration::ZERO)),
        names: "idle_timeout",
        expected: |e| {
            *e == BuildError::ZeroDuration {
                knob: "idle_timeout",
            }
        },
    },
    Refusal {
        name: "zero max_lifetime",
        configure: |b| b.max_lifetime(Some(Duration::ZERO)),
        names: "max_lifetime",
        expected: |e| {
            *e == BuildError::ZeroDuration {
                knob: "max_lifetime",
            }
        },
    },
    Refusal {
        name: "zero user_timeout",
        configure: |b| b.user_timeout(Some(Duration::ZERO)),
        names: "user_timeout",
        expected: |e| {
            *e == BuildError::Socket(SocketSettingError::UserTimeoutOutOfRange {
                timeout: Duration::ZERO,
            })
        },
    },
    Refusal {
        name: "idle_timeout above max_lifetime",
        configure: |b| {
            b.idle_timeout(Some(Duration::from_secs(120)))
                .max_lifetime(Some(Duration::from_secs(60)))
        },
        names: "idle_timeout",
        expected: |e| matches!(e, BuildError::IdleTimeoutAboveMaxLifetime { .. }),
    },
    Refusal {
        name: "lifetime jitter as long as the lifetime",
        configure: |b| {
            b.idle_timeout(None)
                .max_lifetime(Some(Duration::from_secs(60)))
                .max_lifetime_jitter(Duration::from_secs(60))
        },
        names: "max_lifetime_jitter",
        expected: |e| matches!(e, BuildError::JitterAboveMaxLifetime { .. }),
    },
    Refusal {
        name: "zero max_concurrent_connects",
        configure: |b| b.max_concurrent_connects(0),
        names: "max_concurrent_connects",
        expected: |e| {
            *e == BuildError::ZeroLimit {
                knob: "max_concurrent_connects",
            }
        },
    },
    Refusal {
        name: "zero circuit_open_after",
        configure: |b| b.circuit_open_after(0),
        names: "circuit_open_after",
        expected: |e| {
            *e == BuildError::ZeroLimit {
                knob: "circuit_open_after",
            }
        },
    },
    Refusal {
        name: "a retry policy of zero attempts",
        configure: |b| b.retry_policy(RetryPolicy::default().max_attempts(0)),
        names: "max_attempts",
        expected: |e| *e == BuildError::RetryPolicy(PolicyError::ZeroAttempts),
    },
    Refusal {
        name: "a zero retry budget",
        configure: |b| b.retry_policy(RetryPolicy::default().budget(0.0, 0)),
        names: "max_attempts(1)",
        expected: |e| *e == BuildError::RetryPolicy(PolicyError::ZeroBudget),
    },
    Refusal {
        name: "a negative retry budget ratio",
        configure: |b| b.retry_policy(RetryPolicy::default().budget(-1.0, 10)),
        names: "budget ratio",
        expected: |e| matches!(e, BuildError::RetryPolicy(_)),
    },
    Refusal {
        name: "a retry deadline below the default connect_timeout",
        configure: |b| b.retry_policy(RetryPolicy::default().deadline(Duration::from_secs(2))),
        names: "connect_timeout",
        expected: |e| {
            *e == BuildError::RetryPolicy(PolicyError::DeadlineBelowConnectTimeout {
                deadline: Duration::from_secs(2),
                connect_timeout: Duration::from_secs(5),
            })
        },
    },
];

/// Every row is built inside a runtime (outside one, `build()` refuses for that
/// reason first); every failing row is reported, each by its name.
#[tokio::test]
async fn every_bad_configuration_is_refused_with_an_error_naming_the_knob() {
    let mut failures = Vec::new();
    for row in REFUSALS {
        match (row.configure)(builder()).build().map(drop) {
            Ok(()) => failures.push(format!("{}: build() accepted it", row.name)),
            Err(err) if !err.to_string().contains(row.names) => failures.push(format!(
                "{}: the error does not name {}: {err}",
                row.name, row.names
            )),
            Err(err) if !(row.expected)(&err) => {
                failures.push(format!("{}: unexpected error {err:?}", row.name));
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn build_outside_a_runtime() {
    let err = builder().build().unwrap_err();
    assert_eq!(err, BuildError::NoRuntime);
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Builds a pool of `manager` with `connect_timeout`, checks out once, and returns the
/// error with the time the checkout took.
async fn failed_checkout<M: Manager>(
    manager: M,
    connect_timeout: Duration,
) -> (Error<M::Error>, Duration) {
    let pool = Pool::builder(manager)
        .connect_timeout(connect_timeout)
        .build()
        .unwrap();
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(pool.status().size, 0, "a failed connect left a connection");
    (err, took)
}

/// The checkout waited out `connect_timeout`, and not much more.
fn assert_took_the_connect_timeout(took: Duration, connect_timeout: Duration) {
    assert!(took >= connect_timeout, "gave up early: {took:?}");
    assert!(took < connect_timeout + Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn a_refused_connect_names_the_cause_and_the_address_at_once() {
    let addr = closed_port();
    let connect_timeout = Duration::from_secs(2);
    let (err, took) = failed_checkout(TcpManager::new(addr), connect_timeout).await;
    assert!(took < connect_timeout);
    assert_eq!(err.cause(), Some(ResetCause::Refused), "{err:?}");
    let message = format!("{err}: {}", err_source(&err));
    assert!(message.contains("refused"), "{message}");
    assert!(message.contains(&addr.to_string()), "{message}");
}

fn err_source(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = Vec::new();
    let mut next = err.source();
    while let Some(e) = next {
        chain.push(e.to_string());
        next = e.source();
    }
    chain.join(": ")
}

#[tokio::test]
async fn an_address_that_does_not_resolve_names_it() {
    // An invalid port fails in the resolver itself: no lookup leaves this machine.
    let connect_timeout = Duration::from_secs(2);
    let (err, took) = failed_checkout(TcpManager::new("localhost:99999"), connect_timeout).await;
    assert!(took < connect_timeout);
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let message = format!("{err}: {}", err_source(&err));
    assert!(
        message.contains("could not resolve localhost:99999"),
        "{message}"
    );
}

/// A name under `.invalid`, which never resolves (RFC 6761), whose first label is
/// longer than DNS allows (63 bytes): the resolver refuses to build the query, so the
/// lookup fails on this machine and no packet leaves it.
fn unresolvable_host() -> String {
    format!("{}.invalid", "x".repeat(64))
}

/// The connect error of one checkout from `manager`; no connection was opened.
async fn connect_error<M: Manager>(manager: M) -> M::Error {
    let (err, _) = failed_checkout(manager, Duration::from_secs(2)).await;
    assert!(!err.is_permanent(), "{err:?}");
    let Error::Connect { source, .. } = err else {
        panic!("a failed lookup is a failed connect: {err:?}");
    };
    source
}

/// A resolver outage ends, and a service's name appears when it is deployed: a name
/// that does not resolve is waited for and retried, in every driver, not given up on
/// as a connect that failed for good.
#[tokio::test]
async fn a_name_that_does_not_resolve_is_not_permanent_and_is_retried() {
    let host = unresolvable_host();

    let tcp = connect_error(TcpManager::new(format!("{host}:80"))).await;
    assert!(tcp.to_string().contains(&host), "{tcp}");
    assert!(!tcp.is_permanent(), "{tcp}");
    let mut config = tokio_postgres::Config::new();
    config.host(&host).user("app");
    let pg = connect_error(PgManager::new(config).unwrap()).await;
    assert!(pg.to_string().contains(&host), "{pg}");
    assert!(!pg.is_permanent(), "{pg}");
    let redis = connect_error(RedisManager::new(format!("redis://{host}:6379")).unwrap()).await;
    assert!(redis.to_string().contains(&host), "{redis}");
    assert!(!redis.is_permanent(), "{redis}");

    let pool = Pool::builder(TcpManager::new(format!("{host}:80")))
        .retry_policy(
            RetryPolicy::default()
                .max_attempts(3)
                .backoff(Duration::from_millis(1), Duration::from_millis(10)),
        )
        .build()
        .unwrap();
    let err = pool
        .run_idempotent(async |conn| conn.write_all(b"ping\n").await)
        .await
        .unwrap_err();
    let RunError::NotExecuted {
        reason, attempts, ..
    } = &err
    else {
        panic!("no connection, nothing sent: {err:?}");
    };
    // By the last attempt the failed connects may have opened the connect circuit
    // (then the reason is `NoConnection`): either way every attempt was made, where a
    // permanent failure ends the first one.
    assert_ne!(*reason, GiveUp::Permanent, "{err}");
    assert_eq!(*attempts, 3, "{err}");
    assert!(pool.stats().connect_failures >= 3, "{:?}", pool.stats());
}

#[tokio::test]
async fn a_full_listen_backlog_times_out_within_connect_timeout() {
    // A listener that never accepts, with the smallest backlog: once its queue is
    // full the kernel drops further SYNs, as a black hole would.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    // Fill the accept queue: connects still complete until it is full.
    loop {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(e)) => panic!("filling the backlog: {e}"),
            Err(_) => break,
        }
        assert!(fillers.len() < 64, "the backlog never filled");
    }

    let connect_timeout = Duration::from_millis(500);
    let (err, took) = failed_checkout(TcpManager::new(addr), connect_timeout).await;
    assert_took_the_connect_timeout(took, connect_timeout);
    assert_eq!(err.cause(), Some(ResetCause::ConnectTimeout), "{err:?}");
    assert!(err.to_string().contains("connect_timeout"), "{err}");
}

/// A manager whose handshake waits for a greeting the server never sends.
struct GreetingManager(SocketAddr);

impl Manager for GreetingManager {
    type Connection = TcpStream;
    type Error = io::Error;

    async fn connect(&self, dialer: &Dialer) -> io::Result<TcpStream> {
        let mut stream = dialer.connect(&self.0.into()).await?;
        let mut greeting = [0u8; 5];
        stream.read_exact(&mut greeting).await?;
        Ok(stream)
    }
}

#[tokio::test]
async fn a_handshake_that_never_finishes_times_out_within_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect_timeout = Duration::from_millis(300);
    let manager = GreetingManager(listener.local_addr().unwrap());
    let (err, took) = failed_checkout(manager, connect_timeout).await;
    assert_took_the_connect_timeout(took, connect_timeout);
    assert!(matches!(err, Error::ConnectTimeout(_)), "{err:?}");
    assert_eq!(err.cause(), Some(ResetCause::ConnectTimeout));
}

#[tokio::test]
async fn an_exhausted_pool_fails_with_a_timeout_after_wait_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let wait = Duration::from_millis(200);
    let pool = Pool::builder(TcpManager::new(listener.local_addr().unwrap()))
        .max_size(1)
        .wait_timeout(wait)
        .build()
        .unwrap();
    let _held = pool.get().await.unwrap();
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(started.elapsed() >= wait);
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert_eq!(
        err.cause(),
        None,
        "an exhausted pool is not an upstream failure"
    );
    assert!(err.to_string().contains("max_size"), "{err}");
}

/// A connect to a loopback port that nothing listens on connects to itself when the
/// kernel picks that same port as its source, which it does at random among the
/// ephemeral ports: here, in a private namespace whose range holds that one port, it
/// must. Such a "connection" reads back every request as its reply; the pool counts
/// it as what it is, a refused connect.
#[test]
fn a_connect_to_itself_is_refused() {
    let Some(_ns) = steadypool_tests::netns::isolate("a_connect_to_itself_is_refused") else {
        return;
    };
    let port = 40_000;
    std::fs::write(
        "/proc/sys/net/ipv4/ip_local_port_range",
        format!("{port} {port}"),
    )
    .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    steadypool_tests::netns::runtime().block_on(async {
        let pool = Pool::builder(TcpManager::new(addr))
            .circuit_wait(Duration::ZERO)
            .build()
            .unwrap();
        let err = pool
            .get()
            .await
            .expect_err("nothing listens: no connection");
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        assert_eq!(err.cause(), Some(ResetCause::Refused), "{err}");
        assert!(err.to_string().contains("itself"), "{err}");
        assert_eq!(pool.status().size, 0);
    });
}
