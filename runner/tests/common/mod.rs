//! A tiny research repository: a "trainer" that is just hparams.toml, an experiment script whose
//! val_bpb is a deterministic function of it, and scripted proposers.
#![allow(dead_code)]

pub mod slurm;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const TAG: &str = "t1";

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub repo: PathBuf,
    /// Outside the repository: scripts and proposer state.
    pub tools: PathBuf,
}

/// val_bpb = 1 + |matrix_lr - 0.04|; mode = crash | hang | slow changes the behaviour.
/// `slow` touches $TOOLS/started and $TOOLS/started<N> at its Nth start.
pub const EXPERIMENT: &str = r#"#!/bin/sh
f=trainer/hparams.toml
get() { grep "^$1 *=" "$f" | head -1 | sed 's/^[^=]*= *//; s/ *#.*//; s/"//g'; }
mode=$(get mode)
echo "experiment in $(pwd), seed $AUTORESEARCH_SEED, mode $mode"
case "$mode" in
  crash*) echo "boom: simulated crash" >&2; exit 1 ;;
  oom) if [ "$AUTORESEARCH_DEVICE_BATCH_SCALE" = "1" ]; then echo "out of memory" >&2; exit 3; fi ;;
  hang) sleep 60 ;;
  slow)
    # The first $TOOLS/slow_sleeps starts (default 1) sleep; a later one (a re-run) does not.
    n=$(cat "$TOOLS/slow_starts" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$TOOLS/slow_starts"
    touch "$TOOLS/started" "$TOOLS/started$n"
    if [ "$n" -le "$(cat "$TOOLS/slow_sleeps" 2>/dev/null || echo 1)" ]; then sleep 30; touch "$TOOLS/orphan_finished"; fi ;;
esac
lr=$(get matrix_lr)
val=$(awk -v lr="$lr" 'BEGIN { d = lr - 0.04; if (d < 0) d = -d; printf "%.6f", 1 + d }')
printf '{"val_bpb": %s, "peak_vram_mb": 2048.0, "training_seconds": 1.0, "num_steps": 3}\n' "$val" > "$1"
echo "val_bpb: $val"
"#;

/// For tests of runs in flight at once: val_bpb = 1 + |matrix_lr - 0.04| after `delay` seconds.
/// Appends `start|end NODE TIME SLURM_JOB_ID` to $TOOLS/timeline and `NODE COMMIT` to
/// $TOOLS/commits.
pub const TIMED_EXPERIMENT: &str = r#"#!/bin/sh
f=trainer/hparams.toml
get() { grep "^$1 *=" "$f" | head -1 | sed 's/^[^=]*= *//; s/ *#.*//'; }
echo "start $AUTORESEARCH_NODE $(date +%s.%N) $SLURM_JOB_ID" >> "$TOOLS/timeline"
echo "$AUTORESEARCH_NODE $AUTORESEARCH_COMMIT" >> "$TOOLS/commits"
# With $TOOLS/quick_reruns, a node's second start (a re-run after an interruption) skips the delay.
if [ -e "$TOOLS/quick_reruns" ] && [ "$(grep -c "^start $AUTORESEARCH_NODE " "$TOOLS/timeline")" -gt 1 ]; then :; else sleep "$(get delay)"; fi
lr=$(get matrix_lr)
val=$(awk -v lr="$lr" 'BEGIN { d = lr - 0.04; if (d < 0) d = -d; printf "%.6f", 1 + d }')
printf '{"val_bpb": %s, "peak_vram_mb": 1024.0}\n' "$val" > "$1"
echo "end $AUTORESEARCH_NODE $(date +%s.%N) $SLURM_JOB_ID" >> "$TOOLS/timeline"
"#;

/// A proposer that makes the change of its Nth call: `cases` are the arms of a `case $n in`
/// (`1) ...; say "description" "hypothesis" ;;`), with `$f` the hparams file and `say` writing
/// the proposal file.
pub fn scripted_proposer(cases: &str) -> String {
    format!(
        r#"#!/bin/sh
n=$(cat "$TOOLS/count" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$TOOLS/count"
f=trainer/hparams.toml
say() {{ printf '%s\n%s\n' "$1" "$2" > "$AUTORESEARCH_PROPOSAL_FILE"; }}
case $n in
{cases}esac
"#
    )
}

pub fn git(repo: &Path, args: &[&str]) -> String {
    let out = Command::new("git").args(args).current_dir(repo).output().expect("git runs");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Fixture {
    pub fn new(hparams: &str, research_extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let tools = dir.path().join("tools");
        for d in ["trainer", "prepare", "harness", "configs/platforms"] {
            std::fs::create_dir_all(repo.join(d)).unwrap();
        }
        std::fs::create_dir_all(&tools).unwrap();
        std::fs::write(repo.join("trainer/hparams.toml"), hparams).unwrap();
        std::fs::write(repo.join("prepare/data.txt"), "pinned validation data\n").unwrap();
        std::fs::write(repo.join("harness/main.rs"), "fn main() {}\n").unwrap();
        std::fs::write(repo.join("Cargo.toml"), "[workspace]\n").unwrap();
        std::fs::write(repo.join(".gitignore"), "/target\n/.worktrees\n/.autoresearch\nresults.tsv\n*.bin\n").unwrap();
        std::fs::write(repo.join("configs/platforms/cpu.toml"), "name = \"cpu\"\nclass = \"cpu\"\ndevice_batch_scale = 1.0\n").unwrap();
        std::fs::write(tools.join("experiment.sh"), EXPERIMENT).unwrap();
        // A test may bring its own experiment command.
        let experiment = if research_extra.contains("experiment_command") {
            String::new()
        } else {
            format!("experiment_command = \"TOOLS={tools} sh {tools}/experiment.sh {{summary_json}}\"\n", tools = tools.display())
        };
        let research = format!(
            "tag = \"{TAG}\"\nprofile = \"configs/platforms/cpu.toml\"\nbudget = \"time:1\"\n{experiment}{research_extra}\n"
        );
        std::fs::write(repo.join("configs/research.toml"), research).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        git(&repo, &["-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"]);
        git(&repo, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "initial"]);
        Fixture { _dir: dir, repo, tools }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_autoresearch"));
        c.args(args).current_dir(&self.repo).env("TOOLS", &self.tools);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("autoresearch runs")
    }

    /// The run's results.tsv (the default `results_file`: one per tag).
    pub fn results_path(&self) -> PathBuf {
        self.repo.join(".autoresearch").join(TAG).join("results.tsv")
    }

    /// The data rows of results.tsv.
    pub fn rows(&self) -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(self.results_path()).unwrap_or_default();
        let mut lines = text.lines();
        if let Some(h) = lines.next() {
            assert_eq!(h, "commit\tval_bpb\tmemory_gb\tstatus\tdescription");
        }
        lines.map(|l| l.split('\t').map(str::to_string).collect()).collect()
    }

    pub fn nodes(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["tree", "list", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    }

    pub fn node_refs(&self) -> Vec<String> {
        let out = git(&self.repo, &["for-each-ref", "--format=%(refname)", &format!("refs/autoresearch/{TAG}/")]);
        out.lines().map(str::to_string).collect()
    }

    pub fn branch_tip(&self) -> String {
        git(&self.repo, &["rev-parse", &format!("refs/heads/autoresearch/{TAG}")])
    }

    pub fn assert_worktrees_clean(&self) {
        let wt = self.repo.join(".worktrees");
        assert!(!wt.exists() || std::fs::read_dir(&wt).unwrap().next().is_none(), ".worktrees not cleaned");
        let list = git(&self.repo, &["worktree", "list", "--porcelain"]);
        assert_eq!(list.lines().filter(|l| l.starts_with("worktree ")).count(), 1, "{list}");
    }
}

/// A runner a test started in the background, killed when the test ends, passed or failed, so
/// that a failed assertion leaves no runner waiting for a `tree exec` that never comes.
pub struct Background(pub std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until a runner of the manual proposer (`runner`, its output going to `log`) opens
/// `node`'s worktree in `repo` and says so in its log, as an agent reading run.log would; fails
/// with the log when the runner exits first or takes more than 15 minutes.
pub fn wait_for_worktree(repo: &Path, runner: &mut std::process::Child, log: &Path, node: &str) -> PathBuf {
    let t0 = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(&format!("\nexperiment {node}")) {
            return repo.join(format!(".worktrees/{TAG}-{node}"));
        }
        assert!(runner.try_wait().unwrap().is_none(), "the runner exited before opening {node}:\n{text}");
        assert!(t0.elapsed().as_secs() < 900, "the runner never opened {node}:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn stdout(o: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
