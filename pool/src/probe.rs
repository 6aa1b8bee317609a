//! Is this idle connection still alive? Answered without a round trip.
//!
//! A peer that closed (FIN) or reset (RST) a connection has already told the kernel,
//! and the kernel has told tokio's reactor. The probe reads that knowledge back:
//!
//! * For a [`SocketRef::Tokio`] stream it asks tokio whether it recorded read
//!   readiness since the last read. In the common case (nothing arrived while the
//!   connection sat in the pool) that is an atomic load and **no system call**. Only
//!   when readiness was recorded does it `peek` one byte to learn what arrived.
//! * For a [`SocketRef::Buffered`] stream (one behind a read buffer, such as tokio's
//!   [`BufReader`]) it first reads the buffer's length: bytes the application's
//!   reader already took off the socket but nobody consumed are as stale as bytes
//!   still in the kernel, and the kernel cannot see them. An empty buffer costs one
//!   comparison, then the stream is probed as above.
//! * A [`SocketRef::Unix`] stream (a Unix-domain socket) is probed as a
//!   [`SocketRef::Tokio`] one, through tokio's recorded readiness.
//! * For a [`SocketRef::Raw`] socket (a duplicated descriptor of a socket a driver owns,
//!   such as tokio-postgres's) it peeks one byte with `MSG_PEEK | MSG_DONTWAIT`: one
//!   system call, about 450 ns.
//!   It works on any stream socket, TCP or Unix-domain.
//!
//! | what the kernel says | [`Liveness`] |
//! |---|---|
//! | nothing to read (`EAGAIN`) | [`Liveness::Alive`] |
//! | end of stream (0 bytes) | [`Liveness::PeerClosed`]; on a [`SocketRef::Raw`] duplicate whose TCP state is `CLOSED`, [`Liveness::PeerReset`] (the owner read the reset) |
//! | `ECONNRESET` | [`Liveness::PeerReset`] |
//! | some bytes (or some in the reader's buffer) | [`Liveness::UnexpectedData`] |
//! | another error (`ETIMEDOUT` after keepalive gave up, ...) | [`Liveness::Error`] |
//!
//! * For a [`SocketRef::Layered`] stream (a protocol layer such as TLS between the
//!   socket and the application) the socket is probed as a [`SocketRef::Tokio`] one,
//!   free when nothing arrived. When bytes arrived, they may belong to the layer
//!   itself (a TLS 1.3 session ticket, a KeyUpdate, an alert): the probe asks the
//!   [`Layer`] to [`drain`](Layer::drain) them without blocking, and the layer's
//!   answer decides (see [`Layer`]).
//!
//! When bytes are waiting on a TCP socket, the probe also reads the socket's TCP state
//! (`TCP_INFO`, one more system call, only then): data followed by a FIN (a server's
//! goodbye, then its close) leaves the socket in `CLOSE_WAIT` and is
//! [`Liveness::PeerClosed`], which the pool learns the path's idle limit from, rather
//! than [`Liveness::UnexpectedData`].
//!
//! Apart from a [`Layer`]'s drain, the probe never consumes data. What it cannot see is a silent black hole: a
//! middlebox that dropped the flow without telling anyone. Keepalive (see
//! [`crate::dial`]) turns that into an `ETIMEDOUT` the probe then sees, and the
//! checkout ping covers connections idle longer than `check_after`.
//!
//! This is the only module that calls libc directly: [`tcp_state`] reads `TCP_INFO`.
#![allow(unsafe_code)]

use std::io;
use std::mem::MaybeUninit;

use socket2::SockRef;
use tokio::io::{BufReader, Interest};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;

