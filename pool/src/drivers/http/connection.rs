//! HTTP/1.1 connections on the pool's sockets: the manager that opens them and the
//! connection that sends requests on them.

use super::error::HttpError;
use crate::cause::{Disposition, ResetCause, Sent};
use crate::classify::classify_source_chain;
use crate::dial::{Address, Dialer};
use crate::drivers::watch::{Fate, Transport, Watched};
use crate::manager::{Broken, Manager};
use crate::probe::SocketRef;
use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::fmt;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const HTTP_PORT: u16 = 80;
const HTTPS_PORT: u16 = 443;
/// Why [`HttpManager::new`] refuses an `https://` origin.
#[cfg(feature = "tls")]
const HTTPS_REFUSED: &str = "https:// needs a rustls ClientConfig: use HttpManager::with_tls";
#[cfg(not(feature = "tls"))]
const HTTPS_REFUSED: &str = "https:// needs steadypool's `tls` feature (rustls): enable it and use HttpManager::with_tls, or terminate TLS in front of the service";
/// The default of [`HttpManager::max_response_body`].
const DEFAULT_MAX_BODY: usize = 64 * 1024 * 1024;
/// The default of [`HttpManager::keep_alive_margin`].
const DEFAULT_KEEP_ALIVE_MARGIN: Duration = Duration::from_secs(1);

/// Opens HTTP/1.1 connections to one origin on the pool's sockets. See the
/// [module docs](crate::drivers::http).
#[derive(Debug, Clone)]
pub struct HttpManager {
    origin: String,
    scheme: Scheme,
    authority: Authority,
    addr: Address,
    host: HeaderValue,
    health_path: Option<PathAndQuery>,
    keep_alive_margin: Duration,
    max_body: usize,
    #[cfg(feature = "tls")]
    tls: Option<Https>,
}

/// What an `https://` origin's connections are verified with.
#[cfg(feature = "tls")]
#[derive(Debug, Clone)]
struct Https {
    config: Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
}

impl HttpManager {
    /// A manager for `origin`: `http://host[:port]`, with no path (`/` is accepted).
    ///
    /// ```
    /// use steadypool::drivers::http::{HttpError, HttpManager};
    ///
    /// let manager = HttpManager::new("http://api.internal:8080")?;
    /// assert_eq!(manager.origin(), "http://api.internal:8080");
    /// assert!(matches!(HttpManager::new("https://api.internal"), Err(HttpError::Origin { .. })));
    /// assert!(matches!(HttpManager::new("http://api.internal/v1"), Err(HttpError::Origin { .. })));
    /// # Ok::<(), HttpError>(())
    /// ```
    ///
    /// # Errors
    /// [`HttpError::Origin`] when `origin` is not an `http://` URI with a host, or
    /// has a path or query. An `https://` origin is refused with the way to it:
    /// [`HttpManager::with_tls`] (feature `tls`).
    pub fn new(origin: &str) -> Result<HttpManager, HttpError> {
        HttpManager::parse(origin, Scheme::HTTP)
    }

