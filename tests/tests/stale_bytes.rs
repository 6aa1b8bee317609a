//! Bytes nobody asked for, already taken off the socket by the connection's own read
//! buffer: the kernel has nothing left to show, yet the next read returns them. A
//! manager written the way `Manager`'s documentation shows lets the pool see that
//! buffer, so such a connection is discarded as `unexpected_data` instead of
//! answering the next request with the previous one's leftovers.

use std::io;
use std::net::SocketAddr;

use steadypool::{Address, Dialer, Manager, Pool, ResetCause, SocketRef};
use steadypool_tests::recorded::Books;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const REQUESTS: u64 = 300;
const WORKERS: u64 = 4;

/// A server that answers `ECHO n` with `n`, and then once more: every reply leaves a
/// stale line behind it, as a desynchronised protocol or a buggy upstream does. Both
/// lines go out in one write, so the client's buffered read takes both at once.
async fn start_stuttering_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    line.clear();
                    match stream.read_line(&mut line).await {
                        Ok(n) if n > 0 => {}
                        _ => return,
                    }
                    let Some(n) = line.trim_end().strip_prefix("ECHO ") else {
                        return;
                    };
                    let reply = format!("{n}\n{n}\n");
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A line-protocol manager, as `Manager`'s documentation writes one.
struct LineManager(Address);

impl Manager for LineManager {
    type Connection = BufReader<TcpStream>;
    type Error = io::Error;

    async fn connect(&self, dialer: &Dialer) -> io::Result<Self::Connection> {
        Ok(BufReader::new(dialer.connect(&self.0).await?))
    }

    fn socket<'a>(&self, conn: &'a Self::Connection) -> Option<SocketRef<'a>> {
        Some(SocketRef::from(conn))
    }
}

/// One request, one reply line.
async fn echo(conn: &mut BufReader<TcpStream>, n: u64) -> io::Result<String> {
    conn.write_all(format!("ECHO {n}\n").as_bytes()).await?;
    let mut reply = String::new();
    if conn.read_line(&mut reply).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(reply.trim_end().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_bytes_in_the_read_buffer_never_answer_the_next_request() {
    let addr = start_stuttering_server().await;
    let pool = Pool::builder(LineManager(addr.into()))
        .name("stale-bytes")
        .max_size(WORKERS as usize)
        .build()
        .unwrap();
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let pool = pool.clone();
        workers.push(tokio::spawn(async move {
            let mut wrong = Vec::new();
            for i in 0..REQUESTS / WORKERS {
                let n = worker * 1_000_000 + i;
                let mut conn = pool.get().await.unwrap();
                let reply = echo(&mut conn, n).await.unwrap();
                if reply != n.to_string() {
                    wrong.push(format!("ECHO {n} answered {reply}"));
                }
            }
            wrong
        }));
    }
    let mut wrong = Vec::new();
    for worker in workers {
        wrong.extend(worker.await.unwrap());
    }
    assert!(
        wrong.is_empty(),
        "{} of {REQUESTS} requests read another request's answer, e.g. {:?}; resets {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)],
        pool.stats().reset_table()
    );
    // Every connection was left with a stale line after each request; only those
    // still idle in the pool at the end have not been checked since.
    let stale = pool.stats().resets_with_cause(ResetCause::UnexpectedData);
    assert!(
        stale >= REQUESTS - WORKERS,
        "{stale} connections discarded as unexpected_data: {:?}",
        pool.stats().reset_table()
    );
    assert_eq!(
        pool.stats().all_resets(),
        stale,
        "{:?}",
        pool.stats().reset_table()
    );
}
