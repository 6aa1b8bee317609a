//! The idle probe.
fn main() {}