/// A connection's socket, as a [`crate::Manager`] exposes it for probing.
///
/// Build it with `From` from what the connection holds: a bare [`TcpStream`] gives
/// [`SocketRef::Tokio`], a [`BufReader<TcpStream>`] gives [`SocketRef::Buffered`].
/// A connection that reads through a buffer must show the buffer: bytes in it are
/// invisible to the kernel, and a pool that cannot see them hands out a connection
/// whose next read returns an earlier request's leftovers.
///
/// ```
/// # async fn demo(stream: tokio::net::TcpStream) {
/// use steadypool::{Liveness, SocketRef, probe};
/// use tokio::io::BufReader;
///
/// assert!(matches!(probe(SocketRef::from(&stream)), Liveness::Alive));
/// let reader = BufReader::new(stream);
/// assert!(matches!(probe(SocketRef::from(&reader)), Liveness::Alive));
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum SocketRef<'a> {
    /// A tokio stream no other task reads while the connection is idle: probed through
    /// tokio's recorded readiness, usually without a system call.
    Tokio(&'a TcpStream),
    /// A tokio stream read through a user-space buffer (see
    /// `From<&BufReader<TcpStream>>`): unconsumed bytes in the buffer are
    /// [`Liveness::UnexpectedData`] ([`Liveness::PeerClosed`] when the peer closed
    /// behind them); with none, probed as [`SocketRef::Tokio`].
    Buffered {
        /// The socket under the buffer.
        stream: &'a TcpStream,
        /// Bytes read from the socket into the buffer and not consumed yet.
        buffered: usize,
    },
    /// A Unix-domain stream no other task reads while the connection is idle: probed
    /// as [`SocketRef::Tokio`]. A Unix socket has no TCP state: [`tcp_state`] answers
    /// `Unsupported`.
    #[cfg(unix)]
    Unix(&'a UnixStream),
    /// Any socket, e.g. a duplicate of one a driver's background task owns: probed
    /// with one non-blocking `peek`. The pool treats bytes found here as the owning
    /// task's next message, not as [`Liveness::UnexpectedData`] worth a reconnect,
    /// unless the peer closed behind them ([`Liveness::PeerClosed`]).
    Raw(RawSocket<'a>),
    /// A tokio stream under a protocol layer that reads it (TLS): probed as
    /// [`SocketRef::Tokio`], usually without a system call; bytes found on the socket
    /// go to [`Layer::drain`], which tells its own records from the application's.
    /// [`TlsStream::socket_ref`](crate::drivers::tls::TlsStream::socket_ref) builds
    /// one (feature `tls`).
    Layered {
        /// The socket under the layer.
        stream: &'a TcpStream,
        /// The layer, asked to drain what arrived.
        layer: &'a dyn Layer,
    },
}

/// A protocol layer between a socket and the application, such as TLS, that sends
/// records of its own on an idle connection.
///
/// A TLS 1.3 server sends session tickets after the handshake and may send a KeyUpdate
/// at any time; it sends a close_notify alert before its FIN, and a fatal alert before
/// it aborts. Those bytes wake the socket like an application's would, yet only the
/// last two mean the connection is gone. The probe cannot tell them apart by peeking;
/// the layer can, by reading them.
///
/// [`drain`](Layer::drain) is called only when bytes are waiting on an idle
/// connection, through a shared reference (the pool's reaper holds idle connections
/// that way): keep the layer's state behind a lock, taken with `try_lock` there and
/// with `get_mut` on the application's path, where it costs nothing. Read without
/// blocking (poll once with a no-op waker) and answer:
///
/// | the layer read | answer |
/// |---|---|
/// | only its own records (tickets, KeyUpdate), then nothing more (`Pending`) | [`Liveness::Alive`] |
/// | a close_notify, or the end of the stream | [`Liveness::PeerClosed`] |
/// | a fatal alert | [`Liveness::Error`] with kind `ConnectionAborted` (counted as `peer_reset`) and the alert in its message |
/// | application bytes | [`Liveness::UnexpectedData`] (the connection is discarded, so they may be consumed) |
/// | the lock is held | [`Liveness::Alive`] (someone else is reading: not idle) |
///
/// ```
/// use steadypool::{Layer, Liveness, SocketRef, probe};
/// use tokio::net::TcpStream;
///
/// /// A layer that never sends anything of its own: whatever arrives is the
/// /// application's.
/// struct Plain;
///
/// impl Layer for Plain {
///     fn drain(&self) -> Liveness {
///         Liveness::UnexpectedData
///     }
/// }
///
/// # async fn demo(stream: TcpStream) {
/// let socket = SocketRef::Layered { stream: &stream, layer: &Plain };
/// assert!(matches!(probe(socket), Liveness::Alive));
/// # }
/// ```
pub trait Layer: Sync {
    /// Reads, without blocking, what arrived for an idle connection, and says what it
    /// was (see the table above).
    fn drain(&self) -> Liveness;
}

impl std::fmt::Debug for dyn Layer + '_ {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Layer")
    }
}

