//! `autoresearch report`, `watch --once` and `results` on a real (tiny) run: the files appear in
//! the run's directory, the PNG has the chart's size, the pictures hold every node, the summary
//! numbers match the run, and the HTML page carries each node's diff.

mod common;
use common::*;

const HPARAMS: &str = "[gpu]\nmatrix_lr = 0.5\nmode = \"ok\"\n";

const PROPOSER_CASES: &str = r#"  1) sed -i 's/^matrix_lr = [^ ]*/matrix_lr = 0.05/' $f; say "matrix_lr = 0.05" "closer to the optimum" ;;
  2) sed -i 's/^matrix_lr = [^ ]*/matrix_lr = 0.3/' $f; say "matrix_lr = 0.3" "maybe higher is fine" ;;
  3) sed -i 's/^mode = .*/mode = "crash"/' $f; say "crashing change" "" ;;
  *) exit 1 ;;
"#;

fn out_text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Width and height from a PNG's IHDR (the report's unit tests decode the pixels too).
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&bytes[12..16], b"IHDR");
    (u32::from_be_bytes(bytes[16..20].try_into().unwrap()), u32::from_be_bytes(bytes[20..24].try_into().unwrap()))
}

#[test]
fn report_watch_and_results_on_a_finished_run() {
    let fx = Fixture::new(
        HPARAMS,
        "keep_rule = \"strict\"\nmax_experiments = 3\nproposer = \"command\"\n[command]\ncommand = \"sh $TOOLS/propose.sh\"\n",
    );
    std::fs::write(fx.tools.join("propose.sh"), scripted_proposer(PROPOSER_CASES)).unwrap();
    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let nodes = fx.nodes();
    let status: Vec<&str> = nodes.iter().map(|n| n["status"].as_str().unwrap()).collect();
    assert_eq!(status, ["keep", "keep", "discard", "crash"]);

    let o = fx.run(&["report"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let dir = fx.repo.canonicalize().unwrap().join(".autoresearch").join(TAG);
    for f in ["progress.png", "progress.svg", "tree.svg", "tree.png", "autoresearch-summary.md", "report.html"] {
        assert!(out_text(&o).contains(&dir.join(f).display().to_string()), "{f} not listed:\n{}", stdout(&o));
    }
    let png = std::fs::read(dir.join("progress.png")).unwrap();
    assert_eq!(png_size(&png), (1600, 860));

    let tree = std::fs::read_to_string(dir.join("tree.svg")).unwrap();
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    for n in &nodes {
        let id = n["id"].as_i64().unwrap();
        assert!(tree.contains(&format!(">n{id} · ")), "tree.svg lacks n{id}");
        assert!(tree.contains(&format!("href=\"report.html#diff-n{id}\"")), "tree.svg does not link n{id}");
        assert!(html.contains(&format!("id=\"diff-n{id}\"")) && html.contains(&format!("href=\"#diff-n{id}\"")), "report.html lacks n{id}");
    }
    // The diffs are in the page, as text.
    assert!(html.contains("-matrix_lr = 0.5\n+matrix_lr = 0.05"), "{html}");
    assert!(html.contains("+mode = &quot;crash&quot;"), "no diff of the crash");
    assert!(!html.contains("<script") && !html.contains("src=\"http"), "the page is self-contained");

    // The summary: numbers from the run (val_bpb = 1 + |matrix_lr - 0.04|).
    let md = std::fs::read_to_string(dir.join("autoresearch-summary.md")).unwrap();
    assert!(md.contains("- baseline: 1.460000 (n1"), "{md}");
    assert!(md.contains("- best: 1.010000 (n2"), "{md}");
    assert!(md.contains("- improvement: 0.450000 (30.82 %)"), "{md}");
    assert!(md.contains("- experiments: 3 (1 keep, 1 discard, 1 crash, 0 rejected, 0 unverified, 0 pruned)"), "{md}");
    assert!(md.contains("| n2 | +0.450000 | 1.010000 |"), "{md}");
    assert!(md.contains("| matrix_lr | 1 | 1 | 0 | 0 | -0.250000 (n3) |"), "{md}");
    // The loop wrote the same summary when it ended (before the report rewrote it).
    assert!(md.contains("## Recommended next directions"));

    // --out: anywhere else, relative to the current directory.
    let o = fx.run(&["report", "--out", "elsewhere"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(fx.repo.join("elsewhere/report.html").exists());

    // watch --once: one view of the finished run.
    let o = fx.run(&["watch", "--once"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let w = out_text(&o);
    assert!(w.contains("experiments: 3 of 3 done (1 keep, 1 discard, 1 crash, 0 rejected, 0 unverified, 0 pruned)"), "{w}");
    assert!(w.contains("best: 1.010000 (n2") && w.contains("nothing: the loop"), "{w}");
    assert!(w.contains("n4    crash") && w.contains("n3    discard    1.260000  +0.250000  matrix_lr = 0.3"), "{w}");

    // results: the table and its JSON.
    let o = fx.run(&["results"]);
    assert!(o.status.success() && out_text(&o).contains("4 rows: 2 keep, 1 discard, 1 crash"), "{}", stdout(&o));
    let o = fx.run(&["results", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 4);
    // Each run (tag) has its own results.tsv: another run's rows neither mix in nor count.
    let o = fx.run(&["run", "--yes", "--tag", "other", "--max-experiments", "1", "--baseline-runs", "1"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(fx.repo.join(".autoresearch/other/results.tsv").exists());
    let count = |args: &[&str]| {
        let o = fx.run(args);
        assert!(o.status.success(), "{args:?}: {}", stdout(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap().as_array().unwrap().len()
    };
    assert_eq!(count(&["results", "--tag", "other", "--json"]), 1, "the other run has its baseline only");
    assert_eq!(count(&["results", "--tag", TAG, "--json"]), 4);
    assert_eq!(count(&["results", "--json"]), 4, "the config's tag");
    let o = fx.run(&["results", "--tag", "nosuchrun"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no results for tag nosuchrun"), "{}", stdout(&o));

    // Bad input: a clear usage error.
    let o = fx.run(&["watch", "--interval", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--interval 0"), "{}", stdout(&o));

    // A run that does not exist: a clear error naming the runs there are, exit 3.
    for cmd in ["report", "watch"] {
        let o = fx.run(&[cmd, "--tag", "nope"]);
        assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("no run with tag `nope`") && err.contains(TAG), "{err}");
    }
}

#[test]
fn report_and_watch_on_an_empty_tree() {
    // A run directory whose database has no node yet (SQLite reads an empty file as an empty
    // database; the runner adds its tables on opening).
    let fx = Fixture::new(HPARAMS, "");
    let dir = fx.repo.join(".autoresearch").join(TAG);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tree.db"), "").unwrap();
    let o = fx.run(&["report"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(png_size(&std::fs::read(dir.join("progress.png")).unwrap()), (1600, 860));
    let md = std::fs::read_to_string(dir.join("autoresearch-summary.md")).unwrap();
    assert!(md.contains("no baseline yet") && md.contains("- experiments: 0 ("), "{md}");
    assert!(std::fs::read_to_string(dir.join("tree.svg")).unwrap().contains("no experiments yet"));
    let o = fx.run(&["watch", "--once"]);
    assert!(o.status.success() && out_text(&o).contains("best: - (no baseline yet)"), "{}", stdout(&o));
}

#[test]
fn watch_shows_the_experiment_in_flight() {
    // The experiment of n2 sleeps until the hard timeout (3 s) kills it.
    let fx = Fixture::new(
        HPARAMS,
        "keep_rule = \"strict\"\nmax_experiments = 1\nhard_timeout_seconds = 3\nproposer = \"command\"\n[command]\ncommand = \"sed -i 's/^mode = .*/mode = \\\"slow\\\"/' trainer/hparams.toml\"\n",
    );
    let mut child = fx.cmd(&["run", "--yes"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !fx.tools.join("started").exists() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(60), "the slow experiment never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = fx.run(&["watch", "--once"]);
    let w = out_text(&o);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(w.contains("running:\n  n2    "), "{w}");
    assert!(w.contains("run 0 (seed 42, local:") && w.contains("; killed in "), "{w}");
    assert!(w.contains("best: 1.460000 (n1"), "{w}");
    assert!(child.wait().unwrap().success());
    let o = fx.run(&["watch", "--once"]);
    assert!(out_text(&o).contains("n2    crash"), "{}", stdout(&o));
}
