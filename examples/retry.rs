//! What an idempotent and a non-idempotent operation get from a server that resets
//! connections.
//!
//! The example starts its own counter server on 127.0.0.1: `GET` answers the
//! counter, `INCR` adds one and answers the new value. Every third request, the server
//! resets the connection: alternately before running the request (it never ran) and
//! after running it but before answering (it ran; the client cannot tell).
//!
//! The reads go through `run_idempotent` and all succeed: a broken connection is
//! discarded and the read is sent again on a fresh one. The increments go through
//! `run`: an increment whose connection broke after it was sent is not replayed, and
//! comes back as `RunError::MaybeExecuted` with the cause, because it may have run. At
//! the end the server's counter shows exactly which ones did.
//!
//! ```text
//! cargo run -p steadypool-examples --example retry
//! RUST_LOG=steadypool=debug cargo run -p steadypool-examples --example retry   # see each retry
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use steadypool::{
    Classify, DialError, Dialer, Manager, Pool, ResetCause, RetryPolicy, RunError, SocketRef,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufStream};
use tokio::net::{TcpListener, TcpStream};

/// The counter server's shared state: the counter, and how many requests arrived.
#[derive(Default)]
struct Counter {
    value: AtomicU64,
    requests: AtomicU64,
}

/// Serves one connection; every third request resets it (zero linger, then close).
async fn serve(counter: Arc<Counter>, stream: TcpStream) -> io::Result<()> {
    stream.set_zero_linger()?;
    let mut stream = BufStream::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let n = counter.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let reset_before = n % 6 == 3;
        let reset_after = n.is_multiple_of(6);
        if reset_before {
            return Ok(());
        }
        let value = match line.trim_end() {
            "INCR" => counter.value.fetch_add(1, Ordering::SeqCst) + 1,
            _ => counter.value.load(Ordering::SeqCst),
        };
        if reset_after {
            return Ok(());
        }
        stream.write_all(format!("{value}\n").as_bytes()).await?;
        stream.flush().await?;
    }
}

async fn start_server(counter: Arc<Counter>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(Arc::clone(&counter), stream));
        }
    });
    Ok(addr)
}

/// What can go wrong talking to the counter server, and what each failure means.
#[derive(Debug, thiserror::Error, Classify)]
enum CounterError {
    #[error("connect: {0}")]
    #[classify(delegate)]
    Dial(#[from] DialError),
    /// The request is one short line: if writing it failed, none of it left.
    #[error("could not send: {0}")]
    #[classify(transport, sent = "no")]
    Send(#[source] io::Error),
    /// The request went out; the reply did not come back.
    #[error("no reply: {0}")]
    #[classify(transport)]
    Receive(#[source] io::Error),
    #[error("unexpected reply {0:?}")]
    #[classify(broken = "unexpected_data")]
    Garbled(String),
}

struct CounterManager(SocketAddr);

impl Manager for CounterManager {
    type Connection = BufReader<TcpStream>;
    type Error = CounterError;

    async fn connect(&self, dialer: &Dialer) -> Result<Self::Connection, CounterError> {
        Ok(BufReader::new(dialer.connect(&self.0.into()).await?))
    }

    fn socket<'a>(&self, conn: &'a Self::Connection) -> Option<SocketRef<'a>> {
        // The socket and the reader's buffer: a reply left unread in either is stale.
        Some(SocketRef::from(conn))
    }
}

async fn request(conn: &mut BufReader<TcpStream>, verb: &str) -> Result<u64, CounterError> {
    conn.write_all(format!("{verb}\n").as_bytes())
        .await
        .map_err(CounterError::Send)?;
    let mut reply = String::new();
    match conn.read_line(&mut reply).await {
        Ok(0) => Err(CounterError::Receive(io::ErrorKind::UnexpectedEof.into())),
        Ok(_) => reply
            .trim_end()
            .parse()
            .map_err(|_| CounterError::Garbled(reply.clone())),
        Err(err) => Err(CounterError::Receive(err)),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let counter = Arc::new(Counter::default());
    let addr = start_server(Arc::clone(&counter)).await?;
    let pool = Pool::builder(CounterManager(addr))
        .name("counter")
        .max_size(1)
        .retry_policy(
            RetryPolicy::default()
                .max_attempts(4)
                .backoff(Duration::from_millis(10), Duration::from_millis(100)),
        )
        .build()?;

    println!("idempotent reads (run_idempotent): retried on any broken connection");
    for i in 1..=4 {
        let before = counter.requests.load(Ordering::SeqCst);
        let value = pool
            .run_idempotent(async |conn| request(conn, "GET").await)
            .await?;
        let sent = counter.requests.load(Ordering::SeqCst) - before;
        let note = if sent > 1 {
            " (its connection was reset; sent again on a fresh one)"
        } else {
            ""
        };
        println!("  GET #{i} -> {value}, sent {sent} time(s){note}");
    }

    println!("increments (run): never replayed once they may have reached the server");
    let mut unsure = 0;
    let mut done = 0;
    for i in 1..=6 {
        match pool.run(async |conn| request(conn, "INCR").await).await {
            Ok(value) => {
                done += 1;
                println!("  INCR #{i} -> {value}");
            }
            Err(RunError::MaybeExecuted { reason, cause, .. }) => {
                unsure += 1;
                let cause = cause.map_or("none", ResetCause::as_str);
                println!(
                    "  INCR #{i} -> {reason} (connection broke: {cause}) after sending; \
                     it may or may not have run"
                );
            }
            Err(other) => return Err(other.into()),
        }
    }

    let total = counter.value.load(Ordering::SeqCst);
    println!(
        "the server's counter is {total}: {done} increments confirmed, {} of the {unsure} \
         unconfirmed ones ran, none ran twice",
        total.saturating_sub(done)
    );
    Ok(())
}
