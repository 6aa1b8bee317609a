//! The pool's configuration read with serde (feature `serde`).

use std::time::Duration;

use serde::Deserialize;

use crate::dial::{Dialer, Keepalive};
use crate::manager::Manager;
use crate::pool::QueueMode;
use crate::pool::builder::PoolBuilder;
use crate::retry::policy::RetryPolicy;

/// Every [`PoolBuilder`] knob, each optional.
///
/// A field that is `None` leaves the builder's value alone. For the knobs that can be
/// turned off, `Some(None)` (written `"off"`) turns them off.
///
/// Pool configuration from a file or the environment (feature `serde`).
///
/// [`PoolConfig`] holds every [`PoolBuilder`] knob, each optional: a knob the
/// configuration leaves out keeps the builder's value (its default, or what was set
/// before). Durations are written the way people write them (`"45s"`, `"500ms"`,
/// `"30min"`, `"1h 30min"`, as [`humantime`] parses them); the knobs that can be turned
/// off (`idle_timeout`, `max_lifetime`, `user_timeout`) also take `"off"`. Unknown
/// fields are rejected, so a misspelt knob is an error instead of a silently ignored
/// line.
///
/// Parsing only checks the form. The values are checked where those set in code are,
/// by [`PoolBuilder::build`], with the same [`BuildError`](crate::BuildError).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use steadypool::{drivers::tcp::TcpManager, Pool, PoolConfig};
///
/// // From TOML, JSON, YAML, environment variables (through a crate such as
/// // `envy` or `config`): anything serde reads.
/// let config: PoolConfig = serde_json::from_str(
///     r#"{
///         "max_size": 16,
///         "idle_timeout": "50s",
///         "max_lifetime": "off",
///         "keepalive": { "idle": "5s" },
///         "retry": { "max_attempts": 5, "backoff": { "base": "20ms", "cap": "1s" } }
///     }"#,
/// )?;
/// let pool = Pool::builder(TcpManager::new("127.0.0.1:7000"))
///     .name("upstream")
///     .config(&config)
///     .build()?;
/// assert_eq!(pool.status().max_size, 16);
/// # Ok(()) }
/// ```
///
/// The same in TOML, with the nested sections:
///
/// ```toml
/// max_size = 16
/// idle_timeout = "50s"
/// max_lifetime = "off"
///
/// [keepalive]
/// idle = "5s"
///
/// [retry]
/// max_attempts = 5
/// backoff = { base = "20ms", cap = "1s" }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolConfig {
    /// [`PoolBuilder::name`].
    pub name: Option<String>,
    /// [`PoolBuilder::max_size`].
    pub max_size: Option<usize>,
    /// [`PoolBuilder::min_idle`].
    pub min_idle: Option<usize>,
    /// [`PoolBuilder::wait_timeout`].
    #[serde(deserialize_with = "human::duration")]
    pub wait_timeout: Option<Duration>,
    /// [`PoolBuilder::connect_timeout`].
    #[serde(deserialize_with = "human::duration")]
    pub connect_timeout: Option<Duration>,
    /// [`PoolBuilder::ping_timeout`].
    #[serde(deserialize_with = "human::duration")]
    pub ping_timeout: Option<Duration>,
    /// [`PoolBuilder::idle_timeout`]; `"off"` keeps idle connections forever.
    #[serde(deserialize_with = "human::duration_or_off")]
    pub idle_timeout: Option<Option<Duration>>,
    /// [`PoolBuilder::max_lifetime`]; `"off"` keeps connections forever.
    #[serde(deserialize_with = "human::duration_or_off")]
    pub max_lifetime: Option<Option<Duration>>,
    /// [`PoolBuilder::max_lifetime_jitter`].
    #[serde(deserialize_with = "human::duration")]
    pub max_lifetime_jitter: Option<Duration>,
    /// [`PoolBuilder::check_after`].
    #[serde(deserialize_with = "human::duration")]
    pub check_after: Option<Duration>,
    /// [`PoolBuilder::keepalive`]: the `[keepalive]` section.
    pub keepalive: Option<KeepaliveConfig>,
    /// [`PoolBuilder::user_timeout`]; `"off"` leaves the kernel's.
    #[serde(deserialize_with = "human::duration_or_off")]
    pub user_timeout: Option<Option<Duration>>,
    /// [`PoolBuilder::nodelay`].
    pub nodelay: Option<bool>,
    /// [`PoolBuilder::queue_mode`]: `"fifo"` or `"lifo"`.
    pub queue_mode: Option<QueueMode>,
    /// [`PoolBuilder::reaper_interval`].
    #[serde(deserialize_with = "human::duration")]
    pub reaper_interval: Option<Duration>,
    /// [`PoolBuilder::learn_idle_limit`].
    pub learn_idle_limit: Option<bool>,
    /// [`PoolBuilder::max_concurrent_connects`].
    pub max_concurrent_connects: Option<usize>,
    /// [`PoolBuilder::circuit_open_after`].
    pub circuit_open_after: Option<u32>,
    /// [`PoolBuilder::circuit_open_for`].
    #[serde(deserialize_with = "human::duration")]
    pub circuit_open_for: Option<Duration>,
    /// [`PoolBuilder::circuit_first_open`].
    #[serde(deserialize_with = "human::duration")]
    pub circuit_first_open: Option<Duration>,
    /// [`PoolBuilder::circuit_wait`]: `"0s"` fails fast on an open circuit.
    #[serde(deserialize_with = "human::duration")]
    pub circuit_wait: Option<Duration>,
    /// [`PoolBuilder::retry_policy`]: the `[retry]` section.
    pub retry: Option<RetryConfig>,
}

