//! The tree queries: what a run's nodes say, for every part of the runner that asks (the loop,
//! the proposers, `tree exec` and the `tree` commands, the report, `watch`). The best node, a
//! node's ancestors and the path to the best, which nodes are ideas queued with `tree add` and
//! which results `tree exec` made, the commit a worktree starts from, and a metric as every view
//! prints it. They lived in the module that first needed each, so the report and the proposers
//! imported the loop or a command for them.

use anyhow::Result;
use serde_json::Value;

use crate::db::{Node, Status, node_name};
use crate::errors::repo_state;

/// The proposer stored for an idea queued with `tree add`: a plan, no experiment yet. The loop
/// takes it up under its own proposer's name.
pub const IDEA_PROPOSER: &str = "tree-add";

/// What `tree exec` writes as the `command` of the result it records.
pub const TREE_EXEC: &str = "tree exec";

/// Whether `n` is an idea queued with `tree add` that no loop has taken up.
pub fn is_idea(n: &Node) -> bool {
    n.proposer == IDEA_PROPOSER
}

/// Whether a node's recorded result comes from `tree exec`: its run 0 is then the loop's own
/// (same seed, files and scorer), and the loop goes on from it as from any of its runs.
pub fn ran_by_tree_exec(n: &Node) -> bool {
    n.recorded.as_ref().and_then(|r| r.get("command")).and_then(Value::as_str) == Some(TREE_EXEC)
}

/// The best experiment: the last keep. Keeps are decided against the best at the moment they
/// finish, so the last one is always the best, whatever order results arrive in.
pub fn best(nodes: &[Node]) -> Option<&Node> {
    nodes.iter().filter(|n| n.status == Status::Keep).max_by_key(|n| n.finish_seq)
}

/// Node `id`, its parent, and so on up to its root (a parent link that loops ends the walk).
pub fn ancestors(nodes: &[Node], id: i64) -> Vec<&Node> {
    let mut line: Vec<&Node> = Vec::new();
    let mut cur = nodes.iter().find(|n| n.id == id);
    while let Some(n) = cur {
        if line.iter().any(|m| m.id == n.id) {
            break;
        }
        line.push(n);
        cur = n.parent.and_then(|p| nodes.iter().find(|m| m.id == p));
    }
    line
}

/// The path from the root to the best node (empty before the baseline is kept).
pub fn best_path(nodes: &[Node]) -> Vec<&Node> {
    let mut path = best(nodes).map(|b| ancestors(nodes, b.id)).unwrap_or_default();
    path.reverse();
    path
}

/// The commit a worktree of node `id` starts from: its own, else the nearest ancestor's.
/// Returns the commit and the node it belongs to.
pub fn checkout_commit(nodes: &[Node], id: i64) -> Result<(String, i64)> {
    let line = ancestors(nodes, id);
    if let Some((commit, owner)) = line.iter().find_map(|n| Some((n.commit.clone()?, n.id))) {
        return Ok((commit, owner));
    }
    Err(repo_state(format!(
        "{} has no commit, and neither has any node above it ({}): nothing to check out; \
         add the idea under a node that ran (`autoresearch tree add --parent N`, see `autoresearch tree list`)",
        node_name(id),
        if line.len() > 1 { line[1..].iter().map(|n| n.name()).collect::<Vec<_>>().join(", ") } else { "it is a root".into() }
    )))
}

/// A metric as every view prints it: six decimals, `-` for none.
pub fn fmt_metric(m: Option<f64>) -> String {
    m.map(|m| format!("{m:.6}")).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Db, Finish};

    #[test]
    fn checkout_commit_walks_up_to_the_nearest_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        let root = db.insert_node(None, "", "baseline", None, "baseline", "cpu").unwrap();
        let idea = db.insert_node(Some(root), "h", "idea", None, IDEA_PROPOSER, "").unwrap();
        let sub = db.insert_node(Some(idea), "h", "sub-idea", None, IDEA_PROPOSER, "").unwrap();
        // Nothing has a commit: the error names the node and its ancestors, exit code 3.
        let err = checkout_commit(&db.nodes().unwrap(), sub).unwrap_err();
        assert!(err.to_string().contains("n3 has no commit") && err.to_string().contains("n2, n1"), "{err}");
        assert_eq!(crate::errors::exit_code_of(&err), crate::errors::code::REPO_STATE);
        db.set_text(root, "commit_id", "aaaa").unwrap();
        assert_eq!(checkout_commit(&db.nodes().unwrap(), sub).unwrap(), ("aaaa".into(), root));
        db.set_text(idea, "commit_id", "bbbb").unwrap();
        assert_eq!(checkout_commit(&db.nodes().unwrap(), sub).unwrap(), ("bbbb".into(), idea));
        db.set_text(sub, "commit_id", "cccc").unwrap();
        assert_eq!(checkout_commit(&db.nodes().unwrap(), sub).unwrap(), ("cccc".into(), sub));
    }

    /// The best is the last keep, whatever its value; the path runs from the root to it; ideas
    /// are told by their proposer.
    #[test]
    fn the_best_is_the_last_keep_and_its_path_starts_at_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("t.db")).unwrap();
        let finish = |db: &mut Db, id, status, metric| db.finish(id, &Finish { status, metric: Some(metric), metrics: None, memory_mb: None, insight: "", result_row: None, jsonl: None }).unwrap();
        assert!(best(&db.nodes().unwrap()).is_none() && best_path(&db.nodes().unwrap()).is_empty());
        let root = db.insert_node(None, "", "baseline", None, "baseline", "cpu").unwrap();
        finish(&mut db, root, Status::Keep, 2.0);
        let a = db.insert_node(Some(root), "", "a", None, "search", "cpu").unwrap();
        let b = db.insert_node(Some(a), "", "b", None, "search", "cpu").unwrap();
        let c = db.insert_node(Some(root), "", "c", None, "search", "cpu").unwrap();
        finish(&mut db, a, Status::Keep, 1.5);
        finish(&mut db, c, Status::Discard, 1.0);
        finish(&mut db, b, Status::Keep, 1.4);
        let idea = db.insert_node(Some(b), "h", "idea", None, IDEA_PROPOSER, "").unwrap();
        let nodes = db.nodes().unwrap();
        assert_eq!(best(&nodes).map(|n| n.id), Some(b));
        assert_eq!(best_path(&nodes).iter().map(|n| n.id).collect::<Vec<_>>(), [root, a, b]);
        assert_eq!(ancestors(&nodes, idea).iter().map(|n| n.id).collect::<Vec<_>>(), [idea, b, a, root]);
        assert!(ancestors(&nodes, 99).is_empty());
        let is = |id: i64| is_idea(nodes.iter().find(|n| n.id == id).unwrap());
        assert!(is(idea) && !is(b));
        assert_eq!((fmt_metric(Some(1.4)), fmt_metric(None)), ("1.400000".to_string(), "-".to_string()));
    }
}
