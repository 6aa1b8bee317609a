//! A flaky upstream for the retry and connect-gate tests, and a manager for it.
//!
//! [`LedgerServer`] speaks a line protocol and keeps a ledger of how many times each
//! request id ran, so a test can prove an operation was never replayed:
//!
//! | request | reply | effect |
//! |---|---|---|
//! | `RUN <id>` | `DONE <id> <times>` | runs request `id` (its count goes up by one) |
//! | `FAIL <id>` | `ERR <id>` | nothing: an application error |
//! | `HANG <id>` | none, ever | nothing |
//!
//! Its faults are real: connections are closed with an RST (zero linger), at random
//! points around a request, on a set request of each connection, or all at once when
//! the server goes down ([`LedgerServer::stop`]); it comes back on the same port
//! ([`LedgerServer::restart`]), and while down, connects are refused by the kernel.
//! It can also run requests and never answer them ([`Faults::never_reply`]).
//!
//! [`LedgerManager`] is the client side: its error type derives `Classify`, and it logs
//! when each connect started, so tests can see how connects spread over time.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steadypool::{Classify, DialError, Dialer, Manager, SocketRef};
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::AbortHandle;

use crate::lines::{self, Answer, Handlers};
use crate::lock;

/// Where around a request the server resets a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetPoint {
    /// After reading the request, before running it: it never ran.
    Before,
    /// After running it, before replying: it ran, the client cannot know.
    During,
    /// After replying: it ran, and the reply may or may not reach the client.
    After,
}

/// The faults a [`LedgerServer`] injects.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Probability, per request, of a reset at a random [`ResetPoint`].
    pub reset_probability: f64,
    /// Only reset at this point (instead of a random one).
    pub reset_point: Option<ResetPoint>,
    /// Each connection serves this many requests; when the next one arrives the server
    /// resets the connection without running it (a server that closed it while idle,
    /// just as the request came: the checkout probe cannot have seen it).
    pub requests_per_connection: Option<usize>,
    /// Answer the first this-many `RUN` requests with `BUSY` without running them.
    pub busy_first: usize,
    /// Run each `RUN` request, then never reply (the connection stays open): a server
    /// that did the work and stalled, so the client cannot tell whether it ran.
    pub never_reply: bool,
    /// Seed of the fault dice.
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            reset_probability: 0.0,
            reset_point: None,
            requests_per_connection: None,
            busy_first: 0,
            never_reply: false,
            seed: 1,
        }
    }
}

impl Faults {
    /// No fault but this: the first `n` `RUN` requests are answered `BUSY`.
    ///
    /// ```
    /// assert_eq!(steadypool_tests::flaky::Faults::busy_first(2).busy_first, 2);
    /// ```
    pub fn busy_first(n: usize) -> Faults {
        Faults {
            busy_first: n,
            ..Faults::default()
        }
    }

    /// No fault but this: each connection serves `n` requests, then is reset as the
    /// next arrives.
    ///
    /// ```
    /// let faults = steadypool_tests::flaky::Faults::requests_per_connection(1);
    /// assert_eq!(faults.requests_per_connection, Some(1));
    /// ```
    pub fn requests_per_connection(n: usize) -> Faults {
        Faults {
            requests_per_connection: Some(n),
            ..Faults::default()
        }
    }

    /// No fault but this: every request's connection is reset at `point`.
    ///
    /// ```
    /// use steadypool_tests::flaky::{Faults, ResetPoint};
    /// assert_eq!(Faults::reset_at(ResetPoint::During).reset_probability, 1.0);
    /// ```
    pub fn reset_at(point: ResetPoint) -> Faults {
        Faults {
            reset_probability: 1.0,
            reset_point: Some(point),
            ..Faults::default()
        }
    }

    /// No fault but this: every `RUN` request runs and is never answered.
    ///
    /// ```
    /// assert!(steadypool_tests::flaky::Faults::never_reply().never_reply);
    /// ```
    pub fn never_reply() -> Faults {
        Faults {
            never_reply: true,
            ..Faults::default()
        }
    }
}

#[derive(Debug)]
struct Shared {
    faults: Faults,
    ledger: Mutex<HashMap<u64, u32>>,
    dice: Mutex<fastrand::Rng>,
    connections: Handlers,
    accepted: AtomicUsize,
    requests: AtomicUsize,
    resets: AtomicUsize,
    busy_sent: AtomicUsize,
}

/// A line server that counts executions per request id and resets connections.
#[derive(Debug)]
pub struct LedgerServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Mutex<Option<AbortHandle>>,
}

