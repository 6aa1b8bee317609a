//! The pool's knobs, their defaults, and the checks `build()` runs on them.

use std::time::Duration;

use crate::breaker::{FIRST_OPEN, GateConfig, widths};
use crate::clock::CoarseDuration;
use crate::dial::{Dialer, SocketSettingError};
use crate::retry::policy::{PolicyError, RetryPolicy};

/// Which idle connection a checkout takes.
///
/// ```
/// use steadypool::QueueMode;
/// assert_eq!(QueueMode::default(), QueueMode::Fifo);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum QueueMode {
    /// The one idle longest. Spreads use over all connections, so none sits idle long
    /// enough to be dropped by a middlebox while the pool is busy.
    #[default]
    Fifo,
    /// The one returned last. Keeps a hot core of connections and lets the rest idle
    /// out, which saves server connections under light load.
    Lifo,
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The name set, or (from `build()` on) one derived from the manager.
    pub(crate) name: String,
    pub(crate) max_size: usize,
    pub(crate) min_idle: usize,
    pub(crate) wait_timeout: Duration,
    /// Every socket setting, `connect_timeout` included, with its default and checks.
    pub(crate) dialer: Dialer,
    pub(crate) ping_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) max_lifetime_jitter: Option<Duration>,
    /// In the clock's format: every checkout compares an idle time with it.
    pub(crate) check_after: CoarseDuration,
    pub(crate) queue_mode: QueueMode,
    pub(crate) reaper_interval: Duration,
    pub(crate) learn_idle_limit: bool,
    /// `None`: the gate's default widths; set: the ceiling, never exceeded
    /// ([`widths`]).
    pub(crate) max_concurrent_connects: Option<usize>,
    pub(crate) circuit_open_after: u32,
    pub(crate) circuit_open_for: Duration,
    /// `None`: [`FIRST_OPEN`], or `circuit_open_for` when that is shorter.
    pub(crate) circuit_first_open: Option<Duration>,
    /// `None`: [`DEFAULT_CIRCUIT_WAIT`], or `wait_timeout` when that is shorter.
    pub(crate) circuit_wait: Option<Duration>,
    pub(crate) retry: RetryPolicy,
}

/// The default of [`PoolBuilder::circuit_wait`](crate::PoolBuilder::circuit_wait).
pub(crate) const DEFAULT_CIRCUIT_WAIT: Duration = Duration::from_secs(2);

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "pool".to_owned(),
            max_size: 10,
            min_idle: 0,
            wait_timeout: Duration::from_secs(30),
            dialer: Dialer::new(),
            ping_timeout: Duration::from_secs(2),
            idle_timeout: Some(Duration::from_secs(45)),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            max_lifetime_jitter: None,
            check_after: CoarseDuration::from_std(Duration::from_millis(500)),
            queue_mode: QueueMode::Fifo,
            reaper_interval: Duration::from_secs(1),
            learn_idle_limit: true,
            max_concurrent_connects: None,
            circuit_open_after: 3,
            circuit_open_for: Duration::from_millis(250),
            circuit_first_open: None,
            circuit_wait: None,
            retry: RetryPolicy::default(),
        }
    }
}

