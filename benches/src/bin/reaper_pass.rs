//! How long the reaper's pass over a pool's idle connections holds deadpool's lock,
//! by the number of idle connections. Every checkout and return of the pool waits for
//! that lock, so a pass that holds it long stalls them all, once per
//! `reaper_interval`.
//!
//! Each pool is filled with real, idle loopback connections to a server in a child
//! process (this process's open-file limit then has room for the client ends alone),
//! its own reaper task set to tick once an hour, and the ticks timed here, one after
//! the other (the longest time one pass held the lock at once, and the whole pass), each after writing over 64 MiB of other memory, as a second of other work
//! would between two ticks. Beside it, bare deadpool's `retain` over as many idle
//! connections with the predicate deadpool's documentation suggests for a reaper of
//! one's own (`metrics.last_used() < max_idle`): a walk that reads each entry's
//! timestamps and no socket.
//!
//! ```text
//! cargo run --release -p steadypool-benches --bin reaper-pass -- --sizes 4096,16384
//! ```
//!
//! One JSON line per value on stdout (scenario `reaper`); a table on stderr.

use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::Parser;
use deadpool::managed::{self, Metrics, RecycleResult};
use steadypool::Pool;
use steadypool::drivers::tcp::TcpManager;
use steadypool_benches::BenchError;
use steadypool_benches::report::Record;
use steadypool_benches::stats::median;
use tokio::net::TcpStream;

/// Times the reaper's pass.
#[derive(Debug, Parser)]
#[command(name = "reaper-pass")]
struct Args {
    /// Idle connections in the pool, one measurement each.
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 4096, 16384])]
    sizes: Vec<usize>,
    /// Timed passes per size; the median is reported, and the longest.
    #[arg(long, default_value_t = 15)]
    passes: usize,
    /// Internal: be the server that accepts and holds the connections, until stdin
    /// closes.
    #[arg(long, hide = true)]
    serve: bool,
}

/// A bare deadpool manager of TCP connections: no check on recycle.
struct Bare(SocketAddr);

impl managed::Manager for Bare {
    type Type = TcpStream;
    type Error = std::io::Error;

    async fn create(&self) -> std::io::Result<TcpStream> {
        TcpStream::connect(self.0).await
    }

    async fn recycle(&self, _: &mut TcpStream, _: &Metrics) -> RecycleResult<std::io::Error> {
        Ok(())
    }
}

/// What the parent writes to the server to have it close every second connection it
/// holds, in the order it accepted them.
const CLOSE_HALF: &str = "close-half";

/// Accepts connections and holds them, until stdin closes (the parent ended); closes
/// every second one on [`CLOSE_HALF`].
fn serve() -> Result<(), BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let held = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::clone(&held);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            accepted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Some(stream));
        }
    });
    for line in std::io::stdin().lines() {
        if line?.trim() == CLOSE_HALF {
            let mut held = held.lock().unwrap_or_else(PoisonError::into_inner);
            for stream in held.iter_mut().step_by(2) {
                drop(stream.take());
            }
        }
    }
    Ok(())
}

/// The server child: one per measured pool, so that it never holds more than one
/// pool's connections (it does not read them, and would not see them close).
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing its stdin ends it.
        drop(self.child.stdin.take());
        if let Err(err) = self.child.wait() {
            eprintln!("reaper-pass: the server did not end: {err}");
        }
    }
}

impl Server {
    fn close_half(&mut self) -> Result<(), BenchError> {
        let stdin = self
            .child
            .stdin
            .as_mut()
            .ok_or_else(|| BenchError::Setup("the server's stdin is not piped".to_owned()))?;
        writeln!(stdin, "{CLOSE_HALF}")?;
        stdin.flush()?;
        Ok(())
    }
}

fn start_server() -> Result<Server, BenchError> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Setup("the server's stdout is not piped".to_owned()))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .parse()
        .map_err(|e| BenchError::Setup(format!("the server said {line:?}: {e}")))?;
    Ok(Server { child, addr })
}

/// Median and longest of `samples`, in microseconds.
fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    let longest = samples.iter().copied().fold(0.0, f64::max);
    (median(&mut samples), longest)
}

/// Writes over more memory than the machine's private caches hold, as a second of
/// other work would between two ticks of a real reaper: the pass then finds the
/// pool's memory cold, as it does in a service.
fn cool_caches(scratch: &mut [u8], round: u8) {
    for line in scratch.chunks_mut(64) {
        line[0] = round;
    }
}

/// Bytes written between two timed passes.
const SCRATCH: usize = 64 << 20;

/// What the passes took, in microseconds.
#[derive(Default)]
struct Passes {
    /// The longest time a pass held the lock at once.
    held: Vec<f64>,
    /// The whole pass, all its parts.
    whole: Vec<f64>,
    /// The longest hold and the whole pass of the one that closed half the queue.
    half_closed: Option<(f64, f64)>,
}

