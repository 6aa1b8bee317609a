//! PostgreSQL through [`tokio_postgres`] (feature `postgres`).
//!
//! The pool opens each TCP socket itself, through its [`Dialer`] (keepalive,
//! `TCP_USER_TIMEOUT`, nodelay and the connect timeout all apply), and hands it to
//! [`tokio_postgres::Config::connect_raw`]. tokio-postgres's background `Connection`
//! task owns the socket from then on; the pool keeps a duplicate of its descriptor to
//! probe it ([`SocketRef::Raw`], one `peek` per probe), so a backend that was terminated
//! or crashed while the connection sat idle is found by the reaper or at checkout,
//! never by your query.
//!
//! The background task reads the socket before the probe looks. A reset the task
//! already read is told from a FIN by the socket's TCP state. Bytes the task has not
//! read yet (the reply to closing a prepared statement, which arrives after the query
//! returned; a notification; the server's FATAL message before it closes) are the
//! task's business, not a desync: the pool keeps the connection, and a close behind
//! those bytes is found as end of stream or through [`Manager::broken`].
//!
//! ## Sessions the server ended
//!
//! A backend that is terminated (`pg_terminate_backend`, a fast shutdown) sends its
//! FATAL error, and closes its socket only once it has exited, a moment later. The
//! query fails with that error at once, but the client says it is closed, and the
//! socket shows the close, only after that moment: an application that drops the
//! connection on the error returns it before either. So the driver does not wait for
//! them. The background task reads the socket through a watch that follows the
//! server's messages, and the first one that ends the session (below) marks the
//! connection broken before the task even hands the error on. Whatever the
//! application called (a query, a transaction, a copy, a prepared statement, on the
//! [`Client`] or through [`GenericClient`](tokio_postgres::GenericClient)), such a
//! connection never goes back into service: the next checkout discards it, counted
//! as a reset with the server's SQLSTATE and message.
//!
//! | what the server sent or did | [`Broken`] cause, detail |
//! |---|---|
//! | an error of severity FATAL or PANIC, or with SQLSTATE class `08` or `57P01`–`57P03` | `peer_closed` (`unexpected_data` for `08P01`), `"57P01: terminating connection due to administrator command"` |
//! | a warning with SQLSTATE `57P01`–`57P03` (an immediate shutdown, a crash of another backend) | as above |
//! | end of stream | `peer_closed` |
//! | an I/O error (reset, timeout, ...) | from the errno, the error's text |
//!
//! With TLS the watch follows the decrypted stream, so it works the same.
//!
//! * **checkout ping**: an empty query (`""`), one round trip, no parsing or planning;
//! * **broken**: the server ended the session (above), [`Client::is_closed`], or the
//!   background task ended;
//! * **errors**: [`Classify`] for [`tokio_postgres::Error`] maps the SQLSTATEs that
//!   mean the session is gone to reset causes:
//!
//! | SQLSTATE | meaning | disposition |
//! |---|---|---|
//! | `53300` too_many_connections | the server is at `max_connections` | broken, `refused`, not sent |
//! | `57P01` admin_shutdown | `pg_terminate_backend`, or a fast/smart shutdown | broken, `peer_closed` |
//! | `57P02` crash_shutdown | another backend crashed, the server restarts | broken, `peer_reset` |
//! | `57P03` cannot_connect_now | the server is starting up or shutting down | broken, `refused`, not sent |
//! | `08001`, `08004` | the server rejected the connection | broken, `refused`, not sent |
//! | `08P01` protocol_violation | client and server disagree on the stream | broken, `unexpected_data` |
//! | other `08xxx` connection_exception | the session is gone | broken, `peer_closed` |
//! | any other SQLSTATE | the query failed | application error |
//!
//! "Too many connections" is a refusal rather than a transient error: the server
//! closes the session right after sending it, exactly like a full listen backlog, so
//! the pool counts it with the connect failures and backs off; the request never ran.
//! Errors without a SQLSTATE are classified by the I/O error inside them (a reset is
//! `peer_reset`, and so on); a connection that closed under a request reports
//! tokio-postgres's "connection closed", which carries no I/O cause and counts as
//! `peer_closed`.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use steadypool::{drivers::postgres::PgManager, Pool};
//!
//! let manager = PgManager::new("host=127.0.0.1 port=5432 user=app dbname=app".parse()?)?;
//! let pool = Pool::builder(manager).name("db").max_size(16).build()?;
//!
//! let conn = pool.get().await?;
//! let row = conn.query_one("SELECT 1 + 1", &[]).await?;
//! assert_eq!(row.get::<_, i32>(0), 2);
//! # Ok(()) }
//! ```
//!
//! ## Prepared statements
//!
//! [`PgConnection::prepare_cached`] prepares a statement once per connection and
//! hands out the same [`Statement`] afterwards, as deadpool-postgres does: the cache
//! lives as long as the connection, across checkouts, and goes with it when the pool
//! discards it (a replacement connection starts empty, as its server session does).
//! [`PgConnection::clear_statement_cache`] empties it, for instance after a schema
//! change that invalidates cached plans' result types.
//!
//! ```no_run
//! # async fn demo(pool: steadypool::Pool<steadypool::drivers::postgres::PgManager>) -> Result<(), Box<dyn std::error::Error>> {
//! let conn = pool.get().await?;
//! let statement = conn.prepare_cached("SELECT name FROM users WHERE id = $1").await?;
//! let row = conn.query_one(&statement, &[&42_i32]).await?;
//! # drop(row); Ok(()) }
//! ```
//!
//! ## Unix-domain sockets
//!
//! A `host` that is a directory (`host=/var/run/postgresql`, tokio-postgres's
//! [`Host::Unix`]) connects to the server's socket in it, `DIR/.s.PGSQL.PORT` as
//! libpq names it, through [`Dialer::connect_unix`] within the pool's
//! `connect_timeout`. Such a session is never encrypted, whatever `sslmode` says, as
//! with libpq: TLS is for the network, and there is none. Nor do keepalive and
//! `TCP_USER_TIMEOUT` apply (see [`Dialer::connect_unix`](crate::Dialer::connect_unix)): a
//! backend that exits closes its end at once, and the probe or the watch above finds
//! it; a missing socket file (the server is down: it removes the file as it stops)
//! counts as `refused` at connect. Unix and TCP hosts can be mixed in one list.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use steadypool::drivers::postgres::PgManager;
//! let manager = PgManager::new("host=/var/run/postgresql user=app dbname=app".parse()?)?;
//! # Ok(()) }
//! ```
//!
//! ## TLS
//!
//! [`PgManager::with_tls`] takes any tokio-postgres TLS connector ([`MakeTlsConnect`]);
//! the TLS handshake runs over the pool's socket, and the probe still watches the TCP
//! connection underneath. With the `tls` feature, steadypool brings one over rustls
//! (ring provider, no OpenSSL): [`PgTls`](crate::drivers::tls::PgTls), which verifies
//! the server's certificate for the host name as its rustls config says (libpq's
//! `verify-full`); `sslmode=require` makes the session TLS or nothing:
//!
//! ```no_run
//! # #[cfg(feature = "tls")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use steadypool::drivers::postgres::PgManager;
//! use steadypool::drivers::tls::{rustls, PgTls};
//!
//! # let roots = rustls::RootCertStore::empty();
//! let config = rustls::ClientConfig::builder()
//!     .with_root_certificates(roots)
//!     .with_no_client_auth();
//! let tls = PgTls::new(Arc::new(config));
//! let manager = PgManager::with_tls("host=db.internal user=app sslmode=require".parse()?, tls)?;
//! # Ok(()) }
//! # #[cfg(not(feature = "tls"))] fn main() {}
//! ```

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
#[cfg(unix)]
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::{Client, Config, NoTls, Statement};