impl Config {
    /// The longest a new connection may take, handshake and hook included.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.dialer.timeout()
    }

    /// How much earlier than `max_lifetime` a connection may be retired.
    pub(crate) fn lifetime_jitter(&self) -> Duration {
        match (self.max_lifetime_jitter, self.max_lifetime) {
            (Some(jitter), _) => jitter,
            (None, Some(lifetime)) => lifetime / 40,
            (None, None) => Duration::ZERO,
        }
    }

    /// How long a checkout that needs a new connection waits on an open circuit.
    pub(crate) fn circuit_wait(&self) -> Duration {
        self.circuit_wait
            .unwrap_or_else(|| DEFAULT_CIRCUIT_WAIT.min(self.wait_timeout))
    }

    pub(crate) fn gate(&self) -> GateConfig {
        let (narrow, ceiling) = widths(self.max_concurrent_connects);
        GateConfig {
            narrow,
            ceiling,
            open_after: self.circuit_open_after,
            open_for: self.circuit_open_for,
            first_open: self
                .circuit_first_open
                .unwrap_or_else(|| FIRST_OPEN.min(self.circuit_open_for)),
        }
    }

    pub(crate) fn dialer(&self) -> Dialer {
        self.dialer.clone()
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        if self.max_size == 0 {
            return Err(BuildError::ZeroMaxSize);
        }
        if self.min_idle > self.max_size {
            return Err(BuildError::MinIdleAboveMaxSize {
                min_idle: self.min_idle,
                max_size: self.max_size,
            });
        }
        for (knob, value) in [
            ("wait_timeout", self.wait_timeout),
            ("ping_timeout", self.ping_timeout),
            ("reaper_interval", self.reaper_interval),
            ("circuit_open_for", self.circuit_open_for),
        ] {
            if value.is_zero() {
                return Err(BuildError::ZeroDuration { knob });
            }
        }
        self.dialer.validate()?;
        for (knob, value) in [
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
        ] {
            if value.is_some_and(|v| v.is_zero()) {
                return Err(BuildError::ZeroDuration { knob });
            }
        }
        if let (Some(idle), Some(lifetime)) = (self.idle_timeout, self.max_lifetime)
            && idle > lifetime
        {
            return Err(BuildError::IdleTimeoutAboveMaxLifetime { idle, lifetime });
        }
        if let (Some(jitter), Some(lifetime)) = (self.max_lifetime_jitter, self.max_lifetime)
            && jitter >= lifetime
        {
            return Err(BuildError::JitterAboveMaxLifetime { jitter, lifetime });
        }
        if self.max_concurrent_connects == Some(0) {
            return Err(BuildError::ZeroLimit {
                knob: "max_concurrent_connects",
            });
        }
        if self.circuit_open_after == 0 {
            return Err(BuildError::ZeroLimit {
                knob: "circuit_open_after",
            });
        }
        if let Some(first) = self.circuit_first_open {
            if first.is_zero() {
                return Err(BuildError::ZeroDuration {
                    knob: "circuit_first_open",
                });
            }
            if first > self.circuit_open_for {
                return Err(BuildError::FirstOpenAboveOpenFor {
                    first,
                    open_for: self.circuit_open_for,
                });
            }
        }
        if let Some(circuit_wait) = self.circuit_wait
            && circuit_wait > self.wait_timeout
        {
            return Err(BuildError::CircuitWaitAboveWaitTimeout {
                circuit_wait,
                wait_timeout: self.wait_timeout,
            });
        }
        self.retry.validate_for(self.connect_timeout())?;
        Ok(())
    }
}

