//! Every form of `#[derive(Classify)]`, checked by what `classify()` returns.

use std::fmt;
use std::io;

use steadypool::{Classify, Disposition, ResetCause, Sent};

fn io_error(kind: io::ErrorKind) -> io::Error {
    io::Error::from(kind)
}

fn broken(cause: ResetCause, sent: Sent) -> Disposition {
    Disposition::Broken { cause, sent }
}

#[derive(Debug, thiserror::Error, Classify)]
enum Every {
    #[error("i/o")]
    #[classify(transport)]
    Io(#[from] io::Error),
    #[error("send")]
    #[classify(transport, sent = "no")]
    Send(#[source] io::Error),
    #[error("named")]
    #[classify(transport)]
    Named { context: String, source: io::Error },
    #[error("marked")]
    #[classify(transport)]
    Marked {
        attempt: u32,
        #[source]
        inner: io::Error,
    },
    #[error("busy")]
    #[classify(transient)]
    Busy,
    #[error("busy for")]
    #[classify(transient)]
    BusyFor { millis: u64 },
    #[error("garbage")]
    #[classify(broken = "unexpected_data")]
    Garbage(String),
    #[error("shutting down")]
    #[classify(broken = "peer_closed", sent = "no")]
    ShuttingDown,
    #[error("explicit maybe")]
    #[classify(broken = "peer_reset", sent = "maybe")]
    ExplicitMaybe { code: u16 },
    #[error("pool")]
    #[classify(delegate)]
    Pool(Box<steadypool::Error<io::Error>>),
    #[error("refused")]
    #[classify(application)]
    Refused(String),
    #[error("not found")]
    NotFound,
    #[error("other fields")]
    OtherFields { key: String, value: Vec<u8> },
}

#[test]
fn transport_variants_classify_by_their_io_error() {
    assert_eq!(
        Every::Io(io_error(io::ErrorKind::ConnectionReset)).classify(),
        broken(ResetCause::PeerReset, Sent::Maybe)
    );
    assert_eq!(
        Every::Io(io_error(io::ErrorKind::Interrupted)).classify(),
        Disposition::Transient
    );
    assert_eq!(
        Every::Named {
            context: "write".into(),
            source: io_error(io::ErrorKind::BrokenPipe)
        }
        .classify(),
        broken(ResetCause::BrokenPipe, Sent::Maybe)
    );
    assert_eq!(
        Every::Marked {
            attempt: 2,
            inner: io_error(io::ErrorKind::UnexpectedEof)
        }
        .classify(),
        broken(ResetCause::PeerClosed, Sent::Maybe)
    );
}

#[test]
fn transport_with_sent_no_overrides_only_broken_results() {
    assert_eq!(
        Every::Send(io_error(io::ErrorKind::ConnectionReset)).classify(),
        broken(ResetCause::PeerReset, Sent::No)
    );
    assert_eq!(
        Every::Send(io_error(io::ErrorKind::WouldBlock)).classify(),
        Disposition::Transient
    );
}

#[test]
fn fixed_variants_classify_as_declared() {
    assert_eq!(Every::Busy.classify(), Disposition::Transient);
    assert_eq!(
        Every::BusyFor { millis: 5 }.classify(),
        Disposition::Transient
    );
    assert_eq!(
        Every::Garbage("?".into()).classify(),
        broken(ResetCause::UnexpectedData, Sent::Maybe)
    );
    assert_eq!(
        Every::ShuttingDown.classify(),
        broken(ResetCause::PeerClosed, Sent::No)
    );
    assert_eq!(
        Every::ExplicitMaybe { code: 1 }.classify(),
        broken(ResetCause::PeerReset, Sent::Maybe)
    );
    assert_eq!(
        Every::Refused("no".into()).classify(),
        Disposition::Application
    );
    assert_eq!(Every::NotFound.classify(), Disposition::Application);
    assert_eq!(
        Every::OtherFields {
            key: "k".into(),
            value: vec![1]
        }
        .classify(),
        Disposition::Application
    );
}

#[test]
fn delegate_asks_the_wrapped_error() {
    let timed_out =
        steadypool::Error::<io::Error>::ConnectTimeout(std::time::Duration::from_secs(1));
    assert_eq!(
        Every::Pool(Box::new(timed_out)).classify(),
        broken(ResetCause::ConnectTimeout, Sent::No)
    );
    assert_eq!(
        Every::Pool(Box::new(steadypool::Error::Closed)).classify(),
        Disposition::Application
    );
}

/// An error that wraps an I/O error two levels down.
#[derive(Debug)]
struct Driver(Wrapper);
#[derive(Debug)]
struct Wrapper(io::Error);

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("driver")
    }
}
impl fmt::Display for Wrapper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("wrapper")
    }
}
impl std::error::Error for Driver {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}
impl std::error::Error for Wrapper {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no i/o inside")]
struct Opaque;

#[derive(Debug, thiserror::Error, Classify)]
enum Chained {
    #[error("driver")]
    #[classify(transport)]
    Driver(#[from] Driver),
    #[error("opaque")]
    #[classify(transport)]
    Opaque(Opaque),
    #[error("opaque, not sent")]
    #[classify(transport, sent = "no")]
    OpaqueNotSent(Opaque),
}

#[test]
fn transport_walks_the_source_chain_and_defaults_to_other() {
    assert_eq!(
        Chained::Driver(Driver(Wrapper(io_error(io::ErrorKind::ConnectionAborted)))).classify(),
        broken(ResetCause::PeerReset, Sent::Maybe)
    );
    assert_eq!(
        Chained::Opaque(Opaque).classify(),
        broken(ResetCause::Other, Sent::Maybe)
    );
    assert_eq!(
        Chained::OpaqueNotSent(Opaque).classify(),
        broken(ResetCause::Other, Sent::No)
    );
}

#[derive(Debug, thiserror::Error, Classify)]
enum Generic<E: std::error::Error + 'static, C, T> {
    #[error("transport")]
    #[classify(transport)]
    Transport(E),
    #[error("inner")]
    #[classify(delegate)]
    Inner { source: C },
    #[error("payload")]
    Payload(T),
    #[error("lifetime-free unit")]
    #[classify(broken = "ping_failed")]
    PingFailed,
}

#[test]
fn generic_fields_get_the_bounds_they_need() {
    type G = Generic<io::Error, io::Error, Vec<u8>>;
    assert_eq!(
        G::Transport(io_error(io::ErrorKind::ConnectionRefused)).classify(),
        broken(ResetCause::Refused, Sent::No)
    );
    assert_eq!(
        G::Inner {
            source: io_error(io::ErrorKind::TimedOut)
        }
        .classify(),
        broken(ResetCause::UserTimeout, Sent::Maybe)
    );
    assert_eq!(G::Payload(vec![1]).classify(), Disposition::Application);
    assert_eq!(
        G::PingFailed.classify(),
        broken(ResetCause::PingFailed, Sent::Maybe)
    );
}

#[derive(Debug, thiserror::Error, Classify)]
#[error("wrapped: {0}")]
#[classify(transport)]
struct TupleStruct(io::Error);

#[derive(Debug, thiserror::Error, Classify)]
#[error("busy")]
#[classify(transient)]
struct NamedStruct {
    retry_in_ms: u64,
}

#[derive(Debug, thiserror::Error, Classify)]
#[error("plain")]
struct PlainStruct;

#[test]
fn structs_take_the_attribute_on_the_struct() {
    assert_eq!(
        TupleStruct(io_error(io::ErrorKind::ConnectionReset)).classify(),
        broken(ResetCause::PeerReset, Sent::Maybe)
    );
    assert_eq!(
        NamedStruct { retry_in_ms: 1 }.classify(),
        Disposition::Transient
    );
    assert_eq!(PlainStruct.classify(), Disposition::Application);
}

#[derive(Debug, Classify)]
enum Causes {
    #[classify(broken = "refused")]
    Refused,
    #[classify(broken = "connect_timeout")]
    ConnectTimeout,
    #[classify(broken = "peer_reset")]
    PeerReset,
    #[classify(broken = "peer_closed")]
    PeerClosed,
    #[classify(broken = "broken_pipe")]
    BrokenPipe,
    #[classify(broken = "keepalive_timeout")]
    KeepaliveTimeout,
    #[classify(broken = "user_timeout")]
    UserTimeout,
    #[classify(broken = "unexpected_data")]
    UnexpectedData,
    #[classify(broken = "ping_failed")]
    PingFailed,
    #[classify(broken = "other")]
    Other,
}

#[test]
fn every_reset_cause_label_is_accepted_and_means_that_cause() {
    let all = [
        Causes::Refused,
        Causes::ConnectTimeout,
        Causes::PeerReset,
        Causes::PeerClosed,
        Causes::BrokenPipe,
        Causes::KeepaliveTimeout,
        Causes::UserTimeout,
        Causes::UnexpectedData,
        Causes::PingFailed,
        Causes::Other,
    ];
    assert_eq!(all.len(), ResetCause::ALL.len(), "a cause is missing here");
    for (variant, cause) in all.iter().zip(ResetCause::ALL) {
        assert_eq!(
            variant.classify(),
            broken(cause, Sent::Maybe),
            "{variant:?}"
        );
    }
}

#[derive(Debug, Classify)]
enum Empty {}

#[test]
fn an_empty_enum_derives() {
    fn takes(_: &dyn Classify) {}
    let none: Option<&Empty> = None;
    if let Some(empty) = none {
        takes(empty);
    }
}

/// A driver error that knows which of its failures waiting cannot change.
#[derive(Debug, thiserror::Error)]
enum Login {
    #[error("password authentication failed")]
    BadPassword,
    #[error("the server is starting up")]
    StartingUp,
}

impl Classify for Login {
    fn classify(&self) -> Disposition {
        broken(ResetCause::Other, Sent::No)
    }

