//! Real HTTP servers for one test: a Node.js `http.createServer` (the script is
//! written by the fixture), or `https.createServer` with a certificate of a
//! [`TestCa`] ([`NodeServer::start_https`]), and HAProxy in front of it, each on a
//! free loopback port, killed and removed when dropped (also when the test panics).
//! Without `node` or `haproxy` installed, `start` skips the test (see
//! [`host::skip`]).
//!
//! The Node.js server answers:
//!
//! | request | answer |
//! |---|---|
//! | `GET /` | 200 `ok` |
//! | any request with an `x-request-id` header | counted per id, then as below |
//! | `POST /orders` | 201 `created` |
//! | `GET /close` | 200 with `Connection: close` |
//! | `GET /slow?ms=N` | 200 after N ms |
//! | `GET /status?code=N` | status N |
//! | `GET /stream?chunks=N&size=S&ms=P` | 200, a chunked body of N writes of S bytes, P ms apart; byte i of the body is `i % 251` |
//! | `GET /flaky?fail=N` | 503 to the first N requests with the same `x-request-id`, then 200 |
//! | `GET /end-idle` | ends every other connection: `end()`, which over TLS is a close_notify, then FIN |
//! | `GET /stats` | JSON: `{"connections": n, "handshakes": n, "requests": {"id": count, ...}}` |
//!
//! An https server answers `/stats` on a plain HTTP port of its own, so that the
//! fixture's questions cost no TLS handshake.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use std::time::Duration;
//! use steadypool_tests::http::{HaProxy, NodeServer};
//!
//! let Some(node) = NodeServer::start(Some(Duration::from_secs(1))) else { return };
//! let Some(lb) = HaProxy::start(node.port(), Duration::from_millis(800)) else { return };
//! println!("{} behind {}", node.origin(), lb.origin());
//! node.restart();
//! # }
//! ```

use std::collections::HashMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::host;
use crate::tls::TestCa;

/// How long a server may take to start listening.
const READY_WITHIN: Duration = Duration::from_secs(20);
/// Tries with a new port when the one picked was taken before the server bound it.
const START_ATTEMPTS: usize = 3;

/// The Node.js server's script; the port and the keep-alive timeout (ms, or
/// `default`) are its arguments, then, for https, the directory of `server.pem` and
/// `server.key` and the plain port of `/stats`.
const NODE_SCRIPT: &str = r#"
const http = require('http');
const https = require('https');
const fs = require('fs');
const [port, keepAlive, tlsDir, statsPort] = process.argv.slice(2);
const requests = {};
let connections = 0;
let handshakes = 0;
const open = new Set();
const handler = (req, res) => {
  const id = req.headers['x-request-id'];
  if (id !== undefined) requests[id] = (requests[id] || 0) + 1;
  const url = new URL(req.url, 'http://localhost');
  req.resume();
  req.on('end', () => {
    if (url.pathname === '/end-idle') {
      for (const socket of open) if (socket !== req.socket) socket.end();
      res.end('ended');
    } else if (url.pathname === '/stats') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ connections, handshakes, requests }));
    } else if (url.pathname === '/orders' && req.method === 'POST') {
      res.statusCode = 201;
      res.end('created');
    } else if (url.pathname === '/close') {
      res.setHeader('connection', 'close');
      res.end('bye');
    } else if (url.pathname === '/slow') {
      setTimeout(() => res.end('slow'), Number(url.searchParams.get('ms') || 0));
    } else if (url.pathname === '/stream') {
      const chunks = Number(url.searchParams.get('chunks') || 1);
      const size = Number(url.searchParams.get('size') || 1024);
      const pause = Number(url.searchParams.get('ms') || 0);
      let written = 0;
      const next = () => {
        if (written === chunks) return res.end();
        const chunk = Buffer.alloc(size);
        for (let i = 0; i < size; i++) chunk[i] = (written * size + i) % 251;
        written += 1;
        const later = () => setTimeout(next, pause);
        // Wait for the client to read when the socket's buffers are full.
        if (res.write(chunk)) later(); else res.once('drain', later);
      };
      next();
    } else if (url.pathname === '/status') {
      res.statusCode = Number(url.searchParams.get('code') || 200);
      res.end('status');
    } else if (url.pathname === '/flaky') {
      const fail = Number(url.searchParams.get('fail') || 0);
      res.statusCode = requests[id] <= fail ? 503 : 200;
      res.end(res.statusCode === 200 ? 'ok' : 'unavailable');
    } else {
      res.end('ok');
    }
  });
};
let server;
if (tlsDir !== undefined) {
  const options = {
    cert: fs.readFileSync(tlsDir + '/server.pem'),
    key: fs.readFileSync(tlsDir + '/server.key'),
  };
  server = https.createServer(options, handler);
  server.on('secureConnection', () => { handshakes += 1; });
  http.createServer(handler).listen(Number(statsPort), '127.0.0.1');
} else {
  server = http.createServer(handler);
}
server.on('connection', () => { connections += 1; });
// The sockets the application reads: TLS sockets for https, so that `end()` sends
// a close_notify before the FIN.
server.on(tlsDir !== undefined ? 'secureConnection' : 'connection', (socket) => {
  open.add(socket);
  socket.on('close', () => open.delete(socket));
});
if (keepAlive !== 'default') server.keepAliveTimeout = Number(keepAlive);
if (process.env.MAX_REQUESTS_PER_SOCKET !== undefined) {
  server.maxRequestsPerSocket = Number(process.env.MAX_REQUESTS_PER_SOCKET);
}
server.listen(Number(port), '127.0.0.1');
"#;

