//! The forms an operation is written in, each compiled and run against a real server:
//! the one-line async closure with `?` on the driver's error, a closure spawned on
//! the runtime, one that owns its data and replays it on a retry without cloning, a
//! named `async fn`, and an operation returning the caller's own error type (both
//! the driver's errors and the application's own come back in that type).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use steadypool::{AttemptError, Classify, Error, GiveUp, Idempotency, Pool, RunError};
use steadypool_tests::line_manager::{LineConnection, LineManager, request};
use steadypool_tests::servers::LineServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

async fn pool() -> (LineServer, Pool<LineManager>) {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .build()
        .unwrap();
    (server, pool)
}

/// The common call: no boxing, no cloning, `?` on the manager's own error, and the
/// error type inferred without a single annotation.
#[tokio::test]
async fn the_one_line_form_infers_the_managers_error() {
    let (_server, pool) = pool().await;
    let reply = pool
        .run_idempotent(async |conn| {
            conn.write_all(b"PING\n").await?;
            let mut line = String::new();
            conn.read_line(&mut line).await?;
            Ok(line)
        })
        .await;
    let reply: Result<String, RunError<io::Error>> = reply;
    assert_eq!(reply.unwrap(), "PONG\n");

    let key = String::from("greeting");
    let set = pool
        .run(async |conn| request(conn, &format!("SET {key} hello")).await)
        .await
        .unwrap();
    assert_eq!(set, "OK");
    let got = pool
        .run_with(Idempotency::Idempotent, async |conn| {
            request(conn, &format!("GET {key}")).await
        })
        .await
        .unwrap();
    assert_eq!(got, "VALUE hello");
}

/// `run` is `Send` when the operation's future is: it can be spawned as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_can_be_spawned() {
    let (_server, pool) = pool().await;
    let pool = Arc::new(pool);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let writer = Arc::clone(&pool);
        // What the task uses goes into the closure (`async move`); every attempt
        // borrows it from there.
        let line = format!("SET k{i} v{i}");
        tasks.push(tokio::spawn(async move {
            writer
                .run(async move |conn| request(conn, &line).await)
                .await
        }));
        let reader = Arc::clone(&pool);
        tasks.push(tokio::spawn(async move {
            reader
                .run_idempotent(async |conn| {
                    conn.write_all(b"PING\n").await?;
                    let mut line = String::new();
                    conn.read_line(&mut line).await?;
                    Ok(line.trim_end().to_owned())
                })
                .await
        }));
    }
    for task in tasks {
        let reply = task.await.unwrap().unwrap();
        assert!(reply == "OK" || reply == "PONG", "{reply}");
    }
}

/// A retry calls the same closure again: what it borrows is still there (no clone
/// per attempt), and what it changed stays changed.
#[tokio::test]
async fn a_retry_calls_the_same_closure_with_what_it_borrows() {
    let (_server, pool) = pool().await;
    let line = String::from("SET borrowed yes");
    let mut attempts = 0;
    let reply = pool
        .run_idempotent(async |conn| {
            attempts += 1;
            if attempts == 1 {
                // As if the connection broke mid-request: retried on another one.
                return Err(io::ErrorKind::ConnectionReset.into());
            }
            request(conn, &line).await
        })
        .await
        .unwrap();
    assert_eq!(reply, "OK");
    assert_eq!(attempts, 2);
    assert_eq!(line, "SET borrowed yes", "borrowed, not moved");
}

async fn ping(conn: &mut LineConnection) -> io::Result<String> {
    request(conn, "PING").await
}

/// An `async fn` taking the connection is an operation, passed by name.
#[tokio::test]
async fn a_named_async_fn_is_an_operation() {
    let (_server, pool) = pool().await;
    assert_eq!(pool.run_idempotent(ping).await.unwrap(), "PONG");
}

/// The application's error, with `?` on the driver's errors through `From`.
#[derive(Debug, thiserror::Error, Classify)]
enum AppError {
    #[error(transparent)]
    #[classify(delegate)]
    Io(#[from] io::Error),
    #[error("no such key: {0}")]
    NotFound(String),
}

async fn lookup(pool: &Pool<LineManager>, key: &str) -> Result<String, RunError<AppError>> {
    pool.run_with_error(
        Idempotency::Idempotent,
        async |conn| -> Result<_, AppError> {
            let reply = request(conn, &format!("GET {key}")).await?;
            match reply.strip_prefix("VALUE ") {
                Some(value) => Ok(value.to_owned()),
                None => Err(AppError::NotFound(key.to_owned())),
            }
        },
    )
    .await
}

/// The operation's own error type comes back in `RunError`: a domain error as
/// `Operation`, a broken connection classified through it, a failed connect
/// converted into it.
#[tokio::test]
async fn an_operation_returns_the_callers_error_type() {
    let (server, pool) = pool().await;
    pool.run(async |conn| request(conn, "SET present here").await)
        .await
        .unwrap();
    assert_eq!(lookup(&pool, "present").await.unwrap(), "here");
    let missing = lookup(&pool, "absent").await.unwrap_err();
    assert!(
        matches!(&missing, RunError::Operation(AppError::NotFound(key)) if key == "absent"),
        "{missing:?}"
    );

    // A broken connection in the application's type is classified through it: the
    // non-idempotent write is not replayed, and says so.
    let ran = AtomicUsize::new(0);
    let err = pool
        .run_with_error(
            Idempotency::NotIdempotent,
            async |_conn| -> Result<(), AppError> {
                ran.fetch_add(1, Ordering::SeqCst);
                Err(io::Error::from(io::ErrorKind::ConnectionReset).into())
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RunError::MaybeExecuted {
                reason: GiveUp::NotIdempotent,
                source: Some(AttemptError::Operation(AppError::Io(_))),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 1);

    // A connect that fails carries the manager's error converted into the
    // application's.
    let addr = server.addr();
    drop(server);
    pool.close();
    let unreachable = Pool::builder(LineManager::new(addr))
        .retry_policy(steadypool::RetryPolicy::default().max_attempts(1))
        .build()
        .unwrap();
    let err = lookup(&unreachable, "any").await.unwrap_err();
    assert!(
        matches!(
            err,
            RunError::NotExecuted {
                source: Some(AttemptError::Checkout(Error::Connect {
                    source: AppError::Io(_),
                    ..
                })),
                ..
            }
        ),
        "{err:?}"
    );
}
