//! Real ZooKeeper servers for backend tests: a standalone [`ZooKeeperServer`] and a
//! three-member [`ZooKeeperEnsemble`] on free loopback ports with temporary data
//! directories, stopped on drop; [`zk_cli`] runs one `zkCli.sh` command.
//!
//! They come from Debian's `zookeeper` package (`/usr/share/zookeeper/bin/zkServer.sh`
//! and `zkCli.sh`, on a Java runtime), which `scripts/test` installs. A missing script is a
//! test *failure* naming the package, never a skip. The servers run in the foreground
//! (`zkServer.sh start-foreground`) without JMX or the admin HTTP server, so several can
//! run at once; their data survives [`ZooKeeperServer::kill`] and
//! [`ZooKeeperServer::restart`] (ZooKeeper persists every write before acknowledging it).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::server::{Process, ServerError, ServerResult, free_ports, run_bounded, wait_until};

/// Where Debian's `zookeeper` package installs the server and CLI scripts.
pub const ZOOKEEPER_BIN: &str = "/usr/share/zookeeper/bin";
/// ZooKeeper's tick: sessions may be as short as two ticks. Short, so tests that kill a
/// member see it noticed quickly.
const TICK_MS: u64 = 200;
/// How long one `zkCli.sh` call may take (it starts a JVM).
pub const ZK_CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of one of the package's scripts, or an error naming the package.
fn script(name: &str) -> ServerResult<PathBuf> {
    let path = Path::new(ZOOKEEPER_BIN).join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ServerError(format!(
            "`{}` was not found: install the Debian package `zookeeper` and a Java runtime \
             (scripts/test does: apt-get install zookeeper)",
            path.display()
        )))
    }
}

/// The `srvr` four-letter word's `Mode:` line (`standalone`, `leader`, `follower`), or
/// `None` while the server is not serving requests (starting, or without a quorum).
pub fn serving_mode(port: u16) -> Option<String> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"srvr").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer
        .lines()
        .find_map(|line| line.strip_prefix("Mode: "))
        .map(str::to_owned)
}

/// One member's fixed identity: its id, ports and directory.
#[derive(Clone, Debug)]
struct Member {
    id: usize,
    client_port: u16,
    quorum_port: u16,
    election_port: u16,
    dir: PathBuf,
}

impl Member {
    fn config_path(&self) -> PathBuf {
        self.dir.join("zoo.cfg")
    }

    /// Write `zoo.cfg` (and `myid` for an ensemble) into this member's directory.
    fn configure(&self, ensemble: &[Member]) -> ServerResult<()> {
        let data = self.dir.join("data");
        std::fs::create_dir_all(&data)
            .map_err(|e| ServerError(format!("cannot create {}: {e}", data.display())))?;
        let mut config = format!(
            "tickTime={TICK_MS}\ninitLimit=20\nsyncLimit=10\ndataDir={}\n\
             clientPort={}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
             4lw.commands.whitelist=srvr,ruok\nmaxSessionTimeout=60000\n\
             autopurge.purgeInterval=0\n",
            data.display(),
            self.client_port
        );
        if ensemble.len() > 1 {
            for member in ensemble {
                config.push_str(&format!(
                    "server.{}=127.0.0.1:{}:{}\n",
                    member.id, member.quorum_port, member.election_port
                ));
            }
            std::fs::write(data.join("myid"), format!("{}\n", self.id))
                .map_err(|e| ServerError(format!("cannot write myid: {e}")))?;
        }
        std::fs::write(self.config_path(), config)
            .map_err(|e| ServerError(format!("cannot write zoo.cfg: {e}")))
    }

    /// Start the member in the foreground; `wait` waits until it serves requests (a
    /// member of an ensemble serves only once a quorum has formed).
    fn spawn(&self) -> ServerResult<Process> {
        let mut command = Command::new(script("zkServer.sh")?);
        command
            .arg("start-foreground")
            .arg(self.config_path())
            .env("JMXDISABLE", "true")
            .env("ZOO_LOG_DIR", &self.dir)
            .env("ZOOPIDFILE", self.dir.join("zookeeper.pid"))
            .env("JVMFLAGS", "-Xmx256m -Dzookeeper.root.logger=WARN,CONSOLE");
        Process::spawn(command, &self.dir.join("zookeeper.log"))
    }

