//! The [`Manager`] trait: what the pool needs to know about your protocol.

use std::error::Error as StdError;
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
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufStream};
/// use tokio::net::TcpStream;
///
/// struct LineManager(Address);
///
/// impl Manager for LineManager {
///     type Connection = BufStream<TcpStream>;
///     type Error = io::Error;
///
///     async fn connect(&self, dialer: &Dialer) -> io::Result<Self::Connection> {
///         Ok(BufStream::new(dialer.connect(&self.0).await?))
///     }
///
///     fn socket<'a>(&self, conn: &'a Self::Connection) -> Option<SocketRef<'a>> {
///         Some(SocketRef::Tokio(conn.get_ref()))
///     }
///
///     async fn ping(&self, conn: &mut Self::Connection) -> io::Result<()> {
///         conn.write_all(b"PING\n").await?;
///         conn.flush().await?;
///         let mut line = String::new();
///         conn.read_line(&mut line).await?;
///         (line == "PONG\n").then_some(()).ok_or_else(|| io::Error::other(line))
///     }
/// }
/// ```
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
    /// connection is idle (free to probe), or [`SocketRef::Raw`] for a duplicate of a
    /// socket a driver's background task owns. `None` (the default) means the pool
    /// cannot see the socket: dead connections are then found by
    /// [`Manager::broken`], the ping, or the application's first error.
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

    /// Where this manager's connections go (`"db.internal:5432"`), if it can say: the
    /// default pool name when [`PoolBuilder::name`](crate::PoolBuilder::name) was not
    /// set, so that two unnamed pools do not share their metric series. The default
    /// says nothing, and the pool is then named `pool`.
    fn target(&self) -> Option<String> {
        None
    }

    /// Why the connection is known to be unusable, if it is: a cheap local check, no
    /// I/O. Run at checkout, when a connection returns, and by the reaper.
    fn broken(&self, conn: &Self::Connection) -> Option<Broken> {
        let _ = conn;
        None
    }
}

/// Why a manager knows a connection is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The reset cause.
    pub cause: ResetCause,
    /// What the server or the driver said.
    pub detail: Option<String>,
}

impl Broken {
    /// A connection broken by `cause`.
    pub fn new(cause: ResetCause) -> Broken {
        Broken {
            cause,
            detail: None,
        }
    }
}
