//! The workflow around the keep rule: checks before a keep (in the build sandbox) and the stop
//! rules.

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
    assert!(summary.contains("1 checks_failed"), "{summary}");
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
