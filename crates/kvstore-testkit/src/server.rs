//! Real servers for backend tests: `etcd` and `redis-server` processes on free loopback
//! ports with temporary data directories, stopped on drop.
//!
//! They can also be killed, restarted (same data directory and port) and paused
//! (`SIGSTOP`/`SIGCONT`) for fault tests, and [`EtcdCluster`] starts three etcd members.
//! Redis Cluster and Sentinel topologies are in [`crate::redis_topology`]; [`redis_cli`]
//! runs one `redis-cli` command.
//! The binaries come from Debian's `etcd-server` and `redis-server` packages, which
//! `scripts/test` installs. A missing binary is a test *failure* naming the package, never
//! a skip.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a server may take to become healthy after start.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a test server could not be started.
#[derive(Debug)]
pub struct ServerError(pub String);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServerError {}

/// The result of starting or driving a test server.
pub type ServerResult<T> = Result<T, ServerError>;

/// The path of `binary`, or an error naming the Debian package that provides it.
///
/// # Errors
/// When `binary` is on neither `PATH` nor `/usr/bin`.
pub fn find_binary(binary: &str, package: &str) -> ServerResult<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(binary))
        .find(|path| path.is_file());
    on_path.ok_or_else(|| {
        ServerError(format!(
            "`{binary}` was not found: install the Debian package `{package}` \
             (scripts/test does: apt-get install {package})"
        ))
    })
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
///
/// # Errors
/// When the OS has no free port.
pub fn free_port() -> ServerResult<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| ServerError(format!("no free loopback port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| ServerError(format!("no free loopback port: {e}")))
}

/// `count` distinct free TCP ports on 127.0.0.1: all are bound at once, then released,
/// so no two are the same (as two [`free_port`] calls could be).
///
/// # Errors
/// When the OS has not that many free ports.
pub fn free_ports(count: usize) -> ServerResult<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| ServerError(format!("no free loopback port: {e}")))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(|e| ServerError(format!("no free loopback port: {e}")))
}

/// A request to the spawner thread: a command to start, and where to send the child.
type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Start `command` from one long-lived thread, with the child set to be killed when that
/// thread ends. `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
/// so the spawner thread lives as long as the test process: if the process exits or
/// crashes without dropping its servers (a `static` shared server is never dropped),
/// the kernel still kills them.
fn spawn_owned(command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, inbox) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("kvstore-test-servers".into())
            .spawn(move || {
                for (mut command, reply) in inbox {
                    // SAFETY: the closure runs in the forked child before exec and only
                    // makes the async-signal-safe prctl system call.
                    unsafe {
                        command.pre_exec(|| {
                            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                                .map_err(std::io::Error::from)
                        });
                    }
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("the test server spawner thread starts");
        Mutex::new(requests)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, reply))
        .map_err(|_| std::io::Error::other("the test server spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the test server spawner thread is gone"))?
}

/// A running child process, killed on drop.
pub(crate) struct Process {
    child: Option<Child>,
}

