//! The [`Manager`] trait: what the pool needs to know about your protocol.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;

use crate::cause::{Classify, ResetCause};
use crate::dial::{DialError, Dialer};
use crate::probe::SocketRef;

/// Opens, probes and pings connections of one protocol.
///
/// A manager opens a connection through the pool's [`Dialer`] (so the pool's socket
/// options are always applied), shows the pool the connection's socket (so it can be
/// probed for free), and may offer a round-trip [`Manager::ping`]. Everything but
/// `connect` has a default.
///
/// A complete manager for a line-based protocol:
///
/// ```
/// use std::io;
/// use steadypool::{Address, Dialer, Manager, SocketRef};
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
/// use tokio::net::TcpStream;
///
/// struct LineManager(Address);
///
/// impl Manager for LineManager {
///     type Connection = BufReader<TcpStream>;
///     type Error = io::Error;
///
///     async fn connect(&self, dialer: &Dialer) -> io::Result<Self::Connection> {
///         Ok(BufReader::new(dialer.connect(&self.0).await?))
///     }
///
///     fn socket<'a>(&self, conn: &'a Self::Connection) -> Option<SocketRef<'a>> {
///         // The socket and what its reader holds: both can hold stale bytes.
///         Some(SocketRef::from(conn))
///     }
///
///     async fn ping(&self, conn: &mut Self::Connection) -> io::Result<()> {
///         conn.write_all(b"PING\n").await?;
///         let mut line = String::new();
///         conn.read_line(&mut line).await?;
///         (line == "PONG\n").then_some(()).ok_or_else(|| io::Error::other(line))
///     }
/// }
/// ```
///
/// Read through a [`BufReader`](tokio::io::BufReader) and show it with
/// `SocketRef::from(conn)`: bytes the buffer took off the socket are out of the
/// kernel's sight, and a connection holding a reply nobody read would answer the next
/// request with it. The pool sees the buffer's length at no cost and discards such a
/// connection as `unexpected_data`. tokio's `BufStream` does not show its buffer:
/// write each request with one `write_all` instead of buffering writes.
pub trait Manager: Send + Sync + 'static {
    /// The connection handed to the application.
    type Connection: Send + 'static;

    /// The error of connecting and of the application's operations.
    ///
    /// [`Classify`] tells the pool whether a failed operation broke the connection and
    /// whether the request may have reached the server. `From<DialError>` lets
    /// `connect` use `?` on the dialer.
    type Error: Classify + StdError + From<DialError> + Send + Sync + 'static;

    /// Opens a new connection. Open the TCP socket with `dialer` so the pool's socket
    /// options (keepalive, user timeout, nodelay) and connect timeout apply, then do
    /// the protocol's handshake on it (TLS, authentication, ...).
    ///
    /// The whole call is bounded by the pool's `connect_timeout`.
    fn connect(
        &self,
        dialer: &Dialer,
    ) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;

    /// The connection's socket, for the checkout probe and the reaper.
    ///
    /// Return [`SocketRef::Tokio`] for a stream nobody else reads while the
    /// connection is idle (free to probe), [`SocketRef::Buffered`] (`SocketRef::from`
    /// a `BufReader<TcpStream>`) for one read through a buffer, `SocketRef::Unix` for a
    /// Unix-domain stream, [`SocketRef::Layered`] for a stream under a protocol layer
    /// that sends records of its own while idle (TLS: session tickets, KeyUpdate,
    /// close_notify; the layer drains them, see [`Layer`](crate::probe::Layer)), or
    /// [`SocketRef::Raw`] for a duplicate of a socket a driver's background task owns.
    /// A TLS connection must not show the bare TCP stream under it: every ticket would
    /// then read as `unexpected_data`. The `tls` feature's `TlsStream::socket_ref`
    /// shows it right. `None` (the
    /// default) means the pool cannot see the socket: dead connections are then found
    /// by [`Manager::broken`], the ping, or the application's first error.
    fn socket<'a>(&self, conn: &'a Self::Connection) -> Option<SocketRef<'a>> {
        let _ = conn;
        None
    }

    /// A round trip proving the server answers, run at checkout when the connection
    /// sat idle longer than `check_after`, bounded by `ping_timeout`. The default does
    /// nothing.
    fn ping(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = conn;
        async { Ok(()) }
    }

    /// Runs once when a connection leaves the pool for good, just before it is
    /// closed or handed to the application by
    /// [`Connection::detach`](crate::Connection::detach): to release what the manager
    /// keeps per connection (a registry of statement caches, for one). Not run for a
    /// connection returned after its pool was dropped. The default does nothing.
    fn detach(&self, conn: &mut Self::Connection) {
        let _ = conn;
    }

    /// Where this manager's connections go (`"db.internal:5432"`), if it can say: the
    /// default pool name when [`PoolBuilder::name`](crate::PoolBuilder::name) was not
    /// set, so that two unnamed pools do not share their metric series. The default
    /// says nothing, and the pool is then named `pool`.
    fn target(&self) -> Option<String> {
        None
    }

    /// Why the connection is known to be unusable, if it is: a cheap local check, no
    /// I/O.
    ///
    /// The pool asks before handing a connection out, when it comes back, and in
    /// the reaper's pass over idle connections (which sees them through a shared
    /// reference, hence `&`). Answer from what the
    /// connection already knows: a driver's `is_closed()`, or an error it saw (a
    /// server's goodbye, an end of stream, a reset). Say why: the [`Broken::cause`]
    /// labels the reset in the metrics, and the [`Broken::detail`] (the server's
    /// message) goes into the log. The default says the connection is fine.
    ///
    /// Use it for what the connection learns by itself. When the application sees
    /// the failure in its own code, [`Connection::mark_broken`](crate::Connection::mark_broken)
    /// says so at once.
    fn broken(&self, conn: &Self::Connection) -> Option<Broken> {
        let _ = conn;
        None
    }
}

/// Why a connection is unusable, as [`Manager::broken`] reports it: the cause that
/// labels the reset, and what the server or the driver said, when something did.
///
/// ```
/// use steadypool::{Broken, ResetCause};
///
/// let broken = Broken::new(ResetCause::PeerClosed)
///     .with_detail("57P01: terminating connection due to administrator command");
/// assert_eq!(broken.cause, ResetCause::PeerClosed);
/// assert_eq!(
///     broken.to_string(),
///     "peer_closed: 57P01: terminating connection due to administrator command"
/// );
/// assert_eq!(Broken::new(ResetCause::PeerReset).to_string(), "peer_reset");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Broken {
    /// Why, as the metrics label it.
    pub cause: ResetCause,
    /// What was said: a server's error message, the driver's I/O error.
    pub detail: Option<String>,
}

impl Broken {
    /// Broken for `cause`, with nothing more to say.
    pub fn new(cause: ResetCause) -> Broken {
        Broken {
            cause,
            detail: None,
        }
    }

    /// The same, with what the server or the driver said.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Broken {
        self.detail = Some(detail.into());
        self
    }
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{}: {detail}", self.cause),
            None => f.write_str(self.cause.as_str()),
        }
    }
}
