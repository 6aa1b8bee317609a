//! The HTTP driver against a real Node.js `http.createServer`: the Keep-Alive
//! timeout it announces is learned, `Connection: close` is honoured, requests paced
//! around its keep-alive close never fail (and `POST`s are never replayed), a restart
//! mid-load costs no idempotent request, and 503 is retried only when that is safe.
//! A streamed response body holds its connection until its end: read to the end it
//! returns it, dropped or cancelled half-way it closes it (`cancelled`), and a
//! server dying under it fails the body with the cause.

use std::time::Duration;

use bytes::Bytes;
use steadypool::drivers::http::{HttpClient, HttpError, HttpManager, ResponseBody};
use steadypool::{Eviction, Phase, Pool, PoolBuilder, ResetCause, RetryPolicy, RunError, Sent};
use steadypool_tests::http::{NodeServer, paced_load};

fn client(
    manager: HttpManager,
    configure: impl FnOnce(PoolBuilder<HttpManager>) -> PoolBuilder<HttpManager>,
) -> HttpClient {
    HttpClient::new(configure(Pool::builder(manager)).build().unwrap())
}

fn get(path: &str) -> http::Request<Bytes> {
    http::Request::get(path).body(Bytes::new()).unwrap()
}

/// Closed by the pool before Node's keep-alive close, at checkout or by the reaper.
fn closed_first(client: &HttpClient) -> u64 {
    client.pool().stats().evictions(Eviction::ServerLimit)
}

