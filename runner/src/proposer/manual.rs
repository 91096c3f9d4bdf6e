//! `manual` proposer: a person (or a cluster job) makes the change and runs the experiment.
//! `run` creates the node and its worktree (for a queued idea, `tree add --parent`, the idea's
//! own node at its parent), prints what to do, and waits until `autoresearch tree exec` (or
//! `tree record`) stores the result; the runner then guards and decides.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::{Applied, Ctx, Plan, Proposer};
use crate::config::ProposerKind;
use crate::db::Node;
use crate::layout::attempt;

pub struct Manual;

/// The one command that builds and scores node `node` as the loop does and records it.
pub fn exec_hint(tag: &str, node: &str) -> String {
    format!("autoresearch tree exec --tag {tag} {node}")
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

    /// A queued idea is the next experiment, at its own parent: that is how a person builds on
    /// a near-miss (`tree add --parent n4 ...`).
    fn adopt(&mut self, _ctx: &Ctx<'_>, idea: &Node) -> Result<Option<Plan>> {
        Ok(Plan::from_idea(idea))
    }

    fn apply(&mut self, ctx: &Ctx<'_>, node: &Node, plan: &Plan, worktree: &Path) -> Result<Applied> {
        let summary = crate::layout::run_files(ctx.state_dir, &node.name(), attempt::BY_HAND).summary_json;
        std::fs::create_dir_all(summary.parent().unwrap())?;
        if let Some(job) = crate::executor::build(ctx.cfg).job_script(&ctx.git.root, ctx.cfg, &node.name(), worktree)? {
            println!(
                "\nexperiment {n}: edit files under [{scope}] in\n  {wt}\nthen submit its job (the runner commits your edit when you record it):\n{hint}\n  (or --crash \"why\"; --metric VALUE records an unverified result, never compared)",
                n = node.name(),
                scope = ctx.cfg.scope.join(", "),
                wt = worktree.display(),
                hint = job.hint(ctx.tag, &node.name()),
            );
            return wait_for_record(ctx, node, (!plan.idea).then_some(worktree));
        }
        let parent = node.parent.map(crate::db::node_name).unwrap_or_default();
        let idea = if plan.idea { format!(" (the queued idea \"{}\")", node.description) } else { String::new() };
        println!(
            "\nexperiment {n}{idea}, on top of {parent}: edit files under [{scope}] in\n  {wt}\nthen build, score and record it exactly as the loop would (the runner is waiting):\n  {exec} --description \"what you changed\" [--hypothesis \"why\"]\nit commits the edit; `autoresearch tree show {n}` then has the run, its curve and its timings.\n  (a run elsewhere: `autoresearch tree record --tag {tag} {n} --summary-json {json}`; `--crash \"why\"` gives up)",
            n = node.name(),
            scope = ctx.cfg.scope.join(", "),
            wt = worktree.display(),
            exec = exec_hint(ctx.tag, &node.name()),
            json = summary.display(),
            tag = ctx.tag,
        );
        wait_for_record(ctx, node, (!plan.idea).then_some(worktree))
    }
}

/// An idea queued with `tree add` that the loop would take up now (its parent has run; a person
/// with a worktree for it and no result yet is still working on it), if there is one.
fn queued_idea(ctx: &Ctx<'_>) -> Result<Option<Node>> {
    let nodes = ctx.db.nodes()?;
    for idea in nodes.iter().filter(|n| crate::tree::is_idea(n) && n.status == crate::db::Status::Pending) {
        let parent_ran = idea.parent.and_then(|p| nodes.iter().find(|n| n.id == p)).is_some_and(|p| p.commit.is_some() && matches!(p.status, crate::db::Status::Keep | crate::db::Status::Discard));
        if parent_ran && (idea.recorded.is_some() || ctx.git.worktree_head(ctx.tag, &idea.name())?.is_none()) {
            return Ok(Some(idea.clone()));
        }
    }
    Ok(None)
}

/// Waits until `tree exec` or `tree record` stores the node's result. The loop's own node
/// (`worktree` given), still untouched, gives way to an idea queued meanwhile: the loop then
/// opens the idea at its own parent, so that `tree add --parent n4` is the next experiment.
fn wait_for_record(ctx: &Ctx<'_>, node: &Node, worktree: Option<&Path>) -> Result<Applied> {
    let poll = Duration::from_secs_f64(ctx.cfg.manual.poll_seconds.max(0.1));
    let parent_commit = node.parent.and_then(|p| ctx.db.node(p).ok().flatten()).and_then(|p| p.commit);
    loop {
        if crate::process::interrupted() {
            return Err(crate::errors::CliError::Interrupted.into());
        }
        if let Some(wt) = worktree
            && let Some(idea) = queued_idea(ctx)?
            && ctx.git.worktree_head(ctx.tag, &node.name())?.map(|h| h.to_string()) == parent_commit
            && !ctx.git.is_dirty(wt)?
            && ctx.db.node(node.id)?.is_some_and(|n| n.recorded.is_none())
        {
            println!("{}: untouched, gives way to the queued idea {} (\"{}\")", node.name(), idea.name(), idea.description);
            return Ok(Applied::Failed(format!("the queued idea {} comes first", idea.name())));
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
