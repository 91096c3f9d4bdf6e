//! The guard: an experiment may change only the modification scope, and the read-only files
//! must still match the sha256 recorded at run start. Whatever proposed the change (search,
//! agent, person), the runner checks with git before anything runs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use git2::Oid;

use crate::config::ResearchConfig;
use crate::git::{Git, disk_hashes};

/// Why a change was refused, or None when it may run.
pub fn check(
    git: &Git,
    cfg: &ResearchConfig,
    parent: Oid,
    commit: Oid,
    worktree: &Path,
    recorded: &BTreeMap<String, String>,
) -> Result<Option<String>> {
    if let Some(why) = scope_violation(git, cfg, parent, commit)? {
        return Ok(Some(why));
    }
    let now = disk_hashes(worktree, &cfg.read_only)?;
    Ok(compare_hashes(recorded, &now))
}

/// The same checks on a commit alone (no checkout): for a person's recorded experiment.
pub fn check_commit(git: &Git, cfg: &ResearchConfig, parent: Oid, commit: Oid, recorded: &BTreeMap<String, String>) -> Result<Option<String>> {
    if let Some(why) = scope_violation(git, cfg, parent, commit)? {
        return Ok(Some(why));
    }
    let now = git.tree_hashes(commit, &cfg.read_only)?;
    Ok(compare_hashes(recorded, &now))
}

fn scope_violation(git: &Git, cfg: &ResearchConfig, parent: Oid, commit: Oid) -> Result<Option<String>> {
    let outside: Vec<String> = git
        .changed_paths(parent, commit)?
        .into_iter()
        .filter(|p| !cfg.in_scope(p))
        .collect();
    if outside.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!("changes outside the scope [{}]: {}", cfg.scope.join(", "), abbreviate(&outside))))
}

fn compare_hashes(recorded: &BTreeMap<String, String>, now: &BTreeMap<String, String>) -> Option<String> {
    let mut changed = Vec::new();
    for (path, hash) in recorded {
        if now.get(path) != Some(hash) {
            changed.push(path.clone());
        }
    }
    for path in now.keys() {
        if !recorded.contains_key(path) {
            changed.push(path.clone());
        }
    }
    if changed.is_empty() {
        return None;
    }
    changed.sort();
    Some(format!("read-only files differ from their run-start sha256: {}", abbreviate(&changed)))
}

fn abbreviate(paths: &[String]) -> String {
    let mut s = paths.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if paths.len() > 5 {
        s.push_str(&format!(" and {} more", paths.len() - 5));
    }
    s
}
