//! The idle probe's command line, its checked configuration, and its errors.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use steadypool::human_duration as human;

use crate::console::{Verbosity, parse_duration};

/// What the target speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ProbeProtocol {
    /// Nothing is sent; connections are checked with TCP keepalive probes.
    Tcp,
    /// Redis: checked with `PING`.
    Redis,
    /// PostgreSQL: checked with an empty query.
    Postgres,
    /// HTTP/1.1: checked with a `GET` (any 2xx answer passes); the server's
    /// `Keep-Alive: timeout=N` is read first and verified.
    Http,
}

impl fmt::Display for ProbeProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeProtocol::Tcp => "tcp",
            ProbeProtocol::Redis => "redis",
            ProbeProtocol::Postgres => "postgres",
            ProbeProtocol::Http => "http",
        })
    }
}

/// Everything a probe needs. [`ProbeArgs`] builds one from the command line.
#[derive(Debug, Clone)]
pub(crate) struct ProbeConfig {
    /// `host:port`.
    pub(crate) target: String,
    /// What it speaks.
    pub(crate) protocol: ProbeProtocol,
    /// The longest the whole probe may take. Default 60 s.
    pub(crate) max_time: Duration,
    /// How long a check's round trip may take before the connection counts as
    /// silently dropped; also how long a TCP connect, and then a handshake, may take.
    /// Default 2 s.
    pub(crate) rtt_timeout: Duration,
    /// Connection settings for `postgres` besides host and port (libpq style).
    /// Default `user=postgres dbname=postgres`.
    pub(crate) postgres_options: String,
    /// The path `http` checks `GET`. Default `/`.
    pub(crate) http_path: String,
    /// What to print while running. Default [`Verbosity::Auto`].
    pub(crate) verbosity: Verbosity,
}

/// The idle probe's command line.
#[derive(Debug, clap::Args)]
pub(crate) struct ProbeArgs {
    /// The server, as HOST:PORT (or http://HOST:PORT, which implies --protocol http).
    #[arg(value_name = "HOST:PORT")]
    pub(crate) target: String,
    /// What the server speaks (tcp sends nothing and checks with keepalive probes;
    /// http reads the Keep-Alive timeout the server announces, then verifies it).
    #[arg(long, value_enum, default_value_t = ProbeProtocol::Tcp)]
    pub(crate) protocol: ProbeProtocol,
    /// The longest the probe may take in all (e.g. 30s, 5min); limits longer than
    /// about this cannot be found.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) max_time: Duration,
    /// How long a check's round trip may take before the connection counts as
    /// silently dropped (also the limit for connecting, and for the handshake).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) rtt_timeout: Duration,
    /// PostgreSQL connection settings besides host and port.
    #[arg(long, default_value = "user=postgres dbname=postgres")]
    pub(crate) postgres_options: String,
    /// The path an HTTP check GETs (any 2xx answer passes).
    #[arg(long, default_value = "/")]
    pub(crate) http_path: String,
    /// Print a JSON summary on standard output instead of the text.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print nothing while running.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

impl ProbeArgs {
    /// Checks the values and turns them into a [`ProbeConfig`].
    ///
    /// # Errors
    /// [`ProbeError::Config`] saying which value is wrong.
    pub(crate) fn config(&self) -> Result<ProbeConfig, ProbeError> {
        let (target, protocol) = if let Some(rest) = self.target.strip_prefix("http://") {
            (rest.trim_end_matches('/'), ProbeProtocol::Http)
        } else if self.target.starts_with("https://") {
            return Err(ProbeError::Config(format!(
                "{:?}: the probe speaks plain HTTP; give an http:// address (or probe the \
                 port with --protocol tcp)",
                self.target
            )));
        } else {
            (self.target.as_str(), self.protocol)
        };
        if !target.contains(':') || target.contains('/') {
            return Err(ProbeError::Config(format!(
                "{:?} needs a port and no path: write HOST:PORT (http://HOST:PORT for HTTP)",
                self.target
            )));
        }
        if self.max_time < Duration::from_secs(2) {
            return Err(ProbeError::Config(format!(
                "--max-time {} is too short: the shortest limit it finds is 1 s, so allow 2s or more",
                human(self.max_time)
            )));
        }
        Ok(ProbeConfig {
            target: target.to_owned(),
            protocol,
            max_time: self.max_time,
            rtt_timeout: self.rtt_timeout,
            postgres_options: self.postgres_options.clone(),
            http_path: self.http_path.clone(),
            verbosity: if self.quiet {
                Verbosity::Quiet
            } else {
                Verbosity::Auto
            },
        })
    }
}

/// Why the probe could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ProbeError {
    /// A flag's value is wrong.
    #[error("{0}")]
    Config(String),
    /// No connection could be opened.
    #[error("could not reach {target}: {reason}")]
    Unreachable {
        /// The target.
        target: String,
        /// Why.
        reason: String,
    },
    /// A connection opened, but the server did not answer in the protocol.
    #[error("{target} does not answer as {protocol}: {reason}")]
    NotSpeaking {
        /// The target.
        target: String,
        /// The protocol tried.
        protocol: ProbeProtocol,
        /// What happened instead.
        reason: String,
    },
}

impl ProbeError {
    /// The process exit code: 2 for bad flags, 1 otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            ProbeError::Config(_) => 2,
            _ => 1,
        }
    }
}

impl crate::outcome::Failure for ProbeError {
    fn exit_code(&self) -> u8 {
        ProbeError::exit_code(self)
    }
}
