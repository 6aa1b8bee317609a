//! The workload's protocol: an echo server answers every byte with itself.
//!
//! A request is 16 bytes carrying its id; its reply must be the same 16 bytes, so a
//! reply that belongs to another request (a desynchronised connection) is caught. A
//! ping is one byte and its echo: the cheapest round trip a pool can make on checkout.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes in a request, and in its reply.
pub const REQUEST_LEN: usize = 16;

/// The bytes of request `id`: the id, then its complement.
///
/// ```
/// let bytes = steadypool_benches::wire::request_bytes(7);
/// assert_eq!(&bytes[..8], &7u64.to_be_bytes());
/// ```
pub fn request_bytes(id: u64) -> [u8; REQUEST_LEN] {
    let mut bytes = [0u8; REQUEST_LEN];
    bytes[..8].copy_from_slice(&id.to_be_bytes());
    bytes[8..].copy_from_slice(&(!id).to_be_bytes());
    bytes
}

fn check_reply(sent: &[u8; REQUEST_LEN], reply: &[u8; REQUEST_LEN]) -> io::Result<()> {
    if sent == reply {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the reply does not match the request",
        ))
    }
}

/// Sends request `id` and reads its echo.
///
/// # Errors
/// The stream's error, `UnexpectedEof` when the peer closed, `InvalidData` when the
/// reply is not the request's.
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    id: u64,
) -> io::Result<()> {
    let request = request_bytes(id);
    stream.write_all(&request).await?;
    let mut reply = [0u8; REQUEST_LEN];
    stream.read_exact(&mut reply).await?;
    check_reply(&request, &reply)
}

/// [`echo`] on a blocking stream.
///
/// # Errors
/// As [`echo`].
pub fn echo_blocking(stream: &mut std::net::TcpStream, id: u64) -> io::Result<()> {
    let request = request_bytes(id);
    stream.write_all(&request)?;
    let mut reply = [0u8; REQUEST_LEN];
    stream.read_exact(&mut reply)?;
    check_reply(&request, &reply)
}

/// A one-byte round trip.
///
/// # Errors
/// The stream's error, or `UnexpectedEof` when the peer closed.
pub async fn ping<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(stream: &mut S) -> io::Result<()> {
    stream.write_all(b"p").await?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply).await?;
    Ok(())
}

/// [`ping`] on a blocking stream.
///
/// # Errors
/// As [`ping`].
pub fn ping_blocking(stream: &mut std::net::TcpStream) -> io::Result<()> {
    stream.write_all(b"p")?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply)?;
    Ok(())
}

/// Whether an idle stream still looks alive to the kernel: a non-blocking one-byte
/// `peek` finds nothing to read. End of stream, a reset, or bytes nobody asked for
/// all mean the connection must not be reused.
pub fn peek_alive(stream: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match SockRef::from(stream).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Err(err) => err.kind() == io::ErrorKind::WouldBlock,
        Ok(_) => false,
    }
}
