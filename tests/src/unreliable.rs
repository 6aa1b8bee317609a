//! A manager that misbehaves on command, over real loopback connections: what
//! deadpool's and bb8's own tests call an unreliable manager, a gated manager or an
//! `NthConnectionFailManager`, for the ports of their suites.
//!
//! Every connection it opens is a real socket to a
//! [`LineServer`], with a counter the test may use; the
//! manager counts connects attempted, connections opened and connections closed
//! (dropped), and pings. A test scripts what the next connects and pings do
//! ([`Behaviour`]): succeed, fail, stall, hang, or (connects) wait for the test's
//! word. A connect told to fail dials a loopback port that is bound but not
//! listening, so the kernel itself refuses it (`ECONNREFUSED`), as it does for a
//! stopped upstream. A ping told to fail makes its round trip, then reports the
//! server unusable, as a server answering "loading" would.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use steadypool::Pool;
//! use steadypool_tests::servers::LineServer;
//! use steadypool_tests::unreliable::{Behaviour, UnreliableManager};
//!
//! let server = LineServer::start().await?;
//! let manager = UnreliableManager::new(server.addr())?;
//! // Five connects succeed, every later one is refused.
//! manager.script_connects(5, Behaviour::Succeed);
//! manager.set_connects(Behaviour::Fail);
//! let pool = Pool::builder(manager.clone()).max_size(5).build().unwrap();
//! # drop(pool); Ok(()) }
//! ```

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadypool::{Broken, Dialer, Manager, ResetCause, SocketRef};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;

use crate::line_manager::{LineConnection, request};
use crate::lock;
use crate::servers::LineServer;

/// What a connect or a ping does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Works: a connect opens a connection to the server, a ping makes its round trip.
    Succeed,
    /// Fails: a connect is refused by the kernel; a ping makes its round trip, then
    /// reports the server unusable.
    Fail,
    /// Works, after this long.
    Stall(Duration),
    /// Never finishes: a connect reaches the server, then waits for a handshake that
    /// never ends; a ping waits for a reply that never comes.
    Hang,
    /// Connects only: waits until the test decides with
    /// [`UnreliableManager::order`]. A ping told this hangs.
    AwaitOrder,
}

/// Scripted behaviours first, then the default.
#[derive(Debug)]
struct Plan {
    next: VecDeque<Behaviour>,
    then: Behaviour,
}

impl Plan {
    fn take(&mut self) -> Behaviour {
        self.next.pop_front().unwrap_or(self.then)
    }
}

#[derive(Debug)]
struct State {
    server: SocketAddr,
    /// Bound and never listening: connects to it are refused, and nobody else can
    /// take the port while the manager lives.
    refuser: TcpSocket,
    connects: Mutex<Plan>,
    pings: Mutex<Plan>,
    broken_checks: AtomicUsize,
    orders: mpsc::UnboundedSender<Behaviour>,
    inbox: tokio::sync::Mutex<mpsc::UnboundedReceiver<Behaviour>>,
    attempts: AtomicUsize,
    opened: AtomicUsize,
    closed: Arc<AtomicUsize>,
    pings_started: AtomicUsize,
}

/// Opens [`CountedConnection`]s to one server, misbehaving as scripted. Clones share
/// the script and the counters, so a test can keep one after handing the other to a
/// pool (and read the counters after the pool is gone).
#[derive(Debug, Clone)]
pub struct UnreliableManager(Arc<State>);

impl UnreliableManager {
    /// A new [`LineServer`] on loopback and a manager for it whose connects and pings
    /// all succeed until told otherwise: where every test of the ported suites starts.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use steadypool_tests::unreliable::UnreliableManager;
    ///
    /// let (server, manager) = UnreliableManager::with_server().await?;
    /// let pool = steadypool::Pool::builder(manager.clone()).build().unwrap();
    /// # drop((server, pool)); Ok(()) }
    /// ```
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn with_server() -> io::Result<(LineServer, UnreliableManager)> {
        let server = LineServer::start().await?;
        let manager = UnreliableManager::new(server.addr())?;
        Ok((server, manager))
    }

    /// A manager for the line server at `server` whose connects and pings all succeed
    /// until told otherwise.
    ///
    /// # Errors
    /// When no loopback port can be bound for refused connects.
    pub fn new(server: SocketAddr) -> io::Result<UnreliableManager> {
        let refuser = TcpSocket::new_v4()?;
        refuser.bind((Ipv4Addr::LOCALHOST, 0).into())?;
        let (orders, inbox) = mpsc::unbounded_channel();
        let always = |then| {
            Mutex::new(Plan {
                next: VecDeque::new(),
                then,
            })
        };
        Ok(UnreliableManager(Arc::new(State {
            server,
            refuser,
            connects: always(Behaviour::Succeed),
            pings: always(Behaviour::Succeed),
            broken_checks: AtomicUsize::new(0),
            orders,
            inbox: tokio::sync::Mutex::new(inbox),
            attempts: AtomicUsize::new(0),
            opened: AtomicUsize::new(0),
            closed: Arc::new(AtomicUsize::new(0)),
            pings_started: AtomicUsize::new(0),
        })))
    }

    /// What every connect does once the scripted ones are used up.
    pub fn set_connects(&self, behaviour: Behaviour) {
        lock(&self.0.connects).then = behaviour;
    }

