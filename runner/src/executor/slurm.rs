//! `slurm`: one `sbatch` job per run, on a cluster that shares this filesystem (the worktrees,
//! the cargo target directory and `.autoresearch/` must be visible from the compute nodes).
//!
//! The job script is generated from the `[slurm]` table of the research config. It builds the
//! harness in the node's worktree (under `flock`, like the local executor; its sources touched
//! first, see `TOUCH_SOURCES`), runs it, and writes
//! its exit code next to the summary JSON: Slurm forgets finished jobs (`MinJobAge`), and
//! `sacct` needs an accounting database that many clusters don't expose. Jobs are submitted with
//! `--parsable`, followed with `squeue` and `scontrol show job`, and cancelled with `scancel` at
//! the hard timeout (counted from when the job starts running, not while it queues), on Ctrl-C,
//! or when the runner stops. The job id is stored at submission, so `run --resume` follows jobs
//! that are still running instead of submitting them again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Executor, Finished, JobScript, Outcome, RunSpec, build_command, classify, custom_command, env_for, harness_command, render, scorer_build_command};
use crate::config::{ResearchConfig, SlurmConfig};
use crate::layout::{Paths, attempt};
use crate::process::shell_quote;

pub struct Slurm {
    slots: usize,
    slurm: SlurmConfig,
}

impl Slurm {
    pub fn new(cfg: &ResearchConfig) -> Slurm {
        Slurm { slots: if cfg.slots > 0 { cfg.slots } else { 4 }, slurm: cfg.slurm.clone() }
    }
}

/// Writes node `node`'s job script (`Paths::job_script`), which builds and runs the experiment
/// in `worktree` as the loop's Slurm jobs do (the same script, the run's profile, seed, budget,
/// cache, device batch scale and signing key) and writes its summary where `tree record`
/// expects it.
fn write_job_script(repo_root: &Path, cfg: &ResearchConfig, node: &str, worktree: &Path) -> Result<JobScript> {
    let profile = crate::platform::run_profile(repo_root, cfg)?;
    let spec = RunSpec::for_run(Arc::new(cfg.clone()), repo_root, worktree, &profile, node, attempt::BY_HAND);
    let paths = Paths::new(repo_root, cfg);
    let script = paths.job_script(node);
    for dir in [paths.state_dir.join("jobs"), paths.state_dir.join("logs"), paths.state_dir.join("runs")] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    ensure_runner_copy(&spec)?;
    super::ensure_sign_key(&paths.sign_key())?;
    crate::results::write_atomic(&script, &self::script(&spec))?;
    Ok(JobScript { submit: format!("sbatch {}", script.display()), path: script, summary: spec.summary_json })
}

/// Copies this runner binary to `Paths::runner_copy` (the jobs build their trainer with it)
/// unless it is there; made when a job is submitted.
pub fn ensure_runner_copy(spec: &RunSpec) -> Result<()> {
    let to = Paths::new(&spec.repo_root, &spec.cfg).runner_copy();
    if to.exists() {
        return Ok(());
    }
    let me = std::env::current_exe().context("locating the runner binary")?;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = to.with_extension("tmp");
    std::fs::copy(&me, &tmp).with_context(|| format!("copying {} to {}", me.display(), tmp.display()))?;
    std::fs::rename(&tmp, &to).with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))
}

/// `<log>.sbatch`: the job script of a run.
pub fn script_path(spec: &RunSpec) -> PathBuf {
    spec.log.with_extension("sbatch")
}

/// `<summary>.exit`: the exit code the job script writes last.
pub fn exit_path(spec: &RunSpec) -> PathBuf {
    spec.summary_json.with_extension("exit")
}