impl Process {
    pub(crate) fn spawn(mut command: Command, log: &Path) -> ServerResult<Process> {
        let out = std::fs::File::create(log)
            .map_err(|e| ServerError(format!("cannot create {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| ServerError(format!("cannot open {}: {e}", log.display())))?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let description = format!("{command:?}");
        let child = spawn_owned(command)
            .map_err(|e| ServerError(format!("cannot start {description}: {e}")))?;
        Ok(Process { child: Some(child) })
    }

    pub(crate) fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    pub(crate) fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(pid, signal);
        }
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            _ => None,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run a short-lived `command` to completion (killed with the test binary, like the
/// servers), capturing its output; killed and an error if it runs longer than `timeout`
/// (a client of a paused server would otherwise wait forever).
pub(crate) fn run_bounded(mut command: Command, timeout: Duration) -> ServerResult<Output> {
    let description = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child =
        spawn_owned(command).map_err(|e| ServerError(format!("cannot run {description}: {e}")))?;
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() < timeout => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => break Err(format!("did not finish within {timeout:?}")),
            Err(e) => break Err(format!("could not be waited for: {e}")),
        }
    };
    if status.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Ok(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        Err(why) => Err(ServerError(format!(
            "{description} {why}: {}",
            String::from_utf8_lossy(&stderr)
        ))),
    }
}

pub(crate) fn wait_until(
    what: &str,
    log: &Path,
    process: &mut Process,
    mut ready: impl FnMut() -> bool,
) -> ServerResult<()> {
    let started = Instant::now();
    while started.elapsed() < STARTUP_TIMEOUT {
        if ready() {
            return Ok(());
        }
        if let Some(status) = process.exited() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            return Err(ServerError(format!(
                "{what} exited ({status}) while starting:\n{tail}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(ServerError(format!(
        "{what} was not healthy within {STARTUP_TIMEOUT:?}; see {}",
        log.display()
    )))
}

pub(crate) fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// PEM files for serving etcd's client port over TLS.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server certificate (valid for 127.0.0.1).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signed it, for health checks with etcdctl.
    pub ca: PathBuf,
}

/// One etcd member's fixed identity: name, ports, data directory, TLS files and extra
/// command-line options.
#[derive(Clone, Debug)]
struct EtcdMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    tls: Option<ServerTls>,
    /// Passed after the standard options (so they can override them), on every start.
    extra_args: Vec<String>,
}

impl EtcdMember {
    fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// Start this member of `initial_cluster` and wait until it is healthy. `token`
    /// must be the same for every member of one cluster.
    ///
    /// The same call restarts a killed member: once its data directory holds a WAL,
    /// etcd ignores the `--initial-cluster*` options (`new` included) and rejoins with
    /// the identity it has on disk. A cluster member is healthy again only once it has a
    /// quorum (a leader) to answer through.
    fn start(&self, initial_cluster: &str, token: &str) -> ServerResult<Process> {
        let etcd = find_binary("etcd", "etcd-server")?;
        let log = self.data_dir.with_extension("log");
        let mut command = Command::new(etcd);
        command
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.client_url()])
            .args(["--advertise-client-urls", &self.client_url()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", token])
            .args(["--log-level", "warn"]);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key);
        }
        command.args(&self.extra_args);
        let mut process = Process::spawn(command, &log)?;
        wait_until(&format!("etcd {}", self.name), &log, &mut process, || {
            etcd_healthy(&self.client_url(), self.tls.as_ref())
        })?;
        Ok(process)
    }
}

