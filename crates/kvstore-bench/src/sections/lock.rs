//! The lock section: acquire + release, alone and contended, ours against raw recipes,
//! and etcd's unsynced-watch delay that explains the contended etcd rows.

use crate::lock;
use crate::measure::{self, BenchResult, Table, Timing, median, number};
use crate::report::Report;
use crate::{Section, Servers, etcd_raw, etcd_store, redis_raw, redis_store};

/// Lock acquire+release: alone and with 4 contenders, on equal connections.
pub(crate) async fn locks(
    servers: &mut Servers,
    timing: &Timing,
    nodelay: bool,
    report: &mut Report,
) -> BenchResult<()> {
    let mut table = Table::new(
        "Locks: acquire + release, ours against raw on the same number of connections",
        format!(
            "Every contender has its own connection on both sides. Raw etcd: a lease grant, etcd's Lock RPC on it, Unlock, lease revoke (what a raw etcd user does per acquisition; the server runs the same `concurrency` recipe ours does). Raw Redis: `SET key token NX PX {} ` retried at once while taken, then a Lua compare-and-delete. Ours: `new_lock(..).lock()` then `unlock()`. {} paired rounds of {:.2} s per side, alternating order; acquire latency is the time in `lock()` (µs), from all rounds.",
            lock::TTL.as_millis(),
            timing.rounds,
            timing.short_round.as_secs_f64()
        ),
        &[
            "backend",
            "contenders",
            "ours acq+rel /s",
            "raw acq+rel /s",
            "ours/raw per round: min / median / max",
            "ours acquire p50 / p99 µs",
            "raw acquire p50 / p99 µs",
        ],
    );
    let (etcd, _) = servers.etcd()?;
    let mut etcd_sides = (Vec::new(), Vec::new());
    for _ in 0..4 {
        etcd_sides
            .0
            .push(lock::Contender::Ours(etcd_store(etcd, "bench-lock").await?));
        etcd_sides
            .1
            .push(lock::Contender::Etcd(Box::new(etcd_raw(etcd).await?)));
    }
    let raw_etcd = etcd_raw(etcd).await?;
    let (redis, _) = servers.redis()?;
    let mut redis_sides = (Vec::new(), Vec::new());
    for _ in 0..4 {
        redis_sides.0.push(lock::Contender::Ours(
            redis_store(redis, "bench-lock").await?,
        ));
        redis_sides
            .1
            .push(lock::Contender::Redis(redis_raw(redis, nodelay).await?));
    }
    let mut etcd_results = Vec::new();
    for (backend, (ours, raw)) in [("etcd", &etcd_sides), ("redis", &redis_sides)] {
        for contenders in [1usize, 4] {
            eprintln!("  {backend} lock, {contenders} contender(s)");
            let result = lock::compare(
                &ours[..contenders],
                &raw[..contenders],
                &format!("bench-{contenders}"),
                timing.rounds,
                timing.short_round,
            )
            .await?;
            let (ours_rate, raw_rate) = result.medians();
            let latency =
                |p: &measure::Percentiles| format!("{} / {}", number(p.p50), number(p.p99));
            table.row(vec![
                backend.into(),
                format!("{contenders} ({contenders} connection(s) per side)"),
                number(ours_rate),
                number(raw_rate),
                result.spread().text(),
                latency(&result.ours_latency),
                latency(&result.raw_latency),
            ]);
            if backend == "etcd" {
                etcd_results.push(result);
            }
        }
    }
    report.table(Section::Lock, &table);
    let samples = if timing.quick { 5 } else { 30 };
    eprintln!("  etcd unsynced watch, {samples} samples each way");
    let unsynced = lock::etcd_unsynced_watch(&raw_etcd, samples).await?;
    let mut why = Table::new(
        "Why a contended etcd lock is slow: etcd's unsynced watchers",
        format!(
            "Raw etcd-client: a watch created on a fresh key, then a put of that key; time from the put to the event, {samples} samples each way (µs). A watch whose start revision etcd has already passed goes to its *unsynced* group, which a background loop catches up only every 100 ms (`syncWatchersLoop`); a watch starting at the next revision is *synced* and gets events as they are written."
        ),
        &["watch created at", "p50 µs", "p99 µs", "max µs"],
    );
    for (name, p) in [
        (
            "a revision already passed (as a lock waiter's watch after a write by another contender)",
            unsynced.past,
        ),
        ("the next revision", unsynced.next),
    ] {
        why.row(vec![
            name.into(),
            number(p.p50),
            number(p.p99),
            number(p.max),
        ]);
    }
    report.table(Section::Lock, &why);
    if let [alone, contended] = etcd_results.as_slice() {
        report.add(Section::Lock, lock_explanation(alone, contended, &unsynced));
    }
    Ok(())
}

/// What the etcd lock rows show, and where the cost of a contended lock comes from.
fn lock_explanation(
    alone: &lock::LockComparison,
    contended: &lock::LockComparison,
    unsynced: &lock::UnsyncedWatch,
) -> String {
    let ms = |micros: f64| number(micros / 1000.0);
    format!(
        "**Where an etcd lock's time goes.** Alone, one acquire+release is five requests: a lease grant, a create-only put of the waiter key and a list of the queue, then the lock key's put; the release is a lease revoke. Four of them are raft writes with an fsync each: {} acquisitions per second here, {} ms to acquire (p50). With four contenders each hand-over also waits until the release reaches the next waiter through a watch on its predecessor's key: {} acquisitions per second, {} ms to acquire (p50), {} ms (p99). That watch is `Store::watch`, called by `wait_deleted` in `Queue::wait_for_turn` (kvstore-core `lock.rs`). kvstore-etcd (`watch.rs`) creates the etcd watch without a start revision, so etcd syncs it at once, and reads the snapshot at the revision the watch was created at: nothing is missed and nothing waits for etcd's sync loop. A watch created at a start revision etcd has already passed (as one created at `snapshot revision + 1` after another contender wrote in between: a join, a lock-key put, a revoke) sits in etcd's *unsynced* group until the next pass of its 100 ms sync loop; the table above shows that delay directly ({} ms p50 against {} ms for a watch created at the next revision). kvstore-etcd worked that way until commit 15e58ca, when four contenders made 77–94 acquisitions per second with a p90 near 100 ms. etcd's own Lock RPC still waits that way (its `waitDeletes` watches from a past revision), so the raw row pays it. On Redis the same recipe is five scripts against two commands raw, and a hand-over goes through the change stream (`XREAD`), with no such delay.\n",
        number(median(&alone.ours)),
        ms(alone.ours_latency.p50),
        number(median(&contended.ours)),
        ms(contended.ours_latency.p50),
        ms(contended.ours_latency.p99),
        ms(unsynced.past.p50),
        ms(unsynced.next.p50),
    )
}