use super::watch::{Fate, Scan, Watched};
use crate::cause::{Classify, Disposition, ResetCause, Sent};
use crate::classify::{classify_source_chain, permanent_in_source_chain};
use crate::dial::{Address, DialError, Dialer};
use crate::manager::{Broken, Manager};
use crate::probe::SocketRef;

/// The port PostgreSQL listens on when the configuration names none.
const DEFAULT_PORT: u16 = 5432;

/// One server to try.
#[derive(Debug, Clone)]
enum Target {
    /// Where to dial, and the name TLS verifies.
    Tcp { addr: Address, tls_name: String },
    /// The server's socket file.
    #[cfg(unix)]
    Unix(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { addr, .. } => addr.fmt(f),
            #[cfg(unix)]
            Target::Unix(path) => path.display().fmt(f),
        }
    }
}

/// Opens PostgreSQL connections on the pool's sockets. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct PgManager<T = NoTls> {
    config: Config,
    targets: Vec<Target>,
    tls: T,
}

impl PgManager<NoTls> {
    /// A manager for `config`, without TLS.
    ///
    /// # Errors
    /// [`PgError::Config`] when the configuration names no host or mismatched lists of
    /// hosts,
    /// addresses and ports.
    pub fn new(config: Config) -> Result<Self, PgError> {
        PgManager::with_tls(config, NoTls)
    }
}

impl<T> PgManager<T> {
    /// A manager for `config`, with `tls` for the servers that use it (as
    /// `sslmode` in `config` says).
    ///
    /// # Errors
    /// As [`PgManager::new`].
    pub fn with_tls(config: Config, tls: T) -> Result<Self, PgError> {
        let targets = targets(&config)?;
        Ok(PgManager {
            config,
            targets,
            tls,
        })
    }

