//! `local`: runs on this machine, `slots` at a time, each run in its own process group.
//!
//! The default experiment builds the workspace in the node's worktree (shared target directory),
//! copies the harness binary out under a file lock, and runs the copy: another slot's build of a
//! different node overwrites `target/release/harness` and must not change what this run executes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Executor, Finished, RunSpec, build_command, classify, custom_command, env_for, harness_command, render};
use crate::config::ResearchConfig;
use crate::process::{self, FileLock, Output};

pub struct Local {
    slots: usize,
}

impl Local {
    pub fn new(cfg: &ResearchConfig) -> Local {
        let slots = if cfg.slots > 0 { cfg.slots } else { crate::detect::gpu_count().max(1) };
        Local { slots }
    }
}

impl Executor for Local {
    fn slots(&self) -> usize {
        self.slots
    }

    fn run(&self, spec: &RunSpec, started: &mut dyn FnMut(&str) -> Result<()>, tick: &mut dyn FnMut(Duration)) -> Result<Finished> {
        let _ = std::fs::remove_file(&spec.summary_json);
        let env = env_for(spec);
        let t0 = Instant::now();
        let left = |t0: Instant| spec.timeout.saturating_sub(t0.elapsed());
        let mut on_start = |pgid: u32| started(&format!("local:{pgid}"));
        if let Some(custom) = custom_command(&spec.cfg) {
            let f = process::run_shell(&render(custom, spec), &spec.worktree, &env, Output::Log(&spec.log), spec.timeout, &mut on_start, &mut *tick)?;
            return Ok(Finished { outcome: classify(spec, f.code, f.timed_out, f.interrupted), seconds: f.seconds, code: f.code });
        }
        // Build and copy under the lock.
        let lock_path = super::build_lock(&spec.repo_root);
        let lock = FileLock::acquire(&lock_path, || process::interrupted() || t0.elapsed() >= spec.timeout)?;
        if lock.is_none() {
            std::fs::write(&spec.log, "timed out waiting for the build lock (another slot was building)\n")?;
            let interrupted = process::interrupted();
            return Ok(Finished { outcome: classify(spec, None, !interrupted, interrupted), seconds: t0.elapsed().as_secs_f64(), code: None });
        }
        let f = process::run_shell(&build_command(&spec.cfg), &spec.worktree, &env, Output::Log(&spec.log), left(t0), &mut on_start, &mut *tick)?;
        if f.code != Some(0) {
            return Ok(Finished { outcome: classify(spec, f.code, f.timed_out, f.interrupted), seconds: t0.elapsed().as_secs_f64(), code: f.code });
        }
        let built = super::target_dir(&spec.repo_root).join("release").join(format!("harness{}", std::env::consts::EXE_SUFFIX));
        if let Some(dir) = spec.harness_copy.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::copy(&built, &spec.harness_copy)
            .with_context(|| format!("copying {} to {}", built.display(), spec.harness_copy.display()))?;
        drop(lock);
        let elapsed = t0.elapsed();
        let mut shifted = |e: Duration| tick(elapsed + e);
        let f = process::run_shell(&render(&harness_command(&spec.cfg), spec), &spec.worktree, &env, Output::Append(&spec.log), left(t0), &mut on_start, &mut shifted);
        let _ = std::fs::remove_file(&spec.harness_copy);
        let f = f?;
        Ok(Finished { outcome: classify(spec, f.code, f.timed_out, f.interrupted), seconds: t0.elapsed().as_secs_f64(), code: f.code })
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
