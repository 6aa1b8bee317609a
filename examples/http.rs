//! An HTTP client on the pool, against a server the example starts itself: an
//! in-process hyper server that answers `Keep-Alive: timeout=1` and closes idle
//! connections two seconds after their last request, as Node.js does with
//! `server.keepAliveTimeout = 1000` (it closes a second later than it says).
//!
//! What it shows, then the pool's stats:
//!
//! 1. **The announced Keep-Alive timeout, learned.** The first answer says
//!    `timeout=1`; the pool closes that connection itself once it has sat idle
//!    three quarters of a second, so the request after 1.5 s idle goes out on a
//!    new connection, never on one the server is about to close.
//! 2. **Idempotent requests are retried.** The server drops the connection under a
//!    `GET`, as a crashing backend does: the client sends it again on a new
//!    connection, and the caller gets its 200.
//! 3. **Other requests are not replayed.** A `POST` meeting the same drop may have
//!    run: the caller gets `RunError::MaybeExecuted`. The same `POST` with an
//!    `Idempotency-Key` header (the server deduplicates it) is retried.
//!
//! The example checks each of these and exits with an error if one does not hold.
//!
//! ```text
//! cargo run -p steadypool-examples --example http
//! RUST_LOG=steadypool=debug cargo run -p steadypool-examples --example http   # see each close
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure};
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use steadypool::drivers::http::{HttpClient, HttpManager};
use steadypool::{Eviction, Phase, Pool, ResetCause, RunError};
use tokio::net::TcpListener;

/// When the server closes a connection that has waited this long for its next
/// request: its announced `timeout=1`, and a second, as Node.js does.
const SERVER_CLOSES_AFTER: Duration = Duration::from_secs(2);
/// The idle time before the example's second request: past the pool's own close
/// (0.75 s), before the server's.
const IDLE: Duration = Duration::from_millis(1500);

/// The server's failure for a request it drops unanswered.
#[derive(Debug, thiserror::Error)]
#[error("dropped the connection without answering")]
struct Dropped;

/// Serves every connection; `drops` says how many of the next requests to
/// `/flaky` get their connection dropped instead of an answer.
async fn serve(listener: TcpListener, drops: Arc<AtomicU32>) {
    while let Ok((stream, _)) = listener.accept().await {
        let drops = Arc::clone(&drops);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let drops = Arc::clone(&drops);
                async move { answer(&request, &drops) }
            });
            // The header read timeout runs while a kept-alive connection waits for
            // its next request: the server's idle close. A connection that ends in
            // an error (a timeout, a dropped request) is simply gone.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(SERVER_CLOSES_AFTER)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(
    request: &Request<Incoming>,
    drops: &AtomicU32,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let drop_it = request.uri().path() == "/flaky"
        && drops
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    if drop_it {
        return Err(Dropped);
    }
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    response
        .headers_mut()
        .insert("keep-alive", HeaderValue::from_static("timeout=1"));
    Ok(response)
}

fn get(path: &str) -> anyhow::Result<Request<Bytes>> {
    Ok(Request::get(path).body(Bytes::new())?)
}

fn post(path: &str, idempotency_key: Option<&str>) -> anyhow::Result<Request<Bytes>> {
    let mut request = Request::post(path);
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    Ok(request.body(Bytes::from_static(b"{\"sku\":1}"))?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let origin = format!("http://{}", listener.local_addr()?);
    let drops = Arc::new(AtomicU32::new(0));
    tokio::spawn(serve(listener, Arc::clone(&drops)));

    // One connection, so every request reuses it when it can.
    let manager = HttpManager::new(&origin)?;
    let client = HttpClient::new(Pool::builder(manager).name("api").max_size(1).build()?);

    println!("1. The announced Keep-Alive timeout");
    let response = client.send(get("/")?).await?;
    let announced = response.headers().get("keep-alive").cloned();
    println!(
        "   GET /        -> {} (Keep-Alive: {announced:?})",
        response.status()
    );
    {
        let conn = client.pool().get().await?;
        ensure!(conn.announced_keep_alive() == Some(Duration::from_secs(1)));
    }
    tokio::time::sleep(IDLE).await;
    let response = client.send(get("/")?).await?;
    let stats = client.pool().stats();
    println!(
        "   GET / after {IDLE:?} idle -> {}, on connection number {}: the pool closed the first \
         one before the server could",
        response.status(),
        stats.opened
    );
    ensure!(
        stats.opened == 2,
        "expected a new connection after the idle time"
    );
    ensure!(stats.resets(ResetCause::PeerClosed, Phase::InUse) == 0);

    println!("2. An idempotent request whose connection is dropped");
    drops.store(1, Ordering::SeqCst);
    let response = client.send(get("/flaky")?).await?;
    println!(
        "   GET /flaky   -> {} (sent twice: the first connection was dropped under it)",
        response.status()
    );
    ensure!(response.status().is_success());

    println!("3. A POST whose connection is dropped");
    drops.store(1, Ordering::SeqCst);
    match client.send(post("/flaky", None)?).await {
        Err(err @ RunError::MaybeExecuted { .. }) => {
            println!("   POST /flaky  -> not replayed: {err}");
        }
        other => bail!("a POST must not be replayed, got {other:?}"),
    }
    drops.store(1, Ordering::SeqCst);
    let response = client.send(post("/flaky", Some("order-7d1f"))?).await?;
    println!(
        "   POST /flaky with Idempotency-Key -> {} (retried: the server deduplicates it)",
        response.status()
    );
    ensure!(response.status().is_success());

    let stats = client.pool().stats();
    println!("\nThe pool's stats:");
    println!("   connections opened: {}", stats.opened);
    for cause in ResetCause::ALL {
        for phase in Phase::ALL {
            let n = stats.resets(cause, phase);
            if n > 0 {
                println!(
                    "   closed, {} in phase {}: {n}",
                    cause.as_str(),
                    phase.as_str()
                );
            }
        }
    }
    for reason in Eviction::ALL {
        let n = stats.evictions(reason);
        if n > 0 {
            println!("   closed by the pool, {}: {n}", reason.as_str());
        }
    }
    client.pool().close();
    Ok(())
}
