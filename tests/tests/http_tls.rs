//! The HTTP driver over TLS against a real Node.js `https.createServer`, its
//! certificate made at test time: sequential requests share one handshake, session
//! tickets on an idle connection cost nothing, a close_notify is `peer_closed` and
//! teaches the idle limit, Node's keep-alive close is learned and avoided as over
//! plain TCP, a certificate from another authority is refused, and a streamed body
//! keeps its connection to its end.

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use steadypool::drivers::http::{HttpClient, HttpError, HttpManager};
use steadypool::{Eviction, Phase, Pool, PoolBuilder, ResetCause};
use steadypool_tests::http::{NodeServer, Outcome, paced_load};
use steadypool_tests::tls::TestCa;

fn client(
    manager: HttpManager,
    configure: impl FnOnce(PoolBuilder<HttpManager>) -> PoolBuilder<HttpManager>,
) -> HttpClient {
    HttpClient::new(configure(Pool::builder(manager)).build().unwrap())
}

fn https(node: &NodeServer, ca: &TestCa) -> HttpManager {
    HttpManager::with_tls(&node.origin(), ca.client_config()).unwrap()
}

fn get(path: &str) -> http::Request<Bytes> {
    http::Request::get(path).body(Bytes::new()).unwrap()
}

/// Closed by the pool, found at checkout or by the reaper.
fn closed_before_use(client: &HttpClient, cause: ResetCause) -> u64 {
    let stats = client.pool().stats();
    stats.resets(cause, Phase::Checkout) + stats.resets(cause, Phase::Idle)
}

