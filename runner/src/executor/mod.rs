//! Executors: where one run of an experiment happens. `local` runs it as a process group on this
//! machine, building the trainer in one build tree that each experiment's commit is synced into
//! (`build_tree`); `slurm` submits it as an `sbatch` job that builds in the node's worktree.
//! Both build the trainer in a sandbox (`build_sandbox`), run the run's scorer (the harness,
//! built once per run) on it under the hard timeout, and classify what came back from its exit
//! code and JSON summary.

pub mod build_sandbox;
pub mod build_tree;
pub mod local;
pub mod slurm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use contract::summary::RunSummary;
use serde_json::Value;

use crate::config::{ExecutorKind, ResearchConfig};
use crate::layout::{Paths, target_dir};
use crate::process::shell_quote;

/// Harness exit codes (see `harness --help`).
pub mod harness_exit {
    pub const DIVERGED: i32 = 1;
    pub const OUT_OF_MEMORY: i32 = 3;
    pub const CAUSALITY: i32 = 4;
}

/// What one run of the experiment produced.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ok { metric: f64, memory_mb: Option<f64>, summary: Value },
    /// Out of memory (exit 3): the caller retries once with a halved device batch.
    OutOfMemory { tail: String },
    /// The harness refused the model (exit 4): a trainer that looks at future tokens.
    Causality { tail: String },
    Crash { reason: String, tail: String },
    Timeout { tail: String },
    Interrupted,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok { .. } => "ok",
            Outcome::OutOfMemory { .. } => "oom",
            Outcome::Causality { .. } => "causality",
            Outcome::Crash { .. } => "crash",
            Outcome::Timeout { .. } => "timeout",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// One run: everything an executor needs, owned, so that it can run on a worker thread.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub cfg: Arc<ResearchConfig>,
    pub repo_root: PathBuf,
    pub worktree: PathBuf,
    pub profile: PathBuf,
    /// The node's name (`n7`), for job names and the environment.
    pub label: String,
    /// The commit under test (the harness records it in its summary JSON); empty if unknown.
    pub commit: String,
    pub seed: u64,
    pub batch_scale: f64,
    pub summary_json: PathBuf,
    pub log: PathBuf,
    /// The run's scorer: the harness binary every run of the tag is scored by.
    pub scorer: PathBuf,
    /// Where this run's private copy of the trainer binary lives while it runs.
    pub trainer_copy: PathBuf,
    /// Ask the scorer for the held-out split too.
    pub held_out: bool,
    pub timeout: Duration,
}

impl RunSpec {
    /// Run `attempt` of node `node` in `worktree`, as the loop makes it: the run's scorer and
    /// file names (see `layout`), the config's seed, the starting device batch scale of
    /// `profile`, the hard timeout. A caller changes only what differs: a later run's seed and
    /// batch scale, the commit under test, the held-out split, `train`'s binaries built in place.
    pub fn for_run(cfg: Arc<ResearchConfig>, repo_root: &Path, worktree: &Path, profile: &Path, node: &str, attempt: &str) -> RunSpec {
        let files = Paths::new(repo_root, &cfg).run_files(node, attempt);
        RunSpec {
            repo_root: repo_root.to_path_buf(),
            worktree: worktree.to_path_buf(),
            profile: profile.to_path_buf(),
            label: node.to_string(),
            commit: String::new(),
            seed: cfg.seed,
            batch_scale: crate::platform::batch_scale(&cfg, profile),
            summary_json: files.summary_json,
            log: files.log,
            scorer: crate::layout::scorer(&cfg, repo_root),
            trainer_copy: files.trainer_copy,
            held_out: false,
            timeout: cfg.hard_timeout(),
            cfg,
        }
    }
}

/// What came back from a run.
#[derive(Debug, Clone)]
pub struct Finished {
    pub outcome: Outcome,
    pub seconds: f64,
    pub code: Option<i32>,
}

/// A job script a person submits by hand to run one node as the loop would (where runs are
/// jobs), and where its summary will be for `tree record`.
#[derive(Debug, Clone)]
pub struct JobScript {
    pub path: PathBuf,
    pub summary: PathBuf,
    /// The command that submits it.
    pub submit: String,
}

impl JobScript {
    /// How to submit the script of node `node` (run `tag`) and bring its result back.
    pub fn hint(&self, tag: &str, node: &str) -> String {
        format!(
            "  {submit}
then, when the job is done:
  autoresearch tree record --tag {tag} {node} --summary-json {summary}",
            submit = self.submit,
            summary = self.summary.display()
        )
    }
}

