use std::io;

use steadypool::{Classify, Disposition, ResetCause, Sent};

#[derive(Debug, thiserror::Error, Classify)]
enum KvError<E: std::error::Error + 'static> {
    #[error("i/o: {0}")]
    #[classify(transport)]
    Io(#[from] io::Error),
    #[error("write failed: {source}")]
    #[classify(transport, sent = "no")]
    Write { source: io::Error, bytes: usize },
    #[error("driver: {0}")]
    #[classify(transport)]
    Driver(E),
    #[error("pool: {0}")]
    #[classify(delegate)]
    Pool(steadypool::Error<io::Error>),
    #[error("loading")]
    #[classify(transient)]
    Loading,
    #[error("overloaded")]
    #[classify(transient, sent = "no")]
    Overloaded,
    #[error("bad gateway")]
    #[classify(transient, sent = "maybe")]
    BadGateway,
    #[error("garbage")]
    #[classify(broken = "unexpected_data")]
    Garbage { bytes: Vec<u8> },
    #[error("going away")]
    #[classify(broken = "peer_closed", sent = "no")]
    GoingAway,
    #[error("denied")]
    #[classify(application)]
    Denied,
    #[error("not found")]
    NotFound(String),
}

fn main() {
    type E = KvError<io::Error>;
    let reset = || io::Error::from(io::ErrorKind::ConnectionReset);
    assert_eq!(
        E::Write {
            source: reset(),
            bytes: 0
        }
        .classify(),
        Disposition::Broken {
            cause: ResetCause::PeerReset,
            sent: Sent::No
        }
    );
    assert!(E::Io(reset()).classify().is_broken());
    assert!(E::Driver(reset()).classify().is_broken());
    assert_eq!(
        E::Pool(steadypool::Error::Closed).classify(),
        Disposition::Application
    );
    assert_eq!(E::Loading.classify(), Disposition::Transient);
    assert_eq!(E::Loading.transient_sent(), Sent::No);
    assert_eq!(E::Overloaded.transient_sent(), Sent::No);
    assert_eq!(E::BadGateway.classify(), Disposition::Transient);
    assert_eq!(E::BadGateway.transient_sent(), Sent::Maybe);
    assert!(E::Garbage { bytes: vec![0] }.classify().is_broken());
    assert!(E::GoingAway.classify().is_broken());
    assert_eq!(E::Denied.classify(), Disposition::Application);
    assert_eq!(E::NotFound("k".into()).classify(), Disposition::Application);
}
