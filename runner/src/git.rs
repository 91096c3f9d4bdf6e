//! Git through git2: the run branch, per-node refs, per-node worktrees, commits and diffs.
//!
//! Layout for a run with tag T:
//! - `refs/heads/autoresearch/T`: the best experiment so far (moves on every keep);
//! - `refs/autoresearch/T/n<id>`: every experiment's commit, kept or not (nothing is lost);
//! - `.worktrees/T-n<id>`: the node's checkout while it is built and run, then removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use git2::{BranchType, IndexAddOption, Oid, Repository, Signature, WorktreeAddOptions, WorktreePruneOptions};
use sha2::{Digest, Sha256};

use crate::config::path_has_prefix;

pub const WORKTREES_DIR: &str = ".worktrees";

pub struct Git {
    pub repo: Repository,
    pub root: PathBuf,
}

pub fn branch_name(tag: &str) -> String {
    format!("autoresearch/{tag}")
}

pub fn node_ref(tag: &str, node: &str) -> String {
    format!("refs/autoresearch/{tag}/{node}")
}

fn worktree_name(tag: &str, node: &str) -> String {
    format!("{tag}-{node}")
}

fn temp_branch(tag: &str, node: &str) -> String {
    format!("autoresearch-wt/{tag}-{node}")
}

impl Git {
    /// Opens the repository containing `dir` (its main working tree).
    pub fn discover(dir: &Path) -> Result<Git> {
        let repo = Repository::discover(dir).map_err(|e| {
            crate::errors::repo_state(format!("{}: not inside a git repository ({}); run `git init` or pass --repo", dir.display(), e.message()))
        })?;
        let mut repo = repo;
        if repo.is_worktree() {
            // Always work from the main checkout, also when called inside an experiment worktree.
            let common = repo.commondir().to_path_buf();
            repo = Repository::open(&common)?;
        }
        let root = repo
            .workdir()
            .ok_or_else(|| crate::errors::repo_state("a bare repository has no working tree: run autoresearch in a checkout"))?
            .to_path_buf();
        let root = root.canonicalize().unwrap_or(root);
        Ok(Git { repo, root })
    }

    pub fn head_commit(&self) -> Result<Oid> {
        let head = self
            .repo
            .head()
            .map_err(|_| crate::errors::repo_state("the repository has no commit yet: commit the project first"))?;
        Ok(head.peel_to_commit()?.id())
    }