impl PoolConfig {
    /// The socket settings this configuration sets (`connect_timeout`,
    /// `[keepalive]`, `user_timeout`, `nodelay`) applied to `dialer`; the others
    /// keep `dialer`'s. For code that dials outside a pool with the same settings;
    /// [`PoolBuilder::config`] applies them to the pool's dialer the same way.
    ///
    /// ```
    /// use std::time::Duration;
    /// use steadypool::{Dialer, PoolConfig};
    ///
    /// let config: PoolConfig = toml::from_str(r#"
    ///     connect_timeout = "2s"
    ///     [keepalive]
    ///     idle = "5s"
    /// "#).unwrap();
    /// let dialer = config.dialer(Dialer::new());
    /// assert_eq!(dialer.timeout(), Duration::from_secs(2));
    /// // The user timeout follows keepalive: 5 s + 3 x 3 s.
    /// assert_eq!(dialer.tcp_user_timeout(), Some(Duration::from_secs(14)));
    /// ```
    pub fn dialer(&self, dialer: Dialer) -> Dialer {
        let mut dialer = dialer;
        if let Some(timeout) = self.connect_timeout {
            dialer = dialer.connect_timeout(timeout);
        }
        if let Some(keepalive) = &self.keepalive {
            dialer = dialer.keepalive(keepalive.keepalive());
        }
        if let Some(timeout) = self.user_timeout {
            dialer = dialer.user_timeout(timeout);
        }
        if let Some(nodelay) = self.nodelay {
            dialer = dialer.nodelay(nodelay);
        }
        dialer
    }
}

/// The `[keepalive]` section: [`Keepalive`] timing, or `enabled = false` for none.
///
/// Settings the section leaves out take [`Keepalive::default`]'s (10 s, 3 s, 3). With
/// `enabled = false` keepalive is off and the timings are not used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct KeepaliveConfig {
    /// `false` turns keepalive off ([`PoolBuilder::keepalive`] with `None`). Default
    /// `true`.
    pub enabled: Option<bool>,
    /// [`Keepalive::idle`], in whole seconds.
    #[serde(deserialize_with = "human::duration")]
    pub idle: Option<Duration>,
    /// [`Keepalive::interval`], in whole seconds.
    #[serde(deserialize_with = "human::duration")]
    pub interval: Option<Duration>,
    /// [`Keepalive::count`].
    pub count: Option<u32>,
}

impl KeepaliveConfig {
    /// The keepalive this section asks for.
    pub fn keepalive(&self) -> Option<Keepalive> {
        if self.enabled == Some(false) {
            return None;
        }
        let default = Keepalive::default();
        Some(Keepalive::new(
            self.idle.unwrap_or(default.idle),
            self.interval.unwrap_or(default.interval),
            self.count.unwrap_or(default.count),
        ))
    }
}

