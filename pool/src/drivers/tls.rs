//! TLS with rustls (feature `tls`): a TLS stream the probe can see through, a TLS
//! variant of the [`tcp`](super::tcp) manager, and, with `postgres`, a TLS connector
//! for the PostgreSQL driver. The Redis driver takes the same [`ClientConfig`]
//! (`RedisManager::with_tls`).
//!
//! The cryptography is rustls 0.23 with its `ring` provider: no OpenSSL, no aws-lc (no
//! CMake or Go at build time). Build the [`ClientConfig`] with
//! `ClientConfig::builder()`, which picks `ring` as the only provider compiled in; when
//! another crate of your build enables rustls's aws-lc provider too, there is no
//! default any more: name one with `ClientConfig::builder_with_provider`
//! (`rustls::crypto::ring::default_provider()`).
//! Certificates are verified as the config says (roots, host name): what libpq calls
//! `sslmode=verify-full`.
//!
//! # Why the probe needs to know about TLS
//!
//! A TLS 1.3 server sends session tickets right after the handshake, may send a
//! KeyUpdate at any time, and sends a close_notify alert before it closes. All of them
//! arrive while the connection sits idle in the pool, and to a probe that only peeks
//! at the socket they look like application bytes: every new connection returned
//! unused would be discarded as `unexpected_data`, and a server's idle timeout would
//! teach the pool nothing. [`TlsStream`] shows the pool its socket as
//! [`SocketRef::Layered`]: free to probe when nothing arrived, and when something did,
//! rustls reads it without blocking and says what it was (see
//! [`Layer`]).
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use steadypool::drivers::tls::{rustls, TlsManager};
//! use steadypool::Pool;
//! use tokio::io::AsyncWriteExt;
//!
//! let mut roots = rustls::RootCertStore::empty();
//! # let ca_der: rustls::pki_types::CertificateDer<'static> = Vec::new().into();
//! roots.add(ca_der)?;
//! let config = rustls::ClientConfig::builder()
//!     .with_root_certificates(roots)
//!     .with_no_client_auth();
//! let manager = TlsManager::new("db.internal:7443", Arc::new(config), "db.internal")?;
//! let pool = Pool::builder(manager).build()?;
//! let mut stream = pool.get().await?;
//! stream.write_all(b"PING\n").await?;
//! # Ok(()) }
//! ```

use std::future::{Future, poll_fn};
use std::io;
use std::net::Shutdown;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::task::{Context, Poll, Waker, ready};

pub use rustls;
use rustls::ClientConfig;
use rustls::pki_types::{InvalidDnsNameError, ServerName};
use socket2::SockRef;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::dial::{Address, Dialer};
use crate::manager::Manager;
use crate::probe::{Layer, Liveness, SocketRef};

/// Why a TLS setting was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The server name is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {name:?}")]
    ServerName {
        /// The name given.
        name: String,
        /// What rustls said.
        #[source]
        source: InvalidDnsNameError,
    },
}

/// Parses a server name for certificate verification and SNI.
pub(crate) fn parse_server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|source| TlsError::ServerName {
        name: name.to_owned(),
        source,
    })
}

/// A TLS client connection over a pooled TCP socket, which the pool probes through
/// its TLS layer (see the [module docs](self)).
///
/// Read and write it as any tokio stream. It is [`TlsManager`]'s connection; a custom
/// [`Manager`] speaking its own protocol over TLS opens one with
/// [`TlsStream::connect`] and returns [`TlsStream::socket_ref`] from
/// [`Manager::socket`].
///
/// ```
/// # async fn demo(tls: steadypool::drivers::tls::TlsStream) {
/// use steadypool::{Liveness, probe};
/// assert!(matches!(probe(tls.socket_ref()), Liveness::Alive));
/// # }
/// ```
#[derive(Debug)]
pub struct TlsStream {
    /// The socket, shared with the TLS stream's reader so the probe can read tokio's
    /// readiness record without the lock.
    tcp: Arc<TcpStream>,
    /// Locked only by the probe's drain (`try_lock`); the application's reads and
    /// writes go through `get_mut`, which costs nothing.
    tls: Mutex<tokio_rustls::client::TlsStream<SharedTcp>>,
    /// Whether rustls holds decrypted bytes the application has not read, as of its
    /// last read: they are out of the kernel's sight, like a `BufReader`'s.
    plaintext_left: bool,
}

