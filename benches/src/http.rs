//! Scenario `http`: the keep-alive race, through reqwest (defaults), hyper-util's
//! legacy client (defaults) and steadypool's `HttpClient` (defaults), against a real
//! Node.js server.
//!
//! `workers` tasks each own one client (a fleet of small processes: one client
//! shared by every task would reuse its most recently returned connection and hide
//! the race) and send one request at a time, each after a random pause around the
//! moment the connection is closed under them, plus or minus 10 %:
//!
//! | case | path | closed after | pauses |
//! |---|---|---|---|
//! | `node` | client, Node (`keepAliveTimeout` 1 s: it announces `timeout=1` and closes at 2 s) | 2 s idle, FIN | 1.8–2.2 s |
//! | `node-latency10ms` | the same, 10 ms of added latency each way | 2 s | 1.8–2.2 s |
//! | `lb` | client, a load balancer resetting connections idle 1 s (the chaos proxy), Node (default 5 s) | 1 s idle, RST | 0.9–1.1 s |
//! | `lb-latency10ms` | the same, 10 ms of added latency each way in front of it | 1 s | 0.9–1.1 s |
//!
//! Every fourth request is a `POST /orders`, the others `GET /`, each with its own
//! `x-request-id`, which the server counts: a `POST` it saw twice was replayed. A
//! request fails when its client returns an error (after its own retries); `GET`s
//! and `POST`s are counted apart, since only a `GET` may be retried after it may
//! have reached the server. Latency runs from the call to the whole body.
//!
//! Case `happy`: one task sends `GET /` back to back on one client, no faults, no
//! pauses: the per-request cost of each client, Node included. The clients take
//! turns in rounds; each figure is the client's median round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use steadypool::Pool;
use steadypool::chaos::{ChaosProxy, IdleClose, Latency};
use steadypool::drivers::http::{HttpClient, HttpManager};
use steadypool_tests::http::NodeServer;
use tokio::task::JoinSet;

use crate::error::BenchError;
use crate::report::Record;
use crate::stats;

/// Node's `keepAliveTimeout` in the `node` cases; it closes a second later.
pub const NODE_KEEP_ALIVE: Duration = Duration::from_secs(1);
/// When Node really closes an idle connection in the `node` cases.
pub const NODE_CLOSES_AFTER: Duration = Duration::from_secs(2);
/// The load balancer's idle limit in the `lb` cases.
pub const LB_IDLE: Duration = Duration::from_secs(1);
/// The added latency each way in the `-latency10ms` cases.
pub const LATENCY: Duration = Duration::from_millis(10);
/// A request slower than this counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The race cases: name, behind the load balancer, with added latency.
pub const RACE_CASES: [(&str, bool, bool); 4] = [
    ("node", false, false),
    ("node-latency10ms", false, true),
    ("lb", true, false),
    ("lb-latency10ms", true, true),
];

/// The HTTP clients compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// `HttpClient` on a `Pool<HttpManager>` with every default.
    Steadypool,
    /// `reqwest::Client::new()`.
    Reqwest,
    /// `hyper_util::client::legacy::Client` with its defaults.
    HyperLegacy,
}

impl Contender {
    /// Every client, steadypool first.
    pub const ALL: [Contender; 3] = [
        Contender::Steadypool,
        Contender::Reqwest,
        Contender::HyperLegacy,
    ];

    /// The label in the results.
    ///
    /// ```
    /// use steadypool_benches::http::Contender;
    /// assert_eq!(Contender::HyperLegacy.label(), "hyper-util-legacy");
    /// ```
    pub fn label(self) -> &'static str {
        match self {
            Contender::Steadypool => "steadypool",
            Contender::Reqwest => "reqwest",
            Contender::HyperLegacy => "hyper-util-legacy",
        }
    }
}

/// How long and how wide the scenario runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Tasks, each with its own client.
    pub workers: usize,
    /// How long each client runs each race case.
    pub duration: Duration,
    /// Requests of the `happy` case.
    pub happy_requests: usize,
}

/// One client of one contender.
enum Client {
    Steadypool(HttpClient),
    Reqwest(reqwest::Client),
    Hyper(Box<LegacyClient<HttpConnector, Full<Bytes>>>),
}

impl Client {
    fn new(contender: Contender, origin: &str) -> Result<Client, BenchError> {
        Ok(match contender {
            Contender::Steadypool => {
                let manager = HttpManager::new(origin).map_err(|e| build_error(&e))?;
                let pool = Pool::builder(manager)
                    .build()
                    .map_err(|e| build_error(&e))?;
                Client::Steadypool(HttpClient::new(pool))
            }
            Contender::Reqwest => Client::Reqwest(reqwest::Client::new()),
            Contender::HyperLegacy => Client::Hyper(Box::new(
                LegacyClient::builder(TokioExecutor::new()).build_http(),
            )),
        })
    }

