//! The guard: an experiment may change only the modification scope, it may not add anything
//! that runs or reads at build time or hides files from the commit, and the read-only files
//! must still match the sha256 recorded at run start. Whatever proposed the change (search,
//! agent, person), the runner checks with git before anything is built.

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

/// What no change may add, whatever the scope: the first offending path with its reason.
fn forbidden(cfg: &ResearchConfig, path: &str, mode: u32) -> Option<String> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let why = if mode == 0o120000 {
        "a symbolic link (it could point the build or the trainer at files outside the trainer)"
    } else if mode == 0o160000 {
        "a submodule (code from outside the repository)"
    } else if name == "build.rs" {
        "a build script (it would run at build time, with the builder's rights)"
    } else if name == "Cargo.toml" || name == "Cargo.lock" {
        "a Cargo manifest (a dependency, a build script, a binary or a proc-macro could come with it)"
    } else if path.split('/').any(|c| c == ".cargo") {
        "cargo configuration (it could change how, and what, is built)"
    } else if name == ".gitignore" || name == ".gitattributes" {
        "a .gitignore or .gitattributes (it could hide files from the commit the guard checks)"
    } else if crate::config::path_has_prefix(path, &format!("{}/src/bin", cfg.trainer)) {
        "a binary target (the trainer package has exactly the binaries its Cargo.toml allows)"
    } else {
        return None;
    };
    Some(format!("{path}: {why}"))
}

fn scope_violation(git: &Git, cfg: &ResearchConfig, parent: Oid, commit: Oid) -> Result<Option<String>> {
    let entries = git.changed_entries(parent, commit)?;
    let refused: Vec<String> = entries.iter().filter_map(|(p, mode)| forbidden(cfg, p, *mode)).collect();
    if !refused.is_empty() {
        return Ok(Some(format!("forbidden in an experiment: {}", abbreviate(&refused))));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_forbidden_kind_of_file_is_named_with_its_reason() {
        let cfg = ResearchConfig::default();
        let why = |p: &str, m: u32| forbidden(&cfg, p, m).unwrap_or_default();
        assert!(why("trainer/src/data", 0o120000).contains("symbolic link"));
        assert!(why("trainer/src/vendor", 0o160000).contains("submodule"));
        assert!(why("trainer/build.rs", 0o100644).contains("build script"));
        assert!(why("trainer/src/build.rs", 0o100644).contains("build script"));
        assert!(why("trainer/Cargo.toml", 0o100644).contains("Cargo manifest"));
        assert!(why("trainer/src/x/Cargo.toml", 0o100644).contains("Cargo manifest"));
        assert!(why("trainer/.cargo/config.toml", 0o100644).contains("cargo configuration"));
        assert!(why("trainer/src/.gitignore", 0o100644).contains(".gitignore"));
        assert!(why("trainer/src/bin/harness.rs", 0o100644).contains("binary target"));
        assert!(forbidden(&cfg, "trainer/src/model.rs", 0o100644).is_none());
        assert!(forbidden(&cfg, "trainer/hparams.toml", 0o100644).is_none());
        assert!(forbidden(&cfg, "trainer/src/binary.rs", 0o100644).is_none());
    }
}

fn abbreviate(paths: &[String]) -> String {
    let mut s = paths.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if paths.len() > 5 {
        s.push_str(&format!(" and {} more", paths.len() - 5));
    }
    s
}
