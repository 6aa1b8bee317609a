//! Opening TCP connections with the socket options that find dead peers in seconds.
//!
//! Every socket the pool opens goes through a [`Dialer`], which sets, before the
//! connect:
//!
//! * **TCP keepalive** (`SO_KEEPALIVE`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`):
//!   after `idle` without traffic the kernel sends a probe every `interval`, and
//!   declares the peer dead after `count` unanswered ones. The kernel's defaults
//!   (7200 s / 75 s / 9) take over two hours; steadypool's take 10 + 3 x 3 = 19 s.
//!   Keepalive traffic also keeps some NAT and firewall entries from expiring.
//! * **`TCP_USER_TIMEOUT`** (Linux): how long written data may stay unacknowledged
//!   before the connection is dropped with `ETIMEDOUT`. Without it a request sent into
//!   a black hole waits for the kernel's retransmission limit (about 15 minutes). When
//!   set, Linux also uses it in place of the keepalive count, so steadypool keeps the
//!   two consistent: by default it is `idle + interval x count`.
//! * **`TCP_NODELAY`**: requests go out at once instead of waiting for Nagle's
//!   algorithm to batch them.
//!
//! It resolves the address, tries each resolved address in turn, and gives up after
//! `connect_timeout` in total: a SYN into a black hole otherwise waits about 127 s.
//!
//! ## Unix-domain sockets
//!
//! [`Dialer::connect_unix`] opens a Unix-domain stream socket within the same
//! `connect_timeout`. None of the TCP options apply there, and none is needed: both
//! ends are on one kernel, so there is no middlebox to drop an idle flow and no
//! network to black-hole a request. When the server process exits, the kernel closes
//! its end at once and the probe sees it (end of stream, or `ECONNRESET` when it left
//! data unread). A server that hangs without exiting is found by the checkout ping.
//! A socket file that is missing (`ENOENT`, the server is down or was never
//! started) counts as `refused`, like a socket file nobody listens on
//! (`ECONNREFUSED`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), steadypool::DialError> {
//! use std::time::Duration;
//! use steadypool::{Dialer, Keepalive};
//!
//! let dialer = Dialer::new()
//!     .connect_timeout(Duration::from_secs(2))
//!     .keepalive(Some(Keepalive::new(
//!         Duration::from_secs(5),
//!         Duration::from_secs(1),
//!         3,
//!     )));
//! let stream = dialer.connect(&"localhost:6379".into()).await?;
//! # drop(stream); Ok(()) }
//! ```

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpSocket, TcpStream};

use crate::cause::{Classify, Disposition, ResetCause, Sent};

/// Where to connect: a socket address, or a `host:port` resolved on every connect
/// (so a DNS change reaches new connections).
///
/// ```
/// use steadypool::Address;
/// let a: Address = "db.internal:5432".into();
/// let b: Address = "127.0.0.1:6379".parse::<std::net::SocketAddr>().unwrap().into();
/// assert_eq!(a.to_string(), "db.internal:5432");
/// assert_eq!(b.to_string(), "127.0.0.1:6379");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A resolved address.
    Socket(SocketAddr),
    /// A `host:port` string, resolved at connect time.
    Host(String),
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Self {
        Address::Socket(addr)
    }
}

impl From<&str> for Address {
    fn from(s: &str) -> Self {
        match s.parse() {
            Ok(addr) => Address::Socket(addr),
            Err(_) => Address::Host(s.to_owned()),
        }
    }
}

impl From<String> for Address {
    fn from(s: String) -> Self {
        Address::from(s.as_str())
    }
}

impl From<(&str, u16)> for Address {
    fn from((host, port): (&str, u16)) -> Self {
        Address::from(format!("{host}:{port}"))
    }
}

impl FromStr for Address {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Address::from(s))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Socket(addr) => addr.fmt(f),
            Address::Host(host) => f.write_str(host),
        }
    }
}

/// Keepalive probe timing: start probing after `idle`, probe every `interval`, give up
/// after `count` unanswered probes.
///
/// ```
/// use std::time::Duration;
/// use steadypool::Keepalive;
/// let ka = Keepalive::new(Duration::from_secs(10), Duration::from_secs(3), 3);
/// assert_eq!(ka.detection_time(), Duration::from_secs(19));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe (`TCP_KEEPIDLE`).
    pub idle: Duration,
    /// Time between probes (`TCP_KEEPINTVL`).
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    pub count: u32,
}

impl Keepalive {
    /// Keepalive with the given timing.
    pub const fn new(idle: Duration, interval: Duration, count: u32) -> Self {
        Keepalive {
            idle,
            interval,
            count,
        }
    }

    /// How long after the last traffic a dead peer is detected at the latest.
    pub fn detection_time(&self) -> Duration {
        self.idle + self.interval * self.count
    }
}

impl Default for Keepalive {
    /// 10 s idle, 3 s interval, 3 probes: a dead peer is found 19 s after the last
    /// traffic, instead of the kernel's 2 h 11 min.
    fn default() -> Self {
        Keepalive::new(Duration::from_secs(10), Duration::from_secs(3), 3)
    }
}

