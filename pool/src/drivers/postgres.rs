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
//! those bytes is found as end of stream or through `Client::is_closed`.
//!
//! * **checkout ping**: an empty query (`""`), one round trip, no parsing or planning;
//! * **broken**: [`Client::is_closed`], or the background task ended;
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
//! ## TLS
//!
//! [`PgManager::with_tls`] takes any tokio-postgres TLS connector ([`MakeTlsConnect`]);
//! the TLS handshake runs over the pool's socket, and the probe still watches the TCP
//! connection underneath. With the `tokio-postgres-rustls` crate (not a dependency of
//! steadypool, and not exercised by its tests, which have no TLS server):
//!
//! ```ignore
//! let tls = tokio_postgres_rustls::MakeRustlsConnect::new(rustls_client_config);
//! let manager = PgManager::with_tls("host=db.internal user=app sslmode=require".parse()?, tls)?;
//! ```

use std::fmt;
use std::ops::{Deref, DerefMut};

use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Config, NoTls};

use crate::cause::{Classify, Disposition, ResetCause, Sent, classify_source_chain};
use crate::dial::{Address, DialError, Dialer};
use crate::manager::Manager;
use crate::probe::SocketRef;

/// The port PostgreSQL listens on when the configuration names none.
const DEFAULT_PORT: u16 = 5432;

/// One server to try: where to dial, and the name TLS verifies.
#[derive(Debug, Clone)]
struct Target {
    addr: Address,
    tls_name: String,
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
    /// [`PgError::Config`] when the configuration names no TCP host (Unix-domain
    /// sockets are not pooled through the dialer) or mismatched lists of hosts,
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
/// (when given) is dialed, `host` is the name TLS verifies.
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
    let mut targets = Vec::with_capacity(count);
    for i in 0..count {
        let port = ports
            .get(i)
            .or_else(|| ports.first())
            .copied()
            .unwrap_or(DEFAULT_PORT);
        let name = match hosts.get(i) {
            Some(Host::Tcp(name)) => Some(name.clone()),
            #[cfg(unix)]
            Some(Host::Unix(_)) => None,
            None => None,
        };
        let addr = match (hostaddrs.get(i), &name) {
            (Some(ip), _) => Address::Socket((*ip, port).into()),
            (None, Some(name)) => Address::from((name.as_str(), port)),
            // A Unix-domain socket: the pool dials TCP only.
            (None, None) => continue,
        };
        targets.push(Target {
            addr,
            tls_name: name.unwrap_or_default(),
        });
    }
    if targets.is_empty() {
        return Err(PgError::Config(
            "no TCP host: set host (or hostaddr) to a name or IP address; Unix-domain sockets are not supported"
                .to_owned(),
        ));
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
}

impl PgConnection {
    /// The tokio-postgres client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the session is over: the client is closed or its background task ended.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed() || self.driver.is_finished()
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
            match dialer.connect(&target.addr).await {
                Ok(stream) => return self.start_session(stream, &target.tls_name).await,
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => PgError::Dial(e),
            None => PgError::Config("no TCP host".to_owned()),
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
        Some(format!("postgres://{}", first.addr))
    }

    fn broken(&self, conn: &PgConnection) -> Option<crate::manager::Broken> {
        conn.is_closed()
            .then(|| crate::manager::Broken::new(crate::cause::ResetCause::PeerClosed))
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
        let tls = self
            .tls
            .clone()
            .make_tls_connect(tls_name)
            .map_err(|e| PgError::Tls(e.into()))?;
        let (client, connection) = self.config.connect_raw(stream, tls).await?;
        let driver = tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %describe(&err), "postgres session ended");
            }
        });
        Ok(PgConnection {
            client,
            socket,
            driver,
        })
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

    #[test]
    fn config_without_a_tcp_host_is_a_clear_error() {
        let unix: Config = "host=/run/postgresql user=app".parse().unwrap();
        let err = PgManager::new(unix).unwrap_err();
        assert!(err.to_string().contains("no TCP host"), "{err}");
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
        let addrs: Vec<String> = found.iter().map(|t| t.addr.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:6000", "127.0.0.2:6000"]);
        assert_eq!(found[1].tls_name, "db2");
        let default_port: Config = "host=localhost".parse().unwrap();
        assert_eq!(
            targets(&default_port).unwrap()[0].addr.to_string(),
            "localhost:5432"
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
