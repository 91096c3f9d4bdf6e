//! The trainer executable on its own. Because this package has an integration test, `cargo test
//! --workspace` builds `target/release/trainer`, the binary the harness's smoke tests start.

use std::process::Command;

/// Started by hand instead of by the harness, the trainer trains nothing, says who starts it,
/// and exits 2.
#[test]
fn started_without_a_harness_it_says_so_and_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .env_remove("AUTORESEARCH_CHANNEL_FD")
        .env_remove("AUTORESEARCH_SHM_FD")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("started by the harness"), "{stderr}");
    assert!(out.stdout.is_empty(), "trained or printed anyway: {}", String::from_utf8_lossy(&out.stdout));
}

/// A descriptor that is not the harness's channel is refused, not trusted.
#[test]
fn a_channel_that_is_not_a_descriptor_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_trainer")).env("AUTORESEARCH_CHANNEL_FD", "stdin").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a descriptor"), "{stderr}");
}
