//! The kernel's view of this process's TCP sockets, read from `/proc`.
//!
//! A pool's counters can claim a connection was closed while its socket lingers in
//! `CLOSE_WAIT`; these helpers ask the kernel instead. `/proc/net/tcp` and
//! `/proc/net/tcp6` list every socket of the network namespace; the ones this process
//! holds are those whose inode appears among `/proc/self/fd`.
//!
//! ```no_run
//! use steadypool::TcpState;
//! use steadypool_tests::sockets;
//!
//! let lingering = sockets::to_port(6379)?
//!     .into_iter()
//!     .filter(|s| s.state == TcpState::CloseWait)
//!     .count();
//! assert_eq!(lingering, 0);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::HashSet;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use steadypool::TcpState;

/// One TCP socket this process holds, as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSocket {
    /// This end.
    pub local: SocketAddr,
    /// The other end (unspecified for a listener).
    pub remote: SocketAddr,
    /// The TCP state.
    pub state: TcpState,
}

/// Every TCP socket this process holds an open descriptor for.
///
/// # Errors
/// When `/proc` cannot be read (not Linux, or no procfs).
pub fn of_this_process() -> io::Result<Vec<KernelSocket>> {
    let ours = socket_inodes()?;
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match fs::read_to_string(table) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in text.lines().skip(1) {
            if let Some((inode, socket)) = parse_line(line)
                && ours.contains(&inode)
            {
                found.push(socket);
            }
        }
    }
    Ok(found)
}

/// This process's sockets connected to `port` on the other end (a pool's connections
/// to a server on `port`).
///
/// # Errors
/// When `/proc` cannot be read.
pub fn to_port(port: u16) -> io::Result<Vec<KernelSocket>> {
    Ok(of_this_process()?
        .into_iter()
        .filter(|s| s.remote.port() == port)
        .collect())
}

/// How many of this process's sockets to `port` are in `state`.
///
/// # Errors
/// When `/proc` cannot be read.
pub fn count_in_state(port: u16, state: TcpState) -> io::Result<usize> {
    Ok(to_port(port)?.iter().filter(|s| s.state == state).count())
}

/// Waits until none of this process's sockets to `port` is in `CLOSE_WAIT`, for at
/// most `within`, and says how long that took.
///
/// # Panics
/// When some stayed in `CLOSE_WAIT` for `within` (the message lists every socket to
/// `port`), or when `/proc` cannot be read.
pub async fn assert_close_wait_cleared(port: u16, within: std::time::Duration) {
    let started = std::time::Instant::now();
    let lingering = || match count_in_state(port, TcpState::CloseWait) {
        Ok(n) => n,
        Err(e) => panic!("cannot read this process's sockets from /proc: {e}"),
    };
    if crate::eventually(within, || lingering() == 0).await {
        eprintln!(
            "no socket in CLOSE_WAIT to port {port} after {:?}",
            started.elapsed()
        );
    } else {
        let left = to_port(port).unwrap_or_default();
        panic!("sockets left in CLOSE_WAIT: {left:?}");
    }
}

fn socket_inodes() -> io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in fs::read_dir("/proc/self/fd")? {
        // Descriptors close while we list them: skip the ones that vanished.
        let Ok(target) = fs::read_link(entry?.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`
fn parse_line(line: &str) -> Option<(u64, KernelSocket)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = parse_addr(fields.get(1)?)?;
    let remote = parse_addr(fields.get(2)?)?;
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    Some((
        inode,
        KernelSocket {
            local,
            remote,
            state: tcp_state(state),
        },
    ))
}

/// The numbering of `include/net/tcp_states.h`, as `TCP_INFO` reports it too.
fn tcp_state(number: u8) -> TcpState {
    match number {
        1 => TcpState::Established,
        7 => TcpState::Closed,
        8 => TcpState::CloseWait,
        other => TcpState::Other(other),
    }
}

/// `0100007F:1F90` is 127.0.0.1:8080: the address is the kernel's in-memory words
/// printed in hex (so native-endian), the port is in host order.
fn parse_addr(field: &str) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut octets = [0u8; 16];
            for i in 0..4 {
                octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_proc_net_tcp_line() {
        let line = "   1: 0100007F:1F90 0100007F:D431 08 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 20 4 30 10 -1";
        let (inode, socket) = parse_line(line).unwrap();
        assert_eq!(inode, 123_456);
        assert_eq!(socket.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(socket.remote, "127.0.0.1:54321".parse().unwrap());
        assert_eq!(socket.state, TcpState::CloseWait);
    }

    #[test]
    fn parses_an_ipv6_loopback_address() {
        let addr = parse_addr("00000000000000000000000001000000:0050").unwrap();
        assert_eq!(addr, "[::1]:80".parse().unwrap());
    }

    #[test]
    fn finds_a_socket_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let to = to_port(port).unwrap();
        assert_eq!(to.len(), 1);
        assert_eq!(to[0].state, TcpState::Established);
    }
}