/// Where runs happen. `started` receives a handle (a process group, a job id) as soon as the run
/// exists, so that a runner restarted after a crash can find it again; `tick` the elapsed time.
///
/// Everything that differs between executors is asked of this trait (the run header, runs made
/// by hand), so that the loop, the commands and the proposers never test which one they have.
pub trait Executor: Send + Sync {
    /// Experiments in flight at once.
    fn slots(&self) -> usize;
    /// The run header's `executor:` line: which executor, how many runs at once, on what.
    fn describe(&self) -> String;
    /// What happens to an experiment's commit before its build, for the run header (empty where
    /// it builds in the node's own worktree).
    fn before_build(&self) -> &'static str {
        ""
    }
    /// Why `tree exec` (a person's run on this machine, made as the loop makes one) cannot run
    /// node `node` with this executor, and what to do instead; None where it can.
    fn tree_exec_refusal(&self, _node: &str) -> Option<String> {
        None
    }
    /// Where runs are jobs a person can submit: writes the job script that runs node `node` in
    /// `worktree` as the loop's jobs do. None where `tree exec` runs it here instead.
    fn job_script(&self, _repo_root: &Path, _cfg: &ResearchConfig, _node: &str, _worktree: &Path) -> Result<Option<JobScript>> {
        Ok(None)
    }
    fn run(&self, spec: &RunSpec, started: &mut dyn FnMut(&str) -> Result<()>, tick: &mut dyn FnMut(Duration)) -> Result<Finished>;
    /// Waits for a run that an earlier runner process started (`handle` as given to `started`).
    /// None: the run is gone and cannot be recovered (the caller records a crash).
    fn attach(&self, spec: &RunSpec, handle: &str, tick: &mut dyn FnMut(Duration)) -> Result<Option<Finished>>;
}

/// The one registry: the executor the config names. A new executor is a file in this folder
/// implementing [`Executor`], a variant of `config::ExecutorKind` and an arm here.
pub fn build(cfg: &ResearchConfig) -> Box<dyn Executor> {
    match cfg.executor {
        ExecutorKind::Local => Box::new(local::Local::new(cfg)),
        ExecutorKind::Slurm => Box::new(slurm::Slurm::new(cfg)),
    }
}

fn feature_flags(cfg: &ResearchConfig) -> String {
    if cfg.features.is_empty() {
        return String::new();
    }
    // The harness and the trainer have the same features: the harness's pick the devices it
    // can score on, the trainer's the kernels it trains with (e.g. PyTorch's attention, `tch`).
    let list: Vec<String> = cfg.features.split([',', ' ']).filter(|f| !f.is_empty()).flat_map(|f| [format!("harness/{f}"), format!("trainer/{f}")]).collect();
    format!(" --features {}", shell_quote(&list.join(",")))
}

/// A release build of the workspace with the config's features, of the binaries `bins` (all
/// when none). Always `--workspace`, like the README's build and test commands: building `-p
/// harness` alone resolves the features of shared crates differently and would compile Burn a
/// second time; `--bin` only picks targets, after that resolution. `lock` is `--locked`, or
/// `--frozen` where there is no network.
fn cargo_build(cfg: &ResearchConfig, lock: &str, bins: &[&str]) -> String {
    let bins: String = bins.iter().map(|b| format!(" --bin {b}")).collect();
    format!("cargo build --release {lock} --workspace{bins}{}", feature_flags(cfg))
}

/// Builds the whole workspace (every binary: `bench` needs `bench_step`).
pub fn workspace_build_command(cfg: &ResearchConfig) -> String {
    cargo_build(cfg, "--locked", &[])
}

