//! Transactions: a [`Txn`] encoded as the arguments of one `scripts/txn.lua` call, and
//! its reply decoded into a [`TxnResponse`].

use bytes::Bytes;
use kvstore_core::{
    CompareOp, CompareTarget, Error, KvPair, LeaseId, LeaseLoss, Result, Txn, TxnOp, TxnResponse,
    TxnResult,
};
use redis::Value;

use crate::error::unexpected;
use crate::scripts::{Reply, Retry};
use crate::store::RedisStore;

impl RedisStore {
    /// One Lua script (`scripts/txn.lua`): compares, then the chosen branch's writes
    /// logged and applied at one revision.
    pub(crate) async fn txn_script(&self, txn: &Txn) -> Result<TxnResponse> {
        let args = encode(self.area, txn);
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let reply = self
            .run_write(("txn", Retry::Once), &self.scripts.txn, &args)
            .await?;
        decode(txn, &reply)
    }
}

/// The script's arguments: the area, the number of compares and each compare's key,
/// target, op and operand, then for each branch (success, failure) the number of its
/// operations and each one's kind, key, value and lease.
fn encode(area: &str, txn: &Txn) -> Vec<Vec<u8>> {
    let mut args: Vec<Vec<u8>> = vec![
        area.as_bytes().to_vec(),
        txn.compares().len().to_string().into_bytes(),
    ];
    for compare in txn.compares() {
        let op = match compare.op {
            CompareOp::Equal => "eq",
            CompareOp::NotEqual => "ne",
            CompareOp::Greater => "gt",
            CompareOp::Less => "lt",
        };
        let (target, operand) = match &compare.target {
            CompareTarget::Value(value) => ("value", value.to_vec()),
            CompareTarget::Revision(revision) => ("revision", revision.to_string().into()),
            CompareTarget::CreateRevision(revision) => ("create", revision.to_string().into()),
            CompareTarget::Lease(lease) => (
                "lease",
                lease.map(|l| l.0.to_string()).unwrap_or_default().into(),
            ),
        };
        args.extend([
            compare.key.clone().into_bytes(),
            target.into(),
            op.into(),
            operand,
        ]);
    }
    for branch in [txn.success(), txn.failure()] {
        args.push(branch.len().to_string().into_bytes());
        for op in branch {
            let (kind, value, lease) = match op {
                TxnOp::Put { value, options, .. } => (
                    "put",
                    value.to_vec(),
                    options.lease.map(|l| l.0.to_string()).unwrap_or_default(),
                ),
                TxnOp::Delete { .. } => ("delete", Vec::new(), String::new()),
                TxnOp::Get { .. } => ("get", Vec::new(), String::new()),
            };
            args.extend([
                kind.into(),
                op.key().as_bytes().to_vec(),
                value,
                lease.into_bytes(),
            ]);
        }
    }
    args
}

/// The response to `txn` from the script's reply: `{no_lease, id}` when a put's lease
/// is gone, else `{succeeded, revision, answer...}`, one answer per operation of the
/// branch that ran.
fn decode(txn: &Txn, reply: &Value) -> Result<TxnResponse> {
    let bad = || unexpected("txn", format!("unexpected reply {reply:?}"));
    let items = reply.items().ok_or_else(bad)?;
    if items.first().and_then(Reply::text).as_deref() == Some("no_lease") {
        let lease = items
            .get(1)
            .and_then(Reply::int)
            .map_or(LeaseId(0), LeaseId);
        return Err(Error::LeaseLost {
            lease,
            reason: LeaseLoss::Expired,
        });
    }
    let number = |value: Option<&Value>| {
        value
            .and_then(Reply::int)
            .and_then(|n| u64::try_from(n).ok())
    };
    let succeeded = number(items.first()).ok_or_else(bad)? == 1;
    let revision = number(items.get(1)).ok_or_else(bad)?;
    let branch = txn.branch(succeeded);
    let mut results = Vec::with_capacity(branch.len());
    for (op, answer) in branch.iter().zip(items.iter().skip(2)) {
        let fields = answer.items().ok_or_else(bad)?;
        results.push(match op {
            TxnOp::Put {
                key,
                value,
                options,
            } => TxnResult::Put(KvPair {
                key: key.clone(),
                value: value.clone(),
                revision,
                create_revision: number(fields.get(1)).ok_or_else(bad)?,
                lease: options.lease,
            }),
            TxnOp::Delete { .. } => TxnResult::Delete {
                deleted: number(fields.get(1)).ok_or_else(bad)? == 1,
            },
            TxnOp::Get { key } => TxnResult::Get(if fields.len() < 5 {
                None
            } else {
                Some(KvPair {
                    key: key.clone(),
                    value: Bytes::from(fields[1].bytes().ok_or_else(bad)?),
                    revision: number(fields.get(2)).ok_or_else(bad)?,
                    create_revision: number(fields.get(3)).ok_or_else(bad)?,
                    lease: fields[4].int().filter(|l| *l != 0).map(LeaseId),
                })
            }),
        });
    }
    if results.len() != branch.len() {
        return Err(bad());
    }
    Ok(TxnResponse {
        succeeded,
        revision,
        results,
    })
}
