//! The demo's command line, its checked configuration, and its errors.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use steadypool::chaos::ChaosError;
use steadypool::human_duration as human;

use super::Protocol;
use crate::console::{Verbosity, parse_duration};
use crate::recommend::ClosedBy;

/// Which faults the proxies inject, and the workload's idle gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FaultSet {
    /// The load balancer's idle timeout, and how it closes.
    pub(crate) idle: Option<ClosedBy>,
    /// Resets mid-request.
    pub(crate) resets: bool,
    /// Upstream crashes.
    pub(crate) crash: bool,
    /// Idle gaps in the workload.
    pub(crate) gaps: bool,
    /// Added latency.
    pub(crate) latency: bool,
}

impl FaultSet {
    /// No faults, no gaps.
    pub(crate) const NONE: FaultSet = FaultSet {
        idle: None,
        resets: false,
        crash: false,
        gaps: false,
        latency: false,
    };

    /// Whether any fault needs a chaos proxy in the path.
    pub(crate) fn needs_proxy(&self) -> bool {
        self.idle.is_some() || self.resets || self.crash || self.latency
    }

    pub(super) fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        match self.idle {
            Some(ClosedBy::Fin) => names.push("idle-fin"),
            Some(_) => names.push("idle"),
            None => {}
        }
        for (on, name) in [
            (self.resets, "resets"),
            (self.crash, "crash"),
            (self.gaps, "gaps"),
            (self.latency, "latency"),
        ] {
            if on {
                names.push(name);
            }
        }
        names
    }
}

impl Default for FaultSet {
    /// `idle,resets,crash,gaps`: production, scaled down.
    fn default() -> Self {
        FaultSet {
            idle: Some(ClosedBy::Rst),
            resets: true,
            crash: true,
            gaps: true,
            latency: false,
        }
    }
}

impl FaultSet {
    /// `gaps,latency`: the default over HTTP. The server's own keep-alive close is
    /// the fault; the latency widens the moment in which a request and the
    /// server's close cross.
    pub(crate) const HTTP: FaultSet = FaultSet {
        gaps: true,
        latency: true,
        ..FaultSet::NONE
    };
}

impl FromStr for FaultSet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut set = FaultSet::NONE;
        for name in text.split(',').map(str::trim) {
            match name {
                "idle" => set.idle = Some(ClosedBy::Rst),
                "idle-fin" => set.idle = Some(ClosedBy::Fin),
                "resets" => set.resets = true,
                "crash" => set.crash = true,
                "gaps" => set.gaps = true,
                "latency" => set.latency = true,
                "all" => {
                    set = FaultSet {
                        latency: true,
                        ..FaultSet::default()
                    }
                }
                "none" => {}
                other => {
                    return Err(format!(
                        "unknown fault {other:?}: choose from idle, idle-fin, resets, crash, \
                         gaps, latency, all, none (comma separated)"
                    ));
                }
            }
        }
        Ok(set)
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.names();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// Where the demo's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The embedded key-value server.
    Embedded,
    /// A Node.js `http.createServer` the demo starts (`--protocol http`).
    Node,
    /// A server you run, at `host:port`.
    Remote {
        /// `host:port`.
        addr: String,
        /// What it speaks.
        protocol: Protocol,
    },
}

/// Everything a run needs. [`DemoArgs`] builds one from the command line.
#[derive(Debug, Clone)]
pub(crate) struct DemoConfig {
    /// How long the workload runs. Default 30 s.
    pub(crate) duration: Duration,
    /// Workers per pool, and each pool's `max_size`. Default 8; over HTTP 32, each
    /// with a client of its own.
    pub(crate) concurrency: usize,
    /// Which faults. Default [`FaultSet::default`]; over HTTP [`FaultSet::HTTP`].
    pub(crate) faults: FaultSet,
    /// The seed of the workload and of both proxies. Default 7.
    pub(crate) seed: u64,
    /// Where requests go. Default [`Target::Embedded`].
    pub(crate) target: Target,
    /// The load balancer's idle timeout. Default 2 s.
    pub(crate) lb_idle_timeout: Duration,
    /// The share of requests reset mid-request. Default 0.01.
    pub(crate) reset_rate: f64,
    /// The time between upstream crashes. Default 10 s.
    pub(crate) crash_every: Duration,
    /// What to print while running. Default [`Verbosity::Auto`].
    pub(crate) verbosity: Verbosity,
}

