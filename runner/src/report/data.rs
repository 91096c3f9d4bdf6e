//! The facts every view of a run is drawn from: its nodes, read once from the tree database,
//! and the run's own config (stored in the database at its start, so a later edit of
//! configs/research.toml does not change how an old run is judged).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::{Direction, ResearchConfig};
use crate::db::{Db, Node, Status};

pub struct Research {
    pub cfg: ResearchConfig,
    pub nodes: Vec<Node>,
    /// When the run started (database meta `started_at`), if recorded.
    pub started: Option<f64>,
    /// The held-out split's scores of the baseline and the kept nodes, by node.
    pub heldout: std::collections::BTreeMap<i64, Vec<f64>>,
    /// The noise pooled over every repeated run.
    pub noise: crate::keep::Noise,
}

/// One finished experiment in the order it finished (the chart's x axis).
pub struct Point<'a> {
    pub index: usize,
    pub node: &'a Node,
}

impl Research {
    /// Reads the nodes and the run's config; `fallback` is used when the database holds none.
    pub fn load(db: &Db, fallback: &ResearchConfig) -> anyhow::Result<Research> {
        let cfg = db.run_config(fallback)?;
        let started = db.meta("started_at")?.and_then(|s| s.parse().ok());
        Ok(Research { cfg, nodes: db.nodes()?, started, heldout: db.heldout()?, noise: db.noise()? })
    }

    #[cfg(test)]
    pub fn from_nodes(cfg: &ResearchConfig, nodes: &[Node], started: Option<f64>) -> Research {
        Research { cfg: cfg.clone(), nodes: nodes.to_vec(), started, heldout: Default::default(), noise: Default::default() }
    }

    /// The best node's held-out gain over the baseline's, with its standard error (from the
    /// spread of the baseline's held-out scores, else the pooled noise), when both have scores.
    pub fn heldout_gain(&self) -> Option<(f64, f64, usize, usize)> {
        let (b, best) = (self.baseline()?, self.best()?);
        let (hb, hk) = (self.heldout.get(&b.id)?, self.heldout.get(&best.id)?);
        let (mb, sb) = crate::keep::mean_std(hb);
        let (mk, _) = crate::keep::mean_std(hk);
        let sigma = if hb.len() >= 2 { sb } else { self.noise.sigma };
        let se = sigma * (1.0 / hb.len() as f64 + 1.0 / hk.len() as f64).sqrt();
        Some((self.direction().gain(mb, mk), se, hb.len(), hk.len()))
    }

    pub fn direction(&self) -> Direction {
        self.cfg.direction
    }

