//! The HTTP driver behind HAProxy as a load balancer: HAProxy closes client
//! connections idle past its `timeout client` without announcing it (as an ALB
//! does), shorter than the pool's own idle timeout. Requests paced around that
//! timeout, and the chaos proxy resetting requests mid-flight with latency on the
//! path, cost no idempotent request and replay no `POST`.

use std::time::Duration;

use steadypool::chaos::{ChaosProxy, Latency};
use steadypool::drivers::http::{HttpClient, HttpManager};
use steadypool::{Pool, RetryPolicy};
use steadypool_tests::http::{HaProxy, NodeServer, Outcome, paced_load};

/// HAProxy's idle timeout for client connections.
const LB_IDLE: Duration = Duration::from_secs(1);

fn clients(origin: &str, count: usize) -> Vec<HttpClient> {
    let policy = RetryPolicy::default()
        .max_attempts(5)
        .backoff(Duration::from_millis(10), Duration::from_millis(200))
        .budget(1.0, 100);
    (0..count)
        .map(|_| {
            let pool = Pool::builder(HttpManager::new(origin).unwrap())
                .max_size(1)
                // Longer than the load balancer's: the pool must learn it.
                .idle_timeout(Some(Duration::from_secs(30)))
                .retry_policy(policy.clone())
                .build()
                .unwrap();
            HttpClient::new(pool)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_paced_around_the_load_balancers_idle_timeout_never_fail_nor_replay_a_post() {
    let Some(node) = NodeServer::start(None) else {
        return;
    };
    let Some(lb) = HaProxy::start(node.port(), LB_IDLE) else {
        return;
    };
    let clients = clients(&lb.origin(), 8);

    let report = paced_load(
        &clients,
        Duration::from_secs(8),
        (Duration::from_millis(800), Duration::from_millis(1300)),
        3,
    )
    .await;

    assert!(report.gets.len() >= 30, "{} GETs", report.gets.len());
    assert_eq!(report.failed_gets(), Vec::<&(String, Outcome)>::new());
    report.assert_posts_never_replayed(&node.stats());
    // The load balancer did close connections under the pool.
    let closed: u64 = clients.iter().map(|c| c.pool().stats().closed()).sum();
    assert!(closed > 0, "no connection was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_mid_request_and_latency_in_front_of_the_load_balancer_cost_no_get() {
    let Some(node) = NodeServer::start(None) else {
        return;
    };
    let Some(lb) = HaProxy::start(node.port(), LB_IDLE) else {
        return;
    };
    let proxy = ChaosProxy::builder(lb.addr())
        .seed(16)
        .start()
        .await
        .unwrap();
    proxy.set_latency(Some(Latency::new(
        Duration::from_millis(5),
        Duration::from_millis(15),
    )));
    proxy.set_reset_probability(0.05).unwrap();
    let origin = format!("http://{}", proxy.local_addr());
    let clients = clients(&origin, 8);

    let report = paced_load(
        &clients,
        Duration::from_secs(6),
        (Duration::from_millis(20), Duration::from_millis(1200)),
        3,
    )
    .await;

    assert!(report.gets.len() >= 50, "{} GETs", report.gets.len());
    assert_eq!(report.failed_gets(), Vec::<&(String, Outcome)>::new());
    report.assert_posts_never_replayed(&node.stats());
    assert!(proxy.stats().injected_resets() > 0, "{:?}", proxy.stats());
}
