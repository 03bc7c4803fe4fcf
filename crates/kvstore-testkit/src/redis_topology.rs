//! Redis high-availability topologies for backend tests: a Redis Cluster
//! ([`RedisCluster`]: three primaries, optionally with replicas) and a Sentinel-monitored
//! primary with a replica ([`RedisSentinelSet`]), on free loopback ports with temporary
//! directories, every process killed on drop.
//!
//! Both are started from Debian's `redis-server` (which is also the Sentinel: `redis-server
//! CONF --sentinel`) and driven with `redis-cli` from `redis-tools`, the packages
//! `scripts/test` installs. Every wait is bounded and polls an observable condition
//! (`cluster_state:ok`, `master_link_status:up`, what the Sentinels report).
//!
//! Timings measured here (Redis 7.0, loopback, 2 cores): a cluster of three primaries is
//! ready in about 2.2 s (`redis-cli --cluster create` waits a second for the nodes to
//! meet), with a replica each in 2.2–3.4 s; a killed primary's slots are served by its
//! replica 3.5–4.8 s after the kill (`--cluster-node-timeout 2000`). A set with one
//! Sentinel is ready in 0.25 s (three: 2.3 s, Sentinels find each other every 2 s) and
//! fails over about 3 s after its primary is killed or paused (`down-after-milliseconds
//! 1000`, then about a second for the promotion). With three Sentinels a failed leader
//! election (seen once in about 25 runs) adds a 10 s retry.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::server::{
    Process, RedisServer, STARTUP_TIMEOUT, ServerError, ServerResult, find_binary, free_ports,
    port_open, redis_cli, run_bounded, wait_until,
};

/// `--cluster-node-timeout` of every [`RedisCluster`] node, in milliseconds: how long a
/// node may be unreachable before the others consider it failed.
pub const CLUSTER_NODE_TIMEOUT_MS: u64 = 2000;

/// `sentinel down-after-milliseconds` of every [`RedisSentinelSet`].
pub const SENTINEL_DOWN_AFTER_MS: u64 = 1000;

/// `sentinel failover-timeout` of every [`RedisSentinelSet`], in milliseconds. A failover
/// that fails (e.g. a split vote among three Sentinels) is retried after twice this.
pub const SENTINEL_FAILOVER_TIMEOUT_MS: u64 = 5000;

/// Pause between two polls of a condition.
const POLL: Duration = Duration::from_millis(50);

/// Poll `check` until it returns `Some`, for at most `timeout`; the error names `what`
/// and the last reason `check` gave for not being ready.
fn poll<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>, String>,
) -> ServerResult<T> {
    let started = Instant::now();
    let mut last = String::from("never checked");
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(why) => last = why,
        }
        if started.elapsed() >= timeout {
            return Err(ServerError(format!(
                "{what}: not within {timeout:?} (last: {last})"
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// The value of `field` in `INFO`-style `field:value` lines (`CLUSTER INFO` too).
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .find(|(name, _)| *name == field)
        .map(|(_, value)| value)
}

/// `127.0.0.1:PORT`.
fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The port of `HOST:PORT` (or `HOST:PORT@BUSPORT`, `HOST:PORT@BUSPORT,HOSTNAME`).
fn port_of(address: &str) -> Option<u16> {
    address
        .split(['@', ','])
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()
}

/// One data node (`redis-server`) of a topology: its own directory under the topology's
/// temporary directory, and the options it is started with every time.
struct RedisNode {
    port: u16,
    dir: PathBuf,
    /// `--port P` and the topology's options (no `--replicaof`: that is decided per start).
    args: Vec<String>,
    process: Process,
    paused: bool,
}

impl RedisNode {
    fn start(
        root: &Path,
        port: u16,
        args: Vec<String>,
        replica_of: Option<u16>,
    ) -> ServerResult<RedisNode> {
        let dir = root.join(format!("node-{port}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| ServerError(format!("cannot create {}: {e}", dir.display())))?;
        let process = RedisNode::launch(port, &dir, &args, replica_of)?;
        Ok(RedisNode {
            port,
            dir,
            args,
            process,
            paused: false,
        })
    }

    fn launch(
        port: u16,
        dir: &Path,
        args: &[String],
        replica_of: Option<u16>,
    ) -> ServerResult<Process> {
        let mut args = args.to_vec();
        if let Some(primary) = replica_of {
            args.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.to_string(),
            ]);
        }
        RedisServer::launch(port, dir, &args)
    }

    fn restart(&mut self, replica_of: Option<u16>) -> ServerResult<()> {
        self.process.kill();
        self.paused = false;
        self.process = RedisNode::launch(self.port, &self.dir, &self.args, replica_of)?;
        Ok(())
    }

    fn kill(&mut self) {
        self.process.kill();
        self.paused = false;
    }

    fn pause(&mut self) {
        if self.alive() {
            self.process.signal(Signal::SIGSTOP);
            self.paused = true;
        }
    }

    fn resume(&mut self) {
        self.process.signal(Signal::SIGCONT);
        self.paused = false;
    }

    /// Running (paused or not).
    fn alive(&self) -> bool {
        self.process.pid().is_some()
    }

    /// Running and not paused: it answers.
    fn answering(&self) -> bool {
        self.alive() && !self.paused
    }

    fn cli(&self, args: &[&str]) -> ServerResult<String> {
        redis_cli(self.port, args)
    }

    /// `INFO replication` says this replica's link to its primary is up.
    fn replica_link_up(&self) -> Result<bool, String> {
        let info = self.cli(&["info", "replication"]).map_err(|e| e.0)?;
        Ok(info_field(&info, "master_link_status") == Some("up"))
    }

    /// `ROLE` says this node is a primary.
    fn is_primary(&self) -> Result<bool, String> {
        let role = self.cli(&["role"]).map_err(|e| e.0)?;
        Ok(role.lines().next().map(str::trim) == Some("master"))
    }
}

/// One node as another node's `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClusterNodeView {
    port: u16,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, `noaddr`, ...
    flags: Vec<String>,
    /// Inclusive slot ranges it serves (migrating/importing markers are left out).
    slots: Vec<(u16, u16)>,
}

impl ClusterNodeView {
    fn is_primary(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }

    fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(lo, hi)| lo <= slot && slot <= hi)
    }
}

