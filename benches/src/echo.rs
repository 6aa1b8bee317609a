//! The upstream every pool talks to: an echo server on loopback.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

/// An echo server on `127.0.0.1` (a free port), writing back every byte it reads, on
/// every connection, until dropped. Dropping it closes its listener and every
/// connection.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// let server = steadypool_benches::echo::EchoServer::start().await?;
/// let mut conn = tokio::net::TcpStream::connect(server.addr()).await?;
/// steadypool_benches::wire::echo(&mut conn, 1).await?;
/// assert_eq!(server.accepts(), 1);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    accepts: Arc<AtomicU64>,
    task: AbortHandle,
}

impl EchoServer {
    /// Starts a server on a free loopback port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start() -> io::Result<EchoServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepts = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(listener, Arc::clone(&accepts))).abort_handle();
        Ok(EchoServer {
            addr,
            accepts,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> u64 {
        self.accepts.load(Ordering::Relaxed)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, accepts: Arc<AtomicU64>) {
    // The connections live in this task's set: aborting the task closes them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    accepts.fetch_add(1, Ordering::Relaxed);
                    connections.spawn(echo_back(stream));
                }
                // Out of descriptors: back off instead of spinning.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn echo_back(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
