//! One probe connection: opened, left idle, watched for the path closing it, and
//! checked once at its appointed idle time.

use std::sync::Arc;
use std::time::Duration;

use socket2::TcpKeepalive;
use steadypool::{Classify, Dialer, Disposition, Manager, ResetCause, Sent};
use steadypool::{Liveness, SocketRef, TcpState, probe, tcp_state};
use tokio::time::Instant;

use crate::recommend::ClosedBy;

/// How often an idle connection is looked at: the resolution of a measured close.
pub(super) const POLL: Duration = Duration::from_millis(20);
/// A keepalive check: the probe goes out at the check time, unanswered ones are
/// repeated this often, and this many unanswered ones kill the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_PROBES: u32 = 2;
/// How long after its check time a keepalive-checked connection must survive to
/// count as alive: the probes' verdict, and a margin.
pub(super) const KEEPALIVE_VERDICT: Duration = Duration::from_millis(2500);

/// How a connection is checked at its appointed idle time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    /// A round trip in the protocol (the manager's ping), within this timeout.
    Ping(Duration),
    /// A TCP keepalive probe: works for any protocol, sends no application bytes.
    Keepalive,
}

impl Check {
    /// How long after its check time a connection's verdict may take.
    pub(super) fn verdict_time(self) -> Duration {
        match self {
            Check::Ping(timeout) => timeout,
            Check::Keepalive => KEEPALIVE_VERDICT,
        }
    }
}

/// Why a probe connection could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum OpenError {
    /// No TCP connection: refused, unreachable, timed out, unresolvable.
    Unreachable(String),
    /// A TCP connection, but the protocol's handshake failed.
    Handshake(String),
}

/// What one connection showed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Evidence {
    /// The path closed it by itself (FIN or RST arrived) after it sat idle this long.
    Closed { after: Duration, by: ClosedBy },
    /// It was found dead when checked after sitting idle this long.
    DeadOnCheck { after: Duration, by: ClosedBy },
    /// It answered its check after sitting idle this long.
    Alive { after: Duration },
}

impl Evidence {
    /// The idle time after which it died, if it did.
    pub(super) fn died_after(&self) -> Option<(Duration, ClosedBy)> {
        match *self {
            Evidence::Closed { after, by } | Evidence::DeadOnCheck { after, by } => {
                Some((after, by))
            }
            Evidence::Alive { .. } => None,
        }
    }
}

/// Opens connections and watches them: shared by every probe connection.
pub(super) struct Watcher<M: Manager> {
    pub(super) manager: M,
    pub(super) dialer: Dialer,
    pub(super) check: Check,
    /// Reads away bytes a server sends unasked (a greeting), which would otherwise
    /// hide a later close from the probe; `None` where a driver reads the socket.
    pub(super) drain: Option<fn(&M::Connection)>,
    /// Whether a connection must serve a request before it idles: an HTTP server
    /// starts its keep-alive timer only once it answered one.
    pub(super) warm: bool,
    /// The idle limit the server announced on a connection (HTTP's
    /// `Keep-Alive: timeout=N`), for protocols where it says one.
    pub(super) announced: fn(&M::Connection) -> Option<Duration>,
}

impl<M: Manager> Watcher<M> {
    /// Opens a connection, handshake included: the dialer's connect timeout, and
    /// then at most `handshake` more.
    pub(super) async fn open(&self, handshake: Duration) -> Result<M::Connection, OpenError> {
        let timeout = self.dialer.timeout() + handshake;
        match tokio::time::timeout(timeout, self.manager.connect(&self.dialer)).await {
            Ok(Ok(mut conn)) if self.warm => match self.ping(&mut conn).await {
                Ok(()) => Ok(conn),
                Err(reason) => Err(OpenError::Handshake(reason)),
            },
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(match err.classify() {
                // Nothing was sent: the TCP connection itself failed.
                Disposition::Broken { sent: Sent::No, .. } => {
                    OpenError::Unreachable(crate::error_chain(&err))
                }
                _ => OpenError::Handshake(crate::error_chain(&err)),
            }),
            Err(_) => Err(OpenError::Handshake(format!(
                "connected, but the handshake did not finish within {}",
                steadypool::human_duration(handshake)
            ))),
        }
    }

    /// A round trip on a fresh connection: proves the server speaks the protocol.
    pub(super) async fn ping(&self, conn: &mut M::Connection) -> Result<(), String> {
        let Check::Ping(timeout) = self.check else {
            return Ok(());
        };
        match tokio::time::timeout(timeout, self.manager.ping(conn)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(crate::error_chain(&err)),
            Err(_) => Err(format!(
                "no answer within {}",
                steadypool::human_duration(timeout)
            )),
        }
    }