/// Opens TCP connections with the pool's socket options. Managers receive one in
/// [`crate::Manager::connect`]; it is cheap to clone.
#[derive(Debug, Clone)]
pub struct Dialer {
    connect_timeout: Duration,
    keepalive: Option<Keepalive>,
    user_timeout: Option<Duration>,
    nodelay: bool,
}

impl Default for Dialer {
    fn default() -> Self {
        Dialer::new()
    }
}

impl Dialer {
    /// A dialer with steadypool's defaults: 5 s connect timeout, [`Keepalive::default`],
    /// a user timeout equal to the keepalive detection time, `TCP_NODELAY` on.
    pub fn new() -> Self {
        Dialer {
            connect_timeout: Duration::from_secs(5),
            keepalive: Some(Keepalive::default()),
            user_timeout: Some(Keepalive::default().detection_time()),
            nodelay: true,
        }
    }

    /// Total time allowed to resolve and connect.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Keepalive timing, or `None` to leave keepalive off.
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// `TCP_USER_TIMEOUT`, or `None` to leave the kernel's default.
    pub fn user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.user_timeout = timeout;
        self
    }

    /// `TCP_NODELAY`.
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// The configured connect timeout.
    pub fn timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Resolves `addr` and connects to the first address that accepts, with every
    /// socket option set, all within the connect timeout.
    ///
    /// # Errors
    /// [`DialError`] naming the address and the cause: it did not resolve, every
    /// address refused, the timeout passed, or a socket option was rejected.
    pub async fn connect(&self, addr: &Address) -> Result<TcpStream, DialError> {
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        match tokio::time::timeout_at(deadline, self.connect_any(addr)).await {
            Ok(result) => result,
            Err(_) => Err(DialError::Timeout {
                addr: addr.clone(),
                after: self.connect_timeout,
            }),
        }
    }

    /// Connects to the Unix-domain stream socket at `path`, within the connect timeout.
    /// No socket option is set: none of the TCP options apply, and none is needed (both
    /// ends are on one kernel: no middlebox drops an idle flow, and a server that exits
    /// closes its end at once, which the probe sees).
    ///
    /// # Errors
    /// [`DialError::Unix`] naming the path and the cause: the file is missing
    /// (`ENOENT`), nobody listens on it (`ECONNREFUSED`), access is denied, or the
    /// timeout passed (`TimedOut`).
    #[cfg(unix)]
    pub async fn connect_unix(
        &self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<tokio::net::UnixStream, DialError> {
        let path = path.as_ref();
        let failed = |source| DialError::Unix {
            path: path.to_owned(),
            source,
        };
        match tokio::time::timeout(self.connect_timeout, tokio::net::UnixStream::connect(path))
            .await
        {
            Ok(result) => result.map_err(failed),
            Err(_) => Err(failed(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {:?}", self.connect_timeout),
            ))),
        }
    }

    async fn connect_any(&self, addr: &Address) -> Result<TcpStream, DialError> {
        let candidates: Vec<SocketAddr> = match addr {
            Address::Socket(a) => vec![*a],
            Address::Host(host) => tokio::net::lookup_host(host.as_str())
                .await
                .map_err(|source| DialError::Resolve {
                    addr: addr.clone(),
                    source,
                })?
                .collect(),
        };
        let mut last = None;
        for candidate in candidates {
            match self.connect_one(candidate).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(DialError::Connect { source, .. }) => DialError::Connect {
                addr: addr.clone(),
                source,
            },
            Some(other) => other,
            None => DialError::Resolve {
                addr: addr.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
            },
        })
    }

    async fn connect_one(&self, addr: SocketAddr) -> Result<TcpStream, DialError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|source| DialError::Connect {
            addr: addr.into(),
            source,
        })?;
        self.apply(SockRef::from(&socket))?;
        socket
            .connect(addr)
            .await
            .map_err(|source| DialError::Connect {
                addr: addr.into(),
                source,
            })
    }

    /// Sets this dialer's options on a socket opened elsewhere.
    ///
    /// # Errors
    /// [`DialError::SocketOption`] naming the option the kernel rejected.
    pub fn apply(&self, sock: SockRef<'_>) -> Result<(), DialError> {
        let option =
            |option: &'static str| move |source| DialError::SocketOption { option, source };
        if let Some(ka) = self.keepalive {
            let params = TcpKeepalive::new().with_time(ka.idle);
            #[cfg(not(any(target_os = "openbsd", target_os = "haiku")))]
            let params = params.with_interval(ka.interval);
            #[cfg(not(any(target_os = "openbsd", target_os = "haiku", target_os = "windows")))]
            let params = params.with_retries(ka.count);
            sock.set_tcp_keepalive(&params)
                .map_err(option("TCP_KEEPALIVE"))?;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        sock.set_tcp_user_timeout(self.user_timeout)
            .map_err(option("TCP_USER_TIMEOUT"))?;
        sock.set_tcp_nodelay(self.nodelay)
            .map_err(option("TCP_NODELAY"))?;
        Ok(())
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The name did not resolve.
    #[error("could not resolve {addr}: {source}")]
    Resolve {
        /// The address that was looked up.
        addr: Address,
        /// The resolver's error.
        source: io::Error,
    },
    /// The connect failed (refused, unreachable, ...).
    #[error("could not connect to {addr}: {source}")]
    Connect {
        /// The address that was dialed.
        addr: Address,
        /// The kernel's error.
        source: io::Error,
    },
    /// No connection within the connect timeout.
    #[error("no connection to {addr} within {after:?} (black-holed SYN, or backlog full)")]
    Timeout {
        /// The address that was dialed.
        addr: Address,
        /// The connect timeout.
        after: Duration,
    },
    /// A Unix-domain socket could not be opened: its file is missing, nobody listens
    /// on it, access is denied, or the connect timed out (an error of kind `TimedOut`).
    #[error("could not connect to Unix socket {}: {source}", path.display())]
    Unix {
        /// The socket's path.
        path: PathBuf,
        /// The kernel's error.
        source: io::Error,
    },
    /// The kernel rejected a socket option.
    #[error("could not set {option}: {source}")]
    SocketOption {
        /// The option's name.
        option: &'static str,
        /// The kernel's error.
        source: io::Error,
    },
}

impl DialError {
    /// The reset cause this failure counts as.
    pub fn cause(&self) -> ResetCause {
        match self {
            DialError::Connect { source, .. } => {
                ResetCause::of_io(source, crate::cause::Phase::Connect)
            }
            DialError::Timeout { .. } => ResetCause::ConnectTimeout,
            // No socket file: nothing listens there, just as with a file nobody
            // accepts on.
            DialError::Unix { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ResetCause::Refused
            }
            DialError::Unix { source, .. } => {
                ResetCause::of_io(source, crate::cause::Phase::Connect)
            }
            DialError::Resolve { .. } | DialError::SocketOption { .. } => ResetCause::Other,
        }
    }
}

impl Classify for DialError {
    fn classify(&self) -> Disposition {
        Disposition::Broken {
            cause: self.cause(),
            sent: Sent::No,
        }
    }
}

impl From<DialError> for io::Error {
    fn from(err: DialError) -> Self {
        let kind = match &err {
            DialError::Connect { source, .. } | DialError::Unix { source, .. } => source.kind(),
            DialError::Timeout { .. } => io::ErrorKind::TimedOut,
            DialError::Resolve { .. } => io::ErrorKind::NotFound,
            DialError::SocketOption { .. } => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn options_are_set_on_the_connected_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: Address = listener.local_addr().unwrap().into();
        let dialer = Dialer::new()
            .keepalive(Some(Keepalive::new(
                Duration::from_secs(7),
                Duration::from_secs(2),
                4,
            )))
            .user_timeout(Some(Duration::from_millis(1500)));
        let stream = dialer.connect(&addr).await.unwrap();
        let sock = SockRef::from(&stream);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert!(sock.tcp_nodelay().unwrap());
    }

    #[tokio::test]
    async fn refused_names_the_address_and_the_cause() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr: Address = ("127.0.0.1", port).into();
        let err = Dialer::new().connect(&addr).await.unwrap_err();
        assert_eq!(err.cause(), ResetCause::Refused);
        assert!(err.to_string().contains(&port.to_string()), "{err}");
    }

    #[tokio::test]
    async fn a_missing_or_unserved_unix_socket_is_refused() {
        let dir = std::env::temp_dir().join(format!("steadypool-dial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("server.sock");
        let _ = std::fs::remove_file(&path);

        let missing = Dialer::new().connect_unix(&path).await.unwrap_err();
        assert_eq!(missing.cause(), ResetCause::Refused);
        assert!(missing.to_string().contains("server.sock"), "{missing}");

        // A socket file left behind by a server that is gone: ECONNREFUSED.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let stale = Dialer::new().connect_unix(&path).await.unwrap_err();
        assert_eq!(stale.cause(), ResetCause::Refused, "{stale}");

        std::fs::remove_file(&path).unwrap();
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let stream = Dialer::new().connect_unix(&path).await.unwrap();
        let (_server, _) = listener.accept().await.unwrap();
        assert!(stream.peer_addr().is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn unresolvable_name_is_a_resolve_error() {
        // An invalid port fails inside the resolver: no DNS query leaves the machine
        // (a made-up host name would be sent to the configured nameserver).
        let addr: Address = "localhost:99999".into();
        let err = Dialer::new()
            .connect_timeout(Duration::from_secs(10))
            .connect(&addr)
            .await
            .unwrap_err();
        assert!(matches!(err, DialError::Resolve { .. }), "{err:?}");
        assert!(err.to_string().contains("localhost:99999"), "{err}");
    }
}
