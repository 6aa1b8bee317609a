//! Scenario 3: dead-peer detection.
//!
//! Each pool holds one connection that has just carried a request. Then the path to
//! the upstream turns into a black hole, and two clocks start:
//!
//! * **zombie evicted**: until the pool no longer holds that idle connection (polled
//!   every 50 ms);
//! * **stalled request failed**: a request sent 100 ms into the black hole, until it
//!   returns an error.
//!
//! Nothing else times out on the workload's side: what a pool's defaults do is what
//! is measured. A clock that reaches `cap` stops there: that pool did not detect it.
//!
//! Two ways to make the black hole:
//! * [`Hole::Iptables`] (root): `iptables -j DROP` on the upstream's port, in both
//!   directions, inside a private network namespace. Packets vanish, as when a
//!   firewall or NAT forgets a flow: TCP keepalive and `TCP_USER_TIMEOUT` can see it.
//! * [`Hole::Chaos`]: the chaos proxy stops forwarding. Its kernel still acknowledges
//!   every byte, so keepalive and `TCP_USER_TIMEOUT` never fire; only timeouts above
//!   TCP can end the wait.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use steadypool::chaos::ChaosProxy;
use tokio::task::JoinSet;

use crate::echo::EchoServer;
use crate::error::BenchError;
use crate::pools::{AnyPool, Kind, PoolSpec};
use crate::report::Record;

/// How the black hole is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hole {
    /// Packets dropped by iptables inside a private network namespace.
    Iptables,
    /// The chaos proxy forwards nothing (no root needed).
    Chaos,
}

impl Hole {
    /// The case name in results.
    pub const fn label(self) -> &'static str {
        match self {
            Hole::Iptables => "iptables-drop",
            Hole::Chaos => "chaos-black-hole",
        }
    }
}

/// The pools whose idle connection is watched.
pub const ZOMBIE_KINDS: [Kind; 6] = [
    Kind::Steadypool,
    Kind::DeadpoolBare,
    Kind::DeadpoolPeek,
    Kind::Bb8Ping,
    Kind::MobcPing,
    Kind::R2d2Ping,
];

/// The pools that send the stalled request. steadypool sends it twice: through
/// `run_idempotent` (row `steadypool`) and on a plain `get()` with raw I/O (row
/// `steadypool-get`, bounded by its socket options alone).
pub const REQUEST_KINDS: [Kind; 5] = [
    Kind::Steadypool,
    Kind::DeadpoolPeek,
    Kind::Bb8Ping,
    Kind::MobcPing,
    Kind::R2d2Ping,
];

/// The row of the steadypool request made on a plain checkout.
pub const STEADYPOOL_GET: &str = "steadypool-get";

