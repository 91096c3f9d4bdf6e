//! `local`: runs on this machine, `slots` at a time, each run in its own process group.
//!
//! The default experiment, under a file lock: syncs the experiment's commit into the one build
//! tree (`.autoresearch/.build`, see `build_tree`), builds the run's scorer there if it is not
//! built yet (the harness, once per run), builds the trainer there in the build sandbox (shared
//! target directory; only the crates the sync changed recompile), and copies the trainer
//! binary out. It then runs the scorer on the copy: another slot's build of a different node
//! overwrites `target/release/trainer` and must not change what this run executes.
//!
//! On a machine with NVIDIA GPUs each run gets one (`CUDA_VISIBLE_DEVICES`), the least busy, so
//! that N slots on N GPUs use every GPU instead of N runs on the first.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use std::path::Path;
use std::sync::Arc;

use contract::sandbox::Sandbox;

use super::{Executor, Finished, Outcome, RunSpec, build_command, build_sandbox, build_tree, classify, custom_command, env_for, harness_command, render, scorer_build_command};
use crate::config::ResearchConfig;
use crate::layout::Paths;
use crate::process::{self, FileLock, Output};

pub struct Local {
    /// The config's `slots`; 0: one per GPU.
    configured_slots: usize,
    /// GPU names (`CUDA_VISIBLE_DEVICES` values) and how many runs each has now. Probed on
    /// first use: `tree add` and the manual proposer build an executor only to ask it for a job
    /// script, and should not start `nvidia-smi` for that.
    gpus: OnceLock<Mutex<Vec<(String, usize)>>>,
}

impl Local {
    pub fn new(cfg: &ResearchConfig) -> Local {
        Local { configured_slots: cfg.slots, gpus: OnceLock::new() }
    }

    /// With these GPUs instead of the probed ones (tests).
    #[cfg(test)]
    pub fn with_gpus(cfg: &ResearchConfig, gpus: Vec<String>) -> Local {
        let local = Local::new(cfg);
        let _ = local.gpus.set(busy_counts(gpus));
        local
    }

    fn gpus(&self) -> &Mutex<Vec<(String, usize)>> {
        self.gpus.get_or_init(|| busy_counts(crate::platform::gpu_ids()))
    }

    /// The least busy GPU, now one run busier; None without GPUs.
    fn take_gpu(&self) -> Option<String> {
        let mut gpus = self.gpus().lock().unwrap_or_else(|e| e.into_inner());
        let g = gpus.iter_mut().min_by_key(|(_, busy)| *busy)?;
        g.1 += 1;
        Some(g.0.clone())
    }

    fn release_gpu(&self, name: &str) {
        let mut gpus = self.gpus().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = gpus.iter_mut().find(|(n, _)| n == name) {
            g.1 = g.1.saturating_sub(1);
        }
    }
}

/// Every GPU idle.
fn busy_counts(gpus: Vec<String>) -> Mutex<Vec<(String, usize)>> {
    Mutex::new(gpus.into_iter().map(|g| (g, 0)).collect())
}

impl Executor for Local {
    fn slots(&self) -> usize {
        if self.configured_slots > 0 {
            self.configured_slots
        } else {
            self.gpus().lock().unwrap_or_else(|e| e.into_inner()).len().max(1)
        }
    }

    fn describe(&self) -> String {
        format!("local, {} at a time", self.slots())
    }

    fn before_build(&self) -> &'static str {
        "commit synced into .autoresearch/.build, then "
    }

    fn run(&self, spec: &RunSpec, started: &mut dyn FnMut(&str) -> Result<()>, tick: &mut dyn FnMut(Duration)) -> Result<Finished> {
        let gpu = self.take_gpu();
        let result = self.run_on(spec, gpu.as_deref(), started, tick);
        if let Some(g) = &gpu {
            self.release_gpu(g);
        }
        result
    }

    /// A local run can't outlive its runner usefully (its exit code is lost with its parent):
    /// the orphaned process group is killed and the run counts as interrupted.
    fn attach(&self, _spec: &RunSpec, handle: &str, _tick: &mut dyn FnMut(Duration)) -> Result<Option<Finished>> {
        if let Some(pgid) = handle.strip_prefix("local:").and_then(|p| p.parse::<i64>().ok()) {
            process::kill_orphan_group(pgid);
        }
        Ok(None)
    }
}

