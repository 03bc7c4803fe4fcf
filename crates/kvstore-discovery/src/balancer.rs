//! Balancers: pick one `Up` instance for a request, from a set's
//! [`crate::InstanceSet::instances`] ([contract §9](kvstore_core::contract#9-discovery)). For load-aware balancing
//! (power of two choices over in-flight requests) use tower's `p2c::Balance` through
//! [`crate::InstanceSet::into_discover`] (feature `tower`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use crate::instance::{Instance, Status};

/// Picks an instance among those with status `Up`; `None` when there is none.
pub trait Balancer: Send + Sync {
    /// One `Up` instance of `instances`.
    fn pick<'a>(&self, instances: &'a [Arc<Instance>]) -> Option<&'a Arc<Instance>>;
}

fn up(instances: &[Arc<Instance>]) -> impl Iterator<Item = &Arc<Instance>> {
    instances.iter().filter(|i| i.status == Status::Up)
}

/// Each `Up` instance in turn (by position in the list, which is sorted by id).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn pick<'a>(&self, instances: &'a [Arc<Instance>]) -> Option<&'a Arc<Instance>> {
        let count = up(instances).count();
        if count == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % count;
        up(instances).nth(turn)
    }
}

/// A uniformly random `Up` instance.
#[derive(Debug, Default)]
pub struct Random;

impl Balancer for Random {
    fn pick<'a>(&self, instances: &'a [Arc<Instance>]) -> Option<&'a Arc<Instance>> {
        let count = up(instances).count();
        if count == 0 {
            return None;
        }
        up(instances).nth(rand::rng().random_range(0..count))
    }
}

/// A random `Up` instance, each with probability proportional to its weight; instances
/// of weight 0 are never picked.
#[derive(Debug, Default)]
pub struct WeightedRandom;

impl Balancer for WeightedRandom {
    fn pick<'a>(&self, instances: &'a [Arc<Instance>]) -> Option<&'a Arc<Instance>> {
        let total: u64 = up(instances).map(|i| u64::from(i.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut ticket = rand::rng().random_range(0..total);
        up(instances).find(|i| {
            let weight = u64::from(i.weight);
            if ticket < weight {
                true
            } else {
                ticket -= weight;
                false
            }
        })
    }
}

/// Same zone first: picks with `inner` among the `Up` instances in `zone`, and among
/// all instances only when that zone has no `Up` instance (the locality-aware routing of
/// Envoy and gRPC xDS, without weights between zones). Instances without a zone count as
/// another zone.
#[derive(Debug, Default)]
pub struct ZonePreferring<B> {
    zone: String,
    inner: B,
}

impl<B: Balancer> ZonePreferring<B> {
    /// Prefer instances whose [`Instance::zone`] is `zone`, choosing among them (or
    /// among all, as a fallback) with `inner`.
    pub fn new(zone: impl Into<String>, inner: B) -> ZonePreferring<B> {
        ZonePreferring {
            zone: zone.into(),
            inner,
        }
    }

    /// The preferred zone.
    pub fn zone(&self) -> &str {
        &self.zone
    }
}

impl<B: Balancer> Balancer for ZonePreferring<B> {
    fn pick<'a>(&self, instances: &'a [Arc<Instance>]) -> Option<&'a Arc<Instance>> {
        let local: Vec<Arc<Instance>> = up(instances)
            .filter(|i| i.zone.as_deref() == Some(self.zone.as_str()))
            .cloned()
            .collect();
        if local.is_empty() {
            return self.inner.pick(instances);
        }
        let chosen = self.inner.pick(&local)?;
        instances.iter().find(|i| Arc::ptr_eq(i, chosen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instances() -> Vec<Arc<Instance>> {
        let mut list: Vec<Instance> = (0..3)
            .map(|i| Instance::new("svc", format!("i{i}"), format!("127.0.0.1:{}", 9000 + i)))
            .collect();
        list[1].status = Status::Draining;
        list.into_iter().map(Arc::new).collect()
    }

    fn zoned(zones: &[(&str, Option<&str>, Status)]) -> Vec<Arc<Instance>> {
        zones
            .iter()
            .map(|(id, zone, status)| {
                let mut instance = Instance::new("svc", *id, "127.0.0.1:1");
                instance.zone = zone.map(str::to_owned);
                instance.status = *status;
                Arc::new(instance)
            })
            .collect()
    }

    #[test]
    fn zone_preferring_stays_in_its_zone_while_it_has_an_up_instance() {
        let list = zoned(&[
            ("a1", Some("a"), Status::Up),
            ("a2", Some("a"), Status::Up),
            ("b1", Some("b"), Status::Up),
            ("none", None, Status::Up),
        ]);
        let balancer = ZonePreferring::new("a", RoundRobin::default());
        let picked: Vec<&str> = (0..4)
            .map(|_| balancer.pick(&list).unwrap().id.as_str())
            .collect();
        assert_eq!(picked, ["a1", "a2", "a1", "a2"]);
    }

    #[test]
    fn zone_preferring_falls_back_to_every_zone_when_its_own_has_no_up_instance() {
        let list = zoned(&[
            ("a1", Some("a"), Status::Down),
            ("a2", Some("a"), Status::Draining),
            ("b1", Some("b"), Status::Up),
        ]);
        let balancer = ZonePreferring::new("a", RoundRobin::default());
        for _ in 0..3 {
            assert_eq!(balancer.pick(&list).unwrap().id, "b1");
        }
        let nothing_up = zoned(&[("a1", Some("a"), Status::Down)]);
        assert!(balancer.pick(&nothing_up).is_none());
    }

    #[test]
    fn round_robin_cycles_through_up_instances_only() {
        let list = instances();
        let balancer = RoundRobin::default();
        let picked: Vec<&str> = (0..4)
            .map(|_| balancer.pick(&list).unwrap().id.as_str())
            .collect();
        assert_eq!(picked, ["i0", "i2", "i0", "i2"]);
    }

    #[test]
    fn no_up_instance_means_no_pick() {
        let list: Vec<Arc<Instance>> = instances()
            .iter()
            .map(|i| {
                let mut down = Instance::clone(i);
                down.status = Status::Down;
                Arc::new(down)
            })
            .collect();
        assert!(RoundRobin::default().pick(&list).is_none());
        assert!(Random.pick(&list).is_none());
        assert!(WeightedRandom.pick(&list).is_none());
    }

    #[test]
    fn weighted_random_follows_weights_and_skips_zero() {
        let mut list = instances();
        Arc::make_mut(&mut list[0]).weight = 0;
        Arc::make_mut(&mut list[2]).weight = 5;
        for _ in 0..200 {
            assert_eq!(WeightedRandom.pick(&list).unwrap().id, "i2");
        }
        Arc::make_mut(&mut list[0]).weight = 1;
        let heavy = (0..6000)
            .filter(|_| WeightedRandom.pick(&list).unwrap().id == "i2")
            .count();
        // Expected 5000 of 6000; the bound is many standard deviations wide.
        assert!((4600..=5400).contains(&heavy), "{heavy}");
    }
}
