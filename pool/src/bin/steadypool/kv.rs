//! The demo's upstream: a small in-process key-value server, its line protocol, and
//! the two ways the demo pools connections to it (a steadypool [`Manager`] and a plain
//! `deadpool` manager).
//!
//! One request per `\n`-terminated line, one reply line each:
//!
//! | request | reply |
//! |---|---|
//! | `PING` | `PONG` |
//! | `GET key` | `VALUE value`, or `NONE` when the key is not set |
//! | `SET key value` | `OK` |
//! | anything else | `ERR unknown command` |

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use steadypool::{Address, Classify, DialError, Dialer, Manager, SocketRef};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufStream,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

/// The longest request or reply line accepted. A peer sending more is not speaking
/// this protocol.
const MAX_LINE: u64 = 64 * 1024;

/// A pooled connection to the key-value server: a TCP stream read through a buffer
/// the pool can see (each request goes out in one write, so writes need none).
pub(crate) type KvConnection = BufReader<TcpStream>;

/// The key-value server, listening on a free loopback port until dropped (then its
/// listener and every connection close).
#[derive(Debug)]
pub(crate) struct KvServer {
    addr: SocketAddr,
    accept: AbortHandle,
}

impl Drop for KvServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl KvServer {
    /// Starts the server on `127.0.0.1` at a free port.
    ///
    /// # Errors
    /// The I/O error of binding the listener.
    pub(crate) async fn start() -> io::Result<KvServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let store = Arc::new(Mutex::new(HashMap::new()));
        let accept = tokio::spawn(accept_loop(listener, store)).abort_handle();
        Ok(KvServer { addr, accept })
    }

    /// Where the server listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

type Store = Arc<Mutex<HashMap<String, String>>>;

async fn accept_loop(listener: TcpListener, store: Store) {
    // The connections live in this task's set: aborting the task drops the set,
    // which aborts (and so closes) every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve(stream, Arc::clone(&store)));
                }
                // Out of descriptors, or a connection reset before it was taken: the
                // listener itself is fine, so keep accepting after a pause.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(stream: TcpStream, store: Store) {
    let _ = stream.set_nodelay(true);
    let mut conn = BufStream::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut conn).take(MAX_LINE).read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with('\n') => return,
            Ok(_) => {}
        }
        let reply = answer(line.trim_end_matches(['\r', '\n']), &store);
        if conn.write_all(reply.as_bytes()).await.is_err() || conn.flush().await.is_err() {
            return;
        }
    }
}

fn answer(request: &str, store: &Store) -> String {
    let mut parts = request.splitn(3, ' ');
    let lock = || store.lock().unwrap_or_else(PoisonError::into_inner);
    match (parts.next(), parts.next(), parts.next()) {
        (Some("PING"), None, None) => "PONG\n".to_owned(),
        (Some("GET"), Some(key), None) => match lock().get(key) {
            Some(value) => format!("VALUE {value}\n"),
            None => "NONE\n".to_owned(),
        },
        (Some("SET"), Some(key), Some(value)) => {
            lock().insert(key.to_owned(), value.to_owned());
            "OK\n".to_owned()
        }
        _ => "ERR unknown command\n".to_owned(),
    }
}

/// One request of the workload. Both kinds are idempotent: a `GET` reads, a `SET`
/// writes a fixed value, so running either twice leaves the same state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Read a key.
    Get(String),
    /// Set a key to a value.
    Set(String, String),
}

/// The server's answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// A `SET` was stored.
    Ok,
    /// A `GET`'s value, `None` when the key is not set.
    Value(Option<String>),
    /// The answer to `PING`.
    Pong,
}

impl Op {
    /// A `GET key`.
    pub(crate) fn get(key: impl Into<String>) -> Op {
        Op::Get(key.into())
    }

    /// A `SET key value`.
    pub(crate) fn set(key: impl Into<String>, value: impl Into<String>) -> Op {
        Op::Set(key.into(), value.into())
    }

    /// The request line, without its `\n`.
    pub(crate) fn line(&self) -> String {
        match self {
            Op::Get(key) => format!("GET {key}"),
            Op::Set(key, value) => format!("SET {key} {value}"),
        }
    }

    /// Sends the request on `conn` and reads the reply.
    ///
    /// # Errors
    /// [`KvError`]: the I/O error (end of stream is `UnexpectedEof`), a reply that
    /// is not this protocol, or the server's own error.
    pub(crate) async fn call<S>(self, conn: &mut S) -> Result<Reply, KvError>
    where
        S: AsyncBufRead + AsyncWrite + Unpin + Send,
    {
        let reply = exchange(conn, &self.line()).await?;
        match (&self, reply.split_once(' ')) {
            (Op::Set(..), None) if reply == "OK" => Ok(Reply::Ok),
            (Op::Get(_), None) if reply == "NONE" => Ok(Reply::Value(None)),
            (Op::Get(_), Some(("VALUE", value))) => Ok(Reply::Value(Some(value.to_owned()))),
            (_, Some(("ERR", message))) => Err(KvError::Server(message.to_owned())),
            _ => Err(KvError::Garbage(reply)),
        }
    }
}

