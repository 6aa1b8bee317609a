//! The chaos proxy's error.

use std::io;
use std::net::SocketAddr;

/// Why the proxy could not start, or could not apply a fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChaosError {
    /// The listening socket could not be set up.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The kernel's error.
        source: io::Error,
    },
    /// A reset probability outside 0 to 1.
    #[error("reset_probability must be a number from 0 to 1, got {0}")]
    Probability(f64),
    /// The kernel would not stop or resume listening (refusing needs Linux).
    #[error("could not {action} listening to refuse connections: {source}")]
    Listener {
        /// `"stop"` or `"resume"`.
        action: &'static str,
        /// The kernel's error.
        source: io::Error,
    },
    /// [`ChaosBuilder::start`](super::ChaosBuilder::start) was called outside a tokio runtime.
    #[error("the chaos proxy must be started within a tokio runtime")]
    NoRuntime,
}