    /// The configuration connections are opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// The servers `config` names, in order, as tokio-postgres would try them: `hostaddr`
/// (when given) is dialed, `host` is the name TLS verifies, or the directory of a
/// Unix-domain socket.
fn targets(config: &Config) -> Result<Vec<Target>, PgError> {
    let hosts = config.get_hosts();
    let hostaddrs = config.get_hostaddrs();
    let ports = config.get_ports();
    if !hosts.is_empty() && !hostaddrs.is_empty() && hosts.len() != hostaddrs.len() {
        return Err(PgError::Config(format!(
            "{} hosts but {} hostaddrs: give one address per host",
            hosts.len(),
            hostaddrs.len()
        )));
    }
    let count = hosts.len().max(hostaddrs.len());
    if ports.len() > 1 && ports.len() != count {
        return Err(PgError::Config(format!(
            "{} ports for {count} hosts: give one port, or one per host",
            ports.len()
        )));
    }
    if count == 0 {
        return Err(PgError::Config(
            "no host: set host to a name, an IP address or a Unix socket directory, or set hostaddr"
                .to_owned(),
        ));
    }
    let mut targets = Vec::with_capacity(count);
    for i in 0..count {
        let port = ports
            .get(i)
            .or_else(|| ports.first())
            .copied()
            .unwrap_or(DEFAULT_PORT);
        let target = match (hostaddrs.get(i), hosts.get(i)) {
            (Some(ip), host) => Target::Tcp {
                addr: Address::Socket((*ip, port).into()),
                tls_name: match host {
                    Some(Host::Tcp(name)) => name.clone(),
                    _ => String::new(),
                },
            },
            (None, Some(Host::Tcp(name))) => Target::Tcp {
                addr: Address::from((name.as_str(), port)),
                tls_name: name.clone(),
            },
            #[cfg(unix)]
            (None, Some(Host::Unix(dir))) => Target::Unix(dir.join(format!(".s.PGSQL.{port}"))),
            // `count` is the longer list's length: one of them has an entry.
            (None, None) => continue,
        };
        targets.push(target);
    }
    Ok(targets)
}

/// A pooled PostgreSQL connection: dereferences to the [`Client`].
///
/// Its background task (which owns the socket) ends when the connection is dropped;
/// the pool's duplicate of the socket descriptor goes with it.
pub struct PgConnection {
    client: Client,
    socket: socket2::Socket,
    driver: JoinHandle<()>,
    fate: Fate,
    /// Statements prepared through [`PgConnection::prepare_cached`], by query text.
    /// Locked only to look up or insert, never across an await.
    statements: Mutex<HashMap<String, Statement>>,
}

impl PgConnection {
    fn new(client: Client, socket: socket2::Socket, driver: JoinHandle<()>, fate: Fate) -> Self {
        PgConnection {
            client,
            socket,
            driver,
            fate,
            statements: Mutex::default(),
        }
    }

    /// `query` prepared on this connection: by the server on the first call, from the
    /// connection's cache on every later one (see the [module
    /// docs](self#prepared-statements)).
    ///
    /// # Errors
    /// The server's error preparing it (a syntax error, an unknown table, ...), or a
    /// broken connection; failures are not cached.
    pub async fn prepare_cached(&self, query: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.cache().get(query) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(query).await?;
        self.cache().insert(query.to_owned(), statement.clone());
        Ok(statement)
    }

    /// How many statements [`PgConnection::prepare_cached`] holds.
    pub fn cached_statements(&self) -> usize {
        self.cache().len()
    }

