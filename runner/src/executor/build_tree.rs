//! The one build tree of the local executor: every experiment's worktree is synced into
//! `<repo>/.autoresearch/.build/` and the harness is built there (shared target directory).
//!
//! Cargo decides what to recompile from mtimes: each worktree is a fresh checkout, newer than
//! the last build, so building it in place (`.worktrees/<tag>-n<id>/`) compiled prepare,
//! trainer, harness and runner again for every experiment (about 45 s on 2 cores). The sync
//! writes a file only when its bytes differ, so the crates an experiment did not touch keep
//! their mtimes and stay fresh: only the trainer and the harness recompile.
//!
//! The tree is not inside the target directory: cargo records the sources of a unit by a path
//! relative to the target directory when they lie inside it, and a build of the main checkout
//! would then check the build tree's files instead of its own. `.autoresearch/` is ignored by
//! git, and a tag cannot start with a dot, so `.build` is no run's directory.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::layout::build_tree;

/// Top-level names never copied, deleted or walked into, on either side.
const SKIPPED: [&str; 4] = [".git", "target", ".autoresearch", ".worktrees"];

/// Cargo identifies a workspace member by its path relative to the workspace root, so the build
/// tree, the main checkout and any worktree built with the same target directory share the
/// members' compiled units, and cargo tells them apart by mtimes alone: a build elsewhere (a
/// person's `cargo build` in the main checkout) whose files are newer leaves its trainer or
/// eval in the target directory, and the build tree's older, unchanged files would then pass
/// for fresh. So after each build here the runner records cargo's fingerprints of the members
/// (`stamp_path`, beside the tree: each checkout sharing the target directory has its own),
/// and before the next one it compares: if they changed, something else built, and every file
/// of the build tree is marked changed (`mark_all_changed`) so that cargo compiles the members
/// from this tree again.
pub fn stamp_path(tree: &Path) -> PathBuf {
    let mut name = tree.file_name().unwrap_or_default().to_os_string();
    name.push(".stamp");
    tree.with_file_name(name)
}

/// Cargo's fingerprint files of the build tree's packages (`release/.fingerprint/<name>-<hash>/`),
/// one `path mtime length` line each, sorted.
pub fn fingerprints(target_dir: &Path, tree: &Path) -> Result<String> {
    let names = package_names(tree)?;
    let dir = target_dir.join("release").join(".fingerprint");
    let mut lines = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let unit = entry.file_name().to_string_lossy().to_string();
        if !is_member_unit(&unit, &names) {
            continue;
        }
        let files = std::fs::read_dir(entry.path()).with_context(|| format!("listing {}", entry.path().display()))?;
        for f in files.flatten() {
            let Ok(meta) = f.metadata() else { continue };
            let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
            lines.push(format!("{unit}/{} {}.{:09} {}", f.file_name().to_string_lossy(), mtime.as_secs(), mtime.subsec_nanos(), meta.len()));
        }
    }
    lines.sort();
    Ok(lines.join("\n"))
}

