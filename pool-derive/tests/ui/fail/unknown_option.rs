use steadypool::Classify;

#[derive(Debug, Classify)]
enum E {
    #[classify(retryable)]
    Busy,
}

fn main() {}
