//! Timing helpers: latency percentiles, throughput, and the result rows.

use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;

/// Latency percentiles of a sample, in microseconds.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
}

/// Percentiles of `samples`.
pub fn latency(mut samples: Vec<Duration>) -> Latency {
    samples.sort();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Latency {
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// Time `count` sequential calls of `op`.
pub async fn sequential_latency<F, Fut>(count: usize, mut op: F) -> Latency
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        op(i).await;
        samples.push(started.elapsed());
    }
    latency(samples)
}

/// Operations per second of `count` calls of `op` with `in_flight` running at once.
pub async fn throughput<F, Fut>(count: usize, in_flight: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let started = Instant::now();
    futures::stream::iter(0..count)
        .for_each_concurrent(in_flight, op)
        .await;
    count as f64 / started.elapsed().as_secs_f64()
}

/// The median of several rounds.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// How a row's ratio is judged.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// ours/raw must be at least this (throughput: higher is better).
    AtLeast(f64),
    /// ours/raw must be at most this (latency: lower is better).
    AtMost(f64),
    /// ours must be under this absolute value (in the row's unit).
    Under(f64),
    /// Reported only.
    None,
}

/// One line of the results table.
#[derive(Clone, Debug)]
pub struct Row {
    pub backend: &'static str,
    pub metric: String,
    pub unit: &'static str,
    pub ours: f64,
    pub raw: Option<f64>,
    pub target: Target,
    /// A second raw baseline doing the same work with the same guarantees (Redis: a Lua
    /// script of `INCR` + `XADD` + `HSET` + `ZADD`, `HMGET` of the same hash), when the
    /// plain `raw` one does less work.
    pub contract: Option<f64>,
    /// The spread of the per-round ratios, for rows measured in rounds.
    pub spread: String,
}

impl Row {
    pub fn ratio(&self) -> Option<f64> {
        self.raw.filter(|r| *r > 0.0).map(|raw| self.ours / raw)
    }

    /// ours / the same-guarantees baseline.
    pub fn contract_ratio(&self) -> Option<f64> {
        self.contract
            .filter(|r| *r > 0.0)
            .map(|raw| self.ours / raw)
    }

    pub fn verdict(&self) -> &'static str {
        match (self.target, self.ratio()) {
            (Target::AtLeast(min), Some(ratio)) => {
                if ratio >= min {
                    "met"
                } else {
                    "MISSED"
                }
            }
            (Target::AtMost(max), Some(ratio)) => {
                if ratio <= max {
                    "met"
                } else {
                    "MISSED"
                }
            }
            (Target::Under(limit), _) => {
                if self.ours < limit {
                    "met"
                } else {
                    "MISSED"
                }
            }
            _ => "",
        }
    }

    pub fn target_text(&self) -> String {
        match self.target {
            Target::AtLeast(min) => format!("≥ {min}× raw"),
            Target::AtMost(max) => format!("≤ {max}× raw"),
            Target::Under(limit) => format!("< {limit} {}", self.unit),
            Target::None => String::new(),
        }
    }
}

/// Format a number for the table.
pub fn number(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}