/// A borrowed socket handle: a file descriptor on Unix.
#[cfg(unix)]
pub type RawSocket<'a> = std::os::fd::BorrowedFd<'a>;
/// A borrowed socket handle: a `SOCKET` on Windows.
#[cfg(windows)]
pub type RawSocket<'a> = std::os::windows::io::BorrowedSocket<'a>;

impl<'a> From<&'a TcpStream> for SocketRef<'a> {
    fn from(stream: &'a TcpStream) -> Self {
        SocketRef::Tokio(stream)
    }
}

#[cfg(unix)]
impl<'a> From<&'a UnixStream> for SocketRef<'a> {
    fn from(stream: &'a UnixStream) -> Self {
        SocketRef::Unix(stream)
    }
}

/// The buffer's length is read when the manager's `socket` is called, that is at
/// each probe: a field read, no system call.
impl<'a> From<&'a BufReader<TcpStream>> for SocketRef<'a> {
    fn from(reader: &'a BufReader<TcpStream>) -> Self {
        SocketRef::Buffered {
            stream: reader.get_ref(),
            buffered: reader.buffer().len(),
        }
    }
}

impl<'a> SocketRef<'a> {
    /// The socket as `socket2` sees it (for reading options back, or `TCP_INFO`).
    pub fn sock_ref(&self) -> SockRef<'_> {
        match self {
            SocketRef::Tokio(stream)
            | SocketRef::Buffered { stream, .. }
            | SocketRef::Layered { stream, .. } => SockRef::from(*stream),
            #[cfg(unix)]
            SocketRef::Unix(stream) => SockRef::from(*stream),
            SocketRef::Raw(sock) => SockRef::from(sock),
        }
    }
}

/// What the probe learned about an idle connection.
#[derive(Debug)]
pub enum Liveness {
    /// Nothing arrived: as far as the kernel knows, the peer is there.
    Alive,
    /// The peer closed its side (FIN).
    PeerClosed,
    /// The peer or a middlebox reset the connection (RST).
    PeerReset,
    /// Bytes arrived that nobody asked for: on the socket, or left unconsumed in the
    /// reader's buffer.
    UnexpectedData,
    /// The socket reports another error, such as `ETIMEDOUT` after keepalive gave up.
    Error(io::Error),
}

/// Probes an idle connection without consuming anything from it.
///
/// Call it only on a connection no other task is reading from.
#[inline]
pub fn check(socket: SocketRef<'_>) -> Liveness {
    match socket {
        SocketRef::Tokio(stream) => check_tokio(stream),
        SocketRef::Buffered {
            stream,
            buffered: 1..,
        } => behind_data(&SockRef::from(stream)),
        SocketRef::Buffered { stream, .. } => check_tokio(stream),
        #[cfg(unix)]
        SocketRef::Unix(stream) => check_tokio(stream),
        SocketRef::Raw(sock) => check_raw(&SockRef::from(&sock)),
        SocketRef::Layered { stream, layer } => match peek_tokio(stream) {
            None => Liveness::Alive,
            // The layer reads to the end of what arrived: a FIN behind its records
            // shows up there as the end of the stream, and an alert is told from a
            // close_notify, which the socket's state alone cannot do.
            Some(Ok(1..)) => layer.drain(),
            Some(other) => from_peek(other),
        },
    }
}

/// Bytes are waiting: [`Liveness::PeerClosed`] when a FIN came behind them (the
/// socket is in `CLOSE_WAIT`), else [`Liveness::UnexpectedData`]. Costs one
/// `TCP_INFO` read, paid only when bytes are there; a socket without TCP state (Unix
/// domain) answers `UnexpectedData`.
#[cold]
fn behind_data(sock: &SockRef<'_>) -> Liveness {
    match tcp_info_state(sock) {
        Ok(TCP_CLOSE_WAIT) => Liveness::PeerClosed,
        _ => Liveness::UnexpectedData,
    }
}

/// A tokio stream whose recorded readiness the probe can read: TCP and Unix-domain
/// streams share one probe, compiled for each, so the TCP path costs what it did.
trait Readiness {
    fn sock_ref(&self) -> SockRef<'_>;
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

impl Readiness for TcpStream {
    #[inline]
    fn sock_ref(&self) -> SockRef<'_> {
        SockRef::from(self)
    }
    #[inline]
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        TcpStream::try_io(self, interest, f)
    }
}

