//! `local`: runs on this machine, `slots` at a time, each run in its own process group.
//!
//! The default experiment builds the workspace in the node's worktree (shared target directory),
//! copies the harness binary out under a file lock, and runs the copy: another slot's build of a
//! different node overwrites `target/release/harness` and must not change what this run executes.
//!
//! On a machine with NVIDIA GPUs each run gets one (`CUDA_VISIBLE_DEVICES`), the least busy, so
//! that N slots on N GPUs use every GPU instead of N runs on the first.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Executor, Finished, RunSpec, build_command, classify, custom_command, env_for, harness_command, render};
use crate::config::ResearchConfig;
use crate::process::{self, FileLock, Output};

pub struct Local {
    slots: usize,
    /// GPU names (`CUDA_VISIBLE_DEVICES` values) and how many runs each has now.
    gpus: Mutex<Vec<(String, usize)>>,
}

impl Local {
    pub fn new(cfg: &ResearchConfig) -> Local {
        Local::with_gpus(cfg, crate::detect::gpu_ids())
    }

    pub fn with_gpus(cfg: &ResearchConfig, gpus: Vec<String>) -> Local {
        let slots = if cfg.slots > 0 { cfg.slots } else { gpus.len().max(1) };
        Local { slots, gpus: Mutex::new(gpus.into_iter().map(|g| (g, 0)).collect()) }
    }

    /// The least busy GPU, now one run busier; None without GPUs.
    fn take_gpu(&self) -> Option<String> {
        let mut gpus = self.gpus.lock().unwrap_or_else(|e| e.into_inner());
        let g = gpus.iter_mut().min_by_key(|(_, busy)| *busy)?;
        g.1 += 1;
        Some(g.0.clone())
    }

    fn release_gpu(&self, name: &str) {
        let mut gpus = self.gpus.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = gpus.iter_mut().find(|(n, _)| n == name) {
            g.1 = g.1.saturating_sub(1);
        }
    }
}

impl Executor for Local {
    fn slots(&self) -> usize {
        self.slots
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
            harness_copy: dir.path().join("h"),
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
        assert!(local.gpus.lock().unwrap().iter().all(|(_, busy)| *busy == 0));
        assert!(Local::with_gpus(&cfg, vec![]).take_gpu().is_none());
    }
}
