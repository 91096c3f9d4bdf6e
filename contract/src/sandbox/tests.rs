//! The sandbox enforced on real processes: a shell started inside it tries each forbidden thing.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use super::*;

/// A policy for `sh` and coreutils: the system folders readable and executable, `read`
/// readable, `write` writable.
fn shell_policy(read: &Path, write: &Path, filter: bool) -> Policy {
    let system: Vec<PathBuf> = ["/usr", "/bin", "/lib", "/lib64", "/etc/ld.so.cache"].iter().map(PathBuf::from).collect();
    Policy {
        read: [system.clone(), vec![read.into(), "/dev/null".into(), "/proc".into()]].concat(),
        execute: system,
        write: vec![write.into()],
        devices: vec!["/dev/null".into()],
        filter_syscalls: filter,
        own_threads: false,
    }
}

/// Runs `script` under `sh -c` inside the sandbox; returns (exit code, stdout + stderr).
fn run(policy: &Policy, script: &str) -> (i32, String) {
    let sandbox = Arc::new(policy.prepare().expect("landlock is available on the machines this project runs on"));
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script).stdin(Stdio::null());
    sandbox.apply(&mut cmd);
    let out = cmd.output().expect("spawn");
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `own_threads` lets the process write its own threads' files (CUDA's driver needs it), and
/// nothing of its parent's: the rule names the child's `/proc/<pid>/task`, not the parent's.
#[test]
fn own_threads_grants_the_childs_own_task_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let parent = std::process::id();
    let script = format!(
        "echo renamed > /proc/self/task/$$/comm && cat /proc/$$/task/$$/comm; echo x > /proc/{parent}/task/{parent}/comm && echo parent-written"
    );
    let mut p = shell_policy(dir.path(), dir.path(), true);
    let (_, out) = run(&p, &script);
    assert!(!out.contains("renamed\n") && !out.contains("parent-written"), "without own_threads: {out}");
    p.own_threads = true;
    let (_, out) = run(&p, &script);
    assert!(out.contains("renamed\n"), "with own_threads the child names its thread: {out}");
    assert!(!out.contains("parent-written"), "but not the parent's: {out}");
    assert_ne!(std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/comm")).unwrap().trim(), "x");
    // Its own /proc entries lead nowhere new: the magic links resolve to paths landlock checks.
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("s.txt"), "hidden").unwrap();
    let mut q = shell_policy(&dir.path().join("nothing"), &dir.path().join("nothing"), true);
    q.own_threads = true;
    let (_, out) = run(&q, &format!("cat /proc/self/root{0}/s.txt /proc/$$/root{0}/s.txt /proc/$$/task/$$/root{0}/s.txt", secret.display()));
    assert!(!out.contains("hidden"), "{out}");
}

#[test]
fn files_outside_the_policy_cannot_be_read_or_written() {
    let dir = tempfile::tempdir().unwrap();
    let (allowed, secret, scratch) = (dir.path().join("allowed"), dir.path().join("secret"), dir.path().join("scratch"));
    for d in [&allowed, &secret, &scratch] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(allowed.join("a.txt"), "visible").unwrap();
    std::fs::write(secret.join("s.txt"), "hidden").unwrap();
    let p = shell_policy(&allowed, &scratch, true);
    let (code, out) = run(&p, &format!("cat {}/a.txt", allowed.display()));
    assert_eq!((code, out.as_str()), (0, "visible"));
    let (code, out) = run(&p, &format!("cat {}/s.txt", secret.display()));
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    let (code, out) = run(&p, &format!("ls {}", secret.display()));
    assert_ne!(code, 0, "listing a forbidden folder: {out}");
    let (code, out) = run(&p, &format!("echo x > {}/w.txt && cat {}/w.txt", scratch.display(), scratch.display()));
    assert_eq!((code, out.trim()), (0, "x"), "the scratch folder is writable");
    for target in [allowed.join("w.txt"), secret.join("w.txt"), dir.path().join("w.txt")] {
        let (code, out) = run(&p, &format!("echo x > {}", target.display()));
        assert_ne!(code, 0, "wrote {}: {out}", target.display());
        assert!(!target.exists());
    }
    // A program the policy does not let it execute.
    let tool = scratch.join("tool.sh");
    std::fs::write(&tool, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (code, out) = run(&p, &tool.display().to_string());
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("ran"), "{out}");
}

#[test]
fn a_tcp_connect_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let p = shell_policy(dir.path(), dir.path(), true);
    // dash has no /dev/tcp; bash's /dev/tcp makes a real connect().
    if Path::new("/bin/bash").exists() {
        let mut p = p.clone();
        p.execute.push("/bin/bash".into());
        let (code, out) = run(&p, &format!("exec /bin/bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}'"));
        assert_ne!(code, 0, "connected: {out}");
    }
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "nothing connected");
    // The same connect without the sandbox works: the test can tell the difference.
    if Path::new("/bin/bash").exists() {
        let ok = Command::new("/bin/bash").arg("-c").arg(format!("echo hi > /dev/tcp/127.0.0.1/{port}")).status().unwrap();
        assert!(ok.success());
    }
}

#[test]
fn a_sandboxed_process_cannot_signal_outside_or_start_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let p = shell_policy(dir.path(), dir.path(), true);
    // A process outside the sandbox (a sibling of the shell): kill must fail.
    let mut outside = Command::new("sleep").arg("30").spawn().unwrap();
    let (code, out) = run(&p, &format!("kill -TERM {}", outside.id()));
    assert_ne!(code, 0, "signalled a process outside: {out}");
    assert!(outside.try_wait().unwrap().is_none(), "the outside process is still running");
    outside.kill().unwrap();
    outside.wait().unwrap();
    // Its own children it may signal.
    let (code, out) = run(&p, "sleep 30 & kill $! && wait $!; echo done");
    assert!(out.contains("done"), "{code} {out}");
    if Path::new("/usr/bin/setsid").exists() {
        let (code, out) = run(&p, "/usr/bin/setsid --fork /bin/true; /usr/bin/setsid -w /bin/true");
        assert_ne!(code, 0, "started a new session: {out}");
    }
}

#[test]
fn root_keeps_no_capability_and_nothing_can_be_undone() {
    let dir = tempfile::tempdir().unwrap();
    let p = shell_policy(dir.path(), dir.path(), true);
    let (code, out) = run(&p, "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status");
    assert_eq!(code, 0, "{out}");
    for field in ["CapEff", "CapPrm", "CapBnd"] {
        let line = out.lines().find(|l| l.starts_with(field)).unwrap_or_default();
        assert!(line.ends_with("0000000000000000"), "{field}: {out}");
    }
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
}

#[test]
fn the_description_names_what_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let s = shell_policy(dir.path(), dir.path(), true).prepare().unwrap();
    let d = s.describe();
    assert!(d.starts_with(&format!("landlock ABI {}", s.abi())), "{d}");
    assert!(d.contains("seccomp"), "{d}");
    let missing = Policy { read: vec![dir.path().join("nope")], ..Default::default() }.prepare().unwrap();
    assert_eq!(missing.missing(), &[dir.path().join("nope")]);
}
