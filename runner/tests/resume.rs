//! Kill -9 the runner while an experiment runs, then `run --resume`: the orphaned experiment is
//! killed, the interrupted node becomes a crash, and no results row is lost or duplicated.

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

    let rows = fx.rows();
    let status: Vec<&str> = rows.iter().map(|r| r[3].as_str()).collect();
    assert_eq!(status, ["keep", "crash", "keep", "discard"], "{rows:?}");
    assert!(rows[1][4].contains("interrupted"), "{:?}", rows[1]);
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
    let path = fx.repo.join("results.tsv");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    std::fs::write(&path, format!("{}\n{}", lines.join("\n"), "abc12")).unwrap();
    let o = fx.run(&["run", "--yes", "--resume"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(fx.rows(), rows);
}

#[test]
fn ctrl_c_stops_the_experiment_and_records_it() {
    let fx = Fixture::new(
        HPARAMS,
        "keep_rule = \"strict\"\nmax_experiments = 2\nhard_timeout_seconds = 120\nproposer = \"command\"\n[command]\ncommand = \"sh $TOOLS/propose.sh\"\n",
    );
    std::fs::write(fx.tools.join("propose.sh"), PROPOSER).unwrap();
    let child = fx.cmd(&["run", "--yes"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    while !fx.tools.join("started").exists() {
        assert!(t.elapsed() < Duration::from_secs(60), "the slow experiment never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(t.elapsed() < Duration::from_secs(20), "Ctrl-C did not stop the experiment quickly");
    assert_eq!(out.status.code(), Some(130), "{}", stdout(&out));
    let rows = fx.rows();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1][3], "crash");
    assert!(rows[1][4].contains("interrupted by the user"), "{rows:?}");
    fx.assert_worktrees_clean();
    // Resume goes on from there.
    let o = fx.run(&["run", "--yes", "--resume"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(fx.rows().len(), 3);
}