    fn wait_serving(&self, process: &mut Process) -> ServerResult<()> {
        wait_until(
            &format!("zookeeper member {}", self.id),
            &self.dir.join("zookeeper.log"),
            process,
            || serving_mode(self.client_port).is_some(),
        )
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

impl std::fmt::Debug for ZooKeeperServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperServer")
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

/// A standalone ZooKeeper on a free loopback port, stopped and deleted on drop. Its data
/// survives [`ZooKeeperServer::kill`] and [`ZooKeeperServer::restart`].
pub struct ZooKeeperServer {
    member: Member,
    process: Process,
    _dir: tempfile::TempDir,
}

impl ZooKeeperServer {
    /// Start ZooKeeper and wait until it serves requests.
    ///
    /// # Errors
    /// When the `zookeeper` package (or Java) is missing, or the server does not serve
    /// within [`crate::server::STARTUP_TIMEOUT`].
    pub fn start() -> ServerResult<ZooKeeperServer> {
        let dir = tempfile::tempdir().map_err(|e| ServerError(format!("no temp dir: {e}")))?;
        let ports = free_ports(3)?;
        let member = Member {
            id: 1,
            client_port: ports[0],
            quorum_port: ports[1],
            election_port: ports[2],
            dir: dir.path().to_path_buf(),
        };
        member.configure(std::slice::from_ref(&member))?;
        let mut process = member.spawn()?;
        member.wait_serving(&mut process)?;
        Ok(ZooKeeperServer {
            member,
            process,
            _dir: dir,
        })
    }

    /// `127.0.0.1:PORT`, as a `zookeeper://` URL wants it.
    pub fn address(&self) -> String {
        self.member.address()
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.member.client_port
    }

    /// `zookeeper://127.0.0.1:PORT/namespace`.
    pub fn url(&self, namespace: &str) -> String {
        format!("zookeeper://{}/{namespace}", self.address())
    }

    /// Kill the server (`SIGKILL`), keeping its data directory.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Start the server again on the same port and data directory, after [`kill`], and
    /// wait until it serves.
    ///
    /// # Errors
    /// As [`ZooKeeperServer::start`].
    ///
    /// [`kill`]: ZooKeeperServer::kill
    pub fn restart(&mut self) -> ServerResult<()> {
        self.process.kill();
        let mut process = self.member.spawn()?;
        self.member.wait_serving(&mut process)?;
        self.process = process;
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

    /// Run one `zkCli.sh` command against this server; returns its stdout.
    ///
    /// # Errors
    /// As [`zk_cli`].
    pub fn zk_cli(&self, args: &[&str]) -> ServerResult<String> {
        zk_cli(&self.address(), args)
    }
}

impl std::fmt::Debug for ZooKeeperEnsemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZooKeeperEnsemble")
            .field("addresses", &self.addresses())
            .finish_non_exhaustive()
    }
}

/// A three-member ZooKeeper ensemble on loopback; stopped and deleted on drop.
pub struct ZooKeeperEnsemble {
    members: Vec<Member>,
    processes: Vec<Process>,
    _dir: tempfile::TempDir,
}

impl ZooKeeperEnsemble {
    /// Start three members together and wait until each serves (a quorum formed).
    ///
    /// # Errors
    /// As [`ZooKeeperServer::start`].
    pub fn start() -> ServerResult<ZooKeeperEnsemble> {
        let dir = tempfile::tempdir().map_err(|e| ServerError(format!("no temp dir: {e}")))?;
        let ports = free_ports(9)?;
        let members: Vec<Member> = (0..3)
            .map(|i| Member {
                id: i + 1,
                client_port: ports[3 * i],
                quorum_port: ports[3 * i + 1],
                election_port: ports[3 * i + 2],
                dir: dir.path().join(format!("member{}", i + 1)),
            })
            .collect();
        for member in &members {
            member.configure(&members)?;
        }
        let mut processes = Vec::new();
        for member in &members {
            processes.push(member.spawn()?);
        }
        for (member, process) in members.iter().zip(processes.iter_mut()) {
            member.wait_serving(process)?;
        }
        Ok(ZooKeeperEnsemble {
            members,
            processes,
            _dir: dir,
        })
    }

    /// `127.0.0.1:PORT` of each member, by index.
    pub fn addresses(&self) -> Vec<String> {
        self.members.iter().map(Member::address).collect()
    }

