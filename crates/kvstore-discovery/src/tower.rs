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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::time::{Instant, Sleep};
use tokio_stream::wrappers::WatchStream;
use tower::discover::Change;

use crate::instance::{Instance, Status};
use crate::outlier::OutlierDetector;
use crate::set::{InstanceChange, InstanceSet};

/// How far ahead the ejection timer sleeps while nothing is ejected.
const IDLE_TIMER: Duration = Duration::from_secs(3600);

/// The `Up` instances of an [`InstanceSet`] as a stream of
/// [`tower::discover::Change`]s keyed by instance id, which makes it a
/// [`tower::discover::Discover`] ([`InstanceSet::into_discover`]).
///
/// It inserts a service (made by your function) for each `Up` instance, and removes it
/// when the instance leaves or stops being `Up` (`Draining`, `Down`); an instance whose
/// address changes is inserted again (tower replaces the service of a known key). With
/// [`ServiceDiscover::with_outlier_detection`] it also removes an instance while an
/// [`OutlierDetector`] ejects it, and inserts it again when the ejection ends. It never
/// fails: while the set is stale it keeps the last known services, as the set does;
/// read [`crate::InstanceReader::health`] (take a reader before converting) to see
/// staleness. It ends when the store is closed.
pub struct ServiceDiscover<F, S> {
    set: InstanceSet,
    make: F,
    /// The `Up` instances, inserted or held out by ejection.
    offered: BTreeMap<String, Arc<Instance>>,
    /// The address each inserted id was inserted with.
    inserted: HashMap<String, String>,
    pending: VecDeque<Change<String, S>>,
    ejection: Option<Ejection>,
}

/// What [`ServiceDiscover`] needs to follow an outlier detector.
struct Ejection {
    detector: OutlierDetector,
    /// Wakes on every ejection.
    ejections: WatchStream<u64>,
    /// Wakes when the next ejection ends.
    timer: Pin<Box<Sleep>>,
}

impl<F, S> std::fmt::Debug for ServiceDiscover<F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceDiscover")
            .field("set", &self.set)
            .field("inserted", &self.inserted.len())
            .field("offered", &self.offered.len())
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
            offered: BTreeMap::new(),
            inserted: HashMap::new(),
            pending: VecDeque::new(),
            ejection: None,
        };
        for instance in discover.set.instances() {
            discover.offer(&instance);
        }
        discover.reconcile_all();
        discover
    }
}

