//! [contract §10](kvstore_core::contract#10-transactions): transactions.

use std::sync::Arc;

use kvstore_core::{
    Compare, CompareOp, Error, KvPair, MAX_TXN_OPS, PutOptions, Store, Txn, TxnOp, TxnResult,
    WatchEvent, WatchFrom,
};

use crate::leases::wait_until_absent;
use crate::{Harness, fresh_store, next_item, value};

fn transactions_supported(store: &Arc<dyn Store>) -> bool {
    crate::claims(store.capabilities().transactions, "transactions")
}

fn put(key: &str, text: &str) -> TxnOp {
    TxnOp::put(key, value(text), PutOptions::default())
}

/// A transaction whose comparisons hold applies its `and_then` branch: every write at
/// one revision, each result in order, a get seeing the writes before it.
pub async fn txn_applies_its_branch_at_one_revision(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !transactions_supported(&store) {
        return;
    }
    let old = store
        .put("t/old", value("x"), PutOptions::default())
        .await
        .unwrap();
    let response = store
        .txn(
            Txn::new()
                .when([Compare::present("t/old"), Compare::absent("t/a")])
                .and_then([
                    put("t/a", "1"),
                    put("t/b", "2"),
                    TxnOp::delete("t/old"),
                    TxnOp::delete("t/never"),
                    TxnOp::get("t/a"),
                ])
                .or_else([put("t/else", "no")]),
        )
        .await
        .unwrap();
    assert!(response.succeeded);
    assert!(response.revision > old.revision);
    let [
        TxnResult::Put(a),
        TxnResult::Put(b),
        TxnResult::Delete { deleted: true },
        TxnResult::Delete { deleted: false },
        TxnResult::Get(Some(read)),
    ] = response.results.as_slice()
    else {
        panic!("unexpected results {:?}", response.results);
    };
    assert_eq!(
        (a.revision, b.revision),
        (response.revision, response.revision)
    );
    assert_eq!(a.create_revision, response.revision);
    assert_eq!(read, a);
    assert_eq!(store.get("t/b").await.unwrap(), *b);
    assert!(!store.exists("t/old").await.unwrap());
    assert!(!store.exists("t/else").await.unwrap());
}

/// A comparison that does not hold applies the `or_else` branch and nothing of the other.
pub async fn txn_failed_compare_applies_nothing_of_the_other_branch(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !transactions_supported(&store) {
        return;
    }
    let current = store
        .put("t/k", value("v1"), PutOptions::default())
        .await
        .unwrap();
    let response = store
        .txn(
            Txn::new()
                .when([Compare::revision(
                    "t/k",
                    CompareOp::Equal,
                    current.revision + 1000,
                )])
                .and_then([put("t/k", "v2"), put("t/other", "x")])
                .or_else([TxnOp::get("t/k")]),
        )
        .await
        .unwrap();
    assert!(!response.succeeded);
    assert_eq!(response.results, [TxnResult::Get(Some(current.clone()))]);
    assert_eq!(store.get("t/k").await.unwrap(), current);
    assert!(!store.exists("t/other").await.unwrap());
}

/// Comparisons on value, revision, create revision, lease and absence follow etcd: an
/// absent key has revision 0 and no lease, and no value comparison holds on it.
pub async fn txn_compares_value_revision_create_revision_lease_and_absence(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !transactions_supported(&store) {
        return;
    }
    let pair = store
        .put("t/k", value("b"), PutOptions::default())
        .await
        .unwrap();
    let rewritten = store
        .put("t/k", value("b"), PutOptions::default())
        .await
        .unwrap();
    let lease = if store.capabilities().leases {
        Some(store.grant_lease(harness.ttl() * 10).await.unwrap())
    } else {
        None
    };
    if let Some(lease) = &lease {
        store
            .put("t/leased", value("x"), PutOptions::with_lease(lease.id()))
            .await
            .unwrap();
    }
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::value("t/k", CompareOp::Equal, value("b")), true),
        (
            Compare::value("t/k", CompareOp::NotEqual, value("b")),
            false,
        ),
        (Compare::value("t/k", CompareOp::Greater, value("a")), true),
        (Compare::value("t/k", CompareOp::Less, value("a")), false),
        (
            Compare::value("t/missing", CompareOp::NotEqual, value("b")),
            false,
        ),
        (
            Compare::revision("t/k", CompareOp::Equal, rewritten.revision),
            true,
        ),
        (
            Compare::revision("t/k", CompareOp::Less, rewritten.revision),
            false,
        ),
        (Compare::revision("t/missing", CompareOp::Equal, 0), true),
        (
            Compare::create_revision("t/k", CompareOp::Equal, pair.revision),
            true,
        ),
        (
            Compare::create_revision("t/k", CompareOp::Greater, pair.revision),
            false,
        ),
        (Compare::absent("t/missing"), true),
        (Compare::absent("t/k"), false),
        (Compare::present("t/k"), true),
        (Compare::lease("t/k", CompareOp::Equal, None), true),
        (Compare::lease("t/missing", CompareOp::Equal, None), true),
    ];
    let mut cases = cases;
    if let Some(lease) = &lease {
        cases.push((
            Compare::lease("t/leased", CompareOp::Equal, Some(lease.id())),
            true,
        ));
        cases.push((Compare::lease("t/leased", CompareOp::Equal, None), false));
    }
    for (compare, expected) in cases {
        let response = store.txn(Txn::new().when([compare.clone()])).await.unwrap();
        assert_eq!(response.succeeded, expected, "{compare:?}");
    }
}

