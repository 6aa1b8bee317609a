//! Running an operation on a pooled connection, and reconnecting when it breaks.
//!
//! The rules a caller relies on are documented on [`RetryPolicy`], which users see.
//!
//! # Inside
//!
//! | module | owns |
//! |---|---|
//! | `policy` | [`RetryPolicy`], [`Idempotency`], [`GiveUp`], the backoff, and the one pure decision every failed attempt goes through |
//! | `budget` | the pool's retry budget |
//! | `run` | the attempt loop and [`Pool::run`](crate::Pool::run) with its siblings |
//! | `error` | [`RunError`] and [`AttemptError`] |

pub(crate) mod budget;
mod error;
pub(crate) mod policy;
mod run;

pub use self::error::{AttemptError, RunError};
pub use self::policy::{GiveUp, Idempotency, PolicyError, RetryPolicy};
#[allow(deprecated)] // kept so that code naming it gets the deprecation note, not an error
pub use self::run::OperationFuture;
