//! The warning logged for each lost connection: its fields, and a hint that names
//! what happened and what to change. Real faults on loopback; the log is read back
//! through `tracing-test`.
//!
//! The faults are found inside the test's own task (at checkout or when a broken
//! connection is dropped), so that the events carry the test's span.

use std::time::Duration;

use steadypool::{Classify, Disposition, Phase, Pool, ResetCause};
use steadypool_tests::line_manager::{LineManager, request};
use steadypool_tests::servers::LineServer;
use tracing_test::traced_test;

const HOUR: Duration = Duration::from_secs(3600);

/// The value of `field=` in a formatted log line, up to the next space.
fn field<'a>(line: &'a str, field: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {field}="))? + field.len() + 2;
    line[start..].split(' ').next()
}

#[tokio::test]
#[traced_test]
async fn the_hint_for_a_close_after_idle_names_the_idle_time_and_the_fix() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .name("hinted")
        .reaper_interval(HOUR)
        .check_after(HOUR)
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
    drop(conn);
    // Idle long enough to count as evidence of an idle limit (1 s and more).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(server.close_all().await, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut conn = pool.get().await.unwrap();
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");

    logs_assert(|lines| {
        let resets: Vec<&&str> = lines
            .iter()
            .filter(|l| l.contains("connection reset"))
            .collect();
        let [line] = resets.as_slice() else {
            return Err(format!("expected one reset warning, got {resets:?}"));
        };
        if !line.contains("WARN") {
            return Err(format!("not a warning: {line}"));
        }
        let idle: f64 = field(line, "idle_secs")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no idle_secs: {line}"))?;
        let named = format!("after {idle:.1} s idle");
        for expected in [
            "pool=hinted",
            "cause=\"peer_closed\"",
            "phase=\"checkout\"",
            "age_secs=",
            &format!("peer={}", server.addr()),
            "hint=closed by the peer (FIN)",
            &named,
            "closes idle connections after at most",
            "set idle_timeout below",
        ] {
            if !line.contains(expected) {
                return Err(format!("{expected:?} missing from: {line}"));
            }
        }
        if !(1.3..5.0).contains(&idle) {
            return Err(format!("idle_secs {idle} is not the time it sat idle"));
        }
        Ok(())
    });
    let limit = pool.idle_limit();
    assert!(limit.upper.is_some(), "{limit:?}");
}

#[tokio::test]
#[traced_test]
async fn refused_connects_say_upstream_down_and_repeats_are_held_back() {
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    // The connect circuit would stop the connects after a few; here every one of
    // them must reach the kernel.
    let pool = Pool::builder(LineManager::new(addr))
        .circuit_open_after(100)
        .build()
        .unwrap();
    for _ in 0..5 {
        assert!(pool.get().await.is_err());
    }
    assert_eq!(pool.stats().resets(ResetCause::Refused, Phase::Connect), 5);

    logs_assert(|lines| {
        let warnings: Vec<&&str> = lines
            .iter()
            .filter(|l| l.contains("connect failed"))
            .collect();
        let [line] = warnings.as_slice() else {
            return Err(format!(
                "5 identical failures should log once, logged {}",
                warnings.len()
            ));
        };
        for expected in [
            "cause=\"refused\"",
            "phase=\"connect\"",
            "upstream down or its listen backlog full",
            &addr.to_string(),
        ] {
            if !line.contains(expected) {
                return Err(format!("{expected:?} missing from: {line}"));
            }
        }
        Ok(())
    });
}

#[tokio::test]
#[traced_test]
async fn a_crash_with_a_request_in_flight_says_the_upstream_crashed() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .reaper_interval(HOUR)
        .build()
        .unwrap();
    let mut conn = pool.get().await.unwrap();
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
    assert_eq!(server.freeze_all().await, 1);
    let (result, reset) = tokio::join!(request(&mut conn, "SET k v"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.reset_all().await
    });
    assert_eq!(reset, 1);
    let err = result.unwrap_err();
    let Disposition::Broken { cause, .. } = err.classify() else {
        panic!("a reset connection is broken: {err}");
    };
    conn.mark_broken(cause);
    drop(conn);

    assert!(logs_contain("cause=\"peer_reset\" phase=\"in_use\""));
    assert!(logs_contain(
        "hint=reset (RST) while in use: the upstream crashed, restarted or shed load"
    ));
    assert!(logs_contain("not an idle timeout"));
}
