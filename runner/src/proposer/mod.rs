//! Proposers: who decides the next change. `search` (built-in tree search over hparams.toml),
//! `command` (any shell command), `agent` (a headless coding agent), `manual` (a person).

pub mod agent;
pub mod command;
pub mod manual;
pub mod search;

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;

use crate::config::{ProposerKind, ResearchConfig};
use crate::db::{Db, Node};
use crate::git::Git;
use crate::tree::{ancestors, fmt_metric};

/// What the loop knows when it asks for a proposal.
pub struct Ctx<'a> {
    pub cfg: &'a ResearchConfig,
    pub git: &'a Git,
    pub db: &'a Db,
    pub tag: &'a str,
    /// The node the branch points at (the best so far).
    pub best: i64,
    /// 1-based experiment number after the baseline.
    pub iteration: u64,
    /// `.autoresearch/<tag>/`
    pub state_dir: &'a Path,
    pub results_file: PathBuf,
    /// The trainer table of the profile (`cpu` or `gpu`).
    pub class: &'a str,
}

/// The next experiment: which node to start from and what to try.
#[derive(Debug, Clone)]
pub struct Plan {
    pub parent: i64,
    pub hypothesis: String,
    pub description: String,
    pub change: Option<Value>,
    /// An idea queued with `tree add`, taken up by the loop: the change must implement it.
    pub idea: bool,
}

impl Plan {
    /// The plan for a queued idea (`tree add`): its parent, hypothesis and description.
    pub fn from_idea(idea: &Node) -> Option<Plan> {
        Some(Plan { parent: idea.parent?, hypothesis: idea.hypothesis.clone(), description: idea.description.clone(), change: None, idea: true })
    }
}

/// What applying a plan in the worktree did.
#[derive(Debug, Clone)]
pub enum Applied {
    /// Files changed (or will be, for `manual`); optional better description/hypothesis.
    Done { description: Option<String>, hypothesis: Option<String> },
    /// The proposer failed or declined (its reason); the node is dropped.
    Failed(String),
}

pub trait Proposer {
    fn kind(&self) -> ProposerKind;
    /// Which node to build on and what to try; None when there is nothing left to try.
    fn plan(&mut self, ctx: &Ctx<'_>) -> Result<Option<Plan>>;
    /// Makes the change in `worktree`, checked out at the parent's commit.
    fn apply(&mut self, ctx: &Ctx<'_>, node: &Node, plan: &Plan, worktree: &Path) -> Result<Applied>;
    /// False when someone else runs the experiment and records it (`manual`).
    fn executes(&self) -> bool {
        true
    }
    /// A plan that implements `idea` (a node queued with `tree add`), or None when this
    /// proposer can't (the idea then waits for a person or another proposer).
    fn adopt(&mut self, _ctx: &Ctx<'_>, _idea: &Node) -> Result<Option<Plan>> {
        Ok(None)
    }
}

pub fn build(cfg: &ResearchConfig, root: &Path) -> Result<Box<dyn Proposer>> {
    Ok(match cfg.proposer {
        ProposerKind::Search => Box::new(search::Search::load(cfg, root)?),
        ProposerKind::Command => Box::new(command::CommandProposer),
        ProposerKind::Agent => Box::new(agent::Agent),
        ProposerKind::Manual => Box::new(manual::Manual),
    })
}

/// Reads `AUTORESEARCH_PROPOSAL_FILE`: the description on line 1, the hypothesis below.
pub fn read_proposal_file(path: &Path) -> (Option<String>, Option<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    let desc = lines.next().map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    let rest = lines.collect::<Vec<_>>().join(" ").trim().to_string();
    (desc, if rest.is_empty() { None } else { Some(rest) })
}

/// Env for proposer commands.
pub fn proposer_env(ctx: &Ctx<'_>, node: &Node, worktree: &Path, proposal_file: &Path) -> Vec<(String, String)> {
    vec![
        ("AUTORESEARCH_WORKTREE".into(), worktree.display().to_string()),
        ("AUTORESEARCH_REPO".into(), ctx.git.root.display().to_string()),
        ("AUTORESEARCH_TAG".into(), ctx.tag.to_string()),
        ("AUTORESEARCH_NODE".into(), node.name()),
        ("AUTORESEARCH_PARENT".into(), node.parent.map(crate::db::node_name).unwrap_or_default()),
        ("AUTORESEARCH_ITERATION".into(), ctx.iteration.to_string()),
        ("AUTORESEARCH_PROPOSAL_FILE".into(), proposal_file.display().to_string()),
        ("AUTORESEARCH_RESULTS".into(), ctx.results_file.display().to_string()),
        ("AUTORESEARCH_SCOPE".into(), ctx.cfg.scope.join(" ")),
        // Set when the experiment implements an idea queued with `tree add`.
        ("AUTORESEARCH_DESCRIPTION".into(), node.description.clone()),
        ("AUTORESEARCH_HYPOTHESIS".into(), node.hypothesis.clone()),
    ]
}

/// Short summary of the tree for prompts and logs: the best path and the recent experiments.
pub fn tree_digest(nodes: &[Node], best: i64, recent: usize) -> String {
    let mut s = String::from("Best path (root -> best):\n");
    for n in ancestors(nodes, best).iter().rev() {
        s.push_str(&format!("  {} {} {}: {}{}\n", n.name(), n.status.as_str(), fmt_metric(n.metric), n.description, insight_note(n)));
    }
    let mut done: Vec<&Node> = nodes.iter().filter(|n| n.finish_seq.is_some()).collect();
    done.sort_by_key(|n| n.finish_seq);
    s.push_str("Recent experiments (oldest first):\n");
    for n in done.iter().rev().take(recent).rev() {
        s.push_str(&format!(
            "  {} (parent {}) {} {}: {}{}\n",
            n.name(),
            n.parent.map(crate::db::node_name).unwrap_or_else(|| "-".into()),
            n.status.as_str(),
            fmt_metric(n.metric),
            n.description,
            insight_note(n)
        ));
    }
    s
}

/// ` [insight: first line]`, or nothing when the node has no insight.
fn insight_note(n: &Node) -> String {
    match n.insight.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(l) => format!(" [insight: {l}]"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Db, Finish, Status};

    #[test]
    fn digest_lists_insights_of_best_path_and_recent_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("t.db")).unwrap();
        let f = |s| Finish { status: s, metric: Some(1.0), metrics: None, memory_mb: None, insight: "", result_row: None, jsonl: None };
        let a = db.insert_node(None, "", "baseline", None, "baseline", "cpu").unwrap();
        db.finish(a, &f(Status::Keep)).unwrap();
        let b = db.insert_node(Some(a), "", "raise lr", None, "agent", "cpu").unwrap();
        db.finish(b, &f(Status::Keep)).unwrap();
        db.set_insight(b, "higher lr helps up to 0.04\nsecond line").unwrap();
        let c = db.insert_node(Some(b), "", "relu^2 -> gelu", None, "agent", "cpu").unwrap();
        db.finish(c, &f(Status::Discard)).unwrap();
        db.set_insight(c, "gelu is slower per step").unwrap();
        let d = tree_digest(&db.nodes().unwrap(), b, 1);
        let (best_path, recent) = d.split_once("Recent experiments").unwrap();
        assert!(best_path.contains("n2 keep 1.000000: raise lr [insight: higher lr helps up to 0.04]"), "{d}");
        assert!(!d.contains("second line"), "{d}");
        assert!(recent.contains("n3 (parent n2) discard 1.000000: relu^2 -> gelu [insight: gelu is slower per step]"), "{d}");
    }
}
