//! The proxy's listening socket: a port it keeps while it refuses connections, and the
//! thread that accepts them.
//!
//! Refusing is done by the kernel: on Linux, shutting down the read side of a
//! listening socket returns it to the closed state while it stays bound, so new SYNs
//! are answered with an RST (the client gets `ECONNREFUSED`), and `listen` revives it
//! on the same port. Accepting runs on a plain thread with a blocking `accept`, not on
//! the async reactor: the reactor would keep the socket's one-time hang-up as a
//! permanent "closed" state and spin once it listens again; a blocked `accept`, in
//! contrast, simply wakes up with an error at the shutdown and is called again later.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use std::net::TcpStream;

use super::error::ChaosError;

/// Pending connections the listener holds.
const BACKLOG: i32 = 1024;
/// Tries at binding a free port that the proxy can later stop and resume listening on.
const BIND_ATTEMPTS: usize = 16;
/// How often a refusing (or descriptor-starved) listener tries `accept` again, unless
/// woken sooner.
const RETRY: Duration = Duration::from_millis(50);

/// The listening socket and its accept thread. Dropping it stops the thread.
#[derive(Debug)]
pub(super) struct Listener {
    socket: Arc<Socket>,
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: thread::Thread,
}

impl Listener {
    /// Binds `addr` and starts accepting; `on_accept` runs on the accept thread for
    /// every connection (non-blocking already), which it must hand off at once.
    pub(super) fn start(
        addr: SocketAddr,
        listening: bool,
        on_accept: impl Fn(TcpStream) + Send + 'static,
    ) -> Result<Listener, ChaosError> {
        let socket = Arc::new(bind(addr)?);
        let local_addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| ChaosError::Bind {
                addr,
                source: io::Error::other("the bound socket has no IP address"),
            })?;
        if !listening {
            stop_listening(&socket)?;
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let handle = thread::Builder::new()
            .name("steadypool-chaos-accept".to_owned())
            .spawn({
                let socket = Arc::clone(&socket);
                let stopping = Arc::clone(&stopping);
                move || accept_loop(&socket, &stopping, on_accept)
            })
            .map_err(|source| ChaosError::Bind { addr, source })?;
        Ok(Listener {
            socket,
            local_addr,
            stopping,
            thread: handle.thread().clone(),
        })
    }

    pub(super) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops (`false`) or resumes (`true`) listening, keeping the port.
    pub(super) fn set_listening(&self, listening: bool) -> Result<(), ChaosError> {
        if listening {
            self.socket
                .listen(BACKLOG)
                .map_err(|source| ChaosError::Listener {
                    action: "resume",
                    source,
                })?;
            self.thread.unpark();
            Ok(())
        } else {
            stop_listening(&self.socket)
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // Wakes the blocked `accept`; the thread then sees `stopping` and ends, and the
        // socket closes with the last reference.
        let _ = self.socket.shutdown(Shutdown::Read);
        self.thread.unpark();
    }
}

fn stop_listening(socket: &Socket) -> Result<(), ChaosError> {
    socket
        .shutdown(Shutdown::Read)
        .map_err(|source| ChaosError::Listener {
            action: "stop",
            source,
        })
}

fn accept_loop(socket: &Socket, stopping: &AtomicBool, on_accept: impl Fn(TcpStream)) {
    loop {
        let accepted = socket.accept();
        if stopping.load(Ordering::Acquire) {
            return;
        }
        match accepted.and_then(|(client, _)| {
            client.set_nonblocking(true)?;
            Ok(TcpStream::from(client))
        }) {
            Ok(client) => on_accept(client),
            // Not listening (refusing), or out of descriptors: try again later.
            Err(_) => thread::park_timeout(RETRY),
        }
    }
}

/// Binds a listener on `addr`. A port of 0 is resolved to a concrete free port first:
/// only a socket bound to an explicit port keeps it when it stops and resumes listening.
fn bind(addr: SocketAddr) -> Result<Socket, ChaosError> {
    let bind_error = |source| ChaosError::Bind { addr, source };
    let mut last = None;
    for _ in 0..BIND_ATTEMPTS {
        let target = if addr.port() == 0 {
            let probe = std::net::TcpListener::bind(addr).map_err(bind_error)?;
            probe.local_addr().map_err(bind_error)?
        } else {
            addr
        };
        match bind_exact(target) {
            Ok(socket) => return Ok(socket),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && addr.port() == 0 => last = Some(e),
            Err(e) => return Err(bind_error(e)),
        }
    }
    Err(bind_error(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::AddrInUse, "no free port")
    })))
}

fn bind_exact(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}