/// Watchers see a transaction's writes as one revision, in one batch: the tree view
/// emits one list with all of them, never a state in between.
pub async fn txn_writes_reach_watchers_as_one_revision(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !transactions_supported(&store) || !crate::claims(store.capabilities().watch, "watch") {
        return;
    }
    let mut events = store
        .watch_prefix_events("t", WatchFrom::Snapshot)
        .await
        .unwrap();
    next_item(&mut events, "snapshot").await;
    let mut tree = store.watch_tree("t").await.unwrap();
    assert!(next_item(&mut tree, "first list").await.is_empty());
    let response = store
        .txn(Txn::new().and_then([put("t/a", "1"), put("t/b", "2"), put("t/c", "3")]))
        .await
        .unwrap();
    for key in ["t/a", "t/b", "t/c"] {
        match next_item(&mut events, "txn event").await {
            WatchEvent::Put(pair) => {
                assert_eq!((pair.key.as_str(), pair.revision), (key, response.revision));
            }
            other => panic!("expected a put, got {other:?}"),
        }
    }
    let list = next_item(&mut tree, "list after the txn").await;
    let keys: Vec<&str> = list.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["t/a", "t/b", "t/c"],
        "one list with every write of the txn"
    );
}

/// Eight clients on their own connections move units between two accounts with
/// compare-and-swap transactions; no unit is lost or made up.
pub async fn txn_transfers_under_contention_conserve_every_unit(harness: &dyn Harness) {
    const CLIENTS: usize = 8;
    const TRANSFERS: u64 = 10;
    const START: u64 = 1000;
    let (namespace, store) = fresh_store(harness).await;
    if !transactions_supported(&store) {
        return;
    }
    store
        .txn(Txn::new().and_then([put("acct/a", &START.to_string()), put("acct/b", "0")]))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let client = harness
            .open(&namespace)
            .await
            .unwrap_or_else(|e| panic!("the harness could not open a store: {e}"));
        clients.push(tokio::spawn(async move {
            let mut done = 0;
            while done < TRANSFERS {
                let a = client.get("acct/a").await.unwrap();
                let b = client.get("acct/b").await.unwrap();
                let number = |pair: &KvPair| -> u64 {
                    std::str::from_utf8(&pair.value).unwrap().parse().unwrap()
                };
                let moved = client
                    .txn(
                        Txn::new()
                            .when([
                                Compare::revision("acct/a", CompareOp::Equal, a.revision),
                                Compare::revision("acct/b", CompareOp::Equal, b.revision),
                            ])
                            .and_then([
                                put("acct/a", &(number(&a) - 1).to_string()),
                                put("acct/b", &(number(&b) + 1).to_string()),
                            ]),
                    )
                    .await
                    .unwrap();
                if moved.succeeded {
                    done += 1;
                }
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let total = |key: &'static str| {
        let store = store.clone();
        async move {
            let pair = store.get(key).await.unwrap();
            std::str::from_utf8(&pair.value)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        }
    };
    let moved = CLIENTS as u64 * TRANSFERS;
    assert_eq!(total("acct/a").await, START - moved);
    assert_eq!(total("acct/b").await, moved);
}

/// Too many operations, or a key written twice in one branch, is `InvalidArgument`, and
/// nothing is written.
pub async fn txn_over_the_limits_is_invalid_argument(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !transactions_supported(&store) {
        return;
    }
    let too_many: Vec<TxnOp> = (0..=MAX_TXN_OPS)
        .map(|i| put(&format!("t/{i}"), "x"))
        .collect();
    let refused = store.txn(Txn::new().and_then(too_many)).await;
    assert!(
        matches!(refused, Err(Error::InvalidArgument { .. })),
        "{refused:?}"
    );
    let twice = store
        .txn(Txn::new().and_then([put("t/a", "1"), TxnOp::delete("/t/a/")]))
        .await;
    assert!(
        matches!(twice, Err(Error::InvalidArgument { .. })),
        "{twice:?}"
    );
    let bad_key = store.txn(Txn::new().and_then([put("t//a", "1")])).await;
    assert!(
        matches!(bad_key, Err(Error::InvalidKey { .. })),
        "{bad_key:?}"
    );
    assert!(store.list("t").await.unwrap().is_empty());
}

/// A put with a TTL inside a transaction expires like any TTL key.
pub async fn txn_ttl_put_expires(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    if !transactions_supported(&store) || !crate::claims(store.capabilities().leases, "leases") {
        return;
    }
    let response = store
        .txn(Txn::new().and_then([TxnOp::put(
            "t/session",
            value("x"),
            PutOptions::with_ttl(harness.ttl()),
        )]))
        .await
        .unwrap();
    assert!(matches!(&response.results[0], TxnResult::Put(p) if p.lease.is_some()));
    wait_until_absent(&store, "t/session").await;
}
