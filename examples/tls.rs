//! A TLS pool end to end: an in-process TLS 1.3 server (certificate made at start),
//! `TlsManager` in front of it, and what the pool does with what TLS sends on an idle
//! connection.
//!
//! 1. A new connection is returned unused: the server's two session tickets reach it
//!    while it sits in the pool. rustls reads them at the next checkout's probe, and
//!    the connection is reused, not discarded as stray data.
//! 2. The server closes connections idle for a second (close_notify, then FIN): the
//!    pool counts a `peer_closed` (found by its reaper, or at checkout), opens a new
//!    connection, and from then on evicts its own connections before the server's
//!    limit.
//!
//! ```text
//! cargo run -p steadypool-examples --example tls
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use steadypool::drivers::tls::{TlsManager, TlsStream, rustls};
use steadypool::{Phase, Pool, ResetCause};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How long the server lets a connection sit idle before it closes it.
const SERVER_IDLE: Duration = Duration::from_secs(1);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (addr, client_config) = start_server().await?;
    let manager = TlsManager::new(addr, client_config, "localhost")?;
    let pool = Pool::builder(manager)
        .name("tls-example")
        .max_size(1)
        .build()?;

    // 1. Session tickets on an idle connection.
    let conn = pool.get().await?;
    drop(conn);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut conn = pool.get().await?;
    let version = conn.session().protocol_version();
    ping(&mut conn).await?;
    drop(conn);
    let stats = pool.stats();
    println!(
        "{version:?}: tickets read while idle; connections opened {}, discarded {}",
        stats.opened,
        stats.closed()
    );

    // 2. The server's idle timeout: close_notify, then FIN.
    tokio::time::sleep(SERVER_IDLE + Duration::from_millis(500)).await;
    let mut conn = pool.get().await?;
    ping(&mut conn).await?;
    drop(conn);
    let stats = pool.stats();
    // Found by the reaper (every second) or, if it had not looked yet, at checkout.
    println!(
        "after {:?} idle: peer_closed {} (by the reaper {}), connections opened {}",
        SERVER_IDLE + Duration::from_millis(500),
        stats.resets(ResetCause::PeerClosed, Phase::Idle)
            + stats.resets(ResetCause::PeerClosed, Phase::Checkout),
        stats.resets(ResetCause::PeerClosed, Phase::Idle),
        stats.opened
    );
    let limit = pool.idle_limit();
    println!(
        "learned: the server closes connections idle at most {:?}; the pool now evicts after {:?}",
        limit.upper, limit.evict_after
    );
    Ok(())
}

/// One request: `PING`, answered by `PONG`.
async fn ping(conn: &mut TlsStream) -> anyhow::Result<()> {
    conn.write_all(b"PING\n").await?;
    let mut reply = [0u8; 5];
    conn.read_exact(&mut reply).await?;
    anyhow::ensure!(&reply == b"PONG\n", "unexpected reply {reply:?}");
    Ok(())
}

/// Starts the server on a free loopback port; returns its address and a client config
/// that trusts its self-signed certificate.
async fn start_server() -> anyhow::Result<(SocketAddr, Arc<rustls::ClientConfig>)> {
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_owned()])?.self_signed(&key)?;
    // The provider named, not the process default: a build where another crate also
    // enables aws-lc has none.
    let ring = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone())?;
    let client = rustls::ClientConfig::builder_with_provider(ring.clone())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server = rustls::ServerConfig::builder_with_provider(ring)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .context("the server's certificate")?;
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = [0u8; 5];
                loop {
                    match tokio::time::timeout(SERVER_IDLE, stream.read_exact(&mut request)).await {
                        Ok(Ok(_)) if &request == b"PING\n" => {
                            if stream.write_all(b"PONG\n").await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => return,
                        // Idle too long: close_notify, then FIN.
                        Err(_) => {
                            let _ = stream.shutdown().await;
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok((addr, Arc::new(client)))
}
