//! TLS for the tests: certificates made at test time (rcgen), and an in-process rustls
//! server speaking a line protocol (`PING` → `PONG`) that can do, on command, what
//! real TLS servers do to idle connections: KeyUpdate, close_notify, fatal alerts,
//! application bytes nobody asked for.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use steadypool_tests::tls::{TestCa, TlsServer, TlsServerOptions};
//!
//! let ca = TestCa::new();
//! let server = TlsServer::start(&ca, TlsServerOptions::default()).await;
//! let manager = steadypool::drivers::tls::TlsManager::new(
//!     server.addr(),
//!     ca.client_config(),
//!     "localhost",
//! )
//! .unwrap();
//! # drop(manager);
//! # }
//! ```

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// A certificate authority made for one test, and a server certificate it signed for
/// `localhost` and `127.0.0.1`.
#[derive(Debug, Clone)]
pub struct TestCa {
    ca: CertificateDer<'static>,
    ca_pem: String,
    cert: CertificateDer<'static>,
    cert_pem: String,
    key_der: Vec<u8>,
    key_pem: String,
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCa {
    /// A new authority and server certificate.
    ///
    /// # Panics
    /// When rcgen cannot make them (it always can with valid names).
    pub fn new() -> TestCa {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "steadypool test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &issuer).unwrap();
        TestCa {
            ca_pem: ca.pem(),
            ca: ca.der().clone(),
            cert_pem: cert.pem(),
            cert: cert.der().clone(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client config that trusts this authority only.
    ///
    /// # Panics
    /// Never for a certificate made by [`TestCa::new`].
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        Arc::new(
            ClientConfig::builder_with_provider(ring())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// A server config with the signed certificate, speaking only `versions`.
    ///
    /// # Panics
    /// Never for a certificate made by [`TestCa::new`].
    pub fn server_config(&self, versions: &[&'static SupportedProtocolVersion]) -> ServerConfig {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        ServerConfig::builder_with_provider(ring())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], key)
            .unwrap()
    }

    /// Writes `ca.pem`, `server.pem` and `server.key` (mode 0600, as PostgreSQL
    /// requires) into `dir` for servers that read files.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn write_files(&self, dir: &Path) -> io::Result<TlsFiles> {
        use std::os::unix::fs::PermissionsExt;
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        fs::write(&files.ca, &self.ca_pem)?;
        fs::write(&files.cert, &self.cert_pem)?;
        fs::write(&files.key, &self.key_pem)?;
        fs::set_permissions(&files.key, fs::Permissions::from_mode(0o600))?;
        Ok(files)
    }
}

/// rustls's `ring` provider, named rather than taken from the process default: a
/// build in which some other crate also enables aws-lc has no default.
fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Where [`TestCa::write_files`] put the PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The authority's certificate.
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

/// How a [`TlsServer`] behaves.
#[derive(Debug, Clone)]
pub struct TlsServerOptions {
    /// The protocol versions it speaks (default: TLS 1.3 only).
    pub versions: &'static [&'static SupportedProtocolVersion],
    /// Sends a KeyUpdate after each reply (TLS 1.3).
    pub key_update_after_reply: bool,
    /// Closes a connection idle this long: close_notify, then FIN.
    pub idle_timeout: Option<Duration>,
}

/// TLS 1.3 only.
pub static TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
/// TLS 1.2 only.
pub static TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

impl Default for TlsServerOptions {
    fn default() -> Self {
        TlsServerOptions {
            versions: TLS13,
            key_update_after_reply: false,
            idle_timeout: None,
        }
    }
}

/// What the server does to every open connection, on command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// close_notify, then FIN.
    CloseNotify,
    /// A KeyUpdate (TLS 1.3).
    KeyUpdate,
    /// A fatal alert (`bad_record_mac`, as after a corrupt record), then FIN.
    FatalAlert,
    /// Application bytes nobody asked for.
    Data,
}

/// An in-process rustls server; stops with the test's runtime.
#[derive(Debug)]
pub struct TlsServer {
    addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    peers: Arc<Mutex<Vec<mpsc::UnboundedSender<Act>>>>,
}

impl TlsServer {
    /// Starts a server on a free loopback port.
    ///
    /// # Panics
    /// When it cannot bind.
    pub async fn start(ca: &TestCa, options: TlsServerOptions) -> TlsServer {
        let acceptor = TlsAcceptor::from(Arc::new(ca.server_config(options.versions)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let server = TlsServer {
            addr,
            handshakes: Arc::clone(&handshakes),
            peers: Arc::clone(&peers),
        };
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let handshakes = Arc::clone(&handshakes);
                let peers = Arc::clone(&peers);
                let options = options.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let (tx, rx) = mpsc::unbounded_channel();
                    peers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(tx);
                    serve(stream, rx, &options).await;
                });
            }
        });
        server
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    /// Tells every open connection to do `act`; returns how many were told.
    pub fn act(&self, act: Act) -> usize {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers.retain(|peer| peer.send(act).is_ok());
        peers.len()
    }
}

async fn serve(
    mut stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    mut acts: mpsc::UnboundedReceiver<Act>,
    options: &TlsServerOptions,
) {
    let idle = options.idle_timeout.unwrap_or(Duration::from_secs(3600));
    let mut buf = [0u8; 256];
    let mut pending = 0usize;
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => {
                let Ok(n @ 1..) = read else { return };
                pending += buf[..n].iter().filter(|b| **b == b'\n').count();
                for _ in 0..std::mem::take(&mut pending) {
                    if stream.write_all(b"PONG\n").await.is_err() {
                        return;
                    }
                    if options.key_update_after_reply {
                        if stream.get_mut().1.refresh_traffic_keys().is_err() {
                            return;
                        }
                        if stream.flush().await.is_err() {
                            return;
                        }
                    }
                }
            }
            act = acts.recv() => {
                let Some(act) = act else { return };
                if !perform(&mut stream, act).await {
                    return;
                }
            }
            () = tokio::time::sleep(idle) => {
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// Does `act`; false when the connection is over.
async fn perform(
    stream: &mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    act: Act,
) -> bool {
    match act {
        Act::CloseNotify => {
            let _ = stream.shutdown().await;
            false
        }
        Act::KeyUpdate => {
            stream.get_mut().1.refresh_traffic_keys().is_ok() && stream.flush().await.is_ok()
        }
        Act::FatalAlert => {
            // A record that cannot decrypt, as if it came from the client: rustls
            // answers it with a fatal `bad_record_mac` alert, which the flush sends.
            let mut corrupt: &[u8] = &[
                23, 3, 3, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ];
            let session = stream.get_mut().1;
            let _ = session.read_tls(&mut corrupt);
            let failed = session.process_new_packets().is_err();
            assert!(failed, "a corrupt record was accepted");
            let mut alert = Vec::new();
            let _ = session.write_tls(&mut alert);
            let tcp = stream.get_mut().0;
            let _ = tcp.write_all(&alert).await;
            let _ = tcp.shutdown().await;
            false
        }
        Act::Data => stream.write_all(b"NOTICE\n").await.is_ok(),
    }
}
