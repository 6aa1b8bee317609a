//! The faults a [`ChaosProxy`](super::ChaosProxy) can inject, as one plain value.

use std::time::Duration;

use super::error::ChaosError;

/// How the proxy closes a connection it ends on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseWith {
    /// A clean close: the client reads end of stream (a server's or proxy's idle
    /// timeout, a graceful shutdown).
    Fin,
    /// An abortive close: the client's next read or write fails with `ECONNRESET`
    /// (a load balancer or NAT that forgot the flow, a crashed process).
    Rst,
}

/// Close connections that carried no bytes, in either direction, for `after`: what a
/// load balancer's or NAT's idle timeout does to a pooled connection.
///
/// ```
/// use std::time::Duration;
/// use steadypool::chaos::{CloseWith, IdleClose};
///
/// // An AWS ALB: 60 s idle timeout, then a reset.
/// let alb = IdleClose::rst(Duration::from_secs(60));
/// assert_eq!(alb.with, CloseWith::Rst);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdleClose {
    /// How long a connection may stay silent.
    pub after: Duration,
    /// How it is closed then.
    pub with: CloseWith,
}

impl IdleClose {
    /// Close silent connections with a FIN after `after`.
    pub const fn fin(after: Duration) -> Self {
        IdleClose {
            after,
            with: CloseWith::Fin,
        }
    }

    /// Reset silent connections after `after`.
    pub const fn rst(after: Duration) -> Self {
        IdleClose {
            after,
            with: CloseWith::Rst,
        }
    }
}

/// Delay added to every chunk of bytes, in both directions: `base` plus a uniformly
/// random part up to `jitter`. Chunks keep their order.
///
/// ```
/// use std::time::Duration;
/// use steadypool::chaos::Latency;
/// let wan = Latency::new(Duration::from_millis(40), Duration::from_millis(10));
/// assert_eq!(wan.max(), Duration::from_millis(50));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Latency {
    /// The fixed part of the delay.
    pub base: Duration,
    /// The largest random addition to `base`.
    pub jitter: Duration,
}

impl Latency {
    /// A delay of `base` plus up to `jitter`.
    pub const fn new(base: Duration, jitter: Duration) -> Self {
        Latency { base, jitter }
    }

    /// The longest delay a chunk can get.
    pub fn max(&self) -> Duration {
        self.base.saturating_add(self.jitter)
    }

    pub(super) fn sample(&self, rng: &mut fastrand::Rng) -> Duration {
        self.base.saturating_add(self.jitter.mul_f64(rng.f64()))
    }
}

/// Every fault the proxy can inject, all off by default. Switch them at run time with
/// [`ChaosProxy::set_faults`](super::ChaosProxy::set_faults) or
/// [`ChaosProxy::update`](super::ChaosProxy::update); a change reaches open
/// connections at their next chunk of bytes.
///
/// ```
/// use std::time::Duration;
/// use steadypool::chaos::{Faults, IdleClose};
///
/// let flaky_lb = Faults {
///     idle_close: Some(IdleClose::rst(Duration::from_secs(3))),
///     reset_probability: 0.01,
///     ..Faults::default()
/// };
/// assert!(flaky_lb.validate().is_ok());
/// assert!(Faults { reset_probability: 1.5, ..Faults::default() }.validate().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    /// Close connections silent for this long (a load balancer's idle timeout).
    pub idle_close: Option<IdleClose>,
    /// Reset a connection once this many bytes crossed it, both directions counted.
    /// The bytes up to the limit are delivered, so a reply can be cut in the middle.
    pub reset_after_bytes: Option<u64>,
    /// The chance, from 0 to 1, that a chunk of bytes (a request or a reply, in
    /// practice) is dropped and its connection reset instead. Draws come from the
    /// proxy's seeded generator: the same seed and the same traffic on a connection
    /// give the same resets.
    pub reset_probability: f64,
    /// Forward nothing, keep every socket open: new connections are accepted and
    /// bytes are read by the kernel, but nothing crosses the proxy until the black
    /// hole ends, when the held bytes are delivered in order. This is a hung middlebox
    /// as the client sees it; unlike dropped packets it does not make the client's
    /// keepalive or `TCP_USER_TIMEOUT` fire (the proxy's kernel still acknowledges
    /// everything): use firewall rules in a network namespace for that.
    pub black_hole: bool,
    /// Refuse new connections (`ECONNREFUSED`): the proxy stops listening on its port
    /// (without giving the port up) until refusal ends. Connections already accepted
    /// by the kernel but not yet taken by the proxy are reset.
    pub refuse: bool,
    /// Added delay per chunk.
    pub latency: Option<Latency>,
    /// At most this many connections at once; beyond it a new connection is accepted
    /// and reset at once (an upstream at its connection limit).
    pub max_connections: Option<usize>,
}

impl Faults {
    /// No faults: the proxy forwards faithfully.
    pub fn none() -> Self {
        Faults::default()
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`ChaosError::Probability`] when `reset_probability` is not a number from 0 to 1.
    pub fn validate(&self) -> Result<(), ChaosError> {
        let p = self.reset_probability;
        if !(0.0..=1.0).contains(&p) {
            return Err(ChaosError::Probability(p));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_samples_stay_within_base_and_jitter() {
        let latency = Latency::new(Duration::from_millis(5), Duration::from_millis(3));
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1000 {
            let d = latency.sample(&mut rng);
            assert!(d >= latency.base && d <= latency.max(), "{d:?}");
        }
    }

    #[test]
    fn probability_outside_zero_to_one_or_nan_is_rejected() {
        for p in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            let faults = Faults {
                reset_probability: p,
                ..Faults::none()
            };
            assert!(
                matches!(faults.validate(), Err(ChaosError::Probability(_))),
                "{p}"
            );
        }
        for p in [0.0, 0.5, 1.0] {
            let faults = Faults {
                reset_probability: p,
                ..Faults::none()
            };
            assert!(faults.validate().is_ok(), "{p}");
        }
    }
}