    /// Whether the path closed the connection, and how, without touching it.
    fn closed(&self, conn: &M::Connection) -> Option<ClosedBy> {
        let Some(socket) = self.manager.socket(conn) else {
            // A driver that reads its socket all the time (HTTP) stops offering it
            // for probing once it read the end; what it read is its verdict.
            return self.manager.broken(conn).map(|broken| match broken.cause {
                ResetCause::PeerClosed => ClosedBy::Fin,
                ResetCause::UserTimeout | ResetCause::KeepaliveTimeout => ClosedBy::Silence,
                _ => ClosedBy::Rst,
            });
        };
        match probe(socket) {
            Liveness::Alive => None,
            Liveness::UnexpectedData => {
                let drain = self.drain?;
                drain(conn);
                self.manager.socket(conn).and_then(closed_by)
            }
            other => from_liveness(other, socket),
        }
    }

    /// Watches `conn`, opened at `opened`, until the path closes it, or checks it at
    /// `check_at` idle (never, for `None`).
    pub(super) async fn watch(
        self: Arc<Self>,
        mut conn: M::Connection,
        opened: Instant,
        check_at: Option<Duration>,
    ) -> Evidence {
        let mut armed = false;
        loop {
            let idle = opened.elapsed();
            if let Some(by) = self.closed(&conn) {
                return match (armed, check_at, by) {
                    // Keepalive probes went unanswered: dead when they went out.
                    (true, Some(at), ClosedBy::Silence) => Evidence::DeadOnCheck { after: at, by },
                    _ => Evidence::Closed { after: idle, by },
                };
            }
            match (check_at, self.check) {
                (Some(at), Check::Ping(timeout)) if idle >= at => {
                    return match tokio::time::timeout(timeout, self.manager.ping(&mut conn)).await {
                        Ok(Ok(())) => Evidence::Alive { after: at },
                        Ok(Err(err)) => Evidence::DeadOnCheck {
                            after: at,
                            by: match err.classify() {
                                Disposition::Broken {
                                    cause: ResetCause::PeerClosed,
                                    ..
                                } => ClosedBy::Fin,
                                Disposition::Broken {
                                    cause:
                                        ResetCause::UserTimeout
                                        | ResetCause::KeepaliveTimeout
                                        | ResetCause::PingFailed,
                                    ..
                                } => ClosedBy::Silence,
                                _ => ClosedBy::Rst,
                            },
                        },
                        Err(_) => Evidence::DeadOnCheck {
                            after: at,
                            by: ClosedBy::Silence,
                        },
                    };
                }
                (Some(at), Check::Keepalive) => {
                    if !armed && idle + KEEPALIVE_INTERVAL >= at {
                        armed = self.arm_keepalive(&conn);
                    }
                    if idle >= at + KEEPALIVE_VERDICT {
                        return Evidence::Alive { after: at };
                    }
                }
                _ => {}
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Turns keepalive on so its first probe leaves one interval from now: the kernel
    /// counts the keepalive idle time from this call.
    fn arm_keepalive(&self, conn: &M::Connection) -> bool {
        let Some(socket) = self.manager.socket(conn) else {
            return false;
        };
        let params = TcpKeepalive::new()
            .with_time(KEEPALIVE_INTERVAL)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES);
        socket.sock_ref().set_tcp_keepalive(&params).is_ok()
    }
}

fn closed_by(socket: SocketRef<'_>) -> Option<ClosedBy> {
    match probe(socket) {
        Liveness::Alive | Liveness::UnexpectedData => None,
        other => from_liveness(other, socket),
    }
}

fn from_liveness(liveness: Liveness, socket: SocketRef<'_>) -> Option<ClosedBy> {
    match liveness {
        Liveness::Alive | Liveness::UnexpectedData => None,
        Liveness::PeerReset => Some(ClosedBy::Rst),
        // A driver that reads the socket may have taken the reset's error already;
        // the kernel still knows: a reset connection is closed, a FIN leaves it in
        // CLOSE_WAIT.
        Liveness::PeerClosed => match tcp_state(socket) {
            Ok(TcpState::Closed) => Some(ClosedBy::Rst),
            _ => Some(ClosedBy::Fin),
        },
        Liveness::Error(err) if err.kind() == std::io::ErrorKind::TimedOut => {
            Some(ClosedBy::Silence)
        }
        Liveness::Error(_) => Some(ClosedBy::Rst),
    }
}