/// Sends `PING` on `conn` and expects `PONG`.
///
/// # Errors
/// As [`Op::call`].
pub(crate) async fn ping<S>(conn: &mut S) -> Result<Reply, KvError>
where
    S: AsyncBufRead + AsyncWrite + Unpin + Send,
{
    match exchange(conn, "PING").await?.as_str() {
        "PONG" => Ok(Reply::Pong),
        other => Err(KvError::Garbage(other.to_owned())),
    }
}

/// One request line out, one reply line back (without its line end).
async fn exchange<S>(conn: &mut S, request: &str) -> Result<String, KvError>
where
    S: AsyncBufRead + AsyncWrite + Unpin + Send,
{
    conn.write_all(format!("{request}\n").as_bytes()).await?;
    conn.flush().await?;
    let mut reply = String::new();
    match (&mut *conn).take(MAX_LINE).read_line(&mut reply).await {
        Ok(0) => Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
        Ok(_) if !reply.ends_with('\n') => Err(KvError::Garbage(reply)),
        Ok(_) => {
            reply.truncate(reply.trim_end_matches(['\r', '\n']).len());
            Ok(reply)
        }
        // A reply that is not UTF-8 is not this protocol.
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(KvError::Garbage(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// Why a key-value request failed. [`Classify`] tells steadypool what each means.
#[derive(Debug, thiserror::Error, Classify)]
#[non_exhaustive]
pub(crate) enum KvError {
    /// The connection could not be opened.
    #[error(transparent)]
    #[classify(delegate)]
    Dial(#[from] DialError),
    /// The connection failed: reset, closed (`UnexpectedEof`), timed out.
    #[error("i/o: {0}")]
    #[classify(transport)]
    Io(#[from] io::Error),
    /// The peer answered something that is not this protocol.
    #[error("not a key-value server reply: {0:?}")]
    #[classify(broken = "unexpected_data")]
    Garbage(String),
    /// The server refused the request.
    #[error("server error: {0}")]
    Server(String),
}

/// Opens steadypool connections to the key-value server; pings with `PING`.
#[derive(Debug, Clone)]
pub(crate) struct KvManager {
    addr: Address,
}

impl KvManager {
    /// A manager for the server at `addr`.
    pub(crate) fn new(addr: impl Into<Address>) -> KvManager {
        KvManager { addr: addr.into() }
    }
}

impl Manager for KvManager {
    type Connection = KvConnection;
    type Error = KvError;

    async fn connect(&self, dialer: &Dialer) -> Result<KvConnection, KvError> {
        Ok(BufReader::new(dialer.connect(&self.addr).await?))
    }

    fn socket<'a>(&self, conn: &'a KvConnection) -> Option<SocketRef<'a>> {
        // The socket and the reader's buffer: a reply left unread in either would
        // answer the next request.
        Some(SocketRef::from(conn))
    }

    async fn ping(&self, conn: &mut KvConnection) -> Result<(), KvError> {
        ping(conn).await.map(drop)
    }
}

/// A plain `deadpool` manager for the key-value server, as most users of deadpool
/// write one: connect, and hand pooled connections back out unchecked.
#[derive(Debug, Clone)]
pub(crate) struct PlainKvManager {
    addr: String,
}

impl PlainKvManager {
    /// A manager for the server at `addr` (`host:port`).
    pub(crate) fn new(addr: impl Into<String>) -> PlainKvManager {
        PlainKvManager { addr: addr.into() }
    }
}

impl deadpool::managed::Manager for PlainKvManager {
    type Type = KvConnection;
    type Error = io::Error;

    async fn create(&self) -> io::Result<KvConnection> {
        let stream = TcpStream::connect(self.addr.as_str()).await?;
        stream.set_nodelay(true)?;
        Ok(BufReader::new(stream))
    }

    async fn recycle(
        &self,
        _: &mut KvConnection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<io::Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_get_their_replies() {
        let server = KvServer::start().await.unwrap();
        let mut conn = BufStream::new(TcpStream::connect(server.addr()).await.unwrap());
        assert_eq!(ping(&mut conn).await.unwrap(), Reply::Pong);
        assert_eq!(
            Op::get("k").call(&mut conn).await.unwrap(),
            Reply::Value(None)
        );
        assert_eq!(
            Op::set("k", "v w").call(&mut conn).await.unwrap(),
            Reply::Ok
        );
        assert_eq!(
            Op::get("k").call(&mut conn).await.unwrap(),
            Reply::Value(Some("v w".to_owned()))
        );
        let err = exchange(&mut conn, "HELLO").await.unwrap();
        assert_eq!(err, "ERR unknown command");
    }

    #[tokio::test]
    async fn a_closed_connection_is_peer_closed() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            drop(stream);
        });
        let mut conn = BufStream::new(TcpStream::connect(addr).await.unwrap());
        let err = Op::get("k").call(&mut conn).await.unwrap_err();
        assert!(err.classify().is_broken(), "{err}");
    }
}