/// The job script of one run.
pub fn script(spec: &RunSpec) -> String {
    let cfg = &spec.cfg;
    let s = &cfg.slurm;
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let minutes = spec.timeout.as_secs().div_ceil(60) + s.time_margin_minutes;
    let mut out = String::from("#!/bin/bash\n");
    let mut directive = |d: String| out.push_str(&format!("#SBATCH {d}\n"));
    directive(format!("--job-name=autoresearch-{}-{}", cfg.tag, spec.label));
    directive(format!("--output={}", spec.log.display()));
    directive(format!("--chdir={}", spec.worktree.display()));
    directive(format!("--time={minutes}"));
    directive("--nodes=1".into());
    directive("--ntasks=1".into());
    directive(format!("--cpus-per-task={}", s.cpus_per_task.max(1)));
    if !s.partition.is_empty() {
        directive(format!("--partition={}", s.partition));
    }
    if !s.account.is_empty() {
        directive(format!("--account={}", s.account));
    }
    if s.gpus > 0 {
        directive(format!("--gres=gpu:{}", s.gpus));
    }
    if !s.mem.is_empty() {
        directive(format!("--mem={}", s.mem));
    }
    for extra in &s.extra_directives {
        directive(extra.trim().to_string());
    }
    out.push_str(&format!(
        "# Generated by autoresearch: run `{}`, experiment {}, seed {}. Resubmitting it runs the experiment again.\n",
        cfg.tag, spec.label, spec.seed
    ));
    for (k, v) in env_for(spec) {
        out.push_str(&format!("export {k}={}\n", shell_quote(&v)));
    }
    out.push_str(&format!("cd {} || exit 1\n", q(&spec.worktree)));
    for line in &s.setup {
        out.push_str(line);
        out.push('\n');
    }
    match custom_command(cfg) {
        Some(custom) => out.push_str(&format!("sh -c {}\ncode=$?\n", shell_quote(&render(custom, spec)))),
        None => {
            let target = crate::layout::target_dir(&spec.repo_root);
            let built = target.join("release");
            let sandbox_flag = if cfg.require_sandbox { "" } else { " --no-require-sandbox" };
            // The scorer is built once for the run (by the first job); every job builds its
            // trainer in the build sandbox, through the runner's own binary.
            out.push_str(&format!(
                "mkdir -p {dir}\n( flock 9 && {touch} && {{ [ -x {scorer} ] || {{ {scorer_build} && cp {built_harness} {scorer}.tmp && mv {scorer}.tmp {scorer}; }}; }} && {runner} sandbox-build --tree {tree} --target {target}{sandbox_flag} -- {build} && cp {built_trainer} {copy} ) 9>{lock}\ncode=$?\nif [ $code -eq 0 ]; then\n  {run}\n  code=$?\nfi\nrm -f {copy}\n",
                dir = q(spec.trainer_copy.parent().unwrap_or(Path::new("."))),
                touch = TOUCH_SOURCES,
                scorer = q(&spec.scorer),
                scorer_build = scorer_build_command(cfg),
                built_harness = q(&built.join("harness")),
                runner = q(&Paths::new(&spec.repo_root, &spec.cfg).runner_copy()),
                tree = q(&spec.worktree),
                target = q(&target),
                build = build_command(cfg),
                built_trainer = q(&built.join("trainer")),
                copy = q(&spec.trainer_copy),
                lock = q(&crate::layout::build_lock(&spec.repo_root)),
                run = harness_command(spec),
            ));
        }
    }
    let exit = exit_path(spec);
    out.push_str(&format!("echo $code > {tmp} && mv {tmp} {exit}\nexit $code\n", tmp = q(&exit.with_extension("exit.tmp")), exit = q(&exit)));
    out
}

/// Run in the worktree before its build, under the build lock. Cargo names a workspace's crates
/// by their path relative to the workspace root, so every worktree shares the same units in the
/// shared target directory and cargo only compares mtimes: a worktree checked out before another
/// job's build would pass as fresh and run that job's trainer. Touching the sources makes this
/// build compile the worktree's own code (the crates the trainer and the scorer need).
const TOUCH_SOURCES: &str = "find prepare trainer harness -type f -exec touch {} +";

