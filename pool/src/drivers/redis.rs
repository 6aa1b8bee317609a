//! Redis through [`redis`]'s multiplexed connection (feature `redis`).
//!
//! The pool opens each TCP socket through its [`Dialer`] (keepalive,
//! `TCP_USER_TIMEOUT`, nodelay, connect timeout) and hands it to
//! [`MultiplexedConnection::new_with_config`], which authenticates and selects the
//! database on it. The connection's driver task owns the socket from then on; the pool
//! keeps a duplicate of its descriptor to probe it ([`SocketRef::Raw`]), so a
//! connection the server closed while it sat idle (`timeout`, `CLIENT KILL`, a restart)
//! is found by the reaper or at checkout instead of by your command. The driver task
//! reads the socket before the probe looks, so a reset it already read shows as end of
//! stream: a crash while idle usually counts as `peer_closed`.
//!
//! * **checkout ping**: `PING`;
//! * **broken**: the driver task read the end of stream or an I/O error on the socket
//!   (reported as `peer_closed`, or with the errno's cause and the error's text), or
//!   ended. Redis closes a killed or timed-out client without a goodbye message, so
//!   the end of stream that fails a command is in the socket already: the checkout
//!   finds it even in the moment before the driver task has ended;
//! * **errors**: [`Classify`] for [`RedisError`]:
//!
//! | error | disposition |
//! |---|---|
//! | I/O error (reset, closed, timed out, ...) | broken, cause from the errno |
//! | connection dropped without an I/O error | broken, `peer_closed` |
//! | unparsable reply | broken, `unexpected_data` |
//! | `READONLY` (the node became a replica) | broken, `other`: a new connection may reach the new primary |
//! | `LOADING`, `TRYAGAIN`, `BUSY`, `MASTERDOWN`, `CLUSTERDOWN` | transient: retry after a backoff |
//! | anything else (`WRONGTYPE`, `ERR ...`) | application error |
//!
//! ## Unix-domain sockets
//!
//! `unix:///run/redis/redis.sock` and `redis+unix:///run/redis/redis.sock` (with
//! `?db=2` for a database) connect to a server's `unixsocket`, through
//! [`Dialer::connect_unix`] within the pool's `connect_timeout`. The socket gets no
//! keepalive and no `TCP_USER_TIMEOUT` (they are TCP's; see
//! [`Dialer::connect_unix`](crate::Dialer::connect_unix)), and needs none: a server that exits
//! closes its end at once, and the probe (the same `peek` on a duplicated descriptor)
//! or the driver's watch finds it as `peer_closed`. A missing socket file (the server
//! is down, and removed it on the way) and a stale one nobody listens on both count
//! as `refused` at connect.
//!
//! Commands time out after the connection config's response timeout (500 ms by
//! redis's default; set your own with [`RedisManager::connection_config`]); a timeout
//! counts as `user_timeout`, a request the server never answered.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use steadypool::{drivers::redis::RedisManager, Pool};
//!
//! let pool = Pool::builder(RedisManager::new("redis://127.0.0.1:6379/0")?)
//!     .name("cache")
//!     .build()?;
//! let mut conn = pool.get().await?;
//! let _: () = redis::cmd("SET").arg("greeting").arg("hello").query_async(&mut *conn).await?;
//! let greeting: String = redis::cmd("GET").arg("greeting").query_async(&mut *conn).await?;
//! assert_eq!(greeting, "hello");
//! # Ok(()) }
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ErrorKind, IntoConnectionInfo, RedisConnectionInfo,
    RedisError, RetryMethod, ServerErrorKind,
};
use tokio::task::JoinHandle;

use super::watch::{Fate, Transport, Watched};
use crate::cause::{Classify, Disposition, ResetCause, Sent};
use crate::dial::{Address, DialError, Dialer};
use crate::manager::{Broken, Manager};
use crate::probe::SocketRef;

/// Where a manager's connections go.
#[derive(Debug, Clone)]
enum Endpoint {
    Tcp(Address),
    /// TLS over TCP, verified for the server name.
    #[cfg(feature = "tls")]
    Tls(
        Address,
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    ),
    #[cfg(unix)]
    Unix(PathBuf),
}