#[cfg(unix)]
impl Readiness for UnixStream {
    #[inline]
    fn sock_ref(&self) -> SockRef<'_> {
        SockRef::from(self)
    }
    #[inline]
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        UnixStream::try_io(self, interest, f)
    }
}

#[inline]
fn check_tokio<S: Readiness>(stream: &S) -> Liveness {
    match peek_tokio(stream) {
        None => Liveness::Alive,
        Some(Ok(1..)) => behind_data(&stream.sock_ref()),
        Some(other) => from_peek(other),
    }
}

/// Peeks one byte when tokio recorded read readiness; `None` when it recorded none.
#[inline]
fn peek_tokio<S: Readiness>(stream: &S) -> Option<io::Result<usize>> {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    // `try_io` looks at the readiness tokio recorded (an atomic load) and returns
    // `WouldBlock` without calling the closure when nothing was recorded; when
    // something was, the closure peeks and, on `EAGAIN`, tokio clears the stale
    // readiness so the next probe is free again. Unlike `poll_peek` it neither
    // registers a waker nor draws on the task's cooperative budget: with the budget
    // spent, `poll_peek` answers `Pending`, which would pass a dead socket as alive.
    // READABLE alone: its mask covers a FIN and an RST (read-closed); a combined
    // interest would match nothing here.
    let mut peeked = false;
    let result = stream.try_io(Interest::READABLE, || {
        peeked = true;
        stream.sock_ref().peek(&mut byte)
    });
    // Nothing recorded, so no peek: the error is tokio's `WouldBlock`, and reading
    // its kind back would cost more than the readiness check itself. tokio builds it
    // from an `ErrorKind`, which holds no allocation: forgetting it skips an
    // out-of-line drop that would be a tenth of what steadypool adds to a checkout.
    if !peeked {
        std::mem::forget(result);
        return None;
    }
    Some(result)
}

fn check_raw(sock: &SockRef<'_>) -> Liveness {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    #[cfg(unix)]
    let result = sock.recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT);
    // Without MSG_DONTWAIT the socket's own blocking mode decides; drivers' sockets
    // are non-blocking, which is what the probe needs.
    #[cfg(not(unix))]
    let result = sock.peek(&mut byte);
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Liveness::Alive,
        // The kernel reports an RST's error once: when a driver's task owns the
        // socket it has usually read it already, and the duplicate sees only the end of
        // stream. The state still tells them apart: a FIN leaves CLOSE_WAIT, an RST
        // leaves CLOSED.
        Ok(0) if tcp_info_state(sock).is_ok_and(|state| state == TCP_CLOSED) => Liveness::PeerReset,
        Ok(1..) => behind_data(sock),
        other => from_peek(other),
    }
}

fn from_peek(result: io::Result<usize>) -> Liveness {
    match result {
        Ok(0) => Liveness::PeerClosed,
        Ok(_) => Liveness::UnexpectedData,
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Liveness::PeerReset,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Liveness::Alive,
        Err(e) => Liveness::Error(e),
    }
}

/// `tcpi_state` values (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSED: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;

/// A TCP connection's state, as the kernel reports it in `TCP_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TcpState {
    /// Open in both directions.
    Established,
    /// The peer sent FIN; this side has not closed yet. A pool that leaves sockets
    /// in this state leaks them.
    CloseWait,
    /// Closed (for instance after an RST or a keepalive timeout).
    Closed,
    /// Any other state, by its kernel number.
    Other(u8),
}

/// Reads the socket's TCP state from the kernel (`getsockopt(TCP_INFO)`, ~740 ns).
///
/// Linux only; elsewhere it returns an `Unsupported` error. Diagnostics and tests use
/// it to check that no socket lingers in `CLOSE_WAIT`.
///
/// ```
/// # async fn demo(stream: tokio::net::TcpStream) -> std::io::Result<()> {
/// use steadypool::{SocketRef, TcpState, tcp_state};
/// assert_eq!(tcp_state(SocketRef::Tokio(&stream))?, TcpState::Established);
/// # Ok(()) }
/// ```
pub fn tcp_state(socket: SocketRef<'_>) -> io::Result<TcpState> {
    let state = tcp_info_state(&socket.sock_ref())?;
    Ok(match state {
        TCP_ESTABLISHED => TcpState::Established,
        TCP_CLOSED => TcpState::Closed,
        TCP_CLOSE_WAIT => TcpState::CloseWait,
        other => TcpState::Other(other),
    })
}