/// Connections that broke, for any cause, once open.
fn all_resets(client: &HttpClient) -> u64 {
    let stats = client.pool().stats();
    ResetCause::ALL
        .iter()
        .flat_map(|cause| {
            [Phase::Checkout, Phase::InUse, Phase::Idle].map(|phase| stats.resets(*cause, phase))
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_gets_over_https_share_one_handshake() {
    let ca = TestCa::new();
    let Some(node) = NodeServer::start_https(None, &ca) else {
        return;
    };
    assert!(node.origin().starts_with("https://"), "{}", node.origin());
    let client = client(https(&node, &ca), |b| b.max_size(1));

    for _ in 0..30 {
        let response = client.send(get("/")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.body(), "ok");
        assert_eq!(response.headers()["keep-alive"], "timeout=5");
    }

    let stats = client.pool().stats();
    assert_eq!(stats.opened, 1, "{stats:?}");
    assert_eq!(all_resets(&client), 0, "{stats:?}");
    let server = node.stats();
    assert_eq!(server.handshakes, 1, "{server:?}");
    assert_eq!(server.connections, 1, "{server:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_bodies_over_https_keep_their_connection_and_one_dropped_early_closes_it() {
    let ca = TestCa::new();
    let Some(node) = NodeServer::start_https(None, &ca) else {
        return;
    };
    let client = client(https(&node, &ca), |b| b.max_size(1));

    for _ in 0..5 {
        let response = client
            .send_streaming(get("/stream?chunks=8&size=65536"))
            .await
            .unwrap();
        let mut body = response.into_body();
        let mut len = 0;
        while let Some(chunk) = body.chunk().await {
            len += chunk.unwrap().len();
        }
        assert_eq!(len, 8 * 65536);
    }
    assert_eq!(node.stats().handshakes, 1);

    let response = client
        .send_streaming(get("/stream?chunks=64&size=65536&ms=5"))
        .await
        .unwrap();
    let mut body = response.into_body();
    body.chunk().await.unwrap().unwrap();
    drop(body);
    // The rest of the dropped body, still in TLS records on their way, never
    // answers the next request.
    let response = client.send(get("/")).await.unwrap();
    assert_eq!(response.body(), "ok");

    let stats = client.pool().stats();
    assert_eq!(stats.evictions(Eviction::Cancelled), 1, "{stats:?}");
    assert_eq!(stats.opened, 2, "{stats:?}");
    assert_eq!(all_resets(&client), 0, "{stats:?}");
    assert_eq!(node.stats().handshakes, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_returned_unused_survive_their_session_tickets() {
    // Node (OpenSSL) sends TLS 1.3 session tickets after the handshake, while the
    // new connection sits unused in the pool; each must still serve the next
    // request.
    let ca = TestCa::new();
    let Some(node) = NodeServer::start_https(None, &ca) else {
        return;
    };
    const ROUNDS: u64 = 10;
    for _ in 0..ROUNDS {
        let client = client(https(&node, &ca), |b| b.max_size(1));
        drop(client.pool().get().await.unwrap());
        tokio::time::sleep(Duration::from_millis(150)).await;
        let response = client.send(get("/")).await.unwrap();
        assert_eq!(response.status(), 200);
        let stats = client.pool().stats();
        assert_eq!(stats.opened, 1, "{stats:?}");
        assert_eq!(all_resets(&client), 0, "{stats:?}");
    }
    assert_eq!(node.stats().handshakes, ROUNDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_keeps_its_idle_https_connections() {
    let ca = TestCa::new();
    let Some(node) = NodeServer::start_https(None, &ca) else {
        return;
    };
    let client = client(https(&node, &ca), |b| {
        b.max_size(4)
            .min_idle(2)
            .reaper_interval(Duration::from_millis(200))
    });
    // The reaper opens two connections that nobody uses (their session tickets
    // unread by any request), then looks at them every 200 ms, well inside Node's
    // 5 s keep-alive.
    // Counted before the request: a tick that falls while it holds a connection
    // rightly opens a third to keep two idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = client.pool().stats();
    assert_eq!(all_resets(&client), 0, "{stats:?}");
    assert_eq!(stats.opened, 2, "{stats:?}");
    assert_eq!(node.stats().handshakes, 2);

    client.send(get("/")).await.unwrap();
    assert_eq!(all_resets(&client), 0, "{:?}", client.pool().stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_notify_on_an_idle_connection_is_peer_closed_and_teaches_the_idle_limit() {
    let ca = TestCa::new();
    let Some(node) = NodeServer::start_https(None, &ca) else {
        return;
    };
    let client = client(https(&node, &ca), |b| b.max_size(1));
    client.send(get("/")).await.unwrap();

    // Idle over a second: the learner takes shorter idle spells for upstream
    // failures, not for an idle limit.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    node.end_idle();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = client.send(get("/")).await.unwrap();
    assert_eq!(response.status(), 200);

    let stats = client.pool().stats();
    assert_eq!(stats.opened, 2, "{stats:?}");
    assert_eq!(
        closed_before_use(&client, ResetCause::PeerClosed),
        1,
        "{stats:?}"
    );
    assert_eq!(all_resets(&client), 1, "{stats:?}");
    assert_eq!(node.stats().handshakes, 2);
    // Closed after about 1.5 s idle: an upper bound for this origin's idle limit.
    let limit = client.pool().idle_limit();
    assert!(
        limit
            .upper
            .is_some_and(|upper| upper <= Duration::from_secs(3)),
        "{limit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_announced_keep_alive_timeout_closes_the_https_connection_first() {
    // Node announces `timeout=2` and closes idle connections later; the pool closes
    // them after 1.5 s (2 s less a quarter).
    let ca = TestCa::new();
    let Some(node) = NodeServer::start_https(Some(Duration::from_secs(2)), &ca) else {
        return;
    };
    let client = client(https(&node, &ca), |b| b.max_size(1));
    client.send(get("/")).await.unwrap();
    {
        let conn = client.pool().get().await.unwrap();
        assert_eq!(conn.announced_keep_alive(), Some(Duration::from_secs(2)));
    }

    tokio::time::sleep(Duration::from_millis(2200)).await;
    client.send(get("/")).await.unwrap();

    let stats = client.pool().stats();
    assert_eq!(stats.opened, 2, "{stats:?}");
    assert_eq!(stats.evictions(Eviction::ServerLimit), 1, "{stats:?}");
    assert_eq!(
        closed_before_use(&client, ResetCause::PeerClosed),
        0,
        "{stats:?}"
    );
    assert_eq!(stats.resets(ResetCause::PeerClosed, Phase::InUse), 0);
    assert_eq!(node.stats().handshakes, 2);
    assert_eq!(stats.announced_idle_timeout, Some(Duration::from_secs(2)));
    assert_eq!(client.pool().idle_limit().upper, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_paced_around_nodes_keep_alive_close_over_tls_never_fail() {
    // keepAliveTimeout 1 s: Node announces `timeout=1` and closes soon after.
    let ca = TestCa::new();
    let Some(node) = NodeServer::start_https(Some(Duration::from_secs(1)), &ca) else {
        return;
    };
    let clients: Vec<_> = (0..8)
        .map(|_| client(https(&node, &ca), |b| b.max_size(1)))
        .collect();

    let report = paced_load(
        &clients,
        Duration::from_secs(6),
        (Duration::from_millis(500), Duration::from_millis(2400)),
        3,
    )
    .await;

    assert!(report.gets.len() >= 20, "{} GETs", report.gets.len());
    assert!(report.posts.len() >= 8, "{} POSTs", report.posts.len());
    assert_eq!(report.failed_gets(), Vec::<&(String, _)>::new());
    let server = node.stats();
    report.assert_posts_never_replayed(&server);
    assert!(report.posts.iter().all(|(_, o)| *o == Outcome::Answered));
    let closed: u64 = clients
        .iter()
        .map(|c| c.pool().stats().evictions(Eviction::ServerLimit))
        .sum();
    assert!(closed > 0);
    let in_use: u64 = clients
        .iter()
        .map(|c| {
            c.pool()
                .stats()
                .resets(ResetCause::PeerClosed, Phase::InUse)
        })
        .sum();
    assert_eq!(in_use, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_authority_is_refused_with_the_reason() {
    let ca = TestCa::new();
    let Some(node) = NodeServer::start_https(None, &ca) else {
        return;
    };
    let stranger = TestCa::new();
    let client = client(
        HttpManager::with_tls(&node.origin(), stranger.client_config()).unwrap(),
        |b| b.max_size(1),
    );

    let err = client.send(get("/")).await.unwrap_err();
    let mut chain = vec![err.to_string()];
    let mut source = err.source();
    let mut tls = None;
    while let Some(e) = source {
        chain.push(e.to_string());
        if let Some(HttpError::Tls { origin, source }) = e.downcast_ref::<HttpError>() {
            tls = Some((origin.clone(), source.kind()));
        }
        source = e.source();
    }
    let chain = chain.join(": ");
    assert_eq!(
        tls,
        Some((node.origin(), std::io::ErrorKind::InvalidData)),
        "{chain}"
    );
    assert!(
        chain.contains("TLS handshake with https://127.0.0.1:"),
        "{chain}"
    );
    assert!(chain.contains("invalid peer certificate"), "{chain}");
    // A certificate that does not verify will not verify on the next attempt: one
    // connect, and the GET (idempotent, with attempts and deadline left) is not retried.
    assert!(
        chain.contains("after 1 attempt(s) (the connect failed for good"),
        "{chain}"
    );
    let stats = client.pool().stats();
    assert_eq!(stats.connect_failures, 1, "{stats:?}");
    assert_eq!(node.stats().handshakes, 0);
}

#[test]
fn http_origins_are_refused_by_with_tls_and_https_by_new() {
    let config = TestCa::new().client_config();
    for (origin, reason) in [
        ("http://127.0.0.1:8443", "with_tls takes an https:// origin"),
        ("ftp://127.0.0.1", "scheme must be https://"),
        ("https://127.0.0.1/v1", "no path or query"),
    ] {
        match HttpManager::with_tls(origin, config.clone()) {
            Err(HttpError::Origin { reason: got, .. }) => {
                assert!(got.contains(reason), "{origin}: {got}");
            }
            other => panic!("{origin}: {other:?}"),
        }
    }
    match HttpManager::new("https://127.0.0.1") {
        Err(HttpError::Origin { reason, .. }) => {
            assert!(reason.contains("HttpManager::with_tls"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let v6 = HttpManager::with_tls("https://[::1]", config).unwrap();
    assert_eq!(v6.origin(), "https://[::1]");
}
