//! `agent` proposer: a headless coding agent (claude -p, codex exec, gemini -p, opencode, aider)
//! run in the experiment's worktree with a prompt made of configs/program.md, the tree and the
//! recent results. The agent only edits files; the runner commits, guards, runs and decides.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Applied, Ctx, Plan, Proposer, proposer_env, read_proposal_file, tree_digest};
use crate::config::ProposerKind;
use crate::db::Node;
use crate::process::{self, Output};

pub struct Agent;

/// The prompt for one proposal.
pub fn build_prompt(ctx: &Ctx<'_>, node: &Node, plan: &Plan, worktree: &Path) -> Result<String> {
    let program_path = crate::config::resolve(&ctx.git.root, Path::new(&ctx.cfg.agent.program));
    let program = std::fs::read_to_string(&program_path)
        .with_context(|| format!("reading the agent program {} ([agent] program in the config)", program_path.display()))?;
    let nodes = ctx.db.nodes()?;
    let parent = nodes.iter().find(|n| Some(n.id) == node.parent);
    let task = if plan.idea {
        format!(
            "Make the change a person queued for this experiment (`tree add`), and nothing else:\n  {}\n  Hypothesis: {}\n",
            plan.description,
            if plan.hypothesis.is_empty() { "(none given)" } else { &plan.hypothesis }
        )
    } else {
        "Make ONE focused change ".to_string()
    };
    Ok(format!(
        "{program}\n\n# This session (written by the runner)\n\n\
Mode: the runner calls you. You are in a git worktree at {wt}, checked out at experiment {parent} \
({metric} = {value}). {task}to the files under: {scope}. \
Do not run the training, do not commit, do not touch anything else: the runner commits your edit, \
checks it, trains for the budget ({budget}) and keeps or discards it.\n\
When you are done, end your reply with two lines:\nDESCRIPTION: <one line, what you changed>\nHYPOTHESIS: <why it should lower {metric}>\n\
(or write them to the file named by $AUTORESEARCH_PROPOSAL_FILE: description on line 1, hypothesis below).\n\n\
## Experiment tree\n\n{digest}\n{curves}",
        wt = worktree.display(),
        parent = parent.map(|p| p.name()).unwrap_or_default(),
        metric = ctx.cfg.metric,
        value = crate::tree::fmt_metric(parent.and_then(|p| p.metric)),
        scope = ctx.cfg.scope.join(", "),
        budget = ctx.cfg.budget,
        digest = tree_digest(&nodes, ctx.best, ctx.cfg.agent.recent_results),
        curves = curve_digest(ctx, &nodes)?,
    ))
}

/// The training curves of the best node and the recent ones, a line per run: how many steps
/// the budget bought, the last training loss, and the throughput with its spread. Empty when
/// no run wrote one.
fn curve_digest(ctx: &Ctx<'_>, nodes: &[Node]) -> Result<String> {
    let mut done: Vec<&Node> = nodes.iter().filter(|n| n.finish_seq.is_some()).collect();
    done.sort_by_key(|n| n.finish_seq);
    let mut shown: Vec<&Node> = nodes.iter().filter(|n| n.id == ctx.best).collect();
    for n in done.iter().rev().take(ctx.cfg.agent.recent_results).rev() {
        if n.id != ctx.best {
            shown.push(n);
        }
    }
    let mut out = String::new();
    for n in shown {
        for r in ctx.db.runs(n.id)? {
            // The held-out run's curve is a training curve like the others, but the held-out
            // split stays out of the prompt altogether.
            if r.attempt.starts_with(crate::layout::attempt::HELD_OUT) {
                continue;
            }
            if let Some(c) = crate::curve::of_run(ctx.state_dir, &n.name(), &r.attempt) {
                out.push_str(&format!("  {} run {} (seed {}): {}\n", n.name(), r.attempt, r.seed, c.describe()));
            }
        }
    }
    Ok(if out.is_empty() { out } else { format!("\n## Training curves (steps in the budget, last training loss, tokens/s)\n\n{out}") })
}

/// `DESCRIPTION:` / `HYPOTHESIS:` lines in the agent's output (also inside JSON strings).
pub fn parse_tagged(text: &str, tag: &str) -> Option<String> {
    let i = text.rfind(tag)?;
    let rest = &text[i + tag.len()..];
    let end = rest.find(['\n', '"']).or_else(|| rest.find("\\n")).unwrap_or(rest.len());
    let end = rest[..end].find("\\n").unwrap_or(end);
    let v = rest[..end].trim();
    if v.is_empty() { None } else { Some(v.to_string()) }
}

impl Proposer for Agent {
    fn kind(&self) -> ProposerKind {
        ProposerKind::Agent
    }

    fn plan(&mut self, ctx: &Ctx<'_>) -> Result<Option<Plan>> {
        Ok(Some(Plan { parent: ctx.best, hypothesis: String::new(), description: format!("agent proposal {}", ctx.iteration), change: None, idea: false }))
    }