impl LedgerServer {
    /// Starts a server on a free loopback port.
    ///
    /// # Errors
    /// Binding failed.
    pub async fn start(faults: Faults) -> io::Result<LedgerServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let server = LedgerServer {
            addr: listener.local_addr()?,
            shared: Arc::new(Shared {
                faults,
                ledger: Mutex::new(HashMap::new()),
                dice: Mutex::new(fastrand::Rng::with_seed(faults.seed)),
                connections: Handlers::default(),
                accepted: AtomicUsize::new(0),
                requests: AtomicUsize::new(0),
                resets: AtomicUsize::new(0),
                busy_sent: AtomicUsize::new(0),
            }),
            acceptor: Mutex::new(None),
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                // Every close of the server's side is an RST, like a crashed process's.
                if stream.set_zero_linger().is_err() {
                    continue;
                }
                let answering = Arc::clone(&shared);
                let mut served = 0;
                shared
                    .connections
                    .spawn(lines::serve(stream, move |request| {
                        answer(&answering, &mut served, request)
                    }));
            }
        });
        *lock(&self.acceptor) = Some(task.abort_handle());
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many times request `id` ran.
    pub fn runs(&self, id: u64) -> u32 {
        lock(&self.shared.ledger).get(&id).copied().unwrap_or(0)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Request lines received so far (each attempt of an operation is one).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Connections the server reset on purpose.
    pub fn resets(&self) -> usize {
        self.shared.resets.load(Ordering::SeqCst)
    }

    /// `BUSY` replies sent.
    pub fn busy_sent(&self) -> usize {
        self.shared.busy_sent.load(Ordering::SeqCst)
    }

    /// Goes down: the listener closes (new connects are refused) and every open
    /// connection is reset at once, like a crashed process.
    pub async fn stop(&self) {
        let acceptor = lock(&self.acceptor).take();
        if let Some(acceptor) = &acceptor {
            acceptor.abort();
        }
        let connections = self.shared.connections.abort_all();
        // Aborted tasks drop their sockets (and the listener) when the runtime next
        // looks at them.
        while acceptor.as_ref().is_some_and(|a| !a.is_finished())
            || connections.iter().any(|c| !c.is_finished())
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Comes back up on the same port.
    ///
    /// # Errors
    /// Binding the port again failed.
    pub fn restart(&self) -> io::Result<()> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        self.serve(socket.listen(1024)?);
        Ok(())
    }
}

impl Drop for LedgerServer {
    fn drop(&mut self) {
        if let Some(acceptor) = lock(&self.acceptor).take() {
            acceptor.abort();
        }
        self.shared.connections.abort_all();
    }
}

/// The answer to one request on a connection that has served `served` before it.
/// Every close of this server's is an RST: the accept set zero linger.
fn answer(shared: &Shared, served: &mut usize, request: &str) -> Answer {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if shared
        .faults
        .requests_per_connection
        .is_some_and(|limit| *served >= limit)
    {
        shared.resets.fetch_add(1, Ordering::SeqCst);
        return Answer::Reset;
    }
    *served += 1;
    let reset = {
        let mut dice = lock(&shared.dice);
        (dice.f64() < shared.faults.reset_probability).then(|| {
            shared.faults.reset_point.unwrap_or(match dice.u8(0..3) {
                0 => ResetPoint::Before,
                1 => ResetPoint::During,
                _ => ResetPoint::After,
            })
        })
    };
    if reset == Some(ResetPoint::Before) {
        shared.resets.fetch_add(1, Ordering::SeqCst);
        return Answer::Reset;
    }
    let mut words = request.split_whitespace();
    let reply = match (
        words.next(),
        words.next().and_then(|id| id.parse::<u64>().ok()),
    ) {
        (Some("RUN"), Some(id)) => {
            if shared.busy_sent.load(Ordering::SeqCst) < shared.faults.busy_first {
                shared.busy_sent.fetch_add(1, Ordering::SeqCst);
                "BUSY\n".to_owned()
            } else {
                let runs = {
                    let mut ledger = lock(&shared.ledger);
                    let runs = ledger.entry(id).or_insert(0);
                    *runs += 1;
                    *runs
                };
                if shared.faults.never_reply {
                    return Answer::Hang;
                }
                format!("DONE {id} {runs}\n")
            }
        }
        (Some("FAIL"), Some(id)) => format!("ERR {id}\n"),
        (Some("HANG"), Some(_)) => return Answer::Hang,
        _ => "ERR bad request\n".to_owned(),
    };
    match reset {
        Some(ResetPoint::During) => {
            shared.resets.fetch_add(1, Ordering::SeqCst);
            Answer::Reset
        }
        Some(ResetPoint::After) => {
            shared.resets.fetch_add(1, Ordering::SeqCst);
            Answer::ReplyThenClose(reply)
        }
        _ => Answer::Reply(reply),
    }
}

