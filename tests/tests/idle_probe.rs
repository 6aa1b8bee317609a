//! The idle probe against paths whose idle limit is known: the chaos proxy closing
//! idle connections after 3 s (with FIN, and with RST), and a real Redis with
//! `timeout 2`. Its estimate must be within 10 % of the truth. And bad input: an
//! unreachable target, a port that does not speak the protocol, a bad flag.

use std::time::Duration;

use steadypool::chaos::{ChaosProxy, IdleClose};
use steadypool_examples::console::Verbosity;
use steadypool_examples::idle_probe::{self, ProbeArgs, ProbeConfig, ProbeError, ProbeProtocol};
use steadypool_examples::kv::KvServer;
use steadypool_examples::recommend::ClosedBy;
use steadypool_tests::redis::RedisServer;
use tokio::net::TcpListener;

fn config(target: String, protocol: ProbeProtocol, max_time: Duration) -> ProbeConfig {
    ProbeConfig {
        max_time,
        verbosity: Verbosity::Quiet,
        ..ProbeConfig::new(target, protocol)
    }
}

fn assert_within_ten_percent(found: Option<Duration>, truth: Duration, report: &str) {
    let found = found.unwrap_or_else(|| panic!("no limit found:\n{report}"));
    let error = found.as_secs_f64() / truth.as_secs_f64() - 1.0;
    assert!(
        error.abs() <= 0.10,
        "found {found:?}, the truth is {truth:?} ({:+.1} %):\n{report}",
        error * 100.0
    );
}

async fn probe_idle_close(close: IdleClose, expected: ClosedBy) {
    let upstream = KvServer::start().await.unwrap();
    let proxy = ChaosProxy::builder(upstream.addr())
        .seed(3)
        .start()
        .await
        .unwrap();
    proxy.set_idle_close(Some(close));
    let report = idle_probe::run(config(
        proxy.local_addr().to_string(),
        ProbeProtocol::Tcp,
        Duration::from_secs(15),
    ))
    .await
    .unwrap();
    let text = format!("{}\n{}", report.text(), report.to_json().unwrap());
    assert_within_ten_percent(report.limit(), close.after, &text);
    assert_eq!(report.closed_by, Some(expected), "{text}");
    assert!(report.elapsed_secs <= 15.5, "{text}");
    let recommended = report.recommendation().unwrap();
    assert!(recommended.idle_timeout < close.after, "{text}");
    assert!(text.contains(".idle_timeout(Some("), "{text}");
}

#[tokio::test]
async fn finds_a_load_balancer_closing_idle_connections_with_fin() {
    probe_idle_close(IdleClose::fin(Duration::from_secs(3)), ClosedBy::Fin).await;
}

#[tokio::test]
async fn finds_a_load_balancer_resetting_idle_connections() {
    probe_idle_close(IdleClose::rst(Duration::from_secs(3)), ClosedBy::Rst).await;
}

#[tokio::test]
async fn finds_redis_idle_timeout() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut admin = redis.connect().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("timeout")
        .arg("2")
        .query_async(&mut admin)
        .await
        .unwrap();
    let report = idle_probe::run(config(
        redis.addr().to_string(),
        ProbeProtocol::Redis,
        Duration::from_secs(20),
    ))
    .await
    .unwrap();
    let text = format!("{}\n{}", report.text(), report.to_json().unwrap());
    assert_within_ten_percent(report.limit(), Duration::from_secs(2), &text);
    assert_eq!(report.closed_by, Some(ClosedBy::Fin), "{text}");
    assert!(
        report.alive_after_secs.is_some_and(|alive| alive >= 1.0),
        "a PING after 1 s idle must have been answered:\n{text}"
    );
}

#[tokio::test]
async fn a_path_without_idle_limit_says_so_within_its_time() {
    let upstream = KvServer::start().await.unwrap();
    let report = idle_probe::run(config(
        upstream.addr().to_string(),
        ProbeProtocol::Tcp,
        Duration::from_secs(6),
    ))
    .await
    .unwrap();
    let text = report.text();
    assert_eq!(report.limit(), None, "{text}");
    assert!(report.elapsed_secs <= 6.5, "{text}");
    assert!(text.contains("no idle limit found"), "{text}");
}

#[tokio::test]
async fn an_unreachable_target_is_a_clear_error() {
    let port = steadypool_tests::host::free_port().unwrap();
    let err = idle_probe::run(config(
        format!("127.0.0.1:{port}"),
        ProbeProtocol::Tcp,
        Duration::from_secs(10),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, ProbeError::Unreachable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&port.to_string()) && message.contains("refused"),
        "{message}"
    );
    assert_ne!(err.exit_code(), 0);
}

#[tokio::test]
async fn a_port_that_does_not_speak_the_protocol_is_a_clear_error() {
    // Accepts connections and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let err = idle_probe::run(ProbeConfig {
        rtt_timeout: Duration::from_millis(500),
        ..config(
            addr.to_string(),
            ProbeProtocol::Redis,
            Duration::from_secs(10),
        )
    })
    .await
    .unwrap_err();
    assert!(matches!(err, ProbeError::NotSpeaking { .. }), "{err:?}");
    assert!(
        err.to_string().contains("does not answer as redis"),
        "{err}"
    );
    assert_ne!(err.exit_code(), 0);
}

#[test]
fn bad_flags_are_clear_errors_with_a_usage_exit_code() {
    let err = ProbeArgs::try_from_args(["idle-probe", "127.0.0.1:6379", "--bogus"]).unwrap_err();
    assert!(err.to_string().contains("--bogus"), "{err}");
    assert_eq!(err.exit_code(), 2);

    let err = ProbeArgs::try_from_args(["idle-probe", "127.0.0.1:6379", "--protocol", "mysql"])
        .unwrap_err();
    assert!(err.to_string().contains("mysql"), "{err}");
    assert_eq!(err.exit_code(), 2);

    let err = ProbeArgs::try_from_args(["idle-probe", "127.0.0.1:6379", "--max-time", "soon"])
        .unwrap_err();
    assert!(err.to_string().contains("5s"), "{err}");

    let err = ProbeArgs::try_from_args(["idle-probe"]).unwrap_err();
    assert!(err.to_string().contains("HOST:PORT"), "{err}");

    let args = ProbeArgs::try_from_args(["idle-probe", "localhost"]).unwrap();
    let err = args.config().unwrap_err();
    assert!(err.to_string().contains("HOST:PORT"), "{err}");
    assert_eq!(err.exit_code(), 2);

    let args = ProbeArgs::try_from_args(["idle-probe", "localhost:1", "--max-time", "1s"]).unwrap();
    assert_eq!(args.config().unwrap_err().exit_code(), 2);
}
