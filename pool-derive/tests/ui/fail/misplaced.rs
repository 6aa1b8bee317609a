use steadypool::Classify;

#[derive(Debug, Classify)]
#[classify(transient)]
enum E {
    Busy,
}

#[derive(Classify)]
union U {
    a: u32,
}

fn main() {}