/// Found closed by the peer while idle, at checkout or by the reaper.
fn found_closed(client: &HttpClient) -> u64 {
    let stats = client.pool().stats();
    stats.resets(ResetCause::PeerClosed, Phase::Checkout)
        + stats.resets(ResetCause::PeerClosed, Phase::Idle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_announced_keep_alive_timeout_closes_the_connection_before_node_does() {
    // Node announces `timeout=2` and closes idle connections at 3 s (its timeout
    // plus a second); the pool closes them after 1.5 s (2 s less a quarter).
    let Some(node) = NodeServer::start(Some(Duration::from_secs(2))) else {
        return;
    };
    let client = client(HttpManager::new(&node.origin()).unwrap(), |b| b.max_size(1));

    let response = client.send(get("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["keep-alive"], "timeout=2");
    assert_eq!(response.body(), "ok");
    {
        let conn = client.pool().get().await.unwrap();
        assert_eq!(conn.announced_keep_alive(), Some(Duration::from_secs(2)));
        assert_eq!(conn.responses(), 1);
    }

    // Idle 2.2 s: past the pool's 1.5 s, well before Node's 3 s. Had the pool kept
    // it, this request would have gone out on it.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let response = client.send(get("/")).await.unwrap();
    assert_eq!(response.status(), 200);

    // Closed first: an eviction, not a reset.
    let stats = client.pool().stats();
    assert_eq!(stats.opened, 2, "{stats:?}");
    assert_eq!(closed_first(&client), 1, "{stats:?}");
    assert_eq!(found_closed(&client), 0, "{stats:?}");
    assert_eq!(stats.resets(ResetCause::PeerClosed, Phase::InUse), 0);
    assert_eq!(node.stats().connections, 2);
    // Node's announcement is published; the pool's own close taught the idle-limit
    // learner nothing.
    assert_eq!(stats.announced_idle_timeout, Some(Duration::from_secs(2)));
    let limit = client.pool().idle_limit();
    assert_eq!(limit.upper, None, "{limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_from_the_server_is_honoured() {
    let Some(node) = NodeServer::start(None) else {
        return;
    };
    let client = client(HttpManager::new(&node.origin()).unwrap(), |b| b.max_size(1));

    let response = client.send(get("/close")).await.unwrap();
    assert_eq!(response.headers()["connection"], "close");
    assert_eq!(response.body(), "bye");
    let response = client.send(get("/")).await.unwrap();
    assert_eq!(response.body(), "ok");

    let stats = client.pool().stats();
    assert_eq!(stats.opened, 2, "{stats:?}");
    // Announced, so planned: an eviction, not a reset.
    assert_eq!(stats.evictions(Eviction::ServerLimit), 1, "{stats:?}");
    assert_eq!(resets(&stats), 0, "{stats:?}");
    assert_eq!(node.stats().connections, 2);
}

/// Every reset counted, whatever its cause and phase.
fn resets(stats: &steadypool::Stats) -> u64 {
    ResetCause::ALL
        .iter()
        .flat_map(|cause| Phase::ALL.iter().map(|phase| stats.resets(*cause, *phase)))
        .sum()
}

/// A server's request limit per connection (Node's `maxRequestsPerSocket`, Apache's
/// `Keep-Alive: max=N`) shows as `Connection: close` on the last response it allows:
/// the pool closes that connection as planned, and no request meets the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_request_limit_per_connection_is_a_planned_close() {
    let Some(node) = NodeServer::start_with_request_limit(3) else {
        return;
    };
    let client = client(HttpManager::new(&node.origin()).unwrap(), |b| b.max_size(1));
    for n in 0..10 {
        let response = client.send(get("/")).await.unwrap();
        assert_eq!(response.status(), 200, "request {n}");
        assert_eq!(response.body(), "ok");
    }

    let stats = client.pool().stats();
    // 3 requests per connection: 4 connections, the first 3 closed after their third.
    assert_eq!(stats.opened, 4, "{stats:?}");
    assert_eq!(stats.evictions(Eviction::ServerLimit), 3, "{stats:?}");
    assert_eq!(resets(&stats), 0, "{stats:?}");
    assert_eq!(node.stats().connections, 4);
    let limit = client.pool().idle_limit();
    assert_eq!(
        limit.upper, None,
        "a request limit is no idle limit: {limit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_paced_around_nodes_keep_alive_close_never_fail_nor_replay_a_post() {
    // keepAliveTimeout 1 s: Node announces `timeout=1` and closes at 2 s.
    let Some(node) = NodeServer::start(Some(Duration::from_secs(1))) else {
        return;
    };
    let clients: Vec<_> = (0..8)
        .map(|_| client(HttpManager::new(&node.origin()).unwrap(), |b| b.max_size(1)))
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
    // Learned from the header, nothing was lost to the race.
    assert!(
        report
            .posts
            .iter()
            .all(|(_, o)| *o == steadypool_tests::http::Outcome::Answered)
    );
    let closed: u64 = clients.iter().map(closed_first).sum();
    assert!(closed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restarted_mid_load_costs_no_idempotent_request() {
    let Some(node) = NodeServer::start(None) else {
        return;
    };
    let policy = RetryPolicy::default()
        .max_attempts(8)
        .backoff(Duration::from_millis(20), Duration::from_millis(500))
        .budget(1.0, 100);
    let client = client(HttpManager::new(&node.origin()).unwrap(), |b| {
        b.max_size(4)
            .retry_policy(policy)
            .circuit_open_after(u32::MAX)
    });

    let clients = [
        client.clone(),
        client.clone(),
        client.clone(),
        client.clone(),
    ];
    let load = paced_load(
        &clients,
        Duration::from_secs(3),
        (Duration::from_millis(5), Duration::from_millis(30)),
        0,
    );
    let restart = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::task::block_in_place(|| node.restart());
    };
    let (report, ()) = tokio::join!(load, restart);

    assert!(report.gets.len() >= 100, "{} GETs", report.gets.len());
    assert_eq!(report.failed_gets(), Vec::<&(String, _)>::new());
    // The restart broke every open connection.
    let stats = client.pool().stats();
    assert!(stats.opened > 4, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_unavailable_is_retried_for_a_get_and_returned_for_a_post() {
    let Some(node) = NodeServer::start(None) else {
        return;
    };
    let policy =
        RetryPolicy::default().backoff(Duration::from_millis(5), Duration::from_millis(50));
    let client = client(HttpManager::new(&node.origin()).unwrap(), |b| {
        b.retry_policy(policy)
    });

    let request = http::Request::get("/flaky?fail=2")
        .header("x-request-id", "get")
        .body(Bytes::new())
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 200);

    let request = http::Request::post("/flaky?fail=2")
        .header("x-request-id", "post")
        .body(Bytes::from_static(b"{}"))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 503);

    let request = http::Request::post("/flaky?fail=1")
        .header("x-request-id", "keyed")
        .header("idempotency-key", "k-1")
        .body(Bytes::from_static(b"{}"))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), 200);

    let server = node.stats();
    assert_eq!(server.requests["get"], 3);
    assert_eq!(server.requests["post"], 1);
    assert_eq!(server.requests["keyed"], 2);
    // Every 503 came with its body read: no connection was lost to them.
    assert_eq!(client.pool().stats().closed(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_path_pings_connections_idle_past_check_after() {
    let Some(node) = NodeServer::start(None) else {
        return;
    };
    let manager = HttpManager::new(&node.origin())
        .unwrap()
        .health_path("/status?code=503")
        .unwrap();
    let client = client(manager, |b| {
        b.max_size(1).check_after(Duration::from_millis(100))
    });

    client.send(get("/")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The ping is answered 503: the connection is discarded and the request runs
    // on a new one.
    let response = client.send(get("/")).await.unwrap();
    assert_eq!(response.body(), "ok");
    let stats = client.pool().stats();
    assert_eq!(stats.opened, 2, "{stats:?}");
    assert_eq!(
        stats.resets(ResetCause::PingFailed, Phase::Checkout),
        1,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_mid_response_discards_its_connection() {
    let Some(node) = NodeServer::start(None) else {
        return;
    };
    let client = client(HttpManager::new(&node.origin()).unwrap(), |b| b.max_size(1));

    let slow = tokio::time::timeout(
        Duration::from_millis(200),
        client.send(get("/slow?ms=1000")),
    );
    assert!(slow.await.is_err(), "the slow request finished");
    // The late reply must not answer this request.
    let response = client.send(get("/")).await.unwrap();
    assert_eq!(response.body(), "ok");

    let stats = client.pool().stats();
    assert_eq!(stats.evictions(Eviction::Cancelled), 1, "{stats:?}");
    assert_eq!(stats.opened, 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_an_error_and_its_connection_is_closed() {
    let Some(node) = NodeServer::start(None) else {
        return;
    };
    let manager = HttpManager::new(&node.origin())
        .unwrap()
        .max_response_body(1);
    let client = client(manager, |b| b.max_size(1));

    match client.send(get("/")).await {
        Err(RunError::Operation(HttpError::BodyTooLarge { limit: 1 })) => {}
        other => panic!("{other:?}"),
    }
    let stats = client.pool().stats();
    assert_eq!(
        stats.resets(ResetCause::Other, Phase::InUse),
        1,
        "{stats:?}"
    );
}

/// `/stream` of `chunks` writes of `size` bytes, `ms` apart.
fn stream(chunks: usize, size: usize, ms: u64) -> http::Request<Bytes> {
    get(&format!("/stream?chunks={chunks}&size={size}&ms={ms}"))
}

/// What a streamed body delivered: its length and its largest chunk.
#[derive(Debug, Default)]
struct Read {
    len: usize,
    chunks: usize,
    largest: usize,
}

impl Read {
    /// Takes `chunk`, checking it continues `/stream`'s pattern (byte i is
    /// `i % 251`): a byte of another reply would break it.
    fn take(&mut self, chunk: &Bytes) {
        for (i, byte) in chunk.iter().enumerate() {
            let at = self.len + i;
            assert_eq!(usize::from(*byte), at % 251, "byte {at}");
        }
        self.len += chunk.len();
        self.chunks += 1;
        self.largest = self.largest.max(chunk.len());
    }

    /// Reads `body` to its end.
    async fn all(body: &mut ResponseBody) -> Read {
        let mut read = Read::default();
        while let Some(chunk) = body.chunk().await {
            read.take(&chunk.unwrap());
        }
        read
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_of_megabytes_arrives_in_bounded_chunks_and_its_connection_is_reused() {
    let Some(node) = NodeServer::start(None) else {
        return;
    };
    // The limit of a buffered `send` does not apply to a stream.
    let manager = HttpManager::new(&node.origin())
        .unwrap()
        .max_response_body(1 << 20);
    let client = client(manager, |b| b.max_size(1));

    // Two writes of 4 MiB each: the client still sees pieces of bounded size.
    let response = client.send_streaming(stream(2, 4 << 20, 0)).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let read = Read::all(&mut body).await;
    assert_eq!(read.len, 8 << 20, "{read:?}");
    // hyper hands over what it read, at most its read buffer (408 KiB) at a
    // time: the body was never held whole.
    assert!(read.chunks >= 16, "{read:?}");
    assert!(read.largest <= 512 * 1024, "{read:?}");
    // Back in the pool at the body's end, while the body itself is still held.
    assert_eq!(client.pool().status().idle, 1);
    drop(body);

    for _ in 0..20 {
        let response = client.send_streaming(stream(4, 1000, 1)).await.unwrap();
        let read = Read::all(&mut response.into_body()).await;
        assert_eq!(read.len, 4000, "{read:?}");
    }
    // A response without a body frees its connection at once, unread.
    let response = client
        .send_streaming(get("/status?code=204"))
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(client.pool().status().idle, 1);
    drop(response);

    let stats = client.pool().stats();
    assert_eq!(stats.opened, 1, "{stats:?}");
    assert_eq!(stats.closed(), 0, "{stats:?}");
    assert_eq!(node.stats().connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_dropped_half_way_closes_its_connection_and_the_next_reply_is_its_own() {
    let Some(node) = NodeServer::start(None) else {
        return;
    };
    let client = client(HttpManager::new(&node.origin()).unwrap(), |b| b.max_size(1));

    let mut body = client
        .send_streaming(stream(64, 64 * 1024, 5))
        .await
        .unwrap()
        .into_body();
    let mut read = Read::default();
    while read.len < 100 * 1024 {
        read.take(&body.chunk().await.unwrap().unwrap());
    }
    drop(body);
    let stats = client.pool().stats();
    assert_eq!(stats.evictions(Eviction::Cancelled), 1, "{stats:?}");

    // The rest of the dropped body never answers the next request.
    let response = client.send(get("/")).await.unwrap();
    assert_eq!(response.body(), "ok");
    let response = client.send_streaming(stream(2, 500, 0)).await.unwrap();
    assert_eq!(Read::all(&mut response.into_body()).await.len, 1000);

    let stats = client.pool().stats();
    assert_eq!(stats.opened, 2, "{stats:?}");
    assert_eq!(stats.closed(), 1, "{stats:?}");
    assert_eq!(node.stats().connections, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_read_of_a_streamed_body_closes_its_connection() {
    let Some(node) = NodeServer::start(None) else {
        return;
    };
    let client = client(HttpManager::new(&node.origin()).unwrap(), |b| b.max_size(1));
    // 100 chunks 50 ms apart: 5 s to read it all.
    let slow = || client.send_streaming(stream(100, 1000, 50));

    // Cut by a timeout after 300 ms...
    let mut body = slow().await.unwrap().into_body();
    let cut = tokio::time::timeout(Duration::from_millis(300), async move {
        Read::all(&mut body).await
    });
    assert!(cut.await.is_err(), "the slow body was read to its end");
    let response = client.send(get("/")).await.unwrap();
    assert_eq!(response.body(), "ok");

    // ...or read on a task of its own that is aborted.
    let mut body = slow().await.unwrap().into_body();
    let reader = tokio::spawn(async move { Read::all(&mut body).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.abort();
    assert!(reader.await.unwrap_err().is_cancelled());
    let response = client.send(get("/")).await.unwrap();
    assert_eq!(response.body(), "ok");

    let stats = client.pool().stats();
    assert_eq!(stats.evictions(Eviction::Cancelled), 2, "{stats:?}");
    assert_eq!(stats.opened, 3, "{stats:?}");
    assert_eq!(node.stats().connections, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_dying_mid_body_fails_the_body_with_the_cause_and_counts_it() {
    let Some(node) = NodeServer::start(None) else {
        return;
    };
    let client = client(HttpManager::new(&node.origin()).unwrap(), |b| b.max_size(1));

    let mut body = client
        .send_streaming(stream(1000, 64 * 1024, 20))
        .await
        .unwrap()
        .into_body();
    let mut read = Read::default();
    read.take(&body.chunk().await.unwrap().unwrap());
    tokio::task::block_in_place(|| node.kill());

    // What the kernel still had arrives, then the end: not a whole body.
    let err = loop {
        match body.chunk().await {
            Some(Ok(chunk)) => read.take(&chunk),
            Some(Err(err)) => break err,
            None => panic!("the body ended without an error after {read:?}"),
        }
    };
    assert!(read.len < 1000 * 64 * 1024, "{read:?}");
    let HttpError::Connection { cause, sent, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        matches!(cause, ResetCause::PeerClosed | ResetCause::PeerReset),
        "{err}"
    );
    // The request ran: the error must not say otherwise.
    assert_eq!(*sent, Sent::Maybe, "{err}");
    assert!(body.chunk().await.is_none());

    let stats = client.pool().stats();
    assert_eq!(stats.resets(*cause, Phase::InUse), 1, "{stats:?}");
    assert_eq!(stats.closed(), 1, "{stats:?}");
    assert_eq!(client.pool().status().size, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_get_is_retried_on_503_before_its_head_reaches_the_caller() {
    let Some(node) = NodeServer::start(None) else {
        return;
    };
    let policy =
        RetryPolicy::default().backoff(Duration::from_millis(5), Duration::from_millis(50));
    let client = client(HttpManager::new(&node.origin()).unwrap(), |b| {
        b.max_size(1).retry_policy(policy)
    });

    let request = http::Request::get("/flaky?fail=2")
        .header("x-request-id", "streamed")
        .body(Bytes::new())
        .unwrap();
    let response = client.send_streaming(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    assert_eq!(body.chunk().await.unwrap().unwrap(), "ok");
    // Its content-length reached: the connection is back before the end is polled.
    assert_eq!(client.pool().status().idle, 1);
    assert!(body.chunk().await.is_none());

    assert_eq!(node.stats().requests["streamed"], 3);
    // Each 503 had its body read: one connection served all three.
    let stats = client.pool().stats();
    assert_eq!(stats.opened, 1, "{stats:?}");
    assert_eq!(stats.closed(), 0, "{stats:?}");
}