/// Parse `CLUSTER NODES`: one line per node, `ID HOST:PORT@BUS[,HOSTNAME] FLAGS MASTER
/// PING PONG EPOCH LINK SLOT...`.
fn parse_cluster_nodes(text: &str) -> Vec<ClusterNodeView> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let port = port_of(fields[1])?;
            let flags = fields[2].split(',').map(str::to_owned).collect();
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                    None => s.parse().ok().map(|slot| (slot, slot)),
                })
                .collect();
            Some(ClusterNodeView { port, flags, slots })
        })
        .collect()
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

/// A Redis Cluster on loopback: three primaries sharing the 16384 slots (node 0 has
/// 0–5460, node 1 5461–10922, node 2 10923–16383 at start), optionally with replicas,
/// each node in its own temporary directory. Every process is killed on drop.
///
/// Nodes are numbered by start order: the primaries first, then the replicas. Roles
/// change with failovers; [`primary_indices`] and [`node_for_key`] ask the cluster.
///
/// Redis' default `cluster-require-full-coverage yes` holds unless overridden with
/// [`start_with`]: once a primary without replica is considered failed (about
/// [`CLUSTER_NODE_TIMEOUT_MS`] after it dies), *every* node refuses *every* key
/// (`CLUSTERDOWN`) until it is back. Pass `--cluster-require-full-coverage no` to keep the
/// other primaries' slots served.
///
/// [`primary_indices`]: RedisCluster::primary_indices
/// [`node_for_key`]: RedisCluster::node_for_key
/// [`start_with`]: RedisCluster::start_with
pub struct RedisCluster {
    nodes: Vec<RedisNode>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// The number of primaries.
    pub const PRIMARIES: usize = 3;

    /// Start three primaries without replicas, create the cluster, and wait until every
    /// node reports `cluster_state:ok`.
    ///
    /// # Errors
    /// When `redis-server` or `redis-cli` is not installed (naming the package), or the
    /// cluster is not ready within [`STARTUP_TIMEOUT`].
    pub fn start() -> ServerResult<RedisCluster> {
        RedisCluster::start_with(0, &[])
    }

    /// Start three primaries with `replicas` replicas each (`3 × (1 + replicas)`
    /// nodes), and wait until the cluster is ready and every replica has synchronised.
    ///
    /// # Errors
    /// As [`RedisCluster::start`].
    pub fn start_with_replicas(replicas: usize) -> ServerResult<RedisCluster> {
        RedisCluster::start_with(replicas, &[])
    }

