//! The code behind steadypool's runnable examples.
//!
//! * [`demo`]: production's connection resets, scaled down to half a minute, hitting
//!   steadypool and a plain deadpool pool side by side
//!   (`cargo run -p steadypool-examples --example demo`).
//! * [`idle_probe`]: finds the idle timeout of the path to a real server and prints the
//!   pool settings that stay clear of it
//!   (`cargo run -p steadypool-examples --example idle-probe -- HOST:PORT`).
//! * [`kv`]: the demo's embedded key-value server, its protocol and its managers.
//!
//! The examples' `main` functions only parse the command line and print; everything
//! else lives here, where the system tests call it directly.

pub mod console;
pub mod demo;
pub mod idle_probe;
pub mod kv;
pub mod outcome;
pub mod recommend;

/// An error's message followed by its sources' messages, each once.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = inner.source();
    }
    text
}
