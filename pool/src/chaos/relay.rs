//! One proxied connection: two byte pumps, an idle timer and the crash switch, in one
//! task, and the way the connection ends.
//!
//! Faults aimed at the connection (resets, idle closes, crashes) are sent to the
//! client, which is the side under test; the upstream side is always closed cleanly,
//! so a real server behind the proxy sees an ordinary disconnect. I/O errors are
//! mirrored: an upstream that resets the proxy makes the proxy reset the client, as if
//! the client were connected directly.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::faults::{CloseWith, Faults};
use super::stats::{Counters, Ended};
use crate::dial::{Address, Dialer};

/// What every relay watches: the faults in force and the crash generation.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Control {
    pub(super) faults: Faults,
    /// Bumped by every crash: a relay that started in an older generation resets.
    pub(super) crash_epoch: u64,
}

/// State shared by the proxy handle, the accept loop and every relay.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) upstream: Address,
    pub(super) dialer: Dialer,
    pub(super) seed: u64,
    pub(super) counters: Counters,
    next_id: AtomicU64,
    /// Open relays and the crash generation they started in.
    live: Mutex<HashMap<u64, u64>>,
    /// Signalled whenever a relay ends.
    ended: Notify,
}

impl Shared {
    pub(super) fn new(upstream: Address, dialer: Dialer, seed: u64) -> Shared {
        Shared {
            upstream,
            dialer,
            seed,
            counters: Counters::default(),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            ended: Notify::new(),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        // The map is valid whatever a panicking holder did: entries are plain numbers.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Relays that started before crash generation `epoch`.
    pub(super) fn older_than(&self, epoch: u64) -> usize {
        self.live().values().filter(|e| **e < epoch).count()
    }

    /// Waits until `done` holds, re-checking each time a relay ends.
    pub(super) async fn wait_until(&self, done: impl Fn(&Shared) -> bool) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if done(self) {
                return;
            }
            ended.await;
        }
    }

    pub(super) fn open_relays(&self) -> usize {
        self.live().len()
    }
}

/// A relay's registration: counts the connection as open until dropped, then under the
/// reason it ended, and wakes whoever waits for relays to end.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
    ended: Ended,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.live().remove(&self.id);
        self.shared.counters.close(self.ended);
        self.shared.ended.notify_waiters();
    }
}

/// How a relay ended, before it is mapped to a counter and a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Both directions reached end of stream.
    Eof,
    /// An I/O error on one side; `reset` when that side was reset.
    Failed {
        at_upstream: bool,
        reset: bool,
    },
    Idle(CloseWith),
    AfterBytes,
    Random,
    Crash,
    Shutdown,
}

/// Serves one accepted client connection until it ends.
pub(super) async fn serve(
    shared: Arc<Shared>,
    mut control: watch::Receiver<Control>,
    client: TcpStream,
) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let Control {
        faults,
        crash_epoch,
    } = *control.borrow_and_update();
    let open_before = shared.counters.open();
    shared.live().insert(id, crash_epoch);
    let mut registration = Registration {
        shared: Arc::clone(&shared),
        id,
        ended: Ended::Completed,
    };
    if faults.max_connections.is_some_and(|max| open_before >= max) {
        abort(&client);
        registration.ended = Ended::OverCapacity;
        return;
    }
    let upstream = tokio::select! {
        biased;
        ending = watch_control(control.clone(), crash_epoch) => {
            registration.ended = finish(client, None, ending);
            return;
        }
        dialed = shared.dialer.connect(&shared.upstream) => dialed,
    };
    let Ok(mut upstream) = upstream else {
        abort(&client);
        registration.ended = Ended::UpstreamUnreachable;
        return;
    };
    let mut client = client;
    let ending = relay(
        &mut client,
        &mut upstream,
        &shared,
        &control,
        id,
        crash_epoch,
    )
    .await;
    registration.ended = finish(client, Some(upstream), ending);
}

/// When bytes last crossed the connection, and how many did.
struct Traffic {
    started: Instant,
    last_millis: AtomicU64,
    bytes: AtomicU64,
}

