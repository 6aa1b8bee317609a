//! The line protocol's plumbing that [`ExecServer`](crate::exec_server::ExecServer)
//! and [`LedgerServer`](crate::flaky::LedgerServer) share: the server's loop over one
//! connection's request lines, the tasks serving a server's connections, and the
//! client's side of a round trip. Each server keeps only what its requests mean and
//! which faults it strikes with.

use std::future::Future;
use std::io;
use std::sync::Mutex;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use crate::lock;

/// What a server does after reading one request line.
pub(crate) enum Answer {
    /// Writes the reply and reads the next request.
    Reply(String),
    /// Writes the reply, then closes the connection.
    ReplyThenClose(String),
    /// Resets the connection (RST) without a reply.
    Reset,
    /// Never replies: reads and ignores everything until the client goes away (the
    /// connection stays open meanwhile, as a hung server's does).
    Hang,
}

/// Serves one connection: gives each request line, without its line end, to
/// `answer`, until the client goes away, a reply cannot be written, or an answer ends
/// the connection.
pub(crate) async fn serve(stream: TcpStream, mut answer: impl FnMut(&str) -> Answer) {
    let mut stream = BufStream::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match answer(line.trim_end()) {
            Answer::Reply(reply) => {
                if write(&mut stream, &reply).await.is_err() {
                    return;
                }
            }
            Answer::ReplyThenClose(reply) => {
                let _ = write(&mut stream, &reply).await;
                return;
            }
            Answer::Reset => {
                reset(stream.into_inner());
                return;
            }
            Answer::Hang => {
                let _ = tokio::io::copy(&mut stream, &mut tokio::io::sink()).await;
                return;
            }
        }
    }
}

async fn write(stream: &mut BufStream<TcpStream>, reply: &str) -> io::Result<()> {
    stream.write_all(reply.as_bytes()).await?;
    stream.flush().await
}

/// Closes with an RST (zero linger), as a crashed or overloaded server does.
pub(crate) fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// The tasks serving a server's connections, so that stopping the server stops them.
#[derive(Debug, Default)]
pub(crate) struct Handlers(Mutex<Vec<AbortHandle>>);

impl Handlers {
    /// Runs `serving` on a task of its own, kept until it ends or is aborted.
    pub(crate) fn spawn(&self, serving: impl Future<Output = ()> + Send + 'static) {
        let task = tokio::spawn(serving);
        let mut handlers = lock(&self.0);
        handlers.retain(|handler| !handler.is_finished());
        handlers.push(task.abort_handle());
    }

    /// Aborts every task; returns them, for a caller that waits until they are gone.
    pub(crate) fn abort_all(&self) -> Vec<AbortHandle> {
        let handlers = std::mem::take(&mut *lock(&self.0));
        for handler in &handlers {
            handler.abort();
        }
        handlers
    }
}

/// Sends one request line. The line and its end go in one write, so when that write
/// fails none of the request left.
///
/// # Errors
/// The write's or the flush's.
pub(crate) async fn send<S: AsyncWrite + Unpin>(conn: &mut S, request: &str) -> io::Result<()> {
    conn.write_all(format!("{request}\n").as_bytes()).await?;
    conn.flush().await
}

/// Reads one reply line, without its line end.
///
/// # Errors
/// The read's; `UnexpectedEof` when the server closed the connection first.
pub(crate) async fn receive<S: AsyncBufRead + Unpin>(conn: &mut S) -> io::Result<String> {
    let mut reply = String::new();
    if conn.read_line(&mut reply).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    reply.truncate(reply.trim_end().len());
    Ok(reply)
}
