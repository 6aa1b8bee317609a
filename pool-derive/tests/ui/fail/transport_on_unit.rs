use steadypool::Classify;

#[derive(Debug, Classify)]
enum E {
    #[classify(transport)]
    Disconnected,
}

fn main() {}
