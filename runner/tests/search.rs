//! The built-in search fixes a deliberately bad hyperparameter, keeping the file's comments.

mod common;
use common::*;

const HPARAMS: &str = "# hyperparameters\n[gpu]\nmatrix_lr = 0.5   # deliberately bad\nembedding_lr = 0.6 # fine\nmode = \"ok\"\n\n[cpu]\n";

const SPACE: &str = "file = \"trainer/hparams.toml\"\ntable = \"gpu\"\n\n[[param]]\nname = \"matrix_lr\"\nvalues = [0.2, 0.04, 1.0, 0.03, 0.05]\n\n[[param]]\nname = \"embedding_lr\"\nvalues = [0.3, 1.2]\n";

#[test]
fn search_improves_a_bad_hyperparameter() {
    let fx = Fixture::new(HPARAMS, "keep_rule = \"strict\"\nmax_experiments = 6\nproposer = \"search\"\nsearch_space = \"configs/search_space.toml\"\nsearch_patience = 3\n");
    std::fs::write(fx.repo.join("configs/search_space.toml"), SPACE).unwrap();
    git(&fx.repo, &["-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"]);
    git(&fx.repo, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "space"]);

    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let rows = fx.rows();
    assert_eq!(rows.len(), 7, "{rows:?}");
    // Broad first: matrix_lr's first value, then embedding_lr's, before any finer value.
    assert!(rows[1][4].starts_with("matrix_lr = 0.2"), "{rows:?}");
    assert!(rows[2][4].starts_with("embedding_lr = 0.3"), "{rows:?}");
    let tip = fx.branch_tip();
    let file = git(&fx.repo, &["show", &format!("{tip}:trainer/hparams.toml")]);
    assert!(file.contains("matrix_lr = 0.04   # deliberately bad"), "{file}");
    assert!(file.contains("embedding_lr = 0.6 # fine") && file.starts_with("# hyperparameters"), "{file}");
    let best: f64 = rows.iter().filter(|r| r[3] == "keep").map(|r| r[1].parse::<f64>().unwrap()).fold(f64::INFINITY, f64::min);
    assert!((best - 1.0).abs() < 1e-9, "{rows:?}");
    // No change tried twice from the same node.
    let mut descs: Vec<String> = fx.nodes().iter().map(|n| format!("{} {}", n["parent"], n["change"])).collect();
    let n = descs.len();
    descs.sort();
    descs.dedup();
    assert_eq!(descs.len(), n);
    fx.assert_worktrees_clean();
}

#[test]
fn search_prunes_dead_branches_and_stops_when_exhausted() {
    let fx = Fixture::new(
        "[gpu]\nmatrix_lr = 0.04\nmode = \"ok\"\n",
        "keep_rule = \"strict\"\nmax_experiments = 20\nproposer = \"search\"\nsearch_space = \"configs/search_space.toml\"\nsearch_patience = 8\n",
    );
    std::fs::write(
        fx.repo.join("configs/search_space.toml"),
        "table = \"gpu\"\n[[param]]\nname = \"matrix_lr\"\nvalues = [0.45]\n[[param]]\nname = \"mode\"\nvalues = [\"crash\", \"crash2\"]\n",
    )
    .unwrap();
    git(&fx.repo, &["-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"]);
    git(&fx.repo, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "space"]);
    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("search space is exhausted"), "{}", stdout(&o));
    let nodes = fx.nodes();
    let st: Vec<(i64, &str)> = nodes.iter().map(|n| (n["parent"].as_i64().unwrap_or(0), n["status"].as_str().unwrap())).collect();
    // n2 (discard) is expanded after the baseline runs out of changes; both its children crash,
    // so it is pruned and nothing is left to try.
    assert_eq!(st, [(0, "keep"), (1, "pruned"), (1, "crash"), (1, "crash"), (2, "crash"), (2, "crash")], "{nodes:#?}");
    // Its results row keeps the status it finished with.
    assert_eq!(fx.rows()[1][3], "discard");
}

/// With several slots the search can run out of untried changes while experiments are in
/// flight; a keep among them opens new ones, and the loop asks again instead of stopping.
#[test]
fn an_exhausted_search_goes_on_after_a_keep_in_flight() {
    let fx = Fixture::new(HPARAMS, "keep_rule = \"strict\"\nmax_experiments = 10\nslots = 4\nproposer = \"search\"\nsearch_space = \"configs/search_space.toml\"\n");
    // Three changes of the baseline, all in flight at once, and a free slot: the search has
    // nothing left to propose until one of them finishes.
    let space = "file = \"trainer/hparams.toml\"\ntable = \"gpu\"\n\n[[param]]\nname = \"matrix_lr\"\nvalues = [0.3, 0.04]\n\n[[param]]\nname = \"embedding_lr\"\nvalues = [0.3]\n";
    std::fs::write(fx.repo.join("configs/search_space.toml"), space).unwrap();
    git(&fx.repo, &["-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"]);
    git(&fx.repo, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "space"]);
    let o = fx.run(&["run", "--yes"]);
    assert!(o.status.success(), "{}", stdout(&o));
    // The three changes of the baseline went out at once and left nothing untried; the nodes
    // that finished afterwards were expanded all the same.
    let nodes = fx.nodes();
    let first_wave = nodes.iter().filter(|n| n["parent"] == 1).count();
    assert_eq!(first_wave, 3, "{nodes:#?}");
    assert!(
        nodes.iter().any(|n| n["parent"].as_i64().is_some_and(|p| p > 1)),
        "nothing was tried after the first 'exhausted'\n{nodes:#?}\n{}",
        stdout(&o)
    );
    fx.assert_worktrees_clean();
}
