//! The loop end to end: baseline, keep, discard, crash, hang (killed), empty proposal, guard
//! rejection; branch, refs, results.tsv, database rows and worktrees checked.

mod common;
use common::*;

const HPARAMS: &str = "# test trainer\n[gpu]\nmatrix_lr = 0.5   # deliberately bad\nmode = \"ok\"\n";

const PROPOSER_CASES: &str = r#"  1) sed -i 's/^matrix_lr = [^ ]*/matrix_lr = 0.05/' $f; say "matrix_lr 0.05" "closer to the optimum" ;;
  2) sed -i 's/^matrix_lr = [^ ]*/matrix_lr = 0.3/' $f; say "matrix_lr 0.3" "maybe higher is fine" ;;
  3) sed -i 's/^mode = .*/mode = "crash"/' $f; say "crashing change" "" ;;
  4) sed -i 's/^mode = .*/mode = "hang"/' $f; say "hanging change" "" ;;
  5) : ;;
  6) echo "tampered" >> prepare/data.txt; sed -i 's/^matrix_lr = [^ ]*/matrix_lr = 0.04/' $f; say "edit the metric data" "" ;;
  *) exit 1 ;;
"#;

#[test]
fn loop_end_to_end() {
    let fx = Fixture::new(
        HPARAMS,
        "keep_rule = \"noise-aware\"\nbaseline_runs = 2\nnoise_floor = 0.001\nmax_experiments = 5\nhard_timeout_seconds = 2\nproposer = \"command\"\n[command]\ncommand = \"sh $TOOLS/propose.sh\"\n",
    );
    std::fs::write(fx.tools.join("propose.sh"), scripted_proposer(PROPOSER_CASES)).unwrap();
    let base = git(&fx.repo, &["rev-parse", "HEAD"]);

    let out = fx.run(&["run", "--yes"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let log = stdout(&out);

    // results.tsv: one row per finished experiment, reference format.
    let rows = fx.rows();
    let status: Vec<&str> = rows.iter().map(|r| r[3].as_str()).collect();
    assert_eq!(status, ["keep", "keep", "discard", "crash", "crash", "rejected"], "{rows:?}\n{log}");
    assert_eq!(rows[0][0], base[..7]);
    assert_eq!(&rows[0][1..3], ["1.460000", "2.0"]);
    assert_eq!(rows[0][4], "baseline");
    assert_eq!(&rows[1][1..5], ["1.010000", "2.0", "keep", "matrix_lr 0.05"]);
    assert_eq!(&rows[2][1..4], ["1.260000", "2.0", "discard"]);
    assert_eq!(&rows[3][1..3], ["0.000000", "0.0"]);
    assert!(rows[3][4].starts_with("crashing change [exit 1") && rows[3][4].contains("boom: simulated crash"), "{:?}", rows[3]);
    assert_eq!(&rows[4][1..3], ["0.000000", "0.0"]);
    assert!(rows[4][4].contains("timeout"), "{:?}", rows[4]);
    assert!(rows[5][4].contains("outside the scope") && rows[5][4].contains("prepare/data.txt"), "{:?}", rows[5]);
    assert!(rows.iter().all(|r| r[0].len() == 7));

    // Branch: at the kept experiment. Refs: every experiment (the empty proposal left none).
    let tip = fx.branch_tip();
    assert!(tip.starts_with(&rows[1][0]), "tip {tip} vs {:?}", rows[1]);
    let refs = fx.node_refs();
    assert_eq!(refs.len(), 6, "{refs:?}");
    for r in &rows {
        assert!(refs.iter().any(|name| git(&fx.repo, &["rev-parse", name]).starts_with(&r[0])), "no ref for {r:?}");
    }
    let kept = git(&fx.repo, &["show", &format!("{tip}:trainer/hparams.toml")]);
    assert!(kept.contains("matrix_lr = 0.05   # deliberately bad"), "{kept}");
    // The rejected commit is reachable, but not on the branch.
    let rejected_ref = refs.iter().find(|r| git(&fx.repo, &["rev-parse", r]).starts_with(&rows[5][0])).unwrap();
    assert!(git(&fx.repo, &["show", &format!("{rejected_ref}:prepare/data.txt")]).contains("tampered"));
    assert!(!git(&fx.repo, &["show", &format!("{tip}:prepare/data.txt")]).contains("tampered"));
    // The main checkout was never touched.
    assert_eq!(git(&fx.repo, &["rev-parse", "HEAD"]), base);

    // Database rows.
    let nodes = fx.nodes();
    let st: Vec<&str> = nodes.iter().map(|n| n["status"].as_str().unwrap()).collect();
    assert_eq!(st, ["keep", "keep", "discard", "crash", "crash", "rejected"], "{nodes:#?}");
    assert!(nodes[0]["parent"].is_null());
    assert_eq!(nodes[1]["parent"], 1);
    assert!(nodes[2..].iter().all(|n| n["parent"] == 2), "every experiment builds on the best: {nodes:#?}");
    assert_eq!(nodes[1]["hypothesis"], "closer to the optimum");
    assert!((nodes[1]["metric"].as_f64().unwrap() - 1.01).abs() < 1e-9);
    assert!(nodes.iter().all(|n| n["result_row"].is_string()));
    // Noise-aware: two baseline runs, and a confirmation run for the keep.
    let show = fx.run(&["tree", "show", "n2", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 2, "{v:#}");
    let show = fx.run(&["tree", "show", "n1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 2);

    // JSONL log: one line per finished node, with the previous best and the delta.
    let jsonl = std::fs::read_to_string(fx.repo.join(".autoresearch/t1/experiments.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 6);
    assert!((recs[1]["previous_best"].as_f64().unwrap() - 1.46).abs() < 1e-9);
    assert!((recs[1]["delta"].as_f64().unwrap() + 0.45).abs() < 1e-9);
    assert!(fx.repo.join(".autoresearch/t1/autoresearch-summary.md").exists());
    // The loop ends by writing the report: chart, tree and page.
    for f in ["progress.png", "progress.svg", "tree.svg", "report.html"] {
        assert!(fx.repo.join(".autoresearch/t1").join(f).exists(), "{f} missing\n{log}");
    }
    assert!(log.contains("report: "), "{log}");

    fx.assert_worktrees_clean();

    // The other commands on the finished run.
    for args in [&["results"][..], &["results", "--json"], &["tree", "visualize"], &["tree", "best-path"], &["tree", "compare", "n1", "n2"]] {
        let o = fx.run(args);
        assert!(o.status.success(), "{args:?}: {}", stdout(&o));
    }
    let o = fx.run(&["tree", "visualize"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("<- best"));

    // A second run with the same tag is refused (exit 3) without --resume.
    let again = fx.run(&["run", "--yes"]);
    assert_eq!(again.status.code(), Some(3), "{}", stdout(&again));
}

#[test]
fn usage_errors_exit_2() {
    let fx = Fixture::new(HPARAMS, "");
    let o = fx.run(&["run", "--yes", "--budget", "steps:3"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let o = fx.run(&["run", "--yes", "--proposer", "command"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--proposer-command"));
    let o = fx.run(&["tree", "list"]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    let o = fx.run(&["detect", "--json"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(d["cpu"]["logical_cores"].as_u64().unwrap() >= 1);
}
