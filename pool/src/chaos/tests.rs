use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

use super::*;

/// An echo server on a loopback port, gone with the returned task handle's runtime.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = conn.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    addr
}

async fn proxy_with(faults: Faults) -> ChaosProxy {
    ChaosProxy::builder(echo_upstream().await)
        .seed(1)
        .faults(faults)
        .start()
        .await
        .unwrap()
}

/// Sends `msg` and reads the echo back, within a generous bound.
async fn round_trip(conn: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
    conn.write_all(msg).await?;
    let mut reply = vec![0u8; msg.len()];
    timeout(Duration::from_secs(10), conn.read_exact(&mut reply))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    Ok(reply)
}

/// Reads until the connection ends; the error kind, or `UnexpectedEof` for a FIN.
async fn ending(conn: &mut TcpStream) -> io::ErrorKind {
    let mut buf = [0u8; 64];
    loop {
        match timeout(Duration::from_secs(10), conn.read(&mut buf)).await {
            Err(_) => return io::ErrorKind::TimedOut,
            Ok(Ok(0)) => return io::ErrorKind::UnexpectedEof,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return e.kind(),
        }
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn forwards_both_ways_and_counts_bytes() {
    let proxy = proxy_with(Faults::none()).await;
    let mut conn = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut conn, b"hello").await.unwrap(), b"hello");
    let stats = proxy.stats();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.active, 1);
    assert_eq!(stats.bytes_to_upstream, 5);
    assert_eq!(stats.bytes_to_client, 5);
    drop(conn);
    eventually("the relay to end", || proxy.stats().completed == 1).await;
    assert_eq!(proxy.stats().active, 0);
    assert_eq!(proxy.stats().injected_resets(), 0);
}

#[tokio::test]
async fn idle_close_sends_fin_or_rst_after_the_silence() {
    for (idle, expected) in [
        (
            IdleClose::fin(Duration::from_millis(150)),
            io::ErrorKind::UnexpectedEof,
        ),
        (
            IdleClose::rst(Duration::from_millis(150)),
            io::ErrorKind::ConnectionReset,
        ),
    ] {
        let proxy = proxy_with(Faults {
            idle_close: Some(idle),
            ..Faults::none()
        })
        .await;
        let mut conn = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let started = Instant::now();
        assert_eq!(round_trip(&mut conn, b"abc").await.unwrap(), b"abc");
        assert_eq!(ending(&mut conn).await, expected, "{idle:?}");
        assert!(started.elapsed() >= Duration::from_millis(150));
        let stats = proxy.stats();
        assert_eq!(
            (stats.idle_fin, stats.idle_rst),
            match idle.with {
                CloseWith::Fin => (1, 0),
                CloseWith::Rst => (0, 1),
            }
        );
    }
}

#[tokio::test]
async fn traffic_keeps_an_idle_close_away() {
    let proxy = proxy_with(Faults {
        idle_close: Some(IdleClose::rst(Duration::from_millis(300))),
        ..Faults::none()
    })
    .await;
    let mut conn = TcpStream::connect(proxy.local_addr()).await.unwrap();
    for _ in 0..6 {
        round_trip(&mut conn, b"k").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(proxy.stats().idle_rst, 0);
}

#[tokio::test]
async fn reset_after_bytes_delivers_up_to_the_limit_then_resets() {
    let proxy = proxy_with(Faults {
        reset_after_bytes: Some(6),
        ..Faults::none()
    })
    .await;
    let mut conn = TcpStream::connect(proxy.local_addr()).await.unwrap();
    // 4 bytes up, 2 of the 4 echoed bytes down, then the reset.
    conn.write_all(b"abcd").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16];
    let kind = loop {
        match timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .unwrap()
        {
            Ok(0) => break io::ErrorKind::UnexpectedEof,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e.kind(),
        }
    };
    assert_eq!(kind, io::ErrorKind::ConnectionReset);
    assert!(got.len() <= 2 && b"ab".starts_with(&got), "{got:?}");
    assert_eq!(proxy.stats().reset_after_bytes, 1);
}

#[tokio::test]
async fn certain_reset_probability_resets_the_first_request() {
    let proxy = proxy_with(Faults {
        reset_probability: 1.0,
        ..Faults::none()
    })
    .await;
    let mut conn = TcpStream::connect(proxy.local_addr()).await.unwrap();
    conn.write_all(b"GET").await.unwrap();
    assert_eq!(ending(&mut conn).await, io::ErrorKind::ConnectionReset);
    let stats = proxy.stats();
    assert_eq!(stats.reset_random, 1);
    assert_eq!(stats.bytes_to_upstream, 0);
}

/// Which of `n` one-request connections were reset, through a fresh proxy.
async fn reset_pattern(seed: u64, n: usize) -> Vec<bool> {
    let proxy = ChaosProxy::builder(echo_upstream().await)
        .seed(seed)
        .faults(Faults {
            reset_probability: 0.4,
            ..Faults::none()
        })
        .start()
        .await
        .unwrap();
    let mut pattern = Vec::with_capacity(n);
    for _ in 0..n {
        let mut conn = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let answered = round_trip(&mut conn, b"q").await.is_ok();
        pattern.push(!answered);
        drop(conn);
        // One connection at a time, so connection ids follow the same order.
        let done = proxy.stats().accepted;
        eventually("the relay to end", || {
            let s = proxy.stats();
            s.completed + s.reset_random == done
        })
        .await;
    }
    pattern
}