    /// As [`start_with_replicas`], every node started with the extra `redis-server`
    /// options `extra` too (kept across [`restart`]), e.g.
    /// `&["--cluster-require-full-coverage", "no"]`. Options requiring clients to
    /// authenticate break the readiness checks.
    ///
    /// # Errors
    /// As [`RedisCluster::start`].
    ///
    /// [`start_with_replicas`]: RedisCluster::start_with_replicas
    /// [`restart`]: RedisCluster::restart
    pub fn start_with(replicas: usize, extra: &[&str]) -> ServerResult<RedisCluster> {
        let redis_cli_binary = find_binary("redis-cli", "redis-tools")?;
        let dir = tempfile::tempdir().map_err(|e| ServerError(format!("no temp dir: {e}")))?;
        let count = RedisCluster::PRIMARIES * (1 + replicas);
        // Each node needs a client port and a cluster bus port (by default PORT + 10000,
        // which is out of range for high ephemeral ports).
        let ports = free_ports(2 * count)?;
        let mut nodes = Vec::with_capacity(count);
        for pair in ports.chunks(2) {
            let (port, bus) = (pair[0], pair[1]);
            let nodes_conf = dir.path().join(format!("nodes-{port}.conf"));
            let mut args: Vec<String> = vec![
                "--port".into(),
                port.to_string(),
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-port".into(),
                bus.to_string(),
                "--cluster-config-file".into(),
                nodes_conf.display().to_string(),
                "--cluster-node-timeout".into(),
                CLUSTER_NODE_TIMEOUT_MS.to_string(),
                // Replicas synchronise at once instead of after the default 5 s.
                "--repl-diskless-sync-delay".into(),
                "0".into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            nodes.push(RedisNode::start(dir.path(), port, args, None)?);
        }
        let mut cluster = RedisCluster { nodes, _dir: dir };

        // With one host, `--cluster create` makes the first three nodes the primaries
        // and assigns the replicas in order.
        let mut create = Command::new(redis_cli_binary);
        create
            .args(["--cluster", "create"])
            .args(cluster.addresses())
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let output = run_bounded(create, STARTUP_TIMEOUT)?;
        if !output.status.success() {
            return Err(ServerError(format!(
                "redis-cli --cluster create failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        cluster.wait_until_healthy(STARTUP_TIMEOUT)?;
        // Keep the node numbering promise of the type's documentation.
        for (index, node) in cluster.nodes.iter_mut().enumerate() {
            let primary = node.is_primary().map_err(ServerError)?;
            if primary != (index < RedisCluster::PRIMARIES) {
                return Err(ServerError(format!(
                    "redis-cli --cluster create made node {index} (port {}) a {}",
                    node.port,
                    if primary { "primary" } else { "replica" }
                )));
            }
        }
        Ok(cluster)
    }

    /// `127.0.0.1:PORT` of every node, by index.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| loopback(n.port)).collect()
    }

    /// The client port of every node, by index.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `redis+cluster://127.0.0.1:P1,127.0.0.1:P2,...`: every node as a seed.
    pub fn url(&self) -> String {
        format!("redis+cluster://{}", self.addresses().join(","))
    }

    /// Run `redis-cli` (one command, no redirections followed) against node `index`.
    ///
    /// # Errors
    /// For an unknown index, or as [`redis_cli`].
    pub fn cli(&self, index: usize, args: &[&str]) -> ServerResult<String> {
        self.node(index)?.cli(args)
    }

    fn node(&self, index: usize) -> ServerResult<&RedisNode> {
        self.nodes
            .get(index)
            .ok_or_else(|| ServerError(format!("no redis cluster node {index}")))
    }

    fn node_mut(&mut self, index: usize) -> ServerResult<&mut RedisNode> {
        self.nodes
            .get_mut(index)
            .ok_or_else(|| ServerError(format!("no redis cluster node {index}")))
    }

    fn index_of_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port == port)
    }

    /// Kill node `index` (`SIGKILL`). Its `nodes.conf` stays: [`restart`] rejoins it.
    /// (Out-of-range indexes are ignored.)
    ///
    /// [`restart`]: RedisCluster::restart
    pub fn kill(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.kill();
        }
    }

    /// Start node `index` again (killed first if running) on its ports with its
    /// `nodes.conf`, so it rejoins with its identity, empty (no persistence): as the
    /// owner of its slots again if no replica replaced it, else as a replica. Waits
    /// only until it accepts connections; [`wait_until_healthy`] waits for the cluster.
    ///
    /// # Errors
    /// For an unknown index, or when it does not start.
    ///
    /// [`wait_until_healthy`]: RedisCluster::wait_until_healthy
    pub fn restart(&mut self, index: usize) -> ServerResult<()> {
        self.node_mut(index)?.restart(None)
    }

    /// Freeze node `index` (`SIGSTOP`): connections stay open, nothing answers, and
    /// after [`CLUSTER_NODE_TIMEOUT_MS`] the others consider it failed.
    pub fn pause(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.pause();
        }
    }