impl Local {
    fn run_on(&self, spec: &RunSpec, gpu: Option<&str>, started: &mut dyn FnMut(&str) -> Result<()>, tick: &mut dyn FnMut(Duration)) -> Result<Finished> {
        let _ = std::fs::remove_file(&spec.summary_json);
        let mut env = env_for(spec);
        if let Some(g) = gpu {
            env.push(("CUDA_VISIBLE_DEVICES".into(), g.to_string()));
        }
        let t0 = Instant::now();
        let left = |t0: Instant| spec.timeout.saturating_sub(t0.elapsed());
        let mut on_start = |pgid: u32| started(&format!("local:{pgid}"));
        if let Some(custom) = custom_command(&spec.cfg) {
            let f = process::run_shell(&render(custom, spec), &spec.worktree, &env, Output::Log(&spec.log), spec.timeout, &mut on_start, &mut *tick)?;
            return Ok(Finished { outcome: classify(spec, f.code, f.timed_out, f.interrupted), seconds: f.seconds, code: f.code });
        }
        // Sync, build and copy under the lock.
        let lock_path = crate::layout::build_lock(&spec.repo_root);
        let lock = FileLock::acquire(&lock_path, || process::interrupted() || t0.elapsed() >= spec.timeout)?;
        if lock.is_none() {
            std::fs::write(&spec.log, "timed out waiting for the build lock (another slot was building)\n")?;
            let interrupted = process::interrupted();
            return Ok(Finished { outcome: classify(spec, None, !interrupted, interrupted), seconds: t0.elapsed().as_secs_f64(), code: None });
        }
        let tree = crate::layout::build_tree(&spec.repo_root);
        std::fs::write(&spec.log, "").with_context(|| format!("writing log {}", spec.log.display()))?;
        // What is built is the commit the guard checked, not whatever the worktree holds.
        let synced = if spec.commit.is_empty() { build_tree::sync(&spec.worktree, &tree) } else { build_tree::sync_commit(&spec.repo_root, &spec.commit, &tree) };
        match synced {
            Ok(s) => append_log(
                &spec.log,
                &format!(
                    "autoresearch: synced {} into the build tree {}: {} written, {} deleted, {} unchanged\n",
                    if spec.commit.is_empty() { spec.worktree.display().to_string() } else { format!("commit {}", &spec.commit[..spec.commit.len().min(12)]) },
                    tree.display(),
                    s.written,
                    s.deleted,
                    s.unchanged
                ),
            )?,
            Err(e) => return Ok(sync_crash(spec, &tree, &e, t0)),
        }
        let target = crate::layout::target_dir(&spec.repo_root);
        if !spec.scorer.exists() {
            if !spec.cfg.harness.trim().is_empty() {
                let reason = format!("the configured scorer {} does not exist (config key `harness`)", spec.scorer.display());
                append_log(&spec.log, &format!("autoresearch: {reason}\n"))?;
                return Ok(Finished { outcome: Outcome::Crash { reason, tail: process::tail(&spec.log, 40) }, seconds: t0.elapsed().as_secs_f64(), code: None });
            }
            append_log(&spec.log, &format!("autoresearch: building the run's scorer (the harness) once, into {}\n", spec.scorer.display()))?;
            if let Some(f) = self.build(spec, &tree, &target, &scorer_build_command(&spec.cfg), None, t0, &mut on_start, tick)? {
                return Ok(f);
            }
            let built = target.join("release").join(format!("harness{}", std::env::consts::EXE_SUFFIX));
            copy_atomic(&built, &spec.scorer)?;
        }
        let sandbox = match build_sandbox::prepare(&tree, &target, spec.cfg.require_sandbox) {
            Ok(s) => s,
            Err(reason) => {
                append_log(&spec.log, &format!("autoresearch: {reason}\n"))?;
                return Ok(Finished { outcome: Outcome::Crash { reason, tail: process::tail(&spec.log, 40) }, seconds: t0.elapsed().as_secs_f64(), code: None });
            }
        };
        if let Some(f) = self.build(spec, &tree, &target, &build_command(&spec.cfg), sandbox, t0, &mut on_start, tick)? {
            return Ok(f);
        }
        let built = target.join("release").join(format!("trainer{}", std::env::consts::EXE_SUFFIX));
        copy_atomic(&built, &spec.trainer_copy)?;
        drop(lock);
        super::ensure_sign_key(&Paths::new(&spec.repo_root, &spec.cfg).sign_key())?;
        let elapsed = t0.elapsed();
        let mut shifted = |e: Duration| tick(elapsed + e);
        let f = process::run_shell(&harness_command(spec), &spec.worktree, &env, Output::Append(&spec.log), left(t0), &mut on_start, &mut shifted);
        let _ = std::fs::remove_file(&spec.trainer_copy);
        let f = f?;
        Ok(Finished { outcome: classify(spec, f.code, f.timed_out, f.interrupted), seconds: t0.elapsed().as_secs_f64(), code: f.code })
    }