    /// Every member's address, comma-separated, as a `zookeeper://` URL wants them.
    pub fn connect_string(&self) -> String {
        self.addresses().join(",")
    }

    /// The index of the member that reports itself leader, if any.
    pub fn leader_index(&self) -> Option<usize> {
        self.members
            .iter()
            .position(|m| serving_mode(m.client_port).as_deref() == Some("leader"))
    }

    /// Kill member `index` (`SIGKILL`), keeping its data directory.
    pub fn kill(&mut self, index: usize) {
        if let Some(process) = self.processes.get_mut(index) {
            process.kill();
        }
    }

    /// Start member `index` again after [`kill`] and wait until it serves.
    ///
    /// # Errors
    /// When `index` is not 0, 1 or 2, or as [`ZooKeeperServer::start`].
    ///
    /// [`kill`]: ZooKeeperEnsemble::kill
    pub fn restart(&mut self, index: usize) -> ServerResult<()> {
        let (Some(member), Some(process)) =
            (self.members.get(index), self.processes.get_mut(index))
        else {
            return Err(ServerError(format!("no zookeeper ensemble member {index}")));
        };
        process.kill();
        let mut started = member.spawn()?;
        member.wait_serving(&mut started)?;
        *process = started;
        Ok(())
    }
}

/// Run `zkCli.sh -server ADDRESS ARGS...` (one command) and return its stdout without the
/// CLI's connection chatter (the lines before and including its `WatchedEvent` line).
///
/// # Errors
/// When the script is missing, exits non-zero, or takes longer than [`ZK_CLI_TIMEOUT`].
pub fn zk_cli(address: &str, args: &[&str]) -> ServerResult<String> {
    let mut command = Command::new(script("zkCli.sh")?);
    command
        .env("JMXDISABLE", "true")
        .env("ZOO_LOG_DIR", std::env::temp_dir())
        .args(["-server", address])
        .args(args);
    let output = run_bounded(command, ZK_CLI_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(ServerError(format!(
            "zkCli.sh {args:?} failed ({}): {}{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let body = match stdout.rfind("WatchedEvent state:SyncConnected type:None path:null") {
        Some(at) => stdout[at..]
            .split_once('\n')
            .map_or(String::new(), |(_, rest)| rest.to_owned()),
        None => stdout,
    };
    Ok(body)
}

/// One standalone ZooKeeper shared by every test of the calling test binary (tests use
/// unique namespaces); killed when the binary exits.
///
/// # Panics
/// When ZooKeeper cannot be started: the message names the missing package or the
/// failure.
pub fn shared_zookeeper() -> &'static ZooKeeperServer {
    static SERVER: OnceLock<ZooKeeperServer> = OnceLock::new();
    SERVER.get_or_init(|| ZooKeeperServer::start().unwrap_or_else(|e| panic!("{e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_server_restarts_with_its_data() {
        let mut server = ZooKeeperServer::start().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(serving_mode(server.port()).as_deref(), Some("standalone"));
        server
            .zk_cli(&["create", "/kept", "value-1"])
            .unwrap_or_else(|e| panic!("{e}"));
        server.kill();
        assert_eq!(serving_mode(server.port()), None);
        server.restart().unwrap_or_else(|e| panic!("{e}"));
        let read = server
            .zk_cli(&["get", "/kept"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.trim(), "value-1");
    }

    #[test]
    fn an_ensemble_keeps_serving_without_one_member() {
        let mut ensemble = ZooKeeperEnsemble::start().unwrap_or_else(|e| panic!("{e}"));
        let leader = ensemble.leader_index().expect("a leader");
        ensemble.kill(leader);
        let survivor = (leader + 1) % 3;
        let address = ensemble.addresses()[survivor].clone();
        // The survivors elect a new leader, then serve writes again.
        let started = std::time::Instant::now();
        loop {
            if zk_cli(&address, &["create", "/after", "x"])
                .is_ok_and(|_| zk_cli(&address, &["get", "/after"]).is_ok_and(|v| v.trim() == "x"))
            {
                break;
            }
            assert!(
                started.elapsed() < crate::server::STARTUP_TIMEOUT,
                "the ensemble did not serve without member {leader}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        ensemble.restart(leader).unwrap_or_else(|e| panic!("{e}"));
    }
}
