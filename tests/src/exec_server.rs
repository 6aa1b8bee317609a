//! A server that counts how many times each request ran, with a fault chosen per
//! request by the test, and a manager for it.
//!
//! [`ExecServer`] speaks a line protocol:
//!
//! | request | reply | effect |
//! |---|---|---|
//! | `EXEC <id>` | `OK <id>` | runs request `id`: `executions(id)` goes up by one |
//! | `PING` | `PONG` | nothing (the checkout ping) |
//!
//! What it does with each `EXEC` is scheduled by the test, per request id and per
//! delivery ([`ExecServer::schedule`]): the first time `EXEC 7` arrives it may reset
//! the connection, the second time answer it. A [`Fault`] says whether the request
//! ran, so the test can hold every error the pool returns against what really
//! happened. Every connection the server resets is closed with an RST (zero linger),
//! as a crashed or overloaded server's are.
//!
//! It can also refuse new connections for a while ([`ExecServer::refuse`]): with its
//! listener closed (connects fail with `ECONNREFUSED`), or by accepting each one and
//! resetting it at once. The port stays reserved while the listener is closed (a
//! bound, non-listening socket holds it with `SO_REUSEPORT`), so no other socket can
//! take it and the server comes back on the same address.
//!
//! [`ExecManager`] is the client side. It records the local address of every
//! connection it hands to the pool, and counts connects that failed or were
//! abandoned half-way, so a test can match the pool's count of opened connections
//! with the connections the server accepted.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use steadypool::{Classify, DialError, Dialer, Manager, SocketRef};
use tokio::io::BufStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use crate::lines::{self, Answer, Handlers};
use crate::lock;

/// What the server does with one delivery of `EXEC <id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Runs it and answers `OK <id>`.
    Reply,
    /// Runs it, answers, then closes the connection (FIN): the client gets its reply
    /// and returns a connection whose peer is gone, which then sits in `CLOSE_WAIT`
    /// until the pool notices.
    ReplyThenClose,
    /// Resets the connection (RST) without running it.
    ResetBefore,
    /// Runs it, then resets the connection without answering: it ran, and the client
    /// cannot know.
    ExecuteThenDie,
    /// Runs it and never answers (the connection stays open; the server reads and
    /// ignores everything after it).
    SilentExecuted,
    /// Never runs it and never answers.
    SilentNotExecuted,
}

impl Fault {
    /// Whether the server runs the request under this fault.
    pub fn executes(self) -> bool {
        !matches!(self, Fault::ResetBefore | Fault::SilentNotExecuted)
    }
}

/// How the server refuses new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The listener is closed: the kernel answers each connect with an RST
    /// (`ECONNREFUSED`).
    Closed,
    /// Each new connection is accepted and reset at once: the client's connect
    /// succeeds, and its first read or write fails.
    Reset,
}

#[derive(Default)]
struct Shared {
    /// Faults still to apply to the next deliveries of each id; none left: `Reply`.
    schedule: Mutex<HashMap<u64, VecDeque<Fault>>>,
    executions: Mutex<HashMap<u64, u32>>,
    deliveries: Mutex<HashMap<u64, u32>>,
    /// The client address of every connection accepted, in order.
    accepted: Mutex<Vec<SocketAddr>>,
    reset_on_accept: AtomicBool,
    handlers: Handlers,
}

/// The running accept loop: stopping it drains the listener's queue first.
struct Acceptor {
    stop: oneshot::Sender<oneshot::Sender<()>>,
    task: AbortHandle,
}

/// The listener's state, changed only under its lock.
struct Listening {
    acceptor: Option<Acceptor>,
    /// Bumped by every refusal, so that the timer of an earlier refusal does not end
    /// a later one.
    generation: u64,
}

/// The `EXEC` server on `127.0.0.1`. Stopped when dropped: its listener closes and
/// every connection it holds is dropped.
pub struct ExecServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Holds the port while the listener is closed.
    _holder: Socket,
    listening: tokio::sync::Mutex<Listening>,
    /// Mirrors `listening.generation` for the refusal timers.
    generation: AtomicU64,
}