/// The demo's command line.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How long to run the workload (e.g. 5s, 30s, 2min).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Workers per pool (and each pool's max_size) [default: 8; with --protocol
    /// http: 32, each with a client of its own on each side].
    #[arg(long)]
    pub(crate) concurrency: Option<usize>,
    /// Faults to inject, comma separated: idle (load balancer idle timeout, RST),
    /// idle-fin (the same with FIN), resets (mid-request), crash (upstream), gaps
    /// (idle gaps in the workload; over HTTP, pauses around the server's keep-alive
    /// close), latency; or all, none [default: idle,resets,crash,gaps; with
    /// --protocol http: gaps,latency].
    #[arg(long)]
    pub(crate) faults: Option<FaultSet>,
    /// Seed for the workload and the faults.
    #[arg(long, default_value_t = 7)]
    pub(crate) seed: u64,
    /// Print a JSON summary on standard output instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Run against your own server at HOST:PORT (http://HOST:PORT for HTTP) instead
    /// of the embedded one (the chaos proxies still sit in between, unless --faults
    /// none).
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) target: Option<String>,
    /// What to speak: kv (the demo's key-value protocol), redis (needs --target), or
    /// http (against a Node.js server the demo starts, or --target).
    #[arg(long, value_enum, default_value_t = Protocol::Kv)]
    pub(crate) protocol: Protocol,
    /// The load balancer's idle timeout.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) lb_idle_timeout: Duration,
    /// The share of requests reset mid-request (0 to 0.5).
    #[arg(long, default_value_t = 0.01)]
    pub(crate) reset_rate: f64,
    /// The time between upstream crashes.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) crash_every: Duration,
    /// Print nothing while running.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