    fn adopt(&mut self, _ctx: &Ctx<'_>, idea: &Node) -> Result<Option<Plan>> {
        Ok(Plan::from_idea(idea))
    }

    fn apply(&mut self, ctx: &Ctx<'_>, node: &Node, plan: &Plan, worktree: &Path) -> Result<Applied> {
        let runs = ctx.state_dir.join("runs");
        let logs = ctx.state_dir.join("logs");
        std::fs::create_dir_all(&runs)?;
        std::fs::create_dir_all(&logs)?;
        let prompt = build_prompt(ctx, node, plan, worktree)?;
        let prompt_file = runs.join(format!("{}-prompt.md", node.name()));
        std::fs::write(&prompt_file, &prompt)?;
        let proposal = crate::layout::proposal_file(ctx.state_dir, &node.name());
        let _ = std::fs::remove_file(&proposal);
        // A preset's exit codes, leftovers and cost apply when its command is the one run.
        let preset = if ctx.cfg.agent.command.trim().is_empty() { ctx.cfg.agent_preset().ok().map(|(_, p)| p.clone()) } else { None };
        let fill = crate::agents::Fill { prompt: &prompt, prompt_file: &prompt_file, worktree, scope: &ctx.cfg.scope };
        let command = crate::agents::command_line(&ctx.cfg.agent_command(), &fill)?;
        let out = logs.join(format!("{}-agent.out", node.name()));
        let err = logs.join(format!("{}-agent.log", node.name()));
        let fin = process::run_shell(
            &command,
            worktree,
            &proposer_env(ctx, node, worktree, &proposal),
            Output::Split { stdout: &out, stderr: &err },
            Duration::from_secs(ctx.cfg.agent.timeout_seconds.max(1)),
            |_| Ok(()),
            |_| {},
        )?;
        if fin.interrupted {
            return Err(crate::errors::CliError::Interrupted.into());
        }
        let stdout = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(cost) = preset.as_ref().and_then(|p| crate::agents::reported_cost(&stdout, &p.cost_key)) {
            add_cost(ctx.db, cost)?;
        }
        if let Some(p) = &preset {
            let removed = crate::agents::remove_leftovers(worktree, &p.leftovers)?;
            if !removed.is_empty() {
                eprintln!("{}: removed what {} left for itself in the worktree: {}", node.name(), p.name, removed.join(", "));
            }
        }
        let who = preset.as_ref().map(|p| p.name.clone()).unwrap_or_else(|| "agent".into());
        match crate::agents::exit(preset.as_ref(), fin.code) {
            _ if fin.timed_out => eprintln!("{who} timed out after {} s; checking what it changed", ctx.cfg.agent.timeout_seconds),
            crate::agents::Exit::Done => {}
            crate::agents::Exit::Failed(why) => {
                return Ok(Applied::Failed(format!(
                    "{who} exited with {}: {why} (log: {}){}",
                    fin.code.unwrap_or(-1),
                    err.display(),
                    process::tail(&err, 3).lines().map(|l| format!(" | {l}")).collect::<String>()
                )));
            }
            crate::agents::Exit::Stopped(why) => eprintln!("{who} stopped ({why}); checking what it changed"),
            crate::agents::Exit::Unknown => eprintln!("{who} exited with {:?} (log: {}); checking what it changed", fin.code, err.display()),
        }
        // Edits made before a time or turn limit stay on disk: the diff decides, not the exit code.
        let (mut description, mut hypothesis) = read_proposal_file(&proposal);
        if description.is_none() {
            description = parse_tagged(&stdout, "DESCRIPTION:");
        }
        if hypothesis.is_none() {
            hypothesis = parse_tagged(&stdout, "HYPOTHESIS:");
        }
        Ok(Applied::Done { description, hypothesis })
    }
}

/// The meta key of what the agents of a run reported they cost, in dollars (for `max_cost`).
pub const COST_KEY: &str = "agent_cost_usd";

fn add_cost(db: &crate::db::Db, cost: f64) -> Result<()> {
    let so_far: f64 = db.meta(COST_KEY)?.and_then(|s| s.parse().ok()).unwrap_or(0.0);
    db.set_meta(COST_KEY, &(so_far + cost).to_string())
}

#[cfg(test)]
mod tests {
    use super::parse_tagged;

    #[test]
    fn tags_in_text_and_json() {
        assert_eq!(parse_tagged("x\nDESCRIPTION: raise lr\nHYPOTHESIS: faster", "DESCRIPTION:").as_deref(), Some("raise lr"));
        assert_eq!(
            parse_tagged(r#"{"result":"done\nDESCRIPTION: swap relu\nHYPOTHESIS: h"}"#, "DESCRIPTION:").as_deref(),
            Some("swap relu")
        );
        assert_eq!(parse_tagged("nothing", "DESCRIPTION:"), None);
    }
}
