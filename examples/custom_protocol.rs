//! A pool for your own protocol: a [`Manager`] for a tiny line-based key-value
//! protocol, run end to end against a server started here.
//!
//! The server closes connections that sit idle for 1.5 s, as a Node.js server's
//! `keepAliveTimeout` (5 s by default) or a load balancer would. The pool keeps its
//! connections longer, so every idle connection it holds is closed under it: the
//! classic idle-timeout conflict behind most production `ECONNRESET`s. The pool finds
//! each closed connection before the application sees it (the reaper probes idle
//! connections every second, and every checkout probes the one it is about to hand
//! out), logs it with its cause (`peer_closed`) and a hint, and opens a fresh one: no
//! request fails.
//!
//! ```text
//! cargo run -p steadypool-examples --example custom_protocol
//! ```
//!
//! Protocol (one request per line): `SET key value` → `OK`, `GET key` → `VALUE value`
//! or `NONE`, `PING` → `PONG`.

use std::collections::HashMap;
use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use steadypool::{Address, Classify, DialError, Dialer, Manager, Pool, SocketRef};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How long the server keeps an idle connection.
const SERVER_IDLE_TIMEOUT: Duration = Duration::from_millis(1500);

// --- The client side: what a user of steadypool writes. ---

/// What can go wrong talking to the key-value server. The derive tells the pool
/// which errors break the connection and which leave it usable.
#[derive(Debug, thiserror::Error, Classify)]
enum KvError {
    #[error("could not connect: {0}")]
    #[classify(delegate)]
    Dial(#[from] DialError),
    #[error("i/o: {0}")]
    #[classify(transport)]
    Io(#[from] io::Error),
    #[error("the server answered {0:?}")]
    #[classify(broken = "unexpected_data")]
    Protocol(String),
}

/// Opens key-value connections; the pool calls it, the application never does.
struct KvManager {
    addr: Address,
}

impl Manager for KvManager {
    // Reads go through a buffer the pool can see (writes go straight out, one
    // `write_all` per request).
    type Connection = BufReader<TcpStream>;
    type Error = KvError;

    async fn connect(&self, dialer: &Dialer) -> Result<Self::Connection, KvError> {
        // The dialer sets keepalive, TCP_USER_TIMEOUT and TCP_NODELAY on the socket.
        Ok(BufReader::new(dialer.connect(&self.addr).await?))
    }

    fn socket<'a>(&self, conn: &'a Self::Connection) -> Option<SocketRef<'a>> {
        // Lets the pool probe idle connections without a round trip, and see a reply
        // left unread in the buffer (a connection out of step with its server).
        Some(SocketRef::from(conn))
    }

    async fn ping(&self, conn: &mut Self::Connection) -> Result<(), KvError> {
        match call(conn, "PING").await?.as_str() {
            "PONG" => Ok(()),
            other => Err(KvError::Protocol(other.to_owned())),
        }
    }
}

/// One request, one reply line.
async fn call(conn: &mut BufReader<TcpStream>, request: &str) -> Result<String, KvError> {
    conn.write_all(format!("{request}\n").as_bytes()).await?;
    let mut reply = String::new();
    if conn.read_line(&mut reply).await? == 0 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(reply.trim_end().to_owned())
}

async fn set(pool: &Pool<KvManager>, key: &str, value: &str) -> anyhow::Result<()> {
    let mut conn = pool.get().await?;
    let reply = call(&mut conn, &format!("SET {key} {value}")).await?;
    ensure!(reply == "OK", "SET {key}: {reply}");
    Ok(())
}

async fn get(pool: &Pool<KvManager>, key: &str) -> anyhow::Result<Option<String>> {
    let mut conn = pool.get().await?;
    let reply = call(&mut conn, &format!("GET {key}")).await?;
    match reply.split_once(' ') {
        Some(("VALUE", value)) => Ok(Some(value.to_owned())),
        _ if reply == "NONE" => Ok(None),
        _ => Err(KvError::Protocol(reply).into()),
    }
}

// --- The server side: a stand-in for the upstream. ---

async fn serve(listener: TcpListener) {
    let store = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    while let Ok((stream, _)) = listener.accept().await {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            loop {
                line.clear();
                match tokio::time::timeout(SERVER_IDLE_TIMEOUT, stream.read_line(&mut line)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    // Idle too long, closed by the client, or broken: close (FIN).
                    _ => return,
                }
                let reply = {
                    let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
                    let words: Vec<&str> = line.trim_end().splitn(3, ' ').collect();
                    match words.as_slice() {
                        ["PING"] => "PONG".to_owned(),
                        ["SET", key, value] => {
                            store.insert((*key).to_owned(), (*value).to_owned());
                            "OK".to_owned()
                        }
                        ["GET", key] => match store.get(*key) {
                            Some(value) => format!("VALUE {value}"),
                            None => "NONE".to_owned(),
                        },
                        _ => "ERR unknown command".to_owned(),
                    }
                };
                if stream
                    .get_mut()
                    .write_all(format!("{reply}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

async fn run_all<F, T>(tasks: impl IntoIterator<Item = F>) -> anyhow::Result<Vec<T>>
where
    F: Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
    let mut results = Vec::with_capacity(handles.len());
    for handle in handles {
        results.push(handle.await??);
    }
    Ok(results)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Shows the pool's warnings: one per connection it found closed.
    tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    tokio::spawn(serve(listener));

    let pool = Pool::builder(KvManager { addr: addr.into() })
        .name("kv")
        .max_size(4)
        // Longer than the server's 1.5 s on purpose: the conflict this example shows.
        .idle_timeout(Some(Duration::from_secs(30)))
        .build()?;

    let keys: Vec<String> = (0..16).map(|i| format!("key{i}")).collect();
    run_all(keys.iter().map(|key| {
        let (pool, key) = (pool.clone(), key.clone());
        async move { set(&pool, &key, &format!("value-of-{key}")).await }
    }))
    .await
    .context("writing")?;
    let status = pool.status();
    println!("16 writes over {} pooled connections", status.size);

    let idle = SERVER_IDLE_TIMEOUT + Duration::from_millis(500);
    println!("idling {idle:?}: the server closes every idle connection");
    tokio::time::sleep(idle).await;

    let values = run_all(keys.iter().map(|key| {
        let (pool, key) = (pool.clone(), key.clone());
        async move { get(&pool, &key).await }
    }))
    .await
    .context("reading after the server closed the idle connections")?;
    for (key, value) in keys.iter().zip(&values) {
        ensure!(
            value.as_deref() == Some(format!("value-of-{key}").as_str()),
            "{key} read back as {value:?}"
        );
    }
    ensure!(
        get(&pool, "missing").await?.is_none(),
        "a missing key was found"
    );
    println!("16 reads after the idle spell: all correct, none failed");
    println!("pool status: {:?}", pool.status());
    Ok(())
}
