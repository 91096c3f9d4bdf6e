//! Kill -9 the runner while an experiment runs, then `run --resume`: the orphaned experiment is
//! killed, the interrupted node runs again from its commit (a second interruption makes it a
//! crash), and no results row is lost or duplicated.

mod common;
use common::*;
use std::time::{Duration, Instant};

const HPARAMS: &str = "[gpu]\nmatrix_lr = 0.5\nmode = \"ok\"\n";

const PROPOSER: &str = r#"#!/bin/sh
n=$(cat "$TOOLS/count" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$TOOLS/count"
f=trainer/hparams.toml
case $n in
  1) sed -i 's/^mode = .*/mode = "slow"/' $f; echo "slow change" > "$AUTORESEARCH_PROPOSAL_FILE" ;;
  *) sed -i "s/^matrix_lr = .*/matrix_lr = 0.$((n + 1))/" $f; echo "matrix_lr 0.$((n + 1))" > "$AUTORESEARCH_PROPOSAL_FILE" ;;
esac
"#;

#[test]
fn resume_after_kill_9() {
    let fx = Fixture::new(
        HPARAMS,
        "keep_rule = \"strict\"\nmax_experiments = 3\nhard_timeout_seconds = 120\nproposer = \"command\"\n[command]\ncommand = \"sh $TOOLS/propose.sh\"\n",
    );
    std::fs::write(fx.tools.join("propose.sh"), PROPOSER).unwrap();
    let mut child = fx.cmd(&["run", "--yes"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t = Instant::now();
    while !fx.tools.join("started").exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "the slow experiment never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = fx.rows();
    assert_eq!(before.len(), 1, "only the baseline finished: {before:?}");
    assert!(fx.repo.join(".worktrees").read_dir().unwrap().next().is_some(), "the killed run left its worktree");

    // Without --resume the branch is refused.
    let o = fx.run(&["run", "--yes"]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));

    let o = fx.run(&["run", "--yes", "--resume"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let log = stdout(&o);
    assert!(log.contains("killed the orphaned experiment"), "{log}");
    assert!(log.contains("resume: n2 was interrupted; running it again from its commit"), "{log}");
    assert!(fx.tools.join("started2").exists(), "n2 was not run again");

    let rows = fx.rows();
    let status: Vec<&str> = rows.iter().map(|r| r[3].as_str()).collect();
    // n2 ran again to its end: the slow change scores as the baseline does, a discard.
    assert_eq!(status, ["keep", "discard", "keep", "discard"], "{rows:?}");
    assert!(rows[1][4].contains("slow change"), "{:?}", rows[1]);
    let mut lines: Vec<String> = rows.iter().map(|r| r.join("\t")).collect();
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), rows.len(), "duplicated rows");
    let nodes = fx.nodes();
    let finished: Vec<&serde_json::Value> = nodes.iter().filter(|n| n["finish_seq"].is_i64()).collect();
    assert_eq!(finished.len(), rows.len());
    for n in &finished {
        let row = n["result_row"].as_str().unwrap();
        assert_eq!(rows.iter().filter(|r| r.join("\t") == row).count(), 1, "{row}");
    }
    assert!(nodes.iter().all(|n| n["status"] != "running" && n["status"] != "pending"));
    assert!(fx.branch_tip().starts_with(&rows[2][0]));
    assert_eq!(fx.node_refs().len(), 4);
    fx.assert_worktrees_clean();

    // A second resume changes nothing (max reached) and adds no rows.
    let o = fx.run(&["run", "--yes", "--resume"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(fx.rows(), rows);
}

#[test]
fn resume_restores_a_lost_row() {
    let fx = Fixture::new(HPARAMS, "keep_rule = \"strict\"\nmax_experiments = 1\nproposer = \"command\"\n[command]\ncommand = \"sed -i 's/^matrix_lr = .*/matrix_lr = 0.04/' trainer/hparams.toml\"\n");
    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let rows = fx.rows();
    assert_eq!(rows.len(), 2);
    // Simulate a kill between the database commit and the append: drop the last row, tear a line.
    let path = fx.results_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    std::fs::write(&path, format!("{}\n{}", lines.join("\n"), "abc12")).unwrap();
    let o = fx.run(&["run", "--yes", "--resume"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(fx.rows(), rows);
}

/// Starts `args`, waits for `$TOOLS/<marker>`, interrupts the runner the way `how` says, and
/// returns its output.
fn interrupt_at(fx: &Fixture, args: &[&str], marker: &str, how: &dyn Fn(&Fixture, u32)) -> std::process::Output {
    let child = fx.cmd(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    while !fx.tools.join(marker).exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "the slow experiment never reached {marker}");
        std::thread::sleep(Duration::from_millis(50));
    }
    how(fx, child.id());
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(t.elapsed() < Duration::from_secs(20), "the runner did not stop the experiment quickly");
    assert_eq!(out.status.code(), Some(130), "{}", stdout(&out));
    out
}

#[test]
fn ctrl_c_and_stop_interrupt_an_experiment_that_runs_again_once() {
    let fx = Fixture::new(
        HPARAMS,
        "keep_rule = \"strict\"\nmax_experiments = 2\nhard_timeout_seconds = 120\nproposer = \"command\"\n[command]\ncommand = \"sh $TOOLS/propose.sh\"\n",
    );
    std::fs::write(fx.tools.join("propose.sh"), PROPOSER).unwrap();
    // Its first two starts are slow, so that both can be interrupted.
    std::fs::write(fx.tools.join("slow_sleeps"), "2\n").unwrap();
    let pid_file = fx.repo.join(format!(".autoresearch/{TAG}/runner.pid"));
    let ctrl_c = |_: &Fixture, pid: u32| {
        assert_eq!(std::fs::read_to_string(&pid_file).unwrap().lines().next(), Some(pid.to_string().as_str()), "the PID file names the runner");
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    };
    let out = interrupt_at(&fx, &["run", "--yes"], "started1", &ctrl_c);
    assert!(stdout(&out).contains("n2: interrupted; `autoresearch run --resume --tag t1` runs it again"), "{}", stdout(&out));
    assert_eq!(fx.rows().len(), 1, "n2 is not recorded: {:?}", fx.rows());
    assert!(!pid_file.exists(), "the PID file outlived the runner");
    fx.assert_worktrees_clean();
    // Its re-run, stopped by `autoresearch stop` from another process: now it is a crash.
    let stop = |fx: &Fixture, _: u32| {
        let o = fx.run(&["stop", "--wait", "30"]);
        assert!(o.status.success() && stdout(&o).contains("stopped the runner of tag t1"), "{}", stdout(&o));
    };
    let out = interrupt_at(&fx, &["run", "--yes", "--resume"], "started2", &stop);
    assert!(stdout(&out).contains("resume: n2 was interrupted; running it again from its commit"), "{}", stdout(&out));
    let rows = fx.rows();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1][3], "crash");
    assert!(rows[1][4].contains("slow change [interrupted by the user"), "{rows:?}");
    fx.assert_worktrees_clean();
    // Nothing runs now: `stop` says so.
    let o = fx.run(&["stop"]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    assert!(stdout(&o).contains("no runner of tag t1 is running"), "{}", stdout(&o));
    // Resume goes on from there.
    let o = fx.run(&["run", "--yes", "--resume"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(fx.rows().len(), 3);
}
