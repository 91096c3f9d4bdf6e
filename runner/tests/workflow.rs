//! The workflow around the keep rule: checks before a keep (in the build sandbox), the stop
//! rules, and `finalize` (the kept path as independent branches to review).

mod common;
use common::*;

/// The repository's own checks (committed, like pi-autoresearch's checks.sh): a lint that
/// refuses matrix_lr below 0.045, and a proof of the sandbox: nothing outside the worktree can
/// be written.
const CHECKS: &str = r#"#!/bin/sh
lr=$(grep '^matrix_lr' trainer/hparams.toml | sed 's/^[^=]*= *//')
echo "checking $AUTORESEARCH_NODE at $AUTORESEARCH_COMMIT: matrix_lr $lr, metric $AUTORESEARCH_METRIC, memory $AUTORESEARCH_PEAK_MEMORY_MB"
if touch "$TOOLS/escaped" 2>/dev/null; then echo "wrote outside the worktree" >&2; exit 2; fi
echo "inside" > checked.txt || exit 3
if awk -v lr="$lr" 'BEGIN { exit !(lr < 0.045) }'; then echo "lint: matrix_lr $lr is below 0.045" >&2; exit 1; fi
"#;

#[test]
fn checks_run_after_the_keep_rule_and_a_failure_keeps_nothing() {
    let fx = Fixture::new(
        "[gpu]\nmatrix_lr = 0.5\nmode = \"ok\"\n",
        "keep_rule = \"strict\"\nmax_experiments = 3\nchecks_command = \"sh checks.sh\"\nproposer = \"command\"\n[command]\ncommand = \"sh $TOOLS/propose.sh\"\n",
    );
    std::fs::write(fx.repo.join("checks.sh"), CHECKS).unwrap();
    git(&fx.repo, &["-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"]);
    git(&fx.repo, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "checks"]);
    std::fs::write(
        fx.tools.join("propose.sh"),
        scripted_proposer(
            r#"  1) sed -i 's/^matrix_lr = .*/matrix_lr = 0.04/' $f; say "matrix_lr 0.04" "the reference" ;;
  2) sed -i 's/^matrix_lr = .*/matrix_lr = 0.05/' $f; say "matrix_lr 0.05" "near the reference" ;;
  3) sed -i 's/^matrix_lr = .*/matrix_lr = 0.3/' $f; say "matrix_lr 0.3" "worse" ;;
"#,
        ),
    )
    .unwrap();
    let o = fx.run(&["run", "--yes"]);
    let log = stdout(&o);
    assert!(o.status.success(), "{log}");
    let rows = fx.rows();
    let status: Vec<&str> = rows.iter().map(|r| r[3].as_str()).collect();
    assert_eq!(status, ["keep", "checks_failed", "keep", "discard"], "{rows:?}\n{log}");
    // Measured, passed the rule, failed the checks: its value, the reason and the output's last line.
    assert_eq!(rows[1][1], "1.000000");
    assert_eq!(rows[1][4], "matrix_lr 0.04 [checks failed (exit 1): not kept: lint: matrix_lr 0.04 is below 0.045]");
    // The branch moved to the change that passed both; the discard ran no checks.
    assert!(fx.branch_tip().starts_with(&rows[2][0]), "{log}");
    let out = std::fs::read_to_string(fx.repo.join(".autoresearch/t1/logs/n2-checks.log")).unwrap();
    assert!(out.contains("checking n2 at ") && out.contains("metric 1.000000, memory 2048.0"), "{out}");
    assert!(fx.repo.join(".autoresearch/t1/logs/n3-checks.log").exists() && !fx.repo.join(".autoresearch/t1/logs/n4-checks.log").exists());
    assert!(!fx.tools.join("escaped").exists(), "the checks ran outside the sandbox");
    let n2 = &fx.nodes()[1];
    assert_eq!(n2["status"], "checks_failed");
    assert!(n2["insight"].as_str().unwrap().contains("the rule said keep"), "{n2}");
    // The summary counts them apart.
    let summary = std::fs::read_to_string(fx.repo.join(".autoresearch/t1/autoresearch-summary.md")).unwrap();
    assert!(summary.contains("1 checks_failed") && summary.contains("| matrix_lr | 2 | 1 | 1 | 0 | 0 |"), "{summary}");
    fx.assert_worktrees_clean();
}