/// Whether a `.fingerprint/<name>-<16 hex digits>` entry is a unit of one of `names`.
fn is_member_unit(unit: &str, names: &BTreeSet<String>) -> bool {
    unit.rsplit_once('-').is_some_and(|(name, hash)| names.contains(name) && hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The other direction of `stamp_path`: when the members' units in the target directory are
/// the build tree's (the last build of them was an experiment's), deletes the units of the
/// members whose files differ from the main checkout's, so that the next build of any checkout,
/// the main one included, compiles them from its own files instead of taking an experiment's
/// trainer for its own. A member whose files are the same in both (prepare, the harness: an
/// experiment changes the trainer only) keeps its units, valid for both. The stamp is then
/// recorded anew: the build tree's next build recompiles the forgotten units only, not every
/// member. Called after `tree exec`, when a run ends, and before the runner builds the main
/// checkout (`train`, `prepare`, `bench`). Returns how many units it forgot.
pub fn hand_back(repo_root: &Path) -> Result<usize> {
    let tree = build_tree(repo_root);
    let target = crate::layout::target_dir(repo_root);
    if !tree.join("Cargo.toml").exists() || built_elsewhere(&target, &tree)? {
        return Ok(0);
    }
    let names = members_differing(&tree, repo_root)?;
    let dir = target.join("release").join(".fingerprint");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if is_member_unit(&entry.file_name().to_string_lossy(), &names) {
            std::fs::remove_dir_all(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
            n += 1;
        }
    }
    if n > 0 {
        record_build(&target, &tree)?;
    }
    Ok(n)
}

/// The packages of the build tree whose files differ from those at the same paths under
/// `checkout` (missing there counts as different). A file belongs to the package of the
/// deepest folder with a `Cargo.toml` above it; a difference outside every package (the
/// workspace manifest, Cargo.lock, configs/) counts for all of them.
fn members_differing(tree: &Path, checkout: &Path) -> Result<BTreeSet<String>> {
    let mut packages: Vec<(PathBuf, String)> = Vec::new();
    tree_files(tree, &mut |path| {
        if path.file_name() == Some(OsStr::new("Cargo.toml")) {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let manifest: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            if let Some(name) = manifest.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()) {
                let dir = path.parent().unwrap_or(tree).strip_prefix(tree).unwrap_or(Path::new("")).to_path_buf();
                packages.push((dir, name.to_string()));
            }
        }
        Ok(())
    })?;
    let all: BTreeSet<String> = packages.iter().map(|(_, n)| n.clone()).collect();
    let mut differing = BTreeSet::new();
    tree_files(tree, &mut |path| {
        let rel = path.strip_prefix(tree).unwrap_or(path);
        let same = std::fs::read(checkout.join(rel)).ok() == Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?);
        if !same {
            let owner = packages.iter().filter(|(dir, _)| rel.starts_with(dir) && !dir.as_os_str().is_empty()).max_by_key(|(dir, _)| dir.components().count());
            match owner {
                Some((_, name)) => {
                    differing.insert(name.clone());
                }
                None => differing.extend(all.iter().cloned()),
            }
        }
        Ok(())
    })?;
    Ok(differing)
}

/// [`hand_back`] under the build lock (so that no experiment's build runs meanwhile), for the
/// commands that build the main checkout; a failure is a warning, never fatal.
pub fn hand_back_locked(repo_root: &Path) {
    let lock_path = crate::layout::build_lock(repo_root);
    let t0 = std::time::Instant::now();
    let lock = match crate::process::FileLock::acquire(&lock_path, || t0.elapsed() > std::time::Duration::from_secs(600)) {
        Ok(Some(lock)) => lock,
        Ok(None) => return eprintln!("warning: an experiment's build held {} for 10 minutes; building without checking whose units are in the target directory", lock_path.display()),
        Err(e) => return eprintln!("warning: {e:#}"),
    };
    if let Err(e) = hand_back(repo_root) {
        eprintln!("warning: cannot hand the target directory back from the build tree ({e:#}); `touch` a file of each crate if the build looks stale");
    }
    drop(lock);
}

/// True when the members' units in the target directory may not be from the build tree: no
/// stamp yet, or fingerprints that changed since the last build here.
pub fn built_elsewhere(target_dir: &Path, tree: &Path) -> Result<bool> {
    let stamp = stamp_path(tree);
    match std::fs::read_to_string(&stamp) {
        Ok(recorded) => Ok(recorded != fingerprints(target_dir, tree)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("reading {}", stamp.display())),
    }
}

/// Records the members' fingerprints right after a build in the build tree.
pub fn record_build(target_dir: &Path, tree: &Path) -> Result<()> {
    let stamp = stamp_path(tree);
    let tmp = temp_path(&stamp);
    std::fs::write(&tmp, fingerprints(target_dir, tree)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &stamp).with_context(|| format!("renaming {} to {}", tmp.display(), stamp.display()))
}

