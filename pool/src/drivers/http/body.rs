//! [`ResponseBody`]: a response body read as it arrives, holding its connection
//! until the end, so that no reply is ever read by the wrong request.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::connection::HttpManager;
use super::error::HttpError;
use crate::cause::{Classify, Disposition};
use crate::pool::Connection;

/// The body of a response from [`HttpClient::send_streaming`](super::HttpClient::send_streaming),
/// read from the connection as the server sends it: a [`hyper::body::Body`] of
/// [`Bytes`], or chunk by chunk with [`ResponseBody::chunk`].
///
/// It holds the pool's connection until the body's end (a body held unread keeps
/// its connection checked out, as a held [`Connection`] does):
///
/// * **read to the end**: the connection goes back to the pool the moment its last
///   frame is read (an empty body, as a `HEAD`'s or a 204's, at once);
/// * **dropped before its end**: the connection is closed, not returned with the
///   rest of the body on its way, and counted as an eviction with reason
///   `cancelled` (the same as a [`HttpClient::send`](super::HttpClient::send) future
///   dropped half-way);
/// * **the connection fails under it** (reset, closed, timed out): the body yields
///   [`HttpError::Connection`] with the reset cause and
///   [`Sent::Maybe`](crate::Sent::Maybe) (the request ran), then ends; the
///   connection is closed and counted as a reset with that cause in phase `in_use`.
///   The request is not retried: its response had begun.
///
/// [`HttpManager::max_response_body`] does not apply: the caller decides how much to
/// read, and bounds its memory by reading chunk by chunk. Neither does the pool's
/// retry deadline, which ends with the response's head: to bound the time to read
/// the body, wrap the reading in [`tokio::time::timeout`] (a body cut by it is
/// dropped, so counted as `cancelled`).
///
/// ```no_run
/// # async fn demo(client: steadypool::drivers::http::HttpClient) -> Result<(), Box<dyn std::error::Error>> {
/// use bytes::Bytes;
/// use http_body_util::BodyExt;
///
/// let request = http::Request::get("/export.csv").body(Bytes::new())?;
/// let mut body = client.send_streaming(request).await?.into_body();
/// let mut rows = 0;
/// while let Some(chunk) = body.chunk().await {
///     rows += chunk?.iter().filter(|b| **b == b'\n').count();
/// }
/// // Any hyper body adapter works too:
/// let request = http::Request::get("/small.json").body(Bytes::new())?;
/// let json: Bytes = client.send_streaming(request).await?.into_body().collect().await?.to_bytes();
/// # drop((rows, json)); Ok(()) }
/// ```
#[derive(Debug)]
pub struct ResponseBody {
    /// Dropped before `conn`: hyper's connection task then stops reading the body.
    incoming: Incoming,
    /// The connection, until the body ended (back to the pool) or failed (closed).
    conn: Option<Connection<HttpManager>>,
}

impl ResponseBody {
    /// The body `incoming` of the response whose head `conn` received.
    pub(super) fn new(incoming: Incoming, conn: Connection<HttpManager>) -> ResponseBody {
        let mut body = ResponseBody {
            incoming,
            conn: Some(conn),
        };
        if body.incoming.is_end_stream() {
            body.ended();
        }
        body
    }

    /// The next chunk of the body; `None` at its end (the connection is back in the
    /// pool then).
    ///
    /// ```no_run
    /// # async fn demo(client: steadypool::drivers::http::HttpClient) -> Result<(), Box<dyn std::error::Error>> {
    /// use bytes::Bytes;
    /// let request = http::Request::get("/download").body(Bytes::new())?;
    /// let mut body = client.send_streaming(request).await?.into_body();
    /// let mut size = 0;
    /// while let Some(chunk) = body.chunk().await {
    ///     size += chunk?.len();
    /// }
    /// println!("{size} bytes");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`HttpError::Connection`] when the connection failed under the body; the
    /// next call returns `None`.
    pub async fn chunk(&mut self) -> Option<Result<Bytes, HttpError>> {
        while let Some(frame) = self.frame().await {
            match frame.map(Frame::into_data) {
                Ok(Ok(data)) => return Some(Ok(data)),
                // Trailers: not part of the data.
                Ok(Err(_)) => {}
                Err(err) => return Some(Err(err)),
            }
        }
        None
    }

    /// The body was read to its end: the connection goes back to the pool.
    fn ended(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.body_ended();
            conn.finish_exchange();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        // Ended or failed: the connection is gone, and so is the body.
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(&mut this.incoming).poll_frame(cx)) {
            Some(Ok(frame)) => {
                // The last frame: the connection is free now, whether or not the
                // caller polls once more to see the end.
                if this.incoming.is_end_stream() {
                    this.ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(source)) => {
                let err = conn.body_failed(source);
                if let Disposition::Broken { cause, .. } = err.classify() {
                    conn.mark_broken(cause);
                }
                this.conn = None;
                Poll::Ready(Some(Err(err)))
            }
            None => {
                this.ended();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.conn.is_none() {
            SizeHint::with_exact(0)
        } else {
            self.incoming.size_hint()
        }
    }
}
