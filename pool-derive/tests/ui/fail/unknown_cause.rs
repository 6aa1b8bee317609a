use steadypool::Classify;

#[derive(Debug, Classify)]
enum E {
    #[classify(broken = "reset")]
    Reset,
    #[classify(broken = "conection_refused")]
    Refused,
}

fn main() {}