    /// A manager for an `https://host[:port]` origin (features `http` and `tls`):
    /// HTTP/1.1 over rustls, the server's certificate verified as `config` says for
    /// the origin's host (a DNS name or an IP address). The connections offer only
    /// `http/1.1` by ALPN, whatever `config` lists, so that a server able to speak
    /// HTTP/2 does not pick it.
    ///
    /// hyper's connection task reads the TLS records a server sends to an idle
    /// connection (TLS 1.3 session tickets, a KeyUpdate) as they come, so they never
    /// cost a connection; a close_notify ends the task, and the pool counts it as
    /// `peer_closed`, as a FIN over plain TCP. The Keep-Alive timeout the server
    /// announces and the learned idle limit work as over `http://`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use steadypool::drivers::http::{HttpError, HttpManager};
    /// use steadypool::drivers::tls::rustls;
    ///
    /// let config = rustls::ClientConfig::builder()
    ///     .with_root_certificates(rustls::RootCertStore::empty())
    ///     .with_no_client_auth();
    /// let manager = HttpManager::with_tls("https://api.internal", Arc::new(config.clone()))?;
    /// assert_eq!(manager.origin(), "https://api.internal");
    /// assert!(matches!(
    ///     HttpManager::with_tls("http://api.internal", Arc::new(config)),
    ///     Err(HttpError::Origin { .. })
    /// ));
    /// # Ok::<(), HttpError>(())
    /// ```
    ///
    /// # Errors
    /// [`HttpError::Origin`] when `origin` is not an `https://` URI with a host, or
    /// has a path or query.
    #[cfg(feature = "tls")]
    pub fn with_tls(
        origin: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<HttpManager, HttpError> {
        let mut manager = HttpManager::parse(origin, Scheme::HTTPS)?;
        let host = manager.authority.host();
        // An IPv6 host keeps its brackets in the authority; a server name has none.
        let name = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let server_name =
            crate::drivers::tls::parse_server_name(name).map_err(|e| HttpError::Origin {
                origin: origin.to_owned(),
                reason: e.to_string(),
            })?;
        let mut config = Arc::unwrap_or_clone(config);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        manager.tls = Some(Https {
            config: Arc::new(config),
            server_name,
        });
        Ok(manager)
    }

    /// Checks `origin` for a manager of `expected` scheme.
    fn parse(origin: &str, expected: Scheme) -> Result<HttpManager, HttpError> {
        let refuse = |reason: &str| HttpError::Origin {
            origin: origin.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = origin
            .parse()
            .map_err(|e| refuse(&format!("not a URI ({e})")))?;
        match uri.scheme() {
            Some(scheme) if *scheme == expected => {}
            Some(scheme) if *scheme == Scheme::HTTPS => return Err(refuse(HTTPS_REFUSED)),
            Some(scheme) if *scheme == Scheme::HTTP => {
                return Err(refuse(
                    "with_tls takes an https:// origin; use HttpManager::new for http://",
                ));
            }
            _ => return Err(refuse(&format!("the scheme must be {expected}://"))),
        }
        let Some(authority) = uri.authority().cloned() else {
            return Err(refuse("no host"));
        };
        if authority.as_str().contains('@') {
            return Err(refuse("user information in the origin is not supported"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(refuse(
                "an origin has no path or query: give the path in each request",
            ));
        }
        let port = authority.port_u16().unwrap_or(default_port(&expected));
        let addr = Address::from(format!("{}:{port}", authority.host()));
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|e| refuse(&format!("the host is not a header value ({e})")))?;
        Ok(HttpManager {
            origin: format!("{expected}://{authority}"),
            scheme: expected,
            authority,
            addr,
            host,
            health_path: None,
            keep_alive_margin: DEFAULT_KEEP_ALIVE_MARGIN,
            max_body: DEFAULT_MAX_BODY,
            #[cfg(feature = "tls")]
            tls: None,
        })
    }

    /// A path the checkout ping requests with `GET` (when a connection sat idle
    /// past the pool's `check_after`); any 2xx answer passes. Default: none, and no
    /// ping. Prevents handing out a connection to a server that accepts
    /// connections but no longer serves (a backend stuck behind a live proxy).
    ///
    /// ```
    /// use steadypool::drivers::http::HttpManager;
    /// let manager = HttpManager::new("http://127.0.0.1:3000")?.health_path("/healthz")?;
    /// # Ok::<(), steadypool::drivers::http::HttpError>(())
    /// ```
    ///
    /// # Errors
    /// [`HttpError::Origin`] when `path` is not an absolute path (`/...`).
    pub fn health_path(mut self, path: &str) -> Result<HttpManager, HttpError> {
        let parsed: PathAndQuery = path.parse().map_err(|e| HttpError::Origin {
            origin: self.origin.clone(),
            reason: format!("health path {path:?} is not a path ({e})"),
        })?;
        if !parsed.as_str().starts_with('/') {
            return Err(HttpError::Origin {
                origin: self.origin.clone(),
                reason: format!("health path {path:?} must start with /"),
            });
        }
        self.health_path = Some(parsed);
        Ok(self)
    }

    /// How long before the server's announced Keep-Alive timeout a connection is
    /// closed; at most a quarter of the timeout is used. Default 1 s. Prevents the
    /// keep-alive race: the server closing a connection as a request goes out on
    /// it (see the [module docs](crate::drivers::http#keep-alive-the-limit-the-server-announces)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use steadypool::drivers::http::HttpManager;
    /// let manager = HttpManager::new("http://127.0.0.1:3000")?
    ///     .keep_alive_margin(Duration::from_millis(1500));
    /// # Ok::<(), steadypool::drivers::http::HttpError>(())
    /// ```
    #[must_use]
    pub fn keep_alive_margin(mut self, margin: Duration) -> HttpManager {
        self.keep_alive_margin = margin;
        self
    }

    /// The longest response body read, in bytes. Default 64 MiB. Prevents a huge
    /// or endless response from exhausting memory; a longer one fails with
    /// [`HttpError::BodyTooLarge`] and its connection is closed. It bounds the
    /// bodies read whole ([`HttpClient::send`](super::HttpClient::send), a 502 or 503
    /// read for a retry), not a [`ResponseBody`](super::ResponseBody), whose caller
    /// reads as much as it wants.
    ///
    /// ```
    /// use steadypool::drivers::http::HttpManager;
    /// let manager = HttpManager::new("http://127.0.0.1:3000")?.max_response_body(1 << 20);
    /// # Ok::<(), steadypool::drivers::http::HttpError>(())
    /// ```
    #[must_use]
    pub fn max_response_body(mut self, bytes: usize) -> HttpManager {
        self.max_body = bytes;
        self
    }

    /// How long a connection whose server announced a Keep-Alive timeout of
    /// `announced` may sit idle before it is closed: the timeout less the margin,
    /// the margin capped at a quarter of it so that a short timeout (Node's
    /// `timeout=1`) still leaves the connection most of its idle life.
    fn close_after(&self, announced: Duration) -> Duration {
        announced - self.keep_alive_margin.min(announced / 4)
    }

    /// The origin, `http://host[:port]` or `https://host[:port]`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The request as it goes on the wire to this origin: the URI in origin form
    /// (`/path?query`), a `Host` header, HTTP/1.1 unless it says HTTP/1.0.
    pub(super) fn prepare(&self, parts: &mut http::request::Parts) -> Result<(), HttpError> {
        if let Some(scheme) = parts.uri.scheme()
            && *scheme != self.scheme
        {
            return Err(HttpError::Request(format!(
                "{} is not on this client's origin {} (another scheme)",
                parts.uri, self.origin
            )));
        }
        if let Some(authority) = parts.uri.authority()
            && !same_authority(authority, &self.authority, default_port(&self.scheme))
        {
            return Err(HttpError::Request(format!(
                "{} is not on this client's origin {}",
                parts.uri, self.origin
            )));
        }
        match parts.version {
            Version::HTTP_11 | Version::HTTP_10 => {}
            other => {
                return Err(HttpError::Request(format!(
                    "{other:?} is not supported: this driver speaks HTTP/1.1"
                )));
            }
        }
        if parts.uri.scheme().is_some() || parts.uri.path_and_query().is_none() {
            let path = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            parts.uri = Uri::from(path);
        }
        if !parts.headers.contains_key(HOST) {
            parts.headers.insert(HOST, self.host.clone());
        }
        Ok(())
    }
}

/// The port of a URI of `scheme` that names none.
fn default_port(scheme: &Scheme) -> u16 {
    if *scheme == Scheme::HTTPS {
        HTTPS_PORT
    } else {
        HTTP_PORT
    }
}

/// Whether two authorities name the same server: hosts compare without case, and
/// a missing port is `default`.
fn same_authority(a: &Authority, b: &Authority, default: u16) -> bool {
    a.host().eq_ignore_ascii_case(b.host())
        && a.port_u16().unwrap_or(default) == b.port_u16().unwrap_or(default)
}

/// A pooled HTTP/1.1 connection to one origin.
///
/// [`HttpConnection::send`] sends one request and reads its whole response. hyper's
/// connection task owns the socket and ends when the connection is dropped.
pub struct HttpConnection {
    sender: SendRequest<Full<Bytes>>,
    socket: socket2::Socket,
    driver: JoinHandle<()>,
    fate: Fate,
    /// The idle time after which this connection is closed before the server
    /// closes it: its last announced Keep-Alive timeout, minus the margin.
    close_after: Option<Duration>,
    /// The last announced Keep-Alive timeout, in whole seconds, for the log.
    announced: u64,
    /// The server said it closes the connection after its last response, and how.
    closing: Option<&'static str>,
    /// A request was sent whose response was not read to the end.
    reply_pending: bool,
    /// When the last response ended (or the connection opened).
    idle_since: Instant,
    /// How long the connection had sat idle when its latest request went out.
    sent_after: Duration,
    responses: u64,
    manager: HttpManager,
}

impl HttpConnection {
    /// Sends `request` and reads its whole response (up to the manager's
    /// [`max_response_body`](HttpManager::max_response_body)). An absolute URI must
    /// name this connection's origin; a missing `Host` header is added.
    ///
    /// ```no_run
    /// # async fn demo(pool: steadypool::Pool<steadypool::drivers::http::HttpManager>) -> Result<(), Box<dyn std::error::Error>> {
    /// use bytes::Bytes;
    /// let mut conn = pool.get().await?;
    /// let response = conn.send(http::Request::get("/health").body(Bytes::new())?).await?;
    /// assert!(response.status().is_success());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`HttpError::Request`] for a request this connection cannot send,
    /// [`HttpError::Connection`] when the connection failed under it,
    /// [`HttpError::BodyTooLarge`]. Any status is a response, not an error.
    pub async fn send<B: Into<Bytes>>(
        &mut self,
        request: Request<B>,
    ) -> Result<Response<Bytes>, HttpError> {
        let (mut parts, body) = request.into_parts();
        self.manager.prepare(&mut parts)?;
        self.exchange(Request::from_parts(parts, Full::new(body.into())))
            .await
    }

    /// Sends a prepared request and reads the whole response.
    pub(super) async fn exchange(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, HttpError> {
        let response = self.send_head(request).await?;
        self.read_body(response).await
    }

    /// Sends a prepared request and waits for its response's head; the body is
    /// still to be read, through [`HttpConnection::read_body`] or a
    /// [`ResponseBody`](super::ResponseBody), before the connection may serve
    /// another request.
    pub(super) async fn send_head(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, HttpError> {
        self.sent_after = self.idle_since.elapsed();
        self.reply_pending = true;
        if let Err(err) = self.sender.ready().await {
            return Err(self.failed(err, Sent::No));
        }
        let response = match self.sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut err) => {
                let sent = if err.take_message().is_some() {
                    Sent::No
                } else {
                    Sent::Maybe
                };
                return Err(self.failed(err.into_error(), sent));
            }
        };
        self.learn(response.version(), response.headers());
        Ok(response)
    }

    /// Reads the body of the response [`HttpConnection::send_head`] returned, up
    /// to the manager's [`max_response_body`](HttpManager::max_response_body).
    pub(super) async fn read_body(
        &mut self,
        response: Response<Incoming>,
    ) -> Result<Response<Bytes>, HttpError> {
        let (parts, mut body) = response.into_parts();
        let mut first = Bytes::new();
        let mut rest: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|err| self.body_failed(err))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if first.len() + rest.len() + data.len() > self.manager.max_body {
                return Err(HttpError::BodyTooLarge {
                    limit: self.manager.max_body,
                });
            }
            if first.is_empty() && rest.is_empty() {
                first = data;
            } else {
                if rest.is_empty() {
                    rest.extend_from_slice(&first);
                }
                rest.extend_from_slice(&data);
            }
        }
        self.body_ended();
        let body = if rest.is_empty() {
            first
        } else {
            Bytes::from(rest)
        };
        Ok(Response::from_parts(parts, body))
    }

    /// The response body was read to its end: the connection may serve the next
    /// request.
    pub(super) fn body_ended(&mut self) {
        self.reply_pending = false;
        self.responses += 1;
        self.idle_since = Instant::now();
    }

    /// The error for a failure while the response body was read: the request ran.
    pub(super) fn body_failed(&self, source: hyper::Error) -> HttpError {
        self.failed(source, Sent::Maybe)
    }

    /// Remembers what a response's headers say about the connection's future.
    fn learn(&mut self, version: Version, headers: &HeaderMap) {
        let connection = headers.get(CONNECTION).and_then(|v| v.to_str().ok());
        let says = |token: &str| {
            connection.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        };
        // A server says so on the last response it allows on a connection (Apache's
        // and nginx's request limits, Node's `maxRequestsPerSocket`, a server
        // shutting down): a planned close, announced, not a failure.
        self.closing = if says("close") {
            Some("the server answered with Connection: close")
        } else if version == Version::HTTP_10 && !says("keep-alive") {
            Some("the server answered in HTTP/1.0 without keep-alive")
        } else {
            None
        };
        if let Some(timeout) = headers
            .get("keep-alive")
            .and_then(|v| v.to_str().ok())
            .and_then(keep_alive_timeout)
        {
            self.close_after = Some(self.manager.close_after(Duration::from_secs(timeout)));
            self.announced = timeout;
        }
    }

    /// The error for a failure of the connection under a request.
    fn failed(&self, source: hyper::Error, sent: Sent) -> HttpError {
        let cause = self
            .fate
            .get()
            .map(|broken| broken.cause)
            .unwrap_or_else(|| cause_of(&source));
        HttpError::Connection {
            source,
            cause,
            sent,
            reused: self.responses > 0,
            idle: self.sent_after,
        }
    }

    /// How many responses this connection has served.
    ///
    /// ```no_run
    /// # async fn demo(pool: steadypool::Pool<steadypool::drivers::http::HttpManager>) -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = pool.get().await?;
    /// println!("served {} responses so far", conn.responses());
    /// # Ok(()) }
    /// ```
    pub fn responses(&self) -> u64 {
        self.responses
    }

    /// The Keep-Alive timeout the server last announced on this connection
    /// (`Keep-Alive: timeout=5` is 5 s); the connection is closed when it has sat
    /// idle that long less [`HttpManager::keep_alive_margin`].
    ///
    /// ```no_run
    /// # async fn demo(pool: steadypool::Pool<steadypool::drivers::http::HttpManager>) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let mut conn = pool.get().await?;
    /// conn.send(http::Request::get("/").body(bytes::Bytes::new())?).await?;
    /// // Node.js, by default:
    /// assert_eq!(conn.announced_keep_alive(), Some(Duration::from_secs(5)));
    /// # Ok(()) }
    /// ```
    pub fn announced_keep_alive(&self) -> Option<Duration> {
        self.close_after
            .map(|_| Duration::from_secs(self.announced))
    }

    /// Why the connection must not serve another request, if it must not.
    fn ended(&self) -> Option<Broken> {
        if let Some(broken) = self.fate.get() {
            return Some(broken.clone());
        }
        if self.reply_pending {
            return Some(
                Broken::new(ResetCause::Other)
                    .with_detail("a response was not read to its end; its bytes may be in flight"),
            );
        }
        if let Some(said) = self.closing {
            return Some(Broken::server_limit(said));
        }
        if self.sender.is_closed() || self.driver.is_finished() {
            return Some(
                Broken::new(ResetCause::PeerClosed)
                    .with_detail("the connection's task ended (the server closed it)"),
            );
        }
        if let Some(limit) = self.close_after
            && self.idle_since.elapsed() >= limit
        {
            return Some(Broken::server_limit(format!(
                "closed before the server's announced Keep-Alive: timeout={} would",
                self.announced
            )));
        }
        None
    }
}

impl fmt::Debug for HttpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConnection")
            .field("origin", &self.manager.origin)
            .field("responses", &self.responses)
            .field("close_after", &self.close_after)
            .finish_non_exhaustive()
    }
}