impl TlsStream {
    /// Runs the TLS handshake on `stream` for `server_name`.
    ///
    /// # Errors
    /// The handshake's: an I/O error, or `InvalidData` carrying rustls's error (a
    /// certificate that does not verify, no common protocol version, ...).
    pub async fn connect(
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
        stream: TcpStream,
    ) -> io::Result<TlsStream> {
        let tcp = Arc::new(stream);
        let tls = TlsConnector::from(config)
            .connect(server_name, SharedTcp(Arc::clone(&tcp)))
            .await?;
        Ok(TlsStream {
            tcp,
            tls: Mutex::new(tls),
            plaintext_left: false,
        })
    }

    /// The connection as the probe takes it: [`SocketRef::Layered`], or, when the
    /// application left decrypted bytes unread (the rest of a reply), a
    /// [`SocketRef::Buffered`] that shows them, so that the next request does not
    /// read the previous one's leftovers.
    pub fn socket_ref(&self) -> SocketRef<'_> {
        if self.plaintext_left {
            return SocketRef::Buffered {
                stream: &self.tcp,
                buffered: 1,
            };
        }
        SocketRef::Layered {
            stream: &self.tcp,
            layer: self,
        }
    }

    /// The TCP socket under the TLS layer.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The TLS session: negotiated protocol version, ALPN, the server's certificates.
    pub fn session(&mut self) -> &rustls::ClientConnection {
        self.stream().get_ref().1
    }

    fn stream(&mut self) -> &mut tokio_rustls::client::TlsStream<SharedTcp> {
        // A panic while the probe held the lock leaves nothing half-done in the
        // stream: the drain only reads what rustls would have read anyway.
        self.tls.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Layer for TlsStream {
    fn drain(&self) -> Liveness {
        let mut tls = match self.tls.try_lock() {
            Ok(tls) => tls,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return Liveness::Alive,
        };
        // One poll with a no-op waker: rustls reads records until the socket has
        // nothing more (`Pending`), plaintext is there, or the stream ended. Outside
        // the task's cooperative budget: with the budget spent, tokio would answer
        // `Pending` before reading, passing a closed connection as alive.
        let read = tokio::task::unconstrained(poll_fn(|cx| {
            Pin::new(&mut *tls)
                .poll_fill_buf(cx)
                .map_ok(|plaintext| plaintext.len())
        }));
        match pin!(read).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Pending => Liveness::Alive,
            Poll::Ready(Ok(0)) => Liveness::PeerClosed,
            Poll::Ready(Ok(_)) => Liveness::UnexpectedData,
            Poll::Ready(Err(err)) => from_tls_error(err),
        }
    }
}

/// A TLS read's error as the probe reports it.
fn from_tls_error(err: io::Error) -> Liveness {
    let alert = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::AlertReceived(alert) => Some(*alert),
            _ => None,
        });
    match alert {
        // The peer aborted the session: as good as a reset, and the alert says why.
        Some(alert) => Liveness::Error(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("TLS alert from the peer: {alert:?}"),
        )),
        // The end of the stream without a close_notify: the peer closed all the same.
        None if err.kind() == io::ErrorKind::UnexpectedEof => Liveness::PeerClosed,
        None if err.kind() == io::ErrorKind::ConnectionReset => Liveness::PeerReset,
        None => Liveness::Error(err),
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = self.stream();
        let polled = Pin::new(&mut *stream).poll_read(cx, buf);
        // rustls decrypts whole records and tokio-rustls reads until the socket is
        // empty: what the caller did not take stays in rustls, and the socket shows
        // nothing more.
        let left = matches!(
            stream.get_mut().1.reader().into_first_chunk(),
            Ok(chunk) if !chunk.is_empty()
        );
        self.plaintext_left = left;
        polled
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.stream()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_shutdown(cx)
    }
}

/// The TCP stream as the TLS layer reads it: shared with [`TlsStream::tcp`], so both
/// see one readiness record. tokio implements `AsyncRead` only for an owned stream;
/// this does what its implementation does, through `&TcpStream`.
#[derive(Debug)]
struct SharedTcp(Arc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // `try_read` clears the readiness on `WouldBlock`, so the next poll waits.
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(SockRef::from(&*self.0).shutdown(Shutdown::Write))
    }
}

