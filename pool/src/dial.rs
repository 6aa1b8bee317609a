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
//! It resolves the address, tries each resolved address in turn, each with its share
//! of `connect_timeout`, and gives up after `connect_timeout` in total: a SYN into a
//! black hole otherwise waits about 127 s, and a black-holed first address would
//! otherwise leave no time for the next.
//!
//! A connect to a loopback port that nothing listens on can, now and then, connect
//! to itself: the kernel may pick that very port, when it lies in the ephemeral range,
//! as the connect's source port (a TCP simultaneous open). Every request sent on it
//! would come back as its own reply. The dialer checks for it and reports the connect
//! as refused, which is what it was.
//!
//! [`Dialer`] owns these settings: their defaults, the rule that ties the user
//! timeout to keepalive, and the checks ([`Dialer::validate`]). The pool's builder
//! sets its knobs on a `Dialer`, or takes one whole
//! ([`PoolBuilder::dialer`](crate::PoolBuilder::dialer)).
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
use tokio::time::Instant;

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

/// The largest `TCP_KEEPCNT` Linux accepts.
const MAX_KEEPALIVE_COUNT: u32 = 127;
/// The largest `TCP_KEEPIDLE` / `TCP_KEEPINTVL` Linux accepts, in seconds.
const MAX_KEEPALIVE_SECS: u64 = 32_767;
/// What keepalive idle and interval may be.
const KEEPALIVE_SECS_ALLOWED: &str = "1 s to 32767 s, in whole seconds";

/// Opens TCP connections with the pool's socket options. Managers receive one in
/// [`crate::Manager::connect`]; it is cheap to clone. Build one yourself and hand it
/// to [`PoolBuilder::dialer`](crate::PoolBuilder::dialer), or set the same knobs on
/// the builder: either way this type holds the socket settings, their defaults and
/// their checks, in one place.
///
/// | setting | default | prevents |
/// |---|---|---|
/// | [`connect_timeout`](Self::connect_timeout) | 5 s | a SYN into a black hole hanging ~127 s |
/// | [`keepalive`](Self::keepalive) | 10 s / 3 s / 3 ([`Keepalive::default`]) | dead peers found after 2 h 11 min (kernel default) |
/// | [`user_timeout`](Self::user_timeout) | follows keepalive: `idle + interval x count` (19 s) | a request into a black hole waiting ~15 min |
/// | [`nodelay`](Self::nodelay) | on | Nagle delaying small requests by up to 40 ms |
///
/// ```
/// use std::time::Duration;
/// use steadypool::{Dialer, Keepalive};
///
/// let dialer = Dialer::new().keepalive(Some(Keepalive::new(
///     Duration::from_secs(5),
///     Duration::from_secs(1),
///     3,
/// )));
/// // The user timeout follows keepalive unless set: 5 + 1 x 3 s.
/// assert_eq!(dialer.tcp_user_timeout(), Some(Duration::from_secs(8)));
/// assert!(dialer.validate().is_ok());
/// assert!(Dialer::new().connect_timeout(Duration::ZERO).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialer {
    connect_timeout: Duration,
    keepalive: Option<Keepalive>,
    user_timeout: UserTimeout,
    nodelay: bool,
}

/// Where `TCP_USER_TIMEOUT` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UserTimeout {
    /// The keepalive detection time, or the kernel's when keepalive is off: Linux
    /// applies the user timeout to keepalive too, so the two must agree.
    FollowKeepalive,
    /// Set explicitly (`None`: the kernel's).
    Set(Option<Duration>),
}

impl Default for Dialer {
    fn default() -> Self {
        Dialer::new()
    }
}

impl Dialer {
    /// A dialer with steadypool's defaults (see the [table](Self)): 5 s connect
    /// timeout, [`Keepalive::default`], a user timeout that follows keepalive,
    /// `TCP_NODELAY` on.
    pub fn new() -> Self {
        Dialer {
            connect_timeout: Duration::from_secs(5),
            keepalive: Some(Keepalive::default()),
            user_timeout: UserTimeout::FollowKeepalive,
            nodelay: true,
        }
    }

