//! [`HttpClient`]: one origin's requests through the pool, retried by the rules of
//! RFC 9110 section 9.2.2.

use bytes::Bytes;
use http::{HeaderName, Method, Request, Response, StatusCode};
use http_body_util::Full;

use super::body::ResponseBody;
use super::connection::HttpManager;
use super::error::HttpError;
use crate::pool::Pool;
use crate::retry::{Idempotency, RunError};

/// The header of the IETF draft `draft-ietf-httpapi-idempotency-key-header`: a
/// request that carries it is one the server deduplicates, so it may be repeated.
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// A client for one origin on a pool of HTTP/1.1 connections. Cheap to clone:
/// clones share the pool. See the [module docs](super#errors-and-retries) for what is
/// retried.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use steadypool::Pool;
/// use steadypool::drivers::http::{HttpClient, HttpManager};
///
/// let pool = Pool::builder(HttpManager::new("http://127.0.0.1:3000")?).build()?;
/// let client = HttpClient::new(pool);
///
/// // Retried on any broken connection: a GET may run twice.
/// let user = client.send(http::Request::get("/users/42").body(Bytes::new())?).await?;
///
/// // Never replayed once it may have reached the server...
/// let order = http::Request::post("/orders").body(Bytes::from_static(b"{\"sku\":1}"))?;
/// let created = client.send(order).await;
///
/// // ...unless the server deduplicates it by its Idempotency-Key.
/// let order = http::Request::post("/orders")
///     .header("idempotency-key", "order-7d1f")
///     .body(Bytes::from_static(b"{\"sku\":1}"))?;
/// let created_once = client.send(order).await?;
/// # drop((user, created, created_once)); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct HttpClient {
    pool: Pool<HttpManager>,
}

impl HttpClient {
    /// A client sending its requests on `pool`'s connections.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use steadypool::Pool;
    /// use steadypool::drivers::http::{HttpClient, HttpManager};
    ///
    /// let manager = HttpManager::new("http://127.0.0.1:3000")?;
    /// let client = HttpClient::new(Pool::builder(manager).max_size(8).build()?);
    /// assert_eq!(client.pool().status().max_size, 8);
    /// # Ok(()) }
    /// ```
    pub fn new(pool: Pool<HttpManager>) -> HttpClient {
        HttpClient { pool }
    }

    /// The pool under this client: its status, stats and learned idle limit.
    ///
    /// ```no_run
    /// # fn demo(client: steadypool::drivers::http::HttpClient) {
    /// use steadypool::{Phase, ResetCause};
    /// let stats = client.pool().stats();
    /// println!(
    ///     "lost the keep-alive race {} times",
    ///     stats.resets(ResetCause::PeerClosed, Phase::InUse)
    /// );
    /// # }
    /// ```
    pub fn pool(&self) -> &Pool<HttpManager> {
        &self.pool
    }

    /// Sends `request` and returns its response with the whole body, retrying as
    /// its method (or an `Idempotency-Key` header) allows; see [`idempotency`].
    ///
    /// The request's URI may be a path (`/users/42`) or an absolute URI on this
    /// client's origin; a missing `Host` header is added. Its extensions are not
    /// sent (they are not part of an HTTP/1.1 request).
    ///
    /// # Errors
    /// [`RunError::Operation`] with [`HttpError::Request`] for a request this
    /// client cannot send (not sent), or [`HttpError::BodyTooLarge`];
    /// [`RunError::MaybeExecuted`] when the request may have reached the server and
    /// was not (or no longer) retried; [`RunError::NotExecuted`] when it provably
    /// never did. Any status is a response, except 502 and 503 to an idempotent
    /// request: retried, and [`HttpError::Unavailable`] once the retries ran out (in
    /// [`RunError::MaybeExecuted`] after a 502, whose gateway's upstream may have run
    /// the request; in [`RunError::NotExecuted`] after 503s only).
    pub async fn send<B: Into<Bytes>>(
        &self,
        request: Request<B>,
    ) -> Result<Response<Bytes>, RunError<HttpError>> {
        let kind = idempotency(&request);
        self.send_with(kind, request).await
    }