/// Opens Redis connections on the pool's sockets. See the [module docs](self).
#[derive(Clone)]
pub struct RedisManager {
    endpoint: Endpoint,
    info: RedisConnectionInfo,
    config: AsyncConnectionConfig,
}

impl fmt::Debug for RedisManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection info holds the password: show only where connections go.
        f.debug_struct("RedisManager")
            .field("endpoint", &self.endpoint)
            .field("db", &self.info.db())
            .finish_non_exhaustive()
    }
}

impl RedisManager {
    /// A manager for a `redis://host:port/db` or `unix:///path/redis.sock` URL, or a
    /// [`redis::ConnectionInfo`].
    ///
    /// # Errors
    /// [`RedisDriverError::Redis`] for a URL redis cannot parse;
    /// `rediss://` (TLS) is refused (by redis's parser, built without its own TLS):
    /// use [`RedisManager::with_tls`] (feature `tls`).
    pub fn new(info: impl IntoConnectionInfo) -> Result<Self, RedisDriverError> {
        let info = info.into_connection_info()?;
        let endpoint = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Endpoint::Tcp(Address::from((host.as_str(), *port))),
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Endpoint::Unix(path.clone()),
            ConnectionAddr::TcpTls { .. } => {
                return Err(RedisDriverError::Config(
                    "TLS (rediss://) needs a rustls client config: RedisManager::with_tls, feature `tls`"
                        .to_owned(),
                ));
            }
            _ => {
                return Err(RedisDriverError::Config(
                    "an address this manager cannot open: use redis://host:port or unix:///path/redis.sock"
                        .to_owned(),
                ));
            }
        };
        Ok(RedisManager {
            endpoint,
            info: info.redis_settings().clone(),
            config: AsyncConnectionConfig::new(),
        })
    }

    /// A manager for a `rediss://host:port/db` URL (or `redis://`: TLS either way), its
    /// TLS sessions verified as `config` says for the URL's host (features `tls` and
    /// `redis`). The TLS session runs inside the connection's driver task, which reads
    /// session tickets and KeyUpdates as they come; the probe watches the TCP socket
    /// under it as for `redis://`, and a close_notify or a FIN behind any record is
    /// `peer_closed`. The URL's `#insecure` is not honoured: verification is the
    /// config's to relax.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use steadypool::drivers::redis::RedisManager;
    /// use steadypool::drivers::tls::rustls;
    /// use steadypool::Manager;
    ///
    /// let config = rustls::ClientConfig::builder()
    ///     .with_root_certificates(rustls::RootCertStore::empty())
    ///     .with_no_client_auth();
    /// let manager = RedisManager::with_tls("rediss://cache.internal:6380/0", Arc::new(config)).unwrap();
    /// assert_eq!(manager.target().as_deref(), Some("rediss://cache.internal:6380"));
    /// ```
    ///
    /// # Errors
    /// [`RedisDriverError::Redis`] for a URL redis cannot parse,
    /// [`RedisDriverError::Config`] for a Unix-domain socket, [`RedisDriverError::Tls`] for a host that is no valid TLS server name.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn with_tls(
        url: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Self, RedisDriverError> {
        // redis parses `rediss://` only with a TLS stack of its own; the session here
        // is steadypool's, so the URL is read as the plain one it otherwise is.
        let plain = match url.strip_prefix("rediss://") {
            Some(rest) => format!("redis://{rest}"),
            None => url.to_owned(),
        };
        let info = plain.as_str().into_connection_info()?;
        let (host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                (host.as_str(), *port)
            }
            _ => {
                return Err(RedisDriverError::Config(
                    "TLS needs a TCP address: use rediss://host:port".to_owned(),
                ));
            }
        };
        let server_name = super::tls::parse_server_name(host)?;
        Ok(RedisManager {
            endpoint: Endpoint::Tls(Address::from((host, port)), config, server_name),
            info: info.redis_settings().clone(),
            config: AsyncConnectionConfig::new(),
        })
    }

    /// The settings each multiplexed connection gets (response timeout, push sender,
    /// ...). Default: [`AsyncConnectionConfig::new`]. Its connection timeout is not
    /// used: the pool's `connect_timeout` bounds the connect.
    pub fn connection_config(mut self, config: AsyncConnectionConfig) -> Self {
        self.config = config;
        self
    }

    /// Where connections go over TCP; `None` for a Unix-domain socket.
    pub fn address(&self) -> Option<&Address> {
        match &self.endpoint {
            Endpoint::Tcp(addr) => Some(addr),
            #[cfg(feature = "tls")]
            Endpoint::Tls(addr, ..) => Some(addr),
            #[cfg(unix)]
            Endpoint::Unix(_) => None,
        }
    }

    /// The Unix-domain socket connections go to; `None` over TCP.
    pub fn unix_socket(&self) -> Option<&Path> {
        match &self.endpoint {
            Endpoint::Tcp(_) => None,
            #[cfg(feature = "tls")]
            Endpoint::Tls(..) => None,
            #[cfg(unix)]
            Endpoint::Unix(path) => Some(path),
        }
    }
}