/// The `[retry]` section: a [`RetryPolicy`].
///
/// It stands for the whole policy: settings it leaves out take
/// [`RetryPolicy::default`]'s, not those of a policy set on the builder before.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryConfig {
    /// [`RetryPolicy::max_attempts`].
    pub max_attempts: Option<u32>,
    /// [`RetryPolicy::deadline`].
    #[serde(deserialize_with = "human::duration")]
    pub deadline: Option<Duration>,
    /// [`RetryPolicy::backoff`]: `{ base = "50ms", cap = "2s" }`.
    pub backoff: Option<BackoffConfig>,
    /// [`RetryPolicy::budget`]: `{ ratio = 0.2, floor = 10 }`.
    pub budget: Option<BudgetConfig>,
    /// [`RetryPolicy::jitter_seed`].
    pub jitter_seed: Option<u64>,
}

impl RetryConfig {
    /// The policy this section asks for.
    pub fn policy(&self) -> RetryPolicy {
        let mut policy = RetryPolicy::default();
        if let Some(attempts) = self.max_attempts {
            policy = policy.max_attempts(attempts);
        }
        if let Some(deadline) = self.deadline {
            policy = policy.deadline(deadline);
        }
        if let Some(backoff) = &self.backoff {
            policy = policy.backoff(backoff.base, backoff.cap);
        }
        if let Some(budget) = &self.budget {
            policy = policy.budget(budget.ratio, budget.floor);
        }
        if let Some(seed) = self.jitter_seed {
            policy = policy.jitter_seed(seed);
        }
        policy
    }
}

/// [`RetryPolicy::backoff`]'s two arguments, given together as they are in code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// The first wait.
    #[serde(deserialize_with = "human::required")]
    pub base: Duration,
    /// The longest wait.
    #[serde(deserialize_with = "human::required")]
    pub cap: Duration,
}

/// [`RetryPolicy::budget`]'s two arguments, given together as they are in code.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Retries allowed per request started in the last 10 s.
    pub ratio: f64,
    /// Retries allowed on top, so that a quiet pool can retry at all.
    pub floor: u32,
}

impl<M: Manager> PoolBuilder<M> {
    /// Sets every knob `config` sets, and leaves the others as they are. Call it
    /// before or after the knobs set in code: the last call wins. See [`PoolConfig`].
    pub fn config(self, config: &PoolConfig) -> Self {
        let mut builder = self;
        if let Some(name) = &config.name {
            builder = builder.name(name.clone());
        }
        if let Some(size) = config.max_size {
            builder = builder.max_size(size);
        }
        if let Some(idle) = config.min_idle {
            builder = builder.min_idle(idle);
        }
        if let Some(timeout) = config.wait_timeout {
            builder = builder.wait_timeout(timeout);
        }
        if let Some(timeout) = config.ping_timeout {
            builder = builder.ping_timeout(timeout);
        }
        if let Some(timeout) = config.idle_timeout {
            builder = builder.idle_timeout(timeout);
        }
        if let Some(lifetime) = config.max_lifetime {
            builder = builder.max_lifetime(lifetime);
        }
        if let Some(jitter) = config.max_lifetime_jitter {
            builder = builder.max_lifetime_jitter(jitter);
        }
        if let Some(idle) = config.check_after {
            builder = builder.check_after(idle);
        }
        builder = builder.map_dialer(|dialer| config.dialer(dialer));
        if let Some(mode) = config.queue_mode {
            builder = builder.queue_mode(mode);
        }
        if let Some(interval) = config.reaper_interval {
            builder = builder.reaper_interval(interval);
        }
        if let Some(learn) = config.learn_idle_limit {
            builder = builder.learn_idle_limit(learn);
        }
        if let Some(connects) = config.max_concurrent_connects {
            builder = builder.max_concurrent_connects(connects);
        }
        if let Some(failures) = config.circuit_open_after {
            builder = builder.circuit_open_after(failures);
        }
        if let Some(period) = config.circuit_open_for {
            builder = builder.circuit_open_for(period);
        }
        if let Some(period) = config.circuit_first_open {
            builder = builder.circuit_first_open(period);
        }
        if let Some(wait) = config.circuit_wait {
            builder = builder.circuit_wait(wait);
        }
        if let Some(retry) = &config.retry {
            builder = builder.retry_policy(retry.policy());
        }
        builder
    }
}

