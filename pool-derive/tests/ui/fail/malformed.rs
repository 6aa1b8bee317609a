use steadypool::Classify;

#[derive(Debug, Classify)]
enum E {
    #[classify]
    Bare,
    #[classify(broken)]
    NoCause,
    #[classify(transient = "yes")]
    Valued,
}

fn main() {}
