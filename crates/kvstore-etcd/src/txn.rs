//! Transactions: a kvstore [`kvstore_core::Txn`] as one etcd `Txn`, and its answer back.

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use kvstore_core::{Error, KvPair, Result};

use crate::BACKEND;
use crate::client::Resend;
use crate::error::for_lease;
use crate::read::header_revision;
use crate::store::EtcdStore;

impl EtcdStore {
    /// One etcd `Txn`: the comparisons and both branches map one to one (a put asks for
    /// the previous key-value, to tell its create revision).
    pub(crate) async fn transact(
        &self,
        txn: &kvstore_core::Txn,
    ) -> Result<kvstore_core::TxnResponse> {
        use kvstore_core::{CompareTarget, TxnOp as Op, TxnResult};
        let compares: Vec<Compare> = txn
            .compares()
            .iter()
            .map(|compare| {
                let key = self.etcd_key(&compare.key);
                let op = match compare.op {
                    kvstore_core::CompareOp::Equal => CompareOp::Equal,
                    kvstore_core::CompareOp::NotEqual => CompareOp::NotEqual,
                    kvstore_core::CompareOp::Greater => CompareOp::Greater,
                    kvstore_core::CompareOp::Less => CompareOp::Less,
                };
                let number = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
                match &compare.target {
                    CompareTarget::Value(value) => Compare::value(key, op, value.to_vec()),
                    CompareTarget::Revision(revision) => {
                        Compare::mod_revision(key, op, number(*revision))
                    }
                    CompareTarget::CreateRevision(revision) => {
                        Compare::create_revision(key, op, number(*revision))
                    }
                    CompareTarget::Lease(lease) => {
                        Compare::lease(key, op, lease.map_or(0, |l| l.0))
                    }
                }
            })
            .collect();
        let ops = |branch: &[Op]| -> Vec<TxnOp> {
            branch
                .iter()
                .map(|op| match op {
                    Op::Put {
                        key,
                        value,
                        options,
                    } => {
                        let mut put = etcd_client::PutOptions::new().with_prev_key();
                        if let Some(lease) = options.lease {
                            put = put.with_lease(lease.0);
                        }
                        TxnOp::put(self.etcd_key(key), value.to_vec(), Some(put))
                    }
                    Op::Delete { key } => TxnOp::delete(self.etcd_key(key), None),
                    Op::Get { key } => TxnOp::get(self.etcd_key(key), None),
                })
                .collect()
        };
        let request = Txn::new()
            .when(compares)
            .and_then(ops(txn.success()))
            .or_else(ops(txn.failure()));
        let lease_of_branch = txn
            .success()
            .iter()
            .chain(txn.failure())
            .find_map(|op| match op {
                Op::Put { options, .. } => options.lease,
                _ => None,
            });
        let response = self
            .call("txn", Resend::Write, |mut clients| {
                let request = request.clone();
                async move { clients.kv.txn(request).await }
            })
            .await
            .map_err(|e| match lease_of_branch {
                Some(lease) => for_lease(e, lease),
                None => e,
            })?;
        let succeeded = response.succeeded();
        let revision = header_revision(response.header());
        let branch = txn.branch(succeeded);
        let mut results = Vec::with_capacity(branch.len());
        for (op, answer) in branch.iter().zip(response.op_responses()) {
            results.push(match (op, answer) {
                (
                    Op::Put {
                        key,
                        value,
                        options,
                    },
                    TxnOpResponse::Put(put),
                ) => TxnResult::Put(KvPair {
                    key: key.clone(),
                    value: value.clone(),
                    revision,
                    create_revision: put
                        .prev_key()
                        .map_or(revision, |kv| crate::read::revision(kv.create_revision())),
                    lease: options.lease,
                }),
                (Op::Delete { .. }, TxnOpResponse::Delete(delete)) => TxnResult::Delete {
                    deleted: delete.deleted() > 0,
                },
                (Op::Get { .. }, TxnOpResponse::Get(get)) => {
                    TxnResult::Get(get.kvs().first().and_then(|kv| self.pair(kv)))
                }
                _ => {
                    return Err(Error::Backend {
                        backend: BACKEND,
                        operation: "txn",
                        source: "etcd answered a transaction with responses of other kinds \
                                 than its operations"
                            .into(),
                    });
                }
            });
        }
        Ok(kvstore_core::TxnResponse {
            succeeded,
            revision,
            results,
        })
    }
}
