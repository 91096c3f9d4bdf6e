//! What the runs measured together: the run's noise, and the held-out scores.

use anyhow::Result;

use super::Db;

impl Db {
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
}