#[test]
fn stop_rules_end_the_run_and_bad_values_name_their_flag() {
    let fx = Fixture::new(
        "[gpu]\nmatrix_lr = 0.5\nmode = \"ok\"\n",
        "keep_rule = \"strict\"\nmax_experiments = 10\nmax_without_keep = 2\nproposer = \"command\"\n[command]\ncommand = \"sh $TOOLS/propose.sh\"\n",
    );
    std::fs::write(
        fx.tools.join("propose.sh"),
        scripted_proposer(
            r#"  1) sed -i 's/^matrix_lr = .*/matrix_lr = 0.3/' $f; say "matrix_lr 0.3" "" ;;
  2) sed -i 's/^matrix_lr = .*/matrix_lr = 0.6/' $f; say "matrix_lr 0.6" "" ;;
  3) sed -i 's/^matrix_lr = .*/matrix_lr = 0.7/' $f; say "matrix_lr 0.7" "" ;;
  4) sed -i 's/^matrix_lr = .*/matrix_lr = 0.8/' $f; say "matrix_lr 0.8" "" ;;
"#,
        ),
    )
    .unwrap();
    let o = fx.run(&["run", "--yes"]);
    let log = stdout(&o);
    assert!(o.status.success(), "{log}");
    let status: Vec<String> = fx.rows().iter().map(|r| r[3].clone()).collect();
    assert_eq!(status, ["keep", "keep", "discard", "discard"], "{log}");
    assert!(log.contains("stopping: 2 experiments in a row without a keep (max_without_keep 2); 3 experiments"), "{log}");

    let fx = Fixture::new("[gpu]\nmatrix_lr = 0.5\nmode = \"ok\"\n", "keep_rule = \"strict\"\nproposer = \"command\"\n[command]\ncommand = \"sed -i 's/^matrix_lr = .*/matrix_lr = 0.3/' trainer/hparams.toml\"\n");
    let o = fx.run(&["run", "--yes", "--max-hours", "0.000001"]);
    let log = stdout(&o);
    assert!(o.status.success() && log.contains("stopping: the run has been going 0.00 h (max_hours 0.000001); 0 experiments"), "{log}");
    assert_eq!(fx.rows().len(), 1, "the baseline only");

    for (flag, value, key) in [("--max-hours", "-1", "max_hours (--max-hours)"), ("--max-cost", "inf", "max_cost (--max-cost)"), ("--cost-per-hour", "-0.5", "cost_per_hour (--cost-per-hour)")] {
        let o = fx.run(&["run", "--yes", "--tag", "other", &format!("{flag}={value}")]);
        assert_eq!(o.status.code(), Some(2), "{flag}: {}", stdout(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains(key), "{flag}: {}", stdout(&o));
    }
}

/// val_bpb = 1 + |matrix_lr - 0.04| + |embedding_lr - 0.2|; asked for the held-out split,
/// heldout_bpb = val_bpb + 0.5.
const TWO_KNOBS: &str = r#"#!/bin/sh
f=trainer/hparams.toml
get() { grep "^$1 *=" "$f" | sed 's/^[^=]*= *//'; }
val=$(awk -v a="$(get matrix_lr)" -v b="$(get embedding_lr)" 'BEGIN { x = a - 0.04; y = b - 0.2; if (x < 0) x = -x; if (y < 0) y = -y; printf "%.6f", 1 + x + y }')
if [ "$2" = "--held-out" ]; then
  printf '{"val_bpb": %s, "heldout_bpb": %s}\n' "$val" "$(awk -v v="$val" 'BEGIN { printf "%.6f", v + 0.5 }')" > "$1"
else
  printf '{"val_bpb": %s}\n' "$val" > "$1"
fi
"#;

