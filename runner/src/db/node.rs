//! The experiments (nodes): their statuses, how they are stored, and what changes them.

use anyhow::{Result, bail};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

use super::{Db, now};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Running,
    Keep,
    Discard,
    Crash,
    Rejected,
    Pruned,
    /// A result recorded by hand that no scorer of the run signed: kept, never compared.
    Unverified,
    /// Passed the keep rule, then failed the config's `checks_command`: measured, not kept.
    #[serde(rename = "checks_failed")]
    ChecksFailed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Keep => "keep",
            Status::Discard => "discard",
            Status::Crash => "crash",
            Status::Rejected => "rejected",
            Status::Pruned => "pruned",
            Status::Unverified => "unverified",
            Status::ChecksFailed => "checks_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "running" => Status::Running,
            "keep" => Status::Keep,
            "discard" => Status::Discard,
            "crash" => Status::Crash,
            "rejected" => Status::Rejected,
            "pruned" => Status::Pruned,
            "unverified" => Status::Unverified,
            "checks_failed" => Status::ChecksFailed,
            _ => return None,
        })
    }

    /// Crashed or refused: the change taught nothing about the metric.
    pub fn failed(self) -> bool {
        matches!(self, Status::Crash | Status::Rejected)
    }

    /// Not kept for a reason its results row names: a failure, or checks that failed.
    pub fn has_reason(self) -> bool {
        self.failed() || self == Status::ChecksFailed
    }

    pub fn finished(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }
}

/// One experiment.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: i64,
    pub parent: Option<i64>,
    pub hypothesis: String,
    pub description: String,
    /// Search proposer: `{"param": .., "value": ..}`.
    pub change: Option<Value>,
    pub commit: Option<String>,
    pub status: Status,
    pub metric: Option<f64>,
    pub metrics: Option<Value>,
    pub memory_mb: Option<f64>,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub platform: String,
    pub proposer: String,
    pub insight: String,
    pub finish_seq: Option<i64>,
    /// The results.tsv line written for this node (kept verbatim for reconciliation).
    pub result_row: Option<String>,
    pub jsonl: Option<String>,
    /// Process group of a running experiment, as databases from before the `jobs` table
    /// recorded it (to kill it after a runner crash).
    pub pid: Option<i64>,
    /// `tree record` input (manual proposer).
    pub recorded: Option<Value>,
}

impl Node {
    /// `n7`: the node's name in refs, worktrees and output.
    pub fn name(&self) -> String {
        node_name(self.id)
    }
}

pub fn node_name(id: i64) -> String {
    format!("n{id}")
}

/// Accepts `7` or `n7`.
pub fn parse_node_id(s: &str) -> Option<i64> {
    s.trim().trim_start_matches('n').parse().ok()
}

const NODE_COLS: &str = "id, parent, hypothesis, description, change, commit_id, status, metric, metrics, memory_mb, \
created_at, started_at, finished_at, platform, proposer, insight, finish_seq, result_row, jsonl, pid, recorded";

fn json_col(s: Option<String>) -> Option<Value> {
    s.and_then(|s| serde_json::from_str(&s).ok())
}

fn row_to_node(r: &rusqlite::Row<'_>) -> rusqlite::Result<Node> {
    let status: String = r.get(6)?;
    Ok(Node {
        id: r.get(0)?,
        parent: r.get(1)?,
        hypothesis: r.get(2)?,
        description: r.get(3)?,
        change: json_col(r.get(4)?),
        commit: r.get(5)?,
        status: Status::parse(&status).unwrap_or(Status::Crash),
        metric: r.get(7)?,
        metrics: json_col(r.get(8)?),
        memory_mb: r.get(9)?,
        created_at: r.get(10)?,
        started_at: r.get(11)?,
        finished_at: r.get(12)?,
        platform: r.get(13)?,
        proposer: r.get(14)?,
        insight: r.get(15)?,
        finish_seq: r.get(16)?,
        result_row: r.get(17)?,
        jsonl: r.get(18)?,
        pid: r.get(19)?,
        recorded: json_col(r.get(20)?),
    })
}

/// What a finished node records, in one transaction.
pub struct Finish<'a> {
    pub status: Status,
    pub metric: Option<f64>,
    pub metrics: Option<&'a Value>,
    pub memory_mb: Option<f64>,
    pub insight: &'a str,
    pub result_row: Option<&'a str>,
    pub jsonl: Option<&'a str>,
}

