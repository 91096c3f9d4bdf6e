//! `search` proposer: a built-in tree search over the trainer's hyperparameter file.
//!
//! The space (configs/search_space.toml) lists, per parameter, candidate values ordered broad ->
//! fine. Every experiment changes ONE parameter of its parent node. A node's untried children are
//! ordered by (value rank, parameter order), so every parameter's broad moves come before any fine
//! tuning. Policy:
//! 1. expand the best node (the branch tip) until it has `search_patience` children;
//! 2. then backtrack: expand the most promising other node that ran (best metric first) and has
//!    fewer than `search_patience` children;
//! 3. then anything with untried children (best first); nothing left: the search is over.
//! A node (not a keep) whose finished children (at least two) all crashed or were rejected is
//! marked `pruned` and never expanded again. Configurations already tried (whatever the path)
//! are never tried twice. Edits go through toml_edit, so comments and layout stay.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Applied, Ctx, Plan, Proposer};
use crate::config::{Direction, ProposerKind, ResearchConfig, resolve};
use crate::db::{Node, Status};
use crate::git::Git;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Param {
    pub name: String,
    /// Candidate values, broad first, fine last.
    pub values: Vec<toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Space {
    /// The hyperparameter file (relative to the repository).
    #[serde(default = "default_file")]
    pub file: String,
    /// The table to edit; empty: the profile's class (`cpu` or `gpu`).
    #[serde(default)]
    pub table: String,
    /// Tables whose values a missing key falls back to (the trainer reads [class] over [gpu]).
    #[serde(default = "default_fallback")]
    pub fallback: Vec<String>,
    #[serde(rename = "param")]
    pub params: Vec<Param>,
}

fn default_file() -> String {
    "trainer/hparams.toml".into()
}

fn default_fallback() -> Vec<String> {
    vec!["gpu".into()]
}

pub struct Search {
    space: Space,
}

impl Search {
    pub fn load(cfg: &ResearchConfig, root: &Path) -> Result<Search> {
        let path = resolve(root, Path::new(&cfg.search_space));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the search space {} (config key search_space)", path.display()))?;
        let space: Space = toml::from_str(&text).map_err(|e| crate::errors::usage(format!("{}: {e}", path.display())))?;
        if space.params.is_empty() || space.params.iter().any(|p| p.values.is_empty()) {
            return Err(crate::errors::usage(format!("{}: every [[param]] needs a name and a non-empty values list", path.display())));
        }
        Ok(Search { space })
    }

    fn table<'a>(&'a self, class: &'a str) -> &'a str {
        if self.space.table.is_empty() { class } else { &self.space.table }
    }

    /// Values of the searched parameters in the file at `commit`.
    fn base_values(&self, git: &Git, commit: &str, class: &str) -> Result<BTreeMap<String, String>> {
        let text = git.file_at(Git::oid(commit)?, &self.space.file)?.unwrap_or_default();
        let doc: toml::Table = toml::from_str(&text).unwrap_or_default();
        let mut out = BTreeMap::new();
        let mut tables = vec![self.table(class).to_string()];
        tables.extend(self.space.fallback.iter().cloned());
        for p in &self.space.params {
            let v = tables
                .iter()
                .find_map(|t| doc.get(t).and_then(|t| t.get(&p.name)))
                .or_else(|| doc.get(&p.name));
            if let Some(v) = v {
                out.insert(p.name.clone(), canon(v));
            }
        }
        Ok(out)
    }

    /// Untried (param index, value index) children of a node, in broad-first order.
    fn candidates(&self, node: &Node, assign: &BTreeMap<String, String>, tried: &HashSet<String>, nodes: &[Node]) -> Vec<(usize, usize)> {
        let path = path_changes(nodes, node.id);
        let mut out = Vec::new();
        for (pi, p) in self.space.params.iter().enumerate() {
            for (vi, v) in p.values.iter().enumerate() {
                let v = canon(v);
                if assign.get(&p.name) == Some(&v) {
                    continue;
                }
                let mut next = path.clone();
                next.insert(p.name.clone(), v);
                if tried.contains(&signature(&next)) {
                    continue;
                }
                out.push((pi, vi));
            }
        }
        out.sort_by_key(|&(pi, vi)| (vi, pi));
        out
    }
}

/// A value in a comparable text form (numbers normalised).
fn canon(v: &toml::Value) -> String {
    match v {
        toml::Value::Integer(i) => format!("{}", *i as f64),
        toml::Value::Float(f) => format!("{f}"),
        other => other.to_string(),
    }
}

/// The changes along the root -> node path (later ones win).
fn path_changes(nodes: &[Node], id: i64) -> BTreeMap<String, String> {
    let mut chain = Vec::new();
    let mut cur = nodes.iter().find(|n| n.id == id);
    while let Some(n) = cur {
        chain.push(n);
        cur = n.parent.and_then(|p| nodes.iter().find(|m| m.id == p));
    }
    let mut out = BTreeMap::new();
    for n in chain.iter().rev() {
        if let Some(c) = &n.change
            && let (Some(p), Some(v)) = (c.get("param").and_then(Value::as_str), c.get("canon").and_then(Value::as_str))
        {
            out.insert(p.to_string(), v.to_string());
        }
    }
    out
}

fn signature(changes: &BTreeMap<String, String>) -> String {
    changes.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
}

/// Marks dead branches: not a keep, at least two finished children, all failed.
fn prune_dead(ctx: &Ctx<'_>, nodes: &mut [Node]) -> Result<()> {
    let snapshot: Vec<(i64, Option<i64>, Status)> = nodes.iter().map(|n| (n.id, n.parent, n.status)).collect();
    for n in nodes.iter_mut() {
        if n.status == Status::Keep || n.status == Status::Pruned || n.id == ctx.best {
            continue;
        }
        let kids: Vec<Status> = snapshot.iter().filter(|(_, p, s)| *p == Some(n.id) && s.finished()).map(|k| k.2).collect();
        if kids.len() >= 2 && kids.iter().all(|s| s.failed()) {
            ctx.db.set_status(n.id, Status::Pruned)?;
            n.status = Status::Pruned;
        }
    }
    Ok(())
}

impl Proposer for Search {
    fn kind(&self) -> ProposerKind {
        ProposerKind::Search
    }

    fn plan(&mut self, ctx: &Ctx<'_>) -> Result<Option<Plan>> {
        let mut nodes = ctx.db.nodes()?;
        prune_dead(ctx, &mut nodes)?;
        let root = nodes.iter().find(|n| n.parent.is_none() && n.commit.is_some()).context("the tree has no baseline node")?;
        let base = self.base_values(ctx.git, root.commit.as_deref().unwrap_or_default(), ctx.class)?;
        let tried: HashSet<String> = nodes.iter().map(|n| signature(&path_changes(&nodes, n.id))).collect();
        let children = |id: i64| nodes.iter().filter(|n| n.parent == Some(id)).count() as u32;
        let patience = ctx.cfg.search_patience.max(1);
        let dir = ctx.cfg.direction;
        // Expandable nodes that ran, best first.
        let mut ranked: Vec<&Node> = nodes
            .iter()
            .filter(|n| matches!(n.status, Status::Keep | Status::Discard) && n.metric.is_some())
            .collect();
        ranked.sort_by(|a, b| {
            let (x, y) = (a.metric.unwrap(), b.metric.unwrap());
            let o = x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal);
            if dir == Direction::Lower { o } else { o.reverse() }
        });
        let best = nodes.iter().find(|n| n.id == ctx.best);
        let order: Vec<(&Node, bool)> = best
            .map(|b| (b, true))
            .into_iter()
            .chain(ranked.iter().filter(|n| n.id != ctx.best).map(|n| (*n, true)))
            .chain(best.map(|b| (b, false)))
            .chain(ranked.iter().filter(|n| n.id != ctx.best).map(|n| (*n, false)))
            .collect();
        for (node, with_patience) in order {
            if with_patience && children(node.id) >= patience {
                continue;
            }
            let mut assign = base.clone();
            assign.extend(path_changes(&nodes, node.id));
            let cands = self.candidates(node, &assign, &tried, &nodes);
            let Some(&(pi, vi)) = cands.first() else { continue };
            let p = &self.space.params[pi];
            let v = &p.values[vi];
            let was = assign.get(&p.name).cloned().unwrap_or_else(|| "unset".into());
            let stage = if vi == 0 { "broad" } else if vi + 1 == p.values.len() { "finest" } else { "finer" };
            return Ok(Some(Plan {
                parent: node.id,
                hypothesis: format!(
                    "{} {} -> {} ({stage} step {} of {}) from {}",
                    p.name,
                    was,
                    v,
                    vi + 1,
                    p.values.len(),
                    node.name()
                ),
                description: format!("{} = {} (was {})", p.name, v, was),
                change: Some(json!({"param": p.name, "value": v.to_string(), "canon": canon(v)})),
                idea: false,
            }));
        }
        Ok(None)
    }

    /// An idea whose description reads `param = value` for a parameter of the space (any value
    /// that parses as TOML) becomes that one change; anything else is left for a person.
    fn adopt(&mut self, _ctx: &Ctx<'_>, idea: &Node) -> Result<Option<Plan>> {
        let Some((name, value)) = idea.description.split_once('=') else { return Ok(None) };
        let (name, value) = (name.trim(), value.trim());
        let Ok(v) = value.parse::<toml_edit::Value>() else { return Ok(None) };
        if !self.space.params.iter().any(|p| p.name == name) {
            return Ok(None);
        }
        let v: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {v}")) {
            Ok(t) => t["v"].clone(),
            Err(_) => return Ok(None),
        };
        let Some(mut plan) = Plan::from_idea(idea) else { return Ok(None) };
        plan.change = Some(json!({"param": name, "value": v.to_string(), "canon": canon(&v)}));
        Ok(Some(plan))
    }

    fn apply(&mut self, ctx: &Ctx<'_>, _node: &Node, plan: &Plan, worktree: &Path) -> Result<Applied> {
        let change = plan.change.as_ref().context("search plan without a change")?;
        let param = change.get("param").and_then(Value::as_str).context("change without param")?;
        let value = change.get("value").and_then(Value::as_str).context("change without value")?;
        let file = worktree.join(&self.space.file);
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        let edited = set_value(&text, self.table(ctx.class), param, value)?;
        std::fs::write(&file, edited).with_context(|| format!("writing {}", file.display()))?;
        Ok(Applied::Done { description: None, hypothesis: None })
    }
}

