//! A pool's metrics, served for Prometheus, while a misbehaving upstream gives them
//! something to count.
//!
//! ```text
//! cargo run -p steadypool-examples --example prometheus -- --seconds 30
//! curl -s http://127.0.0.1:9464/metrics | grep '^steadypool_resets_total' | grep -v ' 0$'
//! ```
//!
//! Everything runs on loopback: a line-protocol upstream, a pool, a client and
//! `metrics-exporter-prometheus`'s HTTP listener; after `--seconds` it prints a
//! summary. The upstream misbehaves the way production upstreams do: it closes
//! connections idle for 2 s (watch the pool learn that limit,
//! `steadypool_idle_limit_*_seconds`, and switch from resets to `idle_expired`
//! evictions); half way through it crashes with requests in flight and refuses
//! connects for a second (`peer_reset`, `refused`, the circuit opening).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;
use steadypool::{Address, Dialer, Manager, Pool, SocketRef};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

/// The upstream closes connections idle this long.
const UPSTREAM_IDLE_LIMIT: Duration = Duration::from_secs(2);
/// How long the crashed upstream stays down.
const DOWN_FOR: Duration = Duration::from_secs(1);
/// Requests per burst.
const BURST: usize = 4;
/// How long the upstream works on a request.
const WORK: Duration = Duration::from_millis(20);

#[derive(Parser, Debug)]
#[command(about = "A steadypool pool under faults, its metrics served for Prometheus")]
struct Args {
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Where the Prometheus endpoint listens (a loopback address).
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
}

/// A line-protocol connection: one request line, one reply line.
struct LineManager(Address);

type Line = BufReader<TcpStream>;

async fn request(conn: &mut Line, line: &str) -> std::io::Result<String> {
    conn.write_all(format!("{line}\n").as_bytes()).await?;
    let mut reply = String::new();
    if conn.read_line(&mut reply).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(reply.trim_end().to_owned())
}

impl Manager for LineManager {
    type Connection = Line;
    type Error = std::io::Error;

    async fn connect(&self, dialer: &Dialer) -> std::io::Result<Line> {
        Ok(BufReader::new(dialer.connect(&self.0).await?))
    }

    fn socket<'a>(&self, conn: &'a Line) -> Option<SocketRef<'a>> {
        // The socket and the reader's buffer: bytes nobody asked for may sit in either.
        Some(SocketRef::from(conn))
    }

    async fn ping(&self, conn: &mut Line) -> std::io::Result<()> {
        match request(conn, "PING").await?.as_str() {
            "PONG" => Ok(()),
            other => Err(std::io::Error::other(format!("ping answered {other:?}"))),
        }
    }
}

/// When the upstream crashes: at its first request after `at`, with the burst in flight.
struct Crash {
    at: Instant,
    fired: AtomicBool,
    now: Notify,
}

impl Crash {
    fn on_request(&self) {
        if Instant::now() >= self.at && !self.fired.swap(true, Ordering::SeqCst) {
            self.now.notify_one();
        }
    }
}

