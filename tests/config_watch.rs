//! The typed live configuration example, run as its own process on the in-memory store:
//! a good push changes the running HTTP service's answers, a bad push is refused and
//! changes nothing, and the maintenance flag turns the service away.

mod processes;

use std::process::Command;

#[test]
fn config_watch_applies_good_pushes_and_refuses_a_bad_one() {
    let output = Command::new(processes::example("config_watch"))
        .output()
        .expect("the config_watch example runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let section = |push: &str| {
        let start = stdout
            .find(push)
            .unwrap_or_else(|| panic!("no {push:?} in {stdout}"));
        stdout[start..]
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let first = section("hi from v1");
    assert!(first.contains("Applied"), "{first}");
    assert!(first.contains("200 hi from v1"), "{first}");
    assert!(
        first.contains("429 slow down"),
        "the rate of 3 per second holds: {first}"
    );
    let bad = section(r#"{"greeting":"","requests_per_second":0}"#);
    assert!(bad.contains("Rejected"), "{bad}");
    assert!(
        bad.contains("200 hi from v1"),
        "the last good configuration stays: {bad}"
    );
    let maintenance = section("hi from v2");
    assert!(maintenance.contains("503 maintenance"), "{maintenance}");
}
