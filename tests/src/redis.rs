//! A real Redis server for one test, on a free loopback port and a Unix-domain socket
//! in a scratch directory, without persistence; killed and removed when dropped (also
//! when the test panics).
//!
//! It runs as a child process of the test (`redis-server --pidfile`, ready once the
//! pidfile appears, which Redis writes after it listens), so killing it leaves no
//! zombie behind. Without `redis-server` installed, [`RedisServer::start`] skips the
//! test (see [`host::skip`]).
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use steadypool_tests::redis::RedisServer;
//!
//! let Some(server) = RedisServer::start() else { return };
//! let mut admin = server.connect().await;
//! let _: () = redis::cmd("CONFIG").arg("SET").arg("timeout").arg("1")
//!     .query_async(&mut admin).await.unwrap();
//! server.kill();
//! server.restart();
//! # }
//! ```

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::host;
use crate::tls::{TestCa, TlsFiles};

/// How long Redis may take to start or stop.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// Tries with a new port when the one picked was taken before Redis bound it.
const START_ATTEMPTS: usize = 3;

/// A Redis server owned by one test. See the [module docs](self).
#[derive(Debug)]
pub struct RedisServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// The TLS port and the certificate files, for a server started with
    /// [`RedisServer::start_tls`].
    tls: Option<(u16, TlsFiles)>,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Starts a server; `None` (after printing `SKIPPED`) when `redis-server` is not
    /// installed.
    ///
    /// # Panics
    /// Under CI instead of skipping, and whenever an installed Redis fails to start.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with(None)
    }

    /// As [`RedisServer::start`], also listening for TLS (`--tls-port`) with a
    /// certificate from `ca`; clients need no certificate of their own. Debian's
    /// `redis-server` is built with TLS.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_tls(ca: &TestCa) -> Option<RedisServer> {
        RedisServer::start_with(Some(ca))
    }

    fn start_with(ca: Option<&TestCa>) -> Option<RedisServer> {
        let Some(bin) = host::program("redis-server") else {
            host::skip("redis-server not found: install package redis-server");
            return None;
        };
        let dir = match host::scratch_dir("redis") {
            Ok(dir) => dir,
            Err(e) => panic!("cannot create a scratch directory for Redis: {e}"),
        };
        let tls = ca.map(|ca| match ca.write_files(&dir) {
            Ok(files) => (0, files),
            Err(e) => panic!("cannot write the TLS files for Redis: {e}"),
        });
        let mut server = RedisServer {
            bin,
            dir,
            port: 0,
            tls,
            child: Mutex::new(None),
        };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = match host::free_port() {
                Ok(port) => port,
                Err(e) => panic!("no free port for Redis: {e}"),
            };
            if let Some((port, _)) = &mut server.tls {
                *port = match host::free_port() {
                    Ok(port) => port,
                    Err(e) => panic!("no free port for Redis's TLS: {e}"),
                };
            }
            match server.try_start() {
                Ok(()) => return Some(server),
                Err(log) => last = log,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Its URL, database 0.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Its TLS URL (`rediss://`), database 0, for a server started with
    /// [`RedisServer::start_tls`].
    ///
    /// # Panics
    /// For a server without TLS.
    pub fn tls_url(&self) -> String {
        match &self.tls {
            Some((port, _)) => format!("rediss://127.0.0.1:{port}/0"),
            None => panic!("this Redis was started without TLS"),
        }
    }

    /// Its Unix-domain socket (`--unixsocket`). Redis removes it on a clean shutdown
    /// ([`RedisServer::stop`]); after [`RedisServer::kill`] it stays, with nobody
    /// listening.
    pub fn unix_socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// Its URL over the Unix-domain socket, database 0.
    pub fn unix_url(&self) -> String {
        format!("redis+unix://{}", self.unix_socket().display())
    }

    /// A connection for the test's own commands (outside any pool), with no response
    /// timeout.
    ///
    /// # Panics
    /// When the server does not accept it.
    pub async fn connect(&self) -> MultiplexedConnection {
        let client = match redis::Client::open(self.url()) {
            Ok(client) => client,
            Err(e) => panic!("bad Redis URL {}: {e}", self.url()),
        };
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => conn,
            Err(e) => panic!("cannot connect to the test's Redis: {e}"),
        }
    }

    /// Kills the server with SIGKILL (a crash: every connection is reset or closed by
    /// the kernel, nothing is saved) and waits until it is gone.
    pub fn kill(&self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits until it is gone.
    ///
    /// # Panics
    /// When it has not exited within 20 s.
    pub fn stop(&self) {
        let Some(mut child) = self.child().take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let exited = host::wait_until(READY_WITHIN, || !matches!(child.try_wait(), Ok(None)));
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server ignored SIGTERM for {READY_WITHIN:?}");
        }
    }

    /// Starts the stopped or killed server again on the same port.
    ///
    /// # Panics
    /// When it does not start.
    pub fn restart(&self) {
        if let Err(log) = self.try_start() {
            panic!("redis-server did not restart: {log}");
        }
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.join("redis.pid")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn try_start(&self) -> Result<(), String> {
        self.kill();
        let _ = fs::remove_file(self.pidfile());
        let mut command = Command::new(&self.bin);
        if let Some((port, files)) = &self.tls {
            command
                .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(&files.cert)
                .arg("--tls-key-file")
                .arg(&files.key)
                .arg("--tls-ca-cert-file")
                .arg(&files.ca);
        }
        let child = command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--unixsocket")
            .arg(self.unix_socket())
            .args(["--unixsocketperm", "700"])
            .arg("--pidfile")
            .arg(self.pidfile())
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.log_file())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        *self.child() = Some(child);
        let ready = host::wait_until(READY_WITHIN, || {
            self.pidfile().exists()
                || !matches!(self.child().as_mut().map(Child::try_wait), Some(Ok(None)))
        });
        let running = matches!(self.child().as_mut().map(Child::try_wait), Some(Ok(None)));
        if ready && running && self.pidfile().exists() {
            return Ok(());
        }
        self.kill();
        Err(tail(&self.log_file()))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The last lines of a log, for a failure message.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
