//! Leases as data: ZooKeeper has sessions, not leases, so a lease is a znode
//! `/{ns}/leases/<id>` holding its TTL, whose `mtime` (stamped by the ensemble's leader)
//! is when it was last kept alive. It expires at `mtime + TTL` on the server's clock.
//! Each key on a lease has a membership znode below it, written in the key's `multi`, so
//! ending a lease finds its keys. Every client of a namespace runs a reaper that ends
//! expired leases: their keys, memberships and the lease znode are deleted in one
//! `multi` with a change-log entry, so watchers see the deletes.
//!
//! The server's time is read from the `mtime` of the store's own writes (a write of a
//! clock znode when none is recent), plus the local monotonic time since: a bound that
//! is late by at most the round trip of that write. Expiry is decided with the earliest
//! possible server time, so a lease is never reaped before its deadline, and reads hide
//! keys by the latest possible time, so an expired key is never returned.

use std::time::Duration;

use kvstore_core::backend::LeaseGrant;
use kvstore_core::{Error, LeaseId, LeaseLoss, Result};
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::error::{from_zk, unexpected};
use crate::layout;
use crate::read::LeaseState;
use crate::store::{Batched, Victim, ZooKeeperStore};

/// Draws of a taken lease id in a row before giving up: with 63-bit ids, a second one
/// means something is wrong.
const MAX_DRAWS: usize = 3;

fn lost(lease: LeaseId) -> Error {
    Error::LeaseLost {
        lease,
        reason: LeaseLoss::Expired,
    }
}

impl ZooKeeperStore {
    /// Create a lease with a random 63-bit id (never a counter: ids must never alias,
    /// even after the namespace was wiped).
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<LeaseGrant> {
        const OPERATION: &str = "grant_lease";
        let millis = u64::try_from(ttl.as_nanos().div_ceil(1_000_000))
            .unwrap_or(u64::MAX)
            .max(1);
        let options = zk::CreateMode::Persistent.with_acls(self.acls());
        let timeout = self.config.request_timeout;
        for _ in 0..MAX_DRAWS {
            let id = LeaseId(
                i64::try_from(rand::random::<u64>() >> 1)
                    .unwrap_or(1)
                    .max(1),
            );
            let client = self.session.client().await?;
            let sent = Instant::now();
            match client
                .create(
                    &self.paths.lease(id),
                    millis.to_string().as_bytes(),
                    &options,
                )
                .await
            {
                Ok((stat, _)) => {
                    self.session.observe_clock(stat.mtime, sent);
                    self.lifecycle.track_lease(id);
                    return Ok(LeaseGrant {
                        id,
                        ttl: Duration::from_millis(millis),
                    });
                }
                Err(zk::Error::NodeExists) => continue,
                Err(zk::Error::NoNode) => self.ensure_structure().await?,
                Err(error) => return Err(from_zk(OPERATION, error, timeout)),
            }
        }
        Err(unexpected(
            OPERATION,
            format!("{MAX_DRAWS} random lease ids in a row were taken"),
        ))
    }

    async fn read_lease(
        &self,
        lease: LeaseId,
        operation: &'static str,
    ) -> Result<Option<LeaseState>> {
        Ok(self
            .read_leases(&[lease], operation)
            .await?
            .into_iter()
            .next()
            .flatten())
    }

    /// The version of `lease` if it exists and has not expired, for a write that
    /// attaches a key to it to check in its `multi`.
    pub(crate) async fn live_lease_version(
        &self,
        lease: LeaseId,
        operation: &'static str,
    ) -> Result<i32> {
        let state = self
            .read_lease(lease, operation)
            .await?
            .ok_or_else(|| lost(lease))?;
        let (earliest, _) = self.server_now().await?;
        if earliest >= state.deadline_ms() {
            return Err(lost(lease));
        }
        Ok(state.version)
    }

