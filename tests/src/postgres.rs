//! A real PostgreSQL server for one test: a fresh cluster in a scratch directory, on a
//! free loopback port, stopped and removed when dropped (also when the test panics).
//!
//! It runs as the `postgres` user (PostgreSQL refuses to run as root), so the test
//! process must be root or `postgres`; without that, or without the PostgreSQL server
//! programs (`initdb`, `pg_ctl`), [`PgServer::start`] skips the test (see
//! [`host::skip`]).
//!
//! Crash tests stop it the hard way ([`PgServer::stop_immediate`]: every backend
//! quits at once without a goodbye, then crash recovery on the next start) or gently
//! ([`PgServer::stop_fast`]), and start it again on the same port
//! ([`PgServer::restart`]).
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use steadypool_tests::postgres::PgServer;
//!
//! let Some(pg) = PgServer::start() else { return };
//! let admin = pg.connect().await;
//! admin.batch_execute("CREATE TABLE t (id int)").await.unwrap();
//! pg.stop_immediate();
//! pg.restart();
//! # }
//! ```

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tokio_postgres::{Client, Config, NoTls};

use crate::host;
use crate::tls::TestCa;

/// Where Debian installs the server programs, one directory per major version.
const DEBIAN_LIB: &str = "/usr/lib/postgresql";
/// How long `pg_ctl` may wait for the server to start or stop.
const PG_CTL_WAIT_SECS: &str = "60";
/// Tries with a new port when the one picked was taken before the server bound it.
const START_ATTEMPTS: usize = 3;

/// Settings for the server to start with.
#[derive(Debug, Clone)]
pub struct PgServerBuilder {
    max_connections: u32,
    tls: Option<TestCa>,
}

impl PgServerBuilder {
    /// The server's `max_connections` (default 50), with no slots reserved for
    /// superusers: the test's own admin connections count against it too.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Turns TLS on (`ssl = on`) with a server certificate from `ca`, for
    /// `localhost` and `127.0.0.1`. Clients may still connect without TLS.
    pub fn tls(mut self, ca: &TestCa) -> Self {
        self.tls = Some(ca.clone());
        self
    }

    /// Creates and starts the cluster; `None` (after printing `SKIPPED`) when this
    /// machine cannot run PostgreSQL.
    ///
    /// # Panics
    /// Under CI instead of skipping, and whenever a present PostgreSQL fails to start.
    pub fn start(self) -> Option<PgServer> {
        let bin = match bin_dir() {
            Some(bin) => bin,
            None => {
                host::skip(
                    "PostgreSQL server programs (initdb, pg_ctl) not found: install package postgresql",
                );
                return None;
            }
        };
        let Some((uid, gid)) = host::account("postgres") else {
            host::skip("no postgres user account to run PostgreSQL as");
            return None;
        };
        let me = fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if !host::is_root() && me.ok() != Some(uid) {
            host::skip("PostgreSQL must run as user postgres: run the tests as root");
            return None;
        }
        let dir = match host::scratch_dir("pg") {
            Ok(dir) => dir,
            Err(e) => panic!("cannot create a scratch directory for PostgreSQL: {e}"),
        };
        let mut server = PgServer {
            dir,
            bin,
            uid,
            gid,
            port: 0,
            max_connections: self.max_connections,
            tls: self.tls.is_some(),
        };
        server.init();
        if let Some(ca) = &self.tls {
            server.write_tls_files(ca);
        }
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = match host::free_port() {
                Ok(port) => port,
                Err(e) => panic!("no free port for PostgreSQL: {e}"),
            };
            match server.try_start() {
                Ok(()) => return Some(server),
                Err(log) => last = log,
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }
}

/// A running PostgreSQL cluster owned by one test. See the [module docs](self).
#[derive(Debug)]
pub struct PgServer {
    dir: PathBuf,
    bin: PathBuf,
    uid: u32,
    gid: u32,
    port: u16,
    max_connections: u32,
    tls: bool,
}

impl PgServer {
    /// A fresh server with default settings; `None` when this machine cannot run one.
    ///
    /// # Panics
    /// As [`PgServerBuilder::start`].
    pub fn start() -> Option<PgServer> {
        PgServer::builder().start()
    }

