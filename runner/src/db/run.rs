//! The runs of an experiment (a node has several with noise runs or an OOM retry) and the
//! jobs in flight, found again after a runner crash.

use anyhow::Result;
use rusqlite::params;
use serde::Serialize;

use super::{Db, node_name};

/// One execution of a node's experiment (a node has several with noise runs or an OOM retry).
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub node: i64,
    /// Which run of the node: `0`, `1` (baseline seeds, confirmation), `0-oom` (the retry).
    pub attempt: String,
    pub seed: u64,
    pub batch_scale: Option<f64>,
    pub exit_code: Option<i32>,
    pub outcome: String,
    pub metric: Option<f64>,
    pub seconds: f64,
    pub log: String,
}

/// A run in flight: how to find it again after a runner crash (`local:<pgid>`, `slurm:<job id>`).
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub node: i64,
    pub attempt: String,
    pub seed: u64,
    pub batch_scale: f64,
    pub handle: String,
    pub started_at: f64,
}

/// SQL: the row's attempt is a run of the best that the test of node ?1 asked for (?2 is
/// [`asked_by`] of it).
const ASKED_BY: &str = "substr(attempt, 1, length(?2)) = ?2";

/// The attempt names of the runs of the best that node `id`'s test asks for start with this.
fn asked_by(id: i64) -> String {
    crate::layout::attempt::asked_by(&node_name(id))
}

impl Db {
    /// Records a finished run and forgets its job, in one transaction.
    pub fn insert_run(&mut self, run: &Run) -> Result<()> {
        let tx = self.write_transaction()?;
        tx.execute(
            "INSERT INTO runs(node, attempt, seed, batch_scale, exit_code, outcome, metric, seconds, log)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![run.node, run.attempt, run.seed as i64, run.batch_scale, run.exit_code, run.outcome, run.metric, run.seconds, run.log],
        )?;
        tx.execute("DELETE FROM jobs WHERE node = ?1 AND attempt = ?2", params![run.node, run.attempt])?;
        tx.commit()?;
        Ok(())
    }

    /// Remembers a run in flight (replacing an earlier handle of the same attempt).
    pub fn set_job(&self, job: &Job) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO jobs(node, attempt, seed, batch_scale, handle, started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![job.node, job.attempt, job.seed as i64, job.batch_scale, job.handle, job.started_at],
        )?;
        Ok(())
    }

    /// Forgets a node's runs that an interruption cut short, and its jobs, so that its worker
    /// starts those runs again (finished runs are kept and reused).
    /// Forgets a node's interrupted runs and its jobs, the runs of the best its test asked for
    /// among them, so that it runs them again.
    pub fn forget_interrupted_runs(&self, node: i64) -> Result<()> {
        self.conn.execute(
            &format!("DELETE FROM runs WHERE (node = ?1 OR {ASKED_BY}) AND outcome = 'interrupted'"),
            params![node, asked_by(node)],
        )?;
        self.clear_jobs(node)
    }

    /// Forgets a node's jobs, with those of the runs of the best its test asked for.
    pub fn clear_jobs(&self, node: i64) -> Result<()> {
        self.conn.execute(&format!("DELETE FROM jobs WHERE node = ?1 OR {ASKED_BY}"), params![node, asked_by(node)])?;
        Ok(())
    }

    /// Runs in flight, of one node (with the runs of the best its test asked for, which are
    /// recorded under the best) or (None) of all.
    pub fn jobs(&self, node: Option<i64>) -> Result<Vec<Job>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT node, attempt, seed, batch_scale, handle, started_at FROM jobs WHERE ?1 IS NULL OR node = ?1 OR {ASKED_BY} ORDER BY node, attempt"
        ))?;
        let rows = st.query_map(params![node, node.map(asked_by)], |r| {
            Ok(Job {
                node: r.get(0)?,
                attempt: r.get(1)?,
                seed: r.get::<_, i64>(2)? as u64,
                batch_scale: r.get(3)?,
                handle: r.get(4)?,
                started_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The metrics of a node's successful runs, in order.
    pub fn metrics_of(&self, node: i64) -> Result<Vec<f64>> {
        Ok(self.runs(node)?.into_iter().filter(|r| r.outcome == "ok").filter_map(|r| r.metric).collect())
    }

    pub fn runs(&self, node: i64) -> Result<Vec<Run>> {
        let mut st = self.conn.prepare(
            "SELECT node, seed, batch_scale, exit_code, outcome, metric, seconds, log, attempt FROM runs WHERE node = ?1 ORDER BY id",
        )?;
        let rows = st.query_map([node], |r| {
            Ok(Run {
                node: r.get(0)?,
                seed: r.get::<_, i64>(1)? as u64,
                batch_scale: r.get(2)?,
                exit_code: r.get(3)?,
                outcome: r.get(4)?,
                metric: r.get(5)?,
                seconds: r.get(6)?,
                log: r.get(7)?,
                attempt: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}