#[test]
fn finalize_makes_a_branch_per_independent_kept_change() {
    // Three knobs' lines far enough apart that changes to two of them merge apart.
    let hparams = "[gpu]\nmatrix_lr = 0.5\n#\n#\n#\n#\nembedding_lr = 0.6\n#\n#\n#\n#\nmode = \"ok\"\n";
    let fx = Fixture::new(
        hparams,
        "max_experiments = 4\nbaseline_runs = 2\nexperiment_command = \"sh $TOOLS/two.sh {summary_json}{held_out}\"\nproposer = \"command\"\n[command]\ncommand = \"sh $TOOLS/propose.sh\"\n",
    );
    std::fs::write(fx.tools.join("two.sh"), TWO_KNOBS).unwrap();
    std::fs::write(
        fx.tools.join("propose.sh"),
        scripted_proposer(
            r#"  1) sed -i 's/^matrix_lr = .*/matrix_lr = 0.3/' $f; say "matrix_lr = 0.3" "lower is nearer" ;;
  2) sed -i 's/^embedding_lr = .*/embedding_lr = 0.2/' $f; say "embedding_lr = 0.2" "the reference" ;;
  3) sed -i 's/^matrix_lr = .*/matrix_lr = 0.9/' $f; say "matrix_lr = 0.9" "worse" ;;
  4) sed -i 's/^matrix_lr = .*/matrix_lr = 0.04/' $f; say "matrix_lr = 0.04" "the reference" ;;
