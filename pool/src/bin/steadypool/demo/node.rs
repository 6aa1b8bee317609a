//! The Node.js server `demo --protocol http` runs when it has no `--target`: an
//! `http.createServer` with a short `keepAliveTimeout`, the server behind the
//! keep-alive race most reported against Rust HTTP clients.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

use super::DemoError;

/// The server's `keepAliveTimeout`: short, so a short run crosses it many times.
/// Node announces it as `Keep-Alive: timeout=1` and closes idle connections a
/// second after it.
pub(crate) const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long Node may take to print its port.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers every request with `ok` once its body was read; prints its port; exits
/// when its standard input closes, so it never outlives the demo, however the demo
/// ends.
const SCRIPT: &str = r"'use strict';
const http = require('http');
const server = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => res.end('ok'));
});
server.keepAliveTimeout = Number(process.argv[2]);
server.listen(0, '127.0.0.1', () => console.log(server.address().port));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
";

/// A running Node.js server; stopped when dropped.
#[derive(Debug)]
pub(crate) struct NodeServer {
    child: Child,
    dir: PathBuf,
    addr: String,
}

impl NodeServer {
    /// Writes the script to a directory of its own and starts `node` on it.
    ///
    /// # Errors
    /// [`DemoError::Node`] when `node` (or `nodejs`) is not on the `PATH`, with how
    /// to install it or to run against a server of one's own; or when it did not
    /// start.
    pub(crate) async fn start() -> Result<NodeServer, DemoError> {
        let bin = ["node", "nodejs"]
            .iter()
            .find_map(|name| find_program(name))
            .ok_or_else(|| {
                DemoError::Node(
                    "Node.js is not installed (neither `node` nor `nodejs` is on the PATH): \
                     install it (Debian and Ubuntu: `apt-get install nodejs`; elsewhere see \
                     https://nodejs.org), or run the demo against an HTTP server of yours with \
                     --target http://HOST:PORT"
                        .to_owned(),
                )
            })?;
        let dir = std::env::temp_dir().join(format!("steadypool-demo-node-{}", std::process::id()));
        let fail = |what: &str, err: std::io::Error| {
            DemoError::Node(format!("{what} {}: {err}", dir.display()))
        };
        std::fs::create_dir_all(&dir).map_err(|e| fail("could not create", e))?;
        let script = dir.join("server.js");
        std::fs::write(&script, SCRIPT).map_err(|e| fail("could not write the script in", e))?;
        let mut child = Command::new(&bin)
            .arg(&script)
            .arg(KEEP_ALIVE_TIMEOUT.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| DemoError::Node(format!("could not run {}: {e}", bin.display())))?;
        let port = match child.stdout.take() {
            Some(stdout) => {
                let mut lines = BufReader::new(stdout).lines();
                tokio::time::timeout(START_TIMEOUT, lines.next_line()).await
            }
            None => Ok(Ok(None)),
        };
        let port = match port {
            Ok(Ok(Some(line))) => line.trim().parse::<u16>().ok(),
            _ => None,
        };
        let mut server = NodeServer {
            child,
            dir,
            addr: String::new(),
        };
        match port {
            Some(port) => {
                server.addr = format!("127.0.0.1:{port}");
                Ok(server)
            }
            None => Err(DemoError::Node(format!(
                "{} did not start: {}",
                bin.display(),
                server.stderr().await
            ))),
        }
    }

    /// `127.0.0.1:PORT`.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// What Node printed on standard error, after it exited or was stopped.
    async fn stderr(mut self) -> String {
        let _ = self.child.start_kill();
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = tokio::time::timeout(START_TIMEOUT, stderr.read_to_string(&mut text)).await;
        }
        if text.trim().is_empty() {
            "it printed no port".to_owned()
        } else {
            text.trim().to_owned()
        }
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        // Ending the process is best effort: its closed standard input ends it too.
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}
