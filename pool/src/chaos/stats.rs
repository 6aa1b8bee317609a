//! What the proxy did, counted per fault.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A snapshot of a [`ChaosProxy`](super::ChaosProxy)'s counters, from its start.
///
/// Every connection the proxy ends is counted exactly once, under the fault that ended
/// it, or under `completed` when a side closed it. Compare the injected faults with what
/// the client saw: [`ChaosStats::injected_resets`] is the number of resets the proxy
/// sent.
///
/// ```
/// let stats = steadypool::chaos::ChaosStats::default();
/// assert_eq!(stats.injected_resets(), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ChaosStats {
    /// Connections accepted from clients.
    pub accepted: u64,
    /// Connections open now.
    pub active: usize,
    /// Connections that ended because the client or the upstream closed or broke them.
    pub completed: u64,
    /// Connections reset because the upstream could not be reached.
    pub upstream_unreachable: u64,
    /// Connections reset at once for exceeding `max_connections`.
    pub over_capacity: u64,
    /// Connections closed with a FIN after sitting idle.
    pub idle_fin: u64,
    /// Connections reset after sitting idle.
    pub idle_rst: u64,
    /// Connections reset on reaching `reset_after_bytes`.
    pub reset_after_bytes: u64,
    /// Connections reset by a `reset_probability` draw.
    pub reset_random: u64,
    /// Connections reset by [`ChaosProxy::crash`](super::ChaosProxy::crash).
    pub crash_resets: u64,
    /// Calls to [`ChaosProxy::crash`](super::ChaosProxy::crash).
    pub crashes: u64,
    /// Connections closed because the proxy shut down.
    pub shutdown: u64,
    /// Chunks held back by a black hole (delivered when it ended, if their connection
    /// lived that long).
    pub held_chunks: u64,
    /// Chunks delayed by `latency`.
    pub delayed_chunks: u64,
    /// Bytes forwarded from clients to the upstream.
    pub bytes_to_upstream: u64,
    /// Bytes forwarded from the upstream to clients.
    pub bytes_to_client: u64,
}

impl ChaosStats {
    /// Every reset the proxy sent to a client on purpose.
    pub fn injected_resets(&self) -> u64 {
        self.upstream_unreachable
            + self.over_capacity
            + self.idle_rst
            + self.reset_after_bytes
            + self.reset_random
            + self.crash_resets
    }
}

/// Why the proxy ended a connection: each maps to one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    Completed,
    UpstreamUnreachable,
    OverCapacity,
    IdleFin,
    IdleRst,
    ResetAfterBytes,
    ResetRandom,
    Crash,
    Shutdown,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    accepted: AtomicU64,
    active: AtomicUsize,
    completed: AtomicU64,
    upstream_unreachable: AtomicU64,
    over_capacity: AtomicU64,
    idle_fin: AtomicU64,
    idle_rst: AtomicU64,
    reset_after_bytes: AtomicU64,
    reset_random: AtomicU64,
    crash_resets: AtomicU64,
    crashes: AtomicU64,
    shutdown: AtomicU64,
    held_chunks: AtomicU64,
    delayed_chunks: AtomicU64,
    bytes_to_upstream: AtomicU64,
    bytes_to_client: AtomicU64,
}

impl Counters {
    /// Counts a new connection and returns how many were open before it.
    pub(super) fn open(&self) -> usize {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::AcqRel)
    }

    pub(super) fn close(&self, ended: Ended) {
        self.active.fetch_sub(1, Ordering::AcqRel);
        let counter = match ended {
            Ended::Completed => &self.completed,
            Ended::UpstreamUnreachable => &self.upstream_unreachable,
            Ended::OverCapacity => &self.over_capacity,
            Ended::IdleFin => &self.idle_fin,
            Ended::IdleRst => &self.idle_rst,
            Ended::ResetAfterBytes => &self.reset_after_bytes,
            Ended::ResetRandom => &self.reset_random,
            Ended::Crash => &self.crash_resets,
            Ended::Shutdown => &self.shutdown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn crash(&self) {
        self.crashes.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn held(&self) {
        self.held_chunks.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn delayed(&self) {
        self.delayed_chunks.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn forwarded(&self, to_upstream: bool, bytes: usize) {
        let counter = if to_upstream {
            &self.bytes_to_upstream
        } else {
            &self.bytes_to_client
        };
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> ChaosStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ChaosStats {
            accepted: get(&self.accepted),
            active: self.active.load(Ordering::Acquire),
            completed: get(&self.completed),
            upstream_unreachable: get(&self.upstream_unreachable),
            over_capacity: get(&self.over_capacity),
            idle_fin: get(&self.idle_fin),
            idle_rst: get(&self.idle_rst),
            reset_after_bytes: get(&self.reset_after_bytes),
            reset_random: get(&self.reset_random),
            crash_resets: get(&self.crash_resets),
            crashes: get(&self.crashes),
            shutdown: get(&self.shutdown),
            held_chunks: get(&self.held_chunks),
            delayed_chunks: get(&self.delayed_chunks),
            bytes_to_upstream: get(&self.bytes_to_upstream),
            bytes_to_client: get(&self.bytes_to_client),
        }
    }
}
