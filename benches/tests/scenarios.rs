//! Every pool and every scenario runs end to end at tiny sizes, on real loopback
//! sockets, and produces the records and plots the runner publishes.

use std::time::Duration;

use steadypool_benches::dead_peer::{self, Hole};
use steadypool_benches::echo::EchoServer;
use steadypool_benches::goodput::{self, Contender};
use steadypool_benches::pools::{Kind, PoolSpec};
use steadypool_benches::{checkout, plot, report, storm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pool_serves_requests_and_checkouts() {
    let server = EchoServer::start().await.unwrap();
    for kind in Kind::ALL {
        let pool = PoolSpec::new(kind, server.addr(), 2).build().await.unwrap();
        pool.request(1).await.unwrap();
        pool.request_on_checkout(2).await.unwrap();
        pool.get_and_drop().await.unwrap();
        pool.fill(kind, 2).await.unwrap();
        assert_eq!(pool.open_connections().await, 2, "{}", kind.label());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_runs_for_async_pools_and_threads() {
    let server = EchoServer::start().await.unwrap();
    for kind in [
        Kind::Steadypool,
        Kind::DeadpoolBare,
        Kind::Bb8Ping,
        Kind::MobcNoCheck,
        Kind::R2d2NoCheck,
    ] {
        let pool = checkout::prepare(kind, server.addr(), 4).await.unwrap();
        let took = checkout::run(kind, &pool, 8, 200).await.unwrap();
        assert!(took > Duration::ZERO, "{}", kind.label());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodput_accounts_for_every_request_and_plots_them() {
    let settings = goodput::Settings {
        requests: 200,
        tasks: 8,
        pool_size: 4,
        seeds: vec![5],
    };
    let steady = Contender {
        kind: Kind::Steadypool,
        attempts: 1,
    };
    let run = goodput::run_once(steady, true, 5, &settings).await.unwrap();
    assert_eq!(run.samples.len(), 200);
    let ok = run.samples.iter().filter(|s| s.ok).count();
    assert!(
        ok >= 198,
        "steadypool answered only {ok} of 200 under faults"
    );

    let dir = std::env::temp_dir().join(format!("steadypool-bench-goodput-{}", std::process::id()));
    plot::goodput(&dir, &[run]).unwrap();
    let svg = std::fs::read_to_string(dir.join("goodput_faults.svg")).unwrap();
    assert!(svg.contains("<svg"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_logs_connect_attempts_and_recovers() {
    let settings = storm::Settings {
        pools: 3,
        size: 2,
        workers: 2,
        tick: Duration::from_millis(50),
        before: Duration::from_millis(300),
        down_for: Duration::from_millis(300),
        after: Duration::from_millis(1500),
    };
    let (records, runs) = storm::scenario(settings, &[Kind::Steadypool, Kind::DeadpoolPeek])
        .await
        .unwrap();
    assert_eq!(records.len(), 12);
    let deadpool = &runs[1];
    assert!(
        deadpool.attempts.iter().any(|at| (0.0..0.3).contains(at)),
        "no connect while down"
    );
    assert!(deadpool.recovery.is_some());

    let dir = std::env::temp_dir().join(format!("steadypool-bench-storm-{}", std::process::id()));
    plot::storm(&dir, &runs, settings.after).unwrap();
    assert!(
        std::fs::read_to_string(dir.join("storm_connects.svg"))
            .unwrap()
            .contains("<svg")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peer_with_the_chaos_black_hole_reports_every_clock() {
    let cap = Duration::from_secs(2);
    let mut records = dead_peer::measure(Hole::Chaos, cap).await.unwrap();
    assert_eq!(
        records.len(),
        dead_peer::ZOMBIE_KINDS.len() + dead_peer::REQUEST_KINDS.len() + 1
    );
    assert!(records.iter().all(|r| r.value <= cap.as_secs_f64() + 0.5));
    // The proxy's kernel acknowledges everything: no pool can see this hole in 2 s.
    assert!(records.iter().all(|r| r.capped));
    report::fill_ratios(&mut records);
    assert!(report::markdown(&records).contains("| steadypool-get |"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_race_measures_every_client_in_every_case_and_plots_it() {
    if steadypool_tests::host::program("node").is_none()
        && steadypool_tests::host::program("nodejs").is_none()
    {
        steadypool_tests::host::skip("node not found: install package nodejs");
        return;
    }
    let settings = steadypool_benches::http::Settings {
        workers: 2,
        duration: Duration::from_millis(1500),
        happy_requests: 14,
    };
    let contenders = steadypool_benches::http::Contender::ALL;
    let records = steadypool_benches::http::scenario(&settings, &contenders)
        .await
        .unwrap();
    let value = |case: &str, pool: &str, metric: &str| {
        records
            .iter()
            .find(|r| r.case == case && r.pool == pool && r.metric == metric)
            .map(|r| r.value)
    };
    for (case, ..) in steadypool_benches::http::RACE_CASES {
        for contender in contenders {
            let requests = value(case, contender.label(), "requests");
            assert!(
                requests.is_some_and(|n| n > 0.0),
                "{case} {}",
                contender.label()
            );
        }
        assert_eq!(
            value(case, "steadypool", "gets_failed"),
            Some(0.0),
            "{case}"
        );
        assert_eq!(
            value(case, "steadypool", "posts_replayed"),
            Some(0.0),
            "{case}"
        );
    }
    for contender in contenders {
        let cost = value("happy", contender.label(), "us_per_request");
        assert!(cost.is_some_and(|us| us > 0.0), "{}", contender.label());
    }
    let dir = std::env::temp_dir().join(format!("steadypool-http-plot-{}", std::process::id()));
    plot::http(&dir, &records).unwrap();
    assert!(dir.join("http_race.svg").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
