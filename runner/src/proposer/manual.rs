//! `manual` proposer: a person (or a cluster job) makes the change and runs the experiment.
//! `run` creates the node and its worktree, prints what to do, and waits until
//! `autoresearch tree record` stores the result; the runner then commits, guards and decides.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Applied, Ctx, Plan, Proposer};
use crate::config::ProposerKind;
use crate::db::Node;

pub struct Manual;

/// The summary JSON a person's run of `node` writes (`.autoresearch/<tag>/runs/n<id>-manual.json`).
pub fn summary_path(state_dir: &Path, node: &str) -> std::path::PathBuf {
    state_dir.join("runs").join(format!("{node}-manual.json"))
}

/// With the slurm executor: writes node `node`'s job script, `.autoresearch/<tag>/jobs/<node>.sbatch`,
/// which builds and runs the experiment in `worktree` and writes its summary where `tree record`
/// expects it. Returns the script and the summary path.
pub fn write_job_script(repo_root: &Path, cfg: &crate::config::ResearchConfig, node: &str, worktree: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (profile, _, _) = crate::runloop::resolve_profile(repo_root, cfg)?;
    let state = crate::runloop::Paths::new(repo_root, cfg).state_dir;
    let scale = if cfg.device_batch_scale > 0.0 { cfg.device_batch_scale } else { crate::detect::profile_batch_scale(&profile) };
    let summary = summary_path(&state, node);
    let spec = crate::executor::RunSpec {
        cfg: std::sync::Arc::new(cfg.clone()),
        repo_root: repo_root.to_path_buf(),
        worktree: worktree.to_path_buf(),
        profile,
        label: node.to_string(),
        commit: String::new(),
        seed: cfg.seed,
        batch_scale: scale,
        summary_json: summary.clone(),
        log: state.join("logs").join(format!("{node}-manual.log")),
        scorer: crate::executor::scorer_path(cfg, repo_root),
        trainer_copy: state.join("bin").join(format!("{node}-manual")).join("trainer"),
        timeout: cfg.hard_timeout(),
    };
    let script = state.join("jobs").join(format!("{node}.sbatch"));
    for dir in [state.join("jobs"), state.join("logs"), state.join("runs")] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::executor::slurm::ensure_runner_copy(&spec)?;
    crate::executor::ensure_sign_key(&crate::executor::sign_key_path(cfg, repo_root))?;
    crate::results::write_atomic(&script, &crate::executor::slurm::script(&spec))?;
    Ok((script, summary))
}

/// How to submit a node's job script and bring its result back.
pub fn submit_hint(tag: &str, node: &str, script: &Path, summary: &Path) -> String {
    format!(
        "  sbatch {script}
then, when the job is done:
  autoresearch tree record --tag {tag} {node} --summary-json {summary}",
        script = script.display(),
        summary = summary.display()
    )
}

/// The shell line that builds and runs one experiment by hand in `worktree`.
pub fn run_hint(repo_root: &Path, cfg: &crate::config::ResearchConfig, worktree: &Path, summary: &Path) -> String {
    let target = crate::executor::target_dir(repo_root);
    format!(
        "cd {wt} && CARGO_TARGET_DIR={target} cargo build --release --workspace --bin harness --bin trainer && {target}/release/harness --budget {budget} --summary-json {json}",
        wt = worktree.display(),
        target = target.display(),
        budget = cfg.budget,
        json = summary.display(),
    )
}

impl Proposer for Manual {
    fn kind(&self) -> ProposerKind {
        ProposerKind::Manual
    }

    fn executes(&self) -> bool {
        false
    }

    fn plan(&mut self, ctx: &Ctx<'_>) -> Result<Option<Plan>> {
        Ok(Some(Plan { parent: ctx.best, hypothesis: String::new(), description: format!("manual experiment {}", ctx.iteration), change: None, idea: false }))
    }

    fn apply(&mut self, ctx: &Ctx<'_>, node: &Node, _plan: &Plan, worktree: &Path) -> Result<Applied> {
        let summary = summary_path(ctx.state_dir, &node.name());
        std::fs::create_dir_all(summary.parent().unwrap())?;
        if ctx.cfg.executor == crate::config::ExecutorKind::Slurm {
            let (script, summary) = write_job_script(&ctx.git.root, ctx.cfg, &node.name(), worktree)?;
            println!(
                "\nexperiment {n}: edit files under [{scope}] in\n  {wt}\nthen submit its job (the runner commits your edit when you record it):\n{hint}\n  (or --metric VALUE, or --crash \"why\")",
                n = node.name(),
                scope = ctx.cfg.scope.join(", "),
                wt = worktree.display(),
                hint = submit_hint(ctx.tag, &node.name(), &script, &summary),
            );
            return wait_for_record(ctx, node);
        }
        println!(
            "\nexperiment {n}: edit files under [{scope}] in\n  {wt}\nrun it there, e.g.\n  {run}\nthen record it (the runner is waiting):\n  autoresearch tree record --tag {tag} {n} --summary-json {json} --description \"what you changed\"\n  (or --metric VALUE [--memory-mb MB], or --crash \"why\")",
            n = node.name(),
            scope = ctx.cfg.scope.join(", "),
            wt = worktree.display(),
            run = run_hint(&ctx.git.root, ctx.cfg, worktree, &summary),
            json = summary.display(),
            tag = ctx.tag,
        );
        wait_for_record(ctx, node)
    }
}

/// Waits until `tree record` stores the node's result.
fn wait_for_record(ctx: &Ctx<'_>, node: &Node) -> Result<Applied> {
    let poll = Duration::from_secs_f64(ctx.cfg.manual.poll_seconds.max(0.1));
    loop {
        if crate::process::interrupted() {
            return Err(crate::errors::CliError::Interrupted.into());
        }
        if let Some(n) = ctx.db.node(node.id)?
            && let Some(rec) = n.recorded
        {
            let description = rec.get("description").and_then(|v| v.as_str()).map(str::to_string);
            let hypothesis = rec.get("hypothesis").and_then(|v| v.as_str()).map(str::to_string);
            return Ok(Applied::Done { description, hypothesis });
        }
        std::thread::sleep(poll);
    }
}