/// What can go wrong talking to a [`LedgerServer`].
#[derive(Debug, thiserror::Error, Classify)]
pub enum LedgerError {
    /// The connection could not be opened.
    #[error("connect: {0}")]
    #[classify(delegate)]
    Dial(#[from] DialError),
    /// Writing the request failed: the request is one short line written at once, so
    /// none of it reached the server.
    #[error("could not send the request: {0}")]
    #[classify(transport, sent = "no")]
    Send(#[source] io::Error),
    /// Reading the reply failed: the request may have run.
    #[error("no reply: {0}")]
    #[classify(transport)]
    Receive(#[source] io::Error),
    /// The server is busy; try again later.
    #[error("server busy")]
    #[classify(transient)]
    Busy,
    /// A reply that makes no sense: the stream is out of step.
    #[error("unexpected reply {0:?}")]
    #[classify(broken = "unexpected_data")]
    Garbled(String),
    /// The server refused the request (an application error).
    #[error("request {0} refused")]
    Refused(u64),
}

/// A buffered connection to a [`LedgerServer`].
pub type LedgerConnection = BufReader<TcpStream>;

/// Opens connections to a [`LedgerServer`], logging when each connect started.
#[derive(Debug, Clone)]
pub struct LedgerManager {
    addr: SocketAddr,
    connects: Arc<Mutex<Vec<Instant>>>,
}

impl LedgerManager {
    /// A manager for `addr` with a connect log of its own.
    pub fn new(addr: SocketAddr) -> LedgerManager {
        LedgerManager::with_log(addr, Arc::default())
    }

    /// A manager for `addr` logging into `connects` (shared by several pools).
    pub fn with_log(addr: SocketAddr, connects: Arc<Mutex<Vec<Instant>>>) -> LedgerManager {
        LedgerManager { addr, connects }
    }

    /// When each connect started, in order.
    pub fn connects(&self) -> Vec<Instant> {
        lock(&self.connects).clone()
    }
}

impl Manager for LedgerManager {
    type Connection = LedgerConnection;
    type Error = LedgerError;

    async fn connect(&self, dialer: &Dialer) -> Result<LedgerConnection, LedgerError> {
        lock(&self.connects).push(Instant::now());
        Ok(BufReader::new(dialer.connect(&self.addr.into()).await?))
    }

    fn socket<'a>(&self, conn: &'a LedgerConnection) -> Option<SocketRef<'a>> {
        Some(SocketRef::from(conn))
    }
}

async fn call(conn: &mut LedgerConnection, verb: &str, id: u64) -> Result<String, LedgerError> {
    lines::send(conn, &format!("{verb} {id}"))
        .await
        .map_err(LedgerError::Send)?;
    lines::receive(conn).await.map_err(LedgerError::Receive)
}

/// Runs request `id`; returns how many times it has run on the server, this time
/// included.
///
/// # Errors
/// [`LedgerError`].
pub async fn run(conn: &mut LedgerConnection, id: u64) -> Result<u32, LedgerError> {
    let reply = call(conn, "RUN", id).await?;
    if reply == "BUSY" {
        return Err(LedgerError::Busy);
    }
    let mut words = reply.split_whitespace();
    match (
        words.next(),
        words.next(),
        words.next().map(str::parse::<u32>),
    ) {
        (Some("DONE"), Some(echo), Some(Ok(runs))) if echo == id.to_string() => Ok(runs),
        _ => Err(LedgerError::Garbled(reply)),
    }
}

/// Sends a request the server refuses.
///
/// # Errors
/// Always: [`LedgerError::Refused`], or what broke on the way.
pub async fn fail(conn: &mut LedgerConnection, id: u64) -> Result<(), LedgerError> {
    let reply = call(conn, "FAIL", id).await?;
    if reply == format!("ERR {id}") {
        Err(LedgerError::Refused(id))
    } else {
        Err(LedgerError::Garbled(reply))
    }
}

/// Sends a request the server never answers.
///
/// # Errors
/// What broke on the way; it never returns otherwise.
pub async fn hang(conn: &mut LedgerConnection, id: u64) -> Result<(), LedgerError> {
    let reply = call(conn, "HANG", id).await?;
    Err(LedgerError::Garbled(reply))
}

/// The most instants inside any `window`, and when that window starts (`None` for
/// no instants).
pub fn busiest_window(instants: &[Instant], window: Duration) -> (usize, Option<Instant>) {
    let mut sorted = instants.to_vec();
    sorted.sort();
    let mut most = (0, None);
    let mut first = 0;
    for (last, at) in sorted.iter().enumerate() {
        while *at - sorted[first] >= window {
            first += 1;
        }
        if last - first + 1 > most.0 {
            most = (last - first + 1, Some(sorted[first]));
        }
    }
    most
}