/// The upstream: serves until `stop`, crashing once.
async fn upstream(
    listener: TcpListener,
    crash: Arc<Crash>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let (dying, dead) = watch::channel(false);
    let mut listener = Some(listener);
    let mut handlers = JoinSet::new();
    loop {
        let accept = async {
            match &listener {
                Some(l) => l.accept().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            accepted = accept => {
                if let Some((stream, _)) = accepted {
                    handlers.spawn(serve(stream, dead.clone(), Arc::clone(&crash)));
                }
            }
            () = crash.now.notified() => {
                println!("upstream: crash (every connection reset, down for {DOWN_FOR:?})");
                dying.send_replace(true);
                // Not listening: connects are refused until it is back.
                drop(listener.take());
                tokio::time::sleep(DOWN_FOR).await;
                dying.send_replace(false);
                listener = Some(TcpListener::bind(addr).await.context("rebinding the upstream")?);
                println!("upstream: back");
            }
            Some(_) = handlers.join_next(), if !handlers.is_empty() => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// One upstream connection: answers lines, closes it after [`UPSTREAM_IDLE_LIMIT`]
/// of silence, and resets it on a crash.
async fn serve(stream: TcpStream, mut dead: watch::Receiver<bool>, crash: Arc<Crash>) {
    let mut lines = BufReader::new(stream).lines();
    loop {
        let line = tokio::select! {
            line = tokio::time::timeout(UPSTREAM_IDLE_LIMIT, lines.next_line()) => line,
            _ = dead.wait_for(|dead| *dead) => break,
        };
        let reply = match line {
            Ok(Ok(Some(line))) if line == "PING" => "PONG\n".to_owned(),
            Ok(Ok(Some(line))) => {
                crash.on_request();
                tokio::select! {
                    () = tokio::time::sleep(WORK) => format!("OK {line}\n"),
                    _ = dead.wait_for(|dead| *dead) => break,
                }
            }
            // Idle too long (FIN), end of stream, or an error: close.
            _ => return,
        };
        let stream = lines.get_mut().get_mut();
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
    // A dying process's sockets are reset, with requests in flight or not.
    let _ = lines.get_ref().get_ref().set_zero_linger();
}

/// The workload: a burst of [`BURST`] requests at once, then 1 to 4 s of nothing
/// (gaps on both sides of the upstream's idle limit), forever. The requests of a
/// burst overlap (the upstream takes a few milliseconds each), so a burst needs
/// several connections, which then sit idle until a later burst. Reads are
/// idempotent and retried; every fifth request is a write, never replayed once it may
/// have reached the upstream. What became of each is in `steadypool_runs_total`.
async fn client(pool: Pool<LineManager>) {
    let mut sent: u64 = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(1000..=4000))).await;
        let mut burst = JoinSet::new();
        for _ in 0..BURST {
            sent += 1;
            let write = sent.is_multiple_of(5);
            let pool = pool.clone();
            burst.spawn(async move {
                if write {
                    pool.run(async |conn| request(conn, "SET k v").await).await
                } else {
                    pool.run_idempotent(async |conn| request(conn, "GET k").await)
                        .await
                }
            });
        }
        burst.join_all().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        bail!("--listen must be a loopback address, got {}", args.listen);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "steadypool=warn".into()),
        )
        .init();
    // Installed before the pool is built: the pool binds its metric handles then.
    PrometheusBuilder::new()
        .with_http_listener(args.listen)
        .install()
        .context("starting the Prometheus endpoint")?;
    println!(
        "metrics: http://{}/metrics  (running {} s)",
        args.listen, args.seconds
    );

    let run_for = Duration::from_secs(args.seconds);
    let started = Instant::now();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let upstream_addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let crash = Arc::new(Crash {
        at: started + run_for / 2,
        fired: AtomicBool::new(false),
        now: Notify::new(),
    });
    let server = tokio::spawn(upstream(listener, crash, stopped));

    let pool = Pool::builder(LineManager(upstream_addr.into()))
        .name("upstream")
        .max_size(8)
        // Scaled down with the upstream's idle limit (2 s, not the usual minute), so
        // that the reaper finds its closes as promptly as it would in production.
        .reaper_interval(Duration::from_millis(250))
        .build()?;
    let workload = tokio::spawn(client(pool.clone()));

    tokio::time::sleep(run_for).await;
    workload.abort();
    stop.send_replace(true);
    server.await??;

    let limit = pool.idle_limit();
    let stats = pool.stats();
    println!(
        "connections: {} opened, {} closed, {} connects failed",
        stats.opened,
        stats.closed(),
        stats.connect_failures
    );
    println!(
        "learned idle limit: above {:?}, at most {:?}; idle connections now close after {:?} (the upstream's limit: {UPSTREAM_IDLE_LIMIT:?})",
        limit.lower, limit.upper, limit.evict_after
    );
    Ok(())
}