    /// Forgets every cached statement; the server deallocates each one as its last
    /// [`Statement`] handle is dropped.
    pub fn clear_statement_cache(&self) {
        self.cache().clear();
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Statement>> {
        // Held only for one lookup, insert or clear: a panic elsewhere while it was
        // held leaves no half-done change, so a poisoned cache is still usable.
        self.statements
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The tokio-postgres client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the session is over: the server ended it (see the [module
    /// docs](self#sessions-the-server-ended)), the client is closed, or its background
    /// task ended.
    pub fn is_closed(&self) -> bool {
        self.fate.get().is_some() || self.client.is_closed() || self.driver.is_finished()
    }

    /// Why the session is over, if it is.
    fn ended(&self) -> Option<Broken> {
        if let Some(broken) = self.fate.get() {
            return Some(broken.clone());
        }
        // The task closes the client as it stops, and records why just after.
        (self.client.is_closed() || self.driver.is_finished()).then(|| {
            Broken::new(ResetCause::PeerClosed).with_detail("the session's connection task ended")
        })
    }
}

impl Deref for PgConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PgConnection {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl<T> Manager for PgManager<T>
where
    T: MakeTlsConnect<TcpStream> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<TcpStream>>::Future: Send,
{
    type Connection = PgConnection;
    type Error = PgError;

    async fn connect(&self, dialer: &Dialer) -> Result<PgConnection, PgError> {
        let mut last = None;
        for target in &self.targets {
            let failed = match target {
                Target::Tcp { addr, tls_name } => match dialer.connect(addr).await {
                    Ok(stream) => return self.start_session(stream, tls_name).await,
                    Err(e) => e,
                },
                #[cfg(unix)]
                Target::Unix(path) => match dialer.connect_unix(path).await {
                    Ok(stream) => return self.start_unix_session(stream).await,
                    Err(e) => e,
                },
            };
            last = Some(failed);
        }
        Err(match last {
            Some(e) => PgError::Dial(e),
            None => PgError::Config("no host".to_owned()),
        })
    }

    fn socket<'a>(&self, conn: &'a PgConnection) -> Option<SocketRef<'a>> {
        Some(SocketRef::Raw(super::borrow_raw(&conn.socket)))
    }

    async fn ping(&self, conn: &mut PgConnection) -> Result<(), PgError> {
        Ok(conn.client.batch_execute("").await?)
    }

    fn target(&self) -> Option<String> {
        let first = self.targets.first()?;
        Some(format!("postgres://{first}"))
    }

    fn broken(&self, conn: &PgConnection) -> Option<Broken> {
        conn.ended()
    }
}

impl<T> PgManager<T>
where
    T: MakeTlsConnect<TcpStream> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<TcpStream>>::Future: Send,
{
    async fn start_session(
        &self,
        stream: TcpStream,
        tls_name: &str,
    ) -> Result<PgConnection, PgError> {
        let socket = socket2::SockRef::from(&stream)
            .try_clone()
            .map_err(PgError::Socket)?;
        let fate = Fate::default();
        let stream = Watched::new(stream, PgScan::default(), fate.clone());
        // tokio-postgres asks a TLS connector whether it can connect at all, through
        // a method only its own `NoTls` answers (no): with `sslmode=prefer`, the
        // default, it then asks the server for nothing. The watching connector below
        // cannot pass that answer on, so `NoTls` is handed over as it is.
        let (client, driver) = if TypeId::of::<T>() == TypeId::of::<NoTls>() {
            let (client, connection) = self.config.connect_raw(stream, NoTls).await?;
            (client, spawn_session(connection, fate.clone()))
        } else {
            let tls = self
                .tls
                .clone()
                .make_tls_connect(tls_name)
                .map_err(|e| PgError::Tls(e.into()))?;
            let (client, connection) = self.config.connect_raw(stream, WatchTls(tls)).await?;
            (client, spawn_session(connection, fate.clone()))
        };
        Ok(PgConnection::new(client, socket, driver, fate))
    }
}

impl<T> PgManager<T> {
    /// Starts a session on a Unix-domain socket: in the clear, as libpq does.
    #[cfg(unix)]
    async fn start_unix_session(
        &self,
        stream: tokio::net::UnixStream,
    ) -> Result<PgConnection, PgError> {
        let socket = socket2::SockRef::from(&stream)
            .try_clone()
            .map_err(PgError::Socket)?;
        let fate = Fate::default();
        let stream = Watched::new(stream, PgScan::default(), fate.clone());
        // `sslmode=require` would otherwise fail: no TLS connector speaks over this
        // socket, and there is no network to protect.
        let mut config = self.config.clone();
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        let (client, connection) = config.connect_raw(stream, NoTls).await?;
        let driver = spawn_session(connection, fate.clone());
        Ok(PgConnection::new(client, socket, driver, fate))
    }
}

/// Runs a session's connection task; records why it ended when the watch did not.
fn spawn_session<F>(connection: F, fate: Fate) -> JoinHandle<()>
where
    F: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            let described = describe(&err);
            tracing::debug!(error = %described, "postgres session ended");
            let cause = match err.classify() {
                Disposition::Broken { cause, .. } => cause,
                Disposition::Application | Disposition::Transient => ResetCause::Other,
            };
            fate.record(Broken::new(cause).with_detail(described));
        }
    })
}

/// The SSLRequest message: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// The longest error or notice body kept for reading: the fields that matter
/// (severity, SQLSTATE, message) come first, and a server's messages are short.
const MAX_NOTICE: usize = 4096;

/// Follows the server's side of the protocol (a type byte and a length per message)
/// to find, among the messages, an error or warning that ends the session. Only
/// their bodies are kept; every other message is skipped by its length.
#[derive(Debug, Default)]
struct PgScan {
    /// The current message's type and length, as far as they came.
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message still to come.
    body_left: usize,
    /// The body of an error or notice response, as it arrives.
    notice: Option<Vec<u8>>,
    /// The client's first bytes, as far as needed to recognise an SSLRequest.
    opening: [u8; 8],
    opening_len: usize,
    /// The server owes a one-byte answer to an SSLRequest, before any message.
    ssl_answer: bool,
}

impl Scan for PgScan {
    fn wrote(&mut self, bytes: &[u8]) {
        if self.opening_len == SSL_REQUEST.len() {
            return;
        }
        let take = bytes.len().min(SSL_REQUEST.len() - self.opening_len);
        self.opening[self.opening_len..self.opening_len + take].copy_from_slice(&bytes[..take]);
        self.opening_len += take;
        self.ssl_answer = self.opening == SSL_REQUEST;
    }

