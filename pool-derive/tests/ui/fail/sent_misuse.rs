use steadypool::Classify;

#[derive(Debug, Classify)]
enum E {
    #[classify(sent = "no")]
    Alone,
    #[classify(transient, sent = "no")]
    OnTransient,
    #[classify(broken = "peer_reset", sent = "never")]
    BadValue,
}

fn main() {}