/// Runs a Slurm client command; its stdout, or an error with its stderr.
fn client(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run `{program}`: is this a Slurm login node (slurm-client installed, SLURM_CONF set)?"))?;
    if !out.status.success() {
        bail!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Submits a script; returns the job id.
pub fn submit(script: &Path) -> Result<String> {
    let out = client("sbatch", &["--parsable", &script.display().to_string()])?;
    // `--parsable` prints `id` or `id;cluster`.
    let id = out.lines().last().unwrap_or("").split(';').next().unwrap_or("").trim().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch printed no job id: {out:?}");
    }
    Ok(id)
}

pub fn cancel(job: &str) {
    let _ = client("scancel", &[job]);
}

/// What `squeue` says of a job.
enum Queue {
    /// PENDING, RUNNING, COMPLETING, ...
    Listed(String),
    /// It has left the queue (finished, or purged).
    Gone,
    /// squeue itself failed (controller unreachable, ...): ask again later.
    Unknown(String),
}

fn queue_state(job: &str) -> Queue {
    match client("squeue", &["--noheader", "--jobs", job, "--format=%T"]) {
        Ok(out) => match out.lines().next().map(str::trim) {
            Some(state) if !state.is_empty() => Queue::Listed(state.to_string()),
            _ => Queue::Gone,
        },
        // squeue refuses a job id the controller no longer knows.
        Err(e) if e.to_string().contains("Invalid job id") => Queue::Gone,
        Err(e) => Queue::Unknown(format!("{e:#}")),
    }
}

/// `JobState` and `ExitCode` (its first number) from `scontrol show job`, while Slurm remembers it.
fn final_state(job: &str) -> Option<(String, Option<i32>)> {
    let text = client("scontrol", &["show", "job", job, "--oneliner"]).ok()?;
    let field = |name: &str| text.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_string));
    let state = field("JobState")?;
    let code = field("ExitCode").and_then(|c| c.split(':').next().and_then(|n| n.parse().ok()));
    Some((state, code))
}

