//! The demo over HTTP: steadypool's [`HttpClient`] against reqwest with its
//! defaults, what a Rust service would otherwise use.
//!
//! Each worker has a client of its own on each side, as each process of a fleet
//! of small services has: one client shared by all workers hides the keep-alive
//! race, since its pool hands out the connection returned last. A `GET` reads
//! `/items/N`, a `PUT` writes it: both idempotent, so steadypool may retry them.

use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use steadypool::drivers::http::{HttpClient, HttpManager};
use steadypool::{IdleLimit, Phase, Pool, ResetCause};

use super::clients::{CallFuture, Client, steady_failure};
use super::report::PoolCounts;
use super::tally::{Failure, Outcome};
use crate::kv::Op;

/// The longest reqwest's caller waits for a reply: reqwest sets no timeout by
/// default, and a run must end. steadypool's bound is its retry deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One steadypool [`HttpClient`] per worker, each on a pool of one connection.
pub(crate) struct SteadyHttp {
    clients: Vec<HttpClient>,
}

impl SteadyHttp {
    /// `workers` clients for the server at `addr` (`host:port`).
    pub(crate) fn new(addr: &str, workers: usize) -> Result<SteadyHttp, super::DemoError> {
        let setup = |e: &dyn std::error::Error| super::DemoError::Setup(crate::error_chain(e));
        let clients = (0..workers)
            .map(|_| {
                let manager = HttpManager::new(&format!("http://{addr}")).map_err(|e| setup(&e))?;
                let pool = Pool::builder(manager)
                    .name("steadypool")
                    .max_size(1)
                    .build()
                    .map_err(|e| setup(&e))?;
                Ok(HttpClient::new(pool))
            })
            .collect::<Result<_, super::DemoError>>()?;
        Ok(SteadyHttp { clients })
    }
}

/// Connections that broke under a request: each one cost that request an attempt.
fn broken_in_use(client: &HttpClient) -> u64 {
    let stats = client.pool().stats();
    ResetCause::ALL
        .into_iter()
        .map(|cause| stats.resets(cause, Phase::InUse))
        .sum()
}

fn request(op: Op) -> Result<http::Request<Bytes>, http::Error> {
    match op {
        Op::Get(path) => http::Request::get(path).body(Bytes::new()),
        Op::Set(path, value) => http::Request::put(path).body(Bytes::from(value)),
    }
}

fn status_failure(status: http::StatusCode) -> Failure {
    Failure {
        label: format!("status {}", status.as_u16()),
        reset: None,
        message: format!("the server answered {status}"),
    }
}

impl Client for SteadyHttp {
    fn call(&self, worker: usize, op: Op) -> CallFuture<'_> {
        Box::pin(async move {
            let client = &self.clients[worker % self.clients.len()];
            let request = match request(op) {
                Ok(request) => request,
                Err(err) => {
                    return Outcome {
                        result: Err(bad_request(&err)),
                        attempts: 1,
                    };
                }
            };
            // The worker is this pool's only user: what broke in use meanwhile broke
            // under this request.
            let before = broken_in_use(client);
            let result = client.send(request).await;
            let broke = broken_in_use(client).saturating_sub(before);
            let result = match result {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(status_failure(response.status())),
                Err(err) => Err(steady_failure(&err)),
            };
            Outcome {
                result,
                attempts: 1 + u32::try_from(broke).unwrap_or(u32::MAX - 1),
            }
        })
    }

    fn idle_limit(&self) -> Option<IdleLimit> {
        // The tightest any pool learned: all of them talk to the same server.
        self.clients
            .iter()
            .map(|c| c.pool().idle_limit())
            .min_by_key(|limit| limit.upper.unwrap_or(Duration::MAX))
    }

    fn counts(&self) -> Option<PoolCounts> {
        let mut counts = PoolCounts::default();
        for client in &self.clients {
            counts.add(&PoolCounts::read(&client.pool().stats()));
        }
        Some(counts)
    }

    fn close(&self) {
        for client in &self.clients {
            client.pool().close();
        }
    }
}

fn bad_request(err: &http::Error) -> Failure {
    Failure {
        label: "bad request".to_owned(),
        reset: None,
        message: err.to_string(),
    }
}

/// One reqwest client per worker, as `reqwest::Client::builder().build()` makes it.
pub(crate) struct Reqwest {
    clients: Vec<reqwest::Client>,
    base: String,
}

