//! The human-in-the-loop path: `tree add` -> `tree worktree` -> edit -> `tree sync` -> run ->
//! `tree record --insight`, plus `tree insight` and the errors of the new commands.

mod common;
use common::*;

const HPARAMS: &str = "[gpu]\nmatrix_lr = 0.5\nmode = \"ok\"\n";

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// A finished run: n1 baseline, n2 keep (matrix_lr 0.1); and n2's commit.
fn run_with_one_keep() -> (Fixture, String) {
    let fx = Fixture::new(
        HPARAMS,
        "keep_rule = \"strict\"\nmax_experiments = 1\nproposer = \"command\"\n[command]\ncommand = \"sed -i 's/^matrix_lr = .*/matrix_lr = 0.1/' trainer/hparams.toml\"\n",
    );
    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let n2_commit = fx.nodes()[1]["commit"].as_str().unwrap().to_string();
    (fx, n2_commit)
}

#[test]
fn add_worktree_sync_record_insight() {
    let (fx, n2_commit) = run_with_one_keep();

    // tree insight on a finished node: shown by `tree show`.
    let o = fx.run(&["tree", "insight", "n2", "matrix_lr 0.1 beats 0.5"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let o = fx.run(&["tree", "show", "n2"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("insight:\n  matrix_lr 0.1 beats 0.5"), "{}", stdout(&o));

    // tree add -> tree worktree: checked out at the parent's commit, with the build/run hint.
    let o = fx.run(&["tree", "add", "--parent", "n2", "--hypothesis", "the reference value", "--description", "matrix_lr 0.04"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "n3");
    let o = fx.run(&["tree", "worktree", "n3"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let wt = fx.repo.canonicalize().unwrap().join(".worktrees/t1-n3");
    assert!(out.contains(&format!("{}\n", wt.display())), "{out}");
    assert!(out.contains("n2's commit"), "{out}");
    // The way to run it as the loop would.
    assert!(out.contains("autoresearch tree exec --tag t1 n3 --description"), "{out}");
    assert_eq!(git(&wt, &["rev-parse", "HEAD"]), n2_commit);
    // Again: the existing worktree (and any edit in it) is kept.
    std::fs::write(wt.join("trainer/hparams.toml"), "[gpu]\nmatrix_lr = 0.04\nmode = \"ok\"\n").unwrap();
    let o = fx.run(&["tree", "worktree", "n3"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("already has a worktree"), "{}", stdout(&o));
    assert!(std::fs::read_to_string(wt.join("trainer/hparams.toml")).unwrap().contains("0.04"));
    // Removing a dirty worktree is refused.
    let o = fx.run(&["tree", "worktree", "n3", "--remove"]);
    assert_eq!(code(&o), 3, "{}", stdout(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tree sync n3"), "{}", stdout(&o));

    // tree sync: commits the edit on top of n2, stores it, keeps it under the node's ref.
    let o = fx.run(&["tree", "sync", "n3"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let head = git(&wt, &["rev-parse", "HEAD"]);
    assert_ne!(head, n2_commit);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("n3 {head}")), "{}", stdout(&o));
    assert_eq!(fx.nodes()[2]["commit"], head.as_str());
    assert_eq!(git(&fx.repo, &["rev-parse", "refs/autoresearch/t1/n3"]), head);
    assert_eq!(git(&fx.repo, &["rev-parse", &format!("{head}^")]), n2_commit);
    assert_eq!(git(&fx.repo, &["log", "-1", "--format=%s", &head]), "matrix_lr 0.04");
    assert_eq!(git(&fx.repo, &["diff", "--name-only", &n2_commit, &head]), "trainer/hparams.toml");
    // Clean worktree: sync again records the same commit.
    let o = fx.run(&["tree", "sync", "n3"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains(&format!("n3 {head}")), "{}", stdout(&o));

    // Run it by hand, record it with an insight.
    let summary = fx.tools.join("n3.json");
    let status = std::process::Command::new("sh")
        .arg(fx.tools.join("experiment.sh"))
        .arg(&summary)
        .current_dir(&wt)
        .env("TOOLS", &fx.tools)
        .status()
        .unwrap();
    assert!(status.success());
    let o = fx.run(&["tree", "record", "n3", "--summary-json", summary.to_str().unwrap(), "--insight", "0.04 is the sweet spot"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let n3 = &fx.nodes()[2];
    assert_eq!(n3["insight"], "0.04 is the sweet spot");
    assert_eq!(n3["recorded"]["metric"], 1.0);

    // Remove: the worktree and its git bookkeeping are gone, the commit stays.
    let o = fx.run(&["tree", "worktree", "n3", "--remove"]);
    assert!(o.status.success(), "{}", stdout(&o));
    fx.assert_worktrees_clean();
    assert_eq!(git(&fx.repo, &["rev-parse", "refs/autoresearch/t1/n3"]), head);
    // A node that ran has its own commit: its worktree starts there.
    let o = fx.run(&["tree", "worktree", "n3"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(git(&wt, &["rev-parse", "HEAD"]), head);
    let o = fx.run(&["tree", "worktree", "n3", "--remove"]);
    assert!(o.status.success(), "{}", stdout(&o));
    fx.assert_worktrees_clean();
}

#[test]
fn new_tree_commands_name_the_node_in_errors() {
    let fx = Fixture::new(HPARAMS, "keep_rule = \"strict\"\nmax_experiments = 1\nproposer = \"command\"\n[command]\ncommand = \"true\"\n");
    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let err = |args: &[&str], want_code: i32, want: &str| {
        let o = fx.run(args);
        assert_eq!(code(&o), want_code, "{args:?}: {}", stdout(&o));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{e}");
    };
    err(&["tree", "insight", "n99", "x"], 2, "n99 does not exist");
    err(&["tree", "insight", "seven", "x"], 2, "`seven` is not a node id");
    err(&["tree", "worktree", "n99"], 2, "n99 does not exist");
    err(&["tree", "sync", "n99"], 2, "n99 does not exist");
    err(&["tree", "worktree", "n1", "--force"], 2, "--remove");
    // The baseline is finished: its commit is final.
    err(&["tree", "sync", "n1"], 2, "n1 is already keep");
    err(&["tree", "record", "n1", "--metric", "1", "--insight", "x"], 2, "tree insight n1");
    // A planned node without a worktree.
    let o = fx.run(&["tree", "add", "--parent", "n1", "--hypothesis", "h"]);
    assert!(o.status.success(), "{}", stdout(&o));
    err(&["tree", "sync", "n2"], 3, "tree worktree n2");
    let o = fx.run(&["tree", "worktree", "n2", "--remove"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("n2 has no worktree"), "{}", stdout(&o));
    // --help teaches the path.
    let o = fx.run(&["tree", "--help"]);
    let h = String::from_utf8_lossy(&o.stdout);
    for c in ["insight", "worktree", "sync", "tree sync n9"] {
        assert!(h.contains(c), "{h}");
    }
}

/// Ideas queued with `tree add` are taken up by `run` before the proposer's own: a synced change
/// runs as it is, a recorded one is concluded, one described as `param = value` is implemented
/// by the search, and a person's idea with a worktree but no commit waits.
#[test]
fn queued_ideas_are_taken_up_by_the_loop() {
    let fx = Fixture::new(
        "[gpu]\nmatrix_lr = 0.5   # start\nmode = \"ok\"\n",
        "keep_rule = \"strict\"\nmax_experiments = 1\nproposer = \"search\"\nsearch_space = \"configs/space.toml\"\n",
    );
    std::fs::write(fx.repo.join("configs/space.toml"), "table = \"gpu\"\n[[param]]\nname = \"matrix_lr\"\nvalues = [0.3, 0.2]\n").unwrap();
    git(&fx.repo, &["-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"]);
    git(&fx.repo, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "space"]);
    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert_eq!(fx.rows().len(), 2); // n1 baseline 1.46, n2 matrix_lr 0.3 keep (1.26)

    let add = |parent: &str, desc: &str| {
        let o = fx.run(&["tree", "add", "--parent", parent, "--hypothesis", "queued", "--description", desc]);
        assert!(o.status.success(), "{}", stdout(&o));
        String::from_utf8_lossy(&o.stdout).lines().next().unwrap().trim().to_string()
    };
    let edit = |node: &str, lr: &str| {
        let o = fx.run(&["tree", "worktree", node]);
        assert!(o.status.success(), "{}", stdout(&o));
        let wt = fx.repo.join(format!(".worktrees/t1-{node}"));
        std::fs::write(wt.join("trainer/hparams.toml"), format!("[gpu]\nmatrix_lr = {lr}\nmode = \"ok\"\n")).unwrap();
        let o = fx.run(&["tree", "sync", node]);
        assert!(o.status.success(), "{}", stdout(&o));
    };
    // n3: synced, not run -> the loop runs it (worktree removed first: a person is done with it).
    let n3 = add("n2", "lr 0.1 by hand");
    edit(&n3, "0.1");
    let o = fx.run(&["tree", "worktree", &n3, "--remove"]);
    assert!(o.status.success(), "{}", stdout(&o));
    // n4: synced and recorded by a person with a bare metric -> unverified, never compared.
    let n4 = add("n2", "lr 0.06 on the cluster");
    edit(&n4, "0.06");
    let o = fx.run(&["tree", "record", &n4, "--metric", "1.02"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("is unverified"), "{}", stdout(&o));
    // n5: `param = value` -> implemented by the search proposer.
    let n5 = add("n2", "matrix_lr = 0.04");
    // n6: a person is editing it (worktree, no commit) -> it waits.
    let n6 = add("n2", "something clever");
    let o = fx.run(&["tree", "worktree", &n6]);
    assert!(o.status.success(), "{}", stdout(&o));
    // n7: a summary signed with the run's key (what the run's scorer writes) -> verified, so
    // concluded against the best like a scored result (here: discarded).
    let n7 = add("n2", "lr 0.07 signed by the scorer");
    edit(&n7, "0.07");
    let key = std::fs::read_to_string(fx.repo.join(".autoresearch/t1/scorer.key")).expect("the run made its signing key");
    let mut summary: serde_json::Map<String, serde_json::Value> = serde_json::from_str(r#"{"val_bpb": 1.03, "peak_vram_mb": 100.0, "status": "ok"}"#).unwrap();
    contract::signature::sign(key.trim().as_bytes(), &mut summary);
    let signed = fx.tools.join("n7.json");
    std::fs::write(&signed, serde_json::to_string_pretty(&summary).unwrap()).unwrap();
    let o = fx.run(&["tree", "record", &n7, "--summary-json", signed.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(!stdout(&o).contains("unverified"), "{}", stdout(&o));
    let o = fx.run(&["tree", "worktree", &n7, "--remove"]);
    assert!(o.status.success(), "{}", stdout(&o));

    let o = fx.run(&["run", "--yes", "--resume", "--max-experiments", "5"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let log = stdout(&o);
    assert!(log.contains(&format!("{n3}: running the queued change")), "{log}");
    assert!(log.contains(&format!("{n5}: taking up the queued idea")), "{log}");
    let nodes = fx.nodes();
    let node = |name: &str| nodes.iter().find(|n| format!("n{}", n["id"]) == name).unwrap().clone();
    assert_eq!(node(&n3)["status"], "keep", "{:#}", node(&n3));
    assert!((node(&n3)["metric"].as_f64().unwrap() - 1.06).abs() < 1e-9);
    assert_eq!(node(&n4)["status"], "unverified", "{:#}", node(&n4));
    assert!((node(&n4)["metric"].as_f64().unwrap() - 1.02).abs() < 1e-9);
    assert_eq!(node(&n7)["status"], "discard", "{:#}", node(&n7));
    assert_eq!(node(&n5)["status"], "keep", "{:#}", node(&n5));
    assert!((node(&n5)["metric"].as_f64().unwrap() - 1.0).abs() < 1e-9);
    let n5_commit = node(&n5)["commit"].as_str().unwrap().to_string();
    let kept = git(&fx.repo, &["show", &format!("{n5_commit}:trainer/hparams.toml")]);
    assert!(kept.contains("matrix_lr = 0.04   # start"), "{kept}");
    assert_eq!(node(&n6)["status"], "pending");
    assert!(fx.branch_tip().starts_with(&n5_commit));
    // Every taken idea has its row; the waiting one has none.
    let rows = fx.rows();
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert!(rows.iter().any(|r| r[4] == "lr 0.06 on the cluster" && r[1] == "1.020000" && r[3] == "unverified"), "{rows:?}");
    assert!(fx.repo.join(format!(".worktrees/t1-{n6}")).exists(), "the person's worktree stays");
}

/// `tree exec`: a person's change is committed, built and scored by the run's own executor and
/// recorded as a verified result; the loop then concludes it like one of its own.
#[test]
fn tree_exec_runs_a_change_as_the_loop_would() {
    let (fx, n2_commit) = run_with_one_keep();

    // Refused: the baseline, a finished node, a planned node without a worktree or a change.
    let o = fx.run(&["tree", "exec", "n1"]);
    assert_eq!(code(&o), 2, "{}", stdout(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("n1 is already keep"), "{}", stdout(&o));
    let o = fx.run(&["tree", "add", "--parent", "n2", "--hypothesis", "lower is better"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let o = fx.run(&["tree", "exec", "n3"]);
    assert_eq!(code(&o), 3, "{}", stdout(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tree worktree --tag t1 n3"), "{}", stdout(&o));
    let o = fx.run(&["tree", "worktree", "n3"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("autoresearch tree exec --tag t1 n3"), "{}", stdout(&o));
    let o = fx.run(&["tree", "exec", "n3"]);
    assert_ne!(code(&o), 0, "nothing changed yet: {}", stdout(&o));
    assert!(fx.nodes()[2]["recorded"].is_null(), "{:?}", fx.nodes()[2]);

    // The change: committed on top of n2, run by the loop's executor, recorded as scored.
    let wt = fx.repo.join(".worktrees/t1-n3");
    std::fs::write(wt.join("trainer/hparams.toml"), "[gpu]\nmatrix_lr = 0.04\nmode = \"ok\"\n").unwrap();
    let o = fx.run(&["tree", "exec", "n3", "--description", "matrix_lr 0.04", "--insight", "smaller steps"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(!stdout(&o).contains("unverified"), "{}", stdout(&o));
    let n3 = &fx.nodes()[2];
    let head = n3["commit"].as_str().expect("tree exec stores the commit").to_string();
    assert_eq!(git(&fx.repo, &["rev-parse", &format!("{head}^")]), n2_commit);
    assert_eq!(git(&fx.repo, &["log", "-1", "--format=%s", &head]), "matrix_lr 0.04");
    assert_eq!(git(&fx.repo, &["rev-parse", "refs/autoresearch/t1/n3"]), head);
    assert_eq!(n3["recorded"]["metric"], 1.0, "{n3:?}");
    assert_eq!(n3["description"], "matrix_lr 0.04");
    assert_eq!(n3["insight"], "smaller steps");
    // Done once: a second exec is refused.
    let o = fx.run(&["tree", "exec", "n3"]);
    assert_eq!(code(&o), 2, "{}", stdout(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already has a recorded result"), "{}", stdout(&o));

    // The loop concludes it against the best (1.06 -> 1.0: kept) and the branch advances.
    let o = fx.run(&["tree", "worktree", "n3", "--remove"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let o = fx.run(&["run", "--yes", "--resume", "--max-experiments", "2"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let n3 = &fx.nodes()[2];
    assert_eq!(n3["status"], "keep", "{}\n{n3:?}", stdout(&o));
    assert!(head.starts_with(&fx.branch_tip()) || fx.branch_tip().starts_with(&head), "{} vs {head}", fx.branch_tip());
    fx.assert_worktrees_clean();
}

/// Mode 2 with a keep rule that confirms: `tree exec` makes the loop's run 0 and the runner runs
/// the confirmation itself, on the commit `tree exec` built; an idea queued while the loop's own
/// node waits untouched takes its place, at the idea's own parent.
#[test]
fn manual_mode_confirms_exec_runs_and_gives_way_to_a_queued_idea() {
    let fx = Fixture::new(HPARAMS, "keep_rule = \"noise-aware\"\nbaseline_runs = 2\nmax_experiments = 2\nproposer = \"manual\"\n[manual]\npoll_seconds = 0.1\n");
    let log = fx.tools.join("run.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut runner = Background(fx.cmd(&["run", "--yes"]).stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap());
    let set_lr = |wt: &std::path::Path, lr: &str| std::fs::write(wt.join("trainer/hparams.toml"), format!("[gpu]\nmatrix_lr = {lr}\nmode = \"ok\"\n")).unwrap();

    let wt2 = wait_for_worktree(&fx.repo, &mut runner.0, &log, "n2");
    set_lr(&wt2, "0.05");
    let o = fx.run(&["tree", "exec", "n2", "--description", "matrix_lr 0.05"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    // Run 0 by `tree exec`, run 1 (the confirmation) by the runner, then the decision.
    assert!(out.contains("n2: run 0 (seed 42): val_bpb 1.010000"), "{out}");
    assert!(out.contains("n2: run 1 (seed 43): ok 1.010000"), "{out}");
    assert!(out.contains("n2 keep 1.010000 (-0.450000; gain 0.450000 > bar 0.001000)"), "{out}");
    assert!(String::from_utf8_lossy(&o.stdout).lines().count() <= 8 && !out.contains("\"summary\""), "a few lines, no record dump: {out}");

    // The loop's next node (n3, at the best) waits untouched; an idea queued from the baseline
    // takes its place.
    let _ = wait_for_worktree(&fx.repo, &mut runner.0, &log, "n3");
    let o = fx.run(&["tree", "add", "--parent", "n1", "--description", "matrix_lr 0.045 from the baseline", "--hypothesis", "closer still"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let wt4 = wait_for_worktree(&fx.repo, &mut runner.0, &log, "n4");
    assert_eq!(git(&wt4, &["rev-parse", "HEAD"]), fx.nodes()[0]["commit"].as_str().unwrap(), "the idea opens at its own parent");
    assert!(!fx.repo.join(format!(".worktrees/{TAG}-n3")).exists(), "n3 gave way");
    set_lr(&wt4, "0.045");
    let o = fx.run(&["tree", "exec", "n4"]);
    assert!(o.status.success() && stdout(&o).contains("n4 keep 1.005000"), "{}", stdout(&o));
    assert!(runner.0.wait().unwrap().success(), "{}", std::fs::read_to_string(&log).unwrap());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("n3: untouched, gives way to the queued idea n4"), "{text}");

    let nodes = fx.nodes();
    let names: Vec<&str> = nodes.iter().map(|n| n["description"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3, "n3 is gone: {names:?}");
    let n4 = &nodes[2];
    assert_eq!((n4["id"].as_i64(), n4["parent"].as_i64(), n4["status"].as_str()), (Some(4), Some(1), Some("keep")), "{n4}");
    assert_eq!(fx.rows().iter().map(|r| r[3].as_str().to_string()).collect::<Vec<_>>(), ["keep", "keep", "keep"]);
    let runs: serde_json::Value = serde_json::from_slice(&fx.run(&["tree", "show", "n2", "--json"]).stdout).unwrap();
    let seeds: Vec<(String, u64)> = runs["runs"].as_array().unwrap().iter().map(|r| (r["attempt"].as_str().unwrap().to_string(), r["seed"].as_u64().unwrap())).collect();
    assert_eq!(seeds, [("0".to_string(), 42), ("1".to_string(), 43)]);
    fx.assert_worktrees_clean();
}