impl ExecServer {
    /// Starts a server on a free loopback port.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start() -> io::Result<Arc<ExecServer>> {
        let holder = reusable_socket()?;
        holder.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        let addr = holder
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("the holder socket has no address"))?;
        let shared = Arc::new(Shared::default());
        let acceptor = spawn_acceptor(listen_on(addr)?, Arc::clone(&shared));
        Ok(Arc::new(ExecServer {
            addr,
            shared,
            _holder: holder,
            listening: tokio::sync::Mutex::new(Listening {
                acceptor: Some(acceptor),
                generation: 0,
            }),
            generation: AtomicU64::new(0),
        }))
    }

    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the faults for the next deliveries of `EXEC <id>`: the first delivery gets
    /// `faults[0]`, and so on; deliveries past the list are answered normally.
    pub fn schedule(&self, id: u64, faults: &[Fault]) {
        lock(&self.shared.schedule).insert(id, faults.iter().copied().collect());
    }

    /// How many times request `id` ran.
    pub fn executions(&self, id: u64) -> u32 {
        lock(&self.shared.executions).get(&id).copied().unwrap_or(0)
    }

    /// How many times `EXEC <id>` arrived.
    pub fn deliveries(&self, id: u64) -> u32 {
        lock(&self.shared.deliveries).get(&id).copied().unwrap_or(0)
    }

    /// The client address of every connection accepted so far (reset-on-accept ones
    /// included), in order.
    pub fn accepted(&self) -> Vec<SocketAddr> {
        lock(&self.shared.accepted).clone()
    }

    /// Refuses new connections from now on, `how`, until [`ExecServer::resume`].
    /// Returns the refusal's number, which a later refusal or resume replaces.
    ///
    /// Closing the listener first accepts every connection already in its queue, so
    /// that none is reset by the kernel unseen: each connection a client completed
    /// before this call is among [`ExecServer::accepted`]. A connect that completes
    /// while this call runs may still be lost that way; call it when no client is
    /// connecting if that matters.
    pub async fn refuse(&self, how: Refusal) -> u64 {
        let mut listening = self.listening.lock().await;
        listening.generation += 1;
        self.generation
            .store(listening.generation, Ordering::SeqCst);
        match how {
            Refusal::Reset => self.shared.reset_on_accept.store(true, Ordering::SeqCst),
            Refusal::Closed => {
                if let Some(acceptor) = listening.acceptor.take() {
                    let (done, drained) = oneshot::channel();
                    if acceptor.stop.send(done).is_ok() {
                        let _ = drained.await;
                    }
                    acceptor.task.abort();
                }
            }
        }
        listening.generation
    }

    /// Refuses new connections, `how`, for `period`, then resumes (unless another
    /// refusal started meanwhile: the latest one decides when it ends).
    pub async fn refuse_for(self: &Arc<Self>, how: Refusal, period: Duration) {
        let generation = self.refuse(how).await;
        let server = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(period).await;
            if server.generation.load(Ordering::SeqCst) == generation {
                // The port is held: reopening can only fail if the system is out of
                // sockets, and then every later connect fails loudly anyway.
                let _ = server.resume().await;
            }
        });
    }

    /// Accepts new connections normally again.
    ///
    /// # Errors
    /// When the listener cannot be opened again.
    pub async fn resume(&self) -> io::Result<()> {
        let mut listening = self.listening.lock().await;
        listening.generation += 1;
        self.generation
            .store(listening.generation, Ordering::SeqCst);
        self.shared.reset_on_accept.store(false, Ordering::SeqCst);
        if listening.acceptor.is_none() {
            listening.acceptor = Some(spawn_acceptor(
                listen_on(self.addr)?,
                Arc::clone(&self.shared),
            ));
        }
        Ok(())
    }
}

impl Drop for ExecServer {
    fn drop(&mut self) {
        if let Some(acceptor) = self.listening.get_mut().acceptor.take() {
            acceptor.task.abort();
        }
        self.shared.handlers.abort_all();
    }
}

