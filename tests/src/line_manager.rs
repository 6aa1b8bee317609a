//! A [`Manager`] for [`LineServer`](crate::servers::LineServer)'s protocol, with a
//! real round-trip ping, counting its connects and pings; and [`GreetedManager`],
//! whose connect lasts until the server's greeting, for servers that hold a
//! connection in its handshake.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use steadypool::{Address, Dialer, Manager, SocketRef};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A line connection: reads through a buffer the pool can see into
/// (`SocketRef::from`), writes straight to the socket.
pub type LineConnection = BufReader<TcpStream>;

/// Opens line-protocol connections to one address; pings with `PING` / `PONG`.
#[derive(Debug)]
pub struct LineManager {
    addr: Address,
    connects: AtomicUsize,
    pings: AtomicUsize,
}

impl LineManager {
    /// A manager for the server at `addr`.
    pub fn new(addr: impl Into<Address>) -> LineManager {
        LineManager {
            addr: addr.into(),
            connects: AtomicUsize::new(0),
            pings: AtomicUsize::new(0),
        }
    }

    /// Connections opened so far.
    pub fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }

    /// Pings started so far.
    pub fn pings(&self) -> usize {
        self.pings.load(Ordering::SeqCst)
    }
}

/// Sends one request line and reads the reply line (without its `\n`).
///
/// # Errors
/// The I/O error; `UnexpectedEof` when the server closed the connection.
pub async fn request(conn: &mut LineConnection, line: &str) -> io::Result<String> {
    // One write: a `BufReader` passes writes straight to the socket.
    conn.write_all(format!("{line}\n").as_bytes()).await?;
    let mut reply = String::new();
    if conn.read_line(&mut reply).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    reply.truncate(reply.trim_end_matches('\n').len());
    Ok(reply)
}

impl Manager for LineManager {
    type Connection = LineConnection;
    type Error = io::Error;

    async fn connect(&self, dialer: &Dialer) -> io::Result<LineConnection> {
        let stream = dialer.connect(&self.addr).await?;
        self.connects.fetch_add(1, Ordering::SeqCst);
        Ok(BufReader::new(stream))
    }

    fn socket<'a>(&self, conn: &'a LineConnection) -> Option<SocketRef<'a>> {
        Some(SocketRef::from(conn))
    }

    async fn ping(&self, conn: &mut LineConnection) -> io::Result<()> {
        self.pings.fetch_add(1, Ordering::SeqCst);
        match request(conn, "PING").await?.as_str() {
            "PONG" => Ok(()),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("ping answered {other:?}"),
            )),
        }
    }
}

/// A connect that is done when the server's greeting line, `HELLO`, arrived: a server
/// that holds the greeting holds the connect in its handshake, as a TLS or database
/// server does while it works.
#[derive(Debug)]
pub struct GreetedManager(pub SocketAddr);

impl Manager for GreetedManager {
    type Connection = LineConnection;
    type Error = io::Error;

    async fn connect(&self, dialer: &Dialer) -> io::Result<LineConnection> {
        let mut conn = BufReader::new(dialer.connect(&self.0.into()).await?);
        let mut greeting = String::new();
        conn.read_line(&mut greeting).await?;
        if greeting != "HELLO\n" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("greeted with {greeting:?}"),
            ));
        }
        Ok(conn)
    }

    fn socket<'a>(&self, conn: &'a LineConnection) -> Option<SocketRef<'a>> {
        Some(SocketRef::from(conn))
    }
}