#[cfg(target_os = "linux")]
fn tcp_info_state(sock: &SockRef<'_>) -> io::Result<u8> {
    use std::os::fd::AsRawFd;
    let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes that outlives the call, and
    // the descriptor is borrowed from a live socket for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the buffer was zero-initialised and the kernel filled at most `len`
    // bytes of it; every bit pattern is a valid `tcp_info` (plain integers).
    let info = unsafe { info.assume_init() };
    Ok(info.tcpi_state)
}

#[cfg(not(target_os = "linux"))]
fn tcp_info_state(_sock: &SockRef<'_>) -> io::Result<u8> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "TCP_INFO is only read on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// Lets the reactor see what the peer did.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn idle_connection_is_alive_on_both_paths() {
        let (client, _server) = pair().await;
        assert!(matches!(check(SocketRef::Tokio(&client)), Liveness::Alive));
        assert!(matches!(
            check(SocketRef::Raw(client.as_fd())),
            Liveness::Alive
        ));
        assert_eq!(
            tcp_state(SocketRef::Tokio(&client)).unwrap(),
            TcpState::Established
        );
    }

    #[tokio::test]
    async fn fin_is_peer_closed_and_leaves_close_wait() {
        let (client, server) = pair().await;
        drop(server);
        settle().await;
        assert!(matches!(
            check(SocketRef::Tokio(&client)),
            Liveness::PeerClosed
        ));
        assert!(matches!(
            check(SocketRef::Raw(client.as_fd())),
            Liveness::PeerClosed
        ));
        assert_eq!(
            tcp_state(SocketRef::Tokio(&client)).unwrap(),
            TcpState::CloseWait
        );
    }

    #[tokio::test]
    async fn rst_is_peer_reset() {
        let (client, server) = pair().await;
        server.set_zero_linger().unwrap();
        drop(server);
        settle().await;
        assert!(matches!(
            check(SocketRef::Tokio(&client)),
            Liveness::PeerReset
        ));
    }

    #[tokio::test]
    async fn rst_is_peer_reset_on_the_raw_path() {
        let (client, server) = pair().await;
        server.set_zero_linger().unwrap();
        drop(server);
        settle().await;
        assert!(matches!(
            check(SocketRef::Raw(client.as_fd())),
            Liveness::PeerReset
        ));
    }

    #[tokio::test]
    async fn rst_already_read_by_the_owner_is_still_peer_reset_on_the_raw_path() {
        let (client, server) = pair().await;
        server.set_zero_linger().unwrap();
        drop(server);
        settle().await;
        // The socket's owner (a driver's task) reads first and takes the error.
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        let owner_read = SockRef::from(&client).recv_with_flags(&mut byte, libc::MSG_DONTWAIT);
        assert_eq!(
            owner_read.unwrap_err().kind(),
            io::ErrorKind::ConnectionReset
        );
        let duplicate = client.as_fd().try_clone_to_owned().unwrap();
        assert!(matches!(
            check(SocketRef::Raw(duplicate.as_fd())),
            Liveness::PeerReset
        ));
    }

    #[tokio::test]
    async fn fin_already_seen_by_the_owner_stays_peer_closed_on_the_raw_path() {
        let (client, server) = pair().await;
        drop(server);
        settle().await;
        let duplicate = client.as_fd().try_clone_to_owned().unwrap();
        assert!(matches!(
            check(SocketRef::Raw(duplicate.as_fd())),
            Liveness::PeerClosed
        ));
    }

    #[tokio::test]
    async fn stray_bytes_are_unexpected_data_and_not_consumed() {
        let (client, mut server) = pair().await;
        server.write_all(b"x").await.unwrap();
        settle().await;
        assert!(matches!(
            check(SocketRef::Tokio(&client)),
            Liveness::UnexpectedData
        ));
        assert!(matches!(
            check(SocketRef::Tokio(&client)),
            Liveness::UnexpectedData
        ));
    }

    #[tokio::test]
    async fn data_followed_by_a_fin_is_peer_closed_on_every_path() {
        let (client, mut server) = pair().await;
        server.write_all(b"goodbye\n").await.unwrap();
        drop(server);
        settle().await;
        assert!(matches!(
            check(SocketRef::Tokio(&client)),
            Liveness::PeerClosed
        ));
        assert!(matches!(
            check(SocketRef::Raw(client.as_fd())),
            Liveness::PeerClosed
        ));
        let reader = BufReader::new(client);
        assert!(matches!(
            check(SocketRef::from(&reader)),
            Liveness::PeerClosed
        ));
    }

    /// A layer that counts its drains and answers what it was told to.
    struct Counting {
        drains: std::sync::atomic::AtomicUsize,
        answer: fn() -> Liveness,
    }

    impl Layer for Counting {
        fn drain(&self) -> Liveness {
            self.drains
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (self.answer)()
        }
    }

    #[tokio::test]
    async fn a_layer_drains_only_when_bytes_arrived_and_has_the_last_word() {
        let (client, mut server) = pair().await;
        let layer = Counting {
            drains: 0.into(),
            answer: || Liveness::Alive,
        };
        let socket = SocketRef::Layered {
            stream: &client,
            layer: &layer,
        };
        assert!(matches!(check(socket), Liveness::Alive));
        assert_eq!(layer.drains.load(std::sync::atomic::Ordering::SeqCst), 0);
        // A record the layer consumes (this one does not read: the bytes stay, and
        // each probe asks again).
        server.write_all(b"ticket").await.unwrap();
        settle().await;
        assert!(matches!(check(socket), Liveness::Alive));
        assert_eq!(layer.drains.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Behind the bytes, a FIN: still the layer's to judge (an alert before it
        // is a reset, a close_notify a close).
        drop(server);
        settle().await;
        let closing = Counting {
            drains: 0.into(),
            answer: || Liveness::PeerClosed,
        };
        let socket = SocketRef::Layered {
            stream: &client,
            layer: &closing,
        };
        assert!(matches!(check(socket), Liveness::PeerClosed));
        assert_eq!(closing.drains.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_layered_socket_with_nothing_before_its_fin_is_peer_closed_without_a_drain() {
        let (client, server) = pair().await;
        let layer = Counting {
            drains: 0.into(),
            answer: || Liveness::Alive,
        };
        drop(server);
        settle().await;
        let socket = SocketRef::Layered {
            stream: &client,
            layer: &layer,
        };
        assert!(matches!(check(socket), Liveness::PeerClosed));
        assert_eq!(layer.drains.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_unix_stream_is_probed_on_both_paths() {
        let (client, server) = tokio::net::UnixStream::pair().unwrap();
        assert!(matches!(check(SocketRef::from(&client)), Liveness::Alive));
        assert!(matches!(
            check(SocketRef::Raw(client.as_fd())),
            Liveness::Alive
        ));
        server.try_write(b"x").unwrap();
        settle().await;
        assert!(matches!(
            check(SocketRef::Unix(&client)),
            Liveness::UnexpectedData
        ));
        let mut byte = [0u8; 1];
        assert_eq!(client.try_read(&mut byte).unwrap(), 1);
        drop(server);
        settle().await;
        assert!(matches!(
            check(SocketRef::Unix(&client)),
            Liveness::PeerClosed
        ));
        // No TCP state to tell a reset from a close: the end of stream is a close.
        assert!(matches!(
            check(SocketRef::Raw(client.as_fd())),
            Liveness::PeerClosed
        ));
        assert_eq!(
            tcp_state(SocketRef::Unix(&client)).unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
    }

    #[tokio::test]
    async fn bytes_left_in_a_read_buffer_are_unexpected_data() {
        use tokio::io::AsyncBufReadExt;

        let (client, mut server) = pair().await;
        let mut reader = BufReader::new(client);
        server.write_all(b"answer\nstale\n").await.unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        assert_eq!(line, "answer\n");
        // The kernel has nothing left: only the buffer holds the stale line.
        assert!(matches!(
            check(SocketRef::Tokio(reader.get_ref())),
            Liveness::Alive
        ));
        assert!(matches!(
            check(SocketRef::from(&reader)),
            Liveness::UnexpectedData
        ));
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        assert!(matches!(check(SocketRef::from(&reader)), Liveness::Alive));
        drop(server);
        settle().await;
        assert!(matches!(
            check(SocketRef::from(&reader)),
            Liveness::PeerClosed
        ));
    }
}
