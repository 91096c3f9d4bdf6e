//! Opening the database: the tables, and the columns that databases from before them lack.

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::Db;

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

impl Db {
    /// A transaction that takes the write lock when it begins. A deferred one reads first and
    /// upgrades at its first write; in WAL mode that upgrade fails at once with "database is
    /// locked" (no busy wait) when another connection (the loop thread, a worker) committed in
    /// between, which a resumed parallel run hit.
    pub(super) fn write_transaction(&mut self) -> rusqlite::Result<Transaction<'_>> {
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
}