/// Creates the run's signing key (`Paths::sign_key`) unless it exists (readable by its owner
/// only).
pub fn ensure_sign_key(path: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(|e| anyhow::anyhow!("creating {}: {e}", tmp.display()))?;
    f.write_all(contract::signature::new_key_hex().as_bytes())?;
    f.sync_all()?;
    // A concurrent creator may have won: keep the first key.
    if std::fs::hard_link(&tmp, path).is_err() && !path.exists() {
        anyhow::bail!("cannot create {}", path.display());
    }
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

/// Builds the run's scorer: the `harness` binary alone (it does not link the trainer).
pub fn scorer_build_command(cfg: &ResearchConfig) -> String {
    cargo_build(cfg, "--locked", &["harness"])
}

/// Builds an experiment's trainer, in the build sandbox: `--frozen`, as everything it needs
/// was fetched when the scorer was built, and the sandbox has no network.
pub fn build_command(cfg: &ResearchConfig) -> String {
    cargo_build(cfg, "--frozen", &["trainer"])
}

/// The scorer's command line for one run: the spec's scorer on the spec's trainer, with every
/// flag the run is measured by. The one place it is written: the loop's runs (local and
/// Slurm), `tree exec`, a person's job script, `train` and the description `run` prints all
/// take it from here, so that a run made by hand is measured as the loop measures.
pub fn harness_command(spec: &RunSpec) -> String {
    render(&harness_template(&spec.cfg), spec)
}

/// [`harness_command`] with its values as placeholders, which [`render`] fills.
fn harness_template(cfg: &ResearchConfig) -> String {
    let mut c = "{harness} --trainer {trainer} --profile {profile} --budget {budget} --seed {seed} --summary-json {summary_json} --steps-csv {steps_csv} --sign-key {sign_key} --device-batch-scale {device_batch_scale} --protect {repo}".to_string();
    if !cfg.device.is_empty() {
        c.push_str(" --device {device}");
    }
    if !cfg.cache_dir.is_empty() {
        c.push_str(" --cache-dir {cache_dir}");
    }
    if !cfg.require_sandbox {
        c.push_str(" --no-require-sandbox");
    }
    c.push_str("{held_out}");
    c
}

/// `train`'s experiment as one shell line in one checkout: both binaries built there (the spec's
/// scorer and trainer are the target directory's), then the scorer run on the trainer.
pub fn build_and_score_command(spec: &RunSpec) -> String {
    format!("{} && {}", cargo_build(&spec.cfg, "--locked", &["harness", "trainer"]), harness_command(spec))
}

/// True when the config runs its own `experiment_command` instead of building the harness.
pub fn custom_command(cfg: &ResearchConfig) -> Option<&str> {
    let c = cfg.experiment_command.trim();
    (!c.is_empty()).then_some(c)
}

/// Fills the placeholders of an experiment command (`experiment_command`, or the scorer's
/// command line), the values shell-quoted.
pub fn render(template: &str, spec: &RunSpec) -> String {
    let pairs = [
        ("{summary_json}", spec.summary_json.display().to_string()),
        ("{steps_csv}", crate::curve::path_for(&spec.summary_json).display().to_string()),
        ("{seed}", spec.seed.to_string()),
        ("{budget}", spec.cfg.budget.spec()),
        ("{profile}", spec.profile.display().to_string()),
        ("{device}", spec.cfg.device.clone()),
        ("{device_batch_scale}", format!("{}", spec.batch_scale)),
        ("{cache_dir}", spec.cfg.cache_dir.clone()),
        ("{target_dir}", target_dir(&spec.repo_root).display().to_string()),
        ("{worktree}", spec.worktree.display().to_string()),
        ("{harness}", spec.scorer.display().to_string()),
        ("{trainer}", spec.trainer_copy.display().to_string()),
        ("{repo}", spec.repo_root.display().to_string()),
        ("{sign_key}", Paths::new(&spec.repo_root, &spec.cfg).sign_key().display().to_string()),
    ];
    let mut out = template.replace("{held_out}", if spec.held_out { " --held-out" } else { "" });
    for (k, v) in pairs {
        // Given as it is: an experiment command writes it inside double quotes
        // ("{target_dir}/release/..."), where quoting would break it.
        let v = if k == "{target_dir}" { v } else { shell_quote(&v) };
        out = out.replace(k, &v);
    }
    out
}

pub fn env_for(spec: &RunSpec) -> Vec<(String, String)> {
    vec![
        ("CARGO_TARGET_DIR".into(), target_dir(&spec.repo_root).display().to_string()),
        ("AUTORESEARCH_SUMMARY_JSON".into(), spec.summary_json.display().to_string()),
        // Where a command may write the run's per-step CSV (the harness's --steps-csv).
        ("AUTORESEARCH_STEPS_CSV".into(), crate::curve::path_for(&spec.summary_json).display().to_string()),
        ("AUTORESEARCH_SEED".into(), spec.seed.to_string()),
        ("AUTORESEARCH_BUDGET".into(), spec.cfg.budget.spec()),
        ("AUTORESEARCH_DEVICE_BATCH_SCALE".into(), format!("{}", spec.batch_scale)),
        ("AUTORESEARCH_NODE".into(), spec.label.clone()),
        ("AUTORESEARCH_COMMIT".into(), spec.commit.clone()),
        // 1 when the runner asks this run for the held-out split (`{held_out}` in a command).
        ("AUTORESEARCH_HELD_OUT".into(), if spec.held_out { "1" } else { "0" }.into()),
    ]
}

/// Classifies a finished run from its exit code, its log and its summary JSON.
pub fn classify(spec: &RunSpec, code: Option<i32>, timed_out: bool, interrupted: bool) -> Outcome {
    let tail = || crate::process::tail(&spec.log, 40);
    if interrupted {
        return Outcome::Interrupted;
    }
    if timed_out {
        return Outcome::Timeout { tail: tail() };
    }
    match code {
        Some(0) => read_summary(&spec.summary_json, &spec.cfg.metric, tail),
        Some(harness_exit::OUT_OF_MEMORY) => Outcome::OutOfMemory { tail: tail() },
        Some(harness_exit::CAUSALITY) => Outcome::Causality { tail: tail() },
        Some(harness_exit::DIVERGED) => Outcome::Crash { reason: harness_error(spec).unwrap_or_else(|| "exit 1 (FAIL: diverged, or the build failed)".into()), tail: tail() },
        Some(c) => {
            let reason = harness_error(spec).map(|e| format!("exit {c}: {e}")).or_else(|| libtorch_hint(&tail())).unwrap_or_else(|| format!("exit {c}"));
            Outcome::Crash { reason, tail: tail() }
        }
        None => Outcome::Crash { reason: "killed by a signal".into(), tail: tail() },
    }
}

/// What to do when the dynamic loader refused a `tch` build's LibTorch (the harness then never
/// ran, so it wrote no summary): the message names the library, or an undefined C++ symbol.
pub fn libtorch_hint(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("error while loading shared libraries") || (l.contains("symbol lookup error") && l.contains("undefined symbol")))?;
    let libtorch = ["libtorch", "libc10", "libcuda", "libcudart", "libnv", "libcudnn", "libcublas"].iter().any(|n| line.contains(n));
    if !libtorch {
        return Some(format!("the program could not start: {}", line.trim()));
    }
    Some(if line.contains("undefined symbol") {
        format!(
            "the LibTorch found at run time is not the one this build was linked against ({}): rebuild with LIBTORCH_USE_PYTORCH=1 against the PyTorch installed now, or point LD_LIBRARY_PATH at the torch/lib it was built with",
            line.trim()
        )
    } else {
        format!(
            "LibTorch did not load ({}): this is a `tch` build; set LD_LIBRARY_PATH to the torch/lib of the PyTorch it was built against (`python3 -c 'import os, torch; print(os.path.dirname(torch.__file__) + \"/lib\")'`)",
            line.trim()
        )
    })
}

