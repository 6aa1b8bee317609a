//! Raw TCP: a [`TcpStream`] with the pool's socket options, for protocols you speak
//! yourself.
//!
//! The pool probes each idle stream for free and discards those the peer closed or
//! reset. There is no ping (the protocol is yours); wrap the stream in your own
//! [`Manager`] when your protocol has one.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use steadypool::{drivers::tcp::TcpManager, Pool};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let pool = Pool::builder(TcpManager::new("127.0.0.1:7000")).build()?;
//! let mut stream = pool.get().await?;
//! stream.write_all(b"hello\n").await?;
//! let mut reply = [0u8; 6];
//! stream.read_exact(&mut reply).await?;
//! # Ok(()) }
//! ```

use std::io;

use tokio::net::TcpStream;

use crate::dial::{Address, Dialer};
use crate::manager::Manager;
use crate::probe::SocketRef;

/// Opens plain TCP connections to one address.
#[derive(Debug, Clone)]
pub struct TcpManager {
    addr: Address,
}

impl TcpManager {
    /// A manager for `addr` (`"host:port"` or a [`std::net::SocketAddr`]).
    pub fn new(addr: impl Into<Address>) -> Self {
        TcpManager { addr: addr.into() }
    }

    /// The address connections go to.
    pub fn address(&self) -> &Address {
        &self.addr
    }
}

impl Manager for TcpManager {
    type Connection = TcpStream;
    type Error = io::Error;

    async fn connect(&self, dialer: &Dialer) -> io::Result<TcpStream> {
        Ok(dialer.connect(&self.addr).await?)
    }

    fn socket<'a>(&self, conn: &'a TcpStream) -> Option<SocketRef<'a>> {
        Some(SocketRef::Tokio(conn))
    }

    fn target(&self) -> Option<String> {
        Some(self.addr.to_string())
    }
}
