//! Starting work: the baseline, and one experiment from the proposer (its node, a worktree at
//! the parent's commit, the change, the commit, the guard, then a worker; for `manual`, the
//! result a person records). A proposal that produced nothing is dropped here.

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

use super::Loop;
use crate::db::{Node, Status};
use crate::git::Git;
use crate::proposer::{self, Applied, Plan};
use crate::tree;
use crate::runloop::worker::{Decision, Task};

impl Loop<'_> {
    /// The unmodified trainer, run `baseline_runs` times (noise-aware) to measure the noise.
    pub(super) fn start_baseline(&mut self) -> Result<()> {
        let tip = self.git.branch_tip(self.tag())?.context("the run branch disappeared")?;
        let id = self.db.insert_node(None, "the unmodified trainer", "baseline", None, "baseline", &self.platform)?;
        let node = self.db.require_node(id)?;
        self.db.set_text(id, "commit_id", &tip.to_string())?;
        self.git.set_node_ref(self.tag(), &node.name(), tip)?;
        self.db.set_running(id)?;
        let node = self.db.require_node(id)?;
        let wt = self.git.add_worktree(self.tag(), &node.name(), tip)?;
        self.spawn(node, wt, Task::Baseline);
        Ok(())
    }

    /// Prepares one experiment (a new node, or the queued `idea` it implements) and hands it to
    /// a worker (or, for `manual`, records it). Returns false when the proposer produced nothing
    /// usable.
    pub(super) fn experiment(&mut self, prop: &mut dyn proposer::Proposer, plan: &Plan, best: &Node, iteration: u64, idea: Option<Node>) -> Result<bool> {
        let parent = self.db.require_node(plan.parent)?;
        let parent_oid = Git::oid(parent.commit.as_deref().context("the parent node has no commit")?)?;
        let kind = prop.kind().to_string();
        let id = match &idea {
            Some(n) => {
                self.db.set_text(n.id, "proposer", &kind)?;
                n.id
            }
            None => self.db.insert_node(Some(parent.id), &plan.hypothesis, &plan.description, plan.change.as_ref(), &kind, &self.platform)?,
        };
        let node = self.db.require_node(id)?;
        let wt = self.git.add_worktree(self.tag(), &node.name(), parent_oid)?;
        let ctx = self.proposer_ctx(best.id, iteration);
        let applied = match prop.apply(&ctx, &node, plan, &wt) {
            Ok(a) => a,
            Err(e) => {
                self.drop_node(&node)?;
                return Err(e);
            }
        };
        let (description, hypothesis) = match applied {
            Applied::Failed(reason) => {
                self.drop_or_requeue(&node, idea.is_some())?;
                self.progress.line(&format!("{}: no proposal ({reason})", node.name()));
                return Ok(false);
            }
            Applied::Done { description, hypothesis } => {
                (description.unwrap_or_else(|| plan.description.clone()), hypothesis.unwrap_or_else(|| plan.hypothesis.clone()))
            }
        };
        self.db.set_text(id, "description", &description)?;
        self.db.set_text(id, "hypothesis", &hypothesis)?;
        let message = if hypothesis.is_empty() { description.clone() } else { format!("{description}\n\nHypothesis: {hypothesis}") };
        // A result recorded by `tree exec` names the commit it built and scored: that commit is
        // the node's, whatever the worktree holds now.
        let built = if prop.executes() { None } else { self.recorded_commit(id, parent_oid)? };
        let commit = match built {
            Some(c) => Some(c),
            None => self.git.commit_worktree(&wt, parent_oid, &message)?,
        };
        let Some(commit) = commit else {
            self.drop_or_requeue(&node, idea.is_some())?;
            self.progress.line(&format!("{}: no proposal (the change was empty)", node.name()));
            return Ok(false);
        };
        self.db.set_text(id, "commit_id", &commit.to_string())?;
        self.git.set_node_ref(self.tag(), &node.name(), commit)?;
        let node = self.db.require_node(id)?;
        if let Some(reason) = crate::guard::check(self.git, self.cfg, parent_oid, commit, &wt, &self.ro_hashes)? {
            let best = self.current_best()?;
            self.reject(&node, &reason, best.as_ref())?;
            self.git.remove_worktree(self.tag(), &node.name())?;
            return Ok(true);
        }
        self.db.set_running(id)?;
        let node = self.db.require_node(id)?;
        let best_value = best.metric.context("the best node has no metric")?;
        // A change run by `tree exec` made the loop's run 0: the worker goes on from it (more
        // runs where the keep rule asks for them) exactly as for the loop's own experiments.
        if prop.executes() || tree::ran_by_tree_exec(&node) {
            self.spawn(node, wt, Task::Experiment { best: best_value, bar: self.bar(), best_node: best.id });
        } else {
            let mut d = self.recorded_and_decide(&node, best_value, self.bar())?;
            crate::runloop::worker::apply_checks(self.cfg, &self.git.root, &wt, &node, &mut d)?;
            self.conclude(id, Ok(d))?;
        }
        Ok(true)
    }

    /// The commit a node's recorded result was built from (`tree exec`), when it descends from
    /// the node's parent; a record that names another commit is refused.
    fn recorded_commit(&self, id: i64, parent: git2::Oid) -> Result<Option<git2::Oid>> {
        let rec = self.db.require_node(id)?.recorded;
        let Some(c) = rec.as_ref().and_then(|r| r.get("commit")).and_then(Value::as_str) else { return Ok(None) };
        let oid = Git::oid(c)?;
        if oid != parent && self.git.repo.graph_descendant_of(oid, parent).unwrap_or(false) {
            Ok(Some(oid))
        } else {
            Err(anyhow!("n{id}'s recorded result names commit {c}, which does not descend from its parent's commit {parent}"))
        }
    }

    fn drop_node(&mut self, node: &Node) -> Result<()> {
        self.git.remove_worktree(self.tag(), &node.name())?;
        self.git.delete_node_ref(self.tag(), &node.name())?;
        self.db.delete_node(node.id)
    }

    /// A proposal that produced nothing: a new node is dropped; a queued idea is not lost but
    /// marked `crash` with the reason, so it isn't offered again and again.
    fn drop_or_requeue(&mut self, node: &Node, is_idea: bool) -> Result<()> {
        if !is_idea {
            return self.drop_node(node);
        }
        self.git.remove_worktree(self.tag(), &node.name())?;
        let best = self.current_best()?;
        self.finish_node(node, &Decision::unmeasured(Status::Crash, "the proposer could not implement this queued idea"), best.as_ref())
    }
}
