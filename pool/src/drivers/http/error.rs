//! What can go wrong calling an HTTP server, and what each failure means for the
//! connection and the request.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::cause::{Classify, Disposition, ResetCause, Sent};
use crate::dial::DialError;

/// Why an HTTP request failed. See the [module docs](super#errors-and-retries).
///
/// ```
/// use steadypool::drivers::http::HttpError;
/// use steadypool::{Classify, Disposition};
///
/// let refused = HttpError::Request("HTTP/2 is not supported".into());
/// assert_eq!(refused.classify(), Disposition::Application);
/// assert_eq!(refused.to_string(), "http request not sent: HTTP/2 is not supported");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The TCP connection could not be opened.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The origin given to [`HttpManager::new`](super::connection::HttpManager::new) (or a
    /// health path) cannot be used.
    #[error("http origin {origin:?}: {reason}")]
    Origin {
        /// What was given.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request cannot be sent on this origin's connections (another origin, an
    /// `https://` URI, HTTP/2). It was not sent.
    #[error("http request not sent: {0}")]
    Request(String),
    /// The connection failed under the request: closed, reset, timed out, or the
    /// server's bytes were not HTTP.
    #[error("{}", Transport(self))]
    Connection {
        /// hyper's error.
        #[source]
        source: hyper::Error,
        /// Why the connection broke, as the metrics label it.
        cause: ResetCause,
        /// Whether the request may have reached the server.
        sent: Sent,
        /// Whether the connection had served a response before this request: a
        /// failure on a reused connection before any response byte is the
        /// keep-alive race (the server closed it as the request went out).
        reused: bool,
        /// How long the connection had been idle when the request went out.
        idle: Duration,
    },
    /// The response body was longer than
    /// [`HttpManager::max_response_body`](super::connection::HttpManager::max_response_body); the
    /// rest was not read, and the connection is closed.
    #[error("the response body is longer than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The server (or a load balancer in front of it) answered an idempotent
    /// request with 502 Bad Gateway or 503 Service Unavailable: retried after a
    /// backoff, and this is the last such answer when the retries ran out. A
    /// request that is not idempotent gets such an answer as its response instead.
    #[error("{} from the server", .0.status())]
    Unavailable(Box<Response<Bytes>>),
    /// The TLS handshake with an `https://` origin failed (feature `tls`): the server's
    /// certificate did not verify (another authority, another name, expired), no
    /// common protocol version, or the connection broke during the handshake.
    #[cfg(feature = "tls")]
    #[error("TLS handshake with {origin} failed: {source}")]
    Tls {
        /// The origin, `https://host[:port]`.
        origin: String,
        /// rustls's error (kind `InvalidData`), or the socket's.
        #[source]
        source: std::io::Error,
    },
    /// The socket could not be duplicated for probing (out of descriptors?).
    #[error("could not duplicate the socket for probing: {0}")]
    Socket(#[source] std::io::Error),
}

/// Formats [`HttpError::Connection`]: what broke, and when in the connection's life.
struct Transport<'a>(&'a HttpError);

impl fmt::Display for Transport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let HttpError::Connection {
            source,
            cause,
            sent,
            reused,
            idle,
        } = self.0
        else {
            return Ok(());
        };
        let when = if *reused {
            format!("a connection reused after {idle:?} idle")
        } else {
            "a new connection".to_owned()
        };
        let sent = match sent {
            Sent::No => "the request was not sent",
            Sent::Maybe => "the request may have reached the server",
        };
        write!(f, "{cause} on {when} ({sent}): {source}")
    }
}

impl Classify for HttpError {
    fn classify(&self) -> Disposition {
        match self {
            HttpError::Dial(e) => e.classify(),
            HttpError::Connection { cause, sent, .. } => Disposition::Broken {
                cause: *cause,
                sent: *sent,
            },
            HttpError::Socket(_) => Disposition::Broken {
                cause: ResetCause::Other,
                sent: Sent::No,
            },
            // rustls's refusals (kind `InvalidData`) are `other`; a reset or a close
            // during the handshake is named as any connect failure's.
            #[cfg(feature = "tls")]
            HttpError::Tls { source, .. } => Disposition::Broken {
                cause: ResetCause::of_io(source, crate::cause::Phase::Connect),
                sent: Sent::No,
            },
            HttpError::Unavailable(_) => Disposition::Transient,
            HttpError::Origin { .. } | HttpError::Request(_) | HttpError::BodyTooLarge { .. } => {
                Disposition::Application
            }
        }
    }

    /// A handshake the server's certificate (or the protocol versions on offer)
    /// refused for good; see [`Classify::is_permanent`].
    fn is_permanent(&self) -> bool {
        match self {
            #[cfg(feature = "tls")]
            HttpError::Tls { source, .. } => source.is_permanent(),
            _ => false,
        }
    }

    /// A 503 says the server did not handle the request; a 502 only that the
    /// gateway's upstream failed, which may be after it ran it.
    fn transient_sent(&self) -> Sent {
        match self {
            HttpError::Unavailable(response) if response.status() == StatusCode::BAD_GATEWAY => {
                Sent::Maybe
            }
            _ => Sent::No,
        }
    }
}
