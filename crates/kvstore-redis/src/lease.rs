//! Leases: a sorted set of deadlines on the Redis server's clock, with random ids.
//!
//! Every script first expires due leases (the prelude, `scripts/lib.lua`), and a
//! background reaper does so every [`REAP_INTERVAL`] even when nobody writes. A grant is
//! the standalone `lease_grant` script; a TTL put creates its lease inside the put script.

use std::time::Duration;

use bytes::Bytes;
use kvstore_core::backend::{Condition, LeaseGrant};
use kvstore_core::{Error, Key, KvPair, LeaseId, LeaseLoss, Result};

use crate::BACKEND;
use crate::error::{from_redis, unexpected};
use crate::layout;
use crate::scripts::{Reply, Retry, invocation, run_script, run_write_script};
use crate::store::RedisStore;
use crate::write::Written;

/// How often the background reaper expires leases, so watchers see TTL expiry within
/// this long of the deadline even when nobody reads.
pub const REAP_INTERVAL: Duration = Duration::from_millis(250);

/// Draws of a taken lease id in a row before giving up: with 63-bit ids, a second one
/// means something is wrong.
const MAX_DRAWS: usize = 3;

/// A fresh lease id: a random 63-bit number, never 0. Random rather than a counter, so
/// an id can never alias another client's lease, even after Redis lost its data.
fn random_lease_id() -> LeaseId {
    LeaseId(
        i64::try_from(rand::random::<u64>() >> 1)
            .unwrap_or(1)
            .max(1),
    )
}

/// A lease TTL in whole milliseconds (Redis's granularity), at least 1.
fn lease_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStore {
    /// Expire due leases every [`REAP_INTERVAL`] even when nobody reads, so watchers see
    /// expiry in time.
    pub(crate) fn start_reaper(&self) {
        // The store's parts, not a clone of it: the reaper stops once the last handle on
        // the lifecycle is gone, and a clone held here would be one, forever.
        let (connection, scripts, revision_key, config) = (
            self.connection.clone(),
            self.scripts.clone(),
            self.revision_key.clone(),
            self.config.clone(),
        );
        self.lifecycle.every(REAP_INTERVAL, move || {
            let (connection, scripts, revision_key, config) = (
                connection.clone(),
                scripts.clone(),
                revision_key.clone(),
                config.clone(),
            );
            async move {
                let reaped = run_script(
                    &connection,
                    &invocation(&scripts.reap, &revision_key, &config, 0, &[]),
                    &config,
                    ("reap", Retry::Idempotent),
                )
                .await;
                if let Err(error) = reaped {
                    tracing::debug!(%error, "lease reaper failed; retrying");
                }
            }
        });
    }

    /// One script call (`scripts/put.lua`): the condition is checked first, then the
    /// lease is created (a random id drawn here, as [`RedisStore::grant`]'s) at the same
    /// revision as the write, so a failed condition creates nothing and no one can see
    /// the id before this returns. The lease is detached from the start: not tracked, so
    /// [`Backend::close`] does not revoke it.
    ///
    /// [`Backend::close`]: kvstore_core::backend::Backend::close
    pub(crate) async fn put_on_new_lease(
        &self,
        key: &Key,
        value: Bytes,
        condition: Condition,
        ttl: Duration,
    ) -> Result<KvPair> {
        let millis = lease_millis(ttl);
        for _ in 0..MAX_DRAWS {
            let lease = random_lease_id();
            match self
                .put_script(key, value.clone(), condition, Some(lease), Some(millis))
                .await?
            {
                Written::Pair(pair) => return Ok(pair),
                Written::LeaseTaken => continue,
            }
        }
        Err(unexpected(
            "put",
            format!("{MAX_DRAWS} random lease ids in a row were taken"),
        ))
    }

    /// Lease ids are random 63-bit numbers drawn here, never a counter: a counter starts
    /// again after Redis loses its data, and a holder's keep-alive would then refresh
    /// (or its revoke delete) another client's lease. An unknown id is `LeaseLost`.
    ///
    /// One round trip of one cheap command: the standalone `lease_grant` script (`TIME`,
    /// `ZADD NX`, `HSET`, and `PTTL` of the key that says no lease is due, lowered when
    /// this lease is due sooner), without the prelude the other scripts run. A granted
    /// lease must exist on the server when this returns: the id is the caller's and may
    /// be handed to another client, whose keep-alive must then find the lease (and whose
    /// revoke must end it). A TTL put needs no grant: [`Backend::put_with_ttl`] creates
    /// its lease inside the put script, whose id nobody sees before the put returns.
    ///
    /// [`Backend::put_with_ttl`]: kvstore_core::backend::Backend::put_with_ttl
    pub(crate) async fn grant(&self, ttl: Duration) -> Result<LeaseGrant> {
        let millis = lease_millis(ttl);
        let namespace = &self.config.namespace;
        for _ in 0..MAX_DRAWS {
            let id = random_lease_id();
            self.lifecycle.ensure_open(BACKEND)?;
            let mut invocation = self.scripts.lease_grant.key(layout::leases(namespace));
            invocation
                .key(layout::lease_ttl(namespace))
                .key(layout::lease_next(namespace))
                .arg(millis)
                .arg(id.0);
            let reply = run_write_script(
                &self.connection,
                &invocation,
                &self.config,
                ("grant_lease", Retry::Once),
            )
            .await?;
            let items = reply.items().unwrap_or_default();
            match items.first().and_then(Reply::text).as_deref() {
                Some("ok") => {
                    self.lifecycle.track_lease(id);
                    return Ok(LeaseGrant {
                        id,
                        ttl: Duration::from_millis(millis),
                    });
                }
                Some("taken") => continue,
                _ => {
                    return Err(unexpected(
                        "grant_lease",
                        format!("unexpected reply {reply:?}"),
                    ));
                }
            }
        }
        Err(unexpected(
            "grant_lease",
            format!("{MAX_DRAWS} random lease ids in a row were taken"),
        ))
    }

    /// Refresh `lease`: its TTL, counted again from now, or `LeaseLost` when it is gone.
    pub(crate) async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let reply = self
            .run_write(
                ("keep_alive_lease", Retry::Idempotent),
                &self.scripts.lease_keep_alive,
                &[lease.0.to_string().as_bytes()],
            )
            .await?;
        match reply.int() {
            Some(millis) if millis > 0 => Ok(Duration::from_millis(millis.unsigned_abs())),
            Some(_) => Err(Error::LeaseLost {
                lease,
                reason: LeaseLoss::Expired,
            }),
            None => Err(unexpected(
                "keep_alive_lease",
                format!("unexpected reply {reply:?}"),
            )),
        }
    }

    /// End `lease`, deleting its keys (nothing to do when it is gone already).
    pub(crate) async fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.run_write(
            ("revoke_lease", Retry::Idempotent),
            &self.scripts.lease_revoke,
            &[lease.0.to_string().as_bytes()],
        )
        .await?;
        Ok(())
    }

    /// Whether `lease` is alive by the server's clock, for a read of a key on it: the
    /// standalone `lease_alive` script, without the prelude, since a read must not write.
    pub(crate) async fn lease_alive(&self, operation: &'static str, lease: i64) -> Result<bool> {
        let timeout = self.config.request_timeout;
        let mut check = self
            .scripts
            .lease_alive
            .key(layout::leases(&self.config.namespace));
        check.arg(lease);
        let check = &check;
        let alive: i64 = self
            .connection
            .run_idempotent(
                |mut connection| async move { check.invoke_async(&mut connection).await },
            )
            .await
            .map_err(|e| from_redis(operation, e, timeout))?;
        Ok(alive != 0)
    }
}