/// Sets `[table].key = value` keeping comments and layout (the value's own trailing comment too).
pub fn set_value(text: &str, table: &str, key: &str, value: &str) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("the hyperparameter file is not valid TOML")?;
    let new: toml_edit::Value = value.parse().with_context(|| format!("`{value}` is not a TOML value"))?;
    let t = doc
        .entry(table)
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()))
        .as_table_like_mut()
        .with_context(|| format!("`{table}` is not a table"))?;
    match t.get_mut(key).and_then(|i| i.as_value_mut()) {
        Some(old) => {
            let decor = old.decor().clone();
            *old = new;
            *old.decor_mut() = decor;
        }
        None => {
            t.insert(key, toml_edit::Item::Value(new));
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_keep_comments() {
        let text = "# top\n[gpu]\nmatrix_lr = 0.04   # muon\n\n[cpu]\ndepth = 4 # small\n";
        let out = set_value(text, "cpu", "depth", "6").unwrap();
        assert!(out.contains("depth = 6 # small"), "{out}");
        assert!(out.contains("matrix_lr = 0.04   # muon"));
        let out = set_value(&out, "cpu", "matrix_lr", "0.08").unwrap();
        assert!(out.contains("[cpu]\ndepth = 6 # small\nmatrix_lr = 0.08"), "{out}");
    }
}
