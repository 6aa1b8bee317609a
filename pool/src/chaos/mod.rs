//! A fault-injecting TCP proxy, for testing what a client does when the network
//! misbehaves (feature `chaos`).
//!
//! A [`ChaosProxy`] listens on a loopback port and forwards every connection to an
//! upstream. Its [`Faults`] are switched while it runs, and reach open connections at
//! their next chunk of bytes:
//!
//! | fault | what the client sees | the production cause it stands for |
//! |---|---|---|
//! | [`idle_close`](Faults::idle_close) | EOF or `ECONNRESET` after the connection sat idle | a load balancer's or NAT's idle timeout |
//! | [`reset_after_bytes`](Faults::reset_after_bytes) | `ECONNRESET` mid-stream | a middlebox or server dropping a flow |
//! | [`reset_probability`](Faults::reset_probability) | `ECONNRESET` instead of a reply, at random (seedable) | overload, flaky middleboxes |
//! | [`black_hole`](Faults::black_hole) | nothing arrives, the socket stays open | a hung middlebox or server |
//! | [`refuse`](Faults::refuse) | `ECONNREFUSED` on connect | the upstream is down |
//! | [`crash`](ChaosProxy::crash) | `ECONNRESET` on every open connection at once | the upstream was killed |
//! | [`latency`](Faults::latency) | replies come late, with jitter | a distant or congested path |
//! | [`max_connections`](Faults::max_connections) | a reset right after connecting, beyond the cap | the upstream's connection limit |
//!
//! [`ChaosProxy::stats`] counts what the proxy did, per fault ([`ChaosStats`]), so a test
//! can compare the resets its client reports with the resets that were injected.
//! Dropping the proxy stops it: it stops listening and closes every open connection.
//!
//! What a userspace proxy cannot do: drop packets. Its kernel acknowledges every byte,
//! so a black hole here never trips the client's keepalive or `TCP_USER_TIMEOUT`; for
//! that, drop packets with a firewall rule in a private network namespace.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use steadypool::chaos::{ChaosProxy, IdleClose};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::net::{TcpListener, TcpStream};
//!
//! // An echo server stands in for the upstream.
//! let upstream = TcpListener::bind("127.0.0.1:0").await?;
//! let upstream_addr = upstream.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut conn, _)) = upstream.accept().await {
//!         tokio::spawn(async move {
//!             let (mut rd, mut wr) = conn.split();
//!             let _ = tokio::io::copy(&mut rd, &mut wr).await;
//!         });
//!     }
//! });
//!
//! // A load balancer that resets connections idle for 100 ms.
//! let proxy = ChaosProxy::builder(upstream_addr).seed(42).start().await?;
//! proxy.set_idle_close(Some(IdleClose::rst(Duration::from_millis(100))));
//!
//! let mut conn = TcpStream::connect(proxy.local_addr()).await?;
//! conn.write_all(b"ping").await?;
//! let mut reply = [0u8; 4];
//! conn.read_exact(&mut reply).await?;
//! assert_eq!(&reply, b"ping");
//!
//! tokio::time::sleep(Duration::from_millis(300)).await;
//! let err = conn.read(&mut reply).await.unwrap_err();
//! assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
//! assert_eq!(proxy.stats().idle_rst, 1);
//!
//! // The upstream is killed: every open connection is reset at once.
//! let mut other = TcpStream::connect(proxy.local_addr()).await?;
//! other.write_all(b"x").await?;
//! other.read_exact(&mut reply[..1]).await?;
//! assert_eq!(proxy.crash().await, 1);
//! assert!(other.read(&mut reply).await.is_err());
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, doc(cfg(feature = "chaos")))]

mod error;
mod faults;
mod listener;
mod relay;
mod stats;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use self::error::ChaosError;
pub use self::faults::{CloseWith, Faults, IdleClose, Latency};
use self::listener::Listener;
use self::relay::{Control, Shared};
pub use self::stats::ChaosStats;
use crate::dial::{Address, Dialer};

