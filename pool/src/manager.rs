//! The [`Manager`] trait: what the pool needs to know about your protocol.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::cause::{Classify, Eviction, ResetCause};
use crate::dial::Dialer;
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
    /// whether the request may have reached the server. The pool never makes one of
    /// these itself: a manager whose `connect` dials with the [`Dialer`] converts the
    /// [`DialError`](crate::DialError) (give your error a `From<DialError>` to use `?`; [`std::io::Error`]
    /// has one), and a manager that opens its sockets another way needs none.
    type Error: Classify + StdError + Send + Sync + 'static;

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
    ///
    /// When [`socket`](Manager::socket) is a [`SocketRef::Raw`] duplicate of a socket
    /// a driver's task reads, and the probe finds it closed or reset, the pool asks
    /// here first and counts the reason given, unless it is a planned close: the
    /// task saw the session end before the probe did (a server's goodbye, then the
    /// reset that answered a late write).
    ///
    /// A connection that is fine but due to close (it sat idle nearly as long as the
    /// server said it keeps idle connections) is reported with
    /// [`Broken::server_limit`]: the pool closes it as a planned eviction
    /// (`server_limit`), not as a reset.
    fn broken(&self, conn: &Self::Connection) -> Option<Broken> {
        let _ = conn;
        None
    }

    /// How long the server said it keeps this connection open while idle, if it said
    /// so: HTTP's `Keep-Alive: timeout=N`, a database's announced session idle
    /// timeout. The default says nothing.
    ///
    /// The pool reads it when the connection comes back healthy (one call and one
    /// atomic load per return; none for a manager that keeps the default) and
    /// publishes the latest value: the gauge
    /// `steadypool_announced_idle_timeout_seconds`,
    /// [`Stats::announced_idle_timeout`](crate::Stats::announced_idle_timeout), and an
    /// `info` event with a hint when it is first announced or changes. It is a
    /// promise, not a measurement: it teaches the [idle-limit
    /// learner](crate::IdleLimit) no bound. The manager keeps it by closing each
    /// connection before it, through [`Broken::server_limit`].
    ///
    /// ```
    /// use std::io;
    /// use std::time::Duration;
    /// use steadypool::{Address, Broken, Dialer, Manager};
    /// use tokio::net::TcpStream;
    ///
    /// /// A session whose server said, in its greeting, how long it keeps idle ones.
    /// struct Session {
    ///     stream: TcpStream,
    ///     idle_timeout: Option<Duration>,
    ///     idle_since: std::time::Instant,
    /// }
    ///
    /// struct SessionManager(Address);
    ///
    /// impl Manager for SessionManager {
    ///     type Connection = Session;
    ///     type Error = io::Error;
    ///
    ///     async fn connect(&self, dialer: &Dialer) -> io::Result<Session> {
    ///         let stream = dialer.connect(&self.0).await?;
    ///         // A real driver reads the server's greeting here.
    ///         let idle_timeout = Some(Duration::from_secs(30));
    ///         Ok(Session { stream, idle_timeout, idle_since: std::time::Instant::now() })
    ///     }
    ///
    ///     fn announced_idle_limit(&self, conn: &Session) -> Option<Duration> {
    ///         conn.idle_timeout
    ///     }
    ///
    ///     fn broken(&self, conn: &Session) -> Option<Broken> {
    ///         let limit = conn.idle_timeout?;
    ///         (conn.idle_since.elapsed() + Duration::from_secs(1) >= limit)
    ///             .then(|| Broken::server_limit("idle close to the server's 30 s"))
    ///     }
    /// }
    /// ```
    fn announced_idle_limit(&self, conn: &Self::Connection) -> Option<Duration> {
        let _ = conn;
        None
    }
}

/// Why a connection must not serve again, as [`Manager::broken`] reports it: it
/// broke (the cause that labels the reset), or it is due for a planned close
/// ([`Broken::server_limit`]); with what the server or the driver said, when
/// something did.
///
/// ```
/// use steadypool::{Broken, ResetCause};
///
/// let broken = Broken::new(ResetCause::PeerClosed)
///     .with_detail("57P01: terminating connection due to administrator command");
/// assert_eq!(broken.cause, ResetCause::PeerClosed);
/// assert!(!broken.planned);
/// assert_eq!(
///     broken.to_string(),
///     "peer_closed: 57P01: terminating connection due to administrator command"
/// );
/// assert_eq!(Broken::new(ResetCause::PeerReset).to_string(), "peer_reset");
///
/// // Nothing broke: closed first, before the server's announced limit.
/// let due = Broken::server_limit("idle 4 s of the server's Keep-Alive: timeout=5");
/// assert!(due.planned);
/// assert_eq!(
///     due.to_string(),
///     "server_limit: idle 4 s of the server's Keep-Alive: timeout=5"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Broken {
    /// Why, as the metrics label it. For a planned close, the close it forestalls
    /// (`peer_closed`); it is not counted.
    pub cause: ResetCause,
    /// What was said: a server's error message, the driver's I/O error.
    pub detail: Option<String>,
    /// Nothing broke: the connection is closed on purpose before a limit the server
    /// announced ([`Broken::server_limit`]). Counted as the eviction `server_limit`,
    /// never as a reset, and taken by the idle-limit learner as no evidence: had it
    /// been counted as a reset, every connection the pool closed in time would read
    /// as trouble, and teach the learner a limit the server never enforced on it.
    pub planned: bool,
}

impl Broken {
    /// Broken for `cause`, with nothing more to say.
    pub fn new(cause: ResetCause) -> Broken {
        Broken {
            cause,
            detail: None,
            planned: false,
        }
    }

    /// Not broken but due to close: the connection sat idle close to the limit the
    /// server announced for it (see [`Manager::announced_idle_limit`]), or served as
    /// many requests as the server allows. The pool closes it before the server does
    /// and counts it as the eviction [`Eviction::ServerLimit`](crate::Eviction::ServerLimit);
    /// `detail` (which limit, how close) goes into its `debug` event.
    ///
    /// ```
    /// use steadypool::Broken;
    ///
    /// let due = Broken::server_limit("closed before the server's Keep-Alive: timeout=5 would");
    /// assert!(due.planned);
    /// assert_eq!(due.detail.as_deref(), Some("closed before the server's Keep-Alive: timeout=5 would"));
    /// ```
    pub fn server_limit(detail: impl Into<String>) -> Broken {
        Broken {
            cause: ResetCause::PeerClosed,
            detail: Some(detail.into()),
            planned: true,
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
        let what = if self.planned {
            Eviction::ServerLimit.as_str()
        } else {
            self.cause.as_str()
        };
        match &self.detail {
            Some(detail) => write!(f, "{what}: {detail}"),
            None => f.write_str(what),
        }
    }
}
