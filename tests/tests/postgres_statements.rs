//! `PgConnection::prepare_cached` against a real PostgreSQL: a statement is prepared on
//! the server once per connection, kept across checkouts, cleared on request, and a
//! new connection starts without any. Without root or the PostgreSQL programs these
//! tests say SKIPPED.

use steadypool::Pool;
use steadypool::drivers::postgres::{PgConnection, PgManager};
use steadypool_tests::postgres::PgServer;
use tokio_postgres::SimpleQueryMessage;

/// The named statements the server holds for this connection's session. Asked through
/// the simple protocol, which prepares no named statement of its own.
async fn server_statements(conn: &PgConnection) -> u64 {
    let messages = conn
        .simple_query("SELECT count(*) FROM pg_prepared_statements")
        .await
        .unwrap();
    let count = messages.iter().find_map(|message| match message {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    count.unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_statement_is_prepared_once_per_connection_and_cleared_on_request() {
    let Some(server) = PgServer::start() else {
        return;
    };
    let pool = Pool::builder(PgManager::new(server.config()).unwrap())
        .max_size(2)
        .build()
        .unwrap();

    let conn = pool.get().await.unwrap();
    assert_eq!(conn.cached_statements(), 0);
    assert_eq!(server_statements(&conn).await, 0);

    let first = conn.prepare_cached("SELECT $1::int + 1").await.unwrap();
    let second = conn.prepare_cached("SELECT $1::int + 1").await.unwrap();
    assert_eq!(first.params(), second.params());
    assert_eq!(conn.cached_statements(), 1);
    assert_eq!(server_statements(&conn).await, 1);
    let two: i32 = conn.query_one(&second, &[&1_i32]).await.unwrap().get(0);
    assert_eq!(two, 2);

    // A statement that fails to prepare is not cached.
    assert!(conn.prepare_cached("SELECT FROM nowhere").await.is_err());
    assert_eq!(conn.cached_statements(), 1);

    // The cache belongs to the connection: back in the pool and out again, it is
    // still there.
    drop((first, second));
    drop(conn);
    let conn = pool.get().await.unwrap();
    assert_eq!(conn.cached_statements(), 1);
    conn.prepare_cached("SELECT $1::int + 1").await.unwrap();
    conn.prepare_cached("SELECT $1::text").await.unwrap();
    assert_eq!(conn.cached_statements(), 2);
    assert_eq!(server_statements(&conn).await, 2);

    // Another connection, another server session: nothing prepared, nothing cached.
    let other = pool.get().await.unwrap();
    assert_eq!(other.cached_statements(), 0);
    assert_eq!(server_statements(&other).await, 0);

    // Cleared, and the server deallocates them.
    conn.clear_statement_cache();
    assert_eq!(conn.cached_statements(), 0);
    assert_eq!(server_statements(&conn).await, 0);
    let again = conn.prepare_cached("SELECT $1::int + 1").await.unwrap();
    assert_eq!(conn.cached_statements(), 1);
    assert_eq!(server_statements(&conn).await, 1);
    drop(again);
}