/// Configures a [`ChaosProxy`] before it starts.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), steadypool::chaos::ChaosError> {
/// use std::time::Duration;
/// use steadypool::chaos::{ChaosProxy, Faults};
///
/// let proxy = ChaosProxy::builder("127.0.0.1:5432")
///     .seed(7)
///     .faults(Faults { reset_probability: 0.01, ..Faults::none() })
///     .upstream_connect_timeout(Duration::from_secs(1))
///     .start()
///     .await?;
/// assert!(proxy.local_addr().ip().is_loopback());
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until start() is called"]
pub struct ChaosBuilder {
    upstream: Address,
    listen: SocketAddr,
    seed: Option<u64>,
    faults: Faults,
    connect_timeout: Duration,
}

impl ChaosBuilder {
    /// Where to listen. Default `127.0.0.1:0`: a free loopback port.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Seeds the random draws (resets, latency jitter) so a run can be repeated.
    /// Default: a random seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The faults in force from the start. Default: none.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// How long the proxy tries to reach the upstream for each new connection before
    /// it resets the client. Default 5 s.
    pub fn upstream_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Binds the listening socket and starts accepting.
    ///
    /// # Errors
    /// [`ChaosError::Bind`] when the address cannot be listened on,
    /// [`ChaosError::Probability`] for invalid initial faults,
    /// [`ChaosError::Listener`] when the initial faults refuse connections and the
    /// kernel cannot, [`ChaosError::NoRuntime`] outside a tokio runtime.
    pub async fn start(self) -> Result<ChaosProxy, ChaosError> {
        self.faults.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ChaosError::NoRuntime)?;
        let shared = Arc::new(Shared::new(
            self.upstream,
            Dialer::new().connect_timeout(self.connect_timeout),
            self.seed.unwrap_or_else(|| fastrand::u64(..)),
        ));
        let (control, watcher) = watch::channel(Control {
            faults: self.faults,
            crash_epoch: 0,
        });
        let listener = Listener::start(self.listen, !self.faults.refuse, {
            let shared = Arc::clone(&shared);
            move |client| {
                let shared = Arc::clone(&shared);
                let control = watcher.clone();
                runtime.spawn(async move {
                    if let Ok(client) = tokio::net::TcpStream::from_std(client) {
                        relay::serve(shared, control, client).await;
                    }
                });
            }
        })?;
        Ok(ChaosProxy {
            listener,
            shared,
            control,
        })
    }
}

/// A TCP proxy whose faults are switched at run time. See the [module docs](self).
///
/// Dropping it stops it: it stops listening and every open connection is closed
/// (with a FIN) by its own task shortly after. [`ChaosProxy::shutdown`] also waits for
/// them.
#[derive(Debug)]
pub struct ChaosProxy {
    // Dropping the listener stops accepting; dropping `control` ends every relay (the
    // accept side holds only a receiver).
    listener: Listener,
    shared: Arc<Shared>,
    control: watch::Sender<Control>,
}

impl ChaosProxy {
    /// A proxy to `upstream` on a free loopback port, with no faults.
    ///
    /// # Errors
    /// See [`ChaosBuilder::start`].
    pub async fn start(upstream: impl Into<Address>) -> Result<ChaosProxy, ChaosError> {
        ChaosProxy::builder(upstream).start().await
    }