    fn is_permanent(&self) -> bool {
        matches!(self, Login::BadPassword)
    }
}

#[derive(Debug, thiserror::Error, Classify)]
enum App {
    #[error(transparent)]
    #[classify(delegate)]
    Login(#[from] Login),
    #[error("i/o")]
    #[classify(transport)]
    Io(#[source] io::Error),
    #[error("busy")]
    #[classify(transient)]
    Busy,
    #[error("reset")]
    #[classify(broken = "peer_reset")]
    Reset,
    #[error("no such user")]
    NoSuchUser,
}

#[test]
fn permanence_is_what_the_wrapped_error_says_and_never_otherwise() {
    assert!(App::Login(Login::BadPassword).is_permanent());
    assert!(!App::Login(Login::StartingUp).is_permanent());
    assert!(!App::Io(io_error(io::ErrorKind::ConnectionRefused)).is_permanent());
    assert!(!App::Busy.is_permanent());
    assert!(!App::Reset.is_permanent());
    assert!(!App::NoSuchUser.is_permanent());
}

/// A gateway's error: which transient failures came after the work may have run.
#[derive(Debug, thiserror::Error)]
enum Gateway {
    #[error("502 from the gateway")]
    UpstreamLost,
    #[error("503 from the service")]
    Overloaded,
}

impl Classify for Gateway {
    fn classify(&self) -> Disposition {
        Disposition::Transient
    }

    fn transient_sent(&self) -> Sent {
        match self {
            Gateway::UpstreamLost => Sent::Maybe,
            Gateway::Overloaded => Sent::No,
        }
    }
}

#[derive(Debug, thiserror::Error, Classify)]
enum Caller {
    #[error(transparent)]
    #[classify(delegate)]
    Gateway(#[from] Gateway),
    #[error("busy")]
    #[classify(transient)]
    Busy,
    #[error("i/o")]
    #[classify(transport)]
    Io(#[source] io::Error),
}

#[test]
fn whether_a_transient_failure_may_have_run_is_what_the_wrapped_error_says() {
    assert_eq!(
        Caller::Gateway(Gateway::UpstreamLost).transient_sent(),
        Sent::Maybe
    );
    assert_eq!(
        Caller::Gateway(Gateway::Overloaded).transient_sent(),
        Sent::No
    );
    assert_eq!(Caller::Busy.transient_sent(), Sent::No);
    let io = Caller::Io(io_error(io::ErrorKind::ConnectionReset));
    assert_eq!(io.transient_sent(), Sent::No);
}