impl DemoArgs {
    /// Checks the values and turns them into a [`DemoConfig`].
    ///
    /// # Errors
    /// [`DemoError::Config`] saying which value is wrong and what is allowed.
    pub(crate) fn config(&self) -> Result<DemoConfig, DemoError> {
        let (target, protocol) = match self.target.as_deref() {
            Some(url) if url.starts_with("https://") => {
                return Err(DemoError::Config(format!(
                    "--target {url}: the demo speaks plain HTTP; give an http:// address"
                )));
            }
            Some(url) if url.starts_with("http://") => (
                Some(url.trim_start_matches("http://").trim_end_matches('/')),
                Protocol::Http,
            ),
            other => (other, self.protocol),
        };
        let http = protocol == Protocol::Http;
        let concurrency = self.concurrency.unwrap_or(if http { 32 } else { 8 });
        if !(1..=256).contains(&concurrency) {
            return Err(DemoError::Config(format!(
                "--concurrency {concurrency} is out of range: use 1 to 256"
            )));
        }
        if !(0.0..=0.5).contains(&self.reset_rate) {
            return Err(DemoError::Config(format!(
                "--reset-rate {} is out of range: use 0 to 0.5 (0.01 is 1 % of requests)",
                self.reset_rate
            )));
        }
        if self.lb_idle_timeout < Duration::from_secs(1) {
            return Err(DemoError::Config(format!(
                "--lb-idle-timeout {} is too short: use 1s or more (idle times under 1 s teach \
                 steadypool nothing about a path)",
                human(self.lb_idle_timeout)
            )));
        }
        let target = match (target, protocol) {
            (Some(addr), protocol) => {
                if !addr.contains(':') || addr.contains('/') {
                    return Err(DemoError::Config(format!(
                        "--target {addr:?} needs a port and no path: write HOST:PORT \
                         (http://HOST:PORT for HTTP)"
                    )));
                }
                Target::Remote {
                    addr: addr.to_owned(),
                    protocol,
                }
            }
            (None, Protocol::Kv) => Target::Embedded,
            (None, Protocol::Http) => Target::Node,
            (None, protocol) => {
                return Err(DemoError::Config(format!(
                    "--protocol {protocol} needs --target HOST:PORT: the embedded server speaks \
                     the demo's key-value protocol"
                )));
            }
        };
        Ok(DemoConfig {
            duration: self.duration,
            concurrency,
            faults: self.faults.unwrap_or(if http {
                FaultSet::HTTP
            } else {
                FaultSet::default()
            }),
            seed: self.seed,
            target,
            lb_idle_timeout: self.lb_idle_timeout,
            reset_rate: self.reset_rate,
            crash_every: self.crash_every,
            verbosity: if self.quiet {
                Verbosity::Quiet
            } else {
                Verbosity::Auto
            },
        })
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum DemoError {
    /// A flag's value is out of range or inconsistent.
    #[error("{0}")]
    Config(String),
    /// The embedded server could not listen.
    #[error("could not start the embedded key-value server: {0}")]
    Server(#[source] std::io::Error),
    /// A chaos proxy could not start.
    #[error("could not start the chaos proxy: {0}")]
    Proxy(#[from] ChaosError),
    /// The `--target` is unreachable or does not speak the protocol.
    #[error("--target {addr} ({protocol}): {reason}")]
    Target {
        /// The target.
        addr: String,
        /// The protocol it was expected to speak.
        protocol: Protocol,
        /// What went wrong.
        reason: String,
    },
    /// A pool could not be built.
    #[error("could not set up the pools: {0}")]
    Setup(String),
    /// The Node.js server of `--protocol http` could not start.
    #[error("{0}")]
    Node(String),
}

impl DemoError {
    /// The process exit code for this error: 2 for bad flags, 1 otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            DemoError::Config(_) => 2,
            _ => 1,
        }
    }
}

impl crate::outcome::Failure for DemoError {
    fn exit_code(&self) -> u8 {
        DemoError::exit_code(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(target: Option<&str>, protocol: Protocol) -> DemoArgs {
        DemoArgs {
            duration: Duration::from_secs(30),
            concurrency: None,
            faults: None,
            seed: 7,
            json: false,
            target: target.map(str::to_owned),
            protocol,
            lb_idle_timeout: Duration::from_secs(2),
            reset_rate: 0.01,
            crash_every: Duration::from_secs(10),
            quiet: true,
        }
    }

    #[test]
    fn http_runs_against_node_or_an_http_target_with_defaults_of_its_own() {
        let node = args(None, Protocol::Http).config().unwrap();
        assert_eq!(node.target, Target::Node);
        assert_eq!((node.concurrency, node.faults), (32, FaultSet::HTTP));
        let remote = args(Some("http://127.0.0.1:3000/"), Protocol::Kv)
            .config()
            .unwrap();
        assert_eq!(
            remote.target,
            Target::Remote {
                addr: "127.0.0.1:3000".to_owned(),
                protocol: Protocol::Http
            }
        );
        let kv = args(None, Protocol::Kv).config().unwrap();
        assert_eq!(kv.target, Target::Embedded);
        assert_eq!((kv.concurrency, kv.faults), (8, FaultSet::default()));
        let https = args(Some("https://127.0.0.1:3000"), Protocol::Http).config();
        assert!(https.unwrap_err().to_string().contains("http://"));
    }

    #[test]
    fn fault_sets_read_and_print_as_their_flag() {
        let faults: FaultSet = "idle-fin,crash".parse().unwrap();
        assert!(faults.crash && !faults.resets && !faults.gaps);
        assert_eq!(faults.to_string(), "idle-fin,crash");
        assert!(
            "idle,flood"
                .parse::<FaultSet>()
                .unwrap_err()
                .contains("flood")
        );
        assert_eq!(
            "all".parse::<FaultSet>().unwrap().to_string(),
            "idle,resets,crash,gaps,latency"
        );
    }
}
