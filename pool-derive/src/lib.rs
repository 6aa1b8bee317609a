//! Derive macros for `steadypool`. Use them through `steadypool` (feature `derive`, on
//! by default): `use steadypool::Classify;` brings both the trait and the derive.
#![forbid(unsafe_code)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

mod classify;

/// Implements `steadypool::Classify` for an error enum (or struct): what the pool must
/// do with the connection and the operation when this error comes back.
///
/// Put at most one `#[classify(...)]` on each variant:
///
/// | attribute | meaning | `classify()` returns |
/// |---|---|---|
/// | *(none)* or `#[classify(application)]` | the server answered with an error; the connection is fine and nothing is retried | `Disposition::Application` |
/// | `#[classify(transient)]` | a passing condition (server busy); the connection is fine, the operation may be retried after a backoff | `Disposition::Transient` |
/// | `#[classify(transient, sent = "maybe")]` | as above, but the answer came after the work may have run (a gateway's 502), so only an idempotent operation is retried | `Disposition::Transient`, and `transient_sent()` returns `Sent::Maybe` |
/// | `#[classify(broken = "<cause>")]` | the connection is unusable, for the named reason; the request may have reached the server | `Disposition::Broken { cause, sent: Sent::Maybe }` |
/// | `#[classify(broken = "<cause>", sent = "no")]` | as above, but the request provably never left the client, so even a non-idempotent operation may be retried | `Disposition::Broken { cause, sent: Sent::No }` |
/// | `#[classify(transport)]` | the variant wraps a transport error (`std::io::Error`, or any error with one in its `source()` chain); the I/O error decides | what `classify_source_chain` finds; `Broken { cause: Other, sent: Maybe }` when the chain holds no I/O error |
/// | `#[classify(transport, sent = "no")]` | as above, but a broken connection found this way never carried the request | as above, with `sent: Sent::No` |
/// | `#[classify(delegate)]` | the variant wraps another error that implements `Classify` (for example `steadypool::Error`) | the wrapped error's `classify()` |
///
/// `<cause>` is a `ResetCause` label: `refused`, `connect_timeout`, `peer_reset`,
/// `peer_closed`, `broken_pipe`, `keepalive_timeout`, `user_timeout`,
/// `unexpected_data`, `ping_failed` or `other`.
///
/// `transport` and `delegate` inspect the variant's only field; in a variant with
/// several fields, the one marked `#[source]` or `#[from]` (thiserror's attributes),
/// or else the one named `source`. Generic fields get the bound they need
/// (`std::error::Error + 'static`, or `Classify`) on the generated impl. On a struct the
/// attribute goes on the struct itself.
///
/// `is_permanent()` (whether a connect failure will come back however long one
/// waits) is passed on the same way: a `transport` variant answers what
/// `permanent_in_source_chain` finds in its field (a TLS refusal), a `delegate`
/// variant what the wrapped error's `is_permanent()` says; every other variant is
/// never permanent. `transient_sent()` (whether a transient failure may have run) is
/// asked of a `delegate` variant's wrapped error, is `Sent::Maybe` for a
/// `transient, sent = "maybe"` variant, and `Sent::No` for every other.
///
/// Misuse (an unknown option or cause, `transport` on a variant without a field, two
/// attributes on one variant) is a compile error at the attribute, saying what to write.
///
/// # Example
///
/// ```
/// use steadypool::{Classify, Disposition, ResetCause, Sent};
///
/// #[derive(Debug, thiserror::Error, Classify)]
/// enum KvError {
///     #[error("i/o: {0}")]
///     #[classify(transport)]
///     Io(#[from] std::io::Error),
///     #[error("could not send the request: {source}")]
///     #[classify(transport, sent = "no")]
///     Send { source: std::io::Error, key: String },
///     #[error("server is loading")]
///     #[classify(transient)]
///     Loading,
///     #[error("garbage from server: {0:?}")]
///     #[classify(broken = "unexpected_data")]
///     Garbage(String),
///     #[error("server is shutting down")]
///     #[classify(broken = "peer_closed", sent = "no")]
///     ShuttingDown,
///     #[error("no such key")]
///     NotFound,
/// }
///
/// let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
/// assert_eq!(
///     KvError::Io(reset).classify(),
///     Disposition::Broken { cause: ResetCause::PeerReset, sent: Sent::Maybe }
/// );
/// assert_eq!(KvError::Loading.classify(), Disposition::Transient);
/// assert_eq!(KvError::NotFound.classify(), Disposition::Application);
/// ```
///
/// # What it expands to
///
/// For the enum above, the derive writes (paths shortened):
///
/// ```text
/// impl steadypool::Classify for KvError {
///     fn classify(&self) -> steadypool::Disposition {
///         match self {
///             KvError::Io(field) => {
///                 match steadypool::classify_source_chain(field) {
///                     Some(found) => found,
///                     None => Disposition::Broken { cause: ResetCause::Other, sent: Sent::Maybe },
///                 }
///             }
///             KvError::Send { source: field, .. } => {
///                 match steadypool::classify_source_chain(field) {
///                     Some(Disposition::Broken { cause, .. }) => Disposition::Broken { cause, sent: Sent::No },
///                     Some(found) => found,
///                     None => Disposition::Broken { cause: ResetCause::Other, sent: Sent::No },
///                 }
///             }
///             KvError::Loading => Disposition::Transient,
///             KvError::Garbage(..) => Disposition::Broken { cause: ResetCause::UnexpectedData, sent: Sent::Maybe },
///             KvError::ShuttingDown => Disposition::Broken { cause: ResetCause::PeerClosed, sent: Sent::No },
///             KvError::NotFound => Disposition::Application,
///         }
///     }
/// }
/// ```
///
/// A `#[classify(delegate)]` variant `Pool(steadypool::Error<E>)` becomes
/// `Self::Pool(field) => Classify::classify(field)`.
#[proc_macro_derive(Classify, attributes(classify))]
pub fn derive_classify(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    classify::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
