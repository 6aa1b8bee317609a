use steadypool::Classify;

#[derive(Debug, Classify)]
enum E {
    #[classify(broken = "peer_reset")]
    #[classify(sent = "no")]
    Reset,
    #[classify(transient, transport)]
    Busy(std::io::Error),
}

fn main() {}