fn reusable_socket() -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn listen_on(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = reusable_socket()?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

fn spawn_acceptor(listener: TcpListener, shared: Arc<Shared>) -> Acceptor {
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(accept_loop(listener, shared, stopped));
    Acceptor {
        stop,
        task: task.abort_handle(),
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, client)) = accepted {
                    admit(stream, client, &shared);
                }
            }
            done = &mut stop => {
                // Drain the queue with plain non-blocking accepts: the reactor may not
                // have reported a connection the kernel already queued.
                if let Ok(listener) = listener.into_std() {
                    while let Ok((stream, client)) = listener.accept() {
                        // An accepted socket does not inherit the listener's
                        // non-blocking mode, and tokio needs it.
                        if stream.set_nonblocking(true).is_ok()
                            && let Ok(stream) = TcpStream::from_std(stream)
                        {
                            admit(stream, client, &shared);
                        }
                    }
                }
                if let Ok(done) = done {
                    let _ = done.send(());
                }
                return;
            }
        }
    }
}

fn admit(stream: TcpStream, client: SocketAddr, shared: &Arc<Shared>) {
    lock(&shared.accepted).push(client);
    if shared.reset_on_accept.load(Ordering::SeqCst) {
        lines::reset(stream);
        return;
    }
    let answering = Arc::clone(shared);
    shared.handlers.spawn(lines::serve(stream, move |request| {
        answer(&answering, request)
    }));
}

fn answer(shared: &Shared, request: &str) -> Answer {
    if request == "PING" {
        return Answer::Reply("PONG\n".to_owned());
    }
    let Some(id) = request
        .strip_prefix("EXEC ")
        .and_then(|id| id.parse::<u64>().ok())
    else {
        return Answer::Reply("ERR bad request\n".to_owned());
    };
    *lock(&shared.deliveries).entry(id).or_insert(0) += 1;
    let fault = lock(&shared.schedule)
        .get_mut(&id)
        .and_then(VecDeque::pop_front)
        .unwrap_or(Fault::Reply);
    if fault.executes() {
        *lock(&shared.executions).entry(id).or_insert(0) += 1;
    }
    match fault {
        Fault::Reply => Answer::Reply(format!("OK {id}\n")),
        // The client sent nothing after this request, so the close is a FIN (unread
        // data would turn it into an RST).
        Fault::ReplyThenClose => Answer::ReplyThenClose(format!("OK {id}\n")),
        Fault::ResetBefore | Fault::ExecuteThenDie => Answer::Reset,
        Fault::SilentExecuted | Fault::SilentNotExecuted => Answer::Hang,
    }
}

