//! The held-out split through the real loop: asked of the baseline and of each kept node only,
//! shown in the summary, `results --json` and the JSONL log, and never in a proposer's prompt.

mod common;
use common::*;

/// val_bpb = 1 + |matrix_lr - 0.04|; when the runner asks (`{held_out}` and
/// AUTORESEARCH_HELD_OUT agree), heldout_bpb = val_bpb + 0.777777, a figure (777777) no other number in
/// the run contains. Each run logs whether it was asked.
const EXPERIMENT: &str = r#"#!/bin/sh
f=trainer/hparams.toml
lr=$(grep '^matrix_lr' "$f" | sed 's/^[^=]*= *//')
val=$(awk -v lr="$lr" 'BEGIN { d = lr - 0.04; if (d < 0) d = -d; printf "%.6f", 1 + d }')
echo "$AUTORESEARCH_NODE $(basename "$1") asked [$2] env $AUTORESEARCH_HELD_OUT" >> "$TOOLS/asked"
if [ "$2" = "--held-out" ] && [ "$AUTORESEARCH_HELD_OUT" = "1" ]; then
  held=$(awk -v v="$val" 'BEGIN { printf "%.6f", v + 0.777777 }')
  printf '{"val_bpb": %s, "heldout_bpb": %s, "heldout": {"scored": {"bpb": %s}}}\n' "$val" "$held" "$held" > "$1"
else
  printf '{"val_bpb": %s}\n' "$val" > "$1"
fi
"#;

/// Keeps a copy of every prompt and of the results file it was pointed at, then sets
/// matrix_lr: 0.04 (a gain) on the first experiment, 0.3 (a loss) after.
const AGENT: &str = r#"#!/bin/sh
cp "$1" "$TOOLS/prompt-$AUTORESEARCH_ITERATION.md"
cp "$AUTORESEARCH_RESULTS" "$TOOLS/results-$AUTORESEARCH_ITERATION.tsv" 2>/dev/null
env | grep '^AUTORESEARCH_' > "$TOOLS/env-$AUTORESEARCH_ITERATION"
if [ "$AUTORESEARCH_ITERATION" = "1" ]; then lr=0.04; else lr=0.3; fi
sed -i "s/^matrix_lr = .*/matrix_lr = $lr/" trainer/hparams.toml
echo "DESCRIPTION: matrix_lr $lr"
"#;