    pub fn node(&self, id: i64) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Finished nodes, in finishing order.
    pub fn finished(&self) -> Vec<Point<'_>> {
        let mut v: Vec<&Node> = self.nodes.iter().filter(|n| n.finish_seq.is_some()).collect();
        v.sort_by_key(|n| n.finish_seq);
        v.into_iter().enumerate().map(|(index, node)| Point { index, node }).collect()
    }

    /// Finished experiments: every finished node but the baseline (a root).
    pub fn experiments(&self) -> Vec<&Node> {
        self.finished().into_iter().map(|p| p.node).filter(|n| n.parent.is_some()).collect()
    }

    /// The first root with a metric.
    pub fn baseline(&self) -> Option<&Node> {
        self.finished().into_iter().map(|p| p.node).find(|n| n.parent.is_none() && n.metric.is_some())
    }

    pub fn best(&self) -> Option<&Node> {
        crate::tree::best(&self.nodes)
    }

    pub fn best_path(&self) -> Vec<&Node> {
        crate::tree::best_path(&self.nodes)
    }

    /// How much `n` improved on its parent (positive = better), when both have a metric.
    pub fn step_gain(&self, n: &Node) -> Option<f64> {
        let parent = self.node(n.parent?)?;
        Some(self.direction().gain(parent.metric?, n.metric?))
    }

    /// The metrics of a node's runs (the baseline's seeds, a candidate's confirmation runs),
    /// from its record in the experiment log.
    pub fn run_metrics(&self, n: &Node) -> Vec<f64> {
        let Some(rec) = record(n) else { return Vec::new() };
        rec.get("runs").and_then(Value::as_array).map(|runs| runs.iter().filter_map(|r| r.get("metric").and_then(Value::as_f64)).collect()).unwrap_or_default()
    }

    /// The throughput guard's look at a decided experiment (see `throughput`), from its record.
    pub fn throughput(&self, n: &Node) -> Option<Value> {
        record(n)?.get("throughput").filter(|t| t.is_object()).cloned()
    }

    /// The value a decided experiment had to reach to be kept: the best when it was decided,
    /// moved by the bar its keep rule set. None for the baseline, failures, and older runs that
    /// recorded no bar.
    pub fn needed(&self, n: &Node) -> Option<f64> {
        let rec = record(n)?;
        let (best, bar) = (rec.get("previous_best")?.as_f64()?, rec.get("bar")?.as_f64()?);
        Some(match self.direction() {
            Direction::Lower => best - bar,
            Direction::Higher => best + bar,
        })
    }

    /// Ideas added with `tree add` and not run yet.
    pub fn planned(&self) -> Vec<&Node> {
        self.nodes.iter().filter(|n| crate::tree::is_idea(n) && !n.status.finished()).collect()
    }

    pub fn count(&self, s: Status) -> usize {
        self.experiments().iter().filter(|n| n.status == s).count()
    }

    /// `1 keep, 5 discard, 0 crash, 0 rejected, 0 unverified, 0 pruned`: the experiments by
    /// outcome.
    /// (`checks_failed` only in a run that has some: most runs have no checks.)
    pub fn tally(&self) -> String {
        let parts: Vec<String> = [Status::Keep, Status::Discard, Status::ChecksFailed, Status::Crash, Status::Rejected, Status::Unverified, Status::Pruned]
            .iter()
            .filter(|s| **s != Status::ChecksFailed || self.count(**s) > 0)
            .map(|s| format!("{} {}", self.count(*s), s.as_str()))
            .collect();
        parts.join(", ")
    }

    /// Seconds from the run's start to its last finished experiment.
    pub fn wall_seconds(&self) -> f64 {
        let first = self.nodes.iter().filter_map(|n| n.started_at).fold(f64::INFINITY, f64::min);
        let first = self.started.map_or(first, |s| s.min(first));
        let last = self.nodes.iter().filter_map(|n| n.finished_at).fold(f64::NEG_INFINITY, f64::max);
        if first.is_finite() && last.is_finite() { (last - first).max(0.0) } else { 0.0 }
    }

    /// Seconds spent training (the harness's counted `training_seconds`), every run of every
    /// node: noise-aware keeps and the baseline ran several seeds (their metrics list `runs`).
    pub fn training_seconds(&self) -> f64 {
        self.nodes
            .iter()
            .filter_map(|n| {
                let m = n.metrics.as_ref()?;
                let t = m.get("training_seconds").and_then(Value::as_f64)?;
                let runs = m.get("runs").and_then(Value::as_array).map_or(1, |r| r.len().max(1));
                Some(t * runs as f64)
            })
            .sum()
    }

    /// Failed and discarded experiments grouped by what they changed.
    pub fn by_category<'a>(&'a self, keep: impl Fn(&Node) -> bool) -> BTreeMap<String, Vec<&'a Node>> {
        let mut m: BTreeMap<String, Vec<&Node>> = BTreeMap::new();
        for n in self.experiments().into_iter().filter(|n| keep(n)) {
            m.entry(category(n)).or_default().push(n);
        }
        m
    }
}

/// A node with nothing recorded yet, for tests to fill in.
#[cfg(test)]
pub fn blank_node(id: i64) -> Node {
    Node {
        id,
        parent: None,
        hypothesis: String::new(),
        description: String::new(),
        change: None,
        commit: None,
        status: Status::Pending,
        metric: None,
        metrics: None,
        memory_mb: None,
        created_at: 0.0,
        started_at: None,
        finished_at: None,
        platform: String::new(),
        proposer: String::new(),
        insight: String::new(),
        finish_seq: None,
        result_row: None,
        jsonl: None,
        pid: None,
        recorded: None,
    }
}

/// A finished node's record in the experiment log (kept in the database beside the node).
fn record(n: &Node) -> Option<Value> {
    serde_json::from_str(n.jsonl.as_deref()?).ok()
}

/// What kind of change a node made: the search's parameter, else the key of a `key = value`
/// description, else its first identifier-like word (`matrix_lr`), else its first two words.
pub fn category(n: &Node) -> String {
    if let Some(p) = n.change.as_ref().and_then(|c| c.get("param")).and_then(Value::as_str) {
        return p.to_string();
    }
    let d = n.description.trim();
    if let Some((k, _)) = d.split_once('=') {
        let k = k.trim();
        if !k.is_empty() && k.split_whitespace().count() <= 3 {
            return k.to_string();
        }
    }
    let words: Vec<&str> = d.split_whitespace().collect();
    if let Some(w) = words.iter().find(|w| w.contains('_')) {
        return w.trim_matches(|c: char| !c.is_alphanumeric() && c != '_').to_string();
    }
    match words.len() {
        0 => "(no description)".into(),
        1 => words[0].to_lowercase(),
        _ => format!("{} {}", words[0], words[1]).to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(description: &str, change: Option<Value>) -> Node {
        Node { description: description.into(), change, status: Status::Discard, ..blank_node(1) }
    }

    #[test]
    fn categories() {
        assert_eq!(category(&node("x", Some(serde_json::json!({"param": "depth"})))), "depth");
        assert_eq!(category(&node("matrix_lr = 0.02 (was 0.04)", None)), "matrix_lr");
        assert_eq!(category(&node("raise warmup_ratio to 0.05", None)), "warmup_ratio");
        assert_eq!(category(&node("Use SwiGLU activations", None)), "use swiglu");
        assert_eq!(category(&node("  ", None)), "(no description)");
    }
}