/// What can go wrong talking to an [`ExecServer`].
#[derive(Debug, thiserror::Error, Classify)]
pub enum ExecError {
    /// The connection could not be opened.
    #[error("connect: {0}")]
    #[classify(delegate)]
    Dial(#[from] DialError),
    /// The connection was opened, and reset before the pool got it (its address
    /// could not be read any more).
    #[error("reset right after connecting: {0}")]
    #[classify(transport, sent = "no")]
    Lost(#[source] io::Error),
    /// Writing the request failed. A request is one short line written with one
    /// system call, so when that call fails none of it left.
    #[error("could not send the request: {0}")]
    #[classify(transport, sent = "no")]
    Send(#[source] io::Error),
    /// Reading the reply failed: the request may have run.
    #[error("no reply: {0}")]
    #[classify(transport)]
    Receive(#[source] io::Error),
    /// A reply that does not belong to the request: another request's late reply, or
    /// garbage. The stream is out of step.
    #[error("unexpected reply {0:?}")]
    #[classify(broken = "unexpected_data")]
    Garbled(String),
}

/// A buffered connection to an [`ExecServer`].
pub type ExecConnection = BufStream<TcpStream>;

#[derive(Debug, Default)]
struct Connects {
    opened: Mutex<Vec<SocketAddr>>,
    started: AtomicUsize,
    failed: AtomicUsize,
    abandoned: AtomicUsize,
}

/// Opens connections to an [`ExecServer`], recording each one it hands to the pool.
#[derive(Debug)]
pub struct ExecManager {
    addr: SocketAddr,
    connects: Connects,
}

/// What an [`ExecManager`]'s connects did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectLog {
    /// The local address of every connection handed to the pool, in order.
    pub opened: Vec<SocketAddr>,
    /// Connects started.
    pub started: usize,
    /// Connects that returned an error.
    pub failed: usize,
    /// Connects whose future was dropped before it finished (a cancelled checkout,
    /// the connect timeout): the server may have accepted them.
    pub abandoned: usize,
}

impl ExecManager {
    /// A manager for the server at `addr`.
    pub fn new(addr: SocketAddr) -> ExecManager {
        ExecManager {
            addr,
            connects: Connects::default(),
        }
    }

    /// What the connects did so far.
    pub fn connect_log(&self) -> ConnectLog {
        ConnectLog {
            opened: lock(&self.connects.opened).clone(),
            started: self.connects.started.load(Ordering::SeqCst),
            failed: self.connects.failed.load(Ordering::SeqCst),
            abandoned: self.connects.abandoned.load(Ordering::SeqCst),
        }
    }
}

/// Counts a connect as abandoned if its future is dropped before it finished.
struct Unfinished<'a> {
    abandoned: &'a AtomicUsize,
    finished: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.abandoned.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Manager for ExecManager {
    type Connection = ExecConnection;
    type Error = ExecError;

    async fn connect(&self, dialer: &Dialer) -> Result<ExecConnection, ExecError> {
        self.connects.started.fetch_add(1, Ordering::SeqCst);
        let mut unfinished = Unfinished {
            abandoned: &self.connects.abandoned,
            finished: false,
        };
        let result = dialer.connect(&self.addr.into()).await;
        unfinished.finished = true;
        // The local address identifies the connection on the server's side. Reading
        // it can fail only if the server already reset the connection; that counts as
        // a failed connect (the pool never sees the connection).
        let result = result.map_err(ExecError::from).and_then(|stream| {
            let local = stream.local_addr().map_err(ExecError::Lost)?;
            Ok((stream, local))
        });
        match result {
            Ok((stream, local)) => {
                lock(&self.connects.opened).push(local);
                Ok(BufStream::new(stream))
            }
            Err(err) => {
                self.connects.failed.fetch_add(1, Ordering::SeqCst);
                Err(err)
            }
        }
    }

    fn socket<'a>(&self, conn: &'a ExecConnection) -> Option<SocketRef<'a>> {
        Some(SocketRef::Tokio(conn.get_ref()))
    }

    async fn ping(&self, conn: &mut ExecConnection) -> Result<(), ExecError> {
        match call(conn, "PING").await?.as_str() {
            "PONG" => Ok(()),
            other => Err(ExecError::Garbled(other.to_owned())),
        }
    }
}

async fn call(conn: &mut ExecConnection, request: &str) -> Result<String, ExecError> {
    lines::send(conn, request).await.map_err(ExecError::Send)?;
    lines::receive(conn).await.map_err(ExecError::Receive)
}

/// Sends `EXEC <id>` and reads its reply.
///
/// # Errors
/// [`ExecError`]; [`ExecError::Garbled`] when the reply is not `OK <id>`.
pub async fn exec(conn: &mut ExecConnection, id: u64) -> Result<(), ExecError> {
    send(conn, id).await?;
    receive(conn, id).await
}

/// Sends `EXEC <id>` without reading the reply.
///
/// # Errors
/// [`ExecError::Send`].
pub async fn send(conn: &mut ExecConnection, id: u64) -> Result<(), ExecError> {
    lines::send(conn, &format!("EXEC {id}"))
        .await
        .map_err(ExecError::Send)
}

/// Reads the reply to `EXEC <id>`.
///
/// # Errors
/// [`ExecError::Receive`]; [`ExecError::Garbled`] when the reply is not `OK <id>`.
pub async fn receive(conn: &mut ExecConnection, id: u64) -> Result<(), ExecError> {
    let reply = lines::receive(conn).await.map_err(ExecError::Receive)?;
    if reply == format!("OK {id}") {
        Ok(())
    } else {
        Err(ExecError::Garbled(reply))
    }
}