async fn steadypool_pass(
    server: &mut Server,
    size: usize,
    passes: usize,
    scratch: &mut [u8],
) -> Result<Passes, BenchError> {
    let refused = |message: String| BenchError::Build {
        pool: "steadypool",
        message,
    };
    let pool = Pool::builder(TcpManager::new(server.addr))
        .max_size(size)
        .reaper_interval(Duration::from_secs(3600))
        .build()
        .map_err(|e| refused(e.to_string()))?;
    let mut held = Vec::with_capacity(size);
    for _ in 0..size {
        held.push(pool.get().await.map_err(|e| refused(e.to_string()))?);
    }
    drop(held);
    let idle = pool.status().idle;
    if idle != size {
        return Err(refused(format!("{idle} of {size} connections idle")));
    }
    // One pass untimed: the first one after the fill finds the memory warm.
    pool.reaper_tick().await;
    let mut samples = Passes::default();
    for round in 0..passes {
        cool_caches(scratch, round as u8);
        let started = Instant::now();
        let held = pool.reaper_tick().await;
        samples.whole.push(started.elapsed().as_secs_f64() * 1e6);
        samples.held.push(held.as_secs_f64() * 1e6);
    }
    let idle = pool.status().idle;
    if idle != size {
        return Err(refused(format!(
            "the passes closed connections: {idle} of {size} idle"
        )));
    }
    // Every second connection's peer goes away: a pass that closes half the queue,
    // scattered through it.
    server.close_half()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cool_caches(scratch, 0);
    let started = Instant::now();
    let held = pool.reaper_tick().await;
    samples.half_closed = Some((
        held.as_secs_f64() * 1e6,
        started.elapsed().as_secs_f64() * 1e6,
    ));
    let idle = pool.status().idle;
    if idle != size / 2 {
        return Err(refused(format!(
            "the pass after half the peers left kept {idle} of {size}"
        )));
    }
    Ok(samples)
}

async fn deadpool_walk(
    addr: SocketAddr,
    size: usize,
    passes: usize,
    scratch: &mut [u8],
) -> Result<Passes, BenchError> {
    let refused = |message: String| BenchError::Build {
        pool: "deadpool-bare",
        message,
    };
    let pool: managed::Pool<Bare> = managed::Pool::builder(Bare(addr))
        .max_size(size)
        .build()
        .map_err(|e| refused(e.to_string()))?;
    let mut held = Vec::with_capacity(size);
    for _ in 0..size {
        held.push(pool.get().await.map_err(|e| refused(e.to_string()))?);
    }
    drop(held);
    pool.retain(keep_recent);
    let mut samples = Passes::default();
    for round in 0..passes {
        cool_caches(scratch, round as u8);
        let started = Instant::now();
        let kept = pool.retain(keep_recent).retained;
        let took = started.elapsed().as_secs_f64() * 1e6;
        samples.held.push(took);
        samples.whole.push(took);
        if kept != size {
            return Err(refused(format!("{kept} of {size} connections kept")));
        }
    }
    Ok(samples)
}

/// deadpool's documented idle check, with a limit that keeps every connection here.
fn keep_recent(_: &TcpStream, metrics: Metrics) -> bool {
    metrics.last_used() < Duration::from_secs(3600)
}

async fn run(args: &Args) -> Result<Vec<Record>, BenchError> {
    let mut records = Vec::new();
    let mut scratch = vec![0u8; SCRATCH];
    eprintln!(
        "idle connections | pool          | lock held at once, median / longest (µs) | whole pass, median (µs) | per connection (ns)"
    );
    for &size in &args.sizes {
        // One pool at a time: both together would need twice the descriptors.
        let steady = {
            let mut server = start_server()?;
            steadypool_pass(&mut server, size, args.passes, &mut scratch).await?
        };
        let half_closed = steady.half_closed;
        let bare = {
            let server = start_server()?;
            deadpool_walk(server.addr, size, args.passes, &mut scratch).await?
        };
        for (pool, samples) in [("steadypool", steady), ("deadpool-bare", bare)] {
            let (median_us, longest_us) = summary(samples.held);
            let (whole_us, _) = summary(samples.whole);
            eprintln!(
                "{size:>16} | {pool:<13} | {median_us:>17.1} / {longest_us:>20.1} | {whole_us:>23.1} | {:>19.1}",
                whole_us * 1e3 / size as f64
            );
            let case = format!("idle{size}");
            records.push(Record::new(
                "reaper",
                case.clone(),
                pool,
                "us_lock_held",
                median_us,
            ));
            records.push(Record::new(
                "reaper",
                case.clone(),
                pool,
                "us_lock_held_max",
                longest_us,
            ));
            records.push(Record::new("reaper", case, pool, "us_pass", whole_us));
        }
        if let Some((held_us, whole_us)) = half_closed {
            eprintln!(
                "{size:>16} | {:<13} | {held_us:>17.1} / {:>20} | {whole_us:>23.1} | {:>19.1}",
                "steadypool, half of the peers gone",
                "",
                whole_us * 1e3 / size as f64
            );
            let case = format!("idle{size}-half-closed");
            records.push(Record::new(
                "reaper",
                case.clone(),
                "steadypool",
                "us_lock_held",
                held_us,
            ));
            records.push(Record::new(
                "reaper",
                case,
                "steadypool",
                "us_pass",
                whole_us,
            ));
        }
    }
    Ok(records)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.serve {
        return match serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("reaper-pass (server): {err}");
                ExitCode::FAILURE
            }
        };
    }
    let outcome = steadypool_benches::runtime()
        .map_err(BenchError::from)
        .and_then(|runtime| runtime.block_on(run(&args)))
        .map(|mut records| {
            steadypool_benches::report::fill_ratios(&mut records);
            records
        });
    let printed = outcome.and_then(|records| {
        let mut stdout = std::io::stdout().lock();
        for record in &records {
            writeln!(stdout, "{}", record.to_json()?)?;
        }
        Ok(())
    });
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("reaper-pass: {err}");
            ExitCode::FAILURE
        }
    }
}
