//! The snapshot cache: the last known instance set of each watched service, kept in a
//! directory so a consumer can start while the registry is down (as Nacos's failover
//! cache, `naming/{namespace}/failover`).
//!
//! One file per service, `{dir}/{service}.json`, written atomically (a temporary file
//! renamed over the old one) at most every [`CACHE_WRITE_INTERVAL`] while the set
//! changes. Use one directory per store and namespace: the files are named by service
//! only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::instance::Instance;
use crate::record::Member;

/// The least time between two writes of one service's cache file.
pub const CACHE_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// The version of the cache file's format.
const CACHE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    service: String,
    revision: u64,
    instances: Vec<CachedInstance>,
}

#[derive(Serialize, Deserialize)]
struct CachedInstance {
    revision: u64,
    instance: Instance,
}

/// A service's cached snapshot, as read back.
pub(crate) struct Cached {
    pub revision: u64,
    pub members: Vec<(String, Member)>,
}

/// One service's cache file.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotCache {
    path: PathBuf,
    service: String,
}

impl SnapshotCache {
    pub(crate) fn new(dir: &Path, service: &str) -> SnapshotCache {
        SnapshotCache {
            path: dir.join(format!("{service}.json")),
            service: service.to_owned(),
        }
    }

    /// The cached snapshot; `None` (with a warning for a damaged file) when there is
    /// none to use.
    pub(crate) async fn load(&self) -> Option<Cached> {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the discovery cache");
                return None;
            }
        };
        let file: CacheFile = match serde_json::from_slice(&bytes) {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "ignoring a damaged discovery cache file");
                return None;
            }
        };
        if file.version != CACHE_VERSION || file.service != self.service {
            tracing::warn!(path = %self.path.display(), "ignoring a discovery cache file of another version or service");
            return None;
        }
        Some(Cached {
            revision: file.revision,
            members: file
                .instances
                .into_iter()
                .filter(|cached| cached.instance.service == self.service)
                .map(|cached| {
                    (
                        cached.instance.id.clone(),
                        Member {
                            instance: Arc::new(cached.instance),
                            revision: cached.revision,
                        },
                    )
                })
                .collect(),
        })
    }

    /// Replace the cached snapshot with `members` at `revision`.
    pub(crate) async fn store(&self, revision: u64, members: Vec<Member>) -> std::io::Result<()> {
        let file = CacheFile {
            version: CACHE_VERSION,
            service: self.service.clone(),
            revision,
            instances: members
                .into_iter()
                .map(|member| CachedInstance {
                    revision: member.revision,
                    instance: Instance::clone(&member.instance),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        if let Some(dir) = self.path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let temporary = self.path.with_extension("json.tmp");
        tokio::fs::write(&temporary, bytes).await?;
        tokio::fs::rename(&temporary, &self.path).await
    }
}