impl Traffic {
    fn new() -> Traffic {
        Traffic {
            started: Instant::now(),
            last_millis: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(millis, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.started + Duration::from_millis(self.last_millis.load(Ordering::Relaxed))
    }

    /// Takes `n` bytes against the connection's byte limit: how many may still pass,
    /// and whether the limit is reached with them.
    fn take(&self, n: usize, limit: Option<u64>) -> (usize, bool) {
        let before = self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        match limit {
            None => (n, false),
            Some(limit) => {
                let left = limit.saturating_sub(before);
                let pass = usize::try_from(left).unwrap_or(usize::MAX).min(n);
                (pass, before.saturating_add(n as u64) >= limit)
            }
        }
    }
}

async fn relay(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    shared: &Shared,
    control: &watch::Receiver<Control>,
    id: u64,
    crash_epoch: u64,
) -> Ending {
    let traffic = Traffic::new();
    let (mut client_rd, mut client_wr) = client.split();
    let (mut upstream_rd, mut upstream_wr) = upstream.split();
    let rng = |direction: u64| {
        // One generator per connection and direction: the same seed and the same
        // traffic on a connection draw the same faults, whatever the other
        // connections do.
        let mixed = shared
            .seed
            .wrapping_add(id.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .rotate_left(17)
            ^ direction;
        fastrand::Rng::with_seed(mixed)
    };
    let to_upstream = pump(
        &mut client_rd,
        &mut upstream_wr,
        true,
        &traffic,
        shared,
        control.clone(),
        rng(1),
    );
    let to_client = pump(
        &mut upstream_rd,
        &mut client_wr,
        false,
        &traffic,
        shared,
        control.clone(),
        rng(2),
    );
    let idle = idle_timer(&traffic, control.clone());
    let crash = watch_control(control.clone(), crash_epoch);
    tokio::pin!(to_upstream, to_client, idle, crash);
    let (mut upstream_done, mut client_done) = (false, false);
    loop {
        tokio::select! {
            biased;
            ending = &mut crash => return ending,
            ending = &mut to_upstream, if !upstream_done => {
                if ending != Ending::Eof {
                    return ending;
                }
                upstream_done = true;
                if client_done {
                    return Ending::Eof;
                }
            }
            ending = &mut to_client, if !client_done => {
                if ending != Ending::Eof {
                    return ending;
                }
                client_done = true;
                if upstream_done {
                    return Ending::Eof;
                }
            }
            with = &mut idle => return Ending::Idle(with),
        }
    }
}

/// Copies one direction, chunk by chunk, applying the faults in force to each chunk.
async fn pump(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    to_upstream: bool,
    traffic: &Traffic,
    shared: &Shared,
    mut control: watch::Receiver<Control>,
    mut rng: fastrand::Rng,
) -> Ending {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if control.wait_for(|c| !c.faults.black_hole).await.is_err() {
            return Ending::Shutdown;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                // Pass the half-close on: the other side may still answer.
                let _ = to.shutdown().await;
                return Ending::Eof;
            }
            Ok(n) => n,
            Err(e) => {
                return Ending::Failed {
                    at_upstream: !to_upstream,
                    reset: is_reset(&e),
                };
            }
        };
        traffic.touch();
        let faults = control.borrow().faults;
        if faults.reset_probability > 0.0 && rng.f64() < faults.reset_probability {
            return Ending::Random;
        }
        if let Some(latency) = faults.latency {
            shared.counters.delayed();
            tokio::time::sleep(latency.sample(&mut rng)).await;
        }
        if control.borrow().faults.black_hole {
            shared.counters.held();
            if control.wait_for(|c| !c.faults.black_hole).await.is_err() {
                return Ending::Shutdown;
            }
        }
        let limit = control.borrow().faults.reset_after_bytes;
        let (pass, cut) = traffic.take(n, limit);
        if pass > 0 {
            if let Err(e) = to.write_all(&buf[..pass]).await {
                return Ending::Failed {
                    at_upstream: to_upstream,
                    reset: is_reset(&e),
                };
            }
            shared.counters.forwarded(to_upstream, pass);
            traffic.touch();
        }
        if cut {
            return Ending::AfterBytes;
        }
    }
}

/// Resolves when the connection has been silent for the idle limit in force.
async fn idle_timer(traffic: &Traffic, mut control: watch::Receiver<Control>) -> CloseWith {
    loop {
        let idle_close = control.borrow_and_update().faults.idle_close;
        let changed = match idle_close {
            None => control.changed().await,
            Some(idle) => {
                let deadline = traffic.last() + idle.after;
                if Instant::now() >= deadline {
                    return idle.with;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => Ok(()),
                    changed = control.changed() => changed,
                }
            }
        };
        if changed.is_err() {
            // The proxy is gone; the crash watcher ends the relay.
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves on a crash newer than the relay, or when the proxy shuts down.
async fn watch_control(mut control: watch::Receiver<Control>, crash_epoch: u64) -> Ending {
    match control.wait_for(|c| c.crash_epoch != crash_epoch).await {
        Ok(_) => Ending::Crash,
        Err(_) => Ending::Shutdown,
    }
}

fn is_reset(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Makes the coming close of `stream` send an RST instead of a FIN.
pub(super) fn abort(stream: &TcpStream) {
    // Should the kernel refuse, the close is a FIN: still an end the client sees.
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Closes both sides the way `ending` calls for and names the counter it goes under.
fn finish(client: TcpStream, upstream: Option<TcpStream>, ending: Ending) -> Ended {
    let ended = match ending {
        Ending::Eof => Ended::Completed,
        Ending::Failed { at_upstream, reset } => {
            if reset {
                match (at_upstream, &upstream) {
                    (true, _) => abort(&client),
                    (false, Some(upstream)) => abort(upstream),
                    (false, None) => {}
                }
            }
            Ended::Completed
        }
        Ending::Idle(CloseWith::Fin) => Ended::IdleFin,
        Ending::Idle(CloseWith::Rst) => {
            abort(&client);
            Ended::IdleRst
        }
        Ending::AfterBytes => {
            abort(&client);
            Ended::ResetAfterBytes
        }
        Ending::Random => {
            abort(&client);
            Ended::ResetRandom
        }
        Ending::Crash => {
            abort(&client);
            Ended::Crash
        }
        Ending::Shutdown => Ended::Shutdown,
    };
    drop(client);
    drop(upstream);
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_limit_lets_the_bytes_up_to_it_pass_then_cuts() {
        let traffic = Traffic::new();
        assert_eq!(traffic.take(4, Some(10)), (4, false));
        assert_eq!(traffic.take(4, Some(10)), (4, false));
        assert_eq!(traffic.take(4, Some(10)), (2, true));
        assert_eq!(traffic.take(4, Some(10)), (0, true));
        let exact = Traffic::new();
        assert_eq!(exact.take(10, Some(10)), (10, true));
        let unlimited = Traffic::new();
        assert_eq!(
            unlimited.take(usize::MAX / 2, None),
            (usize::MAX / 2, false)
        );
    }
}