    /// Total time allowed to resolve and connect, shared among the resolved
    /// addresses (see [`Dialer::connect`]). Default 5 s; must not be zero. Without it
    /// a SYN into a black hole waits ~127 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Keepalive timing, or `None` to leave keepalive off. Default 10 s idle, 3 s
    /// interval, 3 probes: a dead peer or a black-holed flow is found 19 s after the
    /// last traffic instead of 2 h 11 min, and the probes keep NAT entries alive. Idle
    /// and interval are whole seconds, 1 to 32767; count 1 to 127.
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// `TCP_USER_TIMEOUT` (Linux): how long sent data may stay unacknowledged before
    /// the connection fails with `ETIMEDOUT`; `None` leaves the kernel's (~15 min).
    /// Default: the keepalive detection time (`idle + interval x count`), following
    /// [`Dialer::keepalive`] until this is called, since Linux also applies it to
    /// keepalive and the two must agree. 1 ms to 49 days.
    pub fn user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.user_timeout = UserTimeout::Set(timeout);
        self
    }

    /// `TCP_NODELAY`. Default on: small requests leave at once instead of waiting
    /// up to 40 ms for Nagle's algorithm.
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// The configured connect timeout.
    ///
    /// ```
    /// assert_eq!(steadypool::Dialer::new().timeout(), std::time::Duration::from_secs(5));
    /// ```
    pub fn timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The keepalive timing set on every socket; `None` when keepalive is off.
    ///
    /// ```
    /// use steadypool::{Dialer, Keepalive};
    /// assert_eq!(Dialer::new().tcp_keepalive(), Some(Keepalive::default()));
    /// assert_eq!(Dialer::new().keepalive(None).tcp_keepalive(), None);
    /// ```
    pub fn tcp_keepalive(&self) -> Option<Keepalive> {
        self.keepalive
    }

    /// The `TCP_USER_TIMEOUT` set on every socket: the one set, or else the
    /// keepalive detection time; `None` leaves the kernel's.
    ///
    /// ```
    /// use std::time::Duration;
    /// use steadypool::Dialer;
    /// assert_eq!(Dialer::new().tcp_user_timeout(), Some(Duration::from_secs(19)));
    /// assert_eq!(Dialer::new().keepalive(None).tcp_user_timeout(), None);
    /// let set = Dialer::new().user_timeout(Some(Duration::from_secs(4))).keepalive(None);
    /// assert_eq!(set.tcp_user_timeout(), Some(Duration::from_secs(4)));
    /// ```
    pub fn tcp_user_timeout(&self) -> Option<Duration> {
        match self.user_timeout {
            UserTimeout::Set(timeout) => timeout,
            UserTimeout::FollowKeepalive => self.keepalive.map(|ka| ka.detection_time()),
        }
    }

    /// Checks every setting against what the kernel accepts and what keeps
    /// detection working. [`PoolBuilder::build`](crate::PoolBuilder::build) runs it
    /// on the pool's dialer, and [`Dialer::connect`] before each connect.
    ///
    /// ```
    /// use std::time::Duration;
    /// use steadypool::{Dialer, Keepalive, SocketSettingError};
    /// let no_probes = Keepalive::new(Duration::from_secs(10), Duration::from_secs(3), 0);
    /// let err = Dialer::new().keepalive(Some(no_probes)).validate().unwrap_err();
    /// assert!(matches!(err, SocketSettingError::KeepaliveOutOfRange { knob: "keepalive count", .. }));
    /// ```
    ///
    /// # Errors
    /// A [`SocketSettingError`] naming the setting, the value and what is allowed.
    pub fn validate(&self) -> Result<(), SocketSettingError> {
        if self.connect_timeout.is_zero() {
            return Err(SocketSettingError::ZeroConnectTimeout);
        }
        if let Some(ka) = self.keepalive {
            for (knob, value) in [
                ("keepalive idle", ka.idle),
                ("keepalive interval", ka.interval),
            ] {
                if value.as_secs() == 0 || value.as_secs() > MAX_KEEPALIVE_SECS {
                    return Err(SocketSettingError::KeepaliveOutOfRange {
                        knob,
                        value: format!("{value:?}"),
                        allowed: KEEPALIVE_SECS_ALLOWED,
                    });
                }
            }
            if ka.count == 0 || ka.count > MAX_KEEPALIVE_COUNT {
                return Err(SocketSettingError::KeepaliveOutOfRange {
                    knob: "keepalive count",
                    value: ka.count.to_string(),
                    allowed: "1 to 127 probes",
                });
            }
        }
        if let Some(timeout) = self.tcp_user_timeout()
            && (timeout.is_zero() || timeout.as_millis() > u128::from(u32::MAX))
        {
            return Err(SocketSettingError::UserTimeoutOutOfRange { timeout });
        }
        Ok(())
    }

    /// Resolves `addr` and connects to the first address that accepts, with every
    /// socket option set, all within the connect timeout.
    ///
    /// The addresses are tried in turn, and each gets an equal share of the time
    /// left: with two addresses, a black-holed first one (its SYNs dropped) uses
    /// half the connect timeout, and the second still gets the other half, instead
    /// of the first one using it all. Time an address does not use (it refused at
    /// once) goes to the ones after it.
    ///
    /// # Errors
    /// [`DialError`] naming the address and the cause: a setting is out of range, it
    /// did not resolve, every address failed (the last one's error), the timeout
    /// passed, or a socket option was rejected.
    pub async fn connect(&self, addr: &Address) -> Result<TcpStream, DialError> {
        self.validate()?;
        let deadline = Instant::now() + self.connect_timeout;
        let candidates: Vec<SocketAddr> = match addr {
            Address::Socket(a) => vec![*a],
            Address::Host(host) => {
                match tokio::time::timeout_at(deadline, tokio::net::lookup_host(host.as_str()))
                    .await
                {
                    Ok(resolved) => resolved
                        .map_err(|source| DialError::Resolve {
                            addr: addr.clone(),
                            source,
                        })?
                        .collect(),
                    Err(_) => return Err(self.timed_out(addr)),
                }
            }
        };
        self.connect_in_turn(addr, &candidates, deadline).await
    }

    /// Connects to the first of `candidates` that accepts, in order, each with its
    /// share of the connect timeout as [`Dialer::connect`] gives it: for a service
    /// whose addresses come from somewhere other than DNS (a service registry, a
    /// list of replicas).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), steadypool::DialError> {
    /// use std::net::SocketAddr;
    /// use steadypool::Dialer;
    /// let replicas: [SocketAddr; 2] = ["10.0.0.7:5432".parse().unwrap(), "10.0.0.8:5432".parse().unwrap()];
    /// let stream = Dialer::new().connect_any(&replicas).await?;
    /// # drop(stream); Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Dialer::connect`], naming the candidates (comma-separated when there
    /// are several); with no candidate at all, [`DialError::Resolve`].
    pub async fn connect_any(&self, candidates: &[SocketAddr]) -> Result<TcpStream, DialError> {
        self.validate()?;
        let deadline = Instant::now() + self.connect_timeout;
        let named = match candidates {
            [only] => Address::Socket(*only),
            _ => Address::Host(
                candidates
                    .iter()
                    .map(SocketAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        };
        self.connect_in_turn(&named, candidates, deadline).await
    }

    /// Connects to the first of the `n` resolved addresses that accepts: the `i`-th
    /// gets `1 / (n - i)` of the time left, so each gets an equal share of what the
    /// ones before it did not use (hyper-util splits its connect timeout the same
    /// way, among addresses).
    async fn connect_in_turn(
        &self,
        addr: &Address,
        candidates: &[SocketAddr],
        deadline: Instant,
    ) -> Result<TcpStream, DialError> {
        let mut last = None;
        for (i, candidate) in candidates.iter().enumerate() {
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            let others = u32::try_from(candidates.len() - i).unwrap_or(u32::MAX);
            let share = left / others;
            last = Some(
                match tokio::time::timeout_at(now + share, self.connect_one(*candidate)).await {
                    Ok(Ok(stream)) => return Ok(stream),
                    Ok(Err(err)) => err,
                    Err(_) => self.timed_out(&Address::Socket(*candidate)),
                },
            );
        }
        Err(match last {
            Some(DialError::Connect { source, .. }) => DialError::Connect {
                addr: addr.clone(),
                source,
            },
            Some(DialError::Timeout { .. }) => self.timed_out(addr),
            Some(other) => other,
            None => DialError::Resolve {
                addr: addr.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
            },
        })
    }

    fn timed_out(&self, addr: &Address) -> DialError {
        DialError::Timeout {
            addr: addr.clone(),
            after: self.connect_timeout,
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
    /// timeout passed (`TimedOut`); [`DialError::Setting`] when the connect timeout
    /// is zero.
    #[cfg(unix)]
    pub async fn connect_unix(
        &self,
        path: impl AsRef<std::path::Path>,
    ) -> Result<tokio::net::UnixStream, DialError> {
        if self.connect_timeout.is_zero() {
            return Err(SocketSettingError::ZeroConnectTimeout.into());
        }
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
        self.set_options(SockRef::from(&socket))?;
        let stream = socket
            .connect(addr)
            .await
            .map_err(|source| DialError::Connect {
                addr: addr.into(),
                source,
            })?;
        if stream.local_addr().is_ok_and(|local| local == addr) {
            // Nothing listened on `addr`, a port of the ephemeral range, and the
            // kernel gave the connect that same port as its source: the socket
            // connected to itself, and every request would read back as its own
            // reply. It is what it would have been a moment sooner or later: refused.
            return Err(DialError::Connect {
                addr: addr.into(),
                source: io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "connected to itself: nothing listens there, and the kernel \
                     picked the same port as the source port",
                ),
            });
        }
        Ok(stream)
    }

    /// Sets this dialer's options on a socket opened elsewhere.
    ///
    /// # Errors
    /// [`DialError::Setting`] when a setting is out of range (see
    /// [`Dialer::validate`]); [`DialError::SocketOption`] naming the option the
    /// kernel rejected.
    pub fn apply(&self, sock: SockRef<'_>) -> Result<(), DialError> {
        self.validate()?;
        self.set_options(sock)
    }

    /// [`Dialer::apply`] without the checks, which every connect ran already.
    fn set_options(&self, sock: SockRef<'_>) -> Result<(), DialError> {
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
        sock.set_tcp_user_timeout(self.tcp_user_timeout())
            .map_err(option("TCP_USER_TIMEOUT"))?;
        sock.set_tcp_nodelay(self.nodelay)
            .map_err(option("TCP_NODELAY"))?;
        Ok(())
    }
}

/// A [`Dialer`] setting out of range: refused before any socket is opened, by
/// [`Dialer::validate`], by every connect, and (as the matching [`BuildError`]
/// variant) by [`PoolBuilder::build`](crate::PoolBuilder::build).
///
/// [`BuildError`]: crate::BuildError
///
/// ```
/// use std::time::Duration;
/// use steadypool::{Dialer, SocketSettingError};
/// let err = Dialer::new().user_timeout(Some(Duration::ZERO)).validate().unwrap_err();
/// assert_eq!(err, SocketSettingError::UserTimeoutOutOfRange { timeout: Duration::ZERO });
/// println!("{err}"); // ... None leaves the kernel's
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SocketSettingError {
    /// The connect timeout is zero: no connect could ever finish.
    #[error("connect_timeout must be greater than zero")]
    ZeroConnectTimeout,
    /// A keepalive setting the kernel would reject, or one that turns detection off.
    #[error("{knob} is {value}; allowed: {allowed}")]
    KeepaliveOutOfRange {
        /// Which setting.
        knob: &'static str,
        /// The value given.
        value: String,
        /// The accepted range.
        allowed: &'static str,
    },
    /// `TCP_USER_TIMEOUT` outside 1 ms ..= `u32::MAX` ms.
    #[error("user_timeout {timeout:?} is out of range (1 ms to 49 days); None leaves the kernel's")]
    UserTimeoutOutOfRange {
        /// The value given (or derived from keepalive).
        timeout: Duration,
    },
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
    /// A setting of the [`Dialer`] is out of range: nothing was dialed.
    #[error("dialer setting: {0}")]
    Setting(#[from] SocketSettingError),
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
            DialError::Resolve { .. } | DialError::SocketOption { .. } | DialError::Setting(_) => {
                ResetCause::Other
            }
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
            DialError::SocketOption { .. } | DialError::Setting(_) => io::ErrorKind::InvalidInput,
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

    #[test]
    fn the_user_timeout_follows_keepalive_until_it_is_set() {
        let ka = Keepalive::new(Duration::from_secs(2), Duration::from_secs(1), 4);
        let rows = [
            (Dialer::new(), Some(Duration::from_secs(19))),
            (
                Dialer::new().keepalive(Some(ka)),
                Some(Duration::from_secs(6)),
            ),
            (Dialer::new().keepalive(None), None),
            (
                Dialer::new()
                    .user_timeout(Some(Duration::from_secs(3)))
                    .keepalive(Some(ka)),
                Some(Duration::from_secs(3)),
            ),
            (Dialer::new().keepalive(Some(ka)).user_timeout(None), None),
        ];
        for (i, (dialer, expected)) in rows.into_iter().enumerate() {
            assert_eq!(dialer.tcp_user_timeout(), expected, "row {i}: {dialer:?}");
        }
    }

    #[test]
    fn settings_out_of_range_are_refused_with_their_name() {
        let ka = |idle: u64, interval: u64, count| {
            Some(Keepalive::new(
                Duration::from_millis(idle),
                Duration::from_millis(interval),
                count,
            ))
        };
        let rows: [(Dialer, Option<&str>); 9] = [
            (Dialer::new(), None),
            (Dialer::new().keepalive(None), None),
            (
                Dialer::new().connect_timeout(Duration::ZERO),
                Some("connect_timeout"),
            ),
            (
                Dialer::new().keepalive(ka(0, 1000, 3)),
                Some("keepalive idle"),
            ),
            (
                Dialer::new().keepalive(ka(500, 1000, 3)),
                Some("keepalive idle"),
            ),
            (
                Dialer::new().keepalive(ka(1000, 0, 3)),
                Some("keepalive interval"),
            ),
            (
                Dialer::new().keepalive(ka(32_768_000, 1000, 3)),
                Some("keepalive idle"),
            ),
            (
                Dialer::new().keepalive(ka(1000, 1000, 128)),
                Some("keepalive count"),
            ),
            (
                Dialer::new().user_timeout(Some(Duration::ZERO)),
                Some("user_timeout"),
            ),
        ];
        for (dialer, refused) in rows {
            match (dialer.validate(), refused) {
                (Ok(()), None) => {}
                (Err(err), Some(knob)) => assert!(err.to_string().contains(knob), "{err}"),
                (result, _) => panic!("{dialer:?}: {result:?}, expected {refused:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_standalone_dialer_out_of_range_is_refused_before_dialing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let no_probes = Keepalive::new(Duration::from_secs(10), Duration::from_secs(3), 0);
        let dialer = Dialer::new().keepalive(Some(no_probes));
        let err = dialer.connect(&addr.into()).await.unwrap_err();
        assert!(
            matches!(
                err,
                DialError::Setting(SocketSettingError::KeepaliveOutOfRange {
                    knob: "keepalive count",
                    ..
                })
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("keepalive count"), "{err}");
        let err = dialer.connect_any(&[addr]).await.unwrap_err();
        assert!(matches!(err, DialError::Setting(_)), "{err:?}");
        let unix = Dialer::new().connect_timeout(Duration::ZERO);
        let err = unix.connect_unix("/nonexistent.sock").await.unwrap_err();
        assert!(
            matches!(
                err,
                DialError::Setting(SocketSettingError::ZeroConnectTimeout)
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_first_address_leaves_its_time_to_the_next() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let stream = Dialer::new().connect_any(&[closed, open]).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), open);
        let err = Dialer::new().connect_any(&[closed]).await.unwrap_err();
        assert_eq!(err.cause(), ResetCause::Refused);
        let err = Dialer::new().connect_any(&[]).await.unwrap_err();
        assert!(matches!(err, DialError::Resolve { .. }), "{err:?}");
    }
}