/// Why [`PoolBuilder::build`](crate::PoolBuilder::build) refused a configuration.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use steadypool::{drivers::tcp::TcpManager, BuildError, Pool};
/// let err = Pool::builder(TcpManager::new("127.0.0.1:1")).max_size(0).build().unwrap_err();
/// assert!(matches!(err, BuildError::ZeroMaxSize));
/// # }
/// ```
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// `max_size` is 0: no connection could ever be handed out.
    #[error("max_size must be at least 1")]
    ZeroMaxSize,
    /// `min_idle` exceeds `max_size`.
    #[error("min_idle ({min_idle}) must not exceed max_size ({max_size})")]
    MinIdleAboveMaxSize {
        /// The configured `min_idle`.
        min_idle: usize,
        /// The configured `max_size`.
        max_size: usize,
    },
    /// A duration that must be positive is zero.
    #[error("{knob} must be greater than zero")]
    ZeroDuration {
        /// The knob's name.
        knob: &'static str,
    },
    /// `idle_timeout` is longer than `max_lifetime`, so it could never fire.
    #[error(
        "idle_timeout ({idle:?}) must not exceed max_lifetime ({lifetime:?}); lower idle_timeout"
    )]
    IdleTimeoutAboveMaxLifetime {
        /// The configured `idle_timeout`.
        idle: Duration,
        /// The configured `max_lifetime`.
        lifetime: Duration,
    },
    /// The lifetime jitter would retire connections at birth.
    #[error("max_lifetime_jitter ({jitter:?}) must be below max_lifetime ({lifetime:?})")]
    JitterAboveMaxLifetime {
        /// The configured jitter.
        jitter: Duration,
        /// The configured `max_lifetime`.
        lifetime: Duration,
    },
    /// A socket setting the dialer refuses (a zero `connect_timeout`, a keepalive
    /// setting the kernel would reject or that disables detection, a
    /// `TCP_USER_TIMEOUT` out of range): the [`Dialer`] owns these checks.
    #[error(transparent)]
    Socket(#[from] SocketSettingError),
    /// A count that must be at least 1 is zero.
    #[error("{knob} must be at least 1")]
    ZeroLimit {
        /// The knob's name.
        knob: &'static str,
    },
    /// `circuit_first_open` is longer than `circuit_open_for`, the cap of the open
    /// periods.
    #[error(
        "circuit_first_open ({first:?}) must not exceed circuit_open_for ({open_for:?}), \
         the longest open period"
    )]
    FirstOpenAboveOpenFor {
        /// The configured first open period.
        first: Duration,
        /// The configured cap.
        open_for: Duration,
    },
    /// `circuit_wait` is longer than `wait_timeout`: a checkout gives up at its
    /// `wait_timeout` whatever the circuit does, so the longer wait could never happen.
    #[error(
        "circuit_wait ({circuit_wait:?}) must not exceed wait_timeout ({wait_timeout:?}): \
         a checkout never waits longer than wait_timeout"
    )]
    CircuitWaitAboveWaitTimeout {
        /// The configured wait on an open circuit.
        circuit_wait: Duration,
        /// The configured checkout wait.
        wait_timeout: Duration,
    },
    /// The retry policy was refused.
    #[error("retry policy: {0}")]
    RetryPolicy(#[from] PolicyError),
    /// `build()` was called outside a tokio runtime; the reaper needs one.
    #[error("build() must be called from within a tokio runtime (the pool spawns its reaper)")]
    NoRuntime,
    /// A defect in steadypool: deadpool, the queue under the pool, refused the
    /// configuration the pool gave it. It refuses only deadpool timeouts without a
    /// runtime, and the pool sets none (it bounds every wait with tokio's timer).
    /// Please report it, with the message (deadpool's).
    #[error("internal error: the pool's queue refused its configuration: {0}")]
    Internal(String),
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::dial::Keepalive;

    /// The README a reader sees: the repository's, or the published crate's copy.
    fn readme() -> String {
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(crate_dir.join("../README.md"))
            .or_else(|_| std::fs::read_to_string(crate_dir.join("README.md")))
            .unwrap()
    }

    /// The default the README's table of knobs states for `knob`.
    fn stated(readme: &str, knob: &str) -> String {
        let row = format!("| `{knob}` | ");
        let line = readme
            .lines()
            .find(|line| line.starts_with(&row))
            .unwrap_or_else(|| panic!("no row for `{knob}` in the README's table of knobs"));
        let cell = &line[row.len()..];
        cell[..cell.find(" |").unwrap()].to_owned()
    }

    /// A duration as the README writes it.
    fn written(duration: Duration) -> String {
        let ms = duration.as_millis();
        if ms.is_multiple_of(60_000) {
            format!("{} min", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            format!("{} s", ms / 1000)
        } else {
            format!("{ms} ms")
        }
    }

    /// Asserts that `knob`'s stated default is `value`, or starts with it followed by
    /// a remark (a space or a comma).
    fn assert_stated(readme: &str, knob: &str, value: &str) {
        let stated = stated(readme, knob);
        let rest = stated.strip_prefix(value);
        assert!(
            rest.is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', ','])),
            "the README says `{knob}` defaults to {stated:?}; the code: {value:?}"
        );
    }

    #[test]
    fn the_readmes_table_of_knobs_states_each_default_as_the_code_has_it() {
        let readme = readme();
        let config = Config::default();
        let gate = config.gate();
        let keepalive = Keepalive::default();
        let detection = keepalive.idle + keepalive.interval * keepalive.count;
        for (knob, value) in [
            ("max_size", config.max_size.to_string()),
            ("min_idle", config.min_idle.to_string()),
            ("wait_timeout", written(config.wait_timeout)),
            ("connect_timeout", written(config.connect_timeout())),
            ("ping_timeout", written(config.ping_timeout)),
            ("idle_timeout", written(config.idle_timeout.unwrap())),
            ("max_lifetime", written(config.max_lifetime.unwrap())),
            ("check_after", written(config.check_after.to_std())),
            ("reaper_interval", written(config.reaper_interval)),
            ("circuit_open_for", written(gate.open_for)),
            ("circuit_first_open", written(gate.first_open)),
            ("circuit_wait", written(config.circuit_wait())),
            (
                "circuit_open_after",
                format!("{} failed connects", gate.open_after),
            ),
            (
                "keepalive",
                format!(
                    "{} / {} / {}",
                    written(keepalive.idle),
                    written(keepalive.interval),
                    keepalive.count
                ),
            ),
            (
                "user_timeout",
                format!("keepalive detection time ({})", written(detection)),
            ),
            (
                "max_concurrent_connects",
                format!("a width from {} ", gate.narrow),
            ),
            (
                "queue_mode",
                format!("{:?}", config.queue_mode).to_uppercase(),
            ),
            ("learn_idle_limit", "on".to_owned()),
        ] {
            assert_stated(&readme, knob, value.trim_end());
        }
        assert!(config.learn_idle_limit);
        let width = stated(&readme, "max_concurrent_connects");
        assert!(width.contains(&format!("to {} ", gate.ceiling)), "{width}");
        assert_eq!(config.lifetime_jitter() * 40, config.max_lifetime.unwrap());
        assert_stated(&readme, "max_lifetime_jitter", "2.5 % of `max_lifetime`");
    }

    #[test]
    fn the_readme_states_the_retry_policys_defaults_as_the_code_has_them() {
        let readme = readme();
        let policy = RetryPolicy::default();
        for promise in [
            format!("attempts (default {})", policy.max_attempts),
            format!(
                "an overall deadline (default {}, covering the operation too)",
                written(policy.deadline)
            ),
            format!(
                "retries ≤ {} × the requests of the last 10 s + {}",
                policy.budget_ratio, policy.budget_floor
            ),
            format!(
                "doubling from {} and never above {}",
                written(policy.backoff_base),
                written(policy.backoff_cap)
            ),
        ] {
            assert!(
                readme.contains(&promise),
                "the README does not say {promise:?}"
            );
        }
    }
}
