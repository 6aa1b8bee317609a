//! Ready-made managers.
//!
//! | driver | connection | socket probe | ping | feature |
//! |---|---|---|---|---|
//! | [`tcp`] | a raw [`tokio::net::TcpStream`] with the pool's socket options | free (tokio readiness) | none | always |
//! | [`postgres`] | a `tokio_postgres::Client` on the pool's socket, TCP or Unix-domain | one `peek` on a duplicated descriptor | empty query | `postgres` |
//! | [`redis`] | a `redis::aio::MultiplexedConnection` on the pool's socket, TCP or Unix-domain | one `peek` on a duplicated descriptor | `PING` | `redis` |
//! | [`tls`] | a [`tls::TlsStream`] (rustls) on the pool's socket; [`tls::PgTls`] for `postgres`, `RedisManager::with_tls` for `redis` | free (tokio readiness); rustls reads what arrived | none | `tls` |
//! | [`http`] | a hyper HTTP/1.1 sender on the pool's socket (`https://` over rustls with `tls`), and [`http::HttpClient`] on top | one `peek` on a duplicated descriptor | `GET` of a health path, when one is set | `http` |
//! | [`deadpool`] | whatever an existing `deadpool::managed::Manager` makes | none (the socket is out of reach) | the manager's `recycle` | always |

pub mod deadpool;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod tcp;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
#[cfg(any(feature = "postgres", feature = "redis", feature = "http"))]
mod watch;

/// Borrows a duplicated socket the way the probe takes it, for drivers whose
/// background task owns the original.
#[cfg(all(unix, any(feature = "postgres", feature = "redis", feature = "http")))]
fn borrow_raw(socket: &socket2::Socket) -> crate::probe::RawSocket<'_> {
    std::os::fd::AsFd::as_fd(socket)
}

#[cfg(all(
    windows,
    any(feature = "postgres", feature = "redis", feature = "http")
))]
fn borrow_raw(socket: &socket2::Socket) -> crate::probe::RawSocket<'_> {
    std::os::windows::io::AsSocket::as_socket(socket)
}
