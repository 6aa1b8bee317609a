//! A driver's socket, watched on its way into the driver: what ended the session is
//! known the moment the driver's task reads it.
//!
//! tokio-postgres and redis run a background task that owns the socket. When the
//! session ends, that task hands the failed request its error first, and says the
//! client is closed only later, once it has read the end of stream and stopped. A
//! PostgreSQL backend sends its FATAL error and only then exits and closes its socket.
//! An application that drops the connection as soon as it has the error returns it
//! in between: the socket shows nothing yet, the client is not closed yet, and the
//! next checkout would hand out a dead connection.
//!
//! [`Watched`] sits between the driver and its socket and records the first thing
//! that ends the session: an end of stream, an I/O error, or (through a [`Scan`] of
//! the protocol) a message from the server that ends it. The driver's task reads the
//! bytes through it before it parses them, so the connection's [`Fate`] is known before
//! the application sees the error. Reading it costs an atomic load.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cause::{Phase, ResetCause};
use crate::manager::Broken;

/// Why a connection's session ended, as first seen: shared by the connection and
/// the stream its driver reads. Later reasons are consequences of the first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fate(Arc<OnceLock<Broken>>);

impl Fate {
    /// Why the session ended, once it has.
    pub(crate) fn get(&self) -> Option<&Broken> {
        self.0.get()
    }

    /// Records why the session ended, unless an earlier reason is known.
    pub(crate) fn record(&self, broken: Broken) {
        let _ = self.0.set(broken);
    }
}

/// Follows what a server sends, to recognise a message that ends the session.
pub(crate) trait Scan {
    /// Bytes from the server, in order. Returns why the session is over when they
    /// say so.
    fn read(&mut self, bytes: &[u8]) -> Option<Broken>;

    /// Bytes the client wrote, in order.
    fn wrote(&mut self, bytes: &[u8]) {
        let _ = bytes;
    }
}

/// No protocol knowledge: only the transport's end of stream and errors count.
#[cfg(any(feature = "redis", feature = "http", test))]
#[derive(Debug, Default)]
pub(crate) struct Transport;

#[cfg(any(feature = "redis", feature = "http", test))]
impl Scan for Transport {
    fn read(&mut self, _: &[u8]) -> Option<Broken> {
        None
    }
}

/// A stream whose end, errors and (through `P`) session-ending messages are recorded
/// in a [`Fate`]. Reads and writes pass through unchanged.
#[derive(Debug)]
pub(crate) struct Watched<S, P> {
    inner: S,
    scan: P,
    fate: Fate,
    /// Whether the client wrote since the server last sent something: an
    /// `ETIMEDOUT` then means data went unacknowledged (`TCP_USER_TIMEOUT`), while on
    /// a quiet connection only keepalive can have fired it.
    awaiting: bool,
}

impl<S, P> Watched<S, P> {
    pub(crate) fn new(inner: S, scan: P, fate: Fate) -> Self {
        Watched {
            inner,
            scan,
            fate,
            awaiting: false,
        }
    }

    /// The stream and its fate, to watch a stream layered on this one (TLS) instead.
    #[cfg(feature = "postgres")]
    pub(crate) fn into_parts(self) -> (S, Fate) {
        (self.inner, self.fate)
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    fn failed(&self, err: &io::Error) {
        let phase = if self.awaiting {
            Phase::InUse
        } else {
            Phase::Idle
        };
        self.fate
            .record(Broken::new(ResetCause::of_io(err, phase)).with_detail(err.to_string()));
    }

    fn watch<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(err)) = &result {
            self.failed(err);
        }
        result
    }
}

impl<S: AsyncRead + Unpin, P: Scan + Unpin> AsyncRead for Watched<S, P> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if let Err(err) = ready!(Pin::new(&mut this.inner).poll_read(cx, buf)) {
            this.failed(&err);
            return Poll::Ready(Err(err));
        }
        let arrived = &buf.filled()[before..];
        if !arrived.is_empty() {
            this.awaiting = false;
            if let Some(broken) = this.scan.read(arrived) {
                this.fate.record(broken);
            }
        } else if buf.remaining() > 0 {
            this.fate.record(
                Broken::new(ResetCause::PeerClosed)
                    .with_detail("the server closed the connection (end of stream)"),
            );
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin, P: Scan + Unpin> AsyncWrite for Watched<S, P> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = ready!(Pin::new(&mut this.inner).poll_write(cx, buf));
        match &result {
            Ok(written) => {
                let written = &buf[..*written];
                if !written.is_empty() {
                    this.awaiting = true;
                    this.scan.wrote(written);
                }
            }
            Err(err) => this.failed(err),
        }
        Poll::Ready(result)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(result)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn pair() -> (Watched<TcpStream, Transport>, TcpStream, Fate) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let fate = Fate::default();
        (Watched::new(client, Transport, fate.clone()), server, fate)
    }

    #[tokio::test]
    async fn traffic_passes_and_an_end_of_stream_is_peer_closed() {
        let (mut client, mut server, fate) = pair().await;
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        assert_eq!(fate.get(), None);

        drop(server);
        assert_eq!(client.read(&mut got).await.unwrap(), 0);
        assert_eq!(fate.get().map(|b| b.cause), Some(ResetCause::PeerClosed));
    }

    #[tokio::test]
    async fn a_reset_is_peer_reset_with_the_error_text() {
        let (mut client, server, fate) = pair().await;
        server.set_zero_linger().unwrap();
        drop(server);
        let mut got = [0u8; 4];
        let err = client.read(&mut got).await.unwrap_err();
        let broken = fate.get().unwrap();
        assert_eq!(broken.cause, ResetCause::PeerReset);
        assert_eq!(broken.detail.as_deref(), Some(err.to_string().as_str()));
    }
}
