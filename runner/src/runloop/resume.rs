//! `run --resume`: repairs what a kill left between the loop's steps, from the database
//! (orphaned processes, unfinished nodes, worktrees, refs, the branch, lost rows), runs an
//! interrupted experiment again once, and follows Slurm jobs that are still running.

use anyhow::Result;

use super::Loop;
use crate::db::{Db, Node, Status};
use crate::git::Git;
use crate::results;
use crate::tree;
use crate::runloop::worker::{Decision, Task};

impl Loop<'_> {
    /// Repairs what a kill left: orphaned experiment processes, unfinished nodes, worktrees,
    /// missing refs, the branch, and results/JSONL rows. Nodes whose runs may still be going
    /// (Slurm jobs), or that have runs left to do, get a worker again.
    pub(super) fn recover(&mut self) -> Result<()> {
        let mut resumable = Vec::new();
        for n in self.db.nodes()? {
            // Finished nodes, and ideas planned with `tree add`, need nothing.
            if n.status.finished() || tree::is_idea(&n) {
                continue;
            }
            if let Some(n) = self.settle(n)? {
                resumable.push(n);
            }
        }
        // Worktrees of planned nodes belong to a person (`tree worktree`), and those of
        // followed jobs are in use: they stay.
        let mut keep: Vec<String> = self.db.nodes()?.iter().filter(|n| tree::is_idea(n)).map(|n| n.name()).collect();
        keep.extend(resumable.iter().map(|n| n.name()));
        for wt in self.git.cleanup_worktrees(self.tag(), &keep)? {
            self.progress.line(&format!("resume: removed worktree {wt}"));
        }
        let nodes = self.db.nodes()?;
        self.restore_refs(&nodes)?;
        self.reconcile_rows(&nodes)?;
        // Nodes with Slurm jobs to follow, and interrupted nodes to run again.
        for n in resumable {
            self.restart(n, &nodes)?;
        }
        Ok(())
    }

    /// An unfinished node after a kill: its orphaned processes are killed; it is returned to
    /// be resumed (Slurm jobs to follow, or a first interruption to run again), recorded as a
    /// crash (a second interruption, or nothing to follow), or deleted (it never got a commit).
    fn settle(&mut self, n: Node) -> Result<Option<Node>> {
        let jobs = self.db.jobs(Some(n.id))?;
        let mut orphans: Vec<i64> = jobs.iter().filter_map(|j| j.handle.strip_prefix("local:").and_then(|p| p.parse().ok())).collect();
        orphans.extend(n.pid);
        for pgid in orphans {
            if crate::process::kill_orphan_group(pgid) {
                self.progress.line(&format!("resume: killed the orphaned experiment of {} (process group {pgid})", n.name()));
            }
        }
        let followable = jobs.iter().any(|j| j.handle.starts_with("slurm:"));
        match &n.commit {
            Some(_) if n.status == Status::Running && followable => return Ok(Some(n)),
            // Interrupted for the first time (Ctrl-C, `stop`, kill -9): its idea is not lost,
            // it runs again from the same commit, keeping the runs that finished.
            Some(_) if n.status == Status::Running && self.reruns(&n)? == 0 => {
                self.db.set_meta(&rerun_key(&n), "1")?;
                self.db.forget_interrupted_runs(n.id)?;
                self.progress.line(&format!("resume: {} was interrupted; running it again from its commit", n.name()));
                return Ok(Some(n));
            }
            Some(_) => {
                let insight = if self.reruns(&n)? > 0 {
                    "interrupted twice: the runner stopped during this experiment and again during its re-run"
                } else {
                    "interrupted: the runner stopped during this experiment"
                };
                self.db.clear_jobs(n.id)?;
                self.finish_node(&n, &Decision::unmeasured(Status::Crash, insight), None)?;
                self.progress.line(&format!("resume: {} was left {}, recorded as crash", n.name(), n.status.as_str()));
            }
            None => {
                self.db.delete_node(n.id)?;
                self.git.delete_node_ref(self.tag(), &n.name())?;
            }
        }
        Ok(None)
    }

    /// Every node's ref at its commit, and the branch at the best's, as a kill may have left
    /// them behind.
    fn restore_refs(&self, nodes: &[Node]) -> Result<()> {
        for n in nodes {
            if let Some(c) = &n.commit {
                self.git.set_node_ref(self.tag(), &n.name(), Git::oid(c)?)?;
            }
        }
        if let Some(best) = tree::best(nodes)
            && let Some(c) = &best.commit
            && self.git.branch_tip(self.tag())?.map(|o| o.to_string()).as_deref() != Some(c.as_str())
        {
            self.git.set_branch(self.tag(), Git::oid(c)?, "autoresearch: resume")?;
            self.progress.line(&format!("resume: branch moved to the best experiment {}", best.name()));
        }
        Ok(())
    }

    /// A worker for a resumed node, in its worktree, against the best in `nodes`; an experiment
    /// gets none while no best has a metric to compare it with.
    fn restart(&mut self, n: Node, nodes: &[Node]) -> Result<()> {
        // The jobs run in this worktree: keep it as it is (re-creating it would pull the
        // directory out from under them); make it only if it is gone.
        let wt = match self.git.worktree_head(self.tag(), &n.name())? {
            Some(_) => self.git.worktree_path(self.tag(), &n.name()),
            None => self.git.add_worktree(self.tag(), &n.name(), Git::oid(n.commit.as_deref().unwrap_or_default())?)?,
        };
        let task = match (n.parent, tree::best(nodes).and_then(|b| b.metric)) {
            (None, _) => Task::Baseline,
            (Some(_), Some(best)) => Task::Experiment { best, bar: self.bar(), best_node: tree::best(nodes).map(|b| b.id).unwrap_or(0) },
            (Some(_), None) => return Ok(()),
        };
        if jobs_left_by_slurm(&self.db, n.id)? {
            self.progress.line(&format!("resume: {} has runs in flight, following them", n.name()));
        }
        self.spawn(n, wt, task);
        Ok(())
    }

    fn reconcile_rows(&self, nodes: &[Node]) -> Result<()> {
        let mut done: Vec<&Node> = nodes.iter().filter(|n| n.finish_seq.is_some()).collect();
        done.sort_by_key(|n| n.finish_seq);
        let rows: Vec<String> = done.iter().filter_map(|n| n.result_row.clone()).collect();
        let lines: Vec<String> = done.iter().filter_map(|n| n.jsonl.clone()).collect();
        let a = results::reconcile(&self.paths.results, Some(results::HEADER), &rows)?;
        let b = results::reconcile(&self.paths.jsonl, None, &lines)?;
        if a + b > 0 {
            self.progress.line(&format!("resume: restored {a} results rows and {b} log lines"));
        }
        Ok(())
    }

    /// How many times `node` was started again after an interruption.
    pub(super) fn reruns(&self, node: &Node) -> Result<u32> {
        Ok(self.db.meta(&rerun_key(node))?.and_then(|s| s.parse().ok()).unwrap_or(0))
    }
}

/// The database key counting a node's re-runs after interruptions.
fn rerun_key(node: &Node) -> String {
    format!("reruns:{}", node.name())
}

/// Whether a node has runs that Slurm may still be running (they are followed, not restarted).
fn jobs_left_by_slurm(db: &Db, node: i64) -> Result<bool> {
    Ok(db.jobs(Some(node))?.iter().any(|j| j.handle.starts_with("slurm:")))
}
