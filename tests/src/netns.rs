//! Running one test inside a private network namespace, where it may add firewall
//! rules and kill sockets without touching the host.
//!
//! [`isolate`] re-runs the test binary under `unshare --net`, selecting only the
//! calling test, with an environment variable naming it. In that re-run `isolate`
//! returns a [`Namespace`] and the test body runs: its servers and pools live on the
//! namespace's own loopback interface, and its `iptables` rules and `ss -K` kills
//! see nothing else. In the original process `isolate` waits for the re-run, passes
//! its output on, fails if it failed, and returns `None`, so the body does not run
//! twice. Creating a namespace and changing its firewall needs root, `unshare`, `ip`,
//! `iptables` and `ss`; without them the test is skipped (see
//! [`host::skip`]).
//!
//! The test must be a plain `#[test]` (the body builds its own runtime), and pass its
//! own name as the test harness lists it.
//!
//! ```no_run
//! use steadypool_tests::netns;
//!
//! #[test]
//! fn black_hole() {
//!     let Some(ns) = netns::isolate("black_hole") else { return };
//!     let port = 5432;
//!     ns.black_hole(port);
//!     // ... a pool to 127.0.0.1:5432 now sees its packets vanish ...
//! }
//! ```

use std::env;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::host;

/// The environment variable that marks the re-run inside the namespace; its value is
/// the name of the test to run there.
pub const INSIDE: &str = "STEADYPOOL_NETNS_TEST";
/// The environment variable that carries the original process's network namespace
/// into the re-run, which checks it is somewhere else before touching any rule.
const OUTSIDE_NAMESPACE: &str = "STEADYPOOL_NETNS_OUTSIDE";
/// The longest the re-run may take before it is killed and the test fails.
const RERUN_LIMIT: Duration = Duration::from_secs(300);
/// This process's network namespace, as a link naming it (`net:[inode]`).
const OWN_NAMESPACE: &str = "/proc/self/ns/net";

/// The runtime a namespaced test runs on: a test that re-runs itself under
/// `unshare` is a plain `#[test]` (the re-run must start before any runtime does),
/// so it builds its own.
pub fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => panic!("cannot start a tokio runtime: {err}"),
    }
}

/// Runs the calling test, named `test`, in a private network namespace. See the
/// [module docs](self).
///
/// Returns the [`Namespace`] inside the re-run, and `None` in the original process
/// (after the re-run passed) or when the test is skipped here.
///
/// # Panics
/// In the original process, when the re-run fails or does not run the test; in the
/// re-run, when the namespace is not private after all or its loopback interface
/// cannot be brought up.
pub fn isolate(test: &str) -> Option<Namespace> {
    if env::var(INSIDE).is_ok_and(|name| name == test) {
        return Some(Namespace::enter());
    }
    if !host::is_root() {
        host::skip("needs root to create a network namespace and change its firewall");
        return None;
    }
    for (program, package) in [
        ("unshare", "util-linux"),
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("ss", "iproute2"),
    ] {
        if host::program(program).is_none() {
            host::skip(&format!("{program} not found: install package {package}"));
            return None;
        }
    }
    rerun(test);
    None
}

