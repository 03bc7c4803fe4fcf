//! tower integration (feature `tower`): an [`InstanceSet`] as a
//! [`tower::discover::Discover`], so tower's balancers route over the live `Up`
//! instances of a service.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use kvstore_discovery::{Discovery, Instance, Registrar};
//! use tower::{Service, ServiceExt};
//! use tower::balance::p2c::Balance;
//! use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
//!
//! let store: Arc<dyn kvstore_core::Store> = Arc::new(kvstore_memory::MemoryStore::new());
//! let _echo = Registrar::new(store.clone())
//!     .register(Instance::new("echo", "echo-1", "127.0.0.1:9001"), Duration::from_secs(10))
//!     .await?;
//! let set = Discovery::new(store).watch("echo").await?;
//!
//! // One service per `Up` instance (here: one that answers with the address it stands for).
//! let discover = set.into_discover(|instance| {
//!     let address = instance.address.clone();
//!     Some(tower::service_fn(move |_request: ()| {
//!         let address = address.clone();
//!         async move { Ok::<_, std::convert::Infallible>(address) }
//!     }))
//! });
//! let mut balance = Balance::new(PendingRequestsDiscover::new(discover, CompleteOnResponse::default()));
//! let answer = balance.ready().await?.call(()).await?;
//! assert_eq!(answer, "127.0.0.1:9001");
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tower::discover::Change;

use crate::instance::{Instance, Status};
use crate::set::{InstanceChange, InstanceSet};

/// The `Up` instances of an [`InstanceSet`] as a stream of
/// [`tower::discover::Change`]s keyed by instance id, which makes it a
/// [`tower::discover::Discover`] ([`InstanceSet::into_discover`]).
///
/// It inserts a service (made by your function) for each `Up` instance, and removes it
/// when the instance leaves or stops being `Up` (`Draining`, `Down`); an instance whose
/// address changes is inserted again (tower replaces the service of a known key). It
/// never fails: while the set is stale it keeps the last known services, as the set
/// does; read [`crate::InstanceReader::health`] (take a reader before converting) to
/// see staleness. It ends when the store is closed.
pub struct ServiceDiscover<F, S> {
    set: InstanceSet,
    make: F,
    /// The address each inserted id was inserted with.
    inserted: HashMap<String, String>,
    pending: VecDeque<Change<String, S>>,
}

impl<F, S> std::fmt::Debug for ServiceDiscover<F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceDiscover")
            .field("set", &self.set)
            .field("inserted", &self.inserted.len())
            .finish_non_exhaustive()
    }
}

impl InstanceSet {
    /// This set as a tower [`tower::discover::Discover`] of the `Up` instances, with one
    /// service per instance made by `make` (`None` skips an instance, e.g. one whose
    /// address the service cannot use). Wrap it in a load measure and a balancer, e.g.
    /// `Balance::new(PendingRequestsDiscover::new(discover, CompleteOnResponse::default()))`
    /// for power-of-two-choices over in-flight requests.
    pub fn into_discover<F, S>(self, make: F) -> ServiceDiscover<F, S>
    where
        F: FnMut(&Instance) -> Option<S>,
    {
        let mut discover = ServiceDiscover {
            set: self,
            make,
            inserted: HashMap::new(),
            pending: VecDeque::new(),
        };
        for instance in discover.set.instances() {
            discover.offer(&instance);
        }
        discover
    }
}

impl<F, S> ServiceDiscover<F, S>
where
    F: FnMut(&Instance) -> Option<S>,
{
    /// Queue what `instance` (present, in this state) means for the balancer.
    fn offer(&mut self, instance: &Arc<Instance>) {
        let id = &instance.id;
        if instance.status != Status::Up {
            self.withdraw(id);
            return;
        }
        if self.inserted.get(id) == Some(&instance.address) {
            return;
        }
        match (self.make)(instance) {
            Some(service) => {
                self.inserted.insert(id.clone(), instance.address.clone());
                self.pending.push_back(Change::Insert(id.clone(), service));
            }
            None => self.withdraw(id),
        }
    }

    fn withdraw(&mut self, id: &str) {
        if self.inserted.remove(id).is_some() {
            self.pending.push_back(Change::Remove(id.to_owned()));
        }
    }
}

// Nothing is pinned structurally: the set is `Unpin` and the rest is plain data.
impl<F, S> Unpin for ServiceDiscover<F, S> {}

impl<F, S> Stream for ServiceDiscover<F, S>
where
    F: FnMut(&Instance) -> Option<S>,
{
    type Item = Result<Change<String, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match Pin::new(&mut self.set).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                // Staleness: keep serving what we have (the set does the same).
                Poll::Ready(Some(Err(_))) => {}
                Poll::Ready(Some(Ok(changes))) => {
                    for change in changes {
                        match change {
                            InstanceChange::Added { instance, .. }
                            | InstanceChange::Updated { instance, .. } => self.offer(&instance),
                            InstanceChange::Removed { instance, .. } => self.withdraw(&instance.id),
                        }
                    }
                }
            }
        }
    }
}