/// Whether `etcdctl endpoint health` succeeds for `endpoint`.
fn etcd_healthy(endpoint: &str, tls: Option<&ServerTls>) -> bool {
    let Ok(etcdctl) = find_binary("etcdctl", "etcd-client") else {
        // Without etcdctl, an open port is the best signal available.
        return endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .is_some_and(port_open);
    };
    let mut command = Command::new(etcdctl);
    if let Some(tls) = tls {
        command.arg("--cacert").arg(&tls.ca);
    }
    command
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "--command-timeout=1s",
            "endpoint",
            "health",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl std::fmt::Debug for EtcdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdServer")
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

/// A single-member etcd on free loopback ports, stopped and deleted on drop.
pub struct EtcdServer {
    member: EtcdMember,
    process: Process,
    _dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Start etcd and wait until it reports healthy.
    ///
    /// # Errors
    /// When `etcd` is not installed (naming the package), or it does not become healthy
    /// within [`STARTUP_TIMEOUT`].
    pub fn start() -> ServerResult<EtcdServer> {
        EtcdServer::start_with_tls(None)
    }

    /// Start etcd serving clients over TLS (`https://`) with the given files, or plain
    /// HTTP with `None`.
    ///
    /// # Errors
    /// As [`EtcdServer::start`].
    pub fn start_with_tls(tls: Option<ServerTls>) -> ServerResult<EtcdServer> {
        EtcdServer::launch(tls, &[])
    }

    /// Start etcd with extra command-line options, e.g. `&["--auth-token-ttl", "3"]`.
    /// They come after the standard ones (so a repeated option overrides them) and are
    /// passed again on every [`restart`].
    ///
    /// # Errors
    /// As [`EtcdServer::start`]; an option etcd rejects makes it exit while starting,
    /// and the error quotes its log.
    ///
    /// [`restart`]: EtcdServer::restart
    pub fn start_with_args(extra: &[&str]) -> ServerResult<EtcdServer> {
        EtcdServer::launch(None, extra)
    }

    fn launch(tls: Option<ServerTls>, extra: &[&str]) -> ServerResult<EtcdServer> {
        let dir = tempfile::tempdir().map_err(|e| ServerError(format!("no temp dir: {e}")))?;
        let member = EtcdMember {
            name: "kvstore-test".into(),
            client_port: free_port()?,
            peer_port: free_port()?,
            data_dir: dir.path().join("data"),
            tls,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        let process = member.start(
            &format!("{}={}", member.name, member.peer_url()),
            "kvstore-test",
        )?;
        Ok(EtcdServer {
            member,
            process,
            _dir: dir,
        })
    }

    /// The client endpoint, `http://127.0.0.1:PORT` (`https` with TLS).
    pub fn endpoint(&self) -> String {
        self.member.client_url()
    }

    /// `127.0.0.1:PORT`, as an `etcd://` URL wants it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.member.client_port)
    }

    /// Kill the server (`SIGKILL`), keeping its data directory.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Start the server again on the same port and data directory (and with the same
    /// options), after [`kill`].
    ///
    /// # Errors
    /// As [`EtcdServer::start`].
    ///
    /// [`kill`]: EtcdServer::kill
    pub fn restart(&mut self) -> ServerResult<()> {
        self.process.kill();
        let cluster = format!("{}={}", self.member.name, self.member.peer_url());
        self.process = self.member.start(&cluster, "kvstore-test")?;
        Ok(())
    }

    /// Freeze the server process (`SIGSTOP`): connections stay open but nothing answers.
    pub fn pause(&self) {
        self.process.signal(Signal::SIGSTOP);
    }

    /// Resume a paused server (`SIGCONT`).
    pub fn resume(&self) {
        self.process.signal(Signal::SIGCONT);
    }

    /// Run `etcdctl` against this server with `args`; returns its stdout.
    ///
    /// # Errors
    /// When etcdctl is missing or exits non-zero (with its stderr).
    pub fn etcdctl(&self, args: &[&str]) -> ServerResult<String> {
        run_etcdctl(&self.endpoint(), args)
    }
}

/// Run `etcdctl --endpoints ENDPOINT ARGS...`; returns its stdout.
///
/// # Errors
/// When etcdctl is missing or exits non-zero (with its stderr).
pub fn run_etcdctl(endpoint: &str, args: &[&str]) -> ServerResult<String> {
    let etcdctl = find_binary("etcdctl", "etcd-client")?;
    let output = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args)
        .output()
        .map_err(|e| ServerError(format!("cannot run etcdctl: {e}")))?;
    if !output.status.success() {
        return Err(ServerError(format!(
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The `--initial-cluster-token` of every [`EtcdCluster`].
const CLUSTER_TOKEN: &str = "kvstore-cluster";

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("addresses", &self.addresses())
            .finish_non_exhaustive()
    }
}

/// A three-member etcd cluster on loopback.
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
    processes: Vec<Process>,
    /// The `--initial-cluster` value: `member0=http://127.0.0.1:PEER,...`.
    initial_cluster: String,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Start three members and wait until each is healthy.
    ///
    /// # Errors
    /// As [`EtcdServer::start`].
    pub fn start() -> ServerResult<EtcdCluster> {
        EtcdCluster::start_with_args(&[])
    }

    /// Start three members, each with the extra command-line options `extra` (kept
    /// across [`restart`]), e.g. `&["--election-timeout", "500"]`.
    ///
    /// # Errors
    /// As [`EtcdServer::start`].
    ///
    /// [`restart`]: EtcdCluster::restart
    pub fn start_with_args(extra: &[&str]) -> ServerResult<EtcdCluster> {
        let dir = tempfile::tempdir().map_err(|e| ServerError(format!("no temp dir: {e}")))?;
        let mut members = Vec::new();
        for i in 0..3 {
            members.push(EtcdMember {
                name: format!("member{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                data_dir: dir.path().join(format!("member{i}")),
                tls: None,
                extra_args: extra.iter().map(|s| s.to_string()).collect(),
            });
        }
        let initial: Vec<String> = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        let initial_cluster = initial.join(",");
        // Members must start together: each waits for a quorum before it is healthy.
        let handles: Vec<_> = members
            .iter()
            .cloned()
            .map(|member| {
                let initial = initial_cluster.clone();
                std::thread::spawn(move || member.start(&initial, CLUSTER_TOKEN))
            })
            .collect();
        let mut processes = Vec::new();
        for handle in handles {
            let process = handle
                .join()
                .map_err(|_| ServerError("an etcd member start panicked".into()))??;
            processes.push(process);
        }
        Ok(EtcdCluster {
            members,
            processes,
            initial_cluster,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:PORT` of each member's client port, by member index.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::client_url).collect()
    }

    /// `127.0.0.1:PORT` of each member's client port.
    pub fn addresses(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Kill member `index` (`SIGKILL`), keeping its data directory.
    pub fn kill(&mut self, index: usize) {
        if let Some(process) = self.processes.get_mut(index) {
            process.kill();
        }
    }

    /// Start member `index` again after [`kill`], with its data directory, ports and
    /// options, and wait until it is healthy. It rejoins the cluster with the identity in
    /// its data directory. (A running member is killed first.)
    ///
    /// # Errors
    /// When `index` is not 0, 1 or 2, or as [`EtcdServer::start`]. A member is healthy
    /// only once the cluster has a quorum: restarting one member while the two others
    /// are down times out after [`STARTUP_TIMEOUT`].
    ///
    /// [`kill`]: EtcdCluster::kill
    pub fn restart(&mut self, index: usize) -> ServerResult<()> {
        let (Some(member), Some(process)) =
            (self.members.get(index), self.processes.get_mut(index))
        else {
            return Err(ServerError(format!("no etcd cluster member {index}")));
        };
        process.kill();
        *process = member.start(&self.initial_cluster, CLUSTER_TOKEN)?;
        Ok(())
    }

    /// The index of the member that is the Raft leader now, asking every live member
    /// with `etcdctl endpoint status`. Only a member's claim about itself counts (a
    /// follower's idea of the leader may be stale); if two claim it (an old leader not
    /// yet deposed), the one with the higher term wins. `None` while there is no leader
    /// (an election in progress, or no quorum) or when etcdctl is missing.
    pub fn leader_index(&self) -> Option<usize> {
        let mut leader: Option<(u64, usize)> = None;
        for (index, (member, process)) in self.members.iter().zip(&self.processes).enumerate() {
            if process.pid().is_none() {
                continue; // killed
            }
            let Ok(status) = run_etcdctl(
                &member.client_url(),
                &["--command-timeout=1s", "endpoint", "status", "-w", "json"],
            ) else {
                continue;
            };
            if let Some(term) = leader_term(&status)
                && leader.is_none_or(|(best, _)| term > best)
            {
                leader = Some((term, index));
            }
        }
        leader.map(|(_, index)| index)
    }

    /// Wait until some member is the leader (see [`leader_index`]); its index.
    ///
    /// # Errors
    /// When there is no leader within `timeout`.
    ///
    /// [`leader_index`]: EtcdCluster::leader_index
    pub fn wait_for_leader(&self, timeout: Duration) -> ServerResult<usize> {
        let started = Instant::now();
        loop {
            if let Some(index) = self.leader_index() {
                return Ok(index);
            }
            if started.elapsed() >= timeout {
                return Err(ServerError(format!(
                    "the etcd cluster had no leader within {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// From one member's `etcdctl endpoint status -w json` output: its Raft term if it
/// reports itself as the leader, `None` if it is a follower or the output is not
/// understood.
fn leader_term(status_json: &str) -> Option<u64> {
    let statuses: serde_json::Value = serde_json::from_str(status_json).ok()?;
    let status = statuses.as_array()?.first()?.get("Status")?;
    let member_id = status.get("header")?.get("member_id")?.as_u64()?;
    let leader_id = status.get("leader")?.as_u64()?;
    (member_id == leader_id && leader_id != 0).then(|| {
        status
            .get("raftTerm")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    })
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

/// A `redis-server` on a free loopback port without persistence, stopped on drop.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    process: Process,
}

impl RedisServer {
    /// Start redis-server (no persistence) and wait until it accepts connections.
    ///
    /// # Errors
    /// When `redis-server` is not installed (naming the package), or it does not accept
    /// connections within [`STARTUP_TIMEOUT`].
    pub fn start() -> ServerResult<RedisServer> {
        RedisServer::start_with(&[])
    }

    /// Start redis-server with extra command-line options (e.g. `--requirepass`).
    ///
    /// # Errors
    /// As [`RedisServer::start`].
    pub fn start_with(extra: &[&str]) -> ServerResult<RedisServer> {
        let dir = tempfile::tempdir().map_err(|e| ServerError(format!("no temp dir: {e}")))?;
        let port = free_port()?;
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.splice(0..0, ["--port".to_owned(), port.to_string()]);
        let process = RedisServer::launch(port, dir.path(), &extra)?;
        Ok(RedisServer {
            port,
            dir,
            extra,
            process,
        })
    }

    /// Start redis-server serving only TLS on its port, with the given PEM files
    /// (clients are not asked for certificates).
    ///
    /// # Errors
    /// As [`RedisServer::start`].
    pub fn start_tls(tls: &ServerTls) -> ServerResult<RedisServer> {
        let dir = tempfile::tempdir().map_err(|e| ServerError(format!("no temp dir: {e}")))?;
        let port = free_port()?;
        let path = |p: &PathBuf| p.display().to_string();
        let extra = vec![
            "--port".to_owned(),
            "0".to_owned(),
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            path(&tls.cert),
            "--tls-key-file".to_owned(),
            path(&tls.key),
            "--tls-ca-cert-file".to_owned(),
            path(&tls.ca),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        let process = RedisServer::launch(port, dir.path(), &extra)?;
        Ok(RedisServer {
            port,
            dir,
            extra,
            process,
        })
    }

    pub(crate) fn launch(port: u16, dir: &Path, extra: &[String]) -> ServerResult<Process> {
        let binary = find_binary("redis-server", "redis-server")?;
        let log = dir.join("redis.log");
        let mut command = Command::new(binary);
        command
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args(["--save", "", "--appendonly", "no"])
            .args(extra);
        let mut process = Process::spawn(command, &log)?;
        let tls_only = extra.iter().any(|a| a == "--tls-port");
        wait_until("redis-server", &log, &mut process, || {
            tls_only || port_open(port)
        })?;
        Ok(process)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`: where clients connect (as every server of this crate says it).
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.address())
    }

    /// Run `redis-cli` against this server ([`redis_cli`]).
    ///
    /// # Errors
    /// As [`redis_cli`].
    pub fn redis_cli(&self, args: &[&str]) -> ServerResult<String> {
        redis_cli(self.port, args)
    }

    /// The server's directory (for certificates and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kill the server (`SIGKILL`); without persistence its data is gone.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Start the server again on the same port (empty, since there is no persistence).
    ///
    /// # Errors
    /// As [`RedisServer::start`].
    pub fn restart(&mut self) -> ServerResult<()> {
        self.process.kill();
        self.process = RedisServer::launch(self.port, self.dir.path(), &self.extra)?;
        Ok(())
    }

    /// Freeze the server process (`SIGSTOP`).
    pub fn pause(&self) {
        self.process.signal(Signal::SIGSTOP);
    }

    /// Resume a paused server (`SIGCONT`).
    pub fn resume(&self) {
        self.process.signal(Signal::SIGCONT);
    }
}

/// How long one `redis-cli` call may take.
pub const REDIS_CLI_TIMEOUT: Duration = Duration::from_secs(5);

/// Run `redis-cli -h 127.0.0.1 -p PORT -e ARGS...` (one command, raw output); returns its
/// stdout.
///
/// # Errors
/// When redis-cli is missing, cannot connect, gets an error reply (`-e`), or takes
/// longer than [`REDIS_CLI_TIMEOUT`] (a paused server); the error quotes its output.
pub fn redis_cli(port: u16, args: &[&str]) -> ServerResult<String> {
    let binary = find_binary("redis-cli", "redis-tools")?;
    let mut command = Command::new(binary);
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-e"])
        .args(args);
    let output = run_bounded(command, REDIS_CLI_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(ServerError(format!(
            "redis-cli -p {port} {args:?} failed ({}): {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(stdout)
}

/// One etcd shared by every test of the calling test binary (tests use unique
/// namespaces); killed when the binary exits.
///
/// # Panics
/// When etcd cannot be started: the message names the missing package or the failure.
pub fn shared_etcd() -> &'static EtcdServer {
    static SERVER: OnceLock<EtcdServer> = OnceLock::new();
    SERVER.get_or_init(|| EtcdServer::start().unwrap_or_else(|e| panic!("{e}")))
}

/// One redis-server shared by every test of the calling test binary; killed when the
/// binary exits.
///
/// # Panics
/// When redis-server cannot be started: the message names the missing package or the
/// failure.
pub fn shared_redis() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start().unwrap_or_else(|e| panic!("{e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_term_reads_etcdctl_json() {
        let leader = r#"[{"Endpoint":"http://127.0.0.1:1","Status":{"header":{"cluster_id":1,"member_id":14414486971719097473,"revision":1,"raft_term":2},"leader":14414486971719097473,"raftTerm":2}}]"#;
        let follower = r#"[{"Endpoint":"http://127.0.0.1:1","Status":{"header":{"cluster_id":1,"member_id":15101859335780327642,"revision":1,"raft_term":2},"leader":14414486971719097473,"raftTerm":2}}]"#;
        assert_eq!(leader_term(leader), Some(2));
        assert_eq!(leader_term(follower), None);
        assert_eq!(leader_term("not json"), None);
    }

    #[test]
    fn etcd_extra_args_are_kept_across_restart() {
        let metrics = free_port().expect("free port");
        let url = format!("http://127.0.0.1:{metrics}");
        let mut etcd = EtcdServer::start_with_args(&["--listen-metrics-urls", &url])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(port_open(metrics), "etcd did not take the extra option");
        etcd.kill();
        assert!(!port_open(metrics), "the killed etcd still listens");
        etcd.restart().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            port_open(metrics),
            "the restarted etcd lost the extra option"
        );
    }

    #[test]
    fn cluster_elects_a_new_leader_and_a_killed_member_rejoins() {
        const ELECTION: Duration = Duration::from_secs(30);
        let mut cluster = EtcdCluster::start().unwrap_or_else(|e| panic!("{e}"));
        let endpoints = cluster.endpoints();
        let old = cluster
            .wait_for_leader(ELECTION)
            .unwrap_or_else(|e| panic!("{e}"));
        run_etcdctl(&endpoints[old], &["put", "before", "1"]).unwrap_or_else(|e| panic!("{e}"));

        cluster.kill(old);
        let new = cluster
            .wait_for_leader(ELECTION)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(new, old, "the killed member cannot lead");
        run_etcdctl(&endpoints[new], &["put", "after", "2"]).unwrap_or_else(|e| panic!("{e}"));

        // Same data directory and ports, started with the same (`new`) flags: it rejoins.
        cluster.restart(old).unwrap_or_else(|e| panic!("{e}"));
        for key in ["before", "after"] {
            let got = run_etcdctl(&endpoints[old], &["get", key, "--print-value-only"])
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(!got.trim().is_empty(), "the restarted member lacks {key}");
        }
        assert!(cluster.leader_index().is_some());
        assert!(cluster.restart(3).is_err());
    }
}