    /// Refresh `lease` once: a `setData` of its znode (moving its `mtime`), checked
    /// against the version read, so an expired lease is never brought back. A refresh
    /// that the server stamped after the deadline ends the lease instead.
    pub(crate) async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        const OPERATION: &str = "keep_alive_lease";
        let timeout = self.config.request_timeout;
        loop {
            let state = self
                .read_lease(lease, OPERATION)
                .await?
                .ok_or_else(|| lost(lease))?;
            let (earliest, _) = self.server_now().await?;
            if earliest >= state.deadline_ms() {
                self.end_lease(lease, Some(state.version), OPERATION)
                    .await?;
                return Err(lost(lease));
            }
            let client = self.session.client().await?;
            let sent = Instant::now();
            let data = state.ttl_ms.to_string();
            match client
                .set_data(
                    &self.paths.lease(lease),
                    data.as_bytes(),
                    Some(state.version),
                )
                .await
            {
                Ok(stat) => {
                    self.session.observe_clock(stat.mtime, sent);
                    if stat.mtime >= state.deadline_ms() {
                        self.end_lease(lease, Some(stat.version), OPERATION).await?;
                        return Err(lost(lease));
                    }
                    let ttl = u64::try_from(state.ttl_ms).unwrap_or(0);
                    return Ok(Duration::from_millis(ttl));
                }
                Err(zk::Error::BadVersion) => continue,
                Err(zk::Error::NoNode) => return Err(lost(lease)),
                Err(error) => return Err(from_zk(OPERATION, error, timeout)),
            }
        }
    }

    /// End `lease`: delete its keys, their memberships and the lease, with a log entry
    /// (in batches if its keys do not fit one `multi`). With `guard`, only if the lease's
    /// version is still that one (it was not refreshed since it was found expired). A
    /// lease that no longer exists is already ended.
    pub(crate) async fn end_lease(
        &self,
        lease: LeaseId,
        guard: Option<i32>,
        operation: &'static str,
    ) -> Result<()> {
        let path = self.paths.lease(lease);
        loop {
            let members = self
                .session
                .read(operation, |client| {
                    let path = path.clone();
                    async move {
                        match client.list_children(&path).await {
                            Ok(children) => Ok(Some(children)),
                            Err(zk::Error::NoNode) => Ok(None),
                            Err(error) => Err(error),
                        }
                    }
                })
                .await?;
            let Some(members) = members else {
                return Ok(());
            };
            let mut victims = Vec::new();
            for name in &members {
                let Some((area, key)) = layout::parse_member(name) else {
                    continue;
                };
                let current = self.read_key(area, &key, operation).await?;
                let version = current.and_then(|(data, stat)| {
                    let (_, owner) = layout::decode_record(data);
                    (owner == Some(lease)).then_some(stat.version)
                });
                victims.push(Victim {
                    area,
                    key,
                    version,
                    membership: Some(lease),
                });
            }
            let checked = guard.map(|version| (path.as_str(), version));
            match self
                .delete_batched(operation, &victims, Some((path.as_str(), guard)), checked)
                .await?
            {
                Batched::Done(_) => return Ok(()),
                // Refreshed since it was found expired: it lives on.
                Batched::Conflict if guard.is_some() => return Ok(()),
                Batched::Conflict => continue,
            }
        }
    }

    /// End every lease whose deadline has passed by the earliest possible server time.
    pub(crate) async fn reap_leases(&self) -> Result<()> {
        const OPERATION: &str = "reap";
        let parent = self.paths.leases();
        let names = self
            .session
            .read(OPERATION, |client| {
                let parent = parent.clone();
                async move { client.list_children(&parent).await }
            })
            .await?;
        let leases: Vec<LeaseId> = names
            .iter()
            .filter_map(|name| i64::from_str_radix(name, 16).ok().map(LeaseId))
            .collect();
        if leases.is_empty() {
            return Ok(());
        }
        let states = self.read_leases(&leases, OPERATION).await?;
        let (earliest, _) = self.server_now().await?;
        for (lease, state) in leases.into_iter().zip(states) {
            let Some(state) = state else { continue };
            if earliest < state.deadline_ms() {
                continue;
            }
            if let Err(error) = self.end_lease(lease, Some(state.version), OPERATION).await {
                tracing::debug!(%lease, %error, "expiring a lease failed; retrying later");
            }
        }
        Ok(())
    }
}
