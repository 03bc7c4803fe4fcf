//! [contract §1](kvstore_core::contract#1-keys-values-and-namespaces): keys and values.

use bytes::Bytes;
use kvstore_core::{Error, PutOptions};

use crate::{Harness, fresh_store, value};

/// A put followed by a get returns the value, on plain and nested keys.
pub async fn put_then_get_returns_the_value(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    for key in ["plain", "nested/deeper/key"] {
        let written = store
            .put(key, value("v1"), PutOptions::default())
            .await
            .unwrap();
        assert_eq!(written.key, key);
        let read = store.get(key).await.unwrap();
        assert_eq!(read.value, "v1");
        assert_eq!(read, written, "get returns what put returned");
    }
}

/// Leading and trailing slashes are dropped: `/a/b/` and `a/b` are one key.
pub async fn keys_are_normalised(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    store
        .put("/trailing/slash/", value("x"), PutOptions::default())
        .await
        .unwrap();
    let read = store.get("trailing/slash").await.unwrap();
    assert_eq!(read.key, "trailing/slash");
    assert_eq!(store.get("/trailing/slash").await.unwrap().value, "x");
}

/// `get` of an absent key is `KeyNotFound` naming the key.
pub async fn get_of_missing_key_fails_with_key_not_found(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    match store.get("missing/key").await {
        Err(Error::KeyNotFound { key }) => assert_eq!(key, "missing/key"),
        other => panic!("expected KeyNotFound, got {other:?}"),
    }
}

/// `exists` is false before a put and true after.
pub async fn exists_reports_presence(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    assert!(!store.exists("e").await.unwrap());
    store
        .put("e", value("1"), PutOptions::default())
        .await
        .unwrap();
    assert!(store.exists("e").await.unwrap());
}

/// `delete` removes the key; deleting an absent key is not an error.
pub async fn delete_removes_the_key_and_is_idempotent(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    store
        .put("d", value("1"), PutOptions::default())
        .await
        .unwrap();
    store.delete("d").await.unwrap();
    assert!(!store.exists("d").await.unwrap());
    store.delete("d").await.unwrap();
    store.delete("never/there").await.unwrap();
}

/// Arbitrary bytes and the empty value are stored exactly.
pub async fn binary_and_empty_values_round_trip(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let binary = Bytes::from((0..=255u8).collect::<Vec<_>>());
    store
        .put("binary", binary.clone(), PutOptions::default())
        .await
        .unwrap();
    assert_eq!(store.get("binary").await.unwrap().value, binary);
    store
        .put("empty", Bytes::new(), PutOptions::default())
        .await
        .unwrap();
    let empty = store.get("empty").await.unwrap();
    assert!(empty.value.is_empty());
    assert!(
        store.exists("empty").await.unwrap(),
        "an empty value still exists"
    );
}

/// `* ? [ ] \ %` are ordinary key characters: never globs or patterns.
pub async fn special_characters_in_keys_are_literal(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let keys = [
        "g/a*/1", "g/a?/1", "g/[ab]/1", "g/a\\b/1", "g/100%/1", "g/ab/1",
    ];
    for key in keys {
        store
            .put(key, value(key), PutOptions::default())
            .await
            .unwrap();
    }
    for key in keys {
        assert_eq!(store.get(key).await.unwrap().value, key);
    }
    for prefix in ["g/a*", "g/a?", "g/[ab]", "g/a\\b", "g/100%"] {
        let listed: Vec<String> = store
            .list(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(
            listed,
            vec![format!("{prefix}/1")],
            "list({prefix:?}) globbed"
        );
    }
    store.delete_tree("g/a*").await.unwrap();
    assert!(store.exists("g/ab/1").await.unwrap(), "delete_tree globbed");
}

/// Invalid keys get `InvalidKey` from every operation, and nothing is written.
pub async fn invalid_keys_are_rejected_before_io(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    for key in ["", "/", "a//b", "a/./b", "../etc", "a/..", "nul\0byte"] {
        let put = store.put(key, value("x"), PutOptions::default()).await;
        assert!(
            matches!(put, Err(Error::InvalidKey { .. })),
            "put({key:?}): {put:?}"
        );
        let get = store.get(key).await;
        assert!(
            matches!(get, Err(Error::InvalidKey { .. })),
            "get({key:?}): {get:?}"
        );
        let delete = store.delete(key).await;
        assert!(
            matches!(delete, Err(Error::InvalidKey { .. })),
            "delete({key:?})"
        );
        let create = store
            .atomic_put(key, value("x"), None, PutOptions::default())
            .await;
        assert!(
            matches!(create, Err(Error::InvalidKey { .. })),
            "atomic_put({key:?})"
        );
    }
    for prefix in ["a//b", "..", "x\0"] {
        assert!(matches!(
            store.list(prefix).await,
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            store.delete_tree(prefix).await,
            Err(Error::InvalidKey { .. })
        ));
    }
    assert!(
        store.list("").await.unwrap().is_empty(),
        "nothing was written"
    );
}

/// A value over the backend's limit is `ValueTooLarge` with the sizes, and nothing is
/// written.
pub async fn oversize_value_is_rejected_before_io(harness: &dyn Harness) {
    let (_, store) = fresh_store(harness).await;
    let limit = store.capabilities().max_value_size;
    let big = Bytes::from(vec![7u8; limit + 1]);
    match store.put("big", big.clone(), PutOptions::default()).await {
        Err(Error::ValueTooLarge {
            key,
            size,
            limit: l,
        }) => {
            assert_eq!((key.as_str(), size, l), ("big", limit + 1, limit));
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    let create = store
        .atomic_put("big", big, None, PutOptions::default())
        .await;
    assert!(matches!(create, Err(Error::ValueTooLarge { .. })));
    assert!(!store.exists("big").await.unwrap());
}

/// Two namespaces on one server never see each other's keys.
pub async fn namespaces_are_isolated(harness: &dyn Harness) {
    let (_, first) = fresh_store(harness).await;
    let (_, second) = fresh_store(harness).await;
    first
        .put("shared/name", value("first"), PutOptions::default())
        .await
        .unwrap();
    assert!(!second.exists("shared/name").await.unwrap());
    assert!(second.list("").await.unwrap().is_empty());
    second.delete_tree("").await.unwrap();
    assert_eq!(first.get("shared/name").await.unwrap().value, "first");
}