    fn read(&mut self, mut bytes: &[u8]) -> Option<Broken> {
        if self.ssl_answer && !bytes.is_empty() {
            // 'N' (no TLS) and the session goes on in the clear; after 'S' this
            // stream is handed to the TLS connector and the watch goes with it.
            self.ssl_answer = false;
            bytes = &bytes[1..];
        }
        let mut ended = None;
        while !bytes.is_empty() {
            if self.header_len < self.header.len() {
                let take = bytes.len().min(self.header.len() - self.header_len);
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&bytes[..take]);
                self.header_len += take;
                bytes = &bytes[take..];
                if self.header_len < self.header.len() {
                    break;
                }
                let [kind, length @ ..] = self.header;
                // The length counts itself.
                self.body_left = (u32::from_be_bytes(length) as usize).saturating_sub(4);
                self.notice = matches!(kind, b'E' | b'N').then(Vec::new);
            } else {
                let take = bytes.len().min(self.body_left);
                if let Some(body) = &mut self.notice {
                    let room = MAX_NOTICE.saturating_sub(body.len());
                    body.extend_from_slice(&bytes[..take.min(room)]);
                }
                self.body_left -= take;
                bytes = &bytes[take..];
            }
            if self.header_len == self.header.len() && self.body_left == 0 {
                if let Some(body) = self.notice.take() {
                    ended = ended.or_else(|| session_ending(self.header[0], &body));
                }
                self.header_len = 0;
            }
        }
        ended
    }
}

/// Whether an error (`E`) or notice (`N`) response with this body ends the session,
/// and why.
fn session_ending(kind: u8, body: &[u8]) -> Option<Broken> {
    let (mut localized, mut severity, mut code, mut message) = (None, None, None, None);
    // Fields: a type byte and a NUL-terminated string each, then a NUL.
    for field in body.split(|&b| b == 0) {
        let Some((&tag, text)) = field.split_first() else {
            break;
        };
        match tag {
            b'S' => localized = Some(text),
            b'V' => severity = Some(text),
            b'C' => code = Some(text),
            b'M' => message = Some(text),
            _ => {}
        }
    }
    let code = String::from_utf8_lossy(code?);
    let severity = severity.or(localized).unwrap_or_default();
    let fatal = kind == b'E' && matches!(severity, b"FATAL" | b"PANIC");
    let session_over =
        matches!(&*code, "57P01" | "57P02" | "57P03") || (kind == b'E' && code.starts_with("08"));
    if !fatal && !session_over {
        return None;
    }
    let cause = if code == "08P01" {
        ResetCause::UnexpectedData
    } else {
        ResetCause::PeerClosed
    };
    let message = String::from_utf8_lossy(message.unwrap_or_default());
    Some(Broken::new(cause).with_detail(format!("{code}: {message}")))
}

/// The user's TLS connector, its stream watched: the watch moves from the socket to
/// the decrypted stream, where the server's messages can be read.
struct WatchTls<C>(C);

impl<C: TlsConnect<TcpStream>> TlsConnect<Watched<TcpStream, PgScan>> for WatchTls<C> {
    type Stream = Watched<C::Stream, PgScan>;
    type Error = C::Error;
    type Future = Handshake<C::Future>;

    fn connect(self, stream: Watched<TcpStream, PgScan>) -> Handshake<C::Future> {
        let (stream, fate) = stream.into_parts();
        Handshake {
            tls: Box::pin(self.0.connect(stream)),
            fate,
        }
    }
}

/// The TLS handshake of [`WatchTls`].
struct Handshake<F> {
    tls: Pin<Box<F>>,
    fate: Fate,
}

impl<F, S, E> Future for Handshake<F>
where
    F: Future<Output = Result<S, E>>,
{
    type Output = Result<Watched<S, PgScan>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let stream = ready!(self.tls.as_mut().poll(cx))?;
        Poll::Ready(Ok(Watched::new(
            stream,
            PgScan::default(),
            self.fate.clone(),
        )))
    }
}

impl<S: TlsStream + Unpin> TlsStream for Watched<S, PgScan> {
    fn channel_binding(&self) -> ChannelBinding {
        self.get_ref().channel_binding()
    }
}