/// A pooled Redis connection: runs commands itself (it is a
/// [`ConnectionLike`](redis::aio::ConnectionLike)) and dereferences to the
/// [`MultiplexedConnection`].
///
/// Dropping it stops its driver task and closes the socket, also for clones of the
/// multiplexed connection taken from it: do not keep those beyond the checkout.
pub struct RedisConnection {
    conn: MultiplexedConnection,
    socket: socket2::Socket,
    driver: JoinHandle<()>,
    fate: Fate,
}

impl RedisConnection {
    /// Whether the connection is over: the driver task read its end or an error, or
    /// ended.
    pub fn is_closed(&self) -> bool {
        self.fate.get().is_some() || self.driver.is_finished()
    }

    /// Why the connection is over, if it is.
    fn ended(&self) -> Option<Broken> {
        if let Some(broken) = self.fate.get() {
            return Some(broken.clone());
        }
        self.driver.is_finished().then(|| {
            Broken::new(ResetCause::PeerClosed).with_detail("the connection's driver task ended")
        })
    }
}

impl Drop for RedisConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Deref for RedisConnection {
    type Target = MultiplexedConnection;

    fn deref(&self) -> &MultiplexedConnection {
        &self.conn
    }
}

impl DerefMut for RedisConnection {
    fn deref_mut(&mut self) -> &mut MultiplexedConnection {
        &mut self.conn
    }
}

/// Commands run on a checked-out connection directly: `cmd.query_async(&mut *conn)`.
impl redis::aio::ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.conn.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Manager for RedisManager {
    type Connection = RedisConnection;
    type Error = RedisDriverError;

    async fn connect(&self, dialer: &Dialer) -> Result<RedisConnection, RedisDriverError> {
        match &self.endpoint {
            Endpoint::Tcp(addr) => {
                let stream = dialer.connect(addr).await?;
                let socket = socket2::SockRef::from(&stream).try_clone();
                self.start(stream, socket).await
            }
            #[cfg(feature = "tls")]
            Endpoint::Tls(addr, config, server_name) => {
                let stream = dialer.connect(addr).await?;
                let socket = socket2::SockRef::from(&stream).try_clone();
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(server_name.clone(), stream)
                    .await
                    .map_err(RedisDriverError::Handshake)?;
                self.start(stream, socket).await
            }
            #[cfg(unix)]
            Endpoint::Unix(path) => {
                let stream = dialer.connect_unix(path).await?;
                let socket = socket2::SockRef::from(&stream).try_clone();
                self.start(stream, socket).await
            }
        }
    }

    fn socket<'a>(&self, conn: &'a RedisConnection) -> Option<SocketRef<'a>> {
        Some(SocketRef::Raw(super::borrow_raw(&conn.socket)))
    }

    async fn ping(&self, conn: &mut RedisConnection) -> Result<(), RedisDriverError> {
        redis::cmd("PING")
            .query_async::<()>(conn)
            .await
            .map_err(RedisDriverError::from)
    }

    fn target(&self) -> Option<String> {
        Some(match &self.endpoint {
            Endpoint::Tcp(addr) => format!("redis://{addr}"),
            #[cfg(feature = "tls")]
            Endpoint::Tls(addr, ..) => format!("rediss://{addr}"),
            #[cfg(unix)]
            Endpoint::Unix(path) => format!("redis+unix://{}", path.display()),
        })
    }

    fn broken(&self, conn: &RedisConnection) -> Option<Broken> {
        conn.ended()
    }
}

