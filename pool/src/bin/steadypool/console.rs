//! What the tool prints while it runs, on standard error: live bars on a
//! terminal, plain lines elsewhere (CI logs, pipes), nothing when quiet.
//!
//! Standard output is left to the final result, so `--json` output stays clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How much to print while running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verbosity {
    /// Live bars when standard error is a terminal, plain event lines otherwise.
    Auto,
    /// Nothing at all (`--quiet`).
    Quiet,
}

/// The running example's side channel: events, and live status lines.
#[derive(Debug)]
pub(crate) struct Console {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Live(MultiProgress),
    Lines,
    Quiet,
}

impl Console {
    pub(crate) fn new(verbosity: Verbosity) -> Console {
        let mode = match verbosity {
            Verbosity::Quiet => Mode::Quiet,
            Verbosity::Auto if std::io::stderr().is_terminal() => {
                Mode::Live(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
            }
            Verbosity::Auto => Mode::Lines,
        };
        Console { mode }
    }

    /// Whether live bars are drawn (a terminal); plain lines are printed otherwise.
    pub(crate) fn is_live(&self) -> bool {
        matches!(self.mode, Mode::Live(_))
    }

    /// Prints one line: above the bars on a terminal, as a plain line elsewhere.
    pub(crate) fn line(&self, text: impl AsRef<str>) {
        match &self.mode {
            Mode::Live(multi) => {
                // A terminal that went away is no reason to stop the run.
                let _ = multi.println(text);
            }
            Mode::Lines => eprintln!("{}", text.as_ref()),
            Mode::Quiet => {}
        }
    }

    /// A bar counting to `len`, drawn only on a terminal.
    pub(crate) fn bar(&self, len: u64, template: &str) -> ProgressBar {
        match &self.mode {
            Mode::Live(multi) => {
                let style = ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                multi.add(ProgressBar::new(len).with_style(style))
            }
            Mode::Lines | Mode::Quiet => ProgressBar::hidden(),
        }
    }

    /// A text line that is redrawn in place, drawn only on a terminal.
    pub(crate) fn status_line(&self) -> ProgressBar {
        match &self.mode {
            Mode::Live(multi) => {
                let style = ProgressStyle::with_template("{msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                multi.add(ProgressBar::new_spinner().with_style(style))
            }
            Mode::Lines | Mode::Quiet => ProgressBar::hidden(),
        }
    }

    /// Removes every bar from the screen.
    pub(crate) fn clear(&self) {
        if let Mode::Live(multi) = &self.mode {
            let _ = multi.clear();
        }
    }
}

/// Parses a duration flag: `500ms`, `5s`, `2min`, `1h`.
///
/// # Errors
/// A message saying what was wrong and what to write.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}: write a duration such as 500ms, 5s or 2min"))?;
    if parsed.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_the_way_people_write_them() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("five").unwrap_err().contains("5s"));
    }
}
