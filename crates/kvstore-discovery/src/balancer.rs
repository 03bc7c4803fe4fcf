//! Balancers: pick one `Up` instance for a request.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use crate::instance::{Instance, Status};

/// Picks an instance among those with status `Up`; `None` when there is none.
pub trait Balancer: Send + Sync {
    /// One `Up` instance of `instances`.
    fn pick<'a>(&self, instances: &'a [Instance]) -> Option<&'a Instance>;
}

fn up(instances: &[Instance]) -> impl Iterator<Item = &Instance> {
    instances.iter().filter(|i| i.status == Status::Up)
}

/// Each `Up` instance in turn (by position in the list, which is sorted by id).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn pick<'a>(&self, instances: &'a [Instance]) -> Option<&'a Instance> {
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
    fn pick<'a>(&self, instances: &'a [Instance]) -> Option<&'a Instance> {
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
    fn pick<'a>(&self, instances: &'a [Instance]) -> Option<&'a Instance> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn instances() -> Vec<Instance> {
        let mut list: Vec<Instance> = (0..3)
            .map(|i| Instance::new("svc", format!("i{i}"), format!("127.0.0.1:{}", 9000 + i)))
            .collect();
        list[1].status = Status::Draining;
        list
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
        let mut list = instances();
        for i in &mut list {
            i.status = Status::Draining;
        }
        assert!(RoundRobin::default().pick(&list).is_none());
        assert!(Random.pick(&list).is_none());
        assert!(WeightedRandom.pick(&list).is_none());
    }

    #[test]
    fn weighted_random_follows_weights_and_skips_zero() {
        let mut list = instances();
        list[0].weight = 0;
        list[2].weight = 5;
        for _ in 0..200 {
            assert_eq!(WeightedRandom.pick(&list).unwrap().id, "i2");
        }
        list[0].weight = 1;
        let heavy = (0..6000)
            .filter(|_| WeightedRandom.pick(&list).unwrap().id == "i2")
            .count();
        // Expected 5000 of 6000; the bound is many standard deviations wide.
        assert!((4600..=5400).contains(&heavy), "{heavy}");
    }
}
