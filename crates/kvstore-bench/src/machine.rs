//! The machine: pinning the benchmark and its servers to separate cores, finding a
//! server's process by its port, CPU time of processes, and what the report header
//! records (commit, rustc, kernel, CPU model and core layout).

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use nix::sched::{CpuSet, sched_setaffinity};
use nix::sys::resource::{UsageWho, getrusage};
use nix::unistd::Pid;

/// Where the benchmark runs and where its servers run.
#[derive(Clone, Debug)]
pub(crate) struct Placement {
    /// The core the servers are pinned to, if pinned.
    pub server_core: Option<usize>,
    /// What was done, for the report header.
    pub notes: Vec<String>,
}

/// The logical CPUs this process may run on now.
fn allowed_cpus() -> Vec<usize> {
    let Ok(set) = nix::sched::sched_getaffinity(Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..CpuSet::count())
        .filter(|cpu| set.is_set(*cpu).unwrap_or(false))
        .collect()
}

/// Pin the calling thread (call it first thing in `main`, before any other thread
/// exists, so every later thread inherits it) to the first allowed CPU, and choose the
/// second for servers. With one CPU nothing is pinned.
pub(crate) fn pin_client(enabled: bool) -> Placement {
    let cpus = allowed_cpus();
    if !enabled {
        return Placement {
            server_core: None,
            notes: vec!["not pinned (--no-pin)".into()],
        };
    }
    let (Some(&client), Some(&server)) = (cpus.first(), cpus.get(1)) else {
        return Placement {
            server_core: None,
            notes: vec![format!(
                "not pinned: only {} CPU(s) allowed ({cpus:?})",
                cpus.len()
            )],
        };
    };
    let mut set = CpuSet::new();
    if set.set(client).is_err() {
        return Placement {
            server_core: None,
            notes: vec![format!("not pinned: CPU {client} is out of range")],
        };
    }
    match sched_setaffinity(Pid::from_raw(0), &set) {
        Ok(()) => Placement {
            server_core: Some(server),
            notes: vec![format!(
                "benchmark process pinned to CPU {client} (sched_setaffinity before any thread starts)"
            )],
        },
        Err(error) => Placement {
            server_core: None,
            notes: vec![format!("not pinned: sched_setaffinity failed: {error}")],
        },
    }
}

impl Placement {
    /// Pin the server listening on `port` (all its threads) to the server core with
    /// `taskset -a -p -c`, and note it. Returns the server's PID when found.
    pub(crate) fn pin_server(&mut self, name: &str, port: u16) -> Option<i32> {
        let Some(pid) = pid_listening_on(port) else {
            self.notes
                .push(format!("{name}: no process found listening on port {port}"));
            return None;
        };
        let Some(core) = self.server_core else {
            return Some(pid);
        };
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
            .output();
        let allowed = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_else(|| "?".into());
        match status {
            Ok(output) if output.status.success() => self.notes.push(format!(
                "{name} (pid {pid}) pinned with `taskset -a -p -c {core}`: allowed CPUs now {allowed}"
            )),
            Ok(output) => self.notes.push(format!(
                "{name} (pid {pid}): taskset failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
            Err(error) => self.notes.push(format!(
                "{name} (pid {pid}): taskset could not run ({error}); not pinned"
            )),
        }
        Some(pid)
    }
}

/// The process that holds a listening TCP socket on `port` (IPv4 or IPv6), found
/// through `/proc/net/tcp*` (the socket's inode) and `/proc/*/fd` (who holds it).
pub(crate) fn pid_listening_on(port: u16) -> Option<i32> {
    let port_hex = format!("{port:04X}");
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1 ("ADDR:PORT"), st field 3 (0A = LISTEN), inode 9.
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state == "0A" && local.rsplit(':').next() == Some(port_hex.as_str()) {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let processes = std::fs::read_dir("/proc").ok()?;
    for entry in processes.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.contains(target.to_string_lossy().as_ref())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// User + system CPU time of this process so far (all threads).
pub(crate) fn own_cpu_time() -> Duration {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let to_duration = |t: nix::sys::time::TimeVal| {
                Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
                    + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
            };
            to_duration(usage.user_time()) + to_duration(usage.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// User + system CPU time of process `pid` so far, from `/proc/PID/stat` (in clock
/// ticks of `CLK_TCK`, normally 10 ms).
pub(crate) fn process_cpu_time(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the full line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100);
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

/// The first line of `program args...`'s output, or "unknown".
pub(crate) fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// The commit being measured: `git rev-parse --short HEAD`, marked when the work tree
/// has uncommitted changes (so a before/after pair on one commit is told apart).
pub(crate) fn commit() -> String {
    let head = first_line("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    if dirty {
        format!("{head} (with uncommitted changes)")
    } else {
        head
    }
}

/// CPU model, logical CPUs and their core/socket layout, and memory.
pub(crate) fn cpu_layout() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown CPU".to_owned(), |m| m.trim().to_owned());
    let mut cpus = Vec::new();
    for cpu in 0..1024 {
        let base = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
        let read = |f: &str| {
            std::fs::read_to_string(format!("{base}/{f}"))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        let Some(core) = read("core_id") else {
            if cpu > 0 && !std::path::Path::new(&base).exists() {
                break;
            }
            continue;
        };
        let socket = read("physical_package_id").unwrap_or_else(|| "?".into());
        let siblings = read("thread_siblings_list").unwrap_or_else(|| "?".into());
        cpus.push(format!(
            "cpu{cpu} = socket {socket} core {core} (threads {siblings})"
        ));
    }
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or_else(
            || "unknown memory".to_owned(),
            |kb| format!("{:.1} GiB memory", kb / 1024.0 / 1024.0),
        );
    format!(
        "{model}; {} logical CPUs: {}; {memory}",
        cpus.len(),
        cpus.join(", ")
    )
}

/// CPU time all processes on the machine have used so far (the `cpu` line of
/// `/proc/stat`: user, nice, system, irq, softirq, steal), and the number of CPUs.
pub(crate) fn machine_busy_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| fields.get(*i))
        .sum();
    Some(Duration::from_secs_f64(busy as f64 / clock_ticks() as f64))
}

/// `CLK_TCK`: the unit of `/proc` CPU times.
fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// The 1-minute load average.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Let the calling thread run on every online CPU (for the in-process rows that measure
/// scaling across cores, while the servers are idle).
pub(crate) fn unpin_current_thread() {
    let mut set = CpuSet::new();
    for cpu in 0..online_cpus() {
        let _ = set.set(cpu);
    }
    let _ = sched_setaffinity(Pid::from_raw(0), &set);
}

/// The number of online CPUs.
pub(crate) fn online_cpus() -> usize {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| c.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(1)
        .max(1)
}