/// Why a PostgreSQL connection could not be opened or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The TCP connection could not be opened.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The server or the protocol reported an error.
    #[error("postgres: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The configuration cannot be used with the pool.
    #[error("postgres configuration: {0}")]
    Config(String),
    /// The TLS connector could not be set up for the server's name.
    #[error("postgres TLS setup: {0}")]
    Tls(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The socket could not be duplicated for probing (out of descriptors?).
    #[error("could not duplicate the socket for probing: {0}")]
    Socket(#[source] std::io::Error),
}

impl Classify for PgError {
    fn classify(&self) -> Disposition {
        match self {
            PgError::Dial(e) => e.classify(),
            PgError::Postgres(e) => e.classify(),
            PgError::Socket(_) => Disposition::Broken {
                cause: ResetCause::Other,
                sent: Sent::No,
            },
            PgError::Config(_) | PgError::Tls(_) => Disposition::Application,
        }
    }

    /// A configuration the pool cannot use, or a server that refused the session
    /// for good (see [`tokio_postgres::Error`]'s answer).
    fn is_permanent(&self) -> bool {
        match self {
            PgError::Postgres(e) => e.is_permanent(),
            PgError::Config(_) | PgError::Tls(_) => true,
            PgError::Dial(_) | PgError::Socket(_) => false,
        }
    }
}

impl Classify for tokio_postgres::Error {
    fn classify(&self) -> Disposition {
        if let Some(code) = self.code() {
            return classify_sqlstate(code).unwrap_or(Disposition::Application);
        }
        if self.is_closed() {
            return Disposition::Broken {
                cause: ResetCause::PeerClosed,
                sent: Sent::Maybe,
            };
        }
        classify_source_chain(self).unwrap_or(Disposition::Application)
    }

    /// The server refused these credentials (SQLSTATE class 28: a wrong password, a
    /// role that does not exist or may not log in, no `pg_hba.conf` entry) or this
    /// database (3D000), or the TLS handshake was refused for good. Waiting does not
    /// change any of them; "too many connections" and "starting up" are not here.
    fn is_permanent(&self) -> bool {
        match self.code() {
            Some(code) => code.code().starts_with("28") || code.code() == "3D000",
            None => permanent_in_source_chain(self),
        }
    }
}

/// The disposition of the SQLSTATEs that end a session; `None` for query errors.
fn classify_sqlstate(code: &SqlState) -> Option<Disposition> {
    let broken = |cause, sent| Some(Disposition::Broken { cause, sent });
    match code.code() {
        "53300" | "57P03" | "08001" | "08004" => broken(ResetCause::Refused, Sent::No),
        "57P01" => broken(ResetCause::PeerClosed, Sent::Maybe),
        "57P02" => broken(ResetCause::PeerReset, Sent::Maybe),
        "08P01" => broken(ResetCause::UnexpectedData, Sent::Maybe),
        c if c.starts_with("08") => broken(ResetCause::PeerClosed, Sent::Maybe),
        _ => None,
    }
}

/// What an operator needs from a tokio-postgres error: its `Display` alone says only
/// "db error" for everything the server reports.
fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let hint = match db.code().code() {
            "53300" => " (too many connections)",
            "57P01" => " (terminated by an administrator, or the server is shutting down)",
            "57P02" => " (the server is restarting after a crash)",
            "57P03" => " (the server is starting up or shutting down)",
            _ => "",
        };
        return format!(
            "{} {}: {}{hint}",
            db.severity(),
            db.code().code(),
            db.message()
        );
    }
    match std::error::Error::source(err) {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn session_ending_sqlstates_map_to_causes_and_query_errors_stay_application() {
        let cases = [
            (
                SqlState::TOO_MANY_CONNECTIONS,
                Some((ResetCause::Refused, Sent::No)),
            ),
            (
                SqlState::ADMIN_SHUTDOWN,
                Some((ResetCause::PeerClosed, Sent::Maybe)),
            ),
            (
                SqlState::CRASH_SHUTDOWN,
                Some((ResetCause::PeerReset, Sent::Maybe)),
            ),
            (
                SqlState::CANNOT_CONNECT_NOW,
                Some((ResetCause::Refused, Sent::No)),
            ),
            (
                SqlState::CONNECTION_FAILURE,
                Some((ResetCause::PeerClosed, Sent::Maybe)),
            ),
            (
                SqlState::PROTOCOL_VIOLATION,
                Some((ResetCause::UnexpectedData, Sent::Maybe)),
            ),
            (
                SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                Some((ResetCause::Refused, Sent::No)),
            ),
            (SqlState::UNIQUE_VIOLATION, None),
            (SqlState::SYNTAX_ERROR, None),
            (SqlState::T_R_SERIALIZATION_FAILURE, None),
            (SqlState::QUERY_CANCELED, None),
        ];
        for (code, expected) in cases {
            let expected = expected.map(|(cause, sent)| Disposition::Broken { cause, sent });
            assert_eq!(classify_sqlstate(&code), expected, "{}", code.code());
        }
    }

    /// A backend message: its type, its length (counting itself), its body.
    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    /// An error (`E`) or notice (`N`) response with these fields.
    fn response(kind: u8, severity: &str, code: &str, text: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (tag, value) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', text),
        ] {
            body.push(tag);
            body.extend_from_slice(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        message(kind, &body)
    }

    /// What a scan of `bytes` finds, fed in chunks of `chunk` bytes.
    fn scan_in_chunks(bytes: &[u8], chunk: usize) -> Option<Broken> {
        let mut scan = PgScan::default();
        let mut found = None;
        for part in bytes.chunks(chunk) {
            found = found.or(scan.read(part));
        }
        found
    }

    #[test]
    fn a_fatal_error_is_found_however_the_reads_split_the_stream() {
        let mut stream = message(b'T', &[0; 27]);
        stream.extend(message(b'D', b"\0\x01\0\0\0\x04FATA"));
        stream.extend(message(b'C', b"SELECT 1\0"));
        stream.extend(message(b'Z', b"I"));
        stream.extend(response(
            b'E',
            "FATAL",
            "57P01",
            "terminating connection due to administrator command",
        ));
        let expected = Broken::new(ResetCause::PeerClosed)
            .with_detail("57P01: terminating connection due to administrator command");
        for chunk in 1..=stream.len() {
            assert_eq!(
                scan_in_chunks(&stream, chunk),
                Some(expected.clone()),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn query_errors_and_notices_leave_the_session_alone() {
        let mut stream = response(
            b'E',
            "ERROR",
            "42P01",
            "relation \"no_such_table\" does not exist",
        );
        stream.extend(message(b'Z', b"I"));
        stream.extend(response(
            b'N',
            "NOTICE",
            "00000",
            "FATAL is only a word here",
        ));
        stream.extend(response(b'N', "WARNING", "01000", "08006 neither"));
        stream.extend(message(b'Z', b"I"));
        for chunk in [1, 3, stream.len()] {
            assert_eq!(scan_in_chunks(&stream, chunk), None, "chunk {chunk}");
        }
    }

    #[test]
    fn shutdown_warnings_and_connection_exceptions_end_the_session() {
        let crash = response(
            b'N',
            "WARNING",
            "57P02",
            "terminating connection because of crash of another server process",
        );
        assert_eq!(
            scan_in_chunks(&crash, 7).map(|b| b.cause),
            Some(ResetCause::PeerClosed)
        );
        let desync = response(b'E', "ERROR", "08P01", "invalid frontend message type 0");
        assert_eq!(
            scan_in_chunks(&desync, 7),
            Some(
                Broken::new(ResetCause::UnexpectedData)
                    .with_detail("08P01: invalid frontend message type 0")
            )
        );
    }

    #[test]
    fn the_answer_to_an_ssl_request_is_not_read_as_a_message() {
        let fatal = response(b'E', "FATAL", "57P01", "terminating connection");
        let mut scan = PgScan::default();
        scan.wrote(&SSL_REQUEST[..3]);
        scan.wrote(&SSL_REQUEST[3..]);
        assert_eq!(scan.read(b"N"), None);
        assert!(scan.read(&fatal).is_some());

        // Without an SSLRequest, a first 'N' is a notice's type byte.
        let mut scan = PgScan::default();
        scan.wrote(b"\0\0\0\x08\0\x03\0\0");
        let notice = response(b'N', "NOTICE", "00000", "hello");
        assert_eq!(scan.read(&notice), None);
        assert!(scan.read(&fatal).is_some());
    }

    /// A stand-in for a TLS connector that encrypts nothing: the session goes through
    /// the same steps as with TLS, and its bytes stay readable to the fake server.
    #[derive(Debug, Clone)]
    struct Cleartext;

    struct CleartextStream(TcpStream);

    impl MakeTlsConnect<TcpStream> for Cleartext {
        type Stream = CleartextStream;
        type TlsConnect = Cleartext;
        type Error = io::Error;

        fn make_tls_connect(&mut self, _: &str) -> io::Result<Cleartext> {
            Ok(Cleartext)
        }
    }

    impl TlsConnect<TcpStream> for Cleartext {
        type Stream = CleartextStream;
        type Error = io::Error;
        type Future = std::future::Ready<io::Result<CleartextStream>>;

        fn connect(self, stream: TcpStream) -> Self::Future {
            std::future::ready(Ok(CleartextStream(stream)))
        }
    }

    impl tokio::io::AsyncRead for CleartextStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for CleartextStream {
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

    impl TlsStream for CleartextStream {
        fn channel_binding(&self) -> ChannelBinding {
            ChannelBinding::none()
        }
    }

    /// A server that speaks just enough PostgreSQL for one session: it answers an
    /// SSLRequest with `ssl_answer`, lets the client in, and answers its first query
    /// with a FATAL error, then keeps the socket open until `release` fires: only the
    /// error says the session is over. It returns the client's first 8 bytes.
    async fn fatal_after_one_query(
        ssl_answer: u8,
        release: tokio::sync::oneshot::Receiver<()>,
    ) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut first = [0u8; 8];
            stream.read_exact(&mut first).await.unwrap();
            let mut startup_len = u32::from_be_bytes([first[0], first[1], first[2], first[3]]);
            if first == SSL_REQUEST {
                stream.write_all(&[ssl_answer]).await.unwrap();
                let mut len = [0u8; 4];
                stream.read_exact(&mut len).await.unwrap();
                startup_len = u32::from_be_bytes(len);
                let mut rest = vec![0u8; startup_len as usize - 4];
                stream.read_exact(&mut rest).await.unwrap();
            } else {
                let mut rest = vec![0u8; startup_len as usize - 8];
                stream.read_exact(&mut rest).await.unwrap();
            }
            let mut hello = message(b'R', &0u32.to_be_bytes());
            hello.extend(message(b'Z', b"I"));
            stream.write_all(&hello).await.unwrap();
            let mut header = [0u8; 5];
            stream.read_exact(&mut header).await.unwrap();
            assert_eq!(header[0], b'Q');
            let mut query =
                vec![
                    0u8;
                    u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4
                ];
            stream.read_exact(&mut query).await.unwrap();
            let goodbye = response(
                b'E',
                "FATAL",
                "57P01",
                "terminating connection due to administrator command",
            );
            stream.write_all(&goodbye).await.unwrap();
            let _ = release.await;
            first.to_vec()
        });
        (port, server)
    }

    async fn session_ended_by_a_fatal_error<T>(manager: PgManager<T>, ssl_answer: u8) -> Vec<u8>
    where
        T: MakeTlsConnect<TcpStream> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<TcpStream>>::Future: Send,
    {
        let (release, held) = tokio::sync::oneshot::channel();
        let (port, server) = fatal_after_one_query(ssl_answer, held).await;
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let conn = manager.start_session(stream, "localhost").await.unwrap();
        assert_eq!(manager.broken(&conn), None);
        let err = conn.simple_query("SELECT 1").await.unwrap_err();
        assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");
        // The socket is still open and the client does not know: the watch does.
        assert!(!conn.client().is_closed());
        assert_eq!(
            manager.broken(&conn),
            Some(
                Broken::new(ResetCause::PeerClosed)
                    .with_detail("57P01: terminating connection due to administrator command")
            )
        );
        let _ = release.send(());
        server.await.unwrap()
    }

    fn config(sslmode: tokio_postgres::config::SslMode) -> Config {
        let mut config = Config::new();
        config.host("127.0.0.1").user("app").ssl_mode(sslmode);
        config
    }

    #[tokio::test]
    async fn the_watch_reads_the_servers_goodbye_with_tls_without_and_when_tls_is_declined() {
        use tokio_postgres::config::SslMode;

        let plain = PgManager::new(config(SslMode::Prefer)).unwrap();
        let first = session_ended_by_a_fatal_error(plain, b'N').await;
        assert_ne!(first, SSL_REQUEST, "NoTls asks for no TLS");

        let tls = PgManager::with_tls(config(SslMode::Require), Cleartext).unwrap();
        let first = session_ended_by_a_fatal_error(tls, b'S').await;
        assert_eq!(first, SSL_REQUEST);

        let declined = PgManager::with_tls(config(SslMode::Prefer), Cleartext).unwrap();
        let first = session_ended_by_a_fatal_error(declined, b'N').await;
        assert_eq!(first, SSL_REQUEST);
    }

    #[test]
    fn config_without_a_host_is_a_clear_error() {
        let none: Config = "user=app".parse().unwrap();
        let err = PgManager::new(none).unwrap_err();
        assert!(err.to_string().contains("no host"), "{err}");
        let mismatched: Config = "host=a,b port=1,2,3".parse().unwrap();
        let err = PgManager::new(mismatched).unwrap_err();
        assert!(err.to_string().contains("3 ports for 2 hosts"), "{err}");
    }

    #[test]
    fn targets_follow_hosts_hostaddrs_and_ports() {
        let config: Config = "host=db1,db2 hostaddr=127.0.0.1,127.0.0.2 port=6000"
            .parse()
            .unwrap();
        let found = targets(&config).unwrap();
        let addrs: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(addrs, ["127.0.0.1:6000", "127.0.0.2:6000"]);
        assert!(matches!(&found[1], Target::Tcp { tls_name, .. } if tls_name == "db2"));
        let default_port: Config = "host=localhost".parse().unwrap();
        assert_eq!(
            targets(&default_port).unwrap()[0].to_string(),
            "localhost:5432"
        );
        let mixed: Config = "host=/run/postgresql,db1 port=5433".parse().unwrap();
        let found = targets(&mixed).unwrap();
        let named: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(named, ["/run/postgresql/.s.PGSQL.5433", "db1:5433"]);
        assert!(matches!(found[0], Target::Unix(_)));
        let manager = PgManager::new(mixed).unwrap();
        assert_eq!(
            manager.target().as_deref(),
            Some("postgres:///run/postgresql/.s.PGSQL.5433")
        );
    }

    #[test]
    fn dial_failures_keep_their_cause_and_were_never_sent() {
        let err = PgError::from(DialError::Connect {
            addr: "127.0.0.1:1".into(),
            source: io::ErrorKind::ConnectionRefused.into(),
        });
        assert_eq!(
            err.classify(),
            Disposition::Broken {
                cause: ResetCause::Refused,
                sent: Sent::No
            }
        );
    }
}