/// Runs the test binary again under `unshare --net` with only `test` selected.
fn rerun(test: &str) {
    let outside = match fs::read_link(OWN_NAMESPACE) {
        Ok(link) => link,
        Err(e) => panic!("cannot read this process's network namespace: {e}"),
    };
    let exe = match env::current_exe() {
        Ok(exe) => exe,
        Err(e) => panic!("cannot find the test binary to re-run: {e}"),
    };
    let scratch = match host::scratch_dir("netns") {
        Ok(dir) => dir,
        Err(e) => panic!("cannot create a scratch directory: {e}"),
    };
    let output_path = scratch.join("output");
    let output = match fs::File::create(&output_path).and_then(|f| Ok((f.try_clone()?, f))) {
        Ok(files) => files,
        Err(e) => panic!("cannot create {}: {e}", output_path.display()),
    };
    let spawned = Command::new("unshare")
        .args(["--net", "--"])
        .arg(&exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, test)
        .env(OUTSIDE_NAMESPACE, &outside)
        .stdin(Stdio::null())
        .stdout(output.0)
        .stderr(output.1)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => panic!("cannot run unshare: {e}"),
    };
    let finished = host::wait_until(RERUN_LIMIT, || !matches!(child.try_wait(), Ok(None)));
    if !finished {
        let _ = child.kill();
    }
    let status = child.wait();
    let text = read_and_remove(&output_path, &scratch);
    eprintln!("--- inside the network namespace ---\n{text}--- end ---");
    assert!(
        finished,
        "{test} ran longer than {RERUN_LIMIT:?} in its namespace"
    );
    match status {
        Ok(status) => assert!(
            status.success(),
            "{test} failed inside its network namespace ({status})"
        ),
        Err(e) => panic!("lost the re-run of {test}: {e}"),
    }
    assert!(
        text.contains("1 passed"),
        "the re-run did not run {test}: is that the test's exact name?"
    );
}

fn read_and_remove(path: &Path, dir: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let _ = fs::remove_dir_all(dir);
    text
}

/// Proof that this process runs in a private network namespace, and the tools to
/// break its network. Only [`isolate`] makes one, and only inside the namespace.
#[derive(Debug)]
pub struct Namespace {
    _private: (),
}

impl Namespace {
    fn enter() -> Namespace {
        let own = fs::read_link(OWN_NAMESPACE);
        let outside = env::var_os(OUTSIDE_NAMESPACE);
        match (own, outside) {
            (Ok(own), Some(outside)) => assert_ne!(
                own.as_os_str(),
                outside,
                "refusing to touch the firewall: this process shares its parent's network namespace"
            ),
            (own, outside) => panic!(
                "cannot tell whether this network namespace is private ({own:?}, {outside:?}): refusing to touch the firewall"
            ),
        }
        let namespace = Namespace { _private: () };
        namespace.run("ip", &["link", "set", "lo", "up"]);
        namespace
    }

    /// Runs `iptables -w` with `args` in this namespace.
    ///
    /// # Panics
    /// When iptables fails.
    pub fn iptables(&self, args: &[&str]) {
        let mut all = vec!["-w"];
        all.extend_from_slice(args);
        self.run("iptables", &all);
    }

    /// Drops every packet to and from `port`, both directions: a black hole (a
    /// firewall or NAT that silently forgot the flow). Connects hang and data goes
    /// unacknowledged, so only keepalive and `TCP_USER_TIMEOUT` find out.
    pub fn black_hole(&self, port: u16) {
        let port = port.to_string();
        self.iptables(&["-I", "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"]);
        self.iptables(&["-I", "INPUT", "-p", "tcp", "--sport", &port, "-j", "DROP"]);
    }

    /// Answers every packet to `port` with a TCP reset (a middlebox rejecting the
    /// flow); it fires when the next packet, data or keepalive probe, arrives.
    pub fn reject_with_reset(&self, port: u16) {
        let port = port.to_string();
        self.iptables(&[
            "-I",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ]);
    }

    /// Removes every rule added so far.
    pub fn clear_rules(&self) {
        self.iptables(&["-F", "INPUT"]);
    }

    /// Destroys the server side of every established connection on local port `port`
    /// (`ss -K`): the kernel resets each, so its client's next read gets
    /// `ECONNRESET`, at once and deterministically.
    pub fn kill_server_sockets(&self, port: u16) {
        let filter = format!("( sport = :{port} )");
        self.run("ss", &["-K", "-t", "state", "established", &filter]);
    }

    fn run(&self, program: &str, args: &[&str]) {
        let Some(path) = host::program(program) else {
            panic!("{program} not found inside the namespace");
        };
        match Command::new(path).args(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "{program} {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("cannot run {program}: {e}"),
        }
    }
}
