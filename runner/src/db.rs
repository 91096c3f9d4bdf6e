//! The experiment tree in SQLite (`.autoresearch/<tag>/tree.db`), written in transactions.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;
use serde_json::Value;

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

pub struct Db {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY,
    parent INTEGER REFERENCES nodes(id),
    hypothesis TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    change TEXT,
    commit_id TEXT,
    status TEXT NOT NULL,
    metric REAL,
    metrics TEXT,
    memory_mb REAL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    platform TEXT NOT NULL DEFAULT '',
    proposer TEXT NOT NULL DEFAULT '',
    insight TEXT NOT NULL DEFAULT '',
    finish_seq INTEGER UNIQUE,
    result_row TEXT,
    jsonl TEXT,
    pid INTEGER,
    recorded TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    node INTEGER NOT NULL REFERENCES nodes(id),
    seed INTEGER NOT NULL,
    batch_scale REAL,
    exit_code INTEGER,
    outcome TEXT NOT NULL,
    metric REAL,
    seconds REAL NOT NULL,
    log TEXT NOT NULL,
    attempt TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS jobs (
    node INTEGER NOT NULL REFERENCES nodes(id),
    attempt TEXT NOT NULL,
    seed INTEGER NOT NULL,
    batch_scale REAL NOT NULL,
    handle TEXT NOT NULL,
    started_at REAL NOT NULL,
    PRIMARY KEY (node, attempt)
);
-- The held-out split's scores of the baseline and of kept nodes: never shown to a proposer.
CREATE TABLE IF NOT EXISTS heldout (
    node INTEGER PRIMARY KEY REFERENCES nodes(id),
    scores TEXT NOT NULL
);
";

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

const NODE_COLS: &str = "id, parent, hypothesis, description, change, commit_id, status, metric, metrics, memory_mb, \
created_at, started_at, finished_at, platform, proposer, insight, finish_seq, result_row, jsonl, pid, recorded";

/// SQL: the row's attempt is a run of the best that the test of node ?1 asked for (?2 is
/// [`asked_by`] of it).
const ASKED_BY: &str = "substr(attempt, 1, length(?2)) = ?2";

/// The attempt names of the runs of the best that node `id`'s test asks for start with this.
fn asked_by(id: i64) -> String {
    crate::layout::attempt::asked_by(&node_name(id))
}

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
    /// A transaction that takes the write lock when it begins. A deferred one reads first and
    /// upgrades at its first write; in WAL mode that upgrade fails at once with "database is
    /// locked" (no busy wait) when another connection (the loop thread, a worker) committed in
    /// between, which a resumed parallel run hit.
    fn write_transaction(&mut self) -> rusqlite::Result<Transaction<'_>> {
        self.conn.transaction_with_behavior(TransactionBehavior::Immediate)
    }

    /// The database of the run `cfg.tag`; a repository-state error naming the runs there are
    /// when it has none (`tree`, `report`, `watch`).
    pub fn open_run(root: &Path, cfg: &crate::config::ResearchConfig) -> Result<Db> {
        let paths = crate::layout::Paths::new(root, cfg);
        if !paths.db.exists() {
            let runs: Vec<String> = std::fs::read_dir(root.join(".autoresearch"))
                .map(|rd| rd.flatten().filter(|e| e.path().join("tree.db").exists()).filter_map(|e| e.file_name().to_str().map(str::to_string)).collect())
                .unwrap_or_default();
            return Err(crate::errors::repo_state(format!(
                "no run with tag `{}` here ({} is missing); runs: {} (pass --tag)",
                cfg.tag,
                paths.db.display(),
                if runs.is_empty() { "none, start one with `autoresearch run`".into() } else { runs.join(", ") }
            )));
        }
        Db::open(&paths.db)
    }

    /// The run's database opened to read only (`serve`): it can write nothing, not even the
    /// schema. WAL readers never block the runner's writes.
    pub fn open_read_only(path: &Path) -> Result<Db> {
        use rusqlite::OpenFlags;
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("opening database {} to read", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Db { conn })
    }

    /// A short text that changes whenever the tree does: a node starts or finishes, a run
    /// starts or ends, the noise or the held-out scores move. A live view redraws when it does.
    pub fn fingerprint(&self) -> Result<String> {
        // Status and insight by their lengths (a running node ends kept, discarded, ...; a lesson
        // is added), values by their sum (the best's mean moves when it runs again).
        let nodes: (i64, i64, i64, f64, f64) = self.conn.query_row(
            "SELECT COUNT(*), COALESCE(MAX(finish_seq), 0), COALESCE(SUM((LENGTH(status) + 31 * LENGTH(insight)) * id), 0), COALESCE(MAX(started_at), 0), COALESCE(SUM(metric), 0) FROM nodes",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
        let runs: i64 = self.conn.query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))?;
        let jobs: (i64, f64) = self.conn.query_row("SELECT COUNT(*), COALESCE(MAX(started_at), 0) FROM jobs", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let heldout: i64 = self.conn.query_row("SELECT COUNT(*) FROM heldout", [], |r| r.get(0))?;
        Ok(format!("{}.{}.{}.{}.{}-{runs}-{}.{}-{heldout}", nodes.0, nodes.1, nodes.2, nodes.3, nodes.4, jobs.0, jobs.1))
    }

    pub fn open(path: &Path) -> Result<Db> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("opening database {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA).with_context(|| format!("creating the schema in {}", path.display()))?;
        // Databases from before runs had attempts.
        let has_attempt: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = 'attempt'")?
            .exists([])?;
        if !has_attempt {
            conn.execute_batch("ALTER TABLE runs ADD COLUMN attempt TEXT NOT NULL DEFAULT ''")?;
        }
        Ok(Db { conn })
    }

    /// The config the run started with (stored at its start), so that a later edit of
    /// configs/research.toml, or a flag given to that start only, does not change how its
    /// experiments run or are judged; `fallback` where the database holds none.
    pub fn run_config(&self, fallback: &crate::config::ResearchConfig) -> Result<crate::config::ResearchConfig> {
        let stored = match self.meta("config")? {
            Some(text) => match serde_json::from_str::<crate::config::ResearchConfig>(&text) {
                Ok(cfg) => Some(cfg),
                Err(e) => {
                    // Written by another version: say so rather than pass today's settings off
                    // as the run's.
                    eprintln!(
                        "note: {}: the run's stored config does not parse ({e}); using the current config and flags instead; the autoresearch version that made the run reads its own settings",
                        self.conn.path().unwrap_or("the tree database")
                    );
                    None
                }
            },
            None => None,
        };
        let mut cfg = stored.unwrap_or_else(|| fallback.clone());
        if cfg.tag.is_empty() {
            cfg.tag = fallback.tag.clone();
        }
        Ok(cfg)
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

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

    /// The noise of the run so far: the successful runs pooled by node and device batch scale
    /// (each group is one configuration measured several times: the baseline's seeds, a
    /// candidate's extra runs).
    pub fn noise(&self) -> Result<crate::keep::Noise> {
        let mut st = self.conn.prepare("SELECT node, COALESCE(batch_scale, 1.0), metric FROM runs WHERE outcome = 'ok' AND metric IS NOT NULL ORDER BY node, id")?;
        let mut groups: std::collections::BTreeMap<(i64, String), Vec<f64>> = std::collections::BTreeMap::new();
        let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, f64>(1)?, r.get::<_, f64>(2)?)))?;
        for row in rows {
            let (node, scale, metric) = row?;
            groups.entry((node, format!("{scale}"))).or_default().push(metric);
        }
        Ok(crate::keep::pooled(&groups.into_values().collect::<Vec<_>>()))
    }

    /// Stores a node's held-out scores (the baseline's seeds, or a kept node's held-out run).
    pub fn set_heldout(&self, node: i64, scores: &[f64]) -> Result<()> {
        self.conn.execute("INSERT OR REPLACE INTO heldout (node, scores) VALUES (?1, ?2)", rusqlite::params![node, serde_json::to_string(scores)?])?;
        Ok(())
    }

    /// Every stored held-out score, by node.
    pub fn heldout(&self) -> Result<std::collections::BTreeMap<i64, Vec<f64>>> {
        let mut st = self.conn.prepare("SELECT node, scores FROM heldout")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = std::collections::BTreeMap::new();
        for row in rows {
            let (node, text) = row?;
            out.insert(node, serde_json::from_str(&text).unwrap_or_default());
        }
        Ok(out)
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

/// Unix time in seconds.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `2025-11-25T12:34:56Z` for a unix time.
pub fn iso8601(t: f64) -> String {
    let secs = t.max(0.0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_764_073_800.0), "2025-11-25T12:30:00Z");
    }

    #[test]
    fn finish_is_sequenced() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("t.db")).unwrap();
        let a = db.insert_node(None, "", "baseline", None, "search", "cpu").unwrap();
        let b = db.insert_node(Some(a), "h", "d", None, "search", "cpu").unwrap();
        let f = Finish { status: Status::Keep, metric: Some(1.0), metrics: None, memory_mb: None, insight: "", result_row: Some("r"), jsonl: None };
        assert_eq!(db.finish(b, &f).unwrap(), 1);
        assert_eq!(db.finish(a, &f).unwrap(), 2);
        assert!(db.delete_node(a).is_err());
        db.delete_node(b).unwrap();
        assert_eq!(db.nodes().unwrap().len(), 1);
    }

    /// A run of the best that a candidate's test asked for is recorded under the best, and is
    /// the candidate's in flight: `--resume` follows, kills or forgets it with the candidate.
    #[test]
    fn the_runs_of_the_best_a_candidate_asked_for_are_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("t.db")).unwrap();
        let a = db.insert_node(None, "", "baseline", None, "search", "cpu").unwrap();
        let b = db.insert_node(Some(a), "h", "d", None, "search", "cpu").unwrap();
        let job = |node, attempt: &str| Job { node, attempt: attempt.into(), seed: 1, batch_scale: 1.0, handle: "local:1".into(), started_at: 0.0 };
        db.set_job(&job(a, "0")).unwrap();
        db.set_job(&job(a, &crate::layout::attempt::again(&node_name(b), 1))).unwrap();
        db.set_job(&job(a, &crate::layout::attempt::again(&node_name(b + 10), 1))).unwrap();
        let attempts = |n| db.jobs(Some(n)).unwrap().into_iter().map(|j| (j.node, j.attempt)).collect::<Vec<_>>();
        assert_eq!(attempts(b), [(a, format!("again-{}-1", node_name(b)))], "n{b}1 and n{b}0 are not n{b}'s");
        assert_eq!(attempts(a).len(), 3, "all three are recorded under the best");
        db.clear_jobs(b).unwrap();
        assert!(attempts(b).is_empty());
        assert_eq!(attempts(a).len(), 2, "the best's own jobs and another candidate's stay");
        for (node, attempt, outcome) in [(a, format!("again-{}-2", node_name(b)), "interrupted"), (a, "1".to_string(), "interrupted"), (a, format!("again-{}-1", node_name(b)), "ok")] {
            let run = Run { node, attempt, seed: 1, batch_scale: Some(1.0), exit_code: None, outcome: outcome.into(), metric: Some(2.0), seconds: 1.0, log: String::new() };
            db.insert_run(&run).unwrap();
        }
        db.forget_interrupted_runs(b).unwrap();
        let left: Vec<String> = db.runs(a).unwrap().into_iter().map(|r| r.attempt).collect();
        assert_eq!(left, ["1".to_string(), format!("again-{}-1", node_name(b))], "only b's interrupted run of the best is forgotten");
    }

    /// What a live view redraws on: each change of the tree moves the fingerprint, and a
    /// read-only connection sees the runner's commits.
    #[test]
    fn the_fingerprint_moves_with_every_change_a_view_shows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut db = Db::open(&path).unwrap();
        let reader = Db::open_read_only(&path).unwrap();
        let mut seen = vec![reader.fingerprint().unwrap()];
        let mut moved = |what: &str| {
            let f = reader.fingerprint().unwrap();
            assert!(!seen.contains(&f), "{what}: {f} seen before");
            seen.push(f);
        };
        let a = db.insert_node(None, "", "baseline", None, "baseline", "cpu").unwrap();
        moved("a node");
        db.set_running(a).unwrap();
        moved("running");
        db.set_job(&Job { node: a, attempt: "0".into(), seed: 1, batch_scale: 1.0, handle: "local:1".into(), started_at: 1.0 }).unwrap();
        moved("a run started");
        db.insert_run(&Run { node: a, attempt: "0".into(), seed: 1, batch_scale: Some(1.0), exit_code: Some(0), outcome: "ok".into(), metric: Some(2.0), seconds: 1.0, log: String::new() }).unwrap();
        moved("a run ended");
        db.finish(a, &Finish { status: Status::Keep, metric: Some(2.0), metrics: None, memory_mb: None, insight: "", result_row: None, jsonl: None }).unwrap();
        moved("finished");
        db.set_insight(a, "a lesson").unwrap();
        moved("an insight");
        db.set_heldout(a, &[2.5]).unwrap();
        moved("held-out scores");
        assert!(reader.set_meta("x", "y").is_err(), "the reader writes nothing");
    }

    #[test]
    fn insight_is_set_and_kept_by_finish() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("t.db")).unwrap();
        let a = db.insert_node(None, "", "baseline", None, "search", "cpu").unwrap();
        db.set_insight(a, "lr 0.04 is the sweet spot").unwrap();
        assert_eq!(db.require_node(a).unwrap().insight, "lr 0.04 is the sweet spot");
        let f = Finish { status: Status::Keep, metric: Some(1.0), metrics: None, memory_mb: None, insight: "recorded; gain 0.1", result_row: None, jsonl: None };
        db.finish(a, &f).unwrap();
        assert_eq!(db.require_node(a).unwrap().insight, "lr 0.04 is the sweet spot\nrecorded; gain 0.1");
        let err = db.set_insight(99, "x").unwrap_err();
        assert!(err.to_string().contains("n99"), "{err}");
        assert_eq!(crate::errors::exit_code_of(&err), crate::errors::code::USAGE);
        db.set_recorded(a, &serde_json::json!({"metric": 1.0}), Some("second lesson")).unwrap();
        let n = db.require_node(a).unwrap();
        assert_eq!(n.insight, "second lesson");
        assert_eq!(n.recorded.unwrap()["metric"], 1.0);
        assert!(db.set_recorded(99, &serde_json::json!({}), None).is_err());
    }
}