    pub fn branch_tip(&self, tag: &str) -> Result<Option<Oid>> {
        match self.repo.find_branch(&branch_name(tag), BranchType::Local) {
            Ok(b) => Ok(Some(b.get().peel_to_commit()?.id())),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn create_branch(&self, tag: &str, at: Oid) -> Result<()> {
        let commit = self.repo.find_commit(at)?;
        self.repo.branch(&branch_name(tag), &commit, false)?;
        Ok(())
    }

    /// Moves the run branch to `to` (a keep).
    pub fn set_branch(&self, tag: &str, to: Oid, msg: &str) -> Result<()> {
        self.repo.reference(&format!("refs/heads/{}", branch_name(tag)), to, true, msg)?;
        Ok(())
    }

    pub fn set_node_ref(&self, tag: &str, node: &str, to: Oid) -> Result<()> {
        self.repo.reference(&node_ref(tag, node), to, true, "autoresearch experiment")?;
        Ok(())
    }

    pub fn delete_node_ref(&self, tag: &str, node: &str) -> Result<()> {
        if let Ok(mut r) = self.repo.find_reference(&node_ref(tag, node)) {
            r.delete()?;
        }
        Ok(())
    }

    pub fn worktree_path(&self, tag: &str, node: &str) -> PathBuf {
        self.root.join(WORKTREES_DIR).join(worktree_name(tag, node))
    }

    /// Checks out `at` (detached) in a fresh worktree for the node.
    pub fn add_worktree(&self, tag: &str, node: &str, at: Oid) -> Result<PathBuf> {
        let path = self.worktree_path(tag, node);
        self.remove_worktree(tag, node)?;
        std::fs::create_dir_all(self.root.join(WORKTREES_DIR))?;
        let commit = self.repo.find_commit(at)?;
        // libgit2 checks a worktree out on a branch: make a temporary one, detach, delete it.
        let tmp = temp_branch(tag, node);
        let branch = self.repo.branch(&tmp, &commit, true)?;
        let mut opts = WorktreeAddOptions::new();
        opts.reference(Some(branch.get()));
        let added = self.repo.worktree(&worktree_name(tag, node), &path, Some(&opts));
        let result = added
            .with_context(|| format!("creating worktree {}", path.display()))
            .and_then(|_| {
                let wt = Repository::open(&path)?;
                wt.set_head_detached(at)?;
                Ok(())
            });
        if let Ok(mut b) = self.repo.find_branch(&tmp, BranchType::Local) {
            b.delete().ok();
        }
        result?;
        Ok(path)
    }

    /// Removes the node's worktree (files and git bookkeeping); fine if there is none.
    pub fn remove_worktree(&self, tag: &str, node: &str) -> Result<()> {
        let name = worktree_name(tag, node);
        if let Ok(wt) = self.repo.find_worktree(&name) {
            let mut opts = WorktreePruneOptions::new();
            opts.valid(true).locked(true).working_tree(true);
            wt.prune(Some(&mut opts)).with_context(|| format!("removing worktree {name}"))?;
        }
        let path = self.worktree_path(tag, node);
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        if let Ok(mut b) = self.repo.find_branch(&temp_branch(tag, node), BranchType::Local) {
            b.delete().ok();
        }
        let dir = self.root.join(WORKTREES_DIR);
        if dir.read_dir().map(|mut d| d.next().is_none()).unwrap_or(false) {
            std::fs::remove_dir(&dir).ok();
        }
        Ok(())
    }

    /// The commit checked out in the node's worktree; None when there is no such worktree.
    pub fn worktree_head(&self, tag: &str, node: &str) -> Result<Option<Oid>> {
        let path = self.worktree_path(tag, node);
        if self.repo.find_worktree(&worktree_name(tag, node)).is_err() || !path.join(".git").exists() {
            return Ok(None);
        }
        let wt = Repository::open(&path).with_context(|| format!("opening worktree {}", path.display()))?;
        let head = wt.head().with_context(|| format!("reading HEAD of worktree {}", path.display()))?;
        Ok(Some(head.peel_to_commit()?.id()))
    }

    /// Whether a worktree has changes (tracked or untracked, not ignored) that are not committed.
    pub fn is_dirty(&self, worktree: &Path) -> Result<bool> {
        let wt = Repository::open(worktree).with_context(|| format!("opening worktree {}", worktree.display()))?;
        let mut opts = git2::StatusOptions::new();
        opts.include_untracked(true).recurse_untracked_dirs(true).include_ignored(false);
        Ok(!wt.statuses(Some(&mut opts))?.is_empty())
    }

    /// Removes every worktree of the run (after a crash of the runner), except those of the
    /// nodes in `keep` (a person's worktrees from `tree worktree`).
    pub fn cleanup_worktrees(&self, tag: &str, keep: &[String]) -> Result<Vec<String>> {
        let prefix = format!("{tag}-n");
        let mut removed = Vec::new();
        let mut names: Vec<String> = self.repo.worktrees()?.iter().flatten().map(str::to_string).collect();
        if let Ok(rd) = std::fs::read_dir(self.root.join(WORKTREES_DIR)) {
            names.extend(rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)));
        }
        names.sort();
        names.dedup();
        for name in names.into_iter().filter(|n| n.starts_with(&prefix)) {
            let node = &name[tag.len() + 1..];
            if keep.iter().any(|k| k == node) {
                continue;
            }
            self.remove_worktree(tag, node)?;
            removed.push(name);
        }
        Ok(removed)
    }

