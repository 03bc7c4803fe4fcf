//! kvctl as a process against a real etcd and a real Redis started by the test support.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvstore_testkit::server::{free_port, shared_etcd, shared_redis};
use kvstore_testsuite::unique_namespace;

const WAIT: Duration = Duration::from_secs(30);

/// Every backend a test runs on: (name, store URL).
fn stores() -> Vec<(&'static str, String)> {
    vec![
        ("etcd", format!("etcd://{}", shared_etcd().address())),
        ("redis", shared_redis().url()),
    ]
}

/// A kvctl command on `store` under `namespace`.
fn kvctl(store: &str, namespace: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    command.args(["--store", store, "--namespace", namespace]);
    command
}

fn run(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().expect("kvctl runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: stdout {:?} stderr {:?}",
        stdout(output),
        stderr(output)
    );
}

/// A child whose stdout lines arrive on a channel; killed on drop.
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    fn start(command: &mut Command) -> Streaming {
        let mut child = command
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("kvctl runs");
        let stdout = child.stdout.take().expect("piped");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Streaming { child, lines }
    }

    fn next_line(&self, what: &str) -> String {
        self.lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{what}: no line within {WAIT:?}"))
    }

    fn interrupt(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal");
        self.child.wait().expect("kvctl exits")
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn put_get_ls_cas_del_round_trip() {
    for (backend, store) in stores() {
        let ns = unique_namespace();
        let put = run(kvctl(&store, &ns).args(["put", "config/mode", "blue"]));
        assert_exit(&put, 0, backend);
        let revision: u64 = stdout(&put)
            .trim()
            .trim_start_matches("OK revision ")
            .parse()
            .expect("a revision");

        let get = run(kvctl(&store, &ns).args(["get", "config/mode"]));
        assert_exit(&get, 0, backend);
        assert_eq!(stdout(&get), "blue\n", "{backend}");

        run(kvctl(&store, &ns).args(["put", "config/size", "3"]));
        let ls = run(kvctl(&store, &ns).args(["ls", "config", "--values"]));
        assert_eq!(
            stdout(&ls),
            "config/mode = blue\nconfig/size = 3\n",
            "{backend}"
        );

        let stale = run(kvctl(&store, &ns).args([
            "cas",
            "config/mode",
            "red",
            "--revision",
            &(revision + 100).to_string(),
        ]));
        assert_exit(&stale, 4, backend);
        let swapped = run(kvctl(&store, &ns).args([
            "cas",
            "config/mode",
            "green",
            "--revision",
            &revision.to_string(),
        ]));
        assert_exit(&swapped, 0, backend);
        let create = run(kvctl(&store, &ns).args(["cas", "config/mode", "x", "--create"]));
        assert_exit(&create, 4, backend);
        assert_eq!(
            stdout(&run(kvctl(&store, &ns).args(["get", "config/mode"]))),
            "green\n"
        );

        assert_exit(
            &run(kvctl(&store, &ns).args(["del", "config/mode"])),
            0,
            backend,
        );
        let missing = run(kvctl(&store, &ns).args(["get", "config/mode"]));
        assert_exit(&missing, 3, backend);
        assert_eq!(
            stderr(&missing).lines().count(),
            1,
            "one line: {}",
            stderr(&missing)
        );
        assert!(
            stderr(&missing).contains("config/mode"),
            "{}",
            stderr(&missing)
        );

        assert_exit(
            &run(kvctl(&store, &ns).args(["rm", "-r", "config"])),
            0,
            backend,
        );
        assert_eq!(
            stdout(&run(kvctl(&store, &ns).args(["ls"]))),
            "",
            "{backend}"
        );
    }
}

#[test]
fn binary_values_are_escaped_in_text_and_base64_in_json() {
    for (backend, store) in stores() {
        let ns = unique_namespace();
        let mut put = kvctl(&store, &ns)
            .args(["put", "blob"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        put.stdin
            .take()
            .unwrap()
            .write_all(&[0, 1, b'\n', 255])
            .unwrap();
        assert!(put.wait().unwrap().success(), "{backend}");
        let text = run(kvctl(&store, &ns).args(["get", "blob"]));
        assert_eq!(stdout(&text), "\\x00\\x01\\n\\xff\n", "{backend}");
        let json = run(kvctl(&store, &ns).args(["--output", "json", "get", "blob"]));
        assert!(
            stdout(&json).contains(r#""value_base64":"AAEK/w==""#),
            "{backend}: {}",
            stdout(&json)
        );
    }
}

#[test]
fn watch_prints_writes_made_by_another_process() {
    for (backend, store) in stores() {
        let ns = unique_namespace();
        let watch =
            Streaming::start(kvctl(&store, &ns).args(["--output", "json", "watch", "flag"]));
        assert!(
            watch.next_line("current").contains(r#""type":"current""#),
            "{backend}"
        );
        run(kvctl(&store, &ns).args(["put", "flag", "on"]));
        let line = watch.next_line("put");
        assert!(
            line.contains(r#""type":"put""#) && line.contains(r#""value_base64":"b24=""#),
            "{backend}: {line}"
        );
        run(kvctl(&store, &ns).args(["del", "flag"]));
        assert!(
            watch.next_line("delete").contains(r#""type":"delete""#),
            "{backend}"
        );

        let tree = Streaming::start(kvctl(&store, &ns).args(["watch", "--prefix", "jobs"]));
        assert!(
            tree.next_line("snapshot").starts_with("SNAPSHOT 0 keys"),
            "{backend}"
        );
        run(kvctl(&store, &ns).args(["put", "jobs/1", "queued"]));
        assert!(
            tree.next_line("put").starts_with("PUT jobs/1 queued"),
            "{backend}"
        );
    }
}

#[test]
fn lock_excludes_a_second_lock_on_the_same_key_while_the_command_runs() {
    for (backend, store) in stores() {
        let ns = unique_namespace();
        let dir = std::env::temp_dir().join(format!("kvctl-lock-{ns}").replace('/', "-"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let script = |name: &str| {
            format!(
                "echo start-{name} >> {0}; sleep 1; echo end-{name} >> {0}",
                log.display()
            )
        };
        let mut first = kvctl(&store, &ns)
            .args(["lock", "jobs/nightly", "--", "sh", "-c", &script("first")])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Start the second only once the first holds the lock.
        let mut first_err = BufReader::new(first.stderr.take().unwrap());
        let mut line = String::new();
        first_err.read_line(&mut line).unwrap();
        assert!(line.contains("fencing token"), "{backend}: {line}");
        let second = run(kvctl(&store, &ns).args([
            "lock",
            "jobs/nightly",
            "--",
            "sh",
            "-c",
            &script("second"),
        ]));
        assert_exit(&second, 0, backend);
        assert!(first.wait().unwrap().success(), "{backend}");
        let order = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            order, "start-first\nend-first\nstart-second\nend-second\n",
            "{backend}"
        );
        let status =
            run(kvctl(&store, &ns).args(["lock", "jobs/nightly", "--", "sh", "-c", "exit 7"]));
        assert_exit(&status, 7, backend);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn svc_register_is_seen_by_svc_get_and_gone_after_interruption() {
    for (backend, store) in stores() {
        let ns = unique_namespace();
        let mut register = Streaming::start(kvctl(&store, &ns).args([
            "svc",
            "register",
            "api",
            "127.0.0.1:9001",
            "--ttl",
            "5",
        ]));
        assert!(
            register
                .next_line("registered")
                .starts_with("registered api/api-9001"),
            "{backend}"
        );
        let table = stdout(&run(kvctl(&store, &ns).args(["svc", "get", "api"])));
        assert!(table.starts_with("ID"), "{backend}: {table}");
        assert!(
            table.contains("api-9001") && table.contains("127.0.0.1:9001") && table.contains("up"),
            "{backend}: {table}"
        );
        assert_eq!(
            stdout(&run(kvctl(&store, &ns).args(["svc", "ls"]))),
            "api\n",
            "{backend}"
        );
        assert!(register.interrupt().success(), "{backend}");
        let after = stdout(&run(kvctl(&store, &ns).args(["svc", "get", "api"])));
        assert_eq!(after.lines().count(), 1, "only the header is left: {after}");
    }
}

#[test]
fn bad_input_gets_the_documented_exit_code_and_one_line() {
    let (_, store) = &stores()[0];
    let ns = unique_namespace();
    let cases: Vec<(Vec<String>, i32)> = vec![
        (
            vec![
                "--store".into(),
                "localhost:2379".into(),
                "get".into(),
                "k".into(),
            ],
            2,
        ),
        (vec!["get".into(), "a//b".into()], 2),
        (vec!["get".into(), "missing".into()], 3),
        (
            vec![
                "put".into(),
                "k".into(),
                "--ttl".into(),
                "5".into(),
                "--lease".into(),
                "1f".into(),
            ],
            2,
        ),
        (
            vec![
                "put".into(),
                "k".into(),
                "v".into(),
                "--file".into(),
                "/etc/hostname".into(),
            ],
            2,
        ),
        (vec!["cas".into(), "k".into(), "v".into()], 2),
    ];
    for (args, code) in cases {
        let output = run(kvctl(store, &ns).args(&args));
        assert_exit(&output, code, &format!("{args:?}"));
        if code != 2 || !stderr(&output).contains("Usage") {
            assert_eq!(
                stderr(&output).trim_end().lines().count(),
                1,
                "{args:?}: {}",
                stderr(&output)
            );
        }
        assert!(!stderr(&output).contains("panicked"), "{args:?}");
    }
}

#[test]
fn unreachable_store_fails_with_exit_5_within_the_timeout() {
    for url in [
        format!("etcd://127.0.0.1:{}", free_port().unwrap()),
        format!("redis://127.0.0.1:{}", free_port().unwrap()),
    ] {
        let started = Instant::now();
        let output = run(kvctl(&url, "x").args(["--timeout", "1", "get", "k"]));
        assert_exit(&output, 5, &url);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{url}: {:?}",
            started.elapsed()
        );
        assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
    }
}

/// The kvctl binary with no store settings from the environment.
fn bare_kvctl() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kvctl"));
    command
        .env_remove("KVSTORE_URL")
        .env_remove("KVSTORE_PASSWORD");
    command
}

/// Neither stdout nor stderr of `output` shows `secret`.
fn assert_hidden(output: &Output, secret: &str, what: &str) {
    for (stream, text) in [("stdout", stdout(output)), ("stderr", stderr(output))] {
        assert!(!text.contains(secret), "{what}: {stream} shows it: {text}");
    }
}

#[test]
fn passwords_never_reach_the_output_when_the_store_is_unreachable() {
    let redis = format!("redis://user:hunter2@127.0.0.1:{}/0", free_port().unwrap());
    let etcd = format!("etcd://user:hunter2@127.0.0.1:{}", free_port().unwrap());
    for url in [&redis, &etcd] {
        let output = run(bare_kvctl().args(["--store", url, "--timeout", "1", "get", "k"]));
        assert_exit(&output, 5, url);
        assert_hidden(&output, "hunter2", url);
        assert!(
            stderr(&output).contains("user:***@127.0.0.1"),
            "the URL is quoted redacted: {}",
            stderr(&output)
        );
    }
    // The password given as a flag or in the environment instead.
    let redis = format!("redis://127.0.0.1:{}/0", free_port().unwrap());
    let etcd = format!("etcd://127.0.0.1:{}", free_port().unwrap());
    for url in [&redis, &etcd] {
        let flag = run(bare_kvctl().args([
            "--store",
            url,
            "--timeout",
            "1",
            "--user",
            "user",
            "--password",
            "hunter2",
            "get",
            "k",
        ]));
        assert_exit(&flag, 5, url);
        assert_hidden(&flag, "hunter2", url);
        let env = run(bare_kvctl().env("KVSTORE_PASSWORD", "hunter2").args([
            "--store",
            url,
            "--timeout",
            "1",
            "--user",
            "user",
            "get",
            "k",
        ]));
        assert_exit(&env, 5, url);
        assert_hidden(&env, "hunter2", url);
    }
}

#[test]
fn a_refused_password_is_not_shown() {
    let server =
        kvstore_testkit::server::RedisServer::start_with(&["--requirepass", "the-right-one"])
            .unwrap();
    let url = format!("redis://default:hunter2@127.0.0.1:{}/0", server.port());
    let output = run(bare_kvctl().args(["--store", &url, "--timeout", "2", "get", "k"]));
    assert_exit(&output, 6, &url);
    assert_hidden(&output, "hunter2", &url);
    let flag = run(bare_kvctl().args([
        "--store",
        &server.url(),
        "--timeout",
        "2",
        "--user",
        "default",
        "--password",
        "hunter2",
        "get",
        "k",
    ]));
    assert_exit(&flag, 6, "--password");
    assert_hidden(&flag, "hunter2", "--password");
}

#[test]
fn absurd_numbers_are_usage_errors_naming_the_flag_not_panics() {
    let store = format!("etcd://{}", shared_etcd().address());
    let ns = unique_namespace();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["put", "k", "v", "--ttl", "1e30"], "--ttl"),
        (vec!["put", "k", "v", "--ttl", "NaN"], "--ttl"),
        (vec!["put", "k", "v", "--ttl", "inf"], "--ttl"),
        (vec!["put", "k", "v", "--ttl=-1"], "--ttl"),
        (vec!["put", "k", "v", "--ttl", "0"], "--ttl"),
        (vec!["put", "k", "v", "--ttl", "1e-12"], "--ttl"),
        (vec!["--timeout", "1e30", "get", "k"], "--timeout"),
        (vec!["--timeout", "0", "get", "k"], "--timeout"),
        (vec!["lock", "k", "--ttl", "1e30", "--", "true"], "--ttl"),
        (vec!["lease", "grant", "1e30"], "TTL"),
        (
            vec!["svc", "register", "api", "h:1", "--ttl", "1e30"],
            "--ttl",
        ),
    ];
    for (args, flag) in cases {
        let output = run(kvctl(&store, &ns).args(&args));
        assert_exit(&output, 2, &format!("{args:?}"));
        let err = stderr(&output);
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    // Refused before connecting: a bad number is a usage error even with no store.
    let unreachable = format!("etcd://127.0.0.1:{}", free_port().unwrap());
    let output =
        run(bare_kvctl().args(["--store", &unreachable, "put", "k", "v", "--ttl", "1e30"]));
    assert_exit(&output, 2, "unreachable store");
    // Nothing was written by the refused puts.
    assert_exit(&run(kvctl(&store, &ns).args(["get", "k"])), 3, "get k");
}

#[test]
fn memory_store_is_refused_with_the_reason() {
    let explanation = "memory:// keeps keys only inside one process: each kvctl command would \
        get a fresh empty store and its writes would be lost when it exits; use etcd://, \
        redis:// or zookeeper://";
    let flag = run(bare_kvctl().args(["--store", "memory://", "put", "a", "b"]));
    let env = run(bare_kvctl()
        .env("KVSTORE_URL", "memory://")
        .args(["put", "a", "b"]));
    for output in [flag, env] {
        assert_exit(&output, 2, "memory://");
        assert!(stderr(&output).contains(explanation), "{}", stderr(&output));
        assert_eq!(stdout(&output), "");
    }
}

#[test]
fn help_names_the_default_store_and_hides_the_environment() {
    let help = run(bare_kvctl()
        .env("KVSTORE_URL", "redis://user:hunter2@127.0.0.1:1/0")
        .arg("--help"));
    assert_exit(&help, 0, "--help");
    let text = stdout(&help);
    assert!(
        text.contains("[default: etcd://127.0.0.1:2379]"),
        "the default: {text}"
    );
    assert!(text.contains("memory:// is refused"), "{text}");
    assert_hidden(&help, "hunter2", "--help");

    // With no --store and no KVSTORE_URL, kvctl talks to etcd on this machine.
    let output = run(bare_kvctl().args(["--timeout", "1", "get", "kvctl-default-store-probe"]));
    match output.status.code() {
        // Something answers on 127.0.0.1:2379: the key is absent or present.
        Some(0 | 3) => {}
        Some(5) => assert!(
            stderr(&output).contains("open etcd://127.0.0.1:2379"),
            "{}",
            stderr(&output)
        ),
        other => panic!("{other:?}: {}", stderr(&output)),
    }
}

/// kvctl txn with stdin in etcdctl's text form
fn txn(store: &str, namespace: &str, text: &str) -> Output {
    let mut child = kvctl(store, namespace)
        .arg("txn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kvctl runs");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("kvctl reads its input");
    child.wait_with_output().expect("kvctl ends")
}

#[test]
fn txn_applies_the_branch_its_comparisons_choose() {
    for (backend, store) in stores() {
        let namespace = unique_namespace();
        let put = run(kvctl(&store, &namespace).args(["put", "config/mode", "blue"]));
        assert_exit(&put, 0, backend);
        let applied = txn(
            &store,
            &namespace,
            "value(\"config/mode\") = \"blue\"\n\nput config/mode \"dark green\"\nput config/new x\n\nget config/mode\n",
        );
        assert_exit(&applied, 0, backend);
        let lines: Vec<String> = stdout(&applied).lines().map(str::to_owned).collect();
        assert_eq!(lines[0], "SUCCESS", "{backend}: {lines:?}");
        assert_eq!(lines.len(), 3, "{backend}: {lines:?}");
        let get = run(kvctl(&store, &namespace).args(["get", "config/mode"]));
        assert_eq!(stdout(&get).trim(), "dark green", "{backend}");

        let refused = txn(
            &store,
            &namespace,
            "value(\"config/mode\") = \"blue\"\n\nput config/mode red\n\nget config/mode\n",
        );
        assert_exit(&refused, 0, backend);
        assert_eq!(
            stdout(&refused).lines().collect::<Vec<_>>(),
            ["FAILURE", "config/mode", "dark green"],
            "{backend}"
        );
        let bad = txn(&store, &namespace, "size(\"a\") = \"1\"\n");
        assert_exit(&bad, 2, backend);
        assert!(
            stderr(&bad).contains("line 1"),
            "{backend}: {}",
            stderr(&bad)
        );
    }
}

#[test]
fn elect_runs_the_command_as_leader_with_its_fencing_token() {
    for (backend, store) in stores() {
        let namespace = unique_namespace();
        let output = run(kvctl(&store, &namespace).args([
            "elect",
            "scheduler",
            "node-1",
            "--ttl",
            "5",
            "--",
            "sh",
            "-c",
            "echo token=$KVSTORE_FENCING_TOKEN; exit 7",
        ]));
        assert_exit(&output, 7, backend);
        let token = stdout(&output);
        assert!(token.starts_with("token="), "{backend}: {token:?}");
        assert!(
            token
                .trim()
                .trim_start_matches("token=")
                .parse::<u64>()
                .is_ok(),
            "{backend}: {token:?}"
        );
        assert!(
            stderr(&output).contains("leading election scheduler"),
            "{backend}"
        );
    }
}
