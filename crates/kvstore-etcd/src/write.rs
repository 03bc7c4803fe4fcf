//! Writes: puts and deletes, plain or conditional. A condition is one `Txn` comparing
//! `mod_revision` (or `create_revision == 0`) that reads the key when the compare fails,
//! to tell `KeyNotFound` from `KeyModified`.

use bytes::Bytes;
use etcd_client::{Compare, CompareOp, DeleteOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use kvstore_core::backend::Condition;
use kvstore_core::{Error, Key, KvPair, LeaseId, Prefix, Result};

use crate::client::Resend;
use crate::error::for_lease;
use crate::read::{header_revision, revision};
use crate::store::EtcdStore;

impl EtcdStore {
    /// Put `value` at `key` if `condition` holds, attached to `lease` if given.
    pub(crate) async fn write(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<KvPair> {
        let etcd_key = self.etcd_key(key.as_str());
        let mut options = etcd_client::PutOptions::new().with_prev_key();
        if let Some(lease) = lease {
            options = options.with_lease(lease.0);
        }
        let name_lease = |e| match lease {
            Some(lease) => for_lease(e, lease),
            None => e,
        };
        // A conditional write is one Txn: compare, put on success, read the key on
        // failure (to tell KeyNotFound from KeyModified).
        let compare = match condition {
            // A plain Put: etcd serves it faster than a one-operation Txn, and its
            // previous key-value still tells the create revision.
            Condition::Always => {
                let response = self
                    .call("put", Resend::Write, |mut clients| {
                        let (key, value) = (etcd_key.clone(), value.to_vec());
                        let options = options.clone();
                        async move { clients.kv.put(key, value, Some(options)).await }
                    })
                    .await
                    .map_err(name_lease)?;
                let written_at = header_revision(response.header());
                return Ok(KvPair {
                    key: key.to_string(),
                    value,
                    revision: written_at,
                    create_revision: response
                        .prev_key()
                        .map_or(written_at, |kv| revision(kv.create_revision())),
                    lease,
                });
            }
            Condition::Absent => Compare::create_revision(etcd_key.clone(), CompareOp::Equal, 0),
            Condition::Revision(expected) => Compare::mod_revision(
                etcd_key.clone(),
                CompareOp::Equal,
                i64::try_from(expected).unwrap_or(i64::MAX),
            ),
        };
        let put = TxnOp::put(etcd_key.clone(), value.to_vec(), Some(options));
        let txn = Txn::new()
            .when([compare])
            .and_then([put])
            .or_else([TxnOp::get(etcd_key, None)]);
        let response = self
            .call("put", Resend::Write, |mut clients| {
                let txn = txn.clone();
                async move { clients.kv.txn(txn).await }
            })
            .await
            .map_err(name_lease)?;
        let responses = response.op_responses();
        if !response.succeeded() {
            let current = first_get(&responses);
            return Err(match condition {
                Condition::Revision(expected) => {
                    self.compare_failure(key, expected, current.as_ref())
                }
                _ => Error::KeyExists {
                    key: key.to_string(),
                },
            });
        }
        let written_at = header_revision(response.header());
        let create_revision =
            previous_kv(&responses).map_or(written_at, |kv| revision(kv.create_revision()));
        Ok(KvPair {
            key: key.to_string(),
            value,
            revision: written_at,
            create_revision,
            lease,
        })
    }

    /// Delete `key` if `condition` holds; the revision of the delete, `None` when there
    /// was no key.
    pub(crate) async fn remove(&self, key: &Key, condition: Condition) -> Result<Option<u64>> {
        let etcd_key = self.etcd_key(key.as_str());
        match condition {
            Condition::Always => {
                let response = self
                    .call("delete", Resend::Write, |mut clients| {
                        let key = etcd_key.clone();
                        async move { clients.kv.delete(key, None).await }
                    })
                    .await?;
                Ok((response.deleted() > 0).then(|| header_revision(response.header())))
            }
            Condition::Revision(expected) => {
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        etcd_key.clone(),
                        CompareOp::Equal,
                        i64::try_from(expected).unwrap_or(i64::MAX),
                    )])
                    .and_then([TxnOp::delete(etcd_key.clone(), None)])
                    .or_else([TxnOp::get(etcd_key, None)]);
                let response = self
                    .call("atomic_delete", Resend::Write, |mut clients| {
                        let txn = txn.clone();
                        async move { clients.kv.txn(txn).await }
                    })
                    .await?;
                if !response.succeeded() {
                    let current = first_get(&response.op_responses());
                    return Err(self.compare_failure(key, expected, current.as_ref()));
                }
                Ok(Some(header_revision(response.header())))
            }
            Condition::Absent => Err(Error::invalid_argument(
                "delete",
                "a delete cannot require the key to be absent",
            )),
        }
    }

    /// Delete every key below `prefix` in one request; its revision, `None` when there
    /// was none.
    pub(crate) async fn remove_tree(&self, prefix: &Prefix) -> Result<Option<u64>> {
        let start = self.etcd_key(&prefix.key_start());
        let response = self
            .call("delete_tree", Resend::Write, |mut clients| {
                let start = start.clone();
                async move {
                    clients
                        .kv
                        .delete(start, Some(DeleteOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        Ok((response.deleted() > 0).then(|| header_revision(response.header())))
    }

    /// The state of `key` after a failed compare: `KeyNotFound` or `KeyModified`.
    fn compare_failure(&self, key: &Key, expected: u64, current: Option<&KeyValue>) -> Error {
        match current {
            None => Error::KeyNotFound {
                key: key.to_string(),
            },
            Some(kv) => Error::KeyModified {
                key: key.to_string(),
                expected,
                actual: revision(kv.mod_revision()),
            },
        }
    }
}

/// The first key-value of a `get` inside a transaction's else branch.
fn first_get(responses: &[TxnOpResponse]) -> Option<KeyValue> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Get(get) => get.kvs().first().cloned(),
        _ => None,
    })
}

/// The previous key-value of a `put` or `delete` inside a transaction.
fn previous_kv(responses: &[TxnOpResponse]) -> Option<KeyValue> {
    responses.iter().find_map(|r| match r {
        TxnOpResponse::Put(put) => put.prev_key().cloned(),
        TxnOpResponse::Delete(delete) => delete.prev_kvs().first().cloned(),
        _ => None,
    })
}