    /// Sends one request; `Err` with the client's error text when it failed.
    async fn send(&self, origin: &str, post: bool, id: &str) -> Result<(), String> {
        let (method, path) = if post {
            (http::Method::POST, "/orders")
        } else {
            (http::Method::GET, "/")
        };
        match self {
            Client::Steadypool(client) => {
                let request = http::Request::builder()
                    .method(method)
                    .uri(path)
                    .header("x-request-id", id)
                    .body(Bytes::new())
                    .map_err(|e| e.to_string())?;
                client.send(request).await.map_err(|e| e.to_string())?;
            }
            Client::Reqwest(client) => {
                let response = client
                    .request(method, format!("{origin}{path}"))
                    .header("x-request-id", id)
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                response.bytes().await.map_err(|e| format!("{e:?}"))?;
            }
            Client::Hyper(client) => {
                let request = http::Request::builder()
                    .method(method)
                    .uri(format!("{origin}{path}"))
                    .header("x-request-id", id)
                    .body(Full::new(Bytes::new()))
                    .map_err(|e| e.to_string())?;
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

fn build_error(err: &dyn std::fmt::Display) -> BenchError {
    BenchError::Build {
        pool: "steadypool",
        message: err.to_string(),
    }
}

/// What one contender got in one race case.
#[derive(Debug, Default)]
struct Tally {
    gets: u64,
    gets_failed: u64,
    posts_failed: u64,
    /// The first few failures' texts, for the log.
    examples: Vec<String>,
    posts: Vec<String>,
    latencies_ms: Vec<f64>,
}

/// One race case: where the clients connect, and the pauses.
struct Case {
    name: &'static str,
    /// The LB in front of Node (kept alive for the run).
    _lb: Option<ChaosProxy>,
    /// The latency hop in front of everything (kept alive for the run).
    _latency: Option<ChaosProxy>,
    origin: String,
    gaps: (Duration, Duration),
}

async fn proxy(upstream: std::net::SocketAddr, seed: u64) -> Result<ChaosProxy, BenchError> {
    Ok(ChaosProxy::builder(upstream).seed(seed).start().await?)
}

async fn case(
    name: &'static str,
    node: &NodeServer,
    lb: bool,
    latency: bool,
) -> Result<Case, BenchError> {
    let mut target = node.addr();
    let lb = if lb {
        let proxy = proxy(target, 1).await?;
        proxy.set_idle_close(Some(IdleClose::rst(LB_IDLE)));
        target = proxy.local_addr();
        Some(proxy)
    } else {
        None
    };
    let latency = if latency {
        let proxy = proxy(target, 2).await?;
        proxy.set_latency(Some(Latency::new(LATENCY, Duration::ZERO)));
        target = proxy.local_addr();
        Some(proxy)
    } else {
        None
    };
    let close = if lb.is_some() {
        LB_IDLE
    } else {
        NODE_CLOSES_AFTER
    };
    Ok(Case {
        name,
        _lb: lb,
        _latency: latency,
        origin: format!("http://{target}"),
        gaps: (close.mul_f64(0.9), close.mul_f64(1.1)),
    })
}

async fn race(
    contender: Contender,
    case: &Case,
    settings: &Settings,
    run: usize,
) -> Result<Tally, BenchError> {
    let deadline = Instant::now() + settings.duration;
    let mut tasks = JoinSet::new();
    for worker in 0..settings.workers {
        let client = Client::new(contender, &case.origin)?;
        let origin = case.origin.clone();
        let gaps = case.gaps;
        tasks.spawn(async move {
            let mut tally = Tally::default();
            let mut rng = fastrand::Rng::with_seed((run * 1000 + worker) as u64);
            let span = gaps.1.saturating_sub(gaps.0);
            let mut n = 0u64;
            // Each client's first connection, opened before the paced requests.
            let _ = client
                .send(&origin, false, &format!("warm-{run}-{worker}"))
                .await;
            while Instant::now() < deadline {
                tokio::time::sleep(gaps.0 + span.mul_f64(rng.f64())).await;
                n += 1;
                let post = n.is_multiple_of(4);
                let id = format!("{run}-{worker}-{n}");
                let started = Instant::now();
                let sent =
                    tokio::time::timeout(REQUEST_TIMEOUT, client.send(&origin, post, &id)).await;
                let failed = match sent {
                    Ok(Ok(())) => {
                        tally
                            .latencies_ms
                            .push(started.elapsed().as_secs_f64() * 1e3);
                        false
                    }
                    Ok(Err(err)) => {
                        if tally.examples.len() < 3 {
                            tally.examples.push(err);
                        }
                        true
                    }
                    Err(_) => true,
                };
                if post {
                    tally.posts.push(id);
                    tally.posts_failed += u64::from(failed);
                } else {
                    tally.gets += 1;
                    tally.gets_failed += u64::from(failed);
                }
            }
            tally
        });
    }
    let mut all = Tally::default();
    while let Some(done) = tasks.join_next().await {
        let tally = done.map_err(|e| BenchError::Setup(format!("a worker panicked: {e}")))?;
        all.gets += tally.gets;
        all.gets_failed += tally.gets_failed;
        all.posts_failed += tally.posts_failed;
        all.examples.extend(tally.examples);
        all.posts.extend(tally.posts);
        all.latencies_ms.extend(tally.latencies_ms);
    }
    Ok(all)
}

/// Rounds of the `happy` case: the clients take turns, a batch each per round, so
/// that a slow minute on a shared machine (Node's garbage collector, another
/// process) weighs on every client alike; each client's figure is its median round.
const HAPPY_ROUNDS: usize = 7;

async fn happy(
    contenders: &[Contender],
    origin: &str,
    requests: usize,
) -> Result<Vec<Record>, BenchError> {
    let mut clients = Vec::new();
    for contender in contenders {
        let client = Client::new(*contender, origin)?;
        client
            .send(origin, false, "warm")
            .await
            .map_err(|e| fail(*contender, e))?;
        clients.push((*contender, client, Vec::new()));
    }
    let batch = (requests / HAPPY_ROUNDS).max(1);
    for _ in 0..HAPPY_ROUNDS {
        for (contender, client, rounds) in &mut clients {
            let started = Instant::now();
            for _ in 0..batch {
                client
                    .send(origin, false, "happy")
                    .await
                    .map_err(|e| fail(*contender, e))?;
            }
            rounds.push(started.elapsed().as_secs_f64() * 1e6 / batch as f64);
        }
    }
    Ok(clients
        .into_iter()
        .map(|(contender, _, mut rounds)| {
            Record::new(
                "http",
                "happy".to_owned(),
                contender.label(),
                "us_per_request",
                stats::median(&mut rounds),
            )
        })
        .collect())
}

fn fail(contender: Contender, message: String) -> BenchError {
    BenchError::Checkout {
        pool: contender.label(),
        message,
    }
}

/// Runs the scenario for `contenders`: one Node.js server (started here), every
/// race case, then the happy path.
///
/// # Errors
/// When Node.js is not installed or does not start, a proxy cannot start, or a
/// happy-path request fails.
pub async fn scenario(
    settings: &Settings,
    contenders: &[Contender],
) -> Result<Vec<Record>, BenchError> {
    let node = tokio::task::spawn_blocking(|| NodeServer::start(Some(NODE_KEEP_ALIVE)))
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?
        .ok_or_else(|| BenchError::Setup("node is not installed (package nodejs)".into()))?;
    let lb_node = tokio::task::spawn_blocking(|| NodeServer::start(None))
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?
        .ok_or_else(|| BenchError::Setup("node is not installed (package nodejs)".into()))?;
    let node = Arc::new(node);
    let lb_node = Arc::new(lb_node);
    let mut records = Vec::new();
    for (run, &(name, lb, latency)) in RACE_CASES.iter().enumerate() {
        let server = if lb { &lb_node } else { &node };
        let case = case(name, server, lb, latency).await?;
        for (i, contender) in contenders.iter().enumerate() {
            let tally = race(*contender, &case, settings, run * 10 + i).await?;
            let server = Arc::clone(server);
            let counts = tokio::task::spawn_blocking(move || server.stats())
                .await
                .map_err(|e| BenchError::Setup(e.to_string()))?;
            let replayed = tally
                .posts
                .iter()
                .filter(|id| counts.requests.get(*id).copied().unwrap_or(0) > 1)
                .count();
            let mut latencies = tally.latencies_ms;
            let label = contender.label();
            eprintln!(
                "http {}: {label}: {} of {} GETs and {} of {} POSTs failed, {replayed} POSTs replayed{}",
                case.name,
                tally.gets_failed,
                tally.gets,
                tally.posts_failed,
                tally.posts.len(),
                tally
                    .examples
                    .first()
                    .map(|e| format!(" (e.g. {e})"))
                    .unwrap_or_default()
            );
            let record = |metric: &str, value: f64| {
                Record::new("http", case.name.to_owned(), label, metric, value)
            };
            let posts = tally.posts.len() as f64;
            let requests = tally.gets as f64 + posts;
            let failed = (tally.gets_failed + tally.posts_failed) as f64;
            records.push(record("requests", requests));
            records.push(record("failed_pct", 100.0 * failed / requests.max(1.0)));
            records.push(record("gets_failed", tally.gets_failed as f64));
            records.push(record("posts", posts));
            records.push(record("posts_failed", tally.posts_failed as f64));
            records.push(record("posts_replayed", replayed as f64));
            records.push(record("p50_ms", stats::median(&mut latencies)));
            records.push(record("p99_ms", stats::percentile(&mut latencies, 0.99)));
        }
    }
    records.extend(happy(contenders, &node.origin(), settings.happy_requests).await?);
    Ok(records)
}