/// The `error` of a failed run's summary JSON (the harness says why it stopped: over budget,
/// the trainer died, broke the protocol...).
fn harness_error(spec: &RunSpec) -> Option<String> {
    let text = std::fs::read_to_string(&spec.summary_json).ok()?;
    let summary = RunSummary::from_json(&text).ok()?;
    summary.error.map(|e| e.chars().take(300).collect())
}

fn read_summary(path: &Path, metric: &str, tail: impl Fn() -> String) -> Outcome {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(_) => return Outcome::Crash { reason: format!("exit 0 but no summary JSON at {}", path.display()), tail: tail() },
    };
    // The record as written (kept, and what the signature covers), and its fields by type. The
    // metric is read from the record: it is a key the user configures, which an experiment
    // command of theirs may write and the harness's summary type does not know.
    let record = match serde_json::from_str::<Value>(&text) {
        Ok(v) => v,
        Err(e) => return Outcome::Crash { reason: format!("unreadable summary JSON: {e}"), tail: tail() },
    };
    let Some(typed) = RunSummary::from_value(&record) else {
        return Outcome::Crash { reason: "unreadable summary JSON: not an object".into(), tail: tail() };
    };
    match record.get(metric).and_then(Value::as_f64) {
        Some(m) if m.is_finite() => Outcome::Ok { metric: m, memory_mb: typed.peak_vram_mb, summary: record },
        _ => Outcome::Crash { reason: format!("the summary JSON has no finite `{metric}`"), tail: tail() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[features]` names of a Cargo.toml.
    fn features(manifest: &str) -> Vec<String> {
        let t: toml::Table = manifest.parse().unwrap();
        let mut names: Vec<String> = t["features"].as_table().unwrap().keys().cloned().collect();
        names.sort();
        names
    }

    /// A metric the harness's summary does not know (a user's experiment command and its
    /// configured `metric`) is read from the record as written.
    #[test]
    fn a_configured_metric_is_read_from_the_record_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        std::fs::write(&path, r#"{"accuracy": 0.75, "peak_vram_mb": 12.0}"#).unwrap();
        match read_summary(&path, "accuracy", String::new) {
            Outcome::Ok { metric, memory_mb, .. } => assert_eq!((metric, memory_mb), (0.75, Some(12.0))),
            _ => panic!("the configured metric was not read"),
        }
        assert!(matches!(read_summary(&path, "val_bpb", String::new), Outcome::Crash { .. }));
    }

    #[test]
    fn a_libtorch_that_does_not_load_says_what_to_do() {
        let missing = "target/release/harness: error while loading shared libraries: libtorch_cuda.so: cannot open shared object file: No such file or directory";
        let hint = libtorch_hint(&format!("building...\n{missing}\n")).unwrap();
        assert!(hint.contains("LD_LIBRARY_PATH") && hint.contains("libtorch_cuda.so"), "{hint}");
        let mismatch = "harness: symbol lookup error: /opt/torch/lib/libtorch_cpu.so: undefined symbol: _ZN3c104impl3cow11cow_deleterEPv";
        let hint = libtorch_hint(mismatch).unwrap();
        assert!(hint.contains("not the one this build was linked against") && hint.contains("LIBTORCH_USE_PYTORCH=1"), "{hint}");
        assert!(libtorch_hint("harness: error while loading shared libraries: libfoo.so.1").unwrap().starts_with("the program could not start"));
        assert_eq!(libtorch_hint("exit 6: over budget"), None);
    }

    /// The loop's runs, `tree exec`, a person's job script and `train` take the scorer's command
    /// line from `harness_command`: every flag the run is measured by, its values quoted.
    #[test]
    fn one_command_line_carries_every_flag_the_run_is_measured_by() {
        let cfg = ResearchConfig { tag: "t".into(), seed: 7, device: "cuda:1".into(), cache_dir: "/data/my cache".into(), require_sandbox: false, ..Default::default() };
        let root = Path::new("/repo");
        let mut spec = RunSpec::for_run(Arc::new(cfg), root, Path::new("/repo/.worktrees/t-n3"), Path::new("/repo/.autoresearch/t/profile.toml"), "n3", "0");
        assert_eq!((spec.summary_json.as_path(), spec.log.as_path()), (Path::new("/repo/.autoresearch/t/runs/n3-0.json"), Path::new("/repo/.autoresearch/t/logs/n3-0.log")));
        assert_eq!((spec.seed, spec.batch_scale, spec.held_out), (7, 1.0, false), "the config's seed, the profile's scale (none here: 1)");
        let line = harness_command(&spec);
        assert_eq!(
            line,
            "/repo/.autoresearch/t/bin/harness --trainer /repo/.autoresearch/t/bin/n3-0/trainer --profile /repo/.autoresearch/t/profile.toml \
             --budget time:300 --seed 7 --summary-json /repo/.autoresearch/t/runs/n3-0.json --steps-csv /repo/.autoresearch/t/runs/n3-0.steps.csv \
             --sign-key /repo/.autoresearch/t/scorer.key --device-batch-scale 1 --protect /repo --device cuda:1 --cache-dir '/data/my cache' --no-require-sandbox"
        );
        assert_eq!(build_and_score_command(&spec), format!("cargo build --release --locked --workspace --bin harness --bin trainer && {line}"));
        spec.held_out = true;
        assert_eq!(harness_command(&spec), format!("{line} --held-out"));
    }

    #[test]
    fn each_feature_goes_to_the_harness_and_the_trainer_which_both_have_it() {
        let harness = features(include_str!("../../../harness/Cargo.toml"));
        assert_eq!(harness, features(include_str!("../../../trainer/Cargo.toml")), "a feature the runner passes must exist in both crates");
        assert!(harness.iter().any(|f| f == "gpu"), "{harness:?}");
        let cfg = ResearchConfig { features: "tch, fusion".into(), ..Default::default() };
        assert_eq!(feature_flags(&cfg), format!(" --features {}", shell_quote("harness/tch,trainer/tch,harness/fusion,trainer/fusion")));
        assert_eq!(feature_flags(&ResearchConfig::default()), "");
    }
}