    /// Resume a paused node (`SIGCONT`).
    pub fn resume(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.resume();
        }
    }

    /// Whether node `index` is running and not paused.
    pub fn is_answering(&self, index: usize) -> bool {
        self.nodes.get(index).is_some_and(RedisNode::answering)
    }

    /// The cluster as the first answering node sees it.
    fn view(&self) -> ServerResult<Vec<ClusterNodeView>> {
        let mut last = ServerError("no redis cluster node is running and unpaused".into());
        for node in self.nodes.iter().filter(|n| n.answering()) {
            match node.cli(&["cluster", "nodes"]) {
                Ok(text) => return Ok(parse_cluster_nodes(&text)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`, asked of an answering node): only the
    /// part inside the first non-empty `{...}` counts, so `{ns}:rev` and `{ns}:log`
    /// share a slot.
    ///
    /// # Errors
    /// When no node answers.
    pub fn keyslot(&self, key: &str) -> ServerResult<u16> {
        let mut last = ServerError("no redis cluster node is running and unpaused".into());
        for node in self.nodes.iter().filter(|n| n.answering()) {
            match node.cli(&["cluster", "keyslot", key]) {
                Ok(text) => {
                    return text.trim().parse().map_err(|_| {
                        ServerError(format!("CLUSTER KEYSLOT {key:?} answered {text:?}"))
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The index of the primary serving `slot`, as an answering node sees it now (right
    /// after a failure it may still name the failed node).
    ///
    /// # Errors
    /// When no node answers, or no known node serves the slot.
    pub fn node_for_slot(&self, slot: u16) -> ServerResult<usize> {
        self.owner(&self.view()?, slot)
    }

    fn owner(&self, view: &[ClusterNodeView], slot: u16) -> ServerResult<usize> {
        view.iter()
            .filter(|n| n.is_primary() && n.owns(slot))
            .find_map(|n| self.index_of_port(n.port))
            .ok_or_else(|| ServerError(format!("no redis cluster node serves slot {slot}")))
    }

    /// The index of the primary serving `key`'s slot (see [`keyslot`]).
    ///
    /// # Errors
    /// As [`node_for_slot`].
    ///
    /// [`keyslot`]: RedisCluster::keyslot
    /// [`node_for_slot`]: RedisCluster::node_for_slot
    pub fn node_for_key(&self, key: &str) -> ServerResult<usize> {
        self.node_for_slot(self.keyslot(key)?)
    }

    /// The index of the primary serving a kvstore namespace: the Redis backend puts
    /// every key of a namespace under the hash tag `{NAMESPACE}`.
    ///
    /// # Errors
    /// As [`node_for_slot`].
    ///
    /// [`node_for_slot`]: RedisCluster::node_for_slot
    pub fn node_for_namespace(&self, namespace: &str) -> ServerResult<usize> {
        self.node_for_key(&format!("{{{namespace}}}:rev"))
    }

    /// `count` fresh namespaces ([`crate::unique_namespace`]) served by `count` different
    /// primaries, with those primaries' indexes: e.g. kill the first's primary and check
    /// the second still works. Random namespaces are drawn until enough land apart.
    ///
    /// # Errors
    /// When `count` exceeds the number of primaries serving slots, or no node answers.
    pub fn namespaces_on_distinct_primaries(
        &self,
        count: usize,
    ) -> ServerResult<Vec<(String, usize)>> {
        let view = self.view()?;
        let primaries = view
            .iter()
            .filter(|n| n.is_primary() && !n.slots.is_empty())
            .count();
        if count > primaries {
            return Err(ServerError(format!(
                "{count} namespaces cannot land on different primaries: {primaries} serve slots"
            )));
        }
        let mut found: Vec<(String, usize)> = Vec::with_capacity(count);
        while found.len() < count {
            let namespace = crate::unique_namespace();
            let slot = self.keyslot(&format!("{{{namespace}}}:rev"))?;
            let index = self.owner(&view, slot)?;
            if found.iter().all(|(_, other)| *other != index) {
                found.push((namespace, index));
            }
        }
        Ok(found)
    }

    /// The indexes of the primaries serving slots now, as an answering node sees it.
    ///
    /// # Errors
    /// When no node answers.
    pub fn primary_indices(&self) -> ServerResult<Vec<usize>> {
        let mut indices: Vec<usize> = self
            .view()?
            .iter()
            .filter(|n| n.is_primary() && !n.slots.is_empty())
            .filter_map(|n| self.index_of_port(n.port))
            .collect();
        indices.sort_unstable();
        Ok(indices)
    }

    /// `CLUSTER INFO` of node `index`.
    ///
    /// # Errors
    /// For an unknown index, or as [`redis_cli`].
    pub fn cluster_info(&self, index: usize) -> ServerResult<String> {
        self.cli(index, &["cluster", "info"])
    }

    /// Wait until the cluster serves every slot from answering nodes: every answering
    /// node reports `cluster_state:ok` and knows every node, in its view every slot is
    /// served by a primary that answers, and every answering replica's link to its
    /// primary is up. After a primary is killed this waits for a replica to replace it
    /// (a primary without replicas: until it is restarted).
    ///
    /// # Errors
    /// When that does not happen within `timeout`.
    pub fn wait_until_healthy(&self, timeout: Duration) -> ServerResult<()> {
        let total = self.nodes.len().to_string();
        poll("the redis cluster to be healthy", timeout, || {
            for node in self.nodes.iter().filter(|n| n.answering()) {
                let info = node.cli(&["cluster", "info"]).map_err(|e| e.0)?;
                if info_field(&info, "cluster_state") != Some("ok")
                    || info_field(&info, "cluster_slots_ok") != Some("16384")
                    || info_field(&info, "cluster_known_nodes") != Some(total.as_str())
                {
                    return Err(format!("node {}: {}", node.port, info.replace("\r\n", " ")));
                }
                let view = parse_cluster_nodes(&node.cli(&["cluster", "nodes"]).map_err(|e| e.0)?);
                for owner in view.iter().filter(|n| !n.slots.is_empty()) {
                    let served = owner.is_primary()
                        && self
                            .index_of_port(owner.port)
                            .is_some_and(|i| self.nodes[i].answering());
                    if !served {
                        return Err(format!(
                            "node {} sees slots {:?} on {} ({:?})",
                            node.port, owner.slots, owner.port, owner.flags
                        ));
                    }
                }
                let me = view.iter().find(|n| n.flags.iter().any(|f| f == "myself"));
                if me.is_some_and(|me| me.flags.iter().any(|f| f == "slave"))
                    && !node.replica_link_up()?
                {
                    return Err(format!("replica {} has not synchronised", node.port));
                }
            }
            Ok(Some(()))
        })
    }
}

/// A Sentinel process and its port (its config file, which Sentinel rewrites, is in its
/// directory under the set's temporary directory).
struct SentinelNode {
    port: u16,
    process: Process,
}

impl SentinelNode {
    fn cli(&self, args: &[&str]) -> ServerResult<String> {
        redis_cli(self.port, args)
    }
}

/// Split the flattened (raw `redis-cli`) reply of `SENTINEL MASTER`/`SENTINEL REPLICAS`
/// into key/value records, a new one at each `name` key.
fn sentinel_records(text: &str) -> Vec<Vec<(String, String)>> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut records: Vec<Vec<(String, String)>> = Vec::new();
    for pair in lines.chunks_exact(2) {
        if pair[0] == "name" || records.is_empty() {
            records.push(Vec::new());
        }
        if let Some(record) = records.last_mut() {
            record.push((pair[0].to_owned(), pair[1].to_owned()));
        }
    }
    records
}

fn record_field<'a>(record: &'a [(String, String)], key: &str) -> Option<&'a str> {
    record
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl std::fmt::Debug for RedisSentinelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSentinelSet")
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

/// A primary, replicas and Sentinels monitoring them as [`RedisSentinelSet::MASTER_NAME`],
/// on loopback, each in its own temporary directory; every process killed on drop.
///
/// Data nodes are numbered by start order: node 0 is the first primary, the replicas
/// follow. Sentinels use quorum `sentinels / 2 + 1`, `down-after-milliseconds`
/// [`SENTINEL_DOWN_AFTER_MS`] and `failover-timeout` [`SENTINEL_FAILOVER_TIMEOUT_MS`]. No
/// `sentinel announce-*` is needed on loopback.
pub struct RedisSentinelSet {
    nodes: Vec<RedisNode>,
    sentinels: Vec<SentinelNode>,
    /// The primary's address as last established by start or [`wait_for_failover`].
    ///
    /// [`wait_for_failover`]: RedisSentinelSet::wait_for_failover
    primary: String,
    _dir: tempfile::TempDir,
}

impl RedisSentinelSet {
    /// The name the Sentinels monitor the primary under.
    pub const MASTER_NAME: &str = "kvstore-primary";

    /// A primary, one replica and one Sentinel (quorum 1). Returns once the replica has
    /// synchronised and the Sentinel knows the primary and the replica (so it can fail
    /// over).
    ///
    /// # Errors
    /// When `redis-server` or `redis-cli` is not installed (naming the package), or the
    /// set is not ready within [`STARTUP_TIMEOUT`].
    pub fn start() -> ServerResult<RedisSentinelSet> {
        RedisSentinelSet::start_with(1, 1)
    }

    /// A primary, `replicas` replicas (at least one, for failovers) and `sentinels`
    /// Sentinels (three: quorum 2). Readiness as [`start`], and every Sentinel knows
    /// the others.
    ///
    /// # Errors
    /// As [`start`]; also when `sentinels` is 0.
    ///
    /// [`start`]: RedisSentinelSet::start
    pub fn start_with(replicas: usize, sentinels: usize) -> ServerResult<RedisSentinelSet> {
        if sentinels == 0 {
            return Err(ServerError("a sentinel set needs a sentinel".into()));
        }
        let redis_server = find_binary("redis-server", "redis-server")?;
        find_binary("redis-cli", "redis-tools")?;
        let dir = tempfile::tempdir().map_err(|e| ServerError(format!("no temp dir: {e}")))?;
        let ports = free_ports(1 + replicas + sentinels)?;
        let (data_ports, sentinel_ports) = ports.split_at(1 + replicas);
        let primary_port = data_ports[0];
        let mut nodes = Vec::with_capacity(data_ports.len());
        for (index, &port) in data_ports.iter().enumerate() {
            let args = vec![
                "--port".into(),
                port.to_string(),
                "--repl-diskless-sync-delay".into(),
                "0".into(),
            ];
            let replica_of = (index > 0).then_some(primary_port);
            nodes.push(RedisNode::start(dir.path(), port, args, replica_of)?);
        }
        // Sentinel discovers replicas from the primary's INFO: started before the
        // replicas are attached, it would learn of them only at its next INFO, 10 s on.
        for replica in &nodes[1..] {
            poll(
                &format!("replica {} to synchronise", replica.port),
                STARTUP_TIMEOUT,
                || replica.replica_link_up().map(|up| up.then_some(())),
            )?;
        }

        let quorum = sentinels / 2 + 1;
        let name = RedisSentinelSet::MASTER_NAME;
        let mut sentinel_nodes = Vec::with_capacity(sentinels);
        for &port in sentinel_ports {
            let sentinel_dir = dir.path().join(format!("sentinel-{port}"));
            std::fs::create_dir_all(&sentinel_dir).map_err(|e| {
                ServerError(format!("cannot create {}: {e}", sentinel_dir.display()))
            })?;
            let conf = sentinel_dir.join("sentinel.conf");
            let text = format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 dir {dir}\n\
                 sentinel resolve-hostnames no\n\
                 sentinel monitor {name} 127.0.0.1 {primary_port} {quorum}\n\
                 sentinel down-after-milliseconds {name} {SENTINEL_DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {name} {SENTINEL_FAILOVER_TIMEOUT_MS}\n",
                dir = sentinel_dir.display(),
            );
            std::fs::write(&conf, text)
                .map_err(|e| ServerError(format!("cannot write {}: {e}", conf.display())))?;
            let mut command = Command::new(&redis_server);
            command.arg(&conf).arg("--sentinel");
            let log = sentinel_dir.join("sentinel.log");
            let mut process = Process::spawn(command, &log)?;
            wait_until("redis sentinel", &log, &mut process, || port_open(port))?;
            sentinel_nodes.push(SentinelNode { port, process });
        }

        let set = RedisSentinelSet {
            primary: loopback(primary_port),
            nodes,
            sentinels: sentinel_nodes,
            _dir: dir,
        };
        poll("the sentinels to be ready", STARTUP_TIMEOUT, || {
            set.sentinels_ready()
        })?;
        Ok(set)
    }

    /// `Ok(Some(()))` once every Sentinel names the known primary, sees it up, knows
    /// every other Sentinel, and knows every replica as connected and synchronised.
    fn sentinels_ready(&self) -> Result<Option<()>, String> {
        let name = RedisSentinelSet::MASTER_NAME;
        let others = (self.sentinels.len() - 1).to_string();
        for sentinel in &self.sentinels {
            let at = sentinel.port;
            let master = sentinel
                .cli(&["sentinel", "master", name])
                .map_err(|e| e.0)?;
            let master = sentinel_records(&master)
                .into_iter()
                .next()
                .unwrap_or_default();
            let address = format!(
                "{}:{}",
                record_field(&master, "ip").unwrap_or("?"),
                record_field(&master, "port").unwrap_or("?")
            );
            if address != self.primary || record_field(&master, "flags") != Some("master") {
                return Err(format!("sentinel {at} sees the master as {master:?}"));
            }
            if record_field(&master, "num-other-sentinels") != Some(others.as_str()) {
                return Err(format!("sentinel {at} does not know every sentinel yet"));
            }
            let replicas = sentinel
                .cli(&["sentinel", "replicas", name])
                .map_err(|e| e.0)?;
            let replicas = sentinel_records(&replicas);
            for node in self
                .nodes
                .iter()
                .filter(|n| loopback(n.port) != self.primary)
            {
                let known = replicas.iter().any(|r| {
                    record_field(r, "port") == Some(node.port.to_string().as_str())
                        && record_field(r, "flags") == Some("slave")
                        && record_field(r, "master-link-status") == Some("ok")
                });
                if !known {
                    return Err(format!(
                        "sentinel {at} does not know replica {} as synchronised: {replicas:?}",
                        node.port
                    ));
                }
            }
        }
        Ok(Some(()))
    }

    /// The name the primary is monitored under ([`RedisSentinelSet::MASTER_NAME`]).
    pub fn master_name(&self) -> &str {
        RedisSentinelSet::MASTER_NAME
    }

    /// `127.0.0.1:PORT` of every Sentinel.
    pub fn sentinel_addresses(&self) -> Vec<String> {
        self.sentinels.iter().map(|s| loopback(s.port)).collect()
    }

    /// `127.0.0.1:PORT` of every data node, by index (node 0 is the first primary).
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| loopback(n.port)).collect()
    }

    /// `redis+sentinel://127.0.0.1:S1[,127.0.0.1:S2...]/MASTER_NAME`.
    pub fn url(&self) -> String {
        format!(
            "redis+sentinel://{}/{}",
            self.sentinel_addresses().join(","),
            self.master_name()
        )
    }

    /// The primary's address as the first answering Sentinel reports it now
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    ///
    /// # Errors
    /// When no Sentinel answers.
    pub fn primary_address(&self) -> ServerResult<String> {
        let mut last = ServerError("no sentinel is running".into());
        for sentinel in self.sentinels.iter().filter(|s| s.process.pid().is_some()) {
            match self.reported_primary(sentinel) {
                Ok(address) => return Ok(address),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn reported_primary(&self, sentinel: &SentinelNode) -> ServerResult<String> {
        let reply = sentinel.cli(&["sentinel", "get-master-addr-by-name", self.master_name()])?;
        let mut lines = reply.lines().map(str::trim);
        match (lines.next(), lines.next()) {
            (Some(ip), Some(port)) if !ip.is_empty() => Ok(format!("{ip}:{port}")),
            _ => Err(ServerError(format!(
                "sentinel {} does not know the master: {reply:?}",
                sentinel.port
            ))),
        }
    }

    /// The index of the data node the Sentinels report as primary.
    ///
    /// # Errors
    /// When no Sentinel answers.
    pub fn primary_index(&self) -> ServerResult<usize> {
        let address = self.primary_address()?;
        port_of(&address)
            .and_then(|port| self.nodes.iter().position(|n| n.port == port))
            .ok_or_else(|| ServerError(format!("the reported primary {address} is not ours")))
    }

    /// `SIGKILL` the node the Sentinels report as primary; its index.
    ///
    /// # Errors
    /// As [`primary_index`].
    ///
    /// [`primary_index`]: RedisSentinelSet::primary_index
    pub fn kill_primary(&mut self) -> ServerResult<usize> {
        let index = self.primary_index()?;
        self.nodes[index].kill();
        Ok(index)
    }

    /// Kill data node `index` (`SIGKILL`). (Out-of-range indexes are ignored.)
    pub fn kill(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.kill();
        }
    }

    /// Freeze data node `index` (`SIGSTOP`); the Sentinels fail over from a paused
    /// primary as from a dead one. Resumed, an old primary still claims to be a primary
    /// (and accepts writes, which are lost) until the Sentinels demote it to a replica,
    /// about 10 s later (they wait 8 s after it reports the wrong role).
    pub fn pause(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.pause();
        }
    }

    /// Resume a paused data node (`SIGCONT`).
    pub fn resume(&mut self, index: usize) {
        if let Some(node) = self.nodes.get_mut(index) {
            node.resume();
        }
    }

    /// Start data node `index` again (killed first if running) on its port, empty:
    /// as a replica of the primary the Sentinels report, or as a primary if that is
    /// itself (no failover happened). Waits until it accepts connections.
    ///
    /// # Errors
    /// For an unknown index, when no Sentinel answers, or when it does not start.
    pub fn restart(&mut self, index: usize) -> ServerResult<()> {
        if index >= self.nodes.len() {
            return Err(ServerError(format!("no sentinel set data node {index}")));
        }
        let primary = port_of(&self.primary_address()?);
        let node = &mut self.nodes[index];
        let replica_of = primary.filter(|&p| p != node.port);
        node.restart(replica_of)
    }

    /// Run `redis-cli` (one command) against data node `index`.
    ///
    /// # Errors
    /// For an unknown index, or as [`redis_cli`].
    pub fn cli(&self, index: usize, args: &[&str]) -> ServerResult<String> {
        self.nodes
            .get(index)
            .ok_or_else(|| ServerError(format!("no sentinel set data node {index}")))?
            .cli(args)
    }

    /// Wait until every running Sentinel reports a primary other than the one known
    /// before (at start or the previous failover), all agree, and that node says it
    /// is a primary (`ROLE`); its address (which becomes the known primary). About 3 s
    /// after a kill; give it [`STARTUP_TIMEOUT`] (three Sentinels may need a 10 s
    /// election retry).
    ///
    /// # Errors
    /// When that does not happen within `timeout`.
    pub fn wait_for_failover(&mut self, timeout: Duration) -> ServerResult<String> {
        let old = self.primary.clone();
        let address = poll(&format!("a sentinel failover from {old}"), timeout, || {
            let mut reported = Vec::new();
            for sentinel in self.sentinels.iter().filter(|s| s.process.pid().is_some()) {
                reported.push(self.reported_primary(sentinel).map_err(|e| e.0)?);
            }
            let Some(new) = reported.first() else {
                return Err("no sentinel is running".into());
            };
            if *new == old || reported.iter().any(|r| r != new) {
                return Err(format!("sentinels report {reported:?}"));
            }
            let node = port_of(new)
                .and_then(|port| self.nodes.iter().find(|n| n.port == port))
                .ok_or_else(|| format!("the sentinels promoted {new}, not ours"))?;
            Ok(node.is_primary()?.then(|| new.clone()))
        })?;
        self.primary.clone_from(&address);
        Ok(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_output_is_parsed() {
        let text = "\
07c3 127.0.0.1:30004@31004,host slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383 [16000->-e7d1]
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 7000
dead 127.0.0.1:30005@31005 master,fail - 1 1 5 disconnected
";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 5);
        assert_eq!(nodes[0].port, 30004);
        assert!(!nodes[0].is_primary());
        assert_eq!(nodes[2].slots, vec![(10923, 16383)]);
        assert_eq!(nodes[3].slots, vec![(0, 5460), (7000, 7000)]);
        assert!(nodes[3].flags.contains(&"myself".to_owned()));
        assert!(nodes[3].owns(7000) && nodes[3].owns(0) && !nodes[3].owns(5461));
        assert!(nodes[4].is_primary() && nodes[4].slots.is_empty());
    }

    #[test]
    fn sentinel_replies_are_split_into_records() {
        let text = "name\n127.0.0.1:1\nip\n127.0.0.1\nport\n1\nflags\nslave\n\
                    name\n127.0.0.1:2\nip\n127.0.0.1\nport\n2\nflags\nslave,disconnected\n";
        let records = sentinel_records(text);
        assert_eq!(records.len(), 2);
        assert_eq!(record_field(&records[1], "port"), Some("2"));
        assert_eq!(
            record_field(&records[1], "flags"),
            Some("slave,disconnected")
        );
    }

    #[test]
    fn cluster_has_three_primaries_and_namespaces_can_be_placed_apart() {
        let started = Instant::now();
        let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("redis cluster ready in {:?}", started.elapsed());
        for index in 0..RedisCluster::PRIMARIES {
            let info = cluster
                .cluster_info(index)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(info_field(&info, "cluster_state"), Some("ok"), "{info}");
        }
        assert_eq!(cluster.primary_indices().unwrap(), vec![0, 1, 2]);
        let ports = cluster.ports();
        assert_eq!(
            cluster.url(),
            format!(
                "redis+cluster://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
                ports[0], ports[1], ports[2]
            )
        );

        // Slots per `redis-cli --cluster create` with three primaries: 0-5460,
        // 5461-10922, 10923-16383. `{a}` hashes to 15495, `{b}` to 3300.
        assert_eq!(cluster.keyslot("{a}:rev").unwrap(), 15495);
        assert_eq!(cluster.keyslot("{a}:log").unwrap(), 15495);
        assert_eq!(cluster.keyslot("{b}:rev").unwrap(), 3300);
        assert_eq!(cluster.node_for_slot(0).unwrap(), 0);
        assert_eq!(cluster.node_for_slot(16383).unwrap(), 2);
        let a = cluster.node_for_namespace("a").unwrap();
        let b = cluster.node_for_namespace("b").unwrap();
        assert_eq!((a, b), (2, 0));
        // Each primary takes a key with its tag and refuses the other's.
        let (port_a, port_b) = (ports[a].to_string(), ports[b].to_string());
        cluster.cli(a, &["set", "{a}:k", "1"]).unwrap();
        cluster.cli(b, &["set", "{b}:k", "2"]).unwrap();
        let moved = cluster.cli(b, &["set", "{a}:k", "1"]).unwrap_err().0;
        assert!(
            moved.contains(&format!("MOVED 15495 127.0.0.1:{port_a}")),
            "{moved}"
        );
        let moved = cluster.cli(a, &["get", "{b}:k"]).unwrap_err().0;
        assert!(
            moved.contains(&format!("MOVED 3300 127.0.0.1:{port_b}")),
            "{moved}"
        );

        let placed = cluster.namespaces_on_distinct_primaries(3).unwrap();
        let mut owners: Vec<usize> = placed.iter().map(|(_, i)| *i).collect();
        owners.sort_unstable();
        assert_eq!(owners, vec![0, 1, 2]);
        for (namespace, index) in &placed {
            assert_eq!(cluster.node_for_namespace(namespace).unwrap(), *index);
        }
        assert!(cluster.namespaces_on_distinct_primaries(4).is_err());
    }

    #[test]
    fn cluster_replica_replaces_a_killed_primary() {
        let started = Instant::now();
        let mut cluster = RedisCluster::start_with_replicas(1).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "redis cluster with replicas ready in {:?}",
            started.elapsed()
        );
        assert_eq!(cluster.addresses().len(), 6);
        assert_eq!(cluster.primary_indices().unwrap(), vec![0, 1, 2]);
        let victim = cluster.node_for_namespace("a").unwrap();

        let killed = Instant::now();
        cluster.kill(victim);
        cluster
            .wait_until_healthy(STARTUP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("redis cluster failover took {:?}", killed.elapsed());
        let successor = cluster.node_for_namespace("a").unwrap();
        assert_ne!(successor, victim);
        assert!(successor >= RedisCluster::PRIMARIES, "a replica took over");
        cluster.cli(successor, &["set", "{a}:k", "1"]).unwrap();

        // Restarted, the old primary rejoins as a replica of its successor.
        cluster.restart(victim).unwrap_or_else(|e| panic!("{e}"));
        cluster
            .wait_until_healthy(STARTUP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cluster.node_for_namespace("a").unwrap(), successor);
        assert!(!cluster.primary_indices().unwrap().contains(&victim));
    }

    #[test]
    fn sentinel_fails_over_to_the_replica() {
        let started = Instant::now();
        let mut set = RedisSentinelSet::start().unwrap_or_else(|e| panic!("{e}"));
        eprintln!("redis sentinel set ready in {:?}", started.elapsed());
        let [sentinel] = set.sentinel_addresses().try_into().unwrap();
        assert_eq!(
            set.url(),
            format!(
                "redis+sentinel://{sentinel}/{}",
                RedisSentinelSet::MASTER_NAME
            )
        );
        let addresses = set.addresses();
        assert_eq!(set.primary_address().unwrap(), addresses[0]);
        set.cli(0, &["set", "before", "1"]).unwrap();
        poll("the replica to receive the write", STARTUP_TIMEOUT, || {
            Ok(set
                .cli(1, &["get", "before"])
                .ok()
                .filter(|v| v.trim() == "1"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let replica_write = set.cli(1, &["set", "x", "1"]).unwrap_err().0;
        assert!(replica_write.contains("READONLY"), "{replica_write}");

        let killed = Instant::now();
        assert_eq!(set.kill_primary().unwrap(), 0);
        let new = set
            .wait_for_failover(STARTUP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("redis sentinel failover took {:?}", killed.elapsed());
        assert_eq!(new, addresses[1]);
        assert_eq!(set.primary_index().unwrap(), 1);
        set.cli(1, &["set", "after", "2"]).unwrap();
        // Replicated before the kill, so the promoted replica has it.
        assert_eq!(set.cli(1, &["get", "before"]).unwrap().trim(), "1");

        // The old primary comes back as a replica of the new one.
        set.restart(0).unwrap_or_else(|e| panic!("{e}"));
        poll("the old primary to replicate", STARTUP_TIMEOUT, || {
            Ok(set
                .cli(0, &["get", "after"])
                .ok()
                .filter(|v| v.trim() == "2"))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn three_sentinels_agree_on_a_failover_from_a_paused_primary() {
        let started = Instant::now();
        let mut set = RedisSentinelSet::start_with(1, 3).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "redis sentinel set (3 sentinels) ready in {:?}",
            started.elapsed()
        );
        assert_eq!(set.url().matches("127.0.0.1:").count(), 3, "{}", set.url());

        let paused = Instant::now();
        set.pause(0);
        let new = set
            .wait_for_failover(STARTUP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "redis sentinel failover (3 sentinels) took {:?}",
            paused.elapsed()
        );
        assert_eq!(new, set.addresses()[1]);
        set.cli(1, &["set", "after", "2"]).unwrap();
        // Resumed, it still claims to be a primary (for about 10 s, until the Sentinels
        // demote it): a client must trust the Sentinels, not the node.
        set.resume(0);
        let role = set.cli(0, &["role"]).unwrap();
        assert_eq!(role.lines().next(), Some("master"), "{role}");
        assert_eq!(set.primary_address().unwrap(), new);
    }
}