impl Db {
    pub fn insert_node(
        &self,
        parent: Option<i64>,
        hypothesis: &str,
        description: &str,
        change: Option<&Value>,
        proposer: &str,
        platform: &str,
    ) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO nodes(parent, hypothesis, description, change, status, created_at, platform, proposer)
             VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7)",
            params![parent, hypothesis, description, change.map(|c| c.to_string()), now(), platform, proposer],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn node(&self, id: i64) -> Result<Option<Node>> {
        Ok(self
            .conn
            .query_row(&format!("SELECT {NODE_COLS} FROM nodes WHERE id = ?1"), [id], row_to_node)
            .optional()?)
    }

    pub fn require_node(&self, id: i64) -> Result<Node> {
        match self.node(id)? {
            Some(n) => Ok(n),
            None => Err(crate::errors::usage(format!("node n{id} does not exist (see `autoresearch tree list`)"))),
        }
    }

    pub fn nodes(&self) -> Result<Vec<Node>> {
        let mut st = self.conn.prepare(&format!("SELECT {NODE_COLS} FROM nodes ORDER BY id"))?;
        let rows = st.query_map([], row_to_node)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn set_text(&self, id: i64, column: &str, value: &str) -> Result<()> {
        let allowed = ["hypothesis", "description", "insight", "commit_id", "proposer"];
        if !allowed.contains(&column) {
            bail!("internal: column {column} is not settable");
        }
        self.conn.execute(&format!("UPDATE nodes SET {column} = ?1 WHERE id = ?2"), params![value, id])?;
        Ok(())
    }

    /// Marks a node running; a start already recorded (a run by `tree exec`) is kept.
    pub fn set_running(&self, id: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE nodes SET status = 'running', started_at = COALESCE(started_at, ?1) WHERE id = ?2",
            params![now(), id],
        )?;
        Ok(())
    }

    /// Records when a node's first run started, unless a start is recorded already.
    pub fn set_started(&self, id: i64, at: f64) -> Result<()> {
        self.conn.execute("UPDATE nodes SET started_at = COALESCE(started_at, ?1) WHERE id = ?2", params![at, id])?;
        Ok(())
    }

    pub fn set_status(&self, id: i64, status: Status) -> Result<()> {
        self.conn.execute("UPDATE nodes SET status = ?1 WHERE id = ?2", params![status.as_str(), id])?;
        Ok(())
    }

    /// Stores a `tree record` result and, when given, the lesson learned, in one transaction.
    pub fn set_recorded(&mut self, id: i64, value: &Value, insight: Option<&str>) -> Result<()> {
        let tx = self.write_transaction()?;
        let n = tx.execute("UPDATE nodes SET recorded = ?1 WHERE id = ?2", params![value.to_string(), id])?;
        if n == 0 {
            return Err(crate::errors::usage(format!("node n{id} does not exist (see `autoresearch tree list`)")));
        }
        if let Some(text) = insight {
            tx.execute("UPDATE nodes SET insight = ?1 WHERE id = ?2", params![text, id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Replaces a node's insight (the lesson learned), in a transaction that checks the node exists.
    pub fn set_insight(&mut self, id: i64, text: &str) -> Result<()> {
        let tx = self.write_transaction()?;
        let n = tx.execute("UPDATE nodes SET insight = ?1 WHERE id = ?2", params![text, id])?;
        if n == 0 {
            return Err(crate::errors::usage(format!("node n{id} does not exist (see `autoresearch tree list`)")));
        }
        tx.commit()?;
        Ok(())
    }

    /// A finished node's value after more runs of it (a candidate's test ran the best again):
    /// the mean of its successful runs, and the same runs in its summary's `runs`.
    pub fn set_mean_of_runs(&mut self, id: i64) -> Result<Option<f64>> {
        let tx = self.write_transaction()?;
        let runs: Vec<f64> = {
            let mut st = tx.prepare("SELECT metric FROM runs WHERE node = ?1 AND outcome = 'ok' AND metric IS NOT NULL ORDER BY id")?;
            st.query_map([id], |r| r.get::<_, f64>(0))?.collect::<rusqlite::Result<_>>()?
        };
        if runs.is_empty() {
            return Ok(None);
        }
        let mean = runs.iter().sum::<f64>() / runs.len() as f64;
        let stored: Option<String> = tx.query_row("SELECT metrics FROM nodes WHERE id = ?1", [id], |r| r.get(0))?;
        let mut metrics = json_col(stored).unwrap_or_else(|| serde_json::json!({}));
        if let Value::Object(m) = &mut metrics {
            m.insert("runs".into(), serde_json::json!(runs));
        }
        tx.execute("UPDATE nodes SET metric = ?1, metrics = ?2 WHERE id = ?3", params![mean, metrics.to_string(), id])?;
        tx.commit()?;
        Ok(Some(mean))
    }

    /// Marks a node finished, in one transaction; returns its finish sequence number.
    /// An insight already set (`tree insight`, `tree record --insight`) is kept, the runner's after it.
    pub fn finish(&mut self, id: i64, f: &Finish<'_>) -> Result<i64> {
        let tx = self.write_transaction()?;
        let seq: i64 = tx.query_row("SELECT COALESCE(MAX(finish_seq), 0) + 1 FROM nodes", [], |r| r.get(0))?;
        tx.execute(
            "UPDATE nodes SET status = ?1, metric = ?2, metrics = ?3, memory_mb = ?4,
             insight = CASE WHEN insight = '' THEN ?5 WHEN ?5 = '' THEN insight ELSE insight || char(10) || ?5 END,
             result_row = ?6, jsonl = ?7, finish_seq = ?8, finished_at = ?9, pid = NULL WHERE id = ?10",
            params![
                f.status.as_str(),
                f.metric,
                f.metrics.map(|m| m.to_string()),
                f.memory_mb,
                f.insight,
                f.result_row,
                f.jsonl,
                seq,
                now(),
                id
            ],
        )?;
        tx.commit()?;
        Ok(seq)
    }

    /// Deletes a node and its runs (refuses when it has children).
    pub fn delete_node(&mut self, id: i64) -> Result<()> {
        let tx = self.write_transaction()?;
        let children: i64 = tx.query_row("SELECT COUNT(*) FROM nodes WHERE parent = ?1", [id], |r| r.get(0))?;
        if children > 0 {
            return Err(crate::errors::usage(format!(
                "node n{id} has {children} children: delete them first or use --recursive"
            )));
        }
        tx.execute("DELETE FROM runs WHERE node = ?1", [id])?;
        tx.execute("DELETE FROM jobs WHERE node = ?1", [id])?;
        tx.execute("DELETE FROM nodes WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }
}