    /// [`HttpClient::send`] with the idempotency the caller knows: a `POST` the
    /// server deduplicates by other means may be marked
    /// [`Idempotency::Idempotent`], and a `PUT` with side effects
    /// [`Idempotency::NotIdempotent`].
    ///
    /// ```no_run
    /// # async fn demo(client: steadypool::drivers::http::HttpClient) -> Result<(), Box<dyn std::error::Error>> {
    /// use bytes::Bytes;
    /// use steadypool::Idempotency;
    /// let upsert = http::Request::post("/users/42").body(Bytes::from_static(b"{}"))?;
    /// let response = client.send_with(Idempotency::Idempotent, upsert).await?;
    /// # drop(response); Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`HttpClient::send`].
    pub async fn send_with<B: Into<Bytes>>(
        &self,
        kind: Idempotency,
        request: Request<B>,
    ) -> Result<Response<Bytes>, RunError<HttpError>> {
        let request = self.prepare(request)?;
        let retry_unavailable = kind.is_idempotent();
        self.pool
            .run_with(kind, async move |conn| {
                let response = conn.send_head(request.attempt()).await?;
                let response = conn.read_body(response).await?;
                if retry_unavailable && unavailable(response.status()) {
                    return Err(HttpError::Unavailable(Box::new(response)));
                }
                Ok(response)
            })
            .await
    }

    /// Sends `request` as [`HttpClient::send`] does, and returns its response as
    /// soon as its head arrived, with a [`ResponseBody`] read from the connection
    /// as the server sends it: for a body too large to hold in memory, or to act on
    /// its first bytes before the last arrived.
    ///
    /// The body holds the connection until its end: read to the end, the
    /// connection goes back to the pool; dropped before, it is closed and counted
    /// as `cancelled`; failed under it, the body yields the error with its cause
    /// (see [`ResponseBody`]). A retry happens only before the response's head
    /// arrived, by the same rules as [`HttpClient::send`]'s: a 502 or 503 to an
    /// idempotent request has its (small) body read and is retried, so it never
    /// reaches the caller as a stream unless the retries ran out.
    ///
    /// [`HttpClient::send`] stays the way for most calls: it returns once the
    /// connection is back in the pool, a failure while reading the body is
    /// retried when the request is idempotent, and
    /// [`HttpManager::max_response_body`](super::HttpManager::max_response_body)
    /// bounds the memory. A streamed body is not retried once its head arrived,
    /// and no limit applies to it: the caller reads what it needs.
    ///
    /// ```no_run
    /// # async fn demo(client: steadypool::drivers::http::HttpClient) -> Result<(), Box<dyn std::error::Error>> {
    /// use bytes::Bytes;
    /// use tokio::io::AsyncWriteExt;
    ///
    /// let request = http::Request::get("/backups/latest").body(Bytes::new())?;
    /// let response = client.send_streaming(request).await?;
    /// if !response.status().is_success() {
    ///     return Err(format!("backup: {}", response.status()).into());
    /// }
    /// let mut file = tokio::fs::File::create("latest.tar").await?;
    /// let mut body = response.into_body();
    /// while let Some(chunk) = body.chunk().await {
    ///     file.write_all(&chunk?).await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`HttpClient::send`], except [`HttpError::BodyTooLarge`]: only the body
    /// of a 502 or 503 read for a retry is bounded.
    pub async fn send_streaming<B: Into<Bytes>>(
        &self,
        request: Request<B>,
    ) -> Result<Response<ResponseBody>, RunError<HttpError>> {
        let kind = idempotency(&request);
        self.send_streaming_with(kind, request).await
    }