impl RedisManager {
    /// Starts a session on a connected stream; `socket` is its duplicate for the probe.
    async fn start<S>(
        &self,
        stream: S,
        socket: io::Result<socket2::Socket>,
    ) -> Result<RedisConnection, RedisDriverError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
    {
        let socket = socket.map_err(RedisDriverError::Socket)?;
        let fate = Fate::default();
        let stream = Watched::new(stream, Transport, fate.clone());
        let (conn, driver) =
            MultiplexedConnection::new_with_config(&self.info, stream, self.config.clone()).await?;
        Ok(RedisConnection {
            conn,
            socket,
            driver: tokio::spawn(driver),
            fate,
        })
    }
}

/// Why a Redis connection could not be opened or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisDriverError {
    /// The TCP connection could not be opened.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// Redis reported an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// The connection info cannot be used with the pool.
    #[error("redis configuration: {0}")]
    Config(String),
    /// The socket could not be duplicated for probing (out of descriptors?).
    #[error("could not duplicate the socket for probing: {0}")]
    Socket(#[source] io::Error),
    /// A TLS setting was refused.
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    /// The TLS handshake failed: the server's certificate did not verify, no common
    /// protocol version, or the connection broke during it.
    #[cfg(feature = "tls")]
    #[error("TLS handshake: {0}")]
    Handshake(#[source] io::Error),
}

impl Classify for RedisDriverError {
    fn classify(&self) -> Disposition {
        match self {
            RedisDriverError::Dial(e) => e.classify(),
            RedisDriverError::Redis(e) => e.classify(),
            RedisDriverError::Socket(_) => Disposition::Broken {
                cause: ResetCause::Other,
                sent: Sent::No,
            },
            RedisDriverError::Config(_) => Disposition::Application,
            #[cfg(feature = "tls")]
            RedisDriverError::Tls(_) => Disposition::Application,
            // The handshake sends no command: nothing reached Redis.
            #[cfg(feature = "tls")]
            RedisDriverError::Handshake(e) => Disposition::Broken {
                cause: ResetCause::of_io(e, crate::cause::Phase::Connect),
                sent: Sent::No,
            },
        }
    }

    /// A configuration the pool cannot use, refused credentials, or a TLS handshake
    /// refused for good.
    fn is_permanent(&self) -> bool {
        match self {
            RedisDriverError::Redis(e) => e.is_permanent(),
            RedisDriverError::Config(_) => true,
            #[cfg(feature = "tls")]
            RedisDriverError::Tls(_) => true,
            #[cfg(feature = "tls")]
            RedisDriverError::Handshake(e) => e.is_permanent(),
            RedisDriverError::Dial(_) | RedisDriverError::Socket(_) => false,
        }
    }
}

impl Classify for RedisError {
    fn classify(&self) -> Disposition {
        if let Some(io) = io_error_in(self) {
            return io.classify();
        }
        let broken = |cause| Disposition::Broken {
            cause,
            sent: Sent::Maybe,
        };
        if self.is_connection_dropped() {
            return broken(ResetCause::PeerClosed);
        }
        match self.kind() {
            ErrorKind::Parse => broken(ResetCause::UnexpectedData),
            ErrorKind::Server(ServerErrorKind::ReadOnly) => broken(ResetCause::Other),
            ErrorKind::Io => broken(ResetCause::Other),
            _ if matches!(self.retry_method(), RetryMethod::WaitAndRetry)
                || self.code() == Some("BUSY") =>
            {
                Disposition::Transient
            }
            _ => Disposition::Application,
        }
    }

    /// Refused credentials (`AUTH` failed, `WRONGPASS`, `NOAUTH`) or a client
    /// configuration the server cannot take: waiting does not change them.
    fn is_permanent(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::AuthenticationFailed | ErrorKind::InvalidClientConfig
        ) || matches!(self.code(), Some("WRONGPASS" | "NOAUTH"))
    }
}

