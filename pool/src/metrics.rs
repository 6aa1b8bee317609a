//! Every metric steadypool records: its name, labels and meaning (the catalog; the
//! recording itself is internal).
//!
//! Metrics go through the [`metrics`](https://docs.rs/metrics) facade: install any
//! recorder (for example `metrics-exporter-prometheus`). A pool binds its metric
//! handles once, when it is built, which keeps recording off the checkout path's
//! lookups; a global recorder installed **after** `build()` is picked up on the
//! reaper's next tick (within `reaper_interval`), so the order does not matter. A
//! pool built inside [`metrics::with_local_recorder`] keeps that recorder. Every
//! series carries the label `pool` (the pool's [`name`](crate::PoolBuilder::name));
//! other label values come from fixed sets ([`ResetCause`](crate::ResetCause), [`Phase`](crate::Phase), [`Eviction`](crate::Eviction),
//! [`RetryOutcome`], [`RunOutcome`],
//! [`CheckoutFailure`]), never from errno values, addresses or
//! messages.
//!
//! **Histograms need buckets in the exporter.** `metrics` hands the exporter raw
//! samples; `metrics-exporter-prometheus` renders a histogram as a summary unless
//! buckets are set (`PrometheusBuilder::set_buckets_for_metric`): the seconds
//! histograms below want buckets from about 100 µs to 10 s.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `steadypool_resets_total` | counter | `cause`, `phase` | connections that broke or could not be opened (`phase="connect"`), by why and when |
//! | `steadypool_evictions_total` | counter | `reason` | connections closed on purpose: `idle_expired`, `max_lifetime`, `resize`, `closed`, `cancelled`, `deadline`, `detached`, `hook_failed` (a hook turned it down), `rejected` (by `Pool::retain`), `server_limit` (closed before a limit the server announced, such as HTTP's `Keep-Alive: timeout`) |
//! | `steadypool_retries_total` | counter | `cause`, `outcome` | operations that hit a broken connection, and what became of them |
//! | `steadypool_connects_total` | counter | `outcome` | connect attempts: `ok` or the failure's cause |
//! | `steadypool_connect_duration_seconds` | histogram | | time to open a connection, handshake included |
//! | `steadypool_checkout_wait_seconds` | histogram | | time `get()` took; checkouts that found a connection at once are recorded as 0 s on the reaper's tick |
//! | `steadypool_checkout_errors_total` | counter | `error` | checkouts that failed, as the caller saw them: `timeout`, `closed`, `connect_failed`, `connect_timeout`, `circuit_open` |
//! | `steadypool_connections` | gauge | `state` (`idle`, `in_use`) | pooled connections |
//! | `steadypool_waiters` | gauge | | tasks waiting in `get()` |
//! | `steadypool_circuit_state` | gauge | | connect circuit: 0 closed, 1 half-open, 2 open |
//! | `steadypool_idle_limit_lower_seconds` | gauge | | longest idle time seen harmless on this path (0: none yet) |
//! | `steadypool_idle_limit_upper_seconds` | gauge | | shortest idle time after which a connection was found closed (NaN: none) |
//! | `steadypool_idle_evict_after_seconds` | gauge | | idle time after which the pool closes a connection now (`+Inf`: never) |
//! | `steadypool_announced_idle_timeout_seconds` | gauge | | the idle timeout the upstream last announced (HTTP's `Keep-Alive: timeout=N`; NaN: none), see [`Manager::announced_idle_limit`](crate::Manager::announced_idle_limit) |
//! | `steadypool_runs_total` | counter | `outcome` | `run` calls, by what the caller got: `ok`, `operation_error`, `maybe_executed`, `not_executed` |
//!
//! The occupancy and idle-limit gauges are refreshed on every reaper tick, and the
//! idle-limit gauges also whenever a lost or reused connection changes the learned
//! limit (see [`IdleLimit`](crate::IdleLimit)); the announced idle timeout when a
//! connection comes back with a new one. [`Pool::stats`](crate::Pool::stats)
//! reads the same counts in process, without an exporter.