    /// [`HttpClient::send_streaming`] with the idempotency the caller knows, as
    /// [`HttpClient::send_with`].
    ///
    /// ```no_run
    /// # async fn demo(client: steadypool::drivers::http::HttpClient) -> Result<(), Box<dyn std::error::Error>> {
    /// use bytes::Bytes;
    /// use steadypool::Idempotency;
    /// let search = http::Request::post("/search").body(Bytes::from_static(b"{\"q\":\"x\"}"))?;
    /// let response = client.send_streaming_with(Idempotency::Idempotent, search).await?;
    /// # drop(response); Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`HttpClient::send_streaming`].
    pub async fn send_streaming_with<B: Into<Bytes>>(
        &self,
        kind: Idempotency,
        request: Request<B>,
    ) -> Result<Response<ResponseBody>, RunError<HttpError>> {
        let request = self.prepare(request)?;
        let retry_unavailable = kind.is_idempotent();
        let (response, conn) = self
            .pool
            .run_keeping(kind, async move |conn| {
                let response = conn.send_head(request.attempt()).await?;
                if retry_unavailable && unavailable(response.status()) {
                    let response = conn.read_body(response).await?;
                    return Err(HttpError::Unavailable(Box::new(response)));
                }
                Ok(response)
            })
            .await?;
        Ok(response.map(|incoming| ResponseBody::new(incoming, conn)))
    }

    /// `request` as it goes on the wire to this client's origin.
    fn prepare<B: Into<Bytes>>(
        &self,
        request: Request<B>,
    ) -> Result<Prepared, RunError<HttpError>> {
        let (mut parts, body) = request.into_parts();
        self.pool
            .manager()
            .prepare(&mut parts)
            .map_err(RunError::Operation)?;
        Ok(Prepared {
            parts,
            body: body.into(),
        })
    }
}

/// A request ready to be sent, as many times as its retries take.
struct Prepared {
    parts: http::request::Parts,
    body: Bytes,
}

impl Prepared {
    /// The request for one attempt.
    fn attempt(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.parts.method.clone();
        *request.uri_mut() = self.parts.uri.clone();
        *request.version_mut() = self.parts.version;
        *request.headers_mut() = self.parts.headers.clone();
        request
    }
}

/// The answers a load balancer gives when its backend is away for a moment.
fn unavailable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
    )
}

/// Whether `request` may be repeated, by RFC 9110 section 9.2.2: `GET`, `HEAD`,
/// `OPTIONS`, `TRACE`, `PUT` and `DELETE` are idempotent, and so is any request with
/// an `Idempotency-Key` header; every other request is not.
///
/// ```
/// use steadypool::Idempotency;
/// use steadypool::drivers::http::idempotency;
///
/// let get = http::Request::get("/a").body(()).unwrap();
/// assert_eq!(idempotency(&get), Idempotency::Idempotent);
/// let post = http::Request::post("/a").body(()).unwrap();
/// assert_eq!(idempotency(&post), Idempotency::NotIdempotent);
/// let keyed = http::Request::post("/a").header("Idempotency-Key", "k1").body(()).unwrap();
/// assert_eq!(idempotency(&keyed), Idempotency::Idempotent);
/// ```
pub fn idempotency<B>(request: &Request<B>) -> Idempotency {
    let by_method = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if by_method || request.headers().contains_key(&IDEMPOTENCY_KEY) {
        Idempotency::Idempotent
    } else {
        Idempotency::NotIdempotent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: &str, key: bool) -> Idempotency {
        let mut request = Request::builder().method(method);
        if key {
            request = request.header("Idempotency-Key", "k-1");
        }
        idempotency(&request.body(()).unwrap())
    }

    #[test]
    fn methods_are_idempotent_as_rfc_9110_section_9_2_2_says_and_unknown_ones_are_not() {
        for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert_eq!(of(method, false), Idempotency::Idempotent, "{method}");
        }
        // Methods are case-sensitive (RFC 9110 section 9.1): `get` is not GET. A
        // method this crate does not know may do anything, so it is never replayed,
        // even one its own specification calls idempotent (WebDAV's PROPFIND).
        for method in [
            "POST", "PATCH", "CONNECT", "PROPFIND", "LOCK", "PURGE", "X-FLUSH", "get",
        ] {
            assert_eq!(of(method, false), Idempotency::NotIdempotent, "{method}");
            assert_eq!(
                of(method, true),
                Idempotency::Idempotent,
                "{method} with a key"
            );
        }
    }
}
