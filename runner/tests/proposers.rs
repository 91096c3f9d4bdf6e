//! The agent and manual proposers, the out-of-memory retry, and the hash half of the guard.

mod common;
use common::*;
use std::time::{Duration, Instant};

const HPARAMS: &str = "[gpu]\nmatrix_lr = 0.5\nmode = \"ok\"\n";

#[test]
fn agent_proposer_gets_a_prompt_and_its_edit_is_kept() {
    let fx = Fixture::new(
        HPARAMS,
        "keep_rule = \"strict\"\nmax_experiments = 1\nproposer = \"agent\"\n[agent]\ncommand = \"sh $TOOLS/agent.sh {prompt_file} {prompt}\"\nprogram = \"program.md\"\ntimeout_seconds = 30\n",
    );
    std::fs::write(fx.repo.join("program.md"), "# instructions for the agent\n").unwrap();
    std::fs::write(
        fx.tools.join("agent.sh"),
        "grep -q 'instructions for the agent' \"$1\" && grep -q 'Experiment tree' \"$1\" || exit 9\n\
         sed -i 's/^matrix_lr = .*/matrix_lr = 0.04/' trainer/hparams.toml\n\
         printf '{\"result\":\"done\\\\nDESCRIPTION: agent set matrix_lr 0.04\\\\nHYPOTHESIS: the reference value\"}\\n'\n",
    )
    .unwrap();
    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let rows = fx.rows();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(&rows[1][1..5], ["1.000000", "2.0", "keep", "agent set matrix_lr 0.04"]);
    assert_eq!(fx.nodes()[1]["hypothesis"], "the reference value");
}

#[test]
fn out_of_memory_is_retried_at_half_batch() {
    let fx = Fixture::new(
        HPARAMS,
        "keep_rule = \"strict\"\nmax_experiments = 1\nproposer = \"command\"\n[command]\ncommand = \"sed -i 's/^mode = .*/mode = \\\"oom\\\"/; s/^matrix_lr = .*/matrix_lr = 0.1/' trainer/hparams.toml\"\n",
    );
    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let rows = fx.rows();
    assert_eq!(rows[1][3], "keep", "{rows:?}");
    let show = fx.run(&["tree", "show", "n2", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{v:#}");
    assert_eq!(runs[0]["outcome"], "oom");
    assert_eq!(runs[0]["exit_code"], 3);
    assert_eq!(runs[1]["batch_scale"], 0.5);
    assert_eq!(runs[1]["outcome"], "ok");
}

#[test]
fn guard_rejects_an_ignored_file_under_a_read_only_path() {
    let fx = Fixture::new(
        HPARAMS,
        "keep_rule = \"strict\"\nmax_experiments = 1\nproposer = \"command\"\n[command]\ncommand = \"echo x > prepare/cache.bin; sed -i 's/^matrix_lr = .*/matrix_lr = 0.04/' trainer/hparams.toml\"\n",
    );
    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let rows = fx.rows();
    assert_eq!(rows[1][3], "rejected", "{rows:?}");
    assert!(rows[1][4].contains("read-only files differ") && rows[1][4].contains("prepare/cache.bin"), "{rows:?}");
    // The branch stays at the baseline.
    assert!(fx.branch_tip().starts_with(&rows[0][0]));
    fx.assert_worktrees_clean();
}

#[test]
fn manual_proposer_waits_for_tree_record() {
    let fx = Fixture::new(HPARAMS, "keep_rule = \"strict\"\nmax_experiments = 1\nproposer = \"manual\"\n[manual]\npoll_seconds = 0.1\n");
    let child = fx.cmd(&["run", "--yes"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let wt = fx.repo.join(".worktrees/t1-n2");
    let t = Instant::now();
    while !wt.join("trainer/hparams.toml").exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "no worktree for the manual experiment");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(wt.join("trainer/hparams.toml"), "[gpu]\nmatrix_lr = 0.1\nmode = \"ok\"\n").unwrap();
    let o = fx.run(&["tree", "record", "n2", "--metric", "1.06", "--memory-mb", "1024", "--description", "by hand"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("autoresearch tree record --tag t1 n2"));
    let rows = fx.rows();
    // A bare --metric is no scorer's: recorded, with its row, as unverified (never kept).
    assert_eq!(&rows[1][1..5], ["1.060000", "1.0", "unverified", "by hand"]);
    fx.assert_worktrees_clean();
}