/// Durations in human form, for `deserialize_with`.
mod human {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    /// What a duration field accepts; `off` also takes `"off"`.
    struct Human {
        off: bool,
    }

    impl Visitor<'_> for Human {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"45s\", \"500ms\" or \"30min\"")?;
            if self.off {
                f.write_str(", or \"off\"")?;
            }
            Ok(())
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            if self.off && text.trim() == "off" {
                return Ok(None);
            }
            humantime::parse_duration(text)
                .map(Some)
                .map_err(|e| E::custom(format_args!("invalid duration {text:?}: {e}")))
        }
    }

    pub(super) fn required<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_str(Human { off: false })?
            .ok_or_else(|| de::Error::custom("a duration is required"))
    }

    pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        required(d).map(Some)
    }

    pub(super) fn duration_or_off<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<Duration>>, D::Error> {
        d.deserialize_str(Human { off: true }).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BuildError;
    use crate::drivers::tcp::TcpManager;
    use crate::pool::Pool;

    const EVERY_KNOB: &str = r#"
        name = "orders"
        max_size = 16
        min_idle = 2
        wait_timeout = "20s"
        connect_timeout = "3s"
        ping_timeout = "1s 500ms"
        idle_timeout = "50s"
        max_lifetime = "1h"
        max_lifetime_jitter = "1min"
        check_after = "250ms"
        user_timeout = "off"
        nodelay = false
        queue_mode = "lifo"
        reaper_interval = "2s"
        learn_idle_limit = false
        max_concurrent_connects = 4
        circuit_open_after = 5
        circuit_open_for = "3s"
        circuit_first_open = "200ms"
        circuit_wait = "5s"

        [keepalive]
        idle = "5s"
        interval = "2s"
        count = 4

        [retry]
        max_attempts = 5
        deadline = "20s"
        backoff = { base = "20ms", cap = "1s" }
        budget = { ratio = 0.1, floor = 20 }
        jitter_seed = 7
    "#;

    #[test]
    fn every_knob_parses_from_toml() {
        let config: PoolConfig = toml::from_str(EVERY_KNOB).unwrap();
        let secs = Duration::from_secs;
        let expected = PoolConfig {
            name: Some("orders".to_owned()),
            max_size: Some(16),
            min_idle: Some(2),
            wait_timeout: Some(secs(20)),
            connect_timeout: Some(secs(3)),
            ping_timeout: Some(Duration::from_millis(1500)),
            idle_timeout: Some(Some(secs(50))),
            max_lifetime: Some(Some(secs(3600))),
            max_lifetime_jitter: Some(secs(60)),
            check_after: Some(Duration::from_millis(250)),
            keepalive: Some(KeepaliveConfig {
                enabled: None,
                idle: Some(secs(5)),
                interval: Some(secs(2)),
                count: Some(4),
            }),
            user_timeout: Some(None),
            nodelay: Some(false),
            queue_mode: Some(QueueMode::Lifo),
            reaper_interval: Some(secs(2)),
            learn_idle_limit: Some(false),
            max_concurrent_connects: Some(4),
            circuit_open_after: Some(5),
            circuit_open_for: Some(secs(3)),
            circuit_first_open: Some(Duration::from_millis(200)),
            circuit_wait: Some(secs(5)),
            retry: Some(RetryConfig {
                max_attempts: Some(5),
                deadline: Some(secs(20)),
                backoff: Some(BackoffConfig {
                    base: Duration::from_millis(20),
                    cap: secs(1),
                }),
                budget: Some(BudgetConfig {
                    ratio: 0.1,
                    floor: 20,
                }),
                jitter_seed: Some(7),
            }),
        };
        assert_eq!(config, expected);
        assert_eq!(
            config.retry.as_ref().map(RetryConfig::policy),
            Some(
                RetryPolicy::default()
                    .max_attempts(5)
                    .deadline(secs(20))
                    .backoff(Duration::from_millis(20), secs(1))
                    .budget(0.1, 20)
                    .jitter_seed(7)
            )
        );
        assert_eq!(
            config
                .keepalive
                .as_ref()
                .and_then(KeepaliveConfig::keepalive),
            Some(Keepalive::new(secs(5), secs(2), 4))
        );
    }

    #[test]
    fn the_same_config_parses_from_json() {
        let from_toml: PoolConfig = toml::from_str(EVERY_KNOB).unwrap();
        let as_json =
            serde_json::to_string(&toml::from_str::<toml::Value>(EVERY_KNOB).unwrap()).unwrap();
        let from_json: PoolConfig = serde_json::from_str(&as_json).unwrap();
        assert_eq!(from_json, from_toml);
    }

    #[test]
    fn an_empty_config_is_all_defaults_and_changes_nothing() {
        let config: PoolConfig = toml::from_str("").unwrap();
        assert_eq!(config, PoolConfig::default());
        let json: PoolConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(json, PoolConfig::default());
        let section: PoolConfig = toml::from_str("[keepalive]\n[retry]").unwrap();
        assert_eq!(
            section
                .keepalive
                .as_ref()
                .and_then(KeepaliveConfig::keepalive),
            Some(Keepalive::default())
        );
        assert_eq!(
            section.retry.as_ref().map(RetryConfig::policy),
            Some(RetryPolicy::default())
        );
        let off: PoolConfig = toml::from_str("[keepalive]\nenabled = false").unwrap();
        assert_eq!(
            off.keepalive.as_ref().and_then(KeepaliveConfig::keepalive),
            None
        );
    }

    #[test]
    fn a_bad_duration_names_the_knob_and_the_value() {
        let err = toml::from_str::<PoolConfig>(r#"idle_timeout = "45 parsecs""#).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("idle_timeout"), "{text}");
        assert!(text.contains(r#"invalid duration "45 parsecs""#), "{text}");
        assert!(text.contains("parsecs"), "{text}");

        let err = serde_json::from_str::<PoolConfig>(r#"{"retry": {"deadline": "soon"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"invalid duration "soon""#), "{err}");

        // A bare number is ambiguous (seconds? milliseconds?): refused.
        let err = toml::from_str::<PoolConfig>("connect_timeout = 5")
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"a duration such as "45s""#), "{err}");
        // "off" only where a knob can be off.
        let err = toml::from_str::<PoolConfig>(r#"connect_timeout = "off""#)
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"invalid duration "off""#), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        for (text, unknown) in [
            ("max_sise = 3", "max_sise"),
            ("[keepalive]\nidle_time = \"5s\"", "idle_time"),
            ("[retry]\nattempts = 2", "attempts"),
            (
                "[retry]\nbackoff = { base = \"1s\", cap = \"2s\", max = \"3s\" }",
                "max",
            ),
        ] {
            let err = toml::from_str::<PoolConfig>(text).unwrap_err().to_string();
            assert!(err.contains(&format!("unknown field `{unknown}`")), "{err}");
        }
        let err = toml::from_str::<PoolConfig>("[retry]\nbackoff = { base = \"1s\" }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `cap`"), "{err}");
    }

    #[tokio::test]
    async fn values_are_checked_by_build_with_the_usual_errors() {
        let build = |text: &str| {
            let config: PoolConfig = toml::from_str(text).unwrap();
            Pool::builder(TcpManager::new("127.0.0.1:1"))
                .config(&config)
                .build()
                .map(drop)
        };
        assert_eq!(build("max_size = 0"), Err(BuildError::ZeroMaxSize));
        assert!(matches!(
            build("[keepalive]\ncount = 0"),
            Err(BuildError::Socket(
                crate::dial::SocketSettingError::KeepaliveOutOfRange {
                    knob: "keepalive count",
                    ..
                }
            ))
        ));
        assert!(matches!(
            build("connect_timeout = \"20s\"\n[retry]\ndeadline = \"1s\""),
            Err(BuildError::RetryPolicy(_))
        ));
        assert_eq!(build(EVERY_KNOB), Ok(()));
    }

    #[tokio::test]
    async fn the_config_overrides_only_what_it_sets() {
        let config: PoolConfig = toml::from_str("min_idle = 0").unwrap();
        let pool = Pool::builder(TcpManager::new("127.0.0.1:1"))
            .max_size(3)
            .config(&config)
            .build()
            .unwrap();
        assert_eq!(pool.status().max_size, 3);
        let config: PoolConfig = toml::from_str("max_size = 5").unwrap();
        let pool = Pool::builder(TcpManager::new("127.0.0.1:1"))
            .max_size(3)
            .config(&config)
            .build()
            .unwrap();
        assert_eq!(pool.status().max_size, 5);
    }
}
