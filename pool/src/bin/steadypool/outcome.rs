//! How a run of the tool ends: its summary on standard output, as text or as one JSON
//! document (`--json`), or its error on standard error; and the process's exit code.

use std::fmt::Display;
use std::process::ExitCode;

/// A finished run's summary.
pub(crate) trait Summary {
    /// The summary as one JSON document.
    ///
    /// # Errors
    /// When serialization fails.
    fn to_json(&self) -> Result<String, serde_json::Error>;

    /// The summary for a person to read.
    fn text(&self) -> String;
}

/// An error that ends a run.
pub(crate) trait Failure: Display {
    /// The process exit code: 2 for bad flags, 1 otherwise.
    fn exit_code(&self) -> u8;
}

/// Prints `outcome` and returns the exit code to end the process with.
pub(crate) fn finish<S: Summary, F: Failure>(outcome: Result<S, F>, json: bool) -> ExitCode {
    match outcome {
        Ok(summary) if json => match summary.to_json() {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: could not write the summary: {err}");
                ExitCode::FAILURE
            }
        },
        Ok(summary) => {
            print!("{}", summary.text());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Done;
    impl Summary for Done {
        fn to_json(&self) -> Result<String, serde_json::Error> {
            Ok("{}".into())
        }
        fn text(&self) -> String {
            "done\n".into()
        }
    }

    struct BadFlag;
    impl Display for BadFlag {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bad flag")
        }
    }
    impl Failure for BadFlag {
        fn exit_code(&self) -> u8 {
            2
        }
    }

    #[test]
    fn the_exit_code_says_how_the_run_ended() {
        assert_eq!(finish(Ok::<_, BadFlag>(Done), false), ExitCode::SUCCESS);
        assert_eq!(finish(Ok::<_, BadFlag>(Done), true), ExitCode::SUCCESS);
        assert_eq!(finish(Err::<Done, _>(BadFlag), false), ExitCode::from(2));
    }
}