    /// Configures a proxy to `upstream` (`"host:port"` or a socket address).
    pub fn builder(upstream: impl Into<Address>) -> ChaosBuilder {
        ChaosBuilder {
            upstream: upstream.into(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            seed: None,
            faults: Faults::none(),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.control.borrow().faults
    }

    /// Replaces every fault at once.
    ///
    /// # Errors
    /// [`ChaosError::Probability`] for a bad probability (nothing changes then);
    /// [`ChaosError::Listener`] when refusing cannot be switched (the other faults
    /// apply regardless).
    pub fn set_faults(&self, faults: Faults) -> Result<(), ChaosError> {
        faults.validate()?;
        let was_refusing = self.faults().refuse;
        let switched = if faults.refuse == was_refusing {
            Ok(())
        } else {
            self.listener.set_listening(!faults.refuse)
        };
        let refuse = if switched.is_ok() {
            faults.refuse
        } else {
            was_refusing
        };
        self.control.send_modify(|control| {
            control.faults = Faults { refuse, ..faults };
        });
        switched
    }

    /// Changes some faults, keeping the others.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), steadypool::chaos::ChaosError> {
    /// # let proxy = steadypool::chaos::ChaosProxy::start("127.0.0.1:9").await?;
    /// proxy.update(|f| {
    ///     f.black_hole = true;
    ///     f.max_connections = Some(4);
    /// })?;
    /// assert!(proxy.faults().black_hole);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`ChaosProxy::set_faults`].
    pub fn update(&self, change: impl FnOnce(&mut Faults)) -> Result<(), ChaosError> {
        let mut faults = self.faults();
        change(&mut faults);
        self.set_faults(faults)
    }

    /// Turns every fault off.
    ///
    /// # Errors
    /// [`ChaosError::Listener`] when the proxy was refusing and cannot listen again.
    pub fn clear(&self) -> Result<(), ChaosError> {
        self.set_faults(Faults::none())
    }

    /// Closes connections silent for a while (`None`: never).
    pub fn set_idle_close(&self, idle_close: Option<IdleClose>) {
        self.control
            .send_modify(|control| control.faults.idle_close = idle_close);
    }

    /// Resets connections once this many bytes crossed them (`None`: never).
    pub fn set_reset_after_bytes(&self, bytes: Option<u64>) {
        self.control
            .send_modify(|control| control.faults.reset_after_bytes = bytes);
    }

    /// Resets a connection instead of forwarding a chunk, with this chance per chunk.
    ///
    /// # Errors
    /// [`ChaosError::Probability`] unless `0 <= probability <= 1`.
    pub fn set_reset_probability(&self, probability: f64) -> Result<(), ChaosError> {
        self.update(|f| f.reset_probability = probability)
    }

    /// Starts or ends a black hole: sockets stay open, nothing is forwarded.
    pub fn set_black_hole(&self, black_hole: bool) {
        self.control
            .send_modify(|control| control.faults.black_hole = black_hole);
    }

    /// Starts or ends refusing new connections (`ECONNREFUSED`). Takes effect before
    /// this returns.
    ///
    /// # Errors
    /// [`ChaosError::Listener`] when the kernel cannot stop or resume listening
    /// (refusing needs Linux).
    pub fn set_refuse(&self, refuse: bool) -> Result<(), ChaosError> {
        self.update(|f| f.refuse = refuse)
    }

    /// Sets the added latency per chunk (`None`: none).
    pub fn set_latency(&self, latency: Option<Latency>) {
        self.control
            .send_modify(|control| control.faults.latency = latency);
    }

    /// Caps concurrent connections (`None`: no cap); beyond the cap a new connection
    /// is reset at once.
    pub fn set_max_connections(&self, max: Option<usize>) {
        self.control
            .send_modify(|control| control.faults.max_connections = max);
    }

    /// Resets every open connection at once, as when the upstream process is killed,
    /// and returns when all of them are gone; returns how many there were. New
    /// connections are accepted as before (combine with [`ChaosProxy::set_refuse`] for
    /// an upstream that stays down).
    pub async fn crash(&self) -> usize {
        let mut epoch = 0;
        self.control.send_modify(|control| {
            control.crash_epoch += 1;
            epoch = control.crash_epoch;
        });
        self.shared.counters.crash();
        let reset = self.shared.older_than(epoch);
        self.shared
            .wait_until(|shared| shared.older_than(epoch) == 0)
            .await;
        reset
    }

    /// The counters so far.
    pub fn stats(&self) -> ChaosStats {
        self.shared.counters.snapshot()
    }

    /// Stops the proxy and waits until every connection it held is closed.
    pub async fn shutdown(self) {
        let shared = Arc::clone(&self.shared);
        drop(self);
        shared.wait_until(|shared| shared.open_relays() == 0).await;
    }
}

#[cfg(test)]
mod tests;
