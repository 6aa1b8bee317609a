use steadypool::Classify;

#[derive(Debug, Classify)]
enum E {
    #[classify(sent = "no")]
    Alone,
    #[classify(application, sent = "no")]
    OnApplication,
    #[classify(broken = "peer_reset", sent = "never")]
    BadValue,
}

fn main() {}
