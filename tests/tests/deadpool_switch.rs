//! The README's switch of a deadpool-postgres service to steadypool, against a real
//! PostgreSQL: the service's code is the same before and after but for the pool's
//! type and builder, `?` works on `tokio_postgres::Error` inside a `run` operation, and
//! a checkout passes for a `&tokio_postgres::Client` as deadpool's did. Without root or
//! the PostgreSQL programs these tests say SKIPPED.

use std::error::Error;
use std::ops::Deref;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use steadypool::RunError;
use steadypool::drivers::deadpool::DeadpoolError;
use steadypool_tests::postgres::PgServer;
use tokio_postgres::NoTls;

type BoxError = Box<dyn Error + Send + Sync>;

fn manager(server: &PgServer) -> Manager {
    Manager::from_config(
        server.config(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    )
}

/// The service before the switch, on deadpool-postgres.
mod before {
    use super::BoxError;
    use deadpool_postgres::{Manager, Pool};

    pub(crate) fn pool(manager: Manager) -> Result<Pool, BoxError> {
        Ok(Pool::builder(manager).max_size(16).build()?)
    }

    pub(crate) async fn user_count(pool: &Pool) -> Result<i64, BoxError> {
        let client = pool.get().await?;
        let stmt = client.prepare_cached("SELECT count(*) FROM users").await?;
        let row = client.query_one(&stmt, &[]).await?;
        Ok(row.get(0))
    }
}

/// The same service after the switch: only the pool's type and builder changed.
mod after {
    use super::BoxError;
    use deadpool_postgres::Manager;
    use steadypool::drivers::deadpool::DeadpoolManager;

    type Pool = steadypool::Pool<DeadpoolManager<Manager>>;

    pub(crate) fn pool(manager: Manager) -> Result<Pool, BoxError> {
        Ok(steadypool::Pool::builder(DeadpoolManager::new(manager))
            .max_size(16)
            .build()?)
    }

    pub(crate) async fn user_count(pool: &Pool) -> Result<i64, BoxError> {
        let client = pool.get().await?;
        let stmt = client.prepare_cached("SELECT count(*) FROM users").await?;
        let row = client.query_one(&stmt, &[]).await?;
        Ok(row.get(0))
    }

    /// The same query, retried on another connection if this one broke.
    pub(crate) async fn user_count_retried(pool: &Pool) -> Result<i64, BoxError> {
        let count = pool
            .run_idempotent(async |client| {
                let stmt = client.prepare_cached("SELECT count(*) FROM users").await?;
                let row = client.query_one(&stmt, &[]).await?;
                Ok(row.get(0))
            })
            .await?;
        Ok(count)
    }
}

fn client_of<W: Deref<Target = tokio_postgres::Client>>(wrapper: &W) -> &tokio_postgres::Client {
    wrapper
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadpool_postgres_service_runs_unchanged_on_steadypool() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let admin = server.connect().await;
    admin
        .batch_execute("CREATE TABLE users (id int); INSERT INTO users VALUES (1), (2), (3)")
        .await
        .unwrap();

    let old = before::pool(manager(&server)).unwrap();
    assert_eq!(before::user_count(&old).await.unwrap(), 3);
    let new = after::pool(manager(&server)).unwrap();
    assert_eq!(after::user_count(&new).await.unwrap(), 3);
    assert_eq!(after::user_count_retried(&new).await.unwrap(), 3);

    // A checkout and an operation's connection both pass for the client, as a
    // deadpool object does.
    let conn = new.get().await.unwrap();
    let pid = backend_pid(&conn).await;
    drop(conn);
    let again = new
        .run_idempotent(async |client| Ok(backend_pid(client).await))
        .await
        .unwrap();
    assert_eq!(again, pid, "the pooled connection");
}

/// `?` on `tokio_postgres::Error` inside an operation: a failing query comes back as
/// the operation's error, untouched, and its connection stays in the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn question_mark_on_the_drivers_error_in_an_operation() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let pool = after::pool(manager(&server)).unwrap();
    let pid = pool
        .run(async |client| Ok(backend_pid(client).await))
        .await
        .unwrap();
    let err = pool
        .run(async |client| {
            client.batch_execute("SELECT 1/0").await?;
            Ok(())
        })
        .await
        .unwrap_err();
    match &err {
        RunError::Operation(DeadpoolError::Backend(db)) => {
            assert_eq!(
                db.code(),
                Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO),
                "{db:?}"
            );
        }
        other => panic!("expected the query's error, got {other:?}"),
    }
    let same = pool
        .run(async |client| Ok(backend_pid(client).await))
        .await
        .unwrap();
    assert_eq!(same, pid, "the connection went back to the pool");
}

/// The wrapped object is reached by deref coercion from a checkout and from an
/// operation's connection; spelled out, it is `*conn`, as with deadpool's `Object`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrapped_object_is_reached_by_deref() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let pool = after::pool(manager(&server)).unwrap();
    let conn = pool.get().await.unwrap();
    let wrapper: &deadpool_postgres::ClientWrapper = &conn;
    let pid = backend_pid(wrapper).await;
    // A generic parameter takes no deref coercion: the spelled-out form.
    assert_eq!(backend_pid(client_of(&*conn)).await, pid);
    drop(conn);
    let same = pool
        .run(async |client| {
            let object: &mut deadpool_postgres::ClientWrapper = client;
            Ok(backend_pid(object).await)
        })
        .await
        .unwrap();
    assert_eq!(same, pid);
}
