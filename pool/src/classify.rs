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

    /// A TLS handshake refused for good (a certificate that does not verify, none
    /// sent, no common protocol version, a certificate alert from the server; found
    /// anywhere in the error's chain, feature `tls`); every other I/O error can pass.
    fn is_permanent(&self) -> bool {
        permanent_in_source_chain(self)
    }
}

/// Whether an error's `source()` chain holds a TLS refusal that waiting cannot
/// change (feature `tls`): the server's certificate did not verify (another
/// authority, another name, expired), the server sent none, the two sides share no
/// protocol version or cipher suite, or the server turned down this client's
/// certificate. A reset or a close during the handshake, and rustls's other errors,
/// are not: they are the upstream restarting, or a glitch.
///
/// The [`Classify::is_permanent`] of an error that wraps a transport error, as
/// [`classify_source_chain`] is its `classify` (`#[derive(Classify)]` uses both for
/// a `transport` variant).
///
/// ```
/// use std::io;
/// use steadypool::permanent_in_source_chain;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("login failed")]
/// struct LoginError(#[source] io::Error);
///
/// let refused = LoginError(io::ErrorKind::ConnectionRefused.into());
/// assert!(!permanent_in_source_chain(&refused), "the upstream may come back");
/// ```
pub fn permanent_in_source_chain(err: &(dyn StdError + 'static)) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if tls_refused_for_good(e) {
            return true;
        }
        // An I/O error's `source()` skips the error it wraps (it shows that one as
        // its own message): look at the wrapped one itself.
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return io
                .get_ref()
                .is_some_and(|inner| permanent_in_source_chain(inner));
        }
        current = e.source();
    }
    false
}

#[cfg(feature = "tls")]
fn tls_refused_for_good(err: &(dyn StdError + 'static)) -> bool {
    use rustls::{AlertDescription as Alert, Error as Tls};
    let Some(tls) = err.downcast_ref::<Tls>() else {
        return false;
    };
    match tls {
        Tls::InvalidCertificate(_) | Tls::NoCertificatesPresented | Tls::PeerIncompatible(_) => {
            true
        }
        Tls::AlertReceived(alert) => matches!(
            alert,
            Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::UnknownCA
                | Alert::AccessDenied
                | Alert::CertificateRequired
                | Alert::ProtocolVersion
                | Alert::InsufficientSecurity
        ),
        _ => false,
    }
}

#[cfg(not(feature = "tls"))]
fn tls_refused_for_good(_: &(dyn StdError + 'static)) -> bool {
    false
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
    fn plain_io_errors_are_never_permanent() {
        for kind in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::TimedOut,
            io::ErrorKind::InvalidData,
        ] {
            assert!(!io::Error::from(kind).is_permanent(), "{kind:?}");
        }
        assert!(!io::Error::other("handshake glitch").is_permanent());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_refusals_that_waiting_cannot_change_are_permanent() {
        use rustls::{AlertDescription, CertificateError, Error as Tls, PeerIncompatible};
        let as_io = |tls: Tls| io::Error::new(io::ErrorKind::InvalidData, tls);
        for permanent in [
            Tls::InvalidCertificate(CertificateError::UnknownIssuer),
            Tls::InvalidCertificate(CertificateError::NotValidForName),
            Tls::InvalidCertificate(CertificateError::Expired),
            Tls::NoCertificatesPresented,
            Tls::AlertReceived(AlertDescription::UnknownCA),
            Tls::AlertReceived(AlertDescription::CertificateRequired),
            // No protocol version in common: refused by the server, or found by this
            // client in the server's hello.
            Tls::AlertReceived(AlertDescription::ProtocolVersion),
            Tls::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13),
            Tls::PeerIncompatible(PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig),
            Tls::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon),
        ] {
            let shown = permanent.to_string();
            assert!(as_io(permanent).is_permanent(), "{shown}");
        }
        for passing in [
            Tls::AlertReceived(AlertDescription::InternalError),
            Tls::AlertReceived(AlertDescription::CloseNotify),
            Tls::HandshakeNotComplete,
            Tls::General("oops".into()),
        ] {
            let shown = passing.to_string();
            assert!(!as_io(passing).is_permanent(), "{shown}");
        }
        let wrapped = io::Error::other(as_io(Tls::InvalidCertificate(
            CertificateError::BadSignature,
        )));
        assert!(wrapped.is_permanent(), "found down the chain");
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
