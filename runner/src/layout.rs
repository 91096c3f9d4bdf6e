//! The run layout: where a run keeps its state, where builds happen, and what the files are
//! called. Every part of the runner that writes a file or looks for one (the loop and its
//! workers, the executors, `tree exec`, the `tree` commands, the report, `stop`) takes its name
//! from here: the loop reuses the run `tree exec` made, and resume finds what a killed runner
//! left, only because they agree on these names.

use std::path::{Path, PathBuf};

use crate::config::{ResearchConfig, resolve};

/// A run's state: `.autoresearch/<tag>/` and the files in it.
pub struct Paths {
    pub state_dir: PathBuf,
    /// The experiment tree (SQLite): nodes, runs, jobs in flight, the run's config.
    pub db: PathBuf,
    /// The experiment log: one JSON record per finished node.
    pub jsonl: PathBuf,
    /// results.tsv: the config's `results_file`, under the state folder by default.
    pub results: PathBuf,
    /// autoresearch-summary.md, written when the loop ends.
    pub summary: PathBuf,
}

impl Paths {
    pub fn new(root: &Path, cfg: &ResearchConfig) -> Paths {
        let state_dir = root.join(".autoresearch").join(&cfg.tag);
        Paths {
            db: state_dir.join("tree.db"),
            jsonl: state_dir.join("experiments.jsonl"),
            summary: state_dir.join("autoresearch-summary.md"),
            results: resolve(root, Path::new(&cfg.results_file.replace("{tag}", &cfg.tag))),
            state_dir,
        }
    }

    /// Makes the folders runs write into (logs, summaries, copies of binaries).
    pub fn create_run_dirs(&self) -> std::io::Result<()> {
        for dir in ["logs", "runs", "bin"] {
            std::fs::create_dir_all(self.state_dir.join(dir))?;
        }
        Ok(())
    }

    /// The run's own copy of its platform profile, taken when the run starts: every run of the
    /// tag is scored with it, whatever happens to the file it came from.
    pub fn profile_snapshot(&self) -> PathBuf {
        self.state_dir.join("profile.toml")
    }

    /// The run's signing key: the scorer signs every summary with it, so that a summary recorded
    /// by hand can be verified. Under `.autoresearch/`, out of the trainer's sandbox.
    pub fn sign_key(&self) -> PathBuf {
        self.state_dir.join("scorer.key")
    }

    /// The scorer the run builds once from its base commit, when the config names none.
    pub fn built_scorer(&self) -> PathBuf {
        self.state_dir.join("bin").join(format!("harness{}", std::env::consts::EXE_SUFFIX))
    }

    /// The runner binary Slurm jobs build their trainer with (`autoresearch sandbox-build`): a
    /// copy on the filesystem the nodes share.
    pub fn runner_copy(&self) -> PathBuf {
        self.state_dir.join("bin").join("autoresearch")
    }

    /// A person's job script for node `node` (`tree add`, `tree worktree` and the manual
    /// proposer with the slurm executor).
    pub fn job_script(&self, node: &str) -> PathBuf {
        self.state_dir.join("jobs").join(format!("{node}.sbatch"))
    }

    pub fn run_files(&self, node: &str, attempt: &str) -> RunFiles {
        run_files(&self.state_dir, node, attempt)
    }
}

/// The attempts of a node's runs, which name their files (`runs/n7-0.json`).
pub mod attempt {
    /// An experiment's first run. `tree exec` makes it with this name, so that a loop waiting
    /// for the node takes it as its own run and goes on from there.
    pub const FIRST: &str = "0";
    /// A kept node's extra run that scores the held-out split (never shown to a proposer).
    pub const HELD_OUT: &str = "heldout";
    /// A person's run of the node outside the loop, which `tree record` brings in.
    pub const BY_HAND: &str = "manual";
    /// A run of the best that a candidate's test asked for, recorded under the best:
    /// `again-<candidate>-<k>` (see [`again`]).
    pub const AGAIN: &str = "again-";

    /// The name of the `k`-th run of the best (from 1) that `candidate`'s test asked for.
    pub fn again(candidate: &str, k: usize) -> String {
        format!("{}{k}", asked_by(candidate))
    }

    /// What the names of the runs of the best that `candidate`'s test asked for start with.
    pub fn asked_by(candidate: &str) -> String {
        format!("{AGAIN}{candidate}-")
    }
}

/// Where run `attempt` of node `node` (`n7`) keeps its files.
pub struct RunFiles {
    pub summary_json: PathBuf,
    pub log: PathBuf,
    /// The private copy of the trainer binary the run starts: another slot's build overwrites
    /// the target directory's.
    pub trainer_copy: PathBuf,
}

pub fn run_files(state_dir: &Path, node: &str, attempt: &str) -> RunFiles {
    let name = format!("{node}-{attempt}");
    RunFiles {
        summary_json: state_dir.join("runs").join(format!("{name}.json")),
        log: state_dir.join("logs").join(format!("{name}.log")),
        trainer_copy: state_dir.join("bin").join(&name).join(format!("trainer{}", std::env::consts::EXE_SUFFIX)),
    }
}

/// Where a proposer's command writes the description (line 1) and hypothesis of its change
/// (`AUTORESEARCH_PROPOSAL_FILE`).
pub fn proposal_file(state_dir: &Path, node: &str) -> PathBuf {
    state_dir.join("runs").join(format!("{node}-proposal.txt"))
}

/// The run's scorer: the config's `harness`, else the one the run builds
/// ([`Paths::built_scorer`]).
pub fn scorer(cfg: &ResearchConfig, root: &Path) -> PathBuf {
    match cfg.harness.trim() {
        "" => Paths::new(root, cfg).built_scorer(),
        configured => resolve(root, Path::new(configured)),
    }
}

/// The cargo target directory every build shares (the build tree, the worktrees, the main
/// checkout): Burn compiles once.
pub fn target_dir(root: &Path) -> PathBuf {
    root.join("target")
}

/// Taken around "build, then copy the trainer out of the target directory": parallel runs of
/// different nodes share one target directory, and each build overwrites `release/trainer`.
pub fn build_lock(root: &Path) -> PathBuf {
    target_dir(root).join(".autoresearch-build.lock")
}

/// Where the local executor builds: one tree that each experiment's commit is synced into (see
/// `executor::build_tree`), in the state folder, which git ignores and which outlives every
/// worktree. A tag cannot start with a dot, so `.build` is no run's folder.
pub fn build_tree(root: &Path) -> PathBuf {
    root.join(".autoresearch").join(".build")
}