/// Sets the mtime of every file of the build tree to now (links are left alone); returns how
/// many.
pub fn mark_all_changed(tree: &Path) -> Result<usize> {
    let now = std::time::SystemTime::now();
    let mut n = 0;
    tree_files(tree, &mut |path| {
        std::fs::File::options()
            .append(true)
            .open(path)
            .and_then(|f| f.set_modified(now))
            .with_context(|| format!("setting the mtime of {}", path.display()))?;
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

/// The `[package] name` of every `Cargo.toml` in the build tree.
fn package_names(tree: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    tree_files(tree, &mut |path| {
        if path.file_name() == Some(OsStr::new("Cargo.toml")) {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let manifest: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            if let Some(name) = manifest.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()) {
                out.insert(name.to_string());
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Calls `f` with every regular file below `tree` (links not followed, `SKIPPED` names at the
/// top left out).
fn tree_files(tree: &Path, f: &mut dyn FnMut(&Path) -> Result<()>) -> Result<()> {
    fn walk(dir: &Path, top: bool, f: &mut dyn FnMut(&Path) -> Result<()>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            if top && SKIPPED.iter().any(|s| entry.file_name() == OsStr::new(s)) {
                continue;
            }
            let path = entry.path();
            let ft = entry.file_type().with_context(|| format!("reading {}", path.display()))?;
            if ft.is_dir() {
                walk(&path, false, f)?;
            } else if ft.is_file() {
                f(&path)?;
            }
        }
        Ok(())
    }
    walk(tree, true, f)
}

/// What a sync did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    pub written: usize,
    pub deleted: usize,
    pub unchanged: usize,
}

/// Makes `dst` hold exactly the files of the checkout `src` (those git tracks, plus untracked
/// ones it does not ignore). Files whose bytes (and executable bit) already match are left
/// alone; others are written to a temporary file and renamed into place; files and empty
/// folders that `src` no longer has are deleted. Symbolic links are copied as links.
pub fn sync(src: &Path, dst: &Path) -> Result<Synced> {
    let files = source_files(src)?;
    let entries = files.into_iter().filter_map(|rel| {
        let from = src.join(&rel);
        match std::fs::symlink_metadata(&from) {
            // Tracked but deleted in the worktree: not part of it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(Err(anyhow::Error::new(e).context(format!("reading {}", from.display())))),
            Ok(m) if m.is_dir() => None,
            Ok(m) if m.file_type().is_symlink() => Some(std::fs::read_link(&from).map(|l| (rel, Entry::Link(l))).with_context(|| format!("reading the link {}", from.display()))),
            Ok(m) => {
                use std::os::unix::fs::PermissionsExt;
                Some(std::fs::read(&from).map(|bytes| (rel, Entry::File { bytes, mode: m.permissions().mode() & 0o777 })).with_context(|| format!("reading {}", from.display())))
            }
        }
    });
    write_entries(dst, entries)
}

/// Makes `dst` hold exactly the files of `commit` in the repository at `repo`: what the guard
/// checked is what is built, whatever the worktree holds besides (an ignored file, an edit
/// made after the commit).
pub fn sync_commit(repo: &Path, commit: &str, dst: &Path) -> Result<Synced> {
    let repo = git2::Repository::open(repo).with_context(|| format!("opening the repository {}", repo.display()))?;
    let oid = git2::Oid::from_str(commit).with_context(|| format!("commit {commit:?}"))?;
    let tree = repo.find_commit(oid).with_context(|| format!("finding commit {commit}"))?.tree()?;
    let mut entries = Vec::new();
    let mut failed = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, e| {
        let rel = PathBuf::from(format!("{dir}{}", e.name().unwrap_or("")));
        if skipped(&rel) || e.kind() != Some(git2::ObjectType::Blob) {
            return if e.kind() == Some(git2::ObjectType::Tree) && skipped(&rel) { git2::TreeWalkResult::Skip } else { git2::TreeWalkResult::Ok };
        }
        let blob = match repo.find_blob(e.id()) {
            Ok(b) => b,
            Err(err) => {
                failed = Some(err);
                return git2::TreeWalkResult::Abort;
            }
        };
        let entry = match e.filemode() {
            0o120000 => Entry::Link(PathBuf::from(OsStr::from_bytes(blob.content()))),
            m => Entry::File { bytes: blob.content().to_vec(), mode: if m & 0o111 != 0 { 0o755 } else { 0o644 } },
        };
        entries.push(Ok((rel, entry)));
        git2::TreeWalkResult::Ok
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    write_entries(dst, entries.into_iter())
}

/// A file to put in the build tree.
enum Entry {
    File { bytes: Vec<u8>, mode: u32 },
    Link(PathBuf),
}

fn write_entries(dst: &Path, entries: impl Iterator<Item = Result<(PathBuf, Entry)>>) -> Result<Synced> {
    std::fs::create_dir_all(dst).with_context(|| format!("creating the build tree {}", dst.display()))?;
    let mut done = Synced::default();
    let mut wanted = BTreeSet::new();
    for entry in entries {
        let (rel, entry) = entry?;
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            bail!("a path that is not a plain relative path: {}", rel.display());
        }
        if write_if_changed(dst, &rel, &entry)? {
            done.written += 1;
        } else {
            done.unchanged += 1;
        }
        wanted.insert(rel);
    }
    done.deleted = prune(dst, Path::new(""), &wanted)?;
    Ok(done)
}

/// The relative paths of the files git tracks in `src` and the untracked ones it does not
/// ignore, without anything under a `SKIPPED` top-level name or a submodule.
fn source_files(src: &Path) -> Result<BTreeSet<PathBuf>> {
    let repo = git2::Repository::open(src).with_context(|| format!("opening the git checkout {}", src.display()))?;
    let mut out = BTreeSet::new();
    let index = repo.index().with_context(|| format!("reading the git index of {}", src.display()))?;
    for e in index.iter() {
        // Gitlinks (submodules) have mode 0o160000.
        if e.mode & 0o170000 != 0o160000 {
            out.insert(PathBuf::from(OsStr::from_bytes(&e.path)));
        }
    }
    let mut opts = git2::StatusOptions::new();
    opts.include_untracked(true).recurse_untracked_dirs(true).include_ignored(false).exclude_submodules(true);
    let statuses = repo.statuses(Some(&mut opts)).with_context(|| format!("listing the untracked files of {}", src.display()))?;
    for s in statuses.iter().filter(|s| s.status().is_wt_new()) {
        out.insert(PathBuf::from(OsStr::from_bytes(s.path_bytes())));
    }
    out.retain(|p| !skipped(p));
    Ok(out)
}

fn skipped(rel: &Path) -> bool {
    match rel.components().next() {
        Some(Component::Normal(first)) => SKIPPED.iter().any(|s| first == OsStr::new(s)),
        _ => false,
    }
}

/// Writes one file or link to `dst/rel` unless it already has the same content; true when it
/// wrote.
fn write_if_changed(dst: &Path, rel: &Path, entry: &Entry) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let to = &dst.join(rel);
    let existing = std::fs::symlink_metadata(to).ok();
    let (bytes, mode) = match entry {
        Entry::Link(link) => {
            if existing.as_ref().is_some_and(|m| m.file_type().is_symlink()) && std::fs::read_link(to).ok().as_deref() == Some(link.as_path()) {
                return Ok(false);
            }
            make_room(dst, rel, existing.as_ref())?;
            let tmp = temp_path(to);
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(link, &tmp).with_context(|| format!("creating the link {}", tmp.display()))?;
            std::fs::rename(&tmp, to).with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))?;
            return Ok(true);
        }
        Entry::File { bytes, mode } => (bytes, *mode),
    };
    if let Some(m) = existing.as_ref().filter(|m| m.is_file() && m.len() == bytes.len() as u64) {
        if std::fs::read(to).with_context(|| format!("reading {}", to.display()))? == *bytes {
            // Same bytes: keep the mtime; a changed executable bit alone does not touch it.
            if m.permissions().mode() & 0o777 != mode {
                std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
                    .with_context(|| format!("setting the permissions of {}", to.display()))?;
            }
            return Ok(false);
        }
    }
    make_room(dst, rel, existing.as_ref())?;
    let tmp = temp_path(to);
    let _ = std::fs::remove_file(&tmp); // a leftover, maybe a link: never written through
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).with_context(|| format!("setting the permissions of {}", tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("renaming {} to {}", tmp.display(), to.display()))?;
    Ok(true)
}

/// Clears the way for a file at `dst/rel`: a folder where the file goes is removed, and so is a
/// file or link where one of its parent folders goes; then the parents are created. Only paths
/// below `dst` are touched (`dst` itself may sit below a link, e.g. a shared `target`).
fn make_room(dst: &Path, rel: &Path, existing: Option<&std::fs::Metadata>) -> Result<()> {
    let to = dst.join(rel);
    if existing.is_some_and(|m| m.is_dir()) {
        std::fs::remove_dir_all(&to).with_context(|| format!("removing the folder {}", to.display()))?;
    }
    let mut dir = dst.to_path_buf();
    for part in rel.parent().into_iter().flat_map(Path::components) {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => std::fs::remove_file(&dir).with_context(|| format!("removing {} to make a folder there", dir.display()))?,
            Err(_) => {}
        }
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

fn temp_path(to: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(to.file_name().unwrap_or_default());
    name.push(".autoresearch-sync");
    to.with_file_name(name)
}

/// Deletes what `dst/rel` holds beyond `wanted` (links are removed, never followed); returns how
/// many files went. Folders left empty are removed, except the top.
fn prune(dst: &Path, rel: &Path, wanted: &BTreeSet<PathBuf>) -> Result<usize> {
    let dir = dst.join(rel);
    let mut deleted = 0;
    let entries = std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let child = rel.join(entry.file_name());
        if rel.as_os_str().is_empty() && skipped(&child) {
            continue;
        }
        let path = entry.path();
        let ft = entry.file_type().with_context(|| format!("reading {}", path.display()))?;
        if ft.is_dir() {
            deleted += prune(dst, &child, wanted)?;
            if std::fs::read_dir(&path).map(|mut d| d.next().is_none()).unwrap_or(false) {
                std::fs::remove_dir(&path).with_context(|| format!("removing the empty folder {}", path.display()))?;
            }
        } else if !wanted.contains(&child) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, SystemTime};

    fn git(dir: &Path, args: &[&str]) {
        let out = Command::new("git").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn mtime(p: &Path) -> SystemTime {
        std::fs::metadata(p).unwrap().modified().unwrap()
    }

    /// A checkout with two crates, an ignored file and ignored folders.
    fn checkout(dir: &Path) -> PathBuf {
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        git(&src, &["init", "-q"]);
        write(&src, ".gitignore", "/target\n/.autoresearch\n*.log\n");
        write(&src, "Cargo.toml", "[workspace]\n");
        write(&src, "prepare/src/lib.rs", "pub fn p() {}\n");
        write(&src, "trainer/src/lib.rs", "pub fn t() {}\n");
        write(&src, "trainer/hparams.toml", "lr = 1\n");
        git(&src, &["add", "."]);
        write(&src, "target/release/junk", "x");
        write(&src, ".autoresearch/state", "x");
        write(&src, "trainer/run.log", "ignored");
        src
    }

    fn files(root: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    walk(root, &e.path(), out);
                } else {
                    out.push(e.path().strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out.sort();
        out
    }

    #[test]
    fn sync_copies_tracked_and_untracked_files_but_not_ignored_ones_or_target_git_state() {
        let dir = tempfile::tempdir().unwrap();
        let src = checkout(dir.path());
        write(&src, "trainer/src/new.rs", "// untracked, not ignored\n");
        let dst = build_tree(&dir.path().join("repo"));
        let done = sync(&src, &dst).unwrap();
        assert_eq!(
            files(&dst),
            [".gitignore", "Cargo.toml", "prepare/src/lib.rs", "trainer/hparams.toml", "trainer/src/lib.rs", "trainer/src/new.rs"]
        );
        assert_eq!(done, Synced { written: 6, deleted: 0, unchanged: 0 });
        assert_eq!(std::fs::read_to_string(dst.join("trainer/src/new.rs")).unwrap(), "// untracked, not ignored\n");
    }

    #[test]
    fn sync_writes_changed_files_keeps_unchanged_mtimes_and_deletes_removed_files() {
        let dir = tempfile::tempdir().unwrap();
        let src = checkout(dir.path());
        let dst = dir.path().join("build");
        sync(&src, &dst).unwrap();
        // Old mtimes on the build tree's copies, so a rewrite would show.
        let old = SystemTime::now() - Duration::from_secs(3600);
        for f in files(&dst) {
            std::fs::File::options().write(true).open(dst.join(&f)).unwrap().set_modified(old).unwrap();
        }
        // A state the build tree must shed: a stale file and folder, a leftover temp file.
        write(&dst, "old/gone.rs", "stale");
        write(&dst, "trainer/.hparams.toml.autoresearch-sync", "half-written");
        // Top-level target/, .git and .autoresearch in the build tree are never touched.
        write(&dst, "target/keep", "x");
        write(&dst, ".git/keep", "x");
        write(&dst, ".autoresearch/keep", "x");

        write(&src, "trainer/src/lib.rs", "pub fn t() { /* changed */ }\n");
        std::fs::remove_file(src.join("trainer/hparams.toml")).unwrap(); // tracked, deleted
        std::fs::remove_file(src.join("prepare/src/lib.rs")).unwrap();
        git(&src, &["rm", "-q", "--cached", "prepare/src/lib.rs"]); // and untracked

        let done = sync(&src, &dst).unwrap();
        assert_eq!(done, Synced { written: 1, deleted: 4, unchanged: 2 }, "{:?}", files(&dst));
        assert_eq!(std::fs::read_to_string(dst.join("trainer/src/lib.rs")).unwrap(), "pub fn t() { /* changed */ }\n");
        assert!(mtime(&dst.join("trainer/src/lib.rs")) > old);
        assert_eq!(mtime(&dst.join("Cargo.toml")), old, "an unchanged file keeps its mtime");
        assert_eq!(mtime(&dst.join(".gitignore")), old);
        assert_eq!(files(&dst), [".autoresearch/keep", ".git/keep", ".gitignore", "Cargo.toml", "target/keep", "trainer/src/lib.rs"]);
        assert!(!dst.join("old").exists() && !dst.join("prepare").exists(), "emptied folders go");

        // Nothing changed: nothing written.
        assert_eq!(sync(&src, &dst).unwrap(), Synced { written: 0, deleted: 0, unchanged: 3 });
        assert!(mtime(&dst.join("trainer/src/lib.rs")) > old);
    }

    #[test]
    fn sync_replaces_a_folder_by_a_file_and_copies_links_and_the_executable_bit() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let src = checkout(dir.path());
        write(&src, "run.sh", "#!/bin/sh\n");
        std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("trainer/hparams.toml", src.join("hparams.toml")).unwrap();
        let dst = dir.path().join("build");
        write(&dst, "run.sh/inner", "a folder where the file goes");
        sync(&src, &dst).unwrap();
        assert_eq!(std::fs::metadata(dst.join("run.sh")).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(std::fs::read_link(dst.join("hparams.toml")).unwrap(), Path::new("trainer/hparams.toml"));
        assert_eq!(sync(&src, &dst).unwrap().written, 0);
    }

    #[test]
    fn sync_below_a_link_keeps_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let src = checkout(dir.path());
        std::fs::create_dir_all(dir.path().join("shared")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("shared"), dir.path().join("state")).unwrap();
        sync(&src, &dir.path().join("state/build")).unwrap();
        assert!(std::fs::symlink_metadata(dir.path().join("state")).unwrap().file_type().is_symlink());
        assert!(dir.path().join("shared/build/trainer/src/lib.rs").exists());
    }

    #[test]
    fn a_build_elsewhere_is_seen_in_the_members_fingerprints_and_marks_the_tree_changed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        let tree = build_tree(dir.path());
        write(&tree, "Cargo.toml", "[workspace]\nmembers = [\"crates/trainer\"]\n");
        write(&tree, "crates/trainer/Cargo.toml", "[package]\nname = \"trainer\"\n");
        write(&tree, "crates/trainer/src/lib.rs", "");
        let fp = target.join("release/.fingerprint");
        write(&fp, "trainer-0123456789abcdef/lib-trainer", "a");
        write(&fp, "burn-core-0123456789abcdef/lib-burn_core", "a");
        assert!(built_elsewhere(&target, &tree).unwrap(), "no stamp yet");
        record_build(&target, &tree).unwrap();
        assert!(stamp_path(&tree).ends_with(".autoresearch/.build.stamp"));
        assert!(!built_elsewhere(&target, &tree).unwrap());
        write(&fp, "burn-core-0123456789abcdef/lib-burn_core", "b"); // not a member
        write(&fp, "trainers-0123456789abcdef/x", "b"); // another package
        assert!(!built_elsewhere(&target, &tree).unwrap());
        write(&fp, "trainer-fedcba9876543210/lib-trainer", "b"); // a member's new unit
        assert!(built_elsewhere(&target, &tree).unwrap());

        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options().write(true).open(tree.join("crates/trainer/src/lib.rs")).unwrap().set_modified(old).unwrap();
        assert_eq!(mark_all_changed(&tree).unwrap(), 3);
        assert!(mtime(&tree.join("crates/trainer/src/lib.rs")) > old);
    }

    #[test]
    fn hand_back_forgets_the_units_of_the_members_an_experiment_changed_when_they_are_the_build_trees() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        let tree = build_tree(dir.path());
        // The main checkout (dir) and the build tree: the same prepare, another trainer.
        for root in [dir.path(), tree.as_path()] {
            write(root, "Cargo.toml", "[workspace]\nmembers = [\"crates/trainer\", \"crates/prepare\"]\n");
            write(root, "crates/trainer/Cargo.toml", "[package]\nname = \"trainer\"\n");
            write(root, "crates/prepare/Cargo.toml", "[package]\nname = \"prepare\"\n");
            write(root, "crates/prepare/src/lib.rs", "pub fn p() {}\n");
        }
        write(dir.path(), "crates/trainer/src/lib.rs", "pub fn t() {}\n");
        write(&tree, "crates/trainer/src/lib.rs", "pub fn t() { /* the experiment */ }\n");
        let fp = target.join("release/.fingerprint");
        for unit in ["trainer-0123456789abcdef/lib-trainer", "prepare-0123456789abcdef/lib-prepare", "burn-core-0123456789abcdef/lib-burn_core"] {
            write(&fp, unit, "a");
        }
        assert_eq!(hand_back(dir.path()).unwrap(), 0, "no build recorded in the tree: the units are someone else's");
        assert!(fp.join("trainer-0123456789abcdef").exists());
        record_build(&target, &tree).unwrap();
        assert_eq!(hand_back(dir.path()).unwrap(), 1);
        assert!(!fp.join("trainer-0123456789abcdef").exists(), "the changed member's unit is forgotten");
        assert!(fp.join("prepare-0123456789abcdef").exists(), "a member the same in both stays built");
        assert!(fp.join("burn-core-0123456789abcdef").exists(), "dependencies stay built");
        assert!(!built_elsewhere(&target, &tree).unwrap(), "the build tree recompiles the forgotten unit only");
        // A difference outside every package (the lock file) counts for all of them.
        write(&fp, "trainer-0123456789abcdef/lib-trainer", "a");
        record_build(&target, &tree).unwrap();
        write(&tree, "Cargo.lock", "# the experiment's\n");
        assert_eq!(hand_back(dir.path()).unwrap(), 2);
        // After another checkout's build, its units are left alone.
        write(&fp, "trainer-fedcba9876543210/lib-trainer", "b");
        assert_eq!(hand_back(dir.path()).unwrap(), 0);
        assert!(fp.join("trainer-fedcba9876543210").exists());
        // No build tree at all: nothing to do.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(hand_back(empty.path()).unwrap(), 0);
    }

    #[test]
    fn sync_of_a_folder_that_is_not_a_checkout_fails_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = sync(&dir.path().join("nowhere"), &dir.path().join("build")).unwrap_err();
        assert!(format!("{err:#}").contains("nowhere"), "{err:#}");
    }
}