/// A child process on a port, killed when dropped.
#[derive(Debug)]
struct Process {
    child: Mutex<Option<Child>>,
}

impl Process {
    fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut child) = child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `command` and waits until `port` accepts connections; the process's
/// stderr on failure.
fn spawn_listening(mut command: Command, port: u16) -> Result<Child, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut exited = None;
    let ready = host::wait_until(READY_WITHIN, || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        host::listening_at(addr)
    });
    if ready && exited.is_none() {
        return Ok(child);
    }
    let _ = child.kill();
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    Err(format!(
        "{command:?} did not listen on {port} ({}): {}",
        exited.map_or("timed out".to_owned(), |s| s.to_string()),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// A Node.js HTTP server owned by one test. See the [module docs](self).
#[derive(Debug)]
pub struct NodeServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// The plain port of `/stats` of an https server.
    stats_port: Option<u16>,
    keep_alive: Option<Duration>,
    /// Node's `maxRequestsPerSocket`: its last response on a connection says
    /// `Connection: close`.
    max_requests: Option<u32>,
    process: Process,
}

impl NodeServer {
    /// Starts a server with `keep_alive` as its `keepAliveTimeout` (Node's default,
    /// 5 s, when `None`); `None` (after printing `SKIPPED`) when Node.js is not
    /// installed.
    ///
    /// # Panics
    /// Under CI instead of skipping, and whenever an installed Node fails to start.
    pub fn start(keep_alive: Option<Duration>) -> Option<NodeServer> {
        NodeServer::launch(keep_alive, None, None)
    }

    /// Starts a server that serves at most `max_requests` requests per connection
    /// (`maxRequestsPerSocket`), as [`NodeServer::start`] does otherwise.
    ///
    /// # Panics
    /// As [`NodeServer::start`].
    pub fn start_with_request_limit(max_requests: u32) -> Option<NodeServer> {
        NodeServer::launch(None, None, Some(max_requests))
    }

    /// Starts an `https.createServer` with the certificate `ca` signed for
    /// `localhost` and `127.0.0.1`, as [`NodeServer::start`] does otherwise.
    ///
    /// # Panics
    /// As [`NodeServer::start`], and when the certificate cannot be written.
    pub fn start_https(keep_alive: Option<Duration>, ca: &TestCa) -> Option<NodeServer> {
        NodeServer::launch(keep_alive, Some(ca), None)
    }

    fn launch(
        keep_alive: Option<Duration>,
        tls: Option<&TestCa>,
        max_requests: Option<u32>,
    ) -> Option<NodeServer> {
        let Some(bin) = host::program("node").or_else(|| host::program("nodejs")) else {
            host::skip("node not found: install package nodejs");
            return None;
        };
        let dir = host::scratch_dir("node").unwrap_or_else(|e| panic!("scratch dir: {e}"));
        if let Err(e) = fs::write(dir.join("server.js"), NODE_SCRIPT) {
            panic!("cannot write the server script: {e}");
        }
        if let Some(ca) = tls
            && let Err(e) = ca.write_files(&dir)
        {
            panic!("cannot write the certificate: {e}");
        }
        let mut server = NodeServer {
            bin,
            dir,
            port: 0,
            stats_port: None,
            keep_alive,
            max_requests,
            process: Process {
                child: Mutex::new(None),
            },
        };
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = host::free_port().unwrap_or_else(|e| panic!("no free port: {e}"));
            if tls.is_some() {
                server.stats_port =
                    Some(host::free_port().unwrap_or_else(|e| panic!("no free port: {e}")));
            }
            match server.spawn() {
                Ok(()) => return Some(server),
                Err(log) => last = log,
            }
        }
        panic!("node did not start: {last}");
    }

    fn spawn(&self) -> Result<(), String> {
        let mut command = Command::new(&self.bin);
        let keep_alive = self
            .keep_alive
            .map_or("default".to_owned(), |d| d.as_millis().to_string());
        command
            .arg(self.dir.join("server.js"))
            .arg(self.port.to_string())
            .arg(keep_alive);
        if let Some(stats_port) = self.stats_port {
            command.arg(&self.dir).arg(stats_port.to_string());
        }
        if let Some(max) = self.max_requests {
            command.env("MAX_REQUESTS_PER_SOCKET", max.to_string());
        }
        let child = spawn_listening(command, self.port)?;
        *self
            .process
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(child);
        Ok(())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, or `https://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        let scheme = if self.stats_port.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Kills the server (SIGKILL: its connections are closed by the kernel).
    pub fn kill(&self) {
        self.process.kill();
    }

    /// Kills the server and starts a new one on the same port; its counts start
    /// from zero.
    ///
    /// # Panics
    /// When it does not start again.
    pub fn restart(&self) {
        self.kill();
        if let Err(log) = self.spawn() {
            panic!("node did not restart: {log}");
        }
    }

    /// Ends every client connection as a server's idle timeout does (`end()`:
    /// over TLS a close_notify, then FIN). Asked on a connection of its own.
    ///
    /// # Panics
    /// When the server does not answer.
    pub fn end_idle(&self) {
        let answer = get(self.stats_addr(), "/end-idle");
        assert_eq!(answer, "ended", "/end-idle");
    }

    /// Where the fixture asks its questions: the server's port, or an https
    /// server's plain stats port.
    fn stats_addr(&self) -> SocketAddr {
        self.stats_port.map_or(self.addr(), |port| {
            SocketAddr::from((Ipv4Addr::LOCALHOST, port))
        })
    }

    /// What the server counted: connections accepted, and requests per
    /// `x-request-id`. Asked on a connection of its own.
    ///
    /// # Panics
    /// When the server does not answer.
    pub fn stats(&self) -> NodeStats {
        let body = get(self.stats_addr(), "/stats");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("stats are not JSON ({e}): {body}"));
        let requests = json["requests"]
            .as_object()
            .map(|ids| {
                ids.iter()
                    .map(|(id, n)| (id.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        // Less the fixture's own: the check that the server listens, and this
        // request unless it went to the plain stats port.
        let own = if self.stats_port.is_some() { 1 } else { 2 };
        NodeStats {
            connections: json["connections"]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(own),
            handshakes: json["handshakes"].as_u64().unwrap_or(0),
            requests,
        }
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        self.process.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What a [`NodeServer`] counted since it started.
#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    /// Connections accepted from clients other than the fixture itself.
    pub connections: u64,
    /// TLS handshakes completed (an https server's; 0 for http).
    pub handshakes: u64,
    /// Requests received, per `x-request-id`.
    pub requests: HashMap<String, u64>,
}

/// A blocking `GET` on a new connection, for the fixture's own questions.
fn get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("cannot ask {addr}: {e}"));
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("no answer from {addr}: {e}"));
    match response.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_owned(),
        None => panic!("not an HTTP response: {response}"),
    }
}

/// HAProxy in front of one server, as a load balancer: it keeps client
/// connections alive for `client_idle` at most and closes them silently after
/// that, without announcing it (no `Keep-Alive` header), as an ALB does.
#[derive(Debug)]
pub struct HaProxy {
    dir: PathBuf,
    port: u16,
    process: Process,
}

impl HaProxy {
    /// Starts HAProxy on a free port in front of `127.0.0.1:backend`; `None` (after
    /// printing `SKIPPED`) when it is not installed.
    ///
    /// # Panics
    /// Under CI instead of skipping, and whenever an installed HAProxy fails to
    /// start.
    pub fn start(backend: u16, client_idle: Duration) -> Option<HaProxy> {
        let Some(bin) = host::program("haproxy") else {
            host::skip("haproxy not found: install package haproxy");
            return None;
        };
        let dir = host::scratch_dir("haproxy").unwrap_or_else(|e| panic!("scratch dir: {e}"));
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = host::free_port().unwrap_or_else(|e| panic!("no free port: {e}"));
            let config = dir.join("haproxy.cfg");
            let idle = client_idle.as_millis();
            let text = format!(
                "global\n  maxconn 4096\n\
                 defaults\n  mode http\n  option http-keep-alive\n  timeout connect 2s\n  \
                 timeout client {idle}ms\n  timeout http-keep-alive {idle}ms\n  timeout server 30s\n\
                 frontend front\n  bind 127.0.0.1:{port}\n  default_backend node\n\
                 backend node\n  server node 127.0.0.1:{backend}\n"
            );
            if let Err(e) = fs::write(&config, text) {
                panic!("cannot write the HAProxy configuration: {e}");
            }
            let mut command = Command::new(&bin);
            command.arg("-db").arg("-f").arg(&config);
            match spawn_listening(command, port) {
                Ok(child) => {
                    return Some(HaProxy {
                        dir,
                        port,
                        process: Process {
                            child: Mutex::new(Some(child)),
                        },
                    });
                }
                Err(log) => last = log,
            }
        }
        panic!("haproxy did not start: {last}");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        self.process.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// How a request of [`paced_load`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response (of any status).
    Answered,
    /// [`RunError::MaybeExecuted`](steadypool::RunError::MaybeExecuted).
    MaybeExecuted,
    /// [`RunError::NotExecuted`](steadypool::RunError::NotExecuted).
    NotExecuted,
    /// Any other error, as text.
    Failed(String),
}

/// What [`paced_load`] sent, and how each request ended, by `x-request-id`.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// `GET /` requests.
    pub gets: Vec<(String, Outcome)>,
    /// `POST /orders` requests.
    pub posts: Vec<(String, Outcome)>,
}

impl LoadReport {
    /// The `GET`s that did not get a response, with how they ended.
    pub fn failed_gets(&self) -> Vec<&(String, Outcome)> {
        self.gets
            .iter()
            .filter(|(_, outcome)| *outcome != Outcome::Answered)
            .collect()
    }

    /// Checks every `POST` against what the server counted: none ran twice, each
    /// answered one ran once, and none that was reported as not executed ran.
    ///
    /// # Panics
    /// On the first `POST` that breaks one of these rules.
    pub fn assert_posts_never_replayed(&self, server: &NodeStats) {
        for (id, outcome) in &self.posts {
            let ran = server.requests.get(id).copied().unwrap_or(0);
            assert!(ran <= 1, "POST {id} ran {ran} times ({outcome:?})");
            match outcome {
                Outcome::Answered => assert_eq!(ran, 1, "POST {id} was answered"),
                Outcome::NotExecuted => assert_eq!(ran, 0, "POST {id} said not executed"),
                Outcome::MaybeExecuted => {}
                Outcome::Failed(err) => panic!("POST {id}: {err}"),
            }
        }
    }
}

/// One task per client, each sending requests through its client for `duration`,
/// one at a time, with a random pause in `gaps` before each: every `post_every`-th
/// request is a `POST /orders` (0: none), the others `GET /`, each with its own
/// `x-request-id`. Pauses around the server's (or load balancer's) idle timeout
/// make requests meet connections the server is closing; a client per task (a fleet
/// of small processes) keeps each connection idle for the whole pause, where one
/// client shared by every task would reuse its most recently returned connection.
pub async fn paced_load(
    clients: &[steadypool::drivers::http::HttpClient],
    duration: Duration,
    gaps: (Duration, Duration),
    post_every: usize,
) -> LoadReport {
    use bytes::Bytes;
    use steadypool::RunError;

    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (worker, client) in clients.iter().enumerate() {
        let client = client.clone();
        tasks.spawn(async move {
            let mut report = LoadReport::default();
            let mut rng = fastrand::Rng::with_seed(worker as u64);
            let mut n = 0usize;
            while tokio::time::Instant::now() < deadline {
                let span = gaps.1.saturating_sub(gaps.0).as_millis() as u64;
                let gap = gaps.0 + Duration::from_millis(rng.u64(0..=span));
                tokio::time::sleep(gap).await;
                n += 1;
                let id = format!("w{worker}-{n}");
                let post = post_every > 0 && n.is_multiple_of(post_every);
                let request = if post {
                    http::Request::post("/orders")
                } else {
                    http::Request::get("/")
                }
                .header("x-request-id", &id)
                .body(Bytes::new());
                let request = match request {
                    Ok(request) => request,
                    Err(e) => panic!("building a request: {e}"),
                };
                let outcome = match client.send(request).await {
                    Ok(_) => Outcome::Answered,
                    Err(RunError::MaybeExecuted { .. }) => Outcome::MaybeExecuted,
                    Err(RunError::NotExecuted { .. }) => Outcome::NotExecuted,
                    Err(other) => Outcome::Failed(other.to_string()),
                };
                if post {
                    report.posts.push((id, outcome));
                } else {
                    report.gets.push((id, outcome));
                }
            }
            report
        });
    }
    let mut all = LoadReport::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(report) => {
                all.gets.extend(report.gets);
                all.posts.extend(report.posts);
            }
            Err(e) => panic!("a load worker failed: {e}"),
        }
    }
    all
}
