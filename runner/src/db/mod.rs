//! The experiment tree in SQLite (`.autoresearch/<tag>/tree.db`), written in transactions.
//!
//! `schema.rs` opens it (the tables, and the columns older databases lack); `node.rs` the
//! experiments and their statuses; `run.rs` the runs of an experiment and the jobs in flight;
//! `meta.rs` the run's stored settings; `measure.rs` what the runs measured together (the noise,
//! the held-out scores).

mod measure;
mod meta;
mod node;
mod run;
mod schema;

pub use node::{Finish, Node, Status, node_name, parse_node_id};
pub use run::{Job, Run};

use anyhow::Result;
use rusqlite::Connection;

pub struct Db {
    conn: Connection,
}

impl Db {
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
mod tests;