#[tokio::test]
async fn the_same_seed_resets_the_same_requests() {
    let first = reset_pattern(99, 24).await;
    let second = reset_pattern(99, 24).await;
    assert_eq!(first, second);
    assert!(
        first.iter().any(|r| *r) && first.iter().any(|r| !*r),
        "{first:?}"
    );
}

#[tokio::test]
async fn black_hole_holds_bytes_and_delivers_them_when_it_ends() {
    let proxy = proxy_with(Faults::none()).await;
    let mut conn = TcpStream::connect(proxy.local_addr()).await.unwrap();
    round_trip(&mut conn, b"1").await.unwrap();
    proxy.set_black_hole(true);
    conn.write_all(b"2").await.unwrap();
    let mut reply = [0u8; 1];
    let waited = timeout(Duration::from_millis(300), conn.read_exact(&mut reply)).await;
    assert!(waited.is_err(), "a byte crossed the black hole");
    proxy.set_black_hole(false);
    timeout(Duration::from_secs(10), conn.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply, b"2");
    assert!(proxy.stats().held_chunks >= 1);
}

#[tokio::test]
async fn refusing_gives_econnrefused_and_keeps_the_port() {
    let proxy = proxy_with(Faults::none()).await;
    let addr = proxy.local_addr();
    let mut before = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut before, b"x").await.unwrap();
    proxy.set_refuse(true).unwrap();
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    // Connections already open are not touched.
    round_trip(&mut before, b"y").await.unwrap();
    proxy.set_refuse(false).unwrap();
    let mut after = TcpStream::connect(addr).await.unwrap();
    assert_eq!(round_trip(&mut after, b"z").await.unwrap(), b"z");
}

#[tokio::test]
async fn crash_resets_every_open_connection_at_once() {
    let proxy = proxy_with(Faults::none()).await;
    let mut conns = Vec::new();
    for _ in 0..5 {
        let mut conn = TcpStream::connect(proxy.local_addr()).await.unwrap();
        round_trip(&mut conn, b"x").await.unwrap();
        conns.push(conn);
    }
    assert_eq!(proxy.crash().await, 5);
    for conn in &mut conns {
        assert_eq!(ending(conn).await, io::ErrorKind::ConnectionReset);
    }
    let stats = proxy.stats();
    assert_eq!((stats.crashes, stats.crash_resets, stats.active), (1, 5, 0));
    let mut fresh = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(round_trip(&mut fresh, b"up").await.unwrap(), b"up");
}

#[tokio::test]
async fn latency_delays_each_chunk_by_at_least_its_base() {
    let proxy = proxy_with(Faults {
        latency: Some(Latency::new(
            Duration::from_millis(60),
            Duration::from_millis(20),
        )),
        ..Faults::none()
    })
    .await;
    let mut conn = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let started = Instant::now();
    round_trip(&mut conn, b"slow").await.unwrap();
    // One delay on the way up, one on the way down.
    assert!(
        started.elapsed() >= Duration::from_millis(120),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.stats().delayed_chunks, 2);
}

#[tokio::test]
async fn connections_beyond_the_cap_are_reset() {
    let proxy = proxy_with(Faults {
        max_connections: Some(2),
        ..Faults::none()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = TcpStream::connect(proxy.local_addr()).await.unwrap();
        round_trip(&mut conn, b"x").await.unwrap();
        held.push(conn);
    }
    // The reset can come so fast that the connect itself reports it.
    let third = match TcpStream::connect(proxy.local_addr()).await {
        Ok(mut third) => ending(&mut third).await,
        Err(e) => e.kind(),
    };
    assert_eq!(third, io::ErrorKind::ConnectionReset);
    assert_eq!(proxy.stats().over_capacity, 1);
    drop(held.pop());
    eventually("a slot to free up", || proxy.stats().active < 2).await;
    let mut fourth = TcpStream::connect(proxy.local_addr()).await.unwrap();
    round_trip(&mut fourth, b"ok").await.unwrap();
}

#[tokio::test]
async fn an_unreachable_upstream_resets_the_client() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = ChaosProxy::start(dead).await.unwrap();
    let seen = match TcpStream::connect(proxy.local_addr()).await {
        Ok(mut conn) => ending(&mut conn).await,
        Err(e) => e.kind(),
    };
    assert_eq!(seen, io::ErrorKind::ConnectionReset);
    assert_eq!(proxy.stats().upstream_unreachable, 1);
}

#[tokio::test]
async fn shutdown_closes_connections_and_stops_listening() {
    let proxy = proxy_with(Faults::none()).await;
    let addr = proxy.local_addr();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    round_trip(&mut conn, b"x").await.unwrap();
    proxy.shutdown().await;
    assert_eq!(ending(&mut conn).await, io::ErrorKind::UnexpectedEof);
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_connections() {
    let proxy = proxy_with(Faults::none()).await;
    let mut conn = TcpStream::connect(proxy.local_addr()).await.unwrap();
    round_trip(&mut conn, b"x").await.unwrap();
    drop(proxy);
    assert_eq!(ending(&mut conn).await, io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_bad_probability_is_refused_and_changes_nothing() {
    let proxy = proxy_with(Faults::none()).await;
    let err = proxy.set_reset_probability(2.0).unwrap_err();
    assert!(err.to_string().contains("from 0 to 1"), "{err}");
    assert_eq!(proxy.faults(), Faults::none());
    let err = ChaosProxy::builder("127.0.0.1:9")
        .faults(Faults {
            reset_probability: f64::NAN,
            ..Faults::none()
        })
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, ChaosError::Probability(_)), "{err:?}");
}
