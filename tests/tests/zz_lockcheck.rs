//! temporary
#[test]
fn nested_cargo() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "steadypool-examples", "--example", "demo"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    eprintln!("status {:?} stderr {}", out.status, String::from_utf8_lossy(&out.stderr));
}
