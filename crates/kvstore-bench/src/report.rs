//! The report: markdown blocks collected by section, and the whole document (the setup
//! header, then each section's blocks under its heading, in run order).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::machine;
use crate::measure::{Table, Timing};
use crate::{Section, Servers};

/// The report: markdown blocks by section, in run order.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) blocks: BTreeMap<Section, Vec<String>>,
}

impl Report {
    pub(crate) fn add(&mut self, section: Section, block: String) {
        self.blocks.entry(section).or_default().push(block);
    }

    pub(crate) fn table(&mut self, section: Section, table: &Table) {
        self.add(section, table.render());
    }
}

/// Section headings of the report.
fn heading(section: Section) -> &'static str {
    match section {
        Section::EtcdKv
        | Section::RedisKv
        | Section::MemoryKv
        | Section::Txn
        | Section::Zookeeper => "Ours against raw: key-value operations",
        Section::Lock => "Locks",
        Section::Watch => "Watches",
        Section::Discovery => "Discovery",
        Section::Election => "Elections",
        Section::Serving => "Serving under faults",
        Section::InflightCurve => "Curve: requests in flight",
        Section::ValueSizeCurve => "Curve: value size",
        Section::ListCurve => "Curve: prefix size (list and watch snapshot)",
        Section::WatchersCurve => "Curve: idle watchers on other prefixes",
        Section::KeepaliveCurve => "Curve: live leases (keep-alive cost)",
    }
}

/// The whole report.
pub(crate) fn render(
    report: &Report,
    servers: &Servers,
    timing: &Timing,
    sections: &[Section],
    wall: Duration,
    partial: bool,
    others: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Produced by `cargo run --release -p kvstore-bench`{}: our store against raw clients doing **the same work** in the same run, on servers the benchmark started on loopback, and the curves of the costs that grow with the work. Every comparison runs in paired, time-based rounds in alternating order (ours first on odd rounds, the reverse on even rounds), and every ratio is shown as the min / median / max of its per-round ratios; a verdict is *met* only when the whole range clears the target, *MISSED* only when none of it does, and *mixed* otherwise.\n",
        if partial {
            format!(
                " --only {}",
                sections
                    .iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "Parts run alone with `--only SECTION[,SECTION...]` (see `--help`), e.g. `cargo run --release -p kvstore-bench -- --only keepalive-curve,list-curve --output /tmp/after.md`; run the same on two commits for a before/after of a fix. `--quick` is a smoke run.\n"
    );
    let _ = writeln!(out, "## Setup\n");
    let _ = writeln!(out, "- Commit: {}", machine::commit());
    let _ = writeln!(
        out,
        "- rustc: {}",
        machine::first_line("rustc", &["--version"])
    );
    let _ = writeln!(out, "- Kernel: {}", machine::first_line("uname", &["-r"]));
    let _ = writeln!(out, "- CPU: {}", machine::cpu_layout());
    let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "- Placement: {}; tokio multi-thread runtime with {threads} worker thread(s) (as many as CPUs the process may use)",
        servers.placement.notes.join("; ")
    );
    if servers.etcd.is_some() {
        let _ = writeln!(
            out,
            "- etcd: {} (single member, data on the local disk)",
            machine::first_line("etcd", &["--version"])
        );
    }
    if servers.redis.is_some() {
        let _ = writeln!(
            out,
            "- Redis: {} (no persistence)",
            machine::first_line("redis-server", &["--version"])
        );
    }
    let _ = writeln!(
        out,
        "- Timing: headline rows {} rounds × {:.2} s per side; secondary rows {} rounds × {:.2} s per side; curve points {} pass(es) × {:.2} s per side; {} watch-delivery samples; {}",
        timing.rounds,
        timing.round.as_secs_f64(),
        timing.rounds,
        timing.short_round.as_secs_f64(),
        timing.passes,
        timing.step.as_secs_f64(),
        timing.samples,
        if timing.quick {
            "**--quick smoke run: sizes reduced, not for conclusions**"
        } else {
            "full run"
        }
    );
    let _ = writeln!(
        out,
        "- Heap is counted by a global allocator only inside heap-measuring phases (a flag checked first; off in every timed row)."
    );
    let _ = writeln!(out, "- {others}");
    let _ = writeln!(
        out,
        "- Wall time of this run: {:.0} s\n",
        wall.as_secs_f64()
    );
    let mut last_heading = "";
    for (section, blocks) in &report.blocks {
        let title = heading(*section);
        if title != last_heading {
            let _ = writeln!(out, "## {title}\n");
            last_heading = title;
        }
        for block in blocks {
            let _ = writeln!(out, "{block}");
        }
    }
    out
}
