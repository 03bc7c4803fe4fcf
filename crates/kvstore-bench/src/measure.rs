//! The harness: time-based runs, paired rounds in alternating order, HDR latency
//! histograms, spreads of the per-round ratios, verdicts and markdown tables.

use std::cell::Cell;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;

/// Any failure of the benchmark: setup, a server, or a request.
pub(crate) type Failure = Box<dyn std::error::Error + Send + Sync>;
/// The result of a benchmark step.
pub(crate) type BenchResult<T> = Result<T, Failure>;

/// How long and how often things are measured (set from the command line).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// One side's run in a round of a headline row.
    pub round: Duration,
    /// Rounds per comparison (odd rounds run ours first, even rounds the reverse order).
    pub rounds: usize,
    /// One side's run in a round of a secondary row (CAS, TTL put, locks, memory, ...).
    pub short_round: Duration,
    /// One side's run at one point of a curve, per pass.
    pub step: Duration,
    /// Passes over each curve point (alternating which side goes first).
    pub passes: usize,
    /// Samples of a sequential latency measurement (watch delivery).
    pub samples: usize,
    /// A smoke run: smaller sizes everywhere.
    pub quick: bool,
}

/// One request of a measured run: which side (0 = ours, then the baselines), a number
/// unique to the run (for fresh keys), and the request's index in the run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call {
    /// 0 for ours, 1 for the raw same-work baseline, 2 for the plain baseline.
    pub side: usize,
    /// Unique per run of one side.
    pub run: u64,
    /// The request's index within the run.
    pub i: u64,
}

/// A number never handed out before, to tag the keys of one run.
pub(crate) fn next_run() -> u64 {
    static RUNS: AtomicU64 = AtomicU64::new(1);
    RUNS.fetch_add(1, Ordering::Relaxed)
}

/// A latency histogram in nanoseconds, from 1 ns to 10 minutes, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// Record `elapsed` into `histogram` (saturating at its top).
pub(crate) fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    histogram.saturating_record(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// The largest sample.
    pub max: f64,
    /// How many samples.
    pub count: u64,
}

impl Percentiles {
    /// The percentiles of `histogram` (nanoseconds) in microseconds.
    pub(crate) fn of(histogram: &Histogram<u64>) -> Percentiles {
        let micros = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            p50: micros(0.50),
            p99: micros(0.99),
            p999: micros(0.999),
            max: histogram.max() as f64 / 1000.0,
            count: histogram.len(),
        }
    }
}

/// Run `op(0)`, `op(1)`, ... with `in_flight` outstanding for `duration`; returns the
/// completed operations per second. At one in flight with `latency`, each request's
/// latency is recorded there (nanoseconds).
///
/// # Errors
/// The first failed request.
pub(crate) async fn run_for<F, Fut>(
    duration: Duration,
    in_flight: usize,
    latency: Option<&mut Histogram<u64>>,
    op: F,
) -> BenchResult<f64>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = BenchResult<()>>,
{
    let started = Instant::now();
    let deadline = started + duration;
    if in_flight <= 1 {
        let mut done = 0u64;
        if let Some(histogram) = latency {
            loop {
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                op(done).await?;
                record(histogram, sent.elapsed());
                done += 1;
            }
        } else {
            // Reading the clock costs as much as a memory-store read: read it once per
            // batch, the batch growing while requests are that fast.
            let mut batch = 1u64;
            let mut checked = started;
            loop {
                for _ in 0..batch {
                    op(done).await?;
                    done += 1;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                if now - checked < Duration::from_micros(50) && batch < 1024 {
                    batch *= 2;
                }
                checked = now;
            }
        }
        return Ok(done as f64 / started.elapsed().as_secs_f64());
    }
    let issued = Cell::new(0u64);
    futures::stream::iter(0u64..)
        .take_while(|_| futures::future::ready(Instant::now() < deadline))
        .map(|i| {
            issued.set(issued.get() + 1);
            Ok(i)
        })
        .try_for_each_concurrent(in_flight, &op)
        .await?;
    Ok(issued.get() as f64 / started.elapsed().as_secs_f64())
}

/// How a comparison runs.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    /// Requests in flight on each side.
    pub in_flight: usize,
    /// Rounds; each runs every side once, ours first on odd rounds and in reverse order
    /// on even ones.
    pub rounds: usize,
    /// How long each side runs in a round, by side (a plain baseline may run shorter).
    pub durations: Vec<Duration>,
    /// Unmeasured run of each side before the first round.
    pub warmup: Duration,
    /// Record each request's latency (only at one in flight).
    pub record_latency: bool,
}

impl Plan {
    /// `sides` sides of `duration` each, for `timing.rounds` rounds.
    pub(crate) fn new(timing: &Timing, in_flight: usize, duration: Duration, sides: usize) -> Plan {
        Plan {
            in_flight,
            rounds: timing.rounds.max(1),
            durations: vec![duration; sides],
            warmup: (duration / 4).min(Duration::from_millis(250)),
            record_latency: in_flight == 1,
        }
    }

    /// The same with the last side (the plain baseline) running `duration` instead.
    pub(crate) fn with_last_side(mut self, duration: Duration) -> Plan {
        if let Some(last) = self.durations.last_mut() {
            *last = duration;
        }
        self
    }

    /// The same without latency recording.
    pub(crate) fn without_latency(mut self) -> Plan {
        self.record_latency = false;
        self
    }
}

/// One side's results over the rounds of a comparison.
#[derive(Clone, Debug)]
pub(crate) struct SideRuns {
    /// Operations per second, by round.
    pub rates: Vec<f64>,
    /// Request latencies over all rounds, when recorded.
    pub latency: Option<Histogram<u64>>,
}