    /// The next `n` connects (after any scripted before) do `behaviour`.
    pub fn script_connects(&self, n: usize, behaviour: Behaviour) {
        lock(&self.0.connects)
            .next
            .extend(std::iter::repeat_n(behaviour, n));
    }

    /// What every ping does once the scripted ones are used up.
    pub fn set_pings(&self, behaviour: Behaviour) {
        lock(&self.0.pings).then = behaviour;
    }

    /// The next `n` pings (after any scripted before) do `behaviour`.
    pub fn script_pings(&self, n: usize, behaviour: Behaviour) {
        lock(&self.0.pings)
            .next
            .extend(std::iter::repeat_n(behaviour, n));
    }

    /// The next `n` [`Manager::broken`] checks report the connection broken
    /// (`usize::MAX`: all of them).
    pub fn report_broken(&self, n: usize) {
        self.0.broken_checks.store(n, Ordering::SeqCst);
    }

    /// Decides the oldest connect waiting in [`Behaviour::AwaitOrder`] (or the next
    /// one to wait): it then does `behaviour`.
    pub fn order(&self, behaviour: Behaviour) {
        // The receiver lives as long as the sender, in the same state.
        let _ = self.0.orders.send(behaviour);
    }

    /// Connects started so far.
    pub fn attempts(&self) -> usize {
        self.0.attempts.load(Ordering::SeqCst)
    }

    /// Connections opened so far.
    pub fn opened(&self) -> usize {
        self.0.opened.load(Ordering::SeqCst)
    }

    /// Connections dropped (closed) so far.
    pub fn closed(&self) -> usize {
        self.0.closed.load(Ordering::SeqCst)
    }

    /// Pings started so far.
    pub fn pings(&self) -> usize {
        self.0.pings_started.load(Ordering::SeqCst)
    }

    async fn dial(&self, dialer: &Dialer, to: SocketAddr) -> io::Result<LineConnection> {
        Ok(tokio::io::BufReader::new(dialer.connect(&to.into()).await?))
    }
}

/// A real line-protocol connection with a serial number and a counter.
#[derive(Debug)]
pub struct CountedConnection {
    stream: LineConnection,
    serial: usize,
    /// Free for the test: how many times it was used, say.
    pub tally: usize,
    closed: Arc<AtomicUsize>,
}

impl CountedConnection {
    /// 1 for the manager's first connection, 2 for its second, and so on.
    pub fn serial(&self) -> usize {
        self.serial
    }

    /// Sends one request line and reads the reply line (see
    /// [`crate::line_manager::request`]).
    ///
    /// # Errors
    /// The I/O error.
    pub async fn request(&mut self, line: &str) -> io::Result<String> {
        request(&mut self.stream, line).await
    }
}

impl Drop for CountedConnection {
    fn drop(&mut self) {
        self.closed.fetch_add(1, Ordering::SeqCst);
    }
}

impl Manager for UnreliableManager {
    type Connection = CountedConnection;
    type Error = io::Error;

    async fn connect(&self, dialer: &Dialer) -> io::Result<CountedConnection> {
        let state = &self.0;
        state.attempts.fetch_add(1, Ordering::SeqCst);
        let mut behaviour = lock(&state.connects).take();
        while behaviour == Behaviour::AwaitOrder {
            // Held across the wait so that waiting connects are decided in turn; a
            // cancelled connect releases it without consuming an order.
            let mut inbox = state.inbox.lock().await;
            behaviour = inbox.recv().await.unwrap_or(Behaviour::Hang);
        }
        if behaviour == Behaviour::Fail {
            let refused = state.refuser.local_addr()?;
            self.dial(dialer, refused).await?;
            return Err(io::Error::other(format!(
                "{refused} accepted a connection although nothing listens there"
            )));
        }
        let stream = self.dial(dialer, state.server).await?;
        match behaviour {
            Behaviour::Stall(after) => tokio::time::sleep(after).await,
            Behaviour::Hang => std::future::pending::<()>().await,
            _ => {}
        }
        Ok(CountedConnection {
            stream,
            serial: state.opened.fetch_add(1, Ordering::SeqCst) + 1,
            tally: 0,
            closed: Arc::clone(&state.closed),
        })
    }

    fn socket<'a>(&self, conn: &'a CountedConnection) -> Option<SocketRef<'a>> {
        Some(SocketRef::from(&conn.stream))
    }

    async fn ping(&self, conn: &mut CountedConnection) -> io::Result<()> {
        self.0.pings_started.fetch_add(1, Ordering::SeqCst);
        let behaviour = lock(&self.0.pings).take();
        match behaviour {
            Behaviour::Hang | Behaviour::AwaitOrder => std::future::pending::<()>().await,
            Behaviour::Stall(after) => tokio::time::sleep(after).await,
            Behaviour::Succeed | Behaviour::Fail => {}
        }
        let reply = conn.request("PING").await?;
        if reply != "PONG" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("ping answered {reply:?}"),
            ));
        }
        if behaviour == Behaviour::Fail {
            return Err(io::Error::other("the server reports itself unusable"));
        }
        Ok(())
    }

    fn broken(&self, _: &CountedConnection) -> Option<Broken> {
        self.0
            .broken_checks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
            .then(|| Broken::new(ResetCause::Other))
    }
}
