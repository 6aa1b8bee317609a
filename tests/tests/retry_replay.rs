//! The replay test (the lesson of golang/go#11978): a server that counts how often each
//! request ran and resets connections at random points before, during and after
//! running requests. Idempotent requests must all succeed in the end; non-idempotent
//! ones must never run twice, and each one that failed must say why.

use std::sync::Arc;
use std::time::Duration;

use steadypool::{GiveUp, Idempotency, Pool, RetryPolicy, RunError};
use steadypool_tests::flaky::{self, Faults, LedgerManager, LedgerServer};
use tokio::sync::Semaphore;

const REQUESTS: u64 = 5_000;
const CONCURRENCY: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_all_succeed_and_others_never_run_twice() {
    let server = Arc::new(
        LedgerServer::start(Faults {
            reset_probability: 0.05,
            seed: 11_978,
            ..Faults::default()
        })
        .await
        .unwrap(),
    );
    let pool = Pool::builder(LedgerManager::new(server.addr()))
        .name("replay")
        .max_size(8)
        .retry_policy(
            RetryPolicy::default()
                .max_attempts(10)
                .deadline(Duration::from_secs(30))
                .backoff(Duration::from_millis(1), Duration::from_millis(20))
                .jitter_seed(7),
        )
        .build()
        .unwrap();

    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let mut requests = Vec::with_capacity(REQUESTS as usize);
    for id in 0..REQUESTS {
        let permit = Arc::clone(&slots).acquire_owned().await.unwrap();
        let pool = pool.clone();
        let idempotency = if id % 2 == 0 {
            Idempotency::Idempotent
        } else {
            Idempotency::NotIdempotent
        };
        requests.push((
            id,
            idempotency,
            tokio::spawn(async move {
                let result = pool
                    .run_with(idempotency, async move |conn| flaky::run(conn, id).await)
                    .await;
                drop(permit);
                result
            }),
        ));
    }

    let mut replayed_idempotent = 0;
    let mut failed_not_idempotent = 0;
    for (id, idempotency, request) in requests {
        let result = request.await.unwrap();
        let runs = server.runs(id);
        match idempotency {
            Idempotency::Idempotent => {
                let reported = match result {
                    Ok(reported) => reported,
                    Err(err) => panic!("idempotent request {id} failed: {err}"),
                };
                assert!(runs >= 1 && reported >= 1, "request {id}");
                if runs > 1 {
                    replayed_idempotent += 1;
                }
            }
            Idempotency::NotIdempotent => {
                assert!(runs <= 1, "non-idempotent request {id} ran {runs} times");
                match result {
                    Ok(reported) => assert_eq!((reported, runs), (1, 1), "request {id}"),
                    Err(err) => {
                        failed_not_idempotent += 1;
                        let cause = err.cause().unwrap_or_else(|| {
                            panic!("request {id} failed without a cause: {err}")
                        });
                        assert!(
                            matches!(
                                err,
                                RunError::MaybeExecuted {
                                    reason: GiveUp::NotIdempotent,
                                    ..
                                }
                            ),
                            "request {id}: {err}"
                        );
                        assert!(err.to_string().contains(cause.as_str()), "{err}");
                    }
                }
            }
        }
    }
    eprintln!(
        "{REQUESTS} requests: {} server resets, {} connections, {} request lines; \
         {replayed_idempotent} idempotent requests ran more than once; \
         {failed_not_idempotent} non-idempotent requests failed (each with a cause)",
        server.resets(),
        server.accepted(),
        server.requests(),
    );
    assert!(
        server.resets() > 100,
        "the faults must actually strike: {} resets",
        server.resets()
    );
    assert!(
        failed_not_idempotent > 0,
        "some non-idempotent requests must have hit a reset"
    );
    let status = pool.status();
    assert_eq!(status.in_use, 0, "{status:?}");
}
