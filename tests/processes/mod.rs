//! Example programs as child processes, for the cross-process tests: find the example
//! binaries `cargo test` built, start them, and wait for the line that says they are
//! ready.

// Each test binary that includes this module uses some of its helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a process may take to say it is ready.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// An example binary built by `cargo test` next to this test's binary.
pub(crate) fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = target.join("examples").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (scripts/test), which builds the examples",
        path.display()
    );
    path
}

/// A child process killed on drop.
pub(crate) struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start an example and wait for the stdout line starting with `ready`.
pub(crate) fn start(name: &str, args: &[&str], ready: &str) -> (Running, String) {
    let mut child = Command::new(example(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let running = Running(child);
    let (lines, first) = std::sync::mpsc::channel();
    let marker = ready.to_owned();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("  | {line}");
            if !sent && line.starts_with(&marker) {
                let _ = lines.send(line);
                sent = true;
            }
        }
    });
    let line = first
        .recv_timeout(STEP_TIMEOUT)
        .unwrap_or_else(|_| panic!("{name} did not print {ready:?} within {STEP_TIMEOUT:?}"));
    (running, line)
}

/// Kill `process` with SIGKILL, as a crash would, and reap it.
pub(crate) fn crash(process: &mut Running) {
    let pid = i32::try_from(process.0.id()).expect("a pid fits in i32");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
    let _ = process.0.wait();
}

/// Send `signal` to `process`.
pub(crate) fn signal(process: &Running, signal: nix::sys::signal::Signal) {
    let pid = i32::try_from(process.0.id()).expect("a pid fits in i32");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .unwrap_or_else(|e| panic!("{signal}: {e}"));
}

/// Stop `process` with SIGTERM, as an orchestrator does, and wait (at most
/// [`STEP_TIMEOUT`]) for it to exit.
pub(crate) async fn terminate(process: &mut Running) {
    signal(process, nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + STEP_TIMEOUT;
    loop {
        match process.0.try_wait() {
            Ok(Some(status)) => {
                assert!(status.success(), "the process exited with {status}");
                return;
            }
            Ok(None) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(None) => panic!("the process did not exit within {STEP_TIMEOUT:?} of SIGTERM"),
            Err(e) => panic!("cannot wait for the process: {e}"),
        }
    }
}

/// The servers the cross-process tests run on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    /// The shared etcd of the test binary.
    Etcd,
    /// The shared Redis of the test binary.
    Redis,
}

/// A store URL on the shared server of `backend`, in a namespace of its own.
pub(crate) fn store_url(backend: Backend, namespace: &str) -> String {
    use kvstore_testkit::server::{shared_etcd, shared_redis};
    match backend {
        Backend::Etcd => format!("etcd://{}/{namespace}", shared_etcd().address()),
        Backend::Redis => format!("{}/0?namespace={namespace}", shared_redis().url()),
    }
}