impl Reqwest {
    /// `workers` clients for the server at `addr` (`host:port`).
    pub(crate) fn new(addr: &str, workers: usize) -> Result<Reqwest, super::DemoError> {
        let clients = (0..workers)
            .map(|_| {
                reqwest::Client::builder()
                    .build()
                    .map_err(|e| super::DemoError::Setup(crate::error_chain(&e)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Reqwest {
            clients,
            base: format!("http://{addr}"),
        })
    }
}

impl Client for Reqwest {
    fn call(&self, worker: usize, op: Op) -> CallFuture<'_> {
        Box::pin(async move {
            let client = &self.clients[worker % self.clients.len()];
            let builder = match op {
                Op::Get(path) => client.get(format!("{}{path}", self.base)),
                Op::Set(path, value) => client.put(format!("{}{path}", self.base)).body(value),
            };
            let exchange = async {
                let response = builder.send().await?;
                let status = response.status();
                response.bytes().await?;
                Ok::<_, reqwest::Error>(status)
            };
            let result = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Ok(Ok(status)) if status.is_success() => Ok(()),
                Ok(Ok(status)) => Err(status_failure(status)),
                Ok(Err(err)) => Err(reqwest_failure(&err)),
                Err(_) => Err(Failure {
                    label: "timeout".to_owned(),
                    reset: None,
                    message: format!("no reply within {REQUEST_TIMEOUT:?}"),
                }),
            };
            Outcome {
                result,
                attempts: 1,
            }
        })
    }

    fn idle_limit(&self) -> Option<IdleLimit> {
        None
    }

    fn counts(&self) -> Option<PoolCounts> {
        None
    }

    fn close(&self) {}
}

/// What a reqwest error means for its connection: hyper's `IncompleteMessage` is
/// the keep-alive race (the server closed the connection as the request went out),
/// a socket error is named as the pool would name it.
fn reqwest_failure(err: &reqwest::Error) -> Failure {
    let message = crate::error_chain(err);
    if err.is_timeout() {
        return Failure {
            label: "timeout".to_owned(),
            reset: None,
            message,
        };
    }
    let phase = if err.is_connect() {
        Phase::Connect
    } else {
        Phase::InUse
    };
    let mut source = err.source();
    while let Some(inner) = source {
        let cause = if let Some(hyper) = inner.downcast_ref::<hyper::Error>()
            && hyper.is_incomplete_message()
        {
            Some(ResetCause::PeerClosed)
        } else {
            inner
                .downcast_ref::<std::io::Error>()
                .map(|io| ResetCause::of_io(io, phase))
        };
        if let Some(cause) = cause {
            return Failure {
                label: format!("{} / {}", cause.as_str(), phase.as_str()),
                reset: Some((cause, phase)),
                message,
            };
        }
        source = inner.source();
    }
    Failure {
        label: "request failed".to_owned(),
        reset: None,
        message,
    }
}

/// Sends one `GET /` to `addr` and returns the `Keep-Alive: timeout=N` of its
/// answer, if it has one.
///
/// # Errors
/// What went wrong, when no HTTP answer came.
pub(crate) async fn announced_keep_alive(addr: &str) -> Result<Option<Duration>, String> {
    let client = reqwest::Client::builder()
        .timeout(super::PREFLIGHT_TIMEOUT)
        .build()
        .map_err(|e| crate::error_chain(&e))?;
    let response = client
        .get(format!("http://{addr}/"))
        .send()
        .await
        .map_err(|e| crate::error_chain(&e))?;
    let announced = response
        .headers()
        .get("keep-alive")
        .and_then(|value| value.to_str().ok())
        .and_then(keep_alive_timeout);
    response.bytes().await.map_err(|e| crate::error_chain(&e))?;
    Ok(announced)
}

/// The `timeout` parameter of a `Keep-Alive` header value (`timeout=5, max=100`).
fn keep_alive_timeout(value: &str) -> Option<Duration> {
    value.split(',').find_map(|param| {
        let (name, seconds) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("timeout") {
            return None;
        }
        let seconds: u64 = seconds.trim().trim_matches('"').parse().ok()?;
        Some(Duration::from_secs(seconds))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keep_alive_timeout_is_read_from_its_parameters() {
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(keep_alive_timeout("timeout=5"), secs(5));
        assert_eq!(keep_alive_timeout("max=100, Timeout = 60"), secs(60));
        assert_eq!(keep_alive_timeout("max=100"), None);
        assert_eq!(keep_alive_timeout("timeout=soon"), None);
    }
}
