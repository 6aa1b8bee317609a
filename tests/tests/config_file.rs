//! A pool configured from a file: the knobs it sets reach the pool and every socket
//! it opens, against a real server on loopback.

use std::time::Duration;

use socket2::SockRef;
use steadypool::{Pool, PoolConfig, drivers::tcp::TcpManager};
use steadypool_tests::host;
use steadypool_tests::servers::LineServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::test]
async fn a_config_file_builds_a_working_pool_with_its_socket_options() {
    let server = LineServer::start().await.unwrap();
    let dir = host::scratch_dir("config").unwrap();
    let path = dir.join("pool.toml");
    std::fs::write(
        &path,
        r#"
            name = "from-file"
            max_size = 3
            connect_timeout = "2s"
            user_timeout = "1500ms"
            nodelay = false

            [keepalive]
            idle = "7s"
            interval = "2s"
            count = 4

            [retry]
            max_attempts = 2
        "#,
    )
    .unwrap();
    let config: PoolConfig = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let pool = Pool::builder(TcpManager::new(server.addr()))
        .config(&config)
        .build()
        .unwrap();
    assert_eq!(pool.status().max_size, 3);

    let mut conn = pool.get().await.unwrap();
    conn.write_all(b"PING\n").await.unwrap();
    let mut reply = String::new();
    BufReader::new(&mut *conn)
        .read_line(&mut reply)
        .await
        .unwrap();
    assert_eq!(reply, "PONG\n");

    let sock = SockRef::from(&*conn);
    assert!(sock.keepalive().unwrap());
    assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
    assert_eq!(
        sock.tcp_keepalive_interval().unwrap(),
        Duration::from_secs(2)
    );
    assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
    assert_eq!(
        sock.tcp_user_timeout().unwrap(),
        Some(Duration::from_millis(1500))
    );
    assert!(!sock.tcp_nodelay().unwrap());
}

#[tokio::test]
async fn keepalive_turned_off_in_the_file_is_off_on_the_socket() {
    let server = LineServer::start().await.unwrap();
    let config: PoolConfig =
        serde_json::from_str(r#"{ "keepalive": { "enabled": false }, "user_timeout": "off" }"#)
            .unwrap();
    let pool = Pool::builder(TcpManager::new(server.addr()))
        .config(&config)
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    let sock = SockRef::from(&*conn);
    assert!(!sock.keepalive().unwrap());
    assert_eq!(sock.tcp_user_timeout().unwrap(), None);
}
