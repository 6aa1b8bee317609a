//! HTTP/1.1 through [`hyper`]'s client connections (feature `http`), and
//! [`HttpClient`], a client for one origin with the retry rules of RFC 9110.
//!
//! The failure this crate was born from is an HTTP one: a client keeps a connection
//! alive longer than the server (Node.js closes idle keep-alive connections after
//! 5 s by default) or a load balancer in between (AWS ALB: 60 s, HAProxy's
//! `timeout client`) keeps it. The server closes it just as the client sends the
//! next request on it, and the request fails with `ECONNRESET`, or in hyper with
//! "connection closed before message completed" (`IncompleteMessage`). This driver
//! closes such connections first, and retries the requests it may safely retry when
//! the race is lost anyway.
//!
//! * **Sockets**: the pool opens each one through its [`Dialer`](crate::Dialer) (keepalive,
//!   `TCP_USER_TIMEOUT`, nodelay, connect timeout), and hyper's
//!   [`client::conn::http1`](hyper::client::conn::http1) speaks HTTP/1.1 on it; the
//!   connection task is spawned. The pool keeps a duplicate of the descriptor to
//!   probe it at checkout (one `peek`), as the PostgreSQL driver does.
//! * **broken**: the connection task read an end of stream or an error, hyper says
//!   the sender is closed, the server answered `Connection: close`, a response body
//!   was left unread, or the connection sat idle close to the server's announced
//!   Keep-Alive timeout (below).
//! * **ping**: none by default (a free probe and the header below find what a ping
//!   would); `GET` of a health path when one is set with
//!   [`HttpManager::health_path`], any 2xx answer passing.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use bytes::Bytes;
//! use steadypool::Pool;
//! use steadypool::drivers::http::{HttpClient, HttpManager};
//!
//! let manager = HttpManager::new("http://127.0.0.1:3000")?;
//! let client = HttpClient::new(Pool::builder(manager).name("api").max_size(32).build()?);
//!
//! let request = http::Request::get("/users/42").body(Bytes::new())?;
//! let response = client.send(request).await?;
//! println!("{} {:?}", response.status(), response.body());
//! # Ok(()) }
//! ```
//!
//! ## Keep-Alive: the limit the server announces
//!
//! A server that closes idle connections often says when: Node.js answers every
//! request with `Keep-Alive: timeout=5`, Apache with `timeout=5, max=100`. Each
//! connection remembers the last `timeout` it was told and when its last response
//! ended; once it has sat idle for that long minus a margin
//! ([`HttpManager::keep_alive_margin`], 1 s by default, at most a quarter of the
//! timeout), [`Manager::broken`](crate::Manager::broken) reports it due
//! ([`Broken::server_limit`](crate::Broken::server_limit)) and the pool closes it, at
//! checkout or in the reaper's next pass, before the server does. Nothing broke, so
//! it is counted as the eviction `server_limit`, not as a reset, and its `debug`
//! event's detail names the header. The announced timeout is published as it
//! changes ([`Manager::announced_idle_limit`](crate::Manager::announced_idle_limit)):
//! the gauge `steadypool_announced_idle_timeout_seconds`,
//! [`Stats::announced_idle_timeout`](crate::Stats::announced_idle_timeout), and an
//! `info` event whose hint compares it with the pool's `idle_timeout`. It teaches
//! the idle-limit learner no bound: the server promised it, nothing measured it,
//! and each connection is already closed before it by the check above (the
//! learner's 75 % share would close them all sooner for nothing). A connection the
//! server closes anyway (a restart, a timeout shorter than announced) is a
//! `peer_closed` reset and teaches the learner as any other.
//! A response with `Connection: close` (or an HTTP/1.0 response without
//! keep-alive) is honoured: hyper closes the connection after it, and the pool
//! discards it as it comes back, counted as the eviction `server_limit` too. That is
//! how a server's request limit shows (`Keep-Alive: max=N` of Apache, nginx's
//! `keepalive_requests`, Node's `maxRequestsPerSocket`): the last response it allows
//! on a connection says `Connection: close`, and no request is sent on it after.
//!
//! A load balancer does not announce its idle timeout: set the pool's
//! `idle_timeout` below it (below 60 s behind an ALB, below `timeout client`
//! behind HAProxy), and the idle-limit learner finds it from the resets otherwise.
//!
//! ## Errors and retries
//!
//! [`HttpClient::send`] follows RFC 9110 section 9.2.2:
//!
//! | request | retried when its connection broke | how |
//! |---|---|---|
//! | `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE` | always (within the pool's [`RetryPolicy`](crate::RetryPolicy)) | [`Pool::run_idempotent`](crate::Pool::run_idempotent) |
//! | any request with an `Idempotency-Key` header | always | the same |
//! | `POST`, `PATCH` and other methods | only when the request provably never left | [`Pool::run`](crate::Pool::run) |
//!
//! | what happened | [`Disposition`](crate::Disposition) |
//! |---|---|
//! | the connection closed or was reset before the request was written | broken, `peer_closed` / `peer_reset`, not sent |
//! | `IncompleteMessage`: the connection closed after the request went out, before any response byte (on a reused connection, the keep-alive race) | broken, `peer_closed` / `peer_reset` (from the socket's error), may have been sent |
//! | the server's bytes are not HTTP | broken, `unexpected_data` |
//! | 502 or 503 to an idempotent request | transient: retried after a backoff |
//! | any other status (and 502/503 to any other request) | the response, returned as it is |
//!
//! ## Response bodies: read whole, or streamed
//!
//! A connection goes back to the pool only once its response was read to the
//! end, so a reply is never read by the wrong request. Two ways to get it:
//!
//! | | [`HttpClient::send`] | [`HttpClient::send_streaming`] |
//! |---|---|---|
//! | the body | read whole before it returns, as [`Bytes`](bytes::Bytes) | a [`ResponseBody`], read as the server sends it |
//! | the connection goes back | before it returns | when the body's last frame is read |
//! | retried (by the rules above) | until the whole body was read | until the response's head arrived |
//! | a failure while reading the body | retried if idempotent, else [`RunError::MaybeExecuted`](crate::RunError::MaybeExecuted) | the body yields [`HttpError::Connection`] with the cause, `sent: Maybe`; never retried |
//! | dropped half-way (the future, or the body) | connection closed, eviction `cancelled` | the same |
//! | [`HttpManager::max_response_body`] | applies: [`HttpError::BodyTooLarge`], connection closed | does not apply: the caller reads what it needs |
//!
//! A connection that failed under a body is closed and counted as a reset with its
//! cause in phase `in_use`, as one that failed under a request. A 502 or 503 that
//! is retried has its body read whole either way, so that its connection serves
//! the retry.
//!
//! ## https://
//!
//! With the `tls` feature too, [`HttpManager::with_tls`] takes an `https://` origin
//! and a rustls `ClientConfig`: HTTP/1.1 runs over a
//! [`TlsStream`](crate::drivers::tls::TlsStream) on the pool's socket, the
//! certificate is verified for the origin's host, and the probe, the causes and the
//! Keep-Alive learning work as over plain TCP (session tickets and KeyUpdates cost
//! no connection; a close_notify is `peer_closed`). A certificate that does not
//! verify fails the connect with [`HttpError::Tls`], which names rustls's reason.
//! Without the feature, [`HttpManager::new`] refuses `https://` with
//! [`HttpError::Origin`] naming it. HTTP/2 is out of scope.

mod body;
mod client;
mod connection;
mod error;

pub use self::body::ResponseBody;
pub use self::client::{HttpClient, idempotency};
pub use self::connection::{HttpConnection, HttpManager};
pub use self::error::HttpError;
