//! Small real servers on loopback, with the faults a pool must survive on command.
//!
//! [`LineServer`] speaks a tiny line protocol (one request per `\n`-terminated line):
//!
//! | request | reply |
//! |---|---|
//! | `PING` | `PONG` |
//! | `SET key value` | `OK` |
//! | `GET key` | `VALUE value`, or `NONE` |
//! | anything else | the same line, echoed |
//!
//! and lets a test strike its connections from the server side: close them (FIN),
//! reset them (zero-linger close: RST), write bytes nobody asked for, or stop reading
//! (a hung server). It counts accepts and logs how and when each connection ended.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use steadypool_tests::servers::LineServer;
//!
//! let server = LineServer::start().await?;
//! // ... a pool connects to server.addr() and goes idle ...
//! assert_eq!(server.close_all().await, 1);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::lock;

/// How a server-side connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The client closed it (the server read end of stream).
    ClientClosed,
    /// The client reset it (the server read `ECONNRESET`).
    ClientReset,
    /// The test closed it from the server side ([`LineServer::close_all`]).
    ServerClosed,
    /// The test reset it from the server side ([`LineServer::reset_all`]).
    ServerReset,
    /// The server closed it after its idle timeout ([`LineServer::with_idle_timeout`]).
    IdleTimeout,
}

/// A connection the server no longer holds.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// The client's address (the pool's local address for this connection).
    pub client: SocketAddr,
    /// From accept to the end.
    pub lived: Duration,
    /// How it ended.
    pub how: Ending,
}

/// A fault the test inflicts on one live connection.
enum Strike {
    Close(oneshot::Sender<()>),
    Reset(oneshot::Sender<()>),
    Send(Vec<u8>, oneshot::Sender<()>),
    Freeze(oneshot::Sender<()>),
}

#[derive(Default)]
struct Shared {
    accepts: AtomicUsize,
    live: Mutex<HashMap<SocketAddr, mpsc::UnboundedSender<Strike>>>,
    ended: Mutex<Vec<Ended>>,
    store: Mutex<HashMap<String, String>>,
}

/// A line-protocol server on `127.0.0.1`, stopped when dropped (its listener closes
/// and every connection it holds is closed).
pub struct LineServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: tokio::task::AbortHandle,
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl LineServer {
    /// Starts a server on a free port.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start() -> io::Result<LineServer> {
        LineServer::spawn(None).await
    }

    /// Starts a server that closes (FIN) any connection idle for `idle`, like a
    /// Node.js server's `keepAliveTimeout` or nginx's `keepalive_timeout`.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn with_idle_timeout(idle: Duration) -> io::Result<LineServer> {
        LineServer::spawn(Some(idle)).await
    }

    async fn spawn(idle: Option<Duration>) -> io::Result<LineServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let acceptor = tokio::spawn(accept_loop(listener, Arc::clone(&shared), idle));
        Ok(LineServer {
            addr,
            shared,
            acceptor: acceptor.abort_handle(),
        })
    }

    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.shared.accepts.load(Ordering::SeqCst)
    }

    /// Connections the server holds open now.
    pub fn live(&self) -> usize {
        lock(&self.shared.live).len()
    }

    /// Connections that ended so far, in the order they ended.
    pub fn ended(&self) -> Vec<Ended> {
        lock(&self.shared.ended).clone()
    }

    /// Closes every live connection from the server side (FIN), as a server's idle
    /// timeout or a graceful shutdown would. Returns how many it closed.
    pub async fn close_all(&self) -> usize {
        self.strike_all(Strike::Close).await
    }

    /// Resets every live connection (zero-linger close: RST), as a crashed or
    /// overloaded upstream would. Returns how many it reset.
    pub async fn reset_all(&self) -> usize {
        self.strike_all(Strike::Reset).await
    }

    /// Writes `bytes` on every live connection, unasked. Returns how many got them.
    pub async fn send_all(&self, bytes: &[u8]) -> usize {
        self.strike_all(|ack| Strike::Send(bytes.to_vec(), ack))
            .await
    }

    /// Stops reading and answering on every live connection (the connections stay
    /// open: a hung server). Returns how many it froze.
    pub async fn freeze_all(&self) -> usize {
        self.strike_all(Strike::Freeze).await
    }

    async fn strike_all(&self, strike: impl Fn(oneshot::Sender<()>) -> Strike) -> usize {
        let targets: Vec<_> = lock(&self.shared.live).values().cloned().collect();
        let mut acks = Vec::with_capacity(targets.len());
        for target in targets {
            let (ack, done) = oneshot::channel();
            if target.send(strike(ack)).is_ok() {
                acks.push(done);
            }
        }
        let mut struck = 0;
        for done in acks {
            if done.await.is_ok() {
                struck += 1;
            }
        }
        struck
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, idle: Option<Duration>) {
    // Owned here so that stopping the acceptor stops every handler with it.
    let mut handlers = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, client)) = accepted else { continue };
                shared.accepts.fetch_add(1, Ordering::SeqCst);
                let (strikes, inbox) = mpsc::unbounded_channel();
                lock(&shared.live).insert(client, strikes);
                handlers.spawn(serve(stream, client, Arc::clone(&shared), inbox, idle));
            }
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
        }
    }
}

async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    shared: Arc<Shared>,
    mut inbox: mpsc::UnboundedReceiver<Strike>,
    idle: Option<Duration>,
) {
    let accepted = Instant::now();
    let mut lines = BufReader::new(stream).lines();
    let mut frozen = false;
    let idle = idle.unwrap_or(Duration::MAX);
    let (how, ack) = loop {
        tokio::select! {
            strike = inbox.recv() => match strike {
                Some(Strike::Close(ack)) => break (Ending::ServerClosed, Some(ack)),
                Some(Strike::Reset(ack)) => {
                    let _ = lines.get_ref().get_ref().set_zero_linger();
                    break (Ending::ServerReset, Some(ack));
                }
                Some(Strike::Send(bytes, ack)) => {
                    let _ = lines.get_mut().get_mut().write_all(&bytes).await;
                    let _ = ack.send(());
                }
                Some(Strike::Freeze(ack)) => {
                    frozen = true;
                    let _ = ack.send(());
                }
                None => break (Ending::ServerClosed, None),
            },
            line = tokio::time::timeout(idle, lines.next_line()), if !frozen => match line {
                Err(_) => break (Ending::IdleTimeout, None),
                Ok(Ok(Some(line))) => {
                    let reply = answer(&line, &shared);
                    let stream = lines.get_mut().get_mut();
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        break (Ending::ClientReset, None);
                    }
                }
                Ok(Ok(None)) => break (Ending::ClientClosed, None),
                Ok(Err(_)) => break (Ending::ClientReset, None),
            },
        }
    };
    lock(&shared.live).remove(&client);
    drop(lines);
    lock(&shared.ended).push(Ended {
        client,
        lived: accepted.elapsed(),
        how,
    });
    if let Some(ack) = ack {
        let _ = ack.send(());
    }
}

fn answer(line: &str, shared: &Shared) -> String {
    let mut words = line.splitn(3, ' ');
    match (words.next(), words.next(), words.next()) {
        (Some("PING"), None, None) => "PONG\n".to_owned(),
        (Some("SET"), Some(key), Some(value)) => {
            lock(&shared.store).insert(key.to_owned(), value.to_owned());
            "OK\n".to_owned()
        }
        (Some("GET"), Some(key), None) => match lock(&shared.store).get(key) {
            Some(value) => format!("VALUE {value}\n"),
            None => "NONE\n".to_owned(),
        },
        _ => format!("{line}\n"),
    }
}