/// Whether the iptables black hole can be made here: `unshare`, `ip` and `iptables`
/// are installed and this process may create a network namespace (root).
pub fn netns_available() -> bool {
    Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && iptables -w -L INPUT -n",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn run(program: &str, args: &[&str]) -> Result<(), BenchError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| BenchError::Command {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(BenchError::Command {
            command,
            message: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

/// This process's network namespace, as the kernel names it (`net:[inode]`).
///
/// # Errors
/// When `/proc/self/ns/net` cannot be read (not Linux).
pub fn namespace_id() -> Result<String, BenchError> {
    Ok(std::fs::read_link("/proc/self/ns/net")?
        .to_string_lossy()
        .into_owned())
}

/// Makes this process's network namespace usable: brings up loopback. Call it first
/// thing in a process started under `unshare --net`, with the namespace of the process
/// that started it: it refuses to touch anything unless this one is another (so a
/// firewall rule can never land on the host's).
///
/// # Errors
/// [`BenchError::Setup`] when this process is still in `outside`; otherwise when `ip`
/// fails.
pub fn prepare_namespace(outside: &str) -> Result<(), BenchError> {
    let inside = namespace_id()?;
    if inside == outside {
        return Err(BenchError::Setup(format!(
            "the dead-peer run must be in a network namespace of its own, but it is in \
             {inside}, the one it was started from; run it through bench-all"
        )));
    }
    run("ip", &["link", "set", "lo", "up"])
}

/// Drops (`on`) or stops dropping every packet to and from `port`.
fn iptables_drop(port: u16, on: bool) -> Result<(), BenchError> {
    let action = if on { "-A" } else { "-D" };
    let port = port.to_string();
    for direction in ["--dport", "--sport"] {
        run(
            "iptables",
            &[
                "-w", action, "INPUT", "-p", "tcp", direction, &port, "-j", "DROP",
            ],
        )?;
    }
    Ok(())
}

enum Switch {
    Iptables(u16),
    Chaos(ChaosProxy),
}

impl Switch {
    fn set(&self, on: bool) -> Result<(), BenchError> {
        match self {
            Switch::Iptables(port) => iptables_drop(*port, on),
            Switch::Chaos(proxy) => {
                proxy.set_black_hole(on);
                Ok(())
            }
        }
    }
}

async fn primed(kind: Kind, addr: SocketAddr) -> Result<AnyPool, BenchError> {
    let pool = PoolSpec::new(kind, addr, 1).build().await?;
    pool.request(0)
        .await
        .map_err(|message| BenchError::Checkout {
            pool: kind.label(),
            message,
        })?;
    Ok(pool)
}

/// What one clock saw: when it stopped, or `None` at the cap.
type Clock = (String, &'static str, Option<Duration>);

/// Runs the scenario with the black hole made by `hole`. For [`Hole::Iptables`] the
/// process must be in a network namespace of its own (see [`prepare_namespace`]).
///
/// Records, per pool: `zombie_evicted_s` and `stalled_request_failed_s`, each capped
/// at `cap` when it never happened.
///
/// # Errors
/// When the server, the pools or the black hole cannot be set up.
pub async fn measure(hole: Hole, cap: Duration) -> Result<Vec<Record>, BenchError> {
    let server = EchoServer::start().await?;
    let (switch, target) = match hole {
        Hole::Iptables => (Switch::Iptables(server.addr().port()), server.addr()),
        Hole::Chaos => {
            let proxy = ChaosProxy::start(server.addr()).await?;
            let addr = proxy.local_addr();
            (Switch::Chaos(proxy), addr)
        }
    };
    let mut zombies = Vec::new();
    for kind in ZOMBIE_KINDS {
        zombies.push((kind, primed(kind, target).await?));
    }
    let mut requesters = Vec::new();
    for kind in REQUEST_KINDS {
        requesters.push((kind.label(), kind, primed(kind, target).await?, false));
    }
    requesters.push((
        STEADYPOOL_GET,
        Kind::Steadypool,
        primed(Kind::Steadypool, target).await?,
        true,
    ));

    let started = Instant::now();
    switch.set(true)?;
    let mut clocks: JoinSet<Clock> = JoinSet::new();
    for (kind, pool) in zombies {
        clocks.spawn(async move {
            let evicted = tokio::time::timeout(cap, async {
                while pool.open_connections().await > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                started.elapsed()
            })
            .await
            .ok();
            (kind.label().to_owned(), "zombie_evicted_s", evicted)
        });
    }
    for (label, _, pool, plain) in requesters {
        clocks.spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let failed = tokio::time::timeout(cap.saturating_sub(started.elapsed()), async {
                let result = if plain {
                    pool.request_on_checkout(1).await
                } else {
                    pool.request(1).await
                };
                (started.elapsed(), result)
            })
            .await;
            let failed_after = match failed {
                Ok((after, Err(_))) => Some(after),
                // It cannot succeed through a black hole; if it did, it never failed.
                Ok((_, Ok(()))) | Err(_) => None,
            };
            (label.to_owned(), "stalled_request_failed_s", failed_after)
        });
    }
    let mut seen = Vec::new();
    while let Some(joined) = clocks.join_next().await {
        seen.push(joined.map_err(|e| BenchError::Setup(e.to_string()))?);
    }
    // Let what still waits (r2d2's blocked threads) go: the held bytes flow again.
    // Through the proxy they arrive at once; give them a moment while the proxy and
    // the server are still there, or those threads would find them gone and retry
    // connecting until r2d2's 30 s timeout. Dropped packets come back only with the
    // next retransmission, many seconds away: a process that measured with iptables
    // should exit without waiting for blocked threads.
    switch.set(false)?;
    if hole == Hole::Chaos {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let order = |label: &str| {
        ZOMBIE_KINDS
            .iter()
            .map(|k| k.label())
            .chain([STEADYPOOL_GET])
            .position(|l| l == label)
            .unwrap_or(usize::MAX)
    };
    seen.sort_by_key(|(label, metric, _)| (*metric != "zombie_evicted_s", order(label)));
    Ok(seen
        .into_iter()
        .map(|(label, metric, after)| {
            eprintln!("dead-peer {label:>14} {metric:<26} {after:?}");
            Record::new(
                "dead_peer",
                hole.label().to_owned(),
                &label,
                metric,
                after.unwrap_or(cap).as_secs_f64(),
            )
            .capped(after.is_none())
        })
        .collect())
}