"#,
        ),
    )
    .unwrap();
    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let status: Vec<String> = fx.rows().iter().map(|r| r[3].clone()).collect();
    assert_eq!(status, ["keep", "keep", "keep", "discard", "keep"], "{}", stdout(&o));

    let o = fx.run(&["finalize"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    let branches = git(&fx.repo, &["for-each-ref", "--format=%(refname:short)", "refs/heads/autoresearch/t1-final/"]);
    let branches: Vec<&str> = branches.lines().collect();
    // n2 and n5 change the same line: one branch, two commits; n3 its own.
    assert_eq!(branches, ["autoresearch/t1-final/01-n2-n5-matrix-lr-0-3", "autoresearch/t1-final/02-n3-embedding-lr-0-2"], "{out}");
    let base = git(&fx.repo, &["rev-parse", "main"]);
    let file = |b: &str| git(&fx.repo, &["show", &format!("{b}:trainer/hparams.toml")]);
    assert_eq!(git(&fx.repo, &["rev-list", "--count", &format!("{base}..{}", branches[0])]), "2");
    assert_eq!(git(&fx.repo, &["rev-list", "--count", &format!("{base}..{}", branches[1])]), "1");
    assert_eq!(git(&fx.repo, &["merge-base", branches[0], branches[1]]), base, "both start at the run's base");
    assert!(file(branches[0]).contains("matrix_lr = 0.04") && file(branches[0]).contains("embedding_lr = 0.6"), "{}", file(branches[0]));
    assert!(file(branches[1]).contains("matrix_lr = 0.5") && file(branches[1]).contains("embedding_lr = 0.2"), "{}", file(branches[1]));
    // Each commit: description, hypothesis, gain with its error, held-out figure.
    let msg = git(&fx.repo, &["log", "-1", "--format=%B", branches[1]]);
    assert!(msg.starts_with("embedding_lr = 0.2\n\nHypothesis: the reference\n"), "{msg}");
    assert!(msg.contains("Measured: val_bpb 1.260000 (3 run(s)) against 1.660000 of n2 (3 run(s)): gain 0.400000 +- 0.000000 (one standard error, pooled noise)"), "{msg}");
    assert!(msg.contains("Held-out: 1.760000 against 2.160000 for n2: gain 0.400000"), "{msg}");
    let summary = std::fs::read_to_string(fx.repo.join(".autoresearch/t1/finalize.md")).unwrap();
    assert!(summary.contains("Merged together, the branches give exactly the best's code (n5)."), "{summary}");
    assert!(summary.contains("## Branch `autoresearch/t1-final/02-n3-embedding-lr-0-2`") && summary.contains("-embedding_lr = 0.6\n+embedding_lr = 0.2"), "{summary}");
    assert!(out.contains("| `autoresearch/t1-final/01-n2-n5-matrix-lr-0-3` | n2: matrix_lr = 0.3; n5: matrix_lr = 0.04 |"), "{out}");
    // Not while a runner holds the tag (this test's own process stands in for it).
    let pid_file = fx.repo.join(".autoresearch/t1/runner.pid");
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
    let o = fx.run(&["finalize"]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is running tag t1: its kept path can still change"), "{}", stdout(&o));
    std::fs::remove_file(&pid_file).unwrap();
    // Again: the same branches, made anew.
    let again = fx.run(&["finalize"]);
    assert!(again.status.success(), "{}", stdout(&again));
    assert_eq!(git(&fx.repo, &["for-each-ref", "--format=%(refname:short)", "refs/heads/autoresearch/t1-final/"]).lines().count(), 2);
}

/// val_bpb = 1 + |matrix_lr - 0.04|, worse by 0.05 while the machine is slow ($TOOLS/slow
/// exists): a slow machine means fewer steps in the budget; tokens_per_sec says which.
const MACHINE: &str = r#"#!/bin/sh
lr=$(grep '^matrix_lr' trainer/hparams.toml | sed 's/^[^=]*= *//')
if [ -e "$TOOLS/slow" ]; then extra=0.05; tps=800; else extra=0; tps=1000; fi
val=$(awk -v lr="$lr" -v x="$extra" 'BEGIN { d = lr - 0.04; if (d < 0) d = -d; printf "%.6f", 1 + d + x }')
printf '{"val_bpb": %s, "tokens_per_sec": %s, "num_steps": 40}\n' "$val" "$tps" > "$1"
"#;

/// A null change measured after the machine got faster than it was for the baseline: without
/// the guard the `significant` rule keeps it (the runs repeat exactly, so any gain is
/// significant); with it, the decision is flagged, the best runs again beside the candidate,
/// and nothing is kept.
#[test]
fn the_throughput_guard_reruns_the_best_beside_a_candidate_measured_on_another_machine_speed() {
    let setup = |extra: &str| {
        let fx = Fixture::new(
            "[gpu]\nmatrix_lr = 0.5\nmode = \"ok\"\n",
            &format!(
                "max_experiments = 1\nbaseline_runs = 2\nexperiment_command = \"sh $TOOLS/machine.sh {{summary_json}}\"\n{extra}proposer = \"command\"\n[command]\ncommand = \"rm -f $TOOLS/slow; echo '# a comment' >> trainer/hparams.toml; echo 'a comment' > $AUTORESEARCH_PROPOSAL_FILE\"\n"
            ),
        );
        std::fs::write(fx.tools.join("machine.sh"), MACHINE).unwrap();
        std::fs::write(fx.tools.join("slow"), "").unwrap();
        let o = fx.run(&["run", "--yes"]);
        assert!(o.status.success(), "{}", stdout(&o));
        (stdout(&o), fx)
    };
    let (log, fx) = setup("throughput_guard = false\n");
    assert_eq!(fx.rows()[1][3], "keep", "without the guard the machine's speed-up is kept:\n{log}");

    let (log, fx) = setup("");
    let rows = fx.rows();
    assert_eq!(rows[1][3], "discard", "{rows:?}\n{log}");
    assert!(log.contains("n2: throughput 1.0k tok/s against the best's 800 (spread 0, tolerance 16): flagged; n1 runs again beside it"), "{log}");
    assert!(log.contains("throughput flagged") && log.contains("n1 ran again beside it at 1000 tok/s: the machine had moved, not the change"), "{log}");
    let jsonl = std::fs::read_to_string(fx.repo.join(".autoresearch/t1/experiments.jsonl")).unwrap();
    let n2: serde_json::Value = serde_json::from_str(jsonl.lines().nth(1).unwrap()).unwrap();
    assert_eq!((n2["throughput"]["flagged"].clone(), n2["throughput"]["best_beside"].clone(), n2["throughput"]["machine_moved"].clone()), (true.into(), 1000.0.into(), true.into()), "{n2:#}");
    // The best's run beside it counts among the best's runs.
    let show: serde_json::Value = serde_json::from_slice(&fx.run(&["tree", "show", "n1", "--json"]).stdout).unwrap();
    assert!(show["runs"].as_array().unwrap().iter().any(|r| r["attempt"] == "again-n2-1"), "{show:#}");
    let summary = std::fs::read_to_string(fx.repo.join(".autoresearch/t1/autoresearch-summary.md")).unwrap();
    assert!(summary.contains("- 1 decision(s) looked at, 1 flagged") && summary.contains("beside it the best ran at 1000 tok/s: the machine had moved"), "{summary}");
}
