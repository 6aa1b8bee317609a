//! The `steadypool` command-line tool (`steadypool demo`, `steadypool idle-probe`), run
//! as its users run it: built once per test binary with cargo (feature `cli`), started
//! as a process, its summary read from standard output.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use steadypool_tests::tool;
//!
//! let run = tool::run(&["demo", "--duration", "2s", "--quiet", "--json"]).await;
//! assert_eq!(run.code, Some(0), "{run}");
//! assert_eq!(run.json()["pools"][0]["failures"], 0);
//! # }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;

/// The built binary, or why it could not be built.
static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The tool's executable, built by `cargo build -p steadypool --features cli --bin
/// steadypool` the first time it is asked for (cargo does nothing when it is up to
/// date).
///
/// # Panics
/// When cargo cannot build it: a test of the tool cannot run without it.
pub fn binary() -> &'static Path {
    match BINARY.get_or_init(build) {
        Ok(path) => path,
        Err(why) => panic!("could not build the steadypool tool: {why}"),
    }
}

fn build() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let output = std::process::Command::new(&cargo)
        .args(["build", "--quiet", "-p", "steadypool", "--features", "cli"])
        .args(["--bin", "steadypool", "--message-format", "json"])
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(Stdio::piped())
        .output()
        .map_err(|err| format!("{}: {err}", cargo.to_string_lossy()))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    // cargo names the executable it built in its `compiler-artifact` message.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "steadypool")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo reported no executable".to_owned())
}

/// A finished run of the tool.
#[derive(Debug)]
pub struct Run {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// Standard output: the summary.
    pub stdout: String,
    /// Standard error: progress and errors.
    pub stderr: String,
}

impl Run {
    fn from_output(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Standard output as the JSON document `--json` prints.
    ///
    /// # Panics
    /// When standard output is not one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("the summary is not JSON ({err}):\n{self}"))
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A command line for the tool, not yet started.
///
/// # Panics
/// When the tool cannot be built.
pub fn command(args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs the tool with `args` (the subcommand first) to its end.
///
/// # Panics
/// When the tool cannot be built or started.
pub async fn run(args: &[&str]) -> Run {
    let output = command(args)
        .output()
        .await
        .unwrap_or_else(|err| panic!("could not start {}: {err}", binary().display()));
    Run::from_output(output)
}

/// Waits for a tool started with [`command`] to end.
///
/// # Panics
/// When its output cannot be read.
pub async fn finish(child: tokio::process::Child) -> Run {
    let output = child
        .wait_with_output()
        .await
        .unwrap_or_else(|err| panic!("could not read the tool's output: {err}"));
    Run::from_output(output)
}