impl SideRuns {
    /// The median rate.
    pub(crate) fn median(&self) -> f64 {
        median(&self.rates)
    }
}

/// Run `op` for every side of `plan` in paired, alternating rounds.
///
/// # Errors
/// The first failed request.
pub(crate) async fn compare<F, Fut>(plan: &Plan, op: F) -> BenchResult<Vec<SideRuns>>
where
    F: Fn(Call) -> Fut,
    Fut: Future<Output = BenchResult<()>>,
{
    let sides = plan.durations.len();
    let mut results: Vec<SideRuns> = (0..sides)
        .map(|_| SideRuns {
            rates: Vec::with_capacity(plan.rounds),
            latency: (plan.record_latency && plan.in_flight == 1).then(histogram),
        })
        .collect();
    if !plan.warmup.is_zero() {
        for side in 0..sides {
            let run = next_run();
            run_for(plan.warmup, plan.in_flight, None, |i| {
                op(Call { side, run, i })
            })
            .await?;
        }
    }
    for round in 0..plan.rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..sides).collect()
        } else {
            (0..sides).rev().collect()
        };
        for side in order {
            let run = next_run();
            let result = &mut results[side];
            let rate = run_for(
                plan.durations[side],
                plan.in_flight,
                result.latency.as_mut(),
                |i| op(Call { side, run, i }),
            )
            .await?;
            result.rates.push(rate);
        }
    }
    Ok(results)
}

/// The median of `values` (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Min, median and max of a set of values (per-round ratios, or repeated samples).
#[derive(Clone, Debug, Default)]
pub(crate) struct Spread {
    /// Every value, in round order.
    pub values: Vec<f64>,
}

impl Spread {
    /// The spread of `values`.
    pub(crate) fn of(values: Vec<f64>) -> Spread {
        Spread { values }
    }

    /// The paired ratios `a[r] / b[r]`.
    pub(crate) fn ratios(a: &[f64], b: &[f64]) -> Spread {
        Spread {
            values: a
                .iter()
                .zip(b)
                .filter(|(_, b)| **b > 0.0)
                .map(|(a, b)| a / b)
                .collect(),
        }
    }

    /// The smallest value.
    pub(crate) fn min(&self) -> f64 {
        self.values.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// The median value.
    pub(crate) fn median(&self) -> f64 {
        median(&self.values)
    }

    /// The largest value.
    pub(crate) fn max(&self) -> f64 {
        self.values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }

    /// `min / median / max`, or empty without values.
    pub(crate) fn text(&self) -> String {
        if self.values.is_empty() {
            return String::new();
        }
        format!(
            "{} / {} / {}",
            ratio(self.min()),
            ratio(self.median()),
            ratio(self.max())
        )
    }
}

/// `min / median / max` of values in ms.
pub(crate) fn spread_ms(spread: &Spread) -> String {
    if spread.values.is_empty() {
        return String::new();
    }
    format!(
        "{} / {} / {}",
        number(spread.min()),
        number(spread.median()),
        number(spread.max())
    )
}

/// What a row must show to be "met".
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target {
    /// Every per-round ratio ours/baseline at least this (higher is better).
    AtLeast(f64),
    /// Every per-round ratio ours/baseline at most this (lower is better).
    AtMost(f64),
    /// Every sample below this absolute value, in the row's unit.
    Under(f64),
    /// Reported only.
    None,
}

impl Target {
    /// The target as shown in the table.
    pub(crate) fn text(&self, unit: &str) -> String {
        match self {
            Target::AtLeast(x) => format!("≥ {x}×"),
            Target::AtMost(x) => format!("≤ {x}×"),
            Target::Under(x) => format!("< {x} {unit}"),
            Target::None => String::new(),
        }
    }

    /// "met" only when the whole range clears the target, "MISSED" only when none of it
    /// does, otherwise "mixed" with how many rounds fell short.
    pub(crate) fn verdict(&self, spread: &Spread) -> String {
        let n = spread.values.len();
        if n == 0 {
            return String::new();
        }
        let short = |fails: &dyn Fn(f64) -> bool, word: &str| {
            let failing = spread.values.iter().filter(|v| fails(**v)).count();
            match failing {
                0 => "met".to_owned(),
                f if f == n => "MISSED".to_owned(),
                f => format!("mixed: {f} of {n} rounds {word}"),
            }
        };
        match *self {
            Target::AtLeast(x) => short(&|v| v < x, "below"),
            Target::AtMost(x) => short(&|v| v > x, "above"),
            Target::Under(x) => short(&|v| v >= x, "over"),
            Target::None => String::new(),
        }
    }
}

/// A markdown table with a heading and a note.
#[derive(Clone, Debug, Default)]
pub(crate) struct Table {
    /// The `###` heading.
    pub title: String,
    /// A paragraph under the heading: what is measured and how.
    pub note: String,
    /// Column names.
    pub header: Vec<String>,
    /// Cells, row by row.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table.
    pub(crate) fn new(title: impl Into<String>, note: impl Into<String>, header: &[&str]) -> Table {
        Table {
            title: title.into(),
            note: note.into(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as markdown.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "### {}\n", self.title);
        if !self.note.is_empty() {
            let _ = writeln!(out, "{}\n", self.note);
        }
        let _ = writeln!(out, "| {} |", self.header.join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            self.header
                .iter()
                .enumerate()
                .map(|(i, _)| if i < 2 { "---|" } else { "---:|" })
                .collect::<String>()
        );
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }
}

/// A number for the table: three significant digits or so.
pub(crate) fn number(value: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    let magnitude = value.abs();
    if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 0.1 || value == 0.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// A ratio for the table.
pub(crate) fn ratio(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.2}")
    } else {
        "–".into()
    }
}

/// Milliseconds of a duration.
pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
