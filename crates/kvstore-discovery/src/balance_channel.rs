//! tonic integration (feature `tonic`): a gRPC [`Channel`] balanced over the live `Up`
//! instances of a service, fed from an [`InstanceSet`] through
//! [`Channel::balance_channel`].
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn kvstore_core::Store>) -> kvstore_core::Result<()> {
//! use kvstore_discovery::{Discovery, http_endpoint};
//!
//! let set = Discovery::new(store).watch("greeter").await?;
//! let (channel, _feed) = set.into_balance_channel(http_endpoint);
//! // let mut client = GreeterClient::new(channel); // keep `_feed` alive while you call
//! # let _ = channel;
//! # Ok(()) }
//! ```

use futures::StreamExt;
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::channel::Change as ChannelChange;
use tonic::transport::{Channel, Endpoint};
use tower::discover::Change;

use crate::instance::Instance;
use crate::set::InstanceSet;

/// How many endpoint changes may wait for the channel's balancer to take them.
pub const BALANCE_CHANNEL_CAPACITY: usize = 64;

/// The task that feeds a balanced channel with the set's changes. Keep it while the
/// channel is used: dropping it stops the feed, and the channel then keeps the endpoints
/// it had.
#[derive(Debug)]
pub struct BalanceFeed {
    _task: AbortOnDropHandle<()>,
}

/// `http://{address}`: a plaintext endpoint for `instance`, or `None` (with a warning)
/// when its address does not make a URI. Build your own (TLS, timeouts, keep-alive)
/// with [`Endpoint::from_shared`] for anything else.
pub fn http_endpoint(instance: &Instance) -> Option<Endpoint> {
    match Endpoint::from_shared(format!("http://{}", instance.address)) {
        Ok(endpoint) => Some(endpoint),
        Err(e) => {
            tracing::warn!(instance = %instance.id, address = %instance.address, error = %e, "not a usable gRPC endpoint");
            None
        }
    }
}

impl InstanceSet {
    /// A tonic [`Channel`] that balances calls over the `Up` instances of this set (the
    /// endpoint of each made by `endpoint`, e.g. [`http_endpoint`]), following every
    /// change: [`Channel::balance_channel`] fed by [`InstanceSet::into_discover`]. Calls
    /// go to ready endpoints by tower's power of two choices; an instance that leaves or
    /// stops being `Up` gets no new calls.
    ///
    /// Returns the channel (cheap to clone) and the feed task's handle: keep the handle
    /// while the channel is in use.
    pub fn into_balance_channel<F>(self, endpoint: F) -> (Channel, BalanceFeed)
    where
        F: FnMut(&Instance) -> Option<Endpoint> + Send + 'static,
    {
        let (channel, sender) = Channel::balance_channel::<String>(BALANCE_CHANNEL_CAPACITY);
        let mut changes = self.into_discover(endpoint);
        let task = tokio::spawn(async move {
            while let Some(Ok(change)) = changes.next().await {
                let change = match change {
                    Change::Insert(id, endpoint) => ChannelChange::Insert(id, endpoint),
                    Change::Remove(id) => ChannelChange::Remove(id),
                };
                if sender.send(change).await.is_err() {
                    // Every clone of the channel is gone.
                    return;
                }
            }
        });
        (
            channel,
            BalanceFeed {
                _task: AbortOnDropHandle::new(task),
            },
        )
    }
}