/// Waits for job `job` to finish; cancels it at the hard timeout or on Ctrl-C.
fn wait(spec: &RunSpec, job: &str, tick: &mut dyn FnMut(Duration)) -> Result<Option<Finished>> {
    let poll = Duration::from_secs_f64(spec.cfg.slurm.poll_seconds);
    let t0 = Instant::now();
    let mut running_since: Option<Instant> = None;
    let mut last_poll: Option<Instant> = None;
    let mut seen = false;
    // Since when squeue has been failing.
    let mut unreachable: Option<Instant> = None;
    loop {
        let interrupted = crate::process::interrupted();
        let timed_out = running_since.is_some_and(|t| t.elapsed() >= spec.timeout);
        if interrupted || timed_out {
            cancel(job);
            wait_gone(job);
            return Ok(Some(Finished { outcome: classify(spec, None, timed_out, interrupted), seconds: t0.elapsed().as_secs_f64(), code: None }));
        }
        if last_poll.is_none_or(|t| t.elapsed() >= poll) {
            last_poll = Some(Instant::now());
            match queue_state(job) {
                Queue::Listed(state) => {
                    seen = true;
                    unreachable = None;
                    if running_since.is_none() && matches!(state.as_str(), "RUNNING" | "COMPLETING") {
                        running_since = Some(Instant::now());
                    }
                }
                Queue::Gone => return Ok(finished(spec, job, seen, t0)),
                Queue::Unknown(why) => {
                    let since = *unreachable.get_or_insert_with(Instant::now);
                    // A controller restart takes seconds; minutes without an answer is an outage.
                    if since.elapsed() >= (poll * 20).max(Duration::from_secs(120)) {
                        return Ok(Some(Finished {
                            outcome: Outcome::Crash {
                                reason: format!("lost track of Slurm job {job} (not cancelled; check `squeue`): {why}"),
                                tail: crate::process::tail(&spec.log, 40),
                            },
                            seconds: t0.elapsed().as_secs_f64(),
                            code: None,
                        }));
                    }
                }
            }
        }
        if let Some(t) = running_since {
            tick(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_gone(job: &str) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) && !matches!(queue_state(job), Queue::Gone) {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The outcome of a job that has left the queue.
fn finished(spec: &RunSpec, job: &str, seen: bool, t0: Instant) -> Option<Finished> {
    let seconds = t0.elapsed().as_secs_f64();
    let written: Option<i32> = std::fs::read_to_string(exit_path(spec)).ok().and_then(|s| s.trim().parse().ok());
    let state = final_state(job);
    let done = |outcome: Outcome, code: Option<i32>| Some(Finished { outcome, seconds, code });
    let tail = || crate::process::tail(&spec.log, 40);
    match (state.as_ref().map(|(s, c)| (s.as_str(), *c)), written) {
        (Some(("CANCELLED", _)), _) => done(Outcome::Crash { reason: format!("Slurm job {job} was cancelled (scancel)"), tail: tail() }, None),
        (Some(("TIMEOUT", _)), _) => done(Outcome::Timeout { tail: tail() }, None),
        (Some(("OUT_OF_MEMORY", _)), _) => done(Outcome::OutOfMemory { tail: tail() }, None),
        (Some(("NODE_FAIL" | "BOOT_FAIL" | "PREEMPTED" | "DEADLINE", _)), _) => {
            let s = state.as_ref().map(|s| s.0.clone()).unwrap_or_default();
            done(Outcome::Crash { reason: format!("Slurm job {job} ended {s}"), tail: tail() }, None)
        }
        (_, Some(code)) => done(classify(spec, Some(code), false, false), Some(code)),
        (Some((_, code)), None) => done(classify(spec, code, false, false), code),
        // Forgotten by Slurm and no exit file: known only if we saw it, else it's gone.
        (None, None) if seen => done(Outcome::Crash { reason: format!("Slurm job {job} vanished without an exit code"), tail: tail() }, None),
        (None, None) => None,
    }
}

impl Executor for Slurm {
    fn slots(&self) -> usize {
        self.slots
    }

    fn describe(&self) -> String {
        let s = &self.slurm;
        let part = if s.partition.is_empty() { "default partition".to_string() } else { format!("partition {}", s.partition) };
        format!("slurm, {} jobs at a time ({part}, {} GPU, {} CPUs per job)", self.slots, s.gpus, s.cpus_per_task)
    }

    fn tree_exec_refusal(&self, node: &str) -> Option<String> {
        Some(format!("`tree exec` runs on this machine; with the slurm executor submit the node's job script (`autoresearch tree worktree {node}` prints it)"))
    }

    fn job_script(&self, repo_root: &Path, cfg: &ResearchConfig, node: &str, worktree: &Path) -> Result<Option<JobScript>> {
        write_job_script(repo_root, cfg, node, worktree).map(Some)
    }

    fn run(&self, spec: &RunSpec, started: &mut dyn FnMut(&str) -> Result<()>, tick: &mut dyn FnMut(Duration)) -> Result<Finished> {
        let _ = std::fs::remove_file(&spec.summary_json);
        let _ = std::fs::remove_file(exit_path(spec));
        let path = script_path(spec);
        if custom_command(&spec.cfg).is_none() {
            ensure_runner_copy(spec)?;
            super::ensure_sign_key(&Paths::new(&spec.repo_root, &spec.cfg).sign_key())?;
        }
        crate::results::write_atomic(&path, &script(spec))?;
        let job = submit(&path)?;
        started(&format!("slurm:{job}"))?;
        match wait(spec, &job, tick)? {
            Some(f) => Ok(f),
            None => Ok(Finished {
                outcome: Outcome::Crash { reason: format!("Slurm job {job} disappeared right after submission"), tail: String::new() },
                seconds: 0.0,
                code: None,
            }),
        }
    }

    fn attach(&self, spec: &RunSpec, handle: &str, tick: &mut dyn FnMut(Duration)) -> Result<Option<Finished>> {
        match handle.strip_prefix("slurm:") {
            Some(job) => wait(spec, job, tick),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn spec(cfg: ResearchConfig) -> RunSpec {
        RunSpec {
            cfg: Arc::new(cfg),
            repo_root: "/repo".into(),
            worktree: "/repo/.worktrees/t-n3".into(),
            profile: "/repo/configs/platforms/cuda.toml".into(),
            label: "n3".into(),
            commit: "abc123".into(),
            seed: 43,
            batch_scale: 0.5,
            summary_json: "/repo/.autoresearch/t/runs/n3-1.json".into(),
            log: "/repo/.autoresearch/t/logs/n3-1.log".into(),
            scorer: "/repo/.autoresearch/t/bin/harness".into(),
            trainer_copy: "/repo/.autoresearch/t/bin/n3-1/trainer".into(),
            held_out: false,
            timeout: Duration::from_secs(900),
        }
    }

    #[test]
    fn script_has_the_configured_directives_and_builds_under_a_lock() {
        let mut cfg = ResearchConfig { tag: "t".into(), ..Default::default() };
        cfg.slurm.partition = "gpu".into();
        cfg.slurm.account = "lab".into();
        cfg.slurm.gpus = 2;
        cfg.slurm.mem = "64G".into();
        cfg.slurm.extra_directives = vec!["--qos=high".into()];
        cfg.slurm.setup = vec!["module load cuda".into()];
        let s = script(&spec(cfg));
        for line in [
            "#SBATCH --partition=gpu",
            "#SBATCH --account=lab",
            "#SBATCH --gres=gpu:2",
            "#SBATCH --mem=64G",
            "#SBATCH --qos=high",
            "#SBATCH --time=25", // 900 s + 10 min margin
            "#SBATCH --output=/repo/.autoresearch/t/logs/n3-1.log",
            "module load cuda",
            "( flock 9 && find prepare trainer harness -type f -exec touch {} + && { [ -x /repo/.autoresearch/t/bin/harness ] || { cargo build --release --locked --workspace --bin harness && cp /repo/target/release/harness /repo/.autoresearch/t/bin/harness.tmp && mv /repo/.autoresearch/t/bin/harness.tmp /repo/.autoresearch/t/bin/harness; }; } && /repo/.autoresearch/t/bin/autoresearch sandbox-build --tree /repo/.worktrees/t-n3 --target /repo/target -- cargo build --release --frozen --workspace --bin trainer && cp /repo/target/release/trainer /repo/.autoresearch/t/bin/n3-1/trainer ) 9>/repo/target/.autoresearch-build.lock",
            "/repo/.autoresearch/t/bin/harness --trainer /repo/.autoresearch/t/bin/n3-1/trainer --profile /repo/configs/platforms/cuda.toml --budget time:300 --seed 43",
            "echo $code > /repo/.autoresearch/t/runs/n3-1.exit.tmp && mv /repo/.autoresearch/t/runs/n3-1.exit.tmp /repo/.autoresearch/t/runs/n3-1.exit",
        ] {
            assert!(s.contains(line), "missing {line:?} in\n{s}");
        }
        assert!(!s.contains("--gres=gpu:0"));
    }

    #[test]
    fn custom_command_is_quoted_into_the_script() {
        let mut cfg = ResearchConfig { tag: "t".into(), experiment_command: "echo 'a b' > {summary_json}".into(), ..Default::default() };
        cfg.slurm.gpus = 0;
        let s = script(&spec(cfg));
        assert!(s.contains("sh -c 'echo '\\''a b'\\'' > /repo/.autoresearch/t/runs/n3-1.json'"), "{s}");
        assert!(!s.contains("--gres"), "{s}");
        assert!(!s.contains("cargo build"), "{s}");
    }

    #[test]
    fn the_scorer_is_asked_for_the_held_out_split_only_when_the_run_says_so() {
        let cfg = ResearchConfig { tag: "t".into(), ..Default::default() };
        let mut asked = spec(cfg.clone());
        asked.held_out = true;
        let s = script(&asked);
        assert!(s.contains("--protect /repo --held-out"), "{s}");
        assert!(s.contains("AUTORESEARCH_HELD_OUT=1"), "{s}");
        let s = script(&spec(cfg));
        assert!(!s.contains("--held-out") && s.contains("AUTORESEARCH_HELD_OUT=0"), "{s}");
    }
}
