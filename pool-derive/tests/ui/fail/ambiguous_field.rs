use steadypool::Classify;

#[derive(Debug, Classify)]
enum E {
    #[classify(transport)]
    Two(std::io::Error, std::io::Error),
    Field(#[classify(transport)] std::io::Error),
}

fn main() {}