    fn signature(&self) -> Signature<'static> {
        self.repo
            .signature()
            .map(|s| s.to_owned())
            .or_else(|_| Signature::now("autoresearch", "autoresearch@localhost"))
            .expect("a fixed signature is valid")
    }

    /// Stages everything in the worktree and commits it on top of `parent`.
    /// Returns None when nothing changed (an empty proposal).
    pub fn commit_worktree(&self, worktree: &Path, parent: Oid, message: &str) -> Result<Option<Oid>> {
        let wt = Repository::open(worktree).with_context(|| format!("opening worktree {}", worktree.display()))?;
        let mut index = wt.index()?;
        index.add_all(["*"].iter(), IndexAddOption::DEFAULT, None)?;
        index.update_all(["*"].iter(), None)?;
        index.write()?;
        let tree_id = index.write_tree()?;
        let parent_commit = wt.find_commit(parent)?;
        if parent_commit.tree_id() == tree_id {
            return Ok(None);
        }
        let tree = wt.find_tree(tree_id)?;
        let sig = self.signature();
        let oid = wt.commit(Some("HEAD"), &sig, &sig, message, &tree, &[&parent_commit])?;
        Ok(Some(oid))
    }

    /// Paths that differ between two commits (added, deleted, modified, both sides of renames).
    pub fn changed_paths(&self, from: Oid, to: Oid) -> Result<Vec<String>> {
        let a = self.repo.find_commit(from)?.tree()?;
        let b = self.repo.find_commit(to)?.tree()?;
        let diff = self.repo.diff_tree_to_tree(Some(&a), Some(&b), None)?;
        let mut out = Vec::new();
        for d in diff.deltas() {
            for f in [d.old_file(), d.new_file()] {
                if let Some(p) = f.path().and_then(|p| p.to_str()) {
                    out.push(p.to_string());
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The entries a commit adds or changes relative to `from`: path and git file mode
    /// (0o100644 file, 0o100755 executable, 0o120000 link, 0o160000 submodule); deletions
    /// are left out.
    pub fn changed_entries(&self, from: Oid, to: Oid) -> Result<Vec<(String, u32)>> {
        let a = self.repo.find_commit(from)?.tree()?;
        let b = self.repo.find_commit(to)?.tree()?;
        let diff = self.repo.diff_tree_to_tree(Some(&a), Some(&b), None)?;
        let mut out = Vec::new();
        for d in diff.deltas() {
            if d.status() == git2::Delta::Deleted {
                continue;
            }
            let f = d.new_file();
            if let Some(p) = f.path().and_then(|p| p.to_str()) {
                out.push((p.to_string(), u32::from(f.mode())));
            }
        }
        out.sort();
        Ok(out)
    }

    /// `git diff --stat`-like text between two commits, and the patch.
    pub fn diff_text(&self, from: Oid, to: Oid, patch: bool) -> Result<String> {
        self.diff_trees_text(self.tree_of(from)?, self.tree_of(to)?, patch)
    }

    /// sha256 of every file of commit `at` under the given path prefixes.
    pub fn tree_hashes(&self, at: Oid, prefixes: &[String]) -> Result<BTreeMap<String, String>> {
        let tree = self.repo.find_commit(at)?.tree()?;
        let mut out = BTreeMap::new();
        let mut err = None;
        tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
            if entry.kind() != Some(git2::ObjectType::Blob) {
                return git2::TreeWalkResult::Ok;
            }
            let path = format!("{dir}{}", entry.name().unwrap_or(""));
            if prefixes.iter().any(|p| path_has_prefix(&path, p)) {
                match self.repo.find_blob(entry.id()) {
                    Ok(blob) => {
                        out.insert(path, sha256_hex(blob.content()));
                    }
                    Err(e) => {
                        err = Some(e);
                        return git2::TreeWalkResult::Abort;
                    }
                }
            }
            git2::TreeWalkResult::Ok
        })?;
        if let Some(e) = err {
            return Err(e.into());
        }
        Ok(out)
    }

    /// A file's text at a commit.
    pub fn file_at(&self, at: Oid, path: &str) -> Result<Option<String>> {
        let tree = self.repo.find_commit(at)?.tree()?;
        match tree.get_path(Path::new(path)) {
            Ok(entry) => {
                let blob = self.repo.find_blob(entry.id())?;
                Ok(Some(String::from_utf8_lossy(blob.content()).into_owned()))
            }
            Err(_) => Ok(None),
        }
    }

    /// The change from commit `from` to commit `to`, applied to `onto` (a three-way merge of
    /// trees, as `git cherry-pick` does): the tree it gives, or None when it conflicts (the
    /// change touches lines `onto` has otherwise).
    pub fn apply_change(&self, from: Oid, to: Oid, onto_tree: Oid) -> Result<Option<Oid>> {
        let (a, b) = (self.repo.find_commit(from)?.tree()?, self.repo.find_commit(to)?.tree()?);
        let mut index = self.repo.merge_trees(&a, &self.repo.find_tree(onto_tree)?, &b, None)?;
        if index.has_conflicts() {
            return Ok(None);
        }
        Ok(Some(index.write_tree_to(&self.repo)?))
    }

    /// The tree of a commit.
    pub fn tree_of(&self, commit: Oid) -> Result<Oid> {
        Ok(self.repo.find_commit(commit)?.tree_id())
    }

    /// A commit of `tree` on top of `parent`, made without moving any ref.
    pub fn commit_tree(&self, tree: Oid, parent: Oid, message: &str) -> Result<Oid> {
        let sig = self.signature();
        let tree = self.repo.find_tree(tree)?;
        let parent = self.repo.find_commit(parent)?;
        Ok(self.repo.commit(None, &sig, &sig, message, &tree, &[&parent])?)
    }

    /// Points branch `name` (`refs/heads/<name>`) at `to`, making it if needed.
    pub fn set_named_branch(&self, name: &str, to: Oid, msg: &str) -> Result<()> {
        self.repo.reference(&format!("refs/heads/{name}"), to, true, msg).with_context(|| format!("setting branch {name}"))?;
        Ok(())
    }

    /// The local branches whose names start with `prefix`.
    pub fn branches_under(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for r in self.repo.references_glob(&format!("refs/heads/{prefix}*"))? {
            if let Some(name) = r?.name().and_then(|n| n.strip_prefix("refs/heads/")) {
                out.push(name.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn delete_named_branch(&self, name: &str) -> Result<()> {
        if let Ok(mut r) = self.repo.find_reference(&format!("refs/heads/{name}")) {
            r.delete()?;
        }
        Ok(())
    }

    /// The stat from one tree to another, and with `patch` the patch.
    pub fn diff_trees_text(&self, from: Oid, to: Oid, patch: bool) -> Result<String> {
        let diff = self.repo.diff_tree_to_tree(Some(&self.repo.find_tree(from)?), Some(&self.repo.find_tree(to)?), None)?;
        let mut text = String::new();
        let stats = diff.stats()?;
        text.push_str(stats.to_buf(git2::DiffStatsFormat::FULL, 80)?.as_str().unwrap_or(""));
        if patch {
            diff.print(git2::DiffFormat::Patch, |_, _, line| {
                if matches!(line.origin(), '+' | '-' | ' ') {
                    text.push(line.origin());
                }
                text.push_str(&String::from_utf8_lossy(line.content()));
                true
            })?;
        }
        Ok(text)
    }

    pub fn oid(s: &str) -> Result<Oid> {
        Oid::from_str(s).map_err(|_| anyhow!("`{s}` is not a commit id"))
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of every file on disk under `root/<prefix>` (skipping `.git` and `target`).
pub fn disk_hashes(root: &Path, prefixes: &[String]) -> Result<BTreeMap<String, String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<()> {
        let meta = match std::fs::symlink_metadata(dir) {
            Ok(m) => m,
            Err(_) => return Ok(()),
        };
        if meta.is_file() {
            let rel = dir.strip_prefix(root).unwrap_or(dir).to_string_lossy().replace('\\', "/");
            let bytes = std::fs::read(dir).with_context(|| format!("reading {}", dir.display()))?;
            out.insert(rel, sha256_hex(&bytes));
            return Ok(());
        }
        if !meta.is_dir() {
            return Ok(());
        }
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            if name == ".git" || name == "target" {
                continue;
            }
            walk(root, &e.path(), out)?;
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    for p in prefixes {
        walk(root, &root.join(p), &mut out)?;
    }
    Ok(out)
}