    /// Runs one build of the build tree (the scorer's, or the trainer's in its sandbox). None
    /// when it succeeded; else the run's end.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        spec: &RunSpec,
        tree: &Path,
        target: &Path,
        command: &str,
        sandbox: Option<Arc<Sandbox>>,
        t0: Instant,
        on_start: &mut dyn FnMut(u32) -> Result<()>,
        tick: &mut dyn FnMut(Duration),
    ) -> Result<Option<Finished>> {
        let env = build_sandbox::build_env(target);
        // A build of another checkout in the same target directory (checked before the build, and
        // again when cargo had to wait for one) leaves units that the tree's older files would
        // pass as fresh: see `build_tree::stamp_path`.
        for attempt in 1.. {
            if let Err(e) = guard_against_other_builds(target, tree, &spec.log) {
                return Ok(Some(sync_crash(spec, tree, &e, t0)));
            }
            let before = std::fs::metadata(&spec.log).map(|m| m.len()).unwrap_or(0);
            let left = spec.timeout.saturating_sub(t0.elapsed());
            let f = process::run_shell_in(sandbox.as_ref(), command, tree, &env, Output::Append(&spec.log), left, &mut *on_start, &mut *tick)?;
            let waited = cargo_waited(&spec.log, before);
            // A build that failed on its own (a trainer that does not compile) also leaves this
            // tree's units: recorded, so that the next experiment does not recompile them all.
            if f.code.is_some() && !waited {
                if let Err(e) = build_tree::record_build(target, tree) {
                    return Ok(Some(sync_crash(spec, tree, &e, t0)));
                }
            }
            if f.code != Some(0) {
                let outcome = match (f.timed_out, f.interrupted) {
                    (false, false) => Outcome::Crash { reason: format!("the build failed (`{command}` exited with {})", f.code.map(|c| c.to_string()).unwrap_or_else(|| "a signal".into())), tail: process::tail(&spec.log, 40) },
                    _ => classify(spec, f.code, f.timed_out, f.interrupted),
                };
                return Ok(Some(Finished { outcome, seconds: t0.elapsed().as_secs_f64(), code: f.code }));
            }
            if !waited {
                return Ok(None);
            }
            if attempt == 3 {
                append_log(&spec.log, "autoresearch: cargo waited for another build of the target directory three times; going on with this build\n")?;
                return Ok(None);
            }
            append_log(&spec.log, "autoresearch: cargo waited for another build of the target directory: checking the build again\n")?;
        }
        unreachable!("the loop returns")
    }
}

/// Copies a built binary to `to` (a temporary file, then a rename: a concurrent reader never
/// sees half of it).
fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = to.with_file_name(format!(".{}.tmp.{}", to.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    std::fs::copy(from, &tmp).with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))
}

/// A crash of the sync or of its bookkeeping, its reason (naming the paths) appended to the log.
fn sync_crash(spec: &RunSpec, tree: &std::path::Path, e: &anyhow::Error, t0: Instant) -> Finished {
    let reason = format!("cannot sync the worktree {} into the build tree {}: {e:#}", spec.worktree.display(), tree.display());
    let _ = append_log(&spec.log, &format!("autoresearch: {reason}\n"));
    Finished { outcome: Outcome::Crash { reason, tail: process::tail(&spec.log, 40) }, seconds: t0.elapsed().as_secs_f64(), code: None }
}