/// The `timeout` parameter of a `Keep-Alive` header (`timeout=5, max=100`), in
/// seconds.
fn keep_alive_timeout(value: &str) -> Option<u64> {
    value.split(',').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("timeout")
            .then(|| value.trim().trim_matches('"').parse().ok())?
    })
}

/// The cause of a hyper error when the socket itself showed none.
fn cause_of(err: &hyper::Error) -> ResetCause {
    if let Some(Disposition::Broken { cause, .. }) = classify_source_chain(err) {
        return cause;
    }
    if err.is_parse() || err.is_parse_status() {
        ResetCause::UnexpectedData
    } else if err.is_incomplete_message() || err.is_canceled() || err.is_closed() {
        ResetCause::PeerClosed
    } else if err.is_timeout() {
        ResetCause::UserTimeout
    } else {
        ResetCause::Other
    }
}

impl HttpManager {
    /// Runs hyper's HTTP/1.1 handshake on `io` (the socket, or TLS over it) and
    /// spawns its connection task; `socket` is the duplicate the probe peeks at.
    async fn start<S>(&self, io: S, socket: socket2::Socket) -> Result<HttpConnection, HttpError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let fate = Fate::default();
        let io = TokioIo::new(Watched::new(io, Transport, fate.clone()));
        let (sender, connection) =
            http1::handshake(io)
                .await
                .map_err(|source| HttpError::Connection {
                    cause: cause_of(&source),
                    source,
                    sent: Sent::No,
                    reused: false,
                    idle: Duration::ZERO,
                })?;
        let task_fate = fate.clone();
        let driver = tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "http connection ended");
                task_fate.record(Broken::new(cause_of(&err)).with_detail(err.to_string()));
            }
        });
        Ok(HttpConnection {
            sender,
            socket,
            driver,
            fate,
            close_after: None,
            announced: 0,
            closing: None,
            reply_pending: false,
            idle_since: Instant::now(),
            sent_after: Duration::ZERO,
            responses: 0,
            manager: self.clone(),
        })
    }
}

