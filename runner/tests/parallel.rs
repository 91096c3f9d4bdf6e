//! Several experiments in flight with the local executor: results recorded as they finish, keep
//! decisions re-checked when results arrive out of order, whole results rows.

mod common;
use common::*;

const HPARAMS: &str = "[gpu]\nmatrix_lr = 0.5\ndelay = 0\n";

/// Experiment 1 is good but slow, experiment 2 better and fast, then quick small steps.
const PROPOSER: &str = r#"#!/bin/sh
n=$(cat "$TOOLS/count" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$TOOLS/count"
f=trainer/hparams.toml
set_() { sed -i "s/^$1 = .*/$1 = $2/" $f; }
case $n in
  1) set_ matrix_lr 0.3; set_ delay 3; echo "slow lr 0.3" > "$AUTORESEARCH_PROPOSAL_FILE" ;;
  2) set_ matrix_lr 0.05; set_ delay 0.2; echo "fast lr 0.05" > "$AUTORESEARCH_PROPOSAL_FILE" ;;
  *) set_ matrix_lr "0.0$n"; set_ delay 1; echo "lr 0.0$n" > "$AUTORESEARCH_PROPOSAL_FILE" ;;
esac
"#;

#[test]
fn parallel_slots_record_out_of_order_results_correctly() {
    let fx = Fixture::new(
        HPARAMS,
        "keep_rule = \"strict\"\nmax_experiments = 5\nslots = 2\nhard_timeout_seconds = 60\nproposer = \"command\"\nexperiment_command = \"sh $TOOLS/experiment.sh {summary_json}\"\n[command]\ncommand = \"sh $TOOLS/propose.sh\"\n",
    );
    std::fs::write(fx.tools.join("experiment.sh"), TIMED_EXPERIMENT).unwrap();
    std::fs::write(fx.tools.join("propose.sh"), PROPOSER).unwrap();
    let out = fx.run(&["run", "--yes"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let log = stdout(&out);
    assert!(log.contains("local, 2 at a time"), "{log}");

    let nodes = fx.nodes();
    let by_name = |d: &str| nodes.iter().find(|n| n["description"] == d).unwrap_or_else(|| panic!("no node {d}: {nodes:#?}"));
    let (slow, fast) = (by_name("slow lr 0.3"), by_name("fast lr 0.05"));
    // Both started from the baseline; the fast one finished first and was kept.
    assert_eq!(slow["parent"], 1);
    assert_eq!(fast["parent"], 1);
    assert!(fast["finish_seq"].as_i64() < slow["finish_seq"].as_i64(), "{nodes:#?}");
    assert_eq!(fast["status"], "keep");
    // The slow one beat the baseline it started from, but not the best when it finished.
    assert_eq!(slow["status"], "discard", "{slow:#}");
    assert!(slow["insight"].as_str().unwrap().contains("while it ran"), "{slow:#}");

    // The two ran at the same time.
    let timeline = std::fs::read_to_string(fx.tools.join("timeline")).unwrap();
    let at = |what: &str, node: &str| -> f64 {
        let line = timeline.lines().find(|l| l.starts_with(&format!("{what} {node} "))).unwrap_or_else(|| panic!("{what} {node}: {timeline}"));
        line.split(' ').nth(2).unwrap().parse().unwrap()
    };
    let (s, f) = (format!("n{}", slow["id"]), format!("n{}", fast["id"]));
    assert!(at("start", &f) < at("end", &s) && at("start", &s) < at("end", &f), "not concurrent:\n{timeline}");
    let mut level = 0;
    let mut peak = 0;
    // Each run was told the commit it tests (the harness records it in its summary).
    let commits = std::fs::read_to_string(fx.tools.join("commits")).unwrap();
    for n in [slow, fast] {
        let line = format!("n{} {}", n["id"], n["commit"].as_str().unwrap());
        assert!(commits.lines().any(|l| l == line), "{line} not in\n{commits}");
    }
    let mut events: Vec<(f64, i32)> = timeline.lines().map(|l| {
        let v: Vec<&str> = l.split(' ').collect();
        (v[2].parse().unwrap(), if v[0] == "start" { 1 } else { -1 })
    }).collect();
    events.sort_by(|a, b| a.partial_cmp(b).unwrap());
    for (_, d) in events {
        level += d;
        peak = peak.max(level);
    }
    assert_eq!(peak, 2, "never more than `slots` at once:\n{timeline}");

    // Rows: whole, one per finished node, in finishing order; the branch at the best.
    let rows = fx.rows();
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert!(rows.iter().all(|r| r.len() == 5), "{rows:?}");
    let mut finished: Vec<&serde_json::Value> = nodes.iter().collect();
    finished.sort_by_key(|n| n["finish_seq"].as_i64());
    for (row, n) in rows.iter().zip(&finished) {
        assert_eq!(row.join("\t"), n["result_row"].as_str().unwrap());
    }
    let best = nodes.iter().filter(|n| n["status"] == "keep").max_by_key(|n| n["finish_seq"].as_i64()).unwrap();
    let best_metric = best["metric"].as_f64().unwrap();
    assert!(nodes.iter().filter_map(|n| n["metric"].as_f64()).all(|m| m >= best_metric - 1e-12), "{nodes:#?}");
    assert!(fx.branch_tip().starts_with(&best["commit"].as_str().unwrap()[..7]));
    fx.assert_worktrees_clean();
}

/// Every 10 finished experiments the loop prints the reference's progress line, whatever
/// order the results arrive in.
#[test]
fn a_progress_line_every_ten_experiments() {
    let fx = Fixture::new(
        HPARAMS,
        "keep_rule = \"strict\"\nmax_experiments = 10\nslots = 3\nhard_timeout_seconds = 60\nproposer = \"command\"\nexperiment_command = \"sh $TOOLS/experiment.sh {summary_json}\"\n[command]\ncommand = \"sh $TOOLS/propose.sh\"\n",
    );
    std::fs::write(fx.tools.join("experiment.sh"), TIMED_EXPERIMENT).unwrap();
    std::fs::write(fx.tools.join("propose.sh"), PROPOSER.replace("set_ delay 3", "set_ delay 1")).unwrap();
    let out = fx.run(&["run", "--yes"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let log = stdout(&out);
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("-- ")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].starts_with("-- 10 experiments: best ") && lines[0].contains("experiments/hour"), "{log}");
    assert_eq!(fx.rows().len(), 11);
}