fn append_log(log: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("opening log {}", log.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing log {}", log.display()))
}

/// Marks the whole build tree changed when the target directory was built from elsewhere since
/// the last build here.
fn guard_against_other_builds(target: &std::path::Path, tree: &std::path::Path, log: &std::path::Path) -> Result<()> {
    if build_tree::built_elsewhere(target, tree)? {
        let n = build_tree::mark_all_changed(tree)?;
        append_log(
            log,
            &format!("autoresearch: {} was built from another checkout since the last build here (or never here): {n} files marked changed, the workspace crates recompile\n", target.display()),
        )?;
    }
    Ok(())
}

/// Whether cargo's output since byte `from` of the log says it waited for another build's lock.
fn cargo_waited(log: &std::path::Path, from: u64) -> bool {
    let text = std::fs::read(log).unwrap_or_default();
    let new = text.get(from as usize..).unwrap_or_default();
    String::from_utf8_lossy(new).contains("Blocking waiting for file lock")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn each_run_in_flight_gets_its_own_gpu() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ResearchConfig {
            experiment_command: "echo $CUDA_VISIBLE_DEVICES > {summary_json}.gpu; sleep 1; echo '{\"val_bpb\": 1.5}' > {summary_json}".into(),
            ..Default::default()
        };
        let local = Local::with_gpus(&cfg, vec!["0".into(), "1".into()]);
        assert_eq!(local.slots(), 2);
        let spec = |i: usize| RunSpec {
            cfg: Arc::new(cfg.clone()),
            repo_root: dir.path().into(),
            worktree: dir.path().into(),
            profile: dir.path().join("p.toml"),
            label: format!("n{i}"),
            commit: String::new(),
            seed: 1,
            batch_scale: 1.0,
            summary_json: dir.path().join(format!("n{i}.json")),
            log: dir.path().join(format!("n{i}.log")),
            scorer: dir.path().join("h"),
            trainer_copy: dir.path().join("t"),
            held_out: false,
            timeout: Duration::from_secs(30),
        };
        let gpus: Vec<String> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..2)
                .map(|i| {
                    let (local, spec) = (&local, spec(i));
                    s.spawn(move || {
                        let f = local.run(&spec, &mut |_| Ok(()), &mut |_| {}).unwrap();
                        assert!(matches!(f.outcome, crate::executor::Outcome::Ok { .. }), "{:?}", f.outcome);
                        std::fs::read_to_string(format!("{}.gpu", spec.summary_json.display())).unwrap().trim().to_string()
                    })
                })
                .collect();
            runs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = gpus.clone();
        sorted.sort();
        assert_eq!(sorted, ["0", "1"], "two runs at once, one per GPU: {gpus:?}");
        // Both released: the next run may take either.
        assert!(local.gpus().lock().unwrap().iter().all(|(_, busy)| *busy == 0));
        assert!(Local::with_gpus(&cfg, vec![]).take_gpu().is_none());
    }

    fn write(root: &std::path::Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn sh(dir: &std::path::Path, cmd: &str) {
        let out = std::process::Command::new("sh").arg("-c").arg(cmd).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn default_spec(repo: &std::path::Path, worktree: &std::path::Path, label: &str) -> RunSpec {
        let state = repo.join(".autoresearch");
        std::fs::create_dir_all(&state).unwrap();
        RunSpec {
            cfg: Arc::new(ResearchConfig::default()),
            repo_root: repo.into(),
            worktree: worktree.into(),
            profile: repo.join("p.toml"),
            label: label.into(),
            commit: String::new(),
            seed: 1,
            batch_scale: 1.0,
            summary_json: state.join(format!("{label}.json")),
            log: state.join(format!("{label}.log")),
            scorer: state.join("bin").join("harness"),
            trainer_copy: state.join("bin").join(label).join("trainer"),
            held_out: false,
            timeout: Duration::from_secs(300),
        }
    }

    /// The default experiment on a workspace of three tiny crates (no Burn, no dependency) laid
    /// out as the real one: a scorer (`harness`) that runs the trainer binary it is given. The
    /// scorer is built once; each worktree's trainer is built in the build sandbox, in the one
    /// build tree, so the second build compiles only what its change touched.
    #[test]
    fn worktrees_built_one_after_the_other_reuse_the_build_tree() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let manifest = |name: &str, deps: &str| {
            format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\n{deps}")
        };
        write(&repo, "Cargo.toml", "[workspace]\nresolver = \"3\"\nmembers = [\"prepare\", \"trainer\", \"harness\"]\n");
        write(&repo, ".gitignore", "/target\n/.worktrees\n/.autoresearch\n");
        write(&repo, "prepare/Cargo.toml", &manifest("prepare", ""));
        write(&repo, "prepare/src/lib.rs", "pub fn p() -> u32 { 1 }\n");
        write(&repo, "trainer/Cargo.toml", &manifest("trainer", "prepare = { path = \"../prepare\" }\n"));
        write(&repo, "trainer/src/lib.rs", "pub fn t() -> u32 { prepare::p() + 1 }\n");
        write(&repo, "trainer/src/main.rs", "fn main() { println!(\"{}\", trainer::t()); }\n");
        write(&repo, "harness/Cargo.toml", &manifest("harness", ""));
        write(
            &repo,
            "harness/src/main.rs",
            r#"fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arg = |name: &str| a[a.iter().position(|x| x == name).unwrap() + 1].clone();
    let out = std::process::Command::new(arg("--trainer")).output().unwrap();
    let metric = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::write(arg("--summary-json"), format!("{{\"val_bpb\": {metric}}}")).unwrap();
}
"#,
        );
        sh(&repo, "cargo generate-lockfile --offline --quiet && git init -q && git add . && git -c user.name=t -c user.email=t@t commit -qm init");
        sh(&repo, "git worktree add -q --detach .worktrees/a && git worktree add -q --detach .worktrees/b");
        // b's change, not committed: without a commit, the sync takes what the worktree holds.
        write(&repo, ".worktrees/b/trainer/src/lib.rs", "pub fn t() -> u32 { prepare::p() + 2 }\n");

        let local = Local::with_gpus(&ResearchConfig::default(), vec![]);
        let run = |wt: &str, label: &str, commit: &str, metric: f64| {
            let mut spec = default_spec(&repo, &repo.join(".worktrees").join(wt), label);
            spec.commit = commit.to_string();
            let f = local.run(&spec, &mut |_| Ok(()), &mut |_| {}).unwrap();
            let log = std::fs::read_to_string(&spec.log).unwrap();
            assert!(matches!(f.outcome, crate::executor::Outcome::Ok { metric: m, .. } if m == metric), "{:?}\n{log}", f.outcome);
            assert!(!spec.trainer_copy.exists(), "the private copy is removed after the run");
            assert!(spec.scorer.exists(), "the scorer stays for the next run");
            log
        };
        let tree = repo.join(".autoresearch/.build");
        let log = run("a", "a", "", 2.0);
        assert!(log.contains(&format!("into the build tree {}: 10 written, 0 deleted, 0 unchanged", tree.display())), "{log}");
        assert!(log.contains("building the run's scorer"), "{log}");
        assert!(log.contains("Compiling harness") && log.contains("Compiling prepare") && log.contains("Compiling trainer"), "{log}");
        let log = run("b", "b", "", 3.0);
        assert!(log.contains("1 written, 0 deleted, 9 unchanged"), "{log}");
        assert!(log.contains("Compiling trainer"), "{log}");
        assert!(!log.contains("Compiling harness") && !log.contains("scorer"), "the scorer is built once a run:\n{log}");
        assert!(!log.contains("Compiling prepare"), "prepare is unchanged and stays built:\n{log}");
        assert!(log.contains(&tree.join("trainer").display().to_string()), "built in the build tree:\n{log}");
        assert!(!log.contains("another checkout"), "{log}");

        // With a commit, the commit is built, not an edit made in the worktree after it.
        let head = String::from_utf8(std::process::Command::new("git").args(["rev-parse", "HEAD"]).current_dir(&repo).output().unwrap().stdout).unwrap();
        let log = run("b", "b-commit", head.trim(), 2.0);
        assert!(log.contains(&format!("synced commit {}", &head[..12])), "{log}");

        // A person builds a changed trainer in the main checkout, same target directory: its
        // units replace the build tree's, and the tree's unchanged (older) files would pass as
        // fresh.
        write(&repo, "trainer/src/lib.rs", "pub fn t() -> u32 { prepare::p() + 5 }\n");
        sh(&repo, "CARGO_TARGET_DIR=target cargo build --release --locked --workspace --quiet");
        let log = run("b", "b-again", "", 3.0);
        assert!(log.contains("1 written, 0 deleted, 9 unchanged"), "{log}");
        assert!(log.contains("built from another checkout"), "{log}");
        assert!(log.contains("Compiling trainer"), "{log}");

        // Cargo had to wait for another build (its lock held here for a while): that build may
        // have come between the check and this one, so the build is checked and run again.
        let held = crate::process::FileLock::acquire(&repo.join("target/release/.cargo-lock"), || false).unwrap().unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1500));
            drop(held);
        });
        let log = run("a", "a-waited", "", 2.0);
        release.join().unwrap();
        assert!(log.contains("Blocking waiting for file lock"), "{log}");
        assert!(log.contains("checking the build again"), "{log}");
        assert_eq!(log.matches("Finished `release`").count(), 2, "{log}");
    }

    /// An experiment that embeds a file from outside the build tree does not build.
    #[test]
    fn an_experiment_build_cannot_read_the_run_state() {
        let dir = tempfile::tempdir().unwrap();
        let repo = std::fs::canonicalize(dir.path()).unwrap().join("repo");
        write(&repo, "Cargo.toml", "[workspace]\nresolver = \"3\"\nmembers = [\"trainer\", \"harness\"]\n");
        write(&repo, ".gitignore", "/target\n/.worktrees\n/.autoresearch\n");
        let secret = repo.join(".autoresearch/t/results.tsv");
        write(&repo, ".autoresearch/t/results.tsv", "secret");
        write(&repo, "trainer/Cargo.toml", "[package]\nname = \"trainer\"\nversion = \"0.1.0\"\nedition = \"2024\"\n");
        write(&repo, "trainer/src/main.rs", &format!("static S: &[u8] = include_bytes!({:?});\nfn main() {{ println!(\"{{}}\", S.len()); }}\n", secret.display().to_string()));
        write(&repo, "harness/Cargo.toml", "[package]\nname = \"harness\"\nversion = \"0.1.0\"\nedition = \"2024\"\n");
        write(&repo, "harness/src/main.rs", "fn main() {}\n");
        sh(&repo, "cargo generate-lockfile --offline --quiet && git init -q && git add . && git -c user.name=t -c user.email=t@t commit -qm init");
        let spec = default_spec(&repo, &repo, "n1");
        let f = Local::with_gpus(&ResearchConfig::default(), vec![]).run(&spec, &mut |_| Ok(()), &mut |_| {}).unwrap();
        let log = std::fs::read_to_string(&spec.log).unwrap();
        match &f.outcome {
            crate::executor::Outcome::Crash { reason, .. } => assert!(reason.contains("the build failed"), "{reason}"),
            other => panic!("{other:?}\n{log}"),
        }
        assert!(log.contains("Permission denied"), "{log}");
    }

    /// A worktree that cannot be synced is an experiment crash whose log names it.
    #[test]
    fn a_sync_failure_is_a_crash_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-worktree");
        let spec = default_spec(dir.path(), &missing, "n1");
        let f = Local::with_gpus(&ResearchConfig::default(), vec![]).run(&spec, &mut |_| Ok(()), &mut |_| {}).unwrap();
        let log = std::fs::read_to_string(&spec.log).unwrap();
        match &f.outcome {
            crate::executor::Outcome::Crash { reason, tail } => {
                assert!(reason.contains(&missing.display().to_string()) && reason.contains(".autoresearch/.build"), "{reason}");
                assert!(tail.contains("cannot sync the worktree"), "{tail}");
            }
            other => panic!("{other:?}"),
        }
        assert!(log.contains(&format!("cannot sync the worktree {}", missing.display())), "{log}");
    }
}
