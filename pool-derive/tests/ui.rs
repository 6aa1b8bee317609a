//! Compile-time checks of `#[derive(Classify)]`: forms that must compile (and run), and
//! mistakes that must fail with a message saying what to write instead.

#[test]
fn derive_classify() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
