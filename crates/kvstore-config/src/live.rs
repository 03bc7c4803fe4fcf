//! [`LiveConfig`]: a key's value as a live, validated `Arc<T>`.

use std::fmt;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use kvstore_core::{KvPair, Store};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::options::{ConfigOptions, Missing};

/// Why a configuration could not be started or followed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The key does not exist and the options say that is an error.
    #[error("config key {key:?} does not exist")]
    Missing {
        /// The key.
        key: String,
    },
    /// The key's value does not parse or is refused by the validation hook.
    #[error("config key {key:?} at revision {revision} was refused: {reason}")]
    Invalid {
        /// The key.
        key: String,
        /// The revision of the refused value.
        revision: u64,
        /// What the parser or the validation hook said.
        reason: String,
    },
    /// The store failed (unreachable at start, closed, ...).
    #[error(transparent)]
    Store(#[from] kvstore_core::Error),
    /// The watch ended: the store was closed.
    #[error("the watch of config key {key:?} ended: the store was closed")]
    Ended {
        /// The key.
        key: String,
    },
}

/// Where a live configuration stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// The value in use is the key's value at this revision.
    Applied {
        /// The revision of the value in use.
        revision: u64,
    },
    /// The key is missing and the default is in use.
    Default,
    /// The latest value was refused; the last good one is still in use.
    Rejected {
        /// The revision of the refused value.
        revision: u64,
        /// Why it was refused.
        reason: String,
    },
    /// The key was deleted and the options say a missing key is an error; the last good
    /// value is still in use.
    Missing,
    /// The watch reported an error (it goes on trying); the last good value is in use.
    Failed {
        /// The error.
        error: String,
    },
}

/// What the follower publishes: the value in use, how it stands, and a count of the
/// values accepted so far (so [`LiveConfig::changed`] can tell a new value from a new
/// status).
struct Published<T> {
    value: Arc<T>,
    status: Status,
    accepted: u64,
}

/// A key's value as a live, typed, validated `Arc<T>` ([contract §12](kvstore_core::contract#12-typed-live-configuration)). Follows the
/// key until dropped.
pub struct LiveConfig<T> {
    key: String,
    published: watch::Receiver<Published<T>>,
    /// How many accepted values this handle has returned from `changed`.
    seen: u64,
    follower: JoinHandle<()>,
}

impl<T> fmt::Debug for LiveConfig<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveConfig")
            .field("key", &self.key)
            .field("status", &self.published.borrow().status)
            .finish_non_exhaustive()
    }
}

impl<T> Drop for LiveConfig<T> {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// Turns a key's states into accepted values or reasons to refuse them.
struct Decoder<T> {
    key: String,
    options: ConfigOptions<T>,
}

impl<T: DeserializeOwned> Decoder<T> {
    fn decode(&self, pair: &KvPair) -> Result<T, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            key: self.key.clone(),
            revision: pair.revision,
            reason,
        };
        let value: T = self.options.format.parse(&pair.value).map_err(invalid)?;
        if let Some(check) = &self.options.validator {
            check(&value).map_err(invalid)?;
        }
        Ok(value)
    }

    fn missing(&self) -> Option<T> {
        match &self.options.missing {
            Missing::Error => None,
            Missing::Default(make) => Some(make()),
        }
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> LiveConfig<T> {
    /// Start following `key` of `store`: read it now (so an error is returned here, not
    /// found later), then apply every change pushed by a watch.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] when the key is absent and the options say that is an
    /// error; [`ConfigError::Invalid`] when its value does not parse or validate (there
    /// is no last good value yet); [`ConfigError::Store`] for the store's errors
    /// (`InvalidKey`, `Unavailable`, `Unsupported` without watches...).
    pub async fn watch(
        store: Arc<dyn Store>,
        key: &str,
        options: ConfigOptions<T>,
    ) -> Result<LiveConfig<T>, ConfigError> {
        let decoder = Decoder {
            key: key.to_owned(),
            options,
        };
        let mut states = store.watch(key).await?;
        let first = match states.next().await {
            Some(state) => state?,
            None => {
                return Err(ConfigError::Ended {
                    key: key.to_owned(),
                });
            }
        };
        let (value, status) = match first {
            Some(pair) => (
                decoder.decode(&pair)?,
                Status::Applied {
                    revision: pair.revision,
                },
            ),
            None => match decoder.missing() {
                Some(value) => (value, Status::Default),
                None => {
                    return Err(ConfigError::Missing {
                        key: key.to_owned(),
                    });
                }
            },
        };
        let (publish, published) = watch::channel(Published {
            value: Arc::new(value),
            status,
            accepted: 0,
        });
        let follower = tokio::spawn(follow(states, decoder, publish));
        Ok(LiveConfig {
            key: key.to_owned(),
            published,
            seen: 0,
            follower,
        })
    }

    /// The value in use now: the last good one.
    pub fn get(&self) -> Arc<T> {
        self.published.borrow().value.clone()
    }

    /// How the configuration stands: the revision applied, or why the latest value was
    /// refused.
    pub fn status(&self) -> Status {
        self.published.borrow().status.clone()
    }

    /// The key followed.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Wait for the next value accepted after the last one this handle returned (or
    /// after it started), and return it. Refused values do not wake it.
    ///
    /// # Errors
    /// [`ConfigError::Ended`] when the store was closed.
    pub async fn changed(&mut self) -> Result<Arc<T>, ConfigError> {
        let seen = self.seen;
        let published = self
            .published
            .wait_for(|p| p.accepted > seen)
            .await
            .map_err(|_| ConfigError::Ended {
                key: self.key.clone(),
            })?;
        self.seen = published.accepted;
        Ok(published.value.clone())
    }
}

/// Apply each state of the key until the watch ends (the store closed or the handle
/// dropped).
async fn follow<T: DeserializeOwned>(
    mut states: BoxStream<'static, kvstore_core::Result<Option<KvPair>>>,
    decoder: Decoder<T>,
    publish: watch::Sender<Published<T>>,
) {
    while let Some(state) = states.next().await {
        let update = match state {
            Ok(Some(pair)) => match decoder.decode(&pair) {
                Ok(value) => Ok((
                    value,
                    Status::Applied {
                        revision: pair.revision,
                    },
                )),
                Err(error) => {
                    tracing::warn!(key = %decoder.key, %error, "config update refused; keeping the last good value");
                    let reason = match error {
                        ConfigError::Invalid { reason, .. } => reason,
                        other => other.to_string(),
                    };
                    Err(Status::Rejected {
                        revision: pair.revision,
                        reason,
                    })
                }
            },
            Ok(None) => match decoder.missing() {
                Some(value) => Ok((value, Status::Default)),
                None => {
                    tracing::warn!(key = %decoder.key, "config key deleted; keeping the last good value");
                    Err(Status::Missing)
                }
            },
            Err(error) => {
                tracing::warn!(key = %decoder.key, %error, "config watch failed; it goes on trying");
                Err(Status::Failed {
                    error: error.to_string(),
                })
            }
        };
        publish.send_modify(|published| match update {
            Ok((value, status)) => {
                published.value = Arc::new(value);
                published.status = status;
                published.accepted += 1;
            }
            Err(status) => published.status = status,
        });
    }
}