    /// Settings for a server to start.
    pub fn builder() -> PgServerBuilder {
        PgServerBuilder {
            max_connections: 50,
            tls: None,
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// A client configuration for it: user and database `postgres`, no password.
    pub fn config(&self) -> Config {
        let mut config = Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres");
        config
    }

    /// The directory of its Unix-domain socket (`-k`): the socket is
    /// `DIR/.s.PGSQL.PORT`.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// As [`PgServer::config`], over its Unix-domain socket (`host` = the directory).
    pub fn unix_config(&self) -> Config {
        let mut config = Config::new();
        config
            .host_path(self.socket_dir())
            .port(self.port)
            .user("postgres")
            .dbname("postgres");
        config
    }

    /// A plain tokio-postgres client for the test's own statements (outside any
    /// pool), its connection task spawned.
    ///
    /// # Panics
    /// When the server does not accept it.
    pub async fn connect(&self) -> Client {
        match self.try_connect().await {
            Ok(client) => client,
            Err(e) => panic!("cannot connect to the test's PostgreSQL: {e}"),
        }
    }

    /// As [`PgServer::connect`], returning the error (for example "too many clients").
    ///
    /// # Errors
    /// tokio-postgres's error.
    pub async fn try_connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config().connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Stops the server the way a crash does: `pg_ctl stop -m immediate` makes every
    /// process quit at once, and the next start runs crash recovery.
    ///
    /// # Panics
    /// When `pg_ctl` fails.
    pub fn stop_immediate(&self) {
        self.stop("immediate");
    }

    /// Stops the server cleanly: `pg_ctl stop -m fast` terminates every session
    /// (`57P01 admin_shutdown`) and shuts down.
    ///
    /// # Panics
    /// When `pg_ctl` fails.
    pub fn stop_fast(&self) {
        self.stop("fast");
    }

    /// Starts the stopped server again, on the same port and data.
    ///
    /// # Panics
    /// When it does not start.
    pub fn restart(&self) {
        if let Err(log) = self.try_start() {
            panic!("PostgreSQL did not restart: {log}");
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn as_postgres(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(&self.dir).env("LC_ALL", "C");
        if host::is_root() {
            command.uid(self.uid).gid(self.gid);
        }
        command
    }

    fn init(&self) {
        if let Err(e) = std::os::unix::fs::chown(&self.dir, Some(self.uid), Some(self.gid)) {
            panic!(
                "cannot hand {} to the postgres user: {e}",
                self.dir.display()
            );
        }
        let output = self
            .as_postgres("initdb")
            .arg("-D")
            .arg(self.data())
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .output();
        expect_success("initdb", output);
    }

    /// Writes the certificate and key where the server reads them, owned by the
    /// postgres user: the server refuses a key others can read.
    fn write_tls_files(&self, ca: &TestCa) {
        let files = match ca.write_files(&self.dir) {
            Ok(files) => files,
            Err(e) => panic!("cannot write the TLS files for PostgreSQL: {e}"),
        };
        for file in [&files.ca, &files.cert, &files.key] {
            if let Err(e) = std::os::unix::fs::chown(file, Some(self.uid), Some(self.gid)) {
                panic!("cannot hand {} to the postgres user: {e}", file.display());
            }
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let tls = if self.tls {
            format!(
                " -c ssl=on -c ssl_cert_file={0}/server.pem -c ssl_key_file={0}/server.key",
                self.dir.display()
            )
        } else {
            String::new()
        };
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c shared_buffers=16MB -c max_connections={} \
             -c superuser_reserved_connections=0{}",
            self.port,
            self.dir.display(),
            self.max_connections,
            tls
        );
        let output = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", PG_CTL_WAIT_SECS, "-l"])
            .arg(self.log_file())
            .args(["-o", &options, "start"])
            .output();
        match output {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "{}{}\n--- server log ---\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&self.log_file())
            )),
            Err(e) => Err(format!("cannot run pg_ctl: {e}")),
        }
    }

    fn stop(&self, mode: &str) {
        let output = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", PG_CTL_WAIT_SECS, "-m", mode, "stop"])
            .output();
        expect_success("pg_ctl stop", output);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // It may be stopped already; either way nothing may outlive the test.
        let _ = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", PG_CTL_WAIT_SECS, "-m", "immediate", "stop"])
            .output();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The newest installed server version's program directory, or `initdb` on `PATH`.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(DEBIAN_LIB)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let initdb = host::program("initdb")?;
    let bin = initdb.parent()?.to_path_buf();
    bin.join("pg_ctl").is_file().then_some(bin)
}

fn expect_success(what: &str, output: std::io::Result<Output>) {
    match output {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("cannot run {what}: {e}"),
    }
}

/// The last lines of a log, for a failure message.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Keeps a test's own PostgreSQL connections open, to use up `max_connections`.
#[derive(Debug, Default)]
pub struct Hogs {
    clients: Vec<Client>,
}

impl Hogs {
    /// Opens connections to `server` until it refuses one; returns how many it holds.
    pub async fn fill(server: &PgServer) -> Hogs {
        let mut clients = Vec::new();
        while let Ok(client) = server.try_connect().await {
            clients.push(client);
        }
        Hogs { clients }
    }

    /// How many connections are held.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Lets every connection go; the server sees them leave shortly after.
    pub fn release(&mut self) {
        self.clients.clear();
    }
}