/// Connections that broke, by `cause` and `phase`.
pub const RESETS: &str = "steadypool_resets_total";
/// Connections closed on purpose, by `reason`.
pub const EVICTIONS: &str = "steadypool_evictions_total";
/// Operations that hit a broken connection, by `cause` and `outcome`.
pub const RETRIES: &str = "steadypool_retries_total";
/// Connect attempts, by `outcome`.
pub const CONNECTS: &str = "steadypool_connects_total";
/// Time to open a connection.
pub const CONNECT_DURATION: &str = "steadypool_connect_duration_seconds";
/// Time `get()` took.
pub const CHECKOUT_WAIT: &str = "steadypool_checkout_wait_seconds";
/// Checkouts that failed, by `error`.
pub const CHECKOUT_ERRORS: &str = "steadypool_checkout_errors_total";
/// Pooled connections, by `state`.
pub const CONNECTIONS: &str = "steadypool_connections";
/// Tasks waiting for a connection.
pub const WAITERS: &str = "steadypool_waiters";
/// The connect circuit's state.
pub const CIRCUIT_STATE: &str = "steadypool_circuit_state";
/// Lower bound of the learned idle limit.
pub const IDLE_LIMIT_LOWER: &str = "steadypool_idle_limit_lower_seconds";
/// Upper bound of the learned idle limit.
pub const IDLE_LIMIT_UPPER: &str = "steadypool_idle_limit_upper_seconds";
/// The idle time after which the pool closes a connection now.
pub const IDLE_EVICT_AFTER: &str = "steadypool_idle_evict_after_seconds";
/// The idle timeout the upstream last announced.
pub const ANNOUNCED_IDLE_TIMEOUT: &str = "steadypool_announced_idle_timeout_seconds";
/// `run` calls, by the `outcome` the caller got.
pub const RUNS: &str = "steadypool_runs_total";

/// What became of an operation that hit a broken connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryOutcome {
    /// It was retried and a later attempt succeeded.
    Succeeded,
    /// It was retried, but attempts or the deadline ran out.
    GaveUp,
    /// It was not retried: the retry budget was spent.
    BudgetSpent,
    /// It was not retried: it may have run on the server and is not idempotent.
    NotSafe,
}

impl RetryOutcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [RetryOutcome; 4] = [
        RetryOutcome::Succeeded,
        RetryOutcome::GaveUp,
        RetryOutcome::BudgetSpent,
        RetryOutcome::NotSafe,
    ];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RetryOutcome::Succeeded => "succeeded",
            RetryOutcome::GaveUp => "gave_up",
            RetryOutcome::BudgetSpent => "budget_spent",
            RetryOutcome::NotSafe => "not_safe",
        }
    }
}

/// Why a checkout failed, as the caller saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CheckoutFailure {
    /// No connection within `wait_timeout`.
    Timeout,
    /// The pool was closed.
    Closed,
    /// A defect in steadypool (see [`Error::Internal`](crate::Error::Internal)).
    Internal,
    /// A new connection was needed and could not be opened.
    ConnectFailed,
    /// A new connection was needed and was not ready within `connect_timeout`.
    ConnectTimeout,
    /// A new connection was needed and the connect circuit was open.
    CircuitOpen,
}

impl CheckoutFailure {
    /// Every failure, in a fixed order.
    pub const ALL: [CheckoutFailure; 6] = [
        CheckoutFailure::Timeout,
        CheckoutFailure::Closed,
        CheckoutFailure::Internal,
        CheckoutFailure::ConnectFailed,
        CheckoutFailure::ConnectTimeout,
        CheckoutFailure::CircuitOpen,
    ];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            CheckoutFailure::Timeout => "timeout",
            CheckoutFailure::Closed => "closed",
            CheckoutFailure::Internal => "internal",
            CheckoutFailure::ConnectFailed => "connect_failed",
            CheckoutFailure::ConnectTimeout => "connect_timeout",
            CheckoutFailure::CircuitOpen => "circuit_open",
        }
    }
}

/// What a caller of [`Pool::run`](crate::Pool::run) (or a sibling) got back. Every
/// call that returns counts once; a `run` future dropped before it returned counts
/// nothing.
///
/// ```
/// use steadypool::metrics::RunOutcome;
/// let labels: Vec<_> = RunOutcome::ALL.iter().map(|o| o.as_str()).collect();
/// assert_eq!(labels, ["ok", "operation_error", "maybe_executed", "not_executed"]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunOutcome {
    /// The operation returned its value.
    Ok,
    /// The server answered with the operation's own error
    /// ([`RunError::Operation`](crate::RunError::Operation)).
    OperationError,
    /// The request may have taken effect
    /// ([`RunError::MaybeExecuted`](crate::RunError::MaybeExecuted)).
    MaybeExecuted,
    /// The request never reached the server
    /// ([`RunError::NotExecuted`](crate::RunError::NotExecuted)), for example every
    /// connect was refused or the connect circuit is open.
    NotExecuted,
}

impl RunOutcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [RunOutcome; 4] = [
        RunOutcome::Ok,
        RunOutcome::OperationError,
        RunOutcome::MaybeExecuted,
        RunOutcome::NotExecuted,
    ];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::OperationError => "operation_error",
            RunOutcome::MaybeExecuted => "maybe_executed",
            RunOutcome::NotExecuted => "not_executed",
        }
    }
}
