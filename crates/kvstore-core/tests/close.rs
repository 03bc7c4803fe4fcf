//! Closing a store revokes its leases concurrently and gives up on an unreachable
//! server after the first failed revoke ([contract §3](kvstore_core::contract)): a
//! store with 50 leases whose server is gone closes in about one request timeout, not
//! 50 of them. Time is tokio's paused clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kvstore_core::backend::{CLOSE_REVOKES_IN_FLIGHT, Lifecycle};
use kvstore_core::{Error, LeaseId};
use tokio::time::Instant;

const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);

fn with_leases(count: i64) -> Lifecycle {
    let lifecycle = Lifecycle::new();
    for id in 1..=count {
        lifecycle.track_lease(LeaseId(id));
    }
    lifecycle
}

#[tokio::test(start_paused = true)]
async fn close_against_an_unreachable_server_takes_one_request_timeout_not_one_per_lease() {
    let lifecycle = with_leases(50);
    let tried = AtomicUsize::new(0);
    let started = Instant::now();
    lifecycle
        .close_revoking(|_| {
            tried.fetch_add(1, Ordering::Relaxed);
            async {
                tokio::time::sleep(REQUEST_TIMEOUT).await;
                Err(Error::Timeout {
                    operation: "revoke_lease",
                    after: REQUEST_TIMEOUT,
                })
            }
        })
        .await;
    assert_eq!(started.elapsed(), REQUEST_TIMEOUT);
    assert!(lifecycle.ensure_open("test").is_err(), "closed");
    assert_eq!(
        tried.load(Ordering::Relaxed),
        50,
        "all 50 were in flight at once"
    );
}

#[tokio::test(start_paused = true)]
async fn close_revokes_every_lease_a_bounded_number_at_a_time() {
    let count = i64::try_from(CLOSE_REVOKES_IN_FLIGHT * 2 + 1).unwrap();
    let lifecycle = with_leases(count);
    let revoked = AtomicUsize::new(0);
    let started = Instant::now();
    lifecycle
        .close_revoking(|_| {
            let revoked = &revoked;
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                revoked.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .await;
    assert_eq!(
        i64::try_from(revoked.load(Ordering::Relaxed)).unwrap(),
        count
    );
    // Three rounds of at most CLOSE_REVOKES_IN_FLIGHT each.
    assert!(
        started.elapsed() <= Duration::from_millis(30),
        "{:?}",
        started.elapsed()
    );
}
