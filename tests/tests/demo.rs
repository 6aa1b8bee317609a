//! The demo, in short runs: steadypool's application sees no failure while the plain
//! pool's sees the faults; every connection the chaos proxy ended shows up in
//! steadypool's reset counters, under the cause that matches how it was ended. And
//! bad input: clear errors, exit codes not 0.

use std::time::Duration;

use steadypool_examples::console::Verbosity;
use steadypool_examples::demo::{
    self, DemoArgs, DemoConfig, DemoError, PoolReport, Report, Target,
};
use steadypool_tests::redis::RedisServer;
use tokio::net::TcpListener;

fn short(args: &[&str]) -> DemoConfig {
    let mut argv = vec!["demo", "--duration", "5s", "--quiet"];
    argv.extend_from_slice(args);
    let config = DemoArgs::try_from_args(argv).unwrap().config().unwrap();
    assert_eq!(config.verbosity, Verbosity::Quiet);
    config
}

async fn run(config: DemoConfig) -> (Report, String) {
    let report = demo::run(config, std::future::pending()).await.unwrap();
    let json = report.to_json().unwrap();
    let context = format!("{}\n{json}", report.table());
    (report, context)
}

/// Resets counted under `causes`.
fn resets(pool: &PoolReport, causes: &[&str]) -> u64 {
    pool.resets
        .iter()
        .filter(|r| causes.contains(&r.cause))
        .map(|r| r.count)
        .sum()
}

/// `counted` connections lost against `ended` by the proxy: never more, and every one
/// of them either counted or closed by the pool itself as idle. A connection the
/// path closed while it sat past the pool's learned idle limit goes as a planned
/// close; without any such close the two are equal.
fn assert_accounted(counted: u64, ended: u64, pool: &PoolReport, context: &str) {
    assert!(
        counted <= ended,
        "counted {counted}, ended {ended}:\n{context}"
    );
    assert!(
        counted + pool.closed_idle >= ended,
        "counted {counted} and closed {} idle, ended {ended}:\n{context}",
        pool.closed_idle
    );
    if pool.closed_idle == 0 {
        assert_eq!(counted, ended, "{context}");
    }
}

fn assert_steadypool_absorbed_everything(report: &Report, context: &str) {
    let [steady, plain] = &report.pools[..] else {
        panic!("two pools expected:\n{context}");
    };
    assert_eq!(steady.name, "steadypool");
    // How many requests a run makes depends on how much CPU it gets (a loaded machine
    // makes a fifth of an idle one's): no count is asserted, only that the workload
    // ran. That the faults struck it is what each test checks, with a schedule and
    // a seed that make them strike however few requests there are.
    assert!(steady.requests > 0 && plain.requests > 0, "{context}");
    assert_eq!(
        steady.failures, 0,
        "steadypool's application saw failures:\n{context}"
    );
    assert!(
        plain.failures > 0,
        "the faults must reach the plain pool:\n{context}"
    );
    assert_eq!(plain.failures, plain.requests - plain.succeeded);
}

/// A seed whose fault dice reset the very first request through each proxy: both
/// proxies draw a connection's faults from the seed and the connection's number, and
/// with this one connection 0 is reset on its first chunk (the first request of the
/// pool's first connection) while the next 39 connections' first five chunks each
/// way pass. So a reset mid-request strikes however few requests a loaded machine
/// leaves time for; with the default seed 7, the 1 % dice may strike none of the
/// hundred or so requests such a run can make.
const SEED_RESETTING_THE_FIRST_REQUEST: &str = "74";