impl Manager for HttpManager {
    type Connection = HttpConnection;
    type Error = HttpError;

    async fn connect(&self, dialer: &Dialer) -> Result<HttpConnection, HttpError> {
        let stream = dialer.connect(&self.addr).await?;
        let socket = socket2::SockRef::from(&stream)
            .try_clone()
            .map_err(HttpError::Socket)?;
        #[cfg(feature = "tls")]
        if let Some(https) = &self.tls {
            let tls = crate::drivers::tls::TlsStream::connect(
                Arc::clone(&https.config),
                https.server_name.clone(),
                stream,
            )
            .await
            .map_err(|source| HttpError::Tls {
                origin: self.origin.clone(),
                source,
            })?;
            return self.start(tls, socket).await;
        }
        self.start(stream, socket).await
    }

    fn socket<'a>(&self, conn: &'a HttpConnection) -> Option<SocketRef<'a>> {
        // Once hyper's task read the end of the session, that first reason is the
        // one to count (`broken` reports it): over TLS the task answers a
        // close_notify with its own, which a server that has closed its socket
        // answers with a reset, and the probe would count that instead.
        if conn.fate.get().is_some() {
            return None;
        }
        // Over TLS as well: hyper's task reads the TLS records, so the descriptor's
        // duplicate is all the probe can see, and bytes on it are that task's.
        Some(SocketRef::Raw(crate::drivers::borrow_raw(&conn.socket)))
    }

    async fn ping(&self, conn: &mut HttpConnection) -> Result<(), HttpError> {
        let Some(path) = &self.health_path else {
            return Ok(());
        };
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = Uri::from(path.clone());
        request.headers_mut().insert(HOST, self.host.clone());
        let response = conn.exchange(request).await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(HttpError::Unavailable(Box::new(response)))
        }
    }

    fn target(&self) -> Option<String> {
        Some(self.origin.clone())
    }

    fn broken(&self, conn: &HttpConnection) -> Option<Broken> {
        conn.ended()
    }

    fn announced_idle_limit(&self, conn: &HttpConnection) -> Option<Duration> {
        conn.announced_keep_alive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::cause::Classify;
    use crate::drivers::http::HttpClient;

    #[test]
    fn keep_alive_timeout_is_read_from_the_header_parameters() {
        assert_eq!(keep_alive_timeout("timeout=5"), Some(5));
        assert_eq!(keep_alive_timeout("timeout=5, max=100"), Some(5));
        assert_eq!(keep_alive_timeout("max=100, Timeout = 60"), Some(60));
        assert_eq!(keep_alive_timeout("timeout=\"7\""), Some(7));
        assert_eq!(keep_alive_timeout("max=100"), None);
        assert_eq!(keep_alive_timeout("timeout=soon"), None);
        assert_eq!(keep_alive_timeout(""), None);
    }

    #[test]
    fn origins_other_than_plain_http_hosts_are_refused_with_the_reason() {
        for (origin, reason) in [
            ("https://example.com", "https:// needs"),
            ("ftp://example.com", "scheme must be http://"),
            ("example.com", "scheme must be http://"),
            ("http://example.com/api", "no path or query"),
            ("http://user:pw@example.com", "user information"),
            ("http://exa mple.com", "not a URI"),
        ] {
            match HttpManager::new(origin) {
                Err(HttpError::Origin { reason: got, .. }) => {
                    assert!(got.contains(reason), "{origin}: {got}");
                }
                other => panic!("{origin}: {other:?}"),
            }
        }
        let manager = HttpManager::new("http://Example.com:8080/").unwrap();
        assert_eq!(manager.origin(), "http://Example.com:8080");
        assert_eq!(manager.host, "Example.com:8080");
        let v6 = HttpManager::new("http://[::1]:8080").unwrap();
        assert!(
            matches!(v6.addr, Address::Socket(addr) if addr.port() == 8080 && addr.is_ipv6()),
            "{:?}",
            v6.addr
        );
        assert_eq!(v6.host, "[::1]:8080");
    }

    #[test]
    fn https_without_a_tls_config_is_refused_with_the_way_to_it() {
        let way = if cfg!(feature = "tls") {
            "needs a rustls ClientConfig: use HttpManager::with_tls"
        } else {
            "needs steadypool's `tls` feature"
        };
        match HttpManager::new("https://example.com") {
            Err(err @ HttpError::Origin { .. }) => {
                assert!(err.to_string().contains(way), "{err}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn https_connections_offer_only_http_1_1_and_name_the_host() {
        use crate::drivers::tls::rustls;
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let manager = HttpManager::with_tls("https://API.example.com", Arc::new(config)).unwrap();
        let https = manager.tls.as_ref().unwrap();
        assert_eq!(https.config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(
            https.server_name,
            rustls::pki_types::ServerName::try_from("API.example.com").unwrap()
        );
        assert!(
            matches!(manager.addr, Address::Host(ref host) if host == "API.example.com:443"),
            "{:?}",
            manager.addr
        );
        let (mut parts, ()) = Request::get("https://api.example.com/x")
            .body(())
            .unwrap()
            .into_parts();
        manager.prepare(&mut parts).unwrap();
        assert_eq!(parts.uri, "/x");
        let (mut parts, ()) = Request::get("http://api.example.com/x")
            .body(())
            .unwrap()
            .into_parts();
        assert!(matches!(
            manager.prepare(&mut parts),
            Err(HttpError::Request(_))
        ));
    }

    #[test]
    fn requests_are_put_in_origin_form_with_a_host_and_other_origins_refused() {
        let manager = HttpManager::new("http://api.local:8080").unwrap();
        let prepared = |uri: &str| {
            let (mut parts, ()) = Request::get(uri).body(()).unwrap().into_parts();
            manager.prepare(&mut parts).map(|()| parts)
        };
        let parts = prepared("http://API.local:8080/a?b=1").unwrap();
        assert_eq!(parts.uri, "/a?b=1");
        assert_eq!(parts.headers[HOST], "api.local:8080");
        assert_eq!(prepared("/x").unwrap().uri, "/x");
        for uri in [
            "http://other.local:8080/",
            "http://api.local/",
            "https://api.local:8080/",
        ] {
            assert!(matches!(prepared(uri), Err(HttpError::Request(_))), "{uri}");
        }
        let (mut parts, ()) = Request::get("/")
            .version(Version::HTTP_2)
            .body(())
            .unwrap()
            .into_parts();
        assert!(matches!(
            manager.prepare(&mut parts),
            Err(HttpError::Request(_))
        ));
    }

    #[test]
    fn failures_classify_by_what_they_mean_for_connection_and_request() {
        assert_eq!(
            HttpError::Request("x".into()).classify(),
            Disposition::Application
        );
        assert_eq!(
            HttpError::BodyTooLarge { limit: 1 }.classify(),
            Disposition::Application
        );
        let unavailable = Response::builder().status(503).body(Bytes::new()).unwrap();
        assert_eq!(
            HttpError::Unavailable(Box::new(unavailable)).classify(),
            Disposition::Transient
        );
        #[cfg(feature = "tls")]
        for (kind, cause) in [
            (std::io::ErrorKind::InvalidData, ResetCause::Other),
            (std::io::ErrorKind::ConnectionReset, ResetCause::PeerReset),
            (std::io::ErrorKind::UnexpectedEof, ResetCause::PeerClosed),
        ] {
            let handshake = HttpError::Tls {
                origin: "https://api.local".into(),
                source: std::io::Error::new(kind, "handshake"),
            };
            assert_eq!(
                handshake.classify(),
                Disposition::Broken {
                    cause,
                    sent: Sent::No
                },
                "{kind:?}"
            );
        }
    }

    /// A server that answers the first request on each connection and closes
    /// (`reset`: resets) the connection when the second arrives, unanswered: the
    /// keep-alive race, made deterministic. Returns its origin and its count of
    /// requests received.
    async fn closing_on_second_request(
        reset: bool,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::AtomicUsize;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut answered = false;
                    loop {
                        let mut chunk = [0u8; 1024];
                        let Ok(n @ 1..) = stream.read(&mut chunk).await else {
                            return;
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            count.fetch_add(1, Ordering::SeqCst);
                            if answered {
                                if reset {
                                    stream.set_zero_linger().unwrap();
                                }
                                return;
                            }
                            answered = true;
                            stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await
                                .unwrap();
                        }
                    }
                });
            }
        });
        (origin, received)
    }

    fn client_for(origin: &str) -> HttpClient {
        let pool = crate::Pool::builder(HttpManager::new(origin).unwrap())
            .max_size(1)
            .retry_policy(
                crate::RetryPolicy::default()
                    .backoff(Duration::from_millis(1), Duration::from_millis(10)),
            )
            .build()
            .unwrap();
        HttpClient::new(pool)
    }

    fn request(method: http::Method) -> Request<Bytes> {
        Request::builder()
            .method(method)
            .uri("/")
            .body(Bytes::new())
            .unwrap()
    }

    #[tokio::test]
    async fn the_keep_alive_race_retries_a_get_and_never_replays_a_post() {
        for (reset, cause) in [
            (false, ResetCause::PeerClosed),
            (true, ResetCause::PeerReset),
        ] {
            let (origin, received) = closing_on_second_request(reset).await;
            let client = client_for(&origin);

            client.send(request(http::Method::GET)).await.unwrap();
            let err = client.send(request(http::Method::POST)).await.unwrap_err();
            match &err {
                crate::RunError::MaybeExecuted {
                    reason: crate::GiveUp::NotIdempotent,
                    attempts: 1,
                    cause: Some(got),
                    source:
                        Some(crate::AttemptError::Operation(HttpError::Connection {
                            sent: Sent::Maybe,
                            reused: true,
                            ..
                        })),
                } => assert_eq!(*got, cause, "{err}"),
                other => panic!("reset {reset}: {other:?}"),
            }
            assert_eq!(received.load(Ordering::SeqCst), 2, "the POST was replayed");

            // A GET meets the same race on its reused connection, and is retried.
            client.send(request(http::Method::GET)).await.unwrap();
            let response = client.send(request(http::Method::GET)).await.unwrap();
            assert_eq!(response.body(), "ok");
            let stats = client.pool().stats();
            assert_eq!(stats.resets(cause, crate::Phase::InUse), 2, "{stats:?}");
        }
    }

    #[test]
    fn the_keep_alive_margin_is_one_second_and_at_most_a_quarter_of_the_timeout() {
        let ms = Duration::from_millis;
        let manager = HttpManager::new("http://127.0.0.1:3000").unwrap();
        assert_eq!(manager.keep_alive_margin, Duration::from_secs(1));
        // From 4 s up the margin is 1 s; below, a quarter of the timeout. At 4 s
        // both are 1 s.
        for (announced, closed_after) in [
            (60_000, 59_000),
            (5_000, 4_000),
            (4_001, 3_001),
            (4_000, 3_000),
            (3_996, 2_997),
            (2_000, 1_500),
            (1_000, 750),
            (0, 0),
        ] {
            assert_eq!(
                manager.close_after(ms(announced)),
                ms(closed_after),
                "timeout={announced}ms"
            );
        }
        let wide = manager.keep_alive_margin(ms(1500));
        assert_eq!(wide.close_after(ms(60_000)), ms(58_500));
        assert_eq!(wide.close_after(ms(6_000)), ms(4_500));
        assert_eq!(wide.close_after(ms(4_000)), ms(3_000));
    }

    /// A blocking HTTP/1.1 server on threads of its own, whose connections a test
    /// can close at the moment it chooses. It answers the n-th request it receives
    /// (from 0) with `answer(n)`: a status and a body length.
    struct ThreadServer {
        origin: String,
        /// The method of each request received, in order.
        methods: Arc<Mutex<Vec<String>>>,
        streams: Arc<Mutex<Vec<std::net::TcpStream>>>,
        addr: std::net::SocketAddr,
        stopped: Arc<AtomicBool>,
    }

    type Answer = Arc<dyn Fn(usize) -> (u16, usize) + Send + Sync>;

    impl ThreadServer {
        fn start(answer: impl Fn(usize) -> (u16, usize) + Send + Sync + 'static) -> ThreadServer {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = ThreadServer {
                origin: format!("http://{addr}"),
                methods: Arc::default(),
                streams: Arc::default(),
                addr,
                stopped: Arc::default(),
            };
            let methods = Arc::clone(&server.methods);
            let streams = Arc::clone(&server.streams);
            let stopped = Arc::clone(&server.stopped);
            let answer: Answer = Arc::new(answer);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    streams.lock().unwrap().push(stream.try_clone().unwrap());
                    let methods = Arc::clone(&methods);
                    let answer = Arc::clone(&answer);
                    std::thread::spawn(move || serve(stream, &methods, &answer));
                }
            });
            server
        }

        fn methods(&self) -> Vec<String> {
            self.methods.lock().unwrap().clone()
        }

        /// Closes every connection with a FIN, as a server's idle timeout does.
        fn close_all(&self) {
            for stream in self.streams.lock().unwrap().drain(..) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    impl Drop for ThreadServer {
        fn drop(&mut self) {
            self.close_all();
            self.stopped.store(true, Ordering::SeqCst);
            // Wakes the accept loop, which sees it is stopped.
            let _ = std::net::TcpStream::connect(self.addr);
        }
    }

    /// Answers the requests of one connection (bodies are not expected) until it
    /// closes.
    fn serve(mut stream: std::net::TcpStream, methods: &Mutex<Vec<String>>, answer: &Answer) {
        use std::io::{Read, Write};
        let filler = [b'x'; 64 * 1024];
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let Ok(n @ 1..) = stream.read(&mut chunk) else {
                return;
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let method = String::from_utf8_lossy(&buf[..end])
                    .split(' ')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                buf.drain(..end + 4);
                let nth = {
                    let mut methods = methods.lock().unwrap();
                    methods.push(method);
                    methods.len() - 1
                };
                let (status, len) = answer(nth);
                let head = format!("HTTP/1.1 {status} X\r\ncontent-length: {len}\r\n\r\n");
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let mut left = len;
                while left > 0 {
                    let n = left.min(filler.len());
                    if stream.write_all(&filler[..n]).is_err() {
                        return;
                    }
                    left -= n;
                }
            }
        }
    }

    /// The server closes the connection after the checkout's probe passed it, and
    /// hyper's connection task reads that before the `POST` is offered to it: the
    /// request provably never left, and is retried on a new connection.
    #[tokio::test]
    async fn a_post_on_a_connection_found_closed_before_it_was_written_is_retried() {
        let server = Arc::new(ThreadServer::start(|_| (200, 2)));
        let closer = Arc::clone(&server);
        let pool = crate::Pool::builder(HttpManager::new(&server.origin).unwrap())
            .max_size(1)
            .before_checkout(move |conn, _| {
                let server = Arc::clone(&closer);
                Box::pin(async move {
                    server.close_all();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while !conn.sender.is_closed() {
                        assert!(Instant::now() < deadline, "hyper's task did not end");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Ok(())
                })
            })
            .build()
            .unwrap();
        let client = HttpClient::new(pool);

        client.send(request(http::Method::GET)).await.unwrap();
        let response = client.send(request(http::Method::POST)).await.unwrap();
        assert_eq!(response.status(), 200);

        // The POST reached the server once: on the new connection.
        assert_eq!(server.methods(), ["GET", "POST"]);
        let stats = client.pool().stats();
        assert_eq!(stats.opened, 2, "{stats:?}");
        assert_eq!(
            stats.resets(ResetCause::PeerClosed, crate::Phase::InUse),
            1,
            "{stats:?}"
        );
        assert_eq!(
            stats.retries_by_cause(
                ResetCause::PeerClosed,
                crate::metrics::RetryOutcome::Succeeded
            ),
            1,
            "{stats:?}"
        );
        assert_eq!(stats.runs(crate::metrics::RunOutcome::Ok), 2, "{stats:?}");
    }

    /// Every method meets the keep-alive race on its reused connection: the
    /// idempotent ones (RFC 9110 section 9.2.2) run again on a new connection, the
    /// others come back as maybe executed, unless the caller says otherwise.
    #[tokio::test]
    async fn the_keep_alive_race_retries_exactly_the_idempotent_methods() {
        use crate::Idempotency;

        let method = |name: &str| http::Method::from_bytes(name.as_bytes()).unwrap();
        let keyed = |name: &str| {
            let mut request = request(method(name));
            request
                .headers_mut()
                .insert("idempotency-key", HeaderValue::from_static("k-1"));
            request
        };
        let mut cases: Vec<(String, Option<Idempotency>, Request<Bytes>, bool)> = Vec::new();
        for name in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            cases.push((name.into(), None, request(method(name)), true));
        }
        // Methods of other specifications (WebDAV's), or of none: the driver cannot
        // know what they do, so it never replays them.
        for name in [
            "POST", "PATCH", "PROPFIND", "LOCK", "PURGE", "X-FLUSH", "get",
        ] {
            cases.push((name.into(), None, request(method(name)), false));
        }
        cases.push(("POST with a key".into(), None, keyed("POST"), true));
        cases.push(("PATCH with a key".into(), None, keyed("PATCH"), true));
        cases.push((
            "POST marked idempotent".into(),
            Some(Idempotency::Idempotent),
            request(http::Method::POST),
            true,
        ));
        cases.push((
            "PUT marked not idempotent".into(),
            Some(Idempotency::NotIdempotent),
            request(http::Method::PUT),
            false,
        ));
        for (name, kind, racing, retried) in cases {
            let (origin, received) = closing_on_second_request(false).await;
            let client = client_for(&origin);
            client.send(request(http::Method::GET)).await.unwrap();
            let result = match kind {
                Some(kind) => client.send_with(kind, racing).await,
                None => client.send(racing).await,
            };
            if retried {
                assert_eq!(result.unwrap().status(), 200, "{name}");
                assert_eq!(received.load(Ordering::SeqCst), 3, "{name}");
            } else {
                match result {
                    Err(crate::RunError::MaybeExecuted {
                        reason: crate::GiveUp::NotIdempotent,
                        attempts: 1,
                        ..
                    }) => {}
                    other => panic!("{name}: {other:?}"),
                }
                assert_eq!(received.load(Ordering::SeqCst), 2, "{name} was replayed");
            }
        }
    }

    /// 502 and 503 twice, then 200: retried after a backoff when the request is
    /// idempotent, else the response; other 5xx statuses are responses.
    #[tokio::test]
    async fn bad_gateway_and_unavailable_are_retried_for_idempotent_requests_only() {
        use crate::Idempotency;

        for (status, retried) in [(502, true), (503, true), (500, false), (504, false)] {
            for (kind, retried) in [
                (Idempotency::Idempotent, retried),
                (Idempotency::NotIdempotent, false),
            ] {
                let server = ThreadServer::start(move |n| (if n < 2 { status } else { 200 }, 2));
                let client = client_for(&server.origin);
                let method = if kind.is_idempotent() {
                    http::Method::GET
                } else {
                    http::Method::POST
                };
                let response = client.send(request(method.clone())).await.unwrap();
                let (expected, sent) = if retried { (200, 3) } else { (status, 1) };
                assert_eq!(response.status(), expected, "{status} to {method}");
                assert_eq!(server.methods().len(), sent, "{status} to {method}");
                // Each answer's body was read: one connection served them all.
                let stats = client.pool().stats();
                assert_eq!(stats.opened, 1, "{status} to {method}: {stats:?}");
                assert_eq!(stats.closed(), 0, "{status} to {method}: {stats:?}");
            }
        }

        // Retries run out: a 503 says the server did not handle the request, a 502
        // only that the gateway's upstream failed, perhaps after running it.
        for (status, may_have_run) in [(502, true), (503, false)] {
            let server = ThreadServer::start(move |_| (status, 2));
            let client = client_for(&server.origin);
            let err = client.send(request(http::Method::GET)).await.unwrap_err();
            assert_eq!(err.attempts(), Some(3), "{err}");
            assert_eq!(err.may_have_executed(), may_have_run, "{status}: {err:?}");
            let Some(crate::AttemptError::Operation(HttpError::Unavailable(last))) =
                err.attempt_error()
            else {
                panic!("{err:?}");
            };
            assert_eq!(last.status(), status, "{err}");
            assert_eq!(server.methods().len(), 3);
        }
    }

    #[tokio::test]
    async fn a_body_over_the_default_64_mib_fails_with_body_too_large() {
        const MIB_64: usize = 64 * 1024 * 1024;
        let manager = HttpManager::new("http://127.0.0.1:3000").unwrap();
        assert_eq!(manager.max_body, MIB_64);

        let server = ThreadServer::start(|_| (200, MIB_64 + 1));
        let client = client_for(&server.origin);
        match client.send(request(http::Method::GET)).await {
            Err(crate::RunError::Operation(err @ HttpError::BodyTooLarge { limit: MIB_64 })) => {
                assert_eq!(
                    err.to_string(),
                    "the response body is longer than the limit of 67108864 bytes"
                );
            }
            other => panic!("{other:?}"),
        }
        // Not retried: the server answered; the connection, its body unread, is closed.
        assert_eq!(server.methods().len(), 1);
        let stats = client.pool().stats();
        assert_eq!(
            stats.resets(ResetCause::Other, crate::Phase::InUse),
            1,
            "{stats:?}"
        );

        // The limit itself is allowed.
        let server = ThreadServer::start(|n| (200, 10 + n));
        let pool = crate::Pool::builder(
            HttpManager::new(&server.origin)
                .unwrap()
                .max_response_body(10),
        )
        .build()
        .unwrap();
        let client = HttpClient::new(pool);
        let response = client.send(request(http::Method::GET)).await.unwrap();
        assert_eq!(response.body().len(), 10);
        assert!(matches!(
            client.send(request(http::Method::GET)).await,
            Err(crate::RunError::Operation(HttpError::BodyTooLarge {
                limit: 10
            }))
        ));
    }
}
