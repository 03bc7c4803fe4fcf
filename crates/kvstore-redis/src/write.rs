//! Puts and deletes: one script call each (`scripts/put.lua`, `delete.lua`,
//! `delete_prefix.lua`), which checks the condition, logs the change and writes it at
//! one revision, and the decoding of what it answers.

use bytes::Bytes;
use kvstore_core::backend::Condition;
use kvstore_core::{Error, Key, KvPair, LeaseId, LeaseLoss, Prefix, Result};

use crate::error::unexpected;
use crate::scripts::{Reply, Retry};
use crate::store::RedisStore;

/// What the put script did.
pub(crate) enum Written {
    Pair(KvPair),
    /// The new lease's id is in use: nothing was written; draw another.
    LeaseTaken,
}

impl RedisStore {
    /// Run `scripts/put.lua`: write `value` at `key` if `condition` holds, on `lease`;
    /// with `new_lease_ttl` (ms), `lease` is a new lease the script creates with that
    /// TTL, only if the write happens.
    pub(crate) async fn put_script(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
        new_lease_ttl: Option<u64>,
    ) -> Result<Written> {
        let (condition_name, expected) = condition_args(condition);
        let lease_arg = lease.map(|l| l.0.to_string()).unwrap_or_default();
        let ttl_arg = new_lease_ttl.map(|ms| ms.to_string());
        let mut args: Vec<&[u8]> = vec![
            self.area.as_bytes(),
            key.as_str().as_bytes(),
            &value,
            condition_name.as_bytes(),
            expected.as_bytes(),
            lease_arg.as_bytes(),
        ];
        if let Some(ttl) = &ttl_arg {
            args.push(ttl.as_bytes());
        }
        let reply = self
            .run_write(("put", Retry::Once), &self.scripts.put, &args)
            .await?;
        let bad = || unexpected("put", format!("unexpected reply {reply:?}"));
        let items = reply.items().ok_or_else(bad)?;
        let status = items.first().and_then(Reply::text).ok_or_else(bad)?;
        let number = |i: usize| {
            items
                .get(i)
                .and_then(Reply::int)
                .and_then(|n| u64::try_from(n).ok())
        };
        match status.as_str() {
            "ok" => Ok(Written::Pair(KvPair {
                key: key.to_string(),
                value,
                revision: number(1).ok_or_else(bad)?,
                create_revision: number(2).ok_or_else(bad)?,
                lease,
            })),
            "taken" if new_lease_ttl.is_some() => Ok(Written::LeaseTaken),
            "exists" => Err(Error::KeyExists {
                key: key.to_string(),
            }),
            "not_found" => Err(Error::KeyNotFound {
                key: key.to_string(),
            }),
            "modified" => Err(Error::KeyModified {
                key: key.to_string(),
                expected: expected.parse().unwrap_or(0),
                actual: number(1).unwrap_or(0),
            }),
            "no_lease" => Err(Error::LeaseLost {
                lease: lease.unwrap_or(LeaseId(0)),
                reason: LeaseLoss::Expired,
            }),
            _ => Err(bad()),
        }
    }

    /// Run `scripts/delete.lua`: delete `key` if it is at `revision` (any, for `None`).
    /// The revision of the delete, or `None` when there was no key.
    pub(crate) async fn delete_script(
        &self,
        key: &Key,
        revision: Option<u64>,
    ) -> Result<Option<u64>> {
        let condition = revision.map_or(Condition::Always, Condition::Revision);
        let (condition_name, expected) = condition_args(condition);
        let reply = self
            .run_write(
                ("delete", Retry::Once),
                &self.scripts.delete,
                &[
                    self.area.as_bytes(),
                    key.as_str().as_bytes(),
                    condition_name.as_bytes(),
                    expected.as_bytes(),
                ],
            )
            .await?;
        let bad = || unexpected("delete", format!("unexpected reply {reply:?}"));
        let items = reply.items().ok_or_else(bad)?;
        let number = items
            .get(1)
            .and_then(Reply::int)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(bad)?;
        match items.first().and_then(Reply::text).as_deref() {
            Some("ok") => Ok((number > 0).then_some(number)),
            Some("not_found") => Err(Error::KeyNotFound {
                key: key.to_string(),
            }),
            Some("modified") => Err(Error::KeyModified {
                key: key.to_string(),
                expected: expected.parse().unwrap_or(0),
                actual: number,
            }),
            _ => Err(bad()),
        }
    }

    /// Run `scripts/delete_prefix.lua`: delete every key below `prefix` at one revision;
    /// `None` when there was none.
    pub(crate) async fn delete_prefix_script(&self, prefix: &Prefix) -> Result<Option<u64>> {
        let start = prefix.key_start();
        let reply = self
            .run_write(
                ("delete_tree", Retry::Once),
                &self.scripts.delete_prefix,
                &[self.area.as_bytes(), start.as_bytes()],
            )
            .await?;
        let revision = reply
            .int()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| unexpected("delete_tree", format!("unexpected reply {reply:?}")))?;
        Ok((revision > 0).then_some(revision))
    }
}

/// A condition as the scripts take it: its name and the expected revision ('' for none).
fn condition_args(condition: Condition) -> (&'static str, String) {
    match condition {
        Condition::Always => ("always", String::new()),
        Condition::Absent => ("absent", String::new()),
        Condition::Revision(expected) => ("revision", expected.to_string()),
    }
}