#[tokio::test]
async fn five_seconds_of_production_faults_reach_only_the_plain_pool() {
    let (report, context) = run(short(&[
        "--json",
        "--seed",
        SEED_RESETTING_THE_FIRST_REQUEST,
    ]))
    .await;
    assert!(!report.interrupted);
    assert_eq!(
        report.faults.names,
        ["idle", "resets", "crash", "gaps"],
        "{context}"
    );
    assert_eq!(report.schedule.crashes.len(), 1, "{context}");
    assert_eq!(report.schedule.gaps.len(), 1, "{context}");
    assert_steadypool_absorbed_everything(&report, &context);
    let steady = &report.pools[0];
    assert!(steady.retries > 0, "{context}");

    // Every connection the proxy ended was counted by steadypool, once, with the
    // cause that matches how it was ended: all of them were resets here.
    let chaos = steady.chaos.unwrap();
    assert!(
        chaos.crash_resets > 0 && chaos.reset_random > 0,
        "{context}"
    );
    assert!(chaos.idle_rst > 0, "{context}");
    assert_eq!(chaos.idle_fin, 0, "{context}");
    assert_accounted(
        steady.connections_lost,
        chaos.ended_by_faults,
        steady,
        &context,
    );
    assert_accounted(
        resets(steady, &["peer_reset", "broken_pipe"]),
        chaos.idle_rst + chaos.reset_random + chaos.crash_resets + chaos.other_resets,
        steady,
        &context,
    );
    // The idle victims were found before any request reached them.
    let idle_phases: u64 = steady
        .resets
        .iter()
        .filter(|r| r.phase == "idle" || r.phase == "checkout")
        .map(|r| r.count)
        .sum();
    assert!(idle_phases > 0, "{context}");

    let json: serde_json::Value = serde_json::from_str(&report.to_json().unwrap()).unwrap();
    assert_eq!(json["pools"][0]["failures"], 0, "{json}");
    assert!(json["pools"][1]["failures"].as_u64().unwrap() > 0, "{json}");
    assert!(
        json["pools"][0]["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
        "{json}"
    );
}

#[tokio::test]
async fn a_load_balancer_closing_with_fin_is_counted_as_peer_closed() {
    let (report, context) = run(short(&["--faults", "idle-fin,gaps", "--seed", "11"])).await;
    assert_steadypool_absorbed_everything(&report, &context);
    let steady = &report.pools[0];
    let chaos = steady.chaos.unwrap();
    assert!(chaos.idle_fin > 0, "{context}");
    assert_eq!(chaos.ended_by_faults, chaos.idle_fin, "{context}");
    assert_accounted(
        resets(steady, &["peer_closed"]),
        chaos.idle_fin,
        steady,
        &context,
    );
    assert_accounted(steady.connections_lost, chaos.idle_fin, steady, &context);
    assert!(
        report.pools[1]
            .failures_by_kind
            .contains_key("peer_closed / in_use"),
        "{context}"
    );
}

#[tokio::test]
async fn the_demo_runs_against_a_real_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let target = redis.addr().to_string();
    let (report, context) = run(short(&[
        "--target",
        target.as_str(),
        "--protocol",
        "redis",
        "--duration",
        "4s",
    ]))
    .await;
    assert_eq!(report.pools[0].failures, 0, "{context}");
    assert!(report.pools[0].requests > 100, "{context}");
    assert!(report.pools[1].requests > 100, "{context}");
    // Redis's driver reads the socket itself, so how a connection ended (FIN or RST)
    // is not always known: only the totals must agree.
    let steady = &report.pools[0];
    let chaos = steady.chaos.unwrap();
    assert_accounted(
        steady.connections_lost,
        chaos.ended_by_faults,
        steady,
        &context,
    );
}

#[tokio::test]
async fn an_interrupted_run_reports_what_happened_so_far() {
    let config = DemoConfig {
        duration: Duration::from_secs(60),
        verbosity: Verbosity::Quiet,
        ..DemoConfig::default()
    };
    let interrupt = tokio::time::sleep(Duration::from_millis(1500));
    let report = demo::run(config, interrupt).await.unwrap();
    assert!(report.interrupted);
    assert!(report.ran_secs < 5.0, "{}", report.table());
    assert!(report.pools[0].requests > 0);
    assert!(
        report.table().contains("interrupted after"),
        "{}",
        report.table()
    );
}

#[test]
fn bad_flags_are_clear_errors_with_a_usage_exit_code() {
    let err = DemoArgs::try_from_args(["demo", "--bogus"]).unwrap_err();
    assert!(err.to_string().contains("--bogus"), "{err}");
    assert_eq!(err.exit_code(), 2);

    let err = DemoArgs::try_from_args(["demo", "--faults", "idle,flood"]).unwrap_err();
    assert!(err.to_string().contains("flood"), "{err}");
    assert_eq!(err.exit_code(), 2);

    let err = DemoArgs::try_from_args(["demo", "--duration", "0s"]).unwrap_err();
    assert!(err.to_string().contains("greater than zero"), "{err}");

    let err = DemoArgs::try_from_args(["demo", "--concurrency", "lots"]).unwrap_err();
    assert_eq!(err.exit_code(), 2);

    for (argv, says) in [
        (&["demo", "--concurrency", "0"][..], "--concurrency"),
        (&["demo", "--reset-rate", "2"][..], "--reset-rate"),
        (&["demo", "--protocol", "redis"][..], "--target"),
        (&["demo", "--target", "localhost"][..], "HOST:PORT"),
        (&["demo", "--lb-idle-timeout", "200ms"][..], "1s"),
    ] {
        let err = DemoArgs::try_from_args(argv).unwrap().config().unwrap_err();
        assert!(matches!(err, DemoError::Config(_)), "{argv:?}: {err:?}");
        assert!(err.to_string().contains(says), "{argv:?}: {err}");
        assert_eq!(err.exit_code(), 2, "{argv:?}");
    }
}

fn target(addr: String) -> DemoConfig {
    DemoConfig {
        target: Target::Remote {
            addr,
            protocol: demo::Protocol::Kv,
        },
        duration: Duration::from_secs(2),
        verbosity: Verbosity::Quiet,
        ..DemoConfig::default()
    }
}

#[tokio::test]
async fn an_unreachable_target_is_a_clear_error() {
    let port = steadypool_tests::host::free_port().unwrap();
    let err = demo::run(target(format!("127.0.0.1:{port}")), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, DemoError::Target { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&port.to_string()), "{message}");
    assert!(message.contains("could not connect"), "{message}");
    assert_eq!(err.exit_code(), 1);
}

#[tokio::test]
async fn a_target_that_does_not_speak_the_protocol_is_a_clear_error() {
    // Answers every line with a greeting of another protocol.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0
                        || stream
                            .write_all(b"+HELLO from elsewhere\r\n")
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let err = demo::run(target(addr.to_string()), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, DemoError::Target { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("PING"), "{message}");
    assert!(message.contains("--protocol redis"), "{message}");
    assert_eq!(err.exit_code(), 1);
}
