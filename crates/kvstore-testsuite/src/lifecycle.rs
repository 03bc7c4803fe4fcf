//! [contract §3](kvstore_core::contract#3-operations) `close()` and §7 errors.

use std::time::Duration;

use futures::StreamExt;
use kvstore_core::{Error, KvPair, LeaseLoss, LockOptions, PutOptions};

use crate::{Harness, WAIT, fresh_store, next_item, value};

fn is_closed<T: std::fmt::Debug>(result: kvstore_core::Result<T>) -> bool {
    matches!(result, Err(Error::Closed { .. }))
}

/// After `close()` every call fails with `Closed`, open watches end, and held leases
/// report loss.
pub async fn close_makes_every_call_fail_with_closed(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let pair: KvPair = store
        .put("k", value("v"), PutOptions::default())
        .await
        .unwrap();
    let watches = store.capabilities().watch;
    let mut states = if watches {
        let mut states = store.watch("k").await.unwrap();
        next_item(&mut states, "current value").await;
        Some(states)
    } else {
        None
    };
    let lease = if store.capabilities().leases {
        Some(store.grant_lease(harness.ttl()).await.unwrap())
    } else {
        None
    };
    store.close().await.unwrap();
    assert!(is_closed(
        store.put("k", value("v"), PutOptions::default()).await
    ));
    assert!(is_closed(store.get("k").await));
    assert!(is_closed(store.exists("k").await));
    assert!(is_closed(store.delete("k").await));
    assert!(is_closed(store.list("").await));
    assert!(is_closed(store.delete_tree("").await));
    assert!(is_closed(
        store
            .atomic_put("k", value("w"), Some(&pair), PutOptions::default())
            .await
    ));
    assert!(is_closed(store.atomic_delete("k", &pair).await));
    if watches {
        assert!(is_closed(store.watch("k").await.map(|_| ())));
    }
    if store.capabilities().leases {
        assert!(is_closed(
            store.grant_lease(harness.ttl()).await.map(|_| ())
        ));
    }
    if store.capabilities().locks {
        let locker = store.new_lock("lock", LockOptions::default());
        if let Ok(locker) = locker {
            assert!(is_closed(locker.lock().await));
        }
    }
    if let Some(mut states) = states.take() {
        let ended = tokio::time::timeout(WAIT, async {
            while let Some(item) = states.next().await {
                if item.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "an open watch ends when the store closes");
    }
    if let Some(lease) = lease {
        let lost = tokio::time::timeout(WAIT, lease.lost())
            .await
            .expect("lost() fires");
        assert_ne!(lost, kvstore_core::LeaseLoss::KeepAliveFailed);
    }
}

/// Closing the store ends the leases and locks held through it, and says so at once:
/// `lost()` resolves with `StoreClosed` long before the next keep-alive would have found
/// out ([contract §3](kvstore_core::contract#3-operations), §4), so a lock holder stops acting as one right away.
pub async fn leases_and_locks_are_lost_at_once_when_the_store_closes(harness: &dyn Harness) {
    // The next keep-alive is a third of this away: far beyond `PROMPTLY`.
    const TTL: Duration = Duration::from_secs(60);
    // A few round trips on a slow machine; no keep-alive is due before.
    const PROMPTLY: Duration = Duration::from_secs(5);
    let (_, store) = fresh_store(harness).await;
    if !crate::claims(store.capabilities().leases, "leases") {
        return;
    }
    let lease = store.grant_lease(TTL).await.unwrap();
    let guard = if store.capabilities().locks {
        let options = LockOptions {
            value: value("held"),
            ttl: TTL,
        };
        Some(
            store
                .new_lock("jobs/nightly", options)
                .unwrap()
                .lock()
                .await
                .unwrap(),
        )
    } else {
        None
    };
    store.close().await.unwrap();
    let lost = tokio::time::timeout(PROMPTLY, lease.lost())
        .await
        .expect("the lease's lost() resolves as soon as the store is closed");
    assert_eq!(lost, LeaseLoss::StoreClosed);
    if let Some(guard) = guard {
        let lost = tokio::time::timeout(PROMPTLY, guard.lost())
            .await
            .expect("the lock's lost() resolves as soon as the store is closed");
        assert_eq!(lost, LeaseLoss::StoreClosed);
    }
}