/// The I/O error inside a redis error. redis keeps it behind an
/// `Arc<dyn Error + Send + Sync>`, which a plain downcast of the source does not see
/// through.
fn io_error_in(err: &RedisError) -> Option<&io::Error> {
    let mut current: Option<&(dyn StdError + 'static)> = StdError::source(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        if let Some(shared) = e.downcast_ref::<Arc<dyn StdError + Send + Sync>>()
            && let Some(io) = shared.downcast_ref::<io::Error>()
        {
            return Some(io);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(line: &str) -> RedisError {
        let value = redis::parse_redis_value(line.as_bytes()).unwrap();
        match value {
            redis::Value::ServerError(err) => RedisError::from(err),
            other => panic!("not an error reply: {other:?}"),
        }
    }

    #[test]
    fn refused_credentials_are_permanent_and_a_busy_server_is_not() {
        for line in [
            "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            "-NOAUTH Authentication required.\r\n",
        ] {
            assert!(server_error(line).is_permanent(), "{line}");
        }
        let auth = RedisError::from((ErrorKind::AuthenticationFailed, "auth failed"));
        assert!(auth.is_permanent());
        for line in [
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-BUSY Redis is busy running a script.\r\n",
            "-ERR max number of clients reached\r\n",
        ] {
            assert!(!server_error(line).is_permanent(), "{line}");
        }
        let refused = RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(!refused.is_permanent());
    }

    #[test]
    fn io_errors_are_broken_with_their_cause() {
        let cases = [
            (io::ErrorKind::ConnectionReset, ResetCause::PeerReset),
            (io::ErrorKind::BrokenPipe, ResetCause::BrokenPipe),
            (io::ErrorKind::UnexpectedEof, ResetCause::PeerClosed),
            (io::ErrorKind::TimedOut, ResetCause::UserTimeout),
        ];
        for (kind, cause) in cases {
            let err = RedisError::from(io::Error::from(kind));
            assert_eq!(
                err.classify(),
                Disposition::Broken {
                    cause,
                    sent: Sent::Maybe
                },
                "{kind:?}"
            );
        }
    }

    #[test]
    fn busy_server_replies_are_transient_and_others_application() {
        for line in [
            "-LOADING Redis is loading the dataset in memory\r\n",
            "-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
            "-BUSY Redis is busy running a script\r\n",
            "-MASTERDOWN Link with MASTER is down\r\n",
        ] {
            assert_eq!(
                server_error(line).classify(),
                Disposition::Transient,
                "{line}"
            );
        }
        for line in [
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            "-ERR unknown command 'FOO'\r\n",
        ] {
            assert_eq!(
                server_error(line).classify(),
                Disposition::Application,
                "{line}"
            );
        }
        assert!(
            server_error("-READONLY You can't write against a read only replica.\r\n")
                .classify()
                .is_broken()
        );
    }

    #[cfg(feature = "tls")]
    #[test]
    fn with_tls_takes_tcp_urls_and_refuses_unix_sockets() {
        use crate::drivers::tls::rustls;
        let config = Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        );
        for url in ["rediss://127.0.0.1:6380/2", "redis://127.0.0.1:6380/2"] {
            let manager = RedisManager::with_tls(url, Arc::clone(&config)).unwrap();
            assert_eq!(
                manager.address().map(ToString::to_string).as_deref(),
                Some("127.0.0.1:6380")
            );
            assert_eq!(manager.info.db(), 2, "{url}");
            assert_eq!(manager.target().as_deref(), Some("rediss://127.0.0.1:6380"));
        }
        let unix = RedisManager::with_tls("unix:///tmp/redis.sock", config);
        assert!(matches!(unix, Err(RedisDriverError::Config(_))), "{unix:?}");
    }

    #[test]
    fn tls_urls_are_refused_with_a_reason_and_unix_urls_name_the_socket() {
        let err = RedisManager::new("rediss://127.0.0.1:6380").unwrap_err();
        assert!(err.to_string().contains("TLS"), "{err}");
        let ok = RedisManager::new("redis://127.0.0.1:6390/2").unwrap();
        assert_eq!(
            ok.address().map(ToString::to_string).as_deref(),
            Some("127.0.0.1:6390")
        );
        assert_eq!(ok.unix_socket(), None);
        for url in [
            "redis+unix:///tmp/redis.sock",
            "unix:///tmp/redis.sock?db=2",
        ] {
            let unix = RedisManager::new(url).unwrap();
            assert_eq!(
                unix.unix_socket(),
                Some(Path::new("/tmp/redis.sock")),
                "{url}"
            );
            assert_eq!(unix.address(), None);
            assert_eq!(
                unix.target().as_deref(),
                Some("redis+unix:///tmp/redis.sock")
            );
        }
    }
}
