//! Ready-made managers.
//!
//! | driver | connection | feature |
//! |---|---|---|
//! | [`tcp`] | a raw [`tokio::net::TcpStream`] with the pool's socket options | always |

pub mod tcp;
