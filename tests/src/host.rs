//! What this machine offers the system tests: programs, root, scratch directories,
//! free ports, and the rule for tests it cannot run.
//!
//! A test that needs something the machine lacks calls [`skip`] and returns: locally
//! that prints `SKIPPED: <reason>` on stderr; under CI (the `CI` environment variable
//! is set) it fails the test, since CI installs everything.
//!
//! ```no_run
//! use steadypool_tests::host;
//!
//! let Some(ip) = host::program("ip") else {
//!     host::skip("the ip program is not installed (package iproute2)");
//!     return;
//! };
//! # drop(ip);
//! ```

use std::env;
use std::fs;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where system administration programs live when they are not on a user's `PATH`.
const SBIN: [&str; 3] = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

/// Reports that this test cannot run here, and why. Under CI it panics instead: CI
/// provides everything, so a skip there is a failure.
///
/// # Panics
/// When the `CI` environment variable is set.
pub fn skip(reason: &str) {
    assert!(
        env::var_os("CI").is_none(),
        "CI is set, so this test must run, but: {reason}"
    );
    // Straight to the process's stderr: the test harness captures `eprintln!` of
    // passing tests, and a skip must be seen.
    let _ = writeln!(io::stderr(), "SKIPPED: {reason}");
}

/// The path of `name` on `PATH` (or in the `sbin` directories), if it is installed.
pub fn program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// Whether this process runs as root (the owner of `/proc/self` is its effective user).
pub fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The user and group ids of the account `name`, from `/etc/passwd`.
pub fn account(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// A loopback port nobody listens on right now. Another process could take it before
/// the caller binds it; fixtures retry with a new one when that happens.
///
/// # Errors
/// When no socket can be bound at all.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether something listens at `addr`: a connect within 200 ms that reached another
/// socket ([`is_self_connect`]).
pub fn listening_at(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        .is_ok_and(|stream| !is_self_connect(&stream))
}

/// Whether `stream` is connected to itself.
///
/// A connect to a loopback port in the ephemeral range that nothing listens on can be
/// given that same port as its source port, and then connects to itself (a
/// simultaneous open). Taken for a server's answer, it would call a server ready
/// before it listens, and the test's first connects would be refused.
pub fn is_self_connect(stream: &TcpStream) -> bool {
    matches!((stream.local_addr(), stream.peer_addr()), (Ok(local), Ok(peer)) if local == peer)
}

/// A new, empty directory under the system's temporary directory, named after `what`,
/// this process and a counter. The caller removes it.
///
/// # Errors
/// When the directory cannot be created.
pub fn scratch_dir(what: &str) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = env::temp_dir().join(format!(
        "steadypool-{what}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&dir)?;
    Ok(dir)
}

/// Polls `done` every 20 ms, blocking, until it holds or `within` passes; returns
/// whether it held.
pub fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` is gone (a zombie counts as gone: it holds no sockets).
pub fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_gone() {
        assert!(!process_gone(std::process::id()));
        assert!(process_gone(u32::MAX));
    }

    #[test]
    fn finds_sh_and_root_account() {
        assert!(program("sh").is_some());
        assert!(program("no-such-program-steadypool").is_none());
        assert_eq!(account("root"), Some((0, 0)));
    }

    /// A socket bound to a port and connected to that same port connects to itself,
    /// as a connect to an unserved ephemeral port can by chance.
    #[test]
    fn a_self_connect_is_not_a_listener() {
        use socket2::{Domain, Socket, Type};

        let addr: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, free_port().unwrap()).into();
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.bind(&addr.into()).unwrap();
        socket.connect(&addr.into()).unwrap();
        assert!(is_self_connect(&TcpStream::from(socket)));

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let served = listener.local_addr().unwrap();
        assert!(!is_self_connect(&TcpStream::connect(served).unwrap()));
        assert!(listening_at(served));
        drop(listener);
        assert!(!listening_at(served));
    }

    #[test]
    fn scratch_dirs_are_fresh() {
        let a = scratch_dir("t").unwrap();
        let b = scratch_dir("t").unwrap();
        assert_ne!(a, b);
        fs::remove_dir(a).unwrap();
        fs::remove_dir(b).unwrap();
    }
}
