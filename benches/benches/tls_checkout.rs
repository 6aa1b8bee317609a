//! What steadypool's checkout of an idle TLS connection costs over bare deadpool
//! holding the same TLS connections.
//!
//! Both pools hold TLS 1.3 sessions (rustls, ring) to an in-process server that
//! completes the handshake, sends its session tickets and then holds the connection,
//! silent. steadypool runs `drivers::tls::TlsManager` with its defaults (probe on
//! every checkout, reaper running) except `check_after`, raised so that no ping
//! happens; deadpool's `recycle` does nothing. Before measuring, every connection is
//! checked out once after the tickets arrived, so steadypool's probe has drained them
//! (deadpool leaves them unread in the socket: they cost it nothing until the next
//! read). The figure is wall time per checkout, `tasks` tasks sharing the pool.
//!
//! ```text
//! cargo bench -p steadypool-benches --bench tls_checkout
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use deadpool::managed::{Metrics, RecycleResult};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use steadypool::Pool;
use steadypool::drivers::tls::{TlsManager, rustls};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const SIZE: usize = 8;
const TASKS: [usize; 2] = [1, 16];

/// deadpool with nothing added: connect and handshake, and a recycle that does
/// nothing.
struct BareTlsManager {
    addr: SocketAddr,
    connector: TlsConnector,
}

impl deadpool::managed::Manager for BareTlsManager {
    type Type = tokio_rustls::client::TlsStream<TcpStream>;
    type Error = io::Error;

    async fn create(&self) -> io::Result<Self::Type> {
        let tcp = TcpStream::connect(self.addr).await?;
        let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
        self.connector.connect(name, tcp).await
    }

    async fn recycle(&self, _: &mut Self::Type, _: &Metrics) -> RecycleResult<io::Error> {
        Ok(())
    }
}

type BarePool = deadpool::managed::Pool<BareTlsManager>;

/// A TLS 1.3 server that completes each handshake and holds the session, silent;
/// and a client config that trusts it.
async fn holding_server() -> (SocketAddr, Arc<rustls::ClientConfig>) {
    let key = KeyPair::generate().expect("a key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("certificate parameters")
        .self_signed(&key)
        .expect("a certificate");
    // The provider named, not the process default: a build where another crate also
    // enables aws-lc has none.
    let ring = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).expect("a root");
    let client = rustls::ClientConfig::builder_with_provider(ring.clone())
        .with_safe_default_protocol_versions()
        .expect("ring's protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server = rustls::ServerConfig::builder_with_provider(ring)
        .with_safe_default_protocol_versions()
        .expect("ring's protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("a server config");
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("listener address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(session) = acceptor.accept(tcp).await {
                    std::future::pending::<()>().await;
                    drop(session);
                }
            });
        }
    });
    (addr, Arc::new(client))
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Opens `SIZE` connections, lets the tickets arrive, and checks every connection
/// out once more, so that all sit idle with nothing unread by the pool.
async fn fill<T, E: std::fmt::Debug, F: Future<Output = Result<T, E>>>(get: impl Fn() -> F) {
    for _ in 0..2 {
        let mut held = Vec::with_capacity(SIZE);
        for _ in 0..SIZE {
            held.push(get().await.expect("open a pooled connection"));
        }
        drop(held);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `tasks` tasks share `iters` checkouts; returns the time for `iters` of them.
async fn run<T, F: Future<Output = T> + Send>(
    get: impl Fn() -> F + Clone + Send + 'static,
    tasks: usize,
    iters: u64,
) -> Duration {
    let per_task = iters.div_ceil(tasks as u64);
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..tasks {
        let get = get.clone();
        set.spawn(async move {
            for _ in 0..per_task {
                drop(get().await);
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.expect("a benchmark task panicked");
    }
    started
        .elapsed()
        .mul_f64(iters as f64 / (per_task * tasks as u64) as f64)
}

fn tls_checkout(c: &mut Criterion) {
    let rt = runtime();
    let (addr, client) = rt.block_on(holding_server());
    let steady = rt.block_on(async {
        let manager = TlsManager::new(addr, Arc::clone(&client), "localhost").expect("a manager");
        let pool = Pool::builder(manager)
            .name("bench-tls")
            .max_size(SIZE)
            .check_after(Duration::from_secs(3600))
            .build()
            .expect("build the steadypool pool");
        fill(|| pool.get()).await;
        assert_eq!(
            pool.stats().closed(),
            0,
            "a healthy TLS connection was discarded"
        );
        pool
    });
    let bare = rt.block_on(async {
        let manager = BareTlsManager {
            addr,
            connector: TlsConnector::from(Arc::clone(&client)),
        };
        let pool = BarePool::builder(manager)
            .max_size(SIZE)
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .expect("build the deadpool pool");
        fill(|| pool.get()).await;
        pool
    });
    let mut group = c.benchmark_group("tls_checkout");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for tasks in TASKS {
        let id = format!("pool{SIZE}-tasks{tasks}");
        group.bench_with_input(BenchmarkId::new("steadypool", &id), &tasks, |b, &tasks| {
            b.to_async(&rt).iter_custom(|iters| {
                let pool = steady.clone();
                run(
                    move || {
                        let pool = pool.clone();
                        async move { pool.get().await.expect("steadypool checkout") }
                    },
                    tasks,
                    iters,
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("deadpool", &id), &tasks, |b, &tasks| {
            b.to_async(&rt).iter_custom(|iters| {
                let pool = bare.clone();
                run(
                    move || {
                        let pool = pool.clone();
                        async move { pool.get().await.expect("deadpool checkout") }
                    },
                    tasks,
                    iters,
                )
            })
        });
    }
    group.finish();
    assert_eq!(
        steady.stats().closed(),
        0,
        "a healthy TLS connection was discarded"
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    tls_checkout(&mut criterion);
    criterion.final_summary();
}