impl<F, S> ServiceDiscover<F, S>
where
    F: FnMut(&Instance) -> Option<S>,
{
    /// Also keep out the instances `detector` ejects: each is removed from the
    /// balancer while ejected and inserted again (with a new service) when its
    /// ejection ends. Report every request's outcome to the detector
    /// ([`OutlierDetector::record`]) from the services `make` builds.
    pub fn with_outlier_detection(mut self, detector: OutlierDetector) -> ServiceDiscover<F, S> {
        self.ejection = Some(Ejection {
            ejections: WatchStream::new(detector.changes()),
            timer: Box::pin(tokio::time::sleep(IDLE_TIMER)),
            detector,
        });
        self.reconcile_all();
        self
    }

    /// Take in what `instance` (present, in this state) means for the balancer; applied
    /// by the next [`ServiceDiscover::reconcile_all`].
    fn offer(&mut self, instance: &Arc<Instance>) {
        if instance.status == Status::Up {
            self.offered.insert(instance.id.clone(), instance.clone());
        } else {
            self.offered.remove(&instance.id);
        }
    }

    /// The ids the detector lets the balancer pick among the offered instances (all of
    /// them without a detector).
    fn pickable(&self) -> Option<HashSet<String>> {
        let ejection = self.ejection.as_ref()?;
        let offered: Vec<Arc<Instance>> = self.offered.values().cloned().collect();
        Some(
            ejection
                .detector
                .pickable(&offered)
                .iter()
                .map(|i| i.id.clone())
                .collect(),
        )
    }

    fn reconcile_with(&mut self, id: &str, pickable: Option<&HashSet<String>>) {
        let Some(instance) = self.offered.get(id).cloned() else {
            self.withdraw(id);
            return;
        };
        if pickable.is_some_and(|pickable| !pickable.contains(id)) {
            self.withdraw(id);
            return;
        }
        if self.inserted.get(id) == Some(&instance.address) {
            return;
        }
        match (self.make)(&instance) {
            Some(service) => {
                self.inserted
                    .insert(id.to_owned(), instance.address.clone());
                self.pending
                    .push_back(Change::Insert(id.to_owned(), service));
            }
            None => self.withdraw(id),
        }
    }

    /// Insert or remove every instance as the offers and the detector say: whether one
    /// instance may be picked depends on the others (the cap is a share of the set).
    fn reconcile_all(&mut self) {
        let pickable = self.pickable();
        let gone: Vec<String> = self
            .inserted
            .keys()
            .filter(|id| !self.offered.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.withdraw(&id);
        }
        let ids: Vec<String> = self.offered.keys().cloned().collect();
        for id in ids {
            self.reconcile_with(&id, pickable.as_ref());
        }
    }

    fn withdraw(&mut self, id: &str) {
        if self.inserted.remove(id).is_some() {
            self.pending.push_back(Change::Remove(id.to_owned()));
        }
    }

    /// Apply ejections and returns since the last poll; registers wake-ups for the next.
    fn follow_ejections(&mut self, cx: &mut Context<'_>) {
        let Some(ejection) = self.ejection.as_mut() else {
            return;
        };
        let mut changed = false;
        while let Poll::Ready(Some(_)) = Pin::new(&mut ejection.ejections).poll_next(cx) {
            changed = true;
        }
        if ejection.timer.as_mut().poll(cx).is_ready() {
            changed = true;
        }
        if changed {
            let next = ejection
                .detector
                .next_return()
                .unwrap_or_else(|| Instant::now() + IDLE_TIMER);
            ejection.timer.as_mut().reset(next);
            // Registers the timer's waker for the new deadline.
            let _ = ejection.timer.as_mut().poll(cx);
            self.reconcile_all();
        }
    }
}

// Nothing is pinned structurally: the set is `Unpin`, the timer is boxed and the rest
// is plain data.
impl<F, S> Unpin for ServiceDiscover<F, S> {}

impl<F, S> Stream for ServiceDiscover<F, S>
where
    F: FnMut(&Instance) -> Option<S>,
{
    type Item = Result<Change<String, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            self.follow_ejections(cx);
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
                            InstanceChange::Removed { instance, .. } => {
                                self.offered.remove(&instance.id);
                            }
                        }
                    }
                    self.reconcile_all();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Discovery, Failure, Outcome, OutlierOptions, Registrar};
    use futures::StreamExt;
    use kvstore_core::Store;

    #[tokio::test(start_paused = true)]
    async fn an_ejected_instance_is_removed_and_inserted_again_when_its_ejection_ends() {
        let store: Arc<dyn Store> = Arc::new(kvstore_memory::MemoryStore::new());
        let registrar = Registrar::new(store.clone());
        let ttl = Duration::from_secs(60);
        let _a = registrar
            .register(Instance::new("svc", "a", "127.0.0.1:1"), ttl)
            .await
            .unwrap();
        let _b = registrar
            .register(Instance::new("svc", "b", "127.0.0.1:2"), ttl)
            .await
            .unwrap();
        let set = Discovery::new(store).watch("svc").await.unwrap();
        let detector = OutlierDetector::new(set.reader(), OutlierOptions::default());
        let a = set.instances()[0].clone();
        let mut discover = set
            .into_discover(|i: &Instance| Some(i.id.clone()))
            .with_outlier_detection(detector.clone());
        let mut next = async || match discover.next().await {
            Some(Ok(Change::Insert(id, _))) => format!("insert {id}"),
            Some(Ok(Change::Remove(id))) => format!("remove {id}"),
            None => "end".to_owned(),
        };
        assert_eq!(next().await, "insert a");
        assert_eq!(next().await, "insert b");
        detector.record(&a, Outcome::Failed(Failure::Refused));
        let ejected_at = Instant::now();
        assert_eq!(next().await, "remove a");
        assert_eq!(next().await, "insert a");
        assert_eq!(
            ejected_at.elapsed(),
            OutlierOptions::default().base_ejection_time
        );
    }
}
