//! The examples that check what they show, run as their readers run them (`cargo run
//! -p steadypool-examples --example NAME`): each exits with an error when what it
//! demonstrates does not hold.

use std::path::Path;
use std::process::Command;

/// Runs example `name` to its end; its standard output.
fn run_example(name: &str) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let output = Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "-p",
            "steadypool-examples",
            "--example",
            name,
        ])
        .arg("--manifest-path")
        .arg(manifest)
        .output()
        .unwrap_or_else(|err| panic!("could not run cargo: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "example {name} failed ({}):\n--- stdout\n{stdout}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_http_example_closes_before_the_server_and_retries_only_what_it_may() {
    let stdout = run_example("http");
    assert!(
        stdout.contains("Keep-Alive: Some(\"timeout=1\")"),
        "{stdout}"
    );
    assert!(stdout.contains("on connection number 2"), "{stdout}");
    assert!(stdout.contains("POST /flaky  -> not replayed"), "{stdout}");
    assert!(stdout.contains("The pool's stats:"), "{stdout}");
}
