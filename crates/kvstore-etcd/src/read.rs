//! Reads: one key, or a consistent snapshot of a prefix of any size at one revision,
//! and the kvstore pairs made from etcd's key-values.

use bytes::Bytes;
use etcd_client::{GetOptions, KeyValue};
use kvstore_core::backend::WatchTarget;
use kvstore_core::{Error, KvPair, LeaseId, Result};
use tokio::time::Instant;

use crate::client::Resend;
use crate::store::EtcdStore;

/// Keys per page of a range read. Pages keep each response (and etcd's memory to build
/// it) bounded on prefixes of any size; all pages are read at the first page's revision.
pub(crate) const RANGE_PAGE_KEYS: i64 = 1000;

impl EtcdStore {
    /// A kvstore pair from an etcd key-value under this handle's root.
    pub(crate) fn pair(&self, kv: &KeyValue) -> Option<KvPair> {
        let key = std::str::from_utf8(kv.key())
            .ok()?
            .strip_prefix(&*self.root)?;
        Some(KvPair {
            key: key.to_owned(),
            value: Bytes::copy_from_slice(kv.value()),
            revision: revision(kv.mod_revision()),
            create_revision: revision(kv.create_revision()),
            lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
        })
    }

    /// Read a key or everything below a prefix; returns the pairs and the revision read.
    ///
    /// A prefix is read in pages of [`RANGE_PAGE_KEYS`] keys, every page at the revision
    /// of the first, so the result is one consistent snapshot of any size
    /// ([contract §3](kvstore_core::contract#3-operations) "Any size"). If etcd compacts that revision between pages,
    /// the read starts over at a newer one.
    pub(crate) async fn read(&self, target: &WatchTarget) -> Result<(Vec<KvPair>, u64)> {
        self.read_until(target, None, self.deadline()).await
    }

    /// [`EtcdStore::read`] at revision `at` (the current one if `None`), every page
    /// within `deadline`. If etcd has compacted `at`, the state at the current revision
    /// is read instead: the revision returned is then newer than `at`.
    pub(crate) async fn read_until(
        &self,
        target: &WatchTarget,
        at: Option<u64>,
        deadline: Instant,
    ) -> Result<(Vec<KvPair>, u64)> {
        let mut requested = at.map(|at| i64::try_from(at).unwrap_or(i64::MAX));
        let prefix = match target {
            WatchTarget::Key(key) => {
                let key = self.etcd_key(key.as_str());
                loop {
                    let at = requested;
                    let response = self
                        .call_until("get", Resend::Read, deadline, |mut clients| {
                            let key = key.clone();
                            let options = at.map(|at| GetOptions::new().with_revision(at));
                            async move { clients.kv.get(key, options).await }
                        })
                        .await;
                    let response = match response {
                        Err(error) if at.is_some() && is_compacted(&error) => {
                            requested = None;
                            continue;
                        }
                        other => other?,
                    };
                    let pairs = response.kvs().iter().filter_map(|kv| self.pair(kv));
                    let read_at = at.map_or_else(|| header_revision(response.header()), revision);
                    return Ok((pairs.collect(), read_at));
                }
            }
            WatchTarget::Prefix(prefix) => prefix,
        };
        let first_key = self.etcd_key(&prefix.key_start()).into_bytes();
        let end = prefix_end(&first_key);
        /// Starting over after a compaction between pages more often than this means
        /// compaction outruns the read: report it.
        const MAX_RESTARTS: usize = 3;
        let mut restarts = 0;
        'snapshot: loop {
            let mut pairs = Vec::new();
            // A restart after a compaction reads at the current revision.
            let mut read_at: Option<i64> = requested.take();
            let mut start = first_key.clone();
            loop {
                let mut options = GetOptions::new()
                    .with_range(end.clone())
                    .with_limit(RANGE_PAGE_KEYS);
                if let Some(at) = read_at {
                    options = options.with_revision(at);
                }
                let page = self
                    .call_until("list", Resend::Read, deadline, |mut clients| {
                        let (start, options) = (start.clone(), options.clone());
                        async move { clients.kv.get(start, Some(options)).await }
                    })
                    .await;
                let page = match page {
                    Err(error) if is_compacted(&error) && restarts < MAX_RESTARTS => {
                        restarts += 1;
                        continue 'snapshot;
                    }
                    other => other?,
                };
                let at = *read_at.get_or_insert(page.header().map_or(0, |h| h.revision()));
                pairs.extend(page.kvs().iter().filter_map(|kv| self.pair(kv)));
                match page.kvs().last() {
                    Some(last) if page.more() => {
                        // The next page starts just after the last key of this one.
                        start = last.key().to_vec();
                        start.push(0);
                    }
                    _ => return Ok((pairs, revision(at))),
                }
            }
        }
    }
}

/// Whether etcd refused a read at a revision it has compacted.
fn is_compacted(error: &Error) -> bool {
    match error {
        Error::Backend { source, .. } => source.to_string().contains("compacted"),
        _ => false,
    }
}

/// The end of etcd's range of every key starting with `start` (etcd's `GetPrefix`):
/// `start` with its last byte below 0xff incremented, the rest dropped.
fn prefix_end(start: &[u8]) -> Vec<u8> {
    let mut end = start.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte is 0xff: the range runs to the end of the keyspace.
    vec![0]
}

/// etcd revisions are `i64` and never negative.
pub(crate) fn revision(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| revision(h.revision()))
}
