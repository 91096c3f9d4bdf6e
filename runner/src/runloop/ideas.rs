//! Queued ideas: nodes a person added with `tree add`, which go before the proposer's own once
//! their parent has run. One with a commit runs as it is, or is decided from the result a person
//! recorded (or `tree exec` ran); one without is implemented by the proposer when it can.

use anyhow::{Context, Result};

use super::Loop;
use crate::db::{Node, Status};
use crate::git::Git;
use crate::proposer;
use crate::tree;
use crate::runloop::worker::Task;

impl Loop<'_> {
    /// Ideas queued with `tree add` go before the proposer's own, oldest first, once their
    /// parent has run: one with a commit (`tree sync`) runs as it is, or is concluded when a
    /// person recorded its result (`tree record`); one without is implemented by the proposer
    /// when it can (`adopt`). An idea a person has a worktree for, and no commit yet, waits.
    /// Some(started) when an idea was taken.
    pub(super) fn take_idea(&mut self, prop: &mut dyn proposer::Proposer, best: &Node, iteration: u64) -> Result<Option<bool>> {
        let nodes = self.db.nodes()?;
        let ideas = nodes.iter().filter(|n| tree::is_idea(n) && n.status == Status::Pending && !self.in_flight.contains(&n.id));
        for idea in ideas {
            let Some(parent) = idea.parent.and_then(|p| nodes.iter().find(|n| n.id == p)) else { continue };
            if !matches!(parent.status, Status::Keep | Status::Discard) || parent.commit.is_none() {
                continue;
            }
            let persons_worktree = self.git.worktree_head(self.tag(), &idea.name())?.is_some();
            match (&idea.commit, &idea.recorded) {
                (Some(_), Some(_)) => return self.conclude_recorded_idea(idea, parent).map(|_| Some(true)),
                (Some(_), None) if !persons_worktree => return self.run_synced_idea(prop, idea, parent).map(|_| Some(true)),
                (None, None) if !persons_worktree => {
                    let ctx = self.proposer_ctx(best.id, iteration);
                    if let Some(plan) = prop.adopt(&ctx, idea)? {
                        self.progress.line(&format!("{}: taking up the queued idea \"{}\"", idea.name(), idea.description));
                        return self.experiment(prop, &plan, best, iteration, Some(idea.clone())).map(Some);
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// A person's experiment, committed and recorded: guarded on its commit, then decided.
    fn conclude_recorded_idea(&mut self, idea: &Node, parent: &Node) -> Result<()> {
        let (p, c) = (Git::oid(parent.commit.as_deref().unwrap_or_default())?, Git::oid(idea.commit.as_deref().unwrap_or_default())?);
        let best = self.current_best()?.context("no best node")?;
        if let Some(reason) = crate::guard::check_commit(self.git, self.cfg, p, c, &self.ro_hashes)? {
            self.reject(idea, &reason, Some(&best))?;
            return Ok(());
        }
        let best_value = best.metric.context("the best node has no metric")?;
        if tree::ran_by_tree_exec(idea) {
            // Its run 0 is the loop's (`tree exec`): the worker decides, with the runs the keep
            // rule asks for. From here the loop owns the node, as a synced idea's: it makes (or
            // takes over) its worktree and removes it, and resume runs it again.
            self.db.set_text(idea.id, "proposer", &self.cfg.proposer.to_string())?;
            let wt = match self.git.worktree_head(self.tag(), &idea.name())? {
                Some(_) => self.git.worktree_path(self.tag(), &idea.name()),
                None => self.git.add_worktree(self.tag(), &idea.name(), c)?,
            };
            self.db.set_running(idea.id)?;
            let node = self.db.require_node(idea.id)?;
            self.progress.line(&format!("{}: deciding the queued change \"{}\" from its run by `tree exec`", node.name(), node.description));
            self.spawn(node, wt, Task::Experiment { best: best_value, bar: self.bar(), best_node: best.id });
            return Ok(());
        }
        let d = self.recorded_and_decide(idea, best_value, self.bar())?;
        self.conclude(idea.id, Ok(d))
    }

    /// A person's change, committed with `tree sync` but not run: the loop runs it.
    fn run_synced_idea(&mut self, prop: &dyn proposer::Proposer, idea: &Node, parent: &Node) -> Result<()> {
        let (p, c) = (Git::oid(parent.commit.as_deref().unwrap_or_default())?, Git::oid(idea.commit.as_deref().unwrap_or_default())?);
        // From here the loop owns the node: it makes and removes its worktree, resume repairs it.
        self.db.set_text(idea.id, "proposer", &prop.kind().to_string())?;
        let node = self.db.require_node(idea.id)?;
        let wt = self.git.add_worktree(self.tag(), &node.name(), c)?;
        self.progress.line(&format!("{}: running the queued change \"{}\"", node.name(), node.description));
        let best = self.current_best()?.context("no best node")?;
        if let Some(reason) = crate::guard::check(self.git, self.cfg, p, c, &wt, &self.ro_hashes)? {
            self.reject(&node, &reason, Some(&best))?;
            self.git.remove_worktree(self.tag(), &node.name())?;
            return Ok(());
        }
        self.db.set_running(node.id)?;
        let node = self.db.require_node(node.id)?;
        let best_value = best.metric.context("the best node has no metric")?;
        self.spawn(node, wt, Task::Experiment { best: best_value, bar: self.bar(), best_node: best.id });
        Ok(())
    }
}