#[test]
fn held_out_scores_reach_the_reports_and_never_a_proposer() {
    let fx = Fixture::new(
        "[gpu]\nmatrix_lr = 0.5\n",
        "max_experiments = 2\nbaseline_runs = 2\nproposer = \"agent\"\n\
         experiment_command = \"sh $TOOLS/experiment.sh {summary_json}{held_out}\"\n\
         [agent]\ncommand = \"sh $TOOLS/agent.sh {prompt_file}\"\nprogram = \"program.md\"\ntimeout_seconds = 30\n",
    );
    std::fs::write(fx.tools.join("experiment.sh"), EXPERIMENT).unwrap();
    std::fs::write(fx.tools.join("agent.sh"), AGENT).unwrap();
    std::fs::write(fx.repo.join("program.md"), "# instructions\n").unwrap();
    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));

    let nodes = fx.nodes();
    let status: Vec<&str> = nodes.iter().map(|n| n["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["keep", "keep", "discard"], "{nodes:#?}");

    // Asked of the baseline's seeds and of one extra run of the kept node; nothing else.
    let asked = std::fs::read_to_string(fx.tools.join("asked")).unwrap();
    let asked_lines: Vec<&str> = asked.lines().filter(|l| l.contains("[--held-out] env 1")).collect();
    assert_eq!(asked_lines.len(), 3, "{asked}");
    assert!(asked_lines[..2].iter().all(|l| l.starts_with("n1 ")) && asked_lines[2].starts_with("n2 ") && asked_lines[2].contains("heldout"), "{asked}");
    assert!(asked.lines().filter(|l| !asked_lines.contains(l)).all(|l| l.ends_with("[] env 0")), "{asked}");
    let show: serde_json::Value = serde_json::from_slice(&fx.run(&["tree", "show", "n2", "--json"]).stdout).unwrap();
    let attempts: Vec<&str> = show["runs"].as_array().unwrap().iter().map(|r| r["attempt"].as_str().unwrap()).collect();
    assert_eq!(attempts.last(), Some(&"heldout"), "{show:#}");
    // Its validation score is one more run of the kept node.
    assert_eq!(show["node"]["metrics"]["runs"], serde_json::json!([1.0, 1.0, 1.0]), "{show:#}");
    assert!(show["node"]["metrics"].get("heldout_bpb").is_none(), "{show:#}");

    // No proposer saw a held-out figure: not in the prompt, the results file or the environment.
    for i in 1..=2 {
        for f in [format!("prompt-{i}.md"), format!("results-{i}.tsv"), format!("env-{i}")] {
            let text = std::fs::read_to_string(fx.tools.join(&f)).unwrap_or_default();
            assert!(!text.contains("777777") && !text.contains("2.237777") && !text.contains("1.777777"), "{f}:\n{text}");
        }
    }
    assert!(std::fs::read_to_string(fx.tools.join("prompt-2.md")).unwrap().contains("n2 keep 1.000000"), "the second prompt came after the keep");
    for args in [&["tree", "list"][..], &["tree", "show", "n2", "--json"], &["tree", "show", "n1"]] {
        let text = stdout(&fx.run(args));
        assert!(!text.contains("777777"), "{args:?}: {text}");
    }

    // Side by side in results --json, the JSONL log and the summary.
    let rows: serde_json::Value = serde_json::from_slice(&fx.run(&["results", "--json"]).stdout).unwrap();
    let heldout: Vec<Option<f64>> = rows.as_array().unwrap().iter().map(|r| r["heldout"].as_f64()).collect();
    assert_eq!(heldout, [Some(2.237777), Some(1.777777), None], "{rows:#}");
    let state = fx.repo.join(".autoresearch").join(TAG);
    let jsonl = std::fs::read_to_string(state.join("experiments.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records[1]["heldout"], serde_json::json!([1.777777]), "{jsonl}");
    assert_eq!(records[0]["heldout"], serde_json::json!([2.237777, 2.237777]), "{jsonl}");
    assert!(records[2]["heldout"].is_null(), "{jsonl}");
    let summary = std::fs::read_to_string(fx.repo.join(".autoresearch").join(TAG).join("autoresearch-summary.md")).unwrap();
    assert!(summary.contains("## Held-out split"), "{summary}");
    assert!(summary.contains("held-out gain of the best over the baseline: +0.460000"), "{summary}");
    assert!(summary.contains("against a validation gain of +0.460000"), "{summary}");
    assert!(summary.contains("| n2 | 1.000000 | 1.777777 |"), "{summary}");
}

/// An experiment command that never writes heldout_bpb: the run says so, loudly, and the
/// summary has no held-out figures; `held_out = false` asks no run.
#[test]
fn a_run_without_held_out_scores_says_so() {
    let fx = Fixture::new(
        "[gpu]\nmatrix_lr = 0.5\n",
        "max_experiments = 1\nbaseline_runs = 2\nproposer = \"command\"\n[command]\ncommand = \"sed -i 's/^matrix_lr = .*/matrix_lr = 0.04/' trainer/hparams.toml\"\n",
    );
    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("HELD-OUT SPLIT: NONE: the experiment command wrote no heldout_bpb"), "{}", stdout(&o));
    let summary = std::fs::read_to_string(fx.repo.join(".autoresearch").join(TAG).join("autoresearch-summary.md")).unwrap();
    assert!(summary.contains("No held-out scores"), "{summary}");

    let fx = Fixture::new(
        "[gpu]\nmatrix_lr = 0.5\n",
        "max_experiments = 1\nheld_out = false\nproposer = \"command\"\nexperiment_command = \"sh $TOOLS/experiment.sh {summary_json}{held_out}\"\n[command]\ncommand = \"sed -i 's/^matrix_lr = .*/matrix_lr = 0.04/' trainer/hparams.toml\"\n",
    );
    std::fs::write(fx.tools.join("experiment.sh"), EXPERIMENT).unwrap();
    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let asked = std::fs::read_to_string(fx.tools.join("asked")).unwrap();
    assert!(asked.lines().all(|l| l.ends_with("[] env 0")), "{asked}");
    assert!(!stdout(&o).contains("HELD-OUT SPLIT"), "{}", stdout(&o));
}
