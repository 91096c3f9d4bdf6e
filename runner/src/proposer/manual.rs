//! `manual` proposer: a person (or a cluster job) makes the change and runs the experiment.
//! `run` creates the node and its worktree, prints what to do, and waits until
//! `autoresearch tree record` stores the result; the runner then commits, guards and decides.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::{Applied, Ctx, Plan, Proposer};
use crate::config::ProposerKind;
use crate::db::Node;

pub struct Manual;

/// The summary JSON a person's run of `node` writes (`.autoresearch/<tag>/runs/n<id>-manual.json`).
pub fn summary_path(state_dir: &Path, node: &str) -> std::path::PathBuf {
    state_dir.join("runs").join(format!("{node}-manual.json"))
}

/// The shell line that builds and runs one experiment by hand in `worktree`.
pub fn run_hint(repo_root: &Path, cfg: &crate::config::ResearchConfig, worktree: &Path, summary: &Path) -> String {
    let target = crate::executor::target_dir(repo_root);
    format!(
        "cd {wt} && CARGO_TARGET_DIR={target} cargo build --release --workspace && {target}/release/harness --budget {budget} --summary-json {json}",
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
        println!(
            "\nexperiment {n}: edit files under [{scope}] in\n  {wt}\nrun it there, e.g.\n  {run}\nthen record it (the runner is waiting):\n  autoresearch tree record --tag {tag} {n} --summary-json {json} --description \"what you changed\"\n  (or --metric VALUE [--memory-mb MB], or --crash \"why\")",
            n = node.name(),
            scope = ctx.cfg.scope.join(", "),
            wt = worktree.display(),
            run = run_hint(&ctx.git.root, ctx.cfg, worktree, &summary),
            json = summary.display(),
            tag = ctx.tag,
        );
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
}
