//! What a transport error means for the connection and the request: the
//! [`Classify`] answer for [`io::Error`], and the walk down a driver error's
//! `source()` chain to the I/O or dial error inside it.
//!
//! It sits above [`crate::cause`] (the taxonomy and the trait) and [`crate::dial`]
//! (whose [`DialError`] classifies itself), so that neither imports the other's
//! dependants: a dial failure found in a chain is a failed connect, not the
//! `user_timeout` its `ETIMEDOUT` would mean on an open connection.

use std::error::Error as StdError;
use std::io;

use crate::cause::{Classify, Disposition, Phase, ResetCause, Sent};
use crate::dial::DialError;

impl Classify for io::Error {
    fn classify(&self) -> Disposition {
        if let Some(inner) = self.get_ref()
            && let Some(found) = classify_source_chain(inner)
        {
            return found;
        }
        match self.kind() {
            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Disposition::Transient,
            io::ErrorKind::ConnectionRefused => Disposition::Broken {
                cause: ResetCause::Refused,
                sent: Sent::No,
            },
            _ => Disposition::Broken {
                cause: ResetCause::of_io(self, Phase::InUse),
                sent: Sent::Maybe,
            },
        }
    }
}

/// Walks an error's `source()` chain and classifies the first [`io::Error`] (or
/// [`DialError`]) in it.
///
/// Drivers wrap the transport error that broke the connection inside their own
/// error types; this finds it. A dial failure is classified as what it is, a failed
/// connect (a dial timeout is `connect_timeout`, not the `user_timeout` its
/// `ETIMEDOUT` would mean on an open connection). `None` when no I/O error is in the
/// chain.
///
/// ```
/// use std::io;
/// use steadypool::{classify_source_chain, Disposition, ResetCause, Sent};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("query failed")]
/// struct QueryError(#[source] io::Error);
///
/// let err = QueryError(io::ErrorKind::BrokenPipe.into());
/// assert_eq!(
///     classify_source_chain(&err),
///     Some(Disposition::Broken { cause: ResetCause::BrokenPipe, sent: Sent::Maybe })
/// );
/// ```
pub fn classify_source_chain(err: &(dyn StdError + 'static)) -> Option<Disposition> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(dial) = e.downcast_ref::<DialError>() {
            return Some(dial.classify());
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io.classify());
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_was_never_sent_and_interrupted_is_transient() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            refused.classify(),
            Disposition::Broken {
                cause: ResetCause::Refused,
                sent: Sent::No
            }
        );
        let interrupted = io::Error::from(io::ErrorKind::Interrupted);
        assert_eq!(interrupted.classify(), Disposition::Transient);
    }

    #[test]
    fn io_error_wrapping_another_io_error_is_classified_by_the_inner_one() {
        let inner = io::Error::from(io::ErrorKind::ConnectionReset);
        let outer = io::Error::other(inner);
        assert_eq!(
            outer.classify(),
            Disposition::Broken {
                cause: ResetCause::PeerReset,
                sent: Sent::Maybe
            }
        );
    }

    #[test]
    fn a_dial_timeout_wrapped_in_an_io_error_is_a_connect_timeout() {
        let dial = DialError::Timeout {
            addr: "127.0.0.1:1".into(),
            after: std::time::Duration::from_millis(300),
        };
        assert_eq!(
            io::Error::from(dial).classify(),
            Disposition::Broken {
                cause: ResetCause::ConnectTimeout,
                sent: Sent::No
            }
        );
    }
}
