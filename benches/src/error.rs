//! Why a benchmark run failed.

use std::io;

use steadypool::chaos::ChaosError;

/// Why a benchmark could not run to the end.
///
/// ```
/// use steadypool_benches::BenchError;
/// let err = BenchError::Setup("no free port".into());
/// assert_eq!(err.to_string(), "setting up the benchmark: no free port");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A socket, file or process call failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The fault-injecting proxy could not start or switch a fault.
    #[error("chaos proxy: {0}")]
    Chaos(#[from] ChaosError),
    /// A pool refused its configuration or could not open its first connections.
    #[error("building the {pool} pool: {message}")]
    Build {
        /// Which pool.
        pool: &'static str,
        /// What it said.
        message: String,
    },
    /// A checkout failed during a measurement that needs every checkout to succeed.
    #[error("{pool}: checkout failed: {message}")]
    Checkout {
        /// Which pool.
        pool: &'static str,
        /// What it said.
        message: String,
    },
    /// An external command (`ip`, `iptables`, `unshare`) failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and error output.
        message: String,
    },
    /// The scenario could not be set up.
    #[error("setting up the benchmark: {0}")]
    Setup(String),
    /// A plot could not be drawn.
    #[error("drawing {path}: {message}")]
    Plot {
        /// The file being drawn.
        path: String,
        /// What the drawing backend said.
        message: String,
    },
    /// A result line could not be written or read.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}
