//! Bad input gets a clear error naming the problem, never a panic: every configuration
//! `build()` refuses, and addresses that do not resolve, refuse, or never answer.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use steadypool::drivers::tcp::TcpManager;
use steadypool::{BuildError, Dialer, Error, Keepalive, Manager, Pool, PoolBuilder, ResetCause};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

fn builder() -> PoolBuilder<TcpManager> {
    Pool::builder(TcpManager::new("127.0.0.1:9"))
}

/// Builds inside a runtime and returns the error, checking it names `knob`.
fn refused(builder: PoolBuilder<TcpManager>, knob: &str) -> BuildError {
    let err = builder.build().unwrap_err();
    assert!(
        err.to_string().contains(knob),
        "the error does not name {knob}: {err}"
    );
    err
}

#[tokio::test]
async fn zero_max_size() {
    let err = refused(builder().max_size(0), "max_size");
    assert_eq!(err, BuildError::ZeroMaxSize);
}

#[tokio::test]
async fn min_idle_above_max_size() {
    let err = refused(builder().max_size(2).min_idle(3), "min_idle");
    assert_eq!(
        err,
        BuildError::MinIdleAboveMaxSize {
            min_idle: 3,
            max_size: 2
        }
    );
}

#[tokio::test]
async fn zero_keepalive_interval() {
    let keepalive = Keepalive::new(Duration::from_secs(10), Duration::ZERO, 3);
    let err = refused(builder().keepalive(Some(keepalive)), "keepalive interval");
    assert!(
        matches!(err, BuildError::KeepaliveOutOfRange { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn zero_keepalive_count() {
    let keepalive = Keepalive::new(Duration::from_secs(10), Duration::from_secs(3), 0);
    let err = refused(builder().keepalive(Some(keepalive)), "keepalive count");
    assert!(
        matches!(err, BuildError::KeepaliveOutOfRange { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn sub_second_keepalive_idle_the_kernel_cannot_express() {
    let keepalive = Keepalive::new(Duration::from_millis(500), Duration::from_secs(1), 3);
    let err = refused(builder().keepalive(Some(keepalive)), "keepalive idle");
    assert!(
        matches!(err, BuildError::KeepaliveOutOfRange { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn zero_connect_timeout() {
    let err = refused(builder().connect_timeout(Duration::ZERO), "connect_timeout");
    assert_eq!(
        err,
        BuildError::ZeroDuration {
            knob: "connect_timeout"
        }
    );
}

#[tokio::test]
async fn other_zero_durations() {
    refused(builder().wait_timeout(Duration::ZERO), "wait_timeout");
    refused(builder().ping_timeout(Duration::ZERO), "ping_timeout");
    refused(builder().reaper_interval(Duration::ZERO), "reaper_interval");
    refused(builder().idle_timeout(Some(Duration::ZERO)), "idle_timeout");
    refused(builder().max_lifetime(Some(Duration::ZERO)), "max_lifetime");
    refused(builder().user_timeout(Some(Duration::ZERO)), "user_timeout");
}

#[tokio::test]
async fn idle_timeout_above_max_lifetime() {
    let err = refused(
        builder()
            .idle_timeout(Some(Duration::from_secs(120)))
            .max_lifetime(Some(Duration::from_secs(60))),
        "idle_timeout",
    );
    assert!(
        matches!(err, BuildError::IdleTimeoutAboveMaxLifetime { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn lifetime_jitter_as_long_as_the_lifetime() {
    let err = refused(
        builder()
            .idle_timeout(None)
            .max_lifetime(Some(Duration::from_secs(60)))
            .max_lifetime_jitter(Duration::from_secs(60)),
        "max_lifetime_jitter",
    );
    assert!(
        matches!(err, BuildError::JitterAboveMaxLifetime { .. }),
        "{err:?}"
    );
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

#[tokio::test]
async fn a_refused_connect_names_the_cause_and_the_address_at_once() {
    let addr = closed_port();
    let connect_timeout = Duration::from_secs(2);
    let pool = Pool::builder(TcpManager::new(addr))
        .connect_timeout(connect_timeout)
        .build()
        .unwrap();
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(started.elapsed() < connect_timeout);
    assert_eq!(err.cause(), Some(ResetCause::Refused), "{err:?}");
    let message = format!("{err}: {}", err_source(&err));
    assert!(message.contains("refused"), "{message}");
    assert!(message.contains(&addr.to_string()), "{message}");
    assert_eq!(pool.status().size, 0);
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
    let pool = Pool::builder(TcpManager::new("localhost:99999"))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let message = format!("{err}: {}", err_source(&err));
    assert!(
        message.contains("could not resolve localhost:99999"),
        "{message}"
    );
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
    let pool = Pool::builder(TcpManager::new(addr))
        .connect_timeout(connect_timeout)
        .build()
        .unwrap();
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    let took = started.elapsed();
    assert!(took >= connect_timeout, "gave up early: {took:?}");
    assert!(took < connect_timeout + Duration::from_secs(5), "{took:?}");
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
    let pool = Pool::builder(GreetingManager(listener.local_addr().unwrap()))
        .connect_timeout(connect_timeout)
        .build()
        .unwrap();
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    let took = started.elapsed();
    assert!(took >= connect_timeout, "gave up early: {took:?}");
    assert!(took < connect_timeout + Duration::from_secs(5), "{took:?}");
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