/// Opens TLS connections to one address: the [`tcp`](super::tcp) driver with rustls on
/// top. The pool probes each idle connection through its TLS layer (see the
/// [module docs](self)); there is no ping (the protocol is yours).
///
/// ```
/// use std::sync::Arc;
/// use steadypool::drivers::tls::{rustls, TlsManager};
///
/// let config = rustls::ClientConfig::builder()
///     .with_root_certificates(rustls::RootCertStore::empty())
///     .with_no_client_auth();
/// let manager = TlsManager::new("127.0.0.1:7443", Arc::new(config), "localhost").unwrap();
/// assert!(TlsManager::new("127.0.0.1:7443", Arc::new(
///     rustls::ClientConfig::builder()
///         .with_root_certificates(rustls::RootCertStore::empty())
///         .with_no_client_auth(),
/// ), "not a name!").is_err());
/// # drop(manager);
/// ```
#[derive(Clone)]
pub struct TlsManager {
    addr: Address,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsManager")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsManager {
    /// A manager for `addr`, verifying the server's certificate for `server_name` (a
    /// DNS name or an IP address) as `config` says.
    ///
    /// # Errors
    /// [`TlsError::ServerName`] for a name that is neither.
    pub fn new(
        addr: impl Into<Address>,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> Result<Self, TlsError> {
        Ok(TlsManager {
            addr: addr.into(),
            config,
            server_name: parse_server_name(server_name)?,
        })
    }

    /// The address connections go to.
    pub fn address(&self) -> &Address {
        &self.addr
    }
}

impl Manager for TlsManager {
    type Connection = TlsStream;
    type Error = io::Error;

    async fn connect(&self, dialer: &Dialer) -> io::Result<TlsStream> {
        let stream = dialer.connect(&self.addr).await?;
        TlsStream::connect(Arc::clone(&self.config), self.server_name.clone(), stream).await
    }

    fn socket<'a>(&self, conn: &'a TlsStream) -> Option<SocketRef<'a>> {
        Some(conn.socket_ref())
    }

    fn target(&self) -> Option<String> {
        Some(self.addr.to_string())
    }
}

#[cfg(feature = "postgres")]
pub use self::postgres::{PgTls, PgTlsConnect, PgTlsStream};

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

    /// tokio-postgres's TLS connector over rustls, for
    /// [`PgManager::with_tls`](crate::drivers::postgres::PgManager::with_tls)
    /// (features `tls` and `postgres`).
    ///
    /// With `sslmode=require` in the connection string the session is TLS or
    /// nothing; the server's certificate is verified for the host name as `config`
    /// says, which is libpq's `verify-full`. The TLS session runs inside
    /// tokio-postgres's background task, which reads session tickets and KeyUpdates
    /// as they come; a close_notify ends that task, which the pool sees as
    /// `peer_closed`.
    ///
    /// SCRAM channel binding (`SCRAM-SHA-256-PLUS`) is not offered: the server falls
    /// back to `SCRAM-SHA-256`, unless it was told to require channel binding.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use steadypool::drivers::postgres::PgManager;
    /// use steadypool::drivers::tls::{rustls, PgTls};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = rustls::ClientConfig::builder()
    ///     .with_root_certificates(rustls::RootCertStore::empty())
    ///     .with_no_client_auth();
    /// let manager = PgManager::with_tls(
    ///     "host=db.internal user=app sslmode=require".parse()?,
    ///     PgTls::new(Arc::new(config)),
    /// )?;
    /// # drop(manager); Ok(()) }
    /// ```
    #[derive(Clone)]
    pub struct PgTls(TlsConnector);

    impl std::fmt::Debug for PgTls {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PgTls").finish_non_exhaustive()
        }
    }

    impl PgTls {
        /// A connector verifying servers as `config` says.
        pub fn new(config: Arc<ClientConfig>) -> Self {
            PgTls(TlsConnector::from(config))
        }
    }

    impl MakeTlsConnect<TcpStream> for PgTls {
        type Stream = PgTlsStream;
        type TlsConnect = PgTlsConnect;
        type Error = TlsError;

        fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, TlsError> {
            Ok(PgTlsConnect {
                connector: self.0.clone(),
                server_name: parse_server_name(domain)?,
            })
        }
    }

    /// One connection's TLS handshake, made by [`PgTls`].
    pub struct PgTlsConnect {
        connector: TlsConnector,
        server_name: ServerName<'static>,
    }

    impl std::fmt::Debug for PgTlsConnect {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PgTlsConnect")
                .field("server_name", &self.server_name)
                .finish_non_exhaustive()
        }
    }

    impl TlsConnect<TcpStream> for PgTlsConnect {
        type Stream = PgTlsStream;
        type Error = io::Error;
        type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream>> + Send>>;

        fn connect(self, stream: TcpStream) -> Self::Future {
            Box::pin(async move {
                let tls = self.connector.connect(self.server_name, stream).await?;
                Ok(PgTlsStream(tls))
            })
        }
    }

    /// A TLS session with a PostgreSQL server, as [`PgTls`] opens it.
    #[derive(Debug)]
    pub struct PgTlsStream(tokio_rustls::client::TlsStream<TcpStream>);

    impl tokio_postgres::tls::TlsStream for PgTlsStream {
        fn channel_binding(&self) -> ChannelBinding {
            ChannelBinding::none()
        }
    }

    impl AsyncRead for PgTlsStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for PgTlsStream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
}
