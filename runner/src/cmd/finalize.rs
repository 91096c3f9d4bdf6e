//! `autoresearch finalize`: the kept path of a run as independent branches a person can review
//! and merge one by one (as pi-autoresearch does), instead of one research branch.
//!
//! Each kept change on the path from the baseline to the best is applied to the run's base
//! commit alone (a three-way merge of its diff, as `git cherry-pick` does). One that applies
//! gets a branch of its own; one that touches lines an earlier kept change touched (it does not
//! apply alone) joins the branch of that change, as a commit of its own after it, or, when it
//! needs several branches, they become one. Each commit says what the change is, why, what it
//! measured (its gain over its parent on the path with the standard error of the pooled noise)
//! and its held-out figure where the run scored one. The branches are
//! `autoresearch/<tag>-final/NN-n<id>-<slug>`, made again by each finalize; a summary with
//! every branch's diff goes to `.autoresearch/<tag>/finalize.md`.

use std::fmt::Write;

use anyhow::{Context, Result, anyhow};
use git2::Oid;

use crate::config::ResearchConfig;
use crate::db::{Db, Node};
use crate::errors::repo_state;
use crate::git::{Git, branch_name};
use crate::keep::mean_std;
use crate::layout::Paths;
use crate::report::Research;
use crate::tree::fmt_metric;

/// What one kept change measured, against its parent on the kept path.
struct Kept<'a> {
    node: &'a Node,
    parent: &'a Node,
    /// The gain over the parent (positive is better) and its standard error (None: no noise
    /// was measured).
    gain: f64,
    se: Option<f64>,
    runs: (usize, usize),
    /// The held-out scores' means of the parent and of the node, where both have some.
    heldout: Option<(f64, f64)>,
}

/// A branch: kept changes in path order (indices into the kept list) and the tree they give
/// on the base.
struct Group {
    members: Vec<usize>,
    tree: Oid,
}

/// The branch prefix of a run's finalized changes.
pub fn prefix(tag: &str) -> String {
    format!("{}-final/", branch_name(tag))
}

/// `matrix_lr = 0.04 (was 0.5)` -> `matrix-lr-0-04-was-0-5`, at most 40 characters.
fn slug(text: &str) -> String {
    let mut s = String::new();
    for c in text.to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
        if s.len() >= 40 {
            break;
        }
    }
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() { "change".into() } else { s }
}

fn commit_of(n: &Node) -> Result<Oid> {
    Git::oid(n.commit.as_deref().ok_or_else(|| anyhow!("{} has no commit", n.name()))?)
}

/// The commit message of a kept change on its branch.
fn message(k: &Kept<'_>, r: &Research, tag: &str) -> String {
    let metric = &r.cfg.metric;
    let mut m = format!("{}\n\n", if k.node.description.trim().is_empty() { k.node.name() } else { k.node.description.trim().to_string() });
    if !k.node.hypothesis.trim().is_empty() {
        let _ = writeln!(m, "Hypothesis: {}", k.node.hypothesis.trim());
    }
    let _ = writeln!(
        m,
        "Measured: {metric} {} ({} run(s)) against {} of {} ({} run(s)): gain {:.6} {}",
        fmt_metric(k.node.metric),
        k.runs.1,
        fmt_metric(k.parent.metric),
        k.parent.name(),
        k.runs.0,
        k.gain,
        match k.se {
            Some(se) => format!("+- {se:.6} (one standard error, pooled noise)"),
            None => "(no noise measured)".into(),
        }
    );
    match k.heldout {
        Some((p, n)) => {
            let _ = writeln!(m, "Held-out: {n:.6} against {p:.6} for {}: gain {:.6}", k.parent.name(), r.direction().gain(p, n));
        }
        None => m.push_str("Held-out: not scored for this change\n"),
    }
    let _ = writeln!(m, "Experiment: {} of run {tag} (commit {}, refs/autoresearch/{tag}/{})", k.node.name(), k.node.commit.as_deref().unwrap_or("-"), k.node.name());
    m
}

/// `autoresearch finalize`: prints the summary and where it is.
pub fn run(git: &Git, cfg: &ResearchConfig) -> Result<()> {
    let paths = Paths::new(&git.root, cfg);
    if let Some(runner) = crate::pidfile::live(&paths.state_dir) {
        return Err(repo_state(format!(
            "a runner (pid {}) is running tag {}: its kept path can still change; finalize after it stops (`autoresearch stop --tag {}`)",
            runner.pid, cfg.tag, cfg.tag
        )));
    }
    let db = Db::open_run(&git.root, cfg)?;
    let r = Research::load(&db, cfg)?;
    let text = finalize(git, &db, &r)?;
    let out = paths.state_dir.join("finalize.md");
    crate::results::write_atomic(&out, &text)?;
    let head = text.split("\n## Branch ").next().unwrap_or(&text);
    print!("{head}");
    println!("\nsummary with every branch's diff: {}", out.display());
    Ok(())
}

fn finalize(git: &Git, db: &Db, r: &Research) -> Result<String> {
    let tag = &r.cfg.tag;
    let path = r.best_path();
    let mut s = format!("# Kept changes of run `{tag}`, as branches to review\n\n");
    let Some(base_node) = path.first() else {
        s.push_str("The run has no baseline yet: nothing to finalize.\n");
        return Ok(s);
    };
    let base = commit_of(base_node)?;
    let kept = measure(db, r, &path)?;
    let base_tree = git.tree_of(base)?;
    let groups = group(git, &kept, base_tree)?;
    let branches = make_branches(git, r, &kept, &groups, base, base_tree)?;
    let merged = merge_all(git, base, base_tree, &branches)?;
    let best = path.last().copied().unwrap_or(base_node);
    let best_tree = git.tree_of(commit_of(best)?)?;

    if kept.is_empty() {
        s.push_str("No change was kept: the best is the baseline. No branch made.\n");
        return Ok(s);
    }
    let _ = writeln!(
        s,
        "Base: {} ({}, commit `{}`); best: {} {} ({}). {} kept change(s) on {} branch(es), each on the base alone; \
         a change that touches the lines of an earlier one follows it on its branch.\n",
        base_node.name(),
        fmt_metric(base_node.metric),
        &base.to_string()[..7],
        r.cfg.metric,
        fmt_metric(best.metric),
        best.name(),
        kept.len(),
        branches.len()
    );
    branch_table(&mut s, git, r, &kept, &groups, &branches, base)?;
    let _ = writeln!(
        s,
        "\n{}\n\nReview one: `git log -p {}..BRANCH`; take one: `git merge BRANCH`. Each branch applies to the base alone; whether it builds alone is for its review (or your checks) to say.",
        if merged == Some(best_tree) {
            format!("Merged together, the branches give exactly the best's code ({}).", best.name())
        } else {
            format!("Merged together, the branches do not give the best's code ({}): review them together.", best.name())
        },
        &base.to_string()[..7]
    );
    for ((name, head), g) in branches.iter().zip(&groups) {
        let _ = writeln!(s, "\n## Branch `{name}`\n");
        for &i in &g.members {
            let _ = writeln!(s, "```\n{}```\n", message(&kept[i], r, tag));
        }
        let _ = writeln!(s, "```diff\n{}```", git.diff_trees_text(base_tree, git.tree_of(*head)?, true)?);
    }
    Ok(s)
}

/// What each kept change on `path` measured against its parent: the gain, its standard error
/// from the run's pooled noise, and the held-out means where both were scored.
fn measure<'a>(db: &Db, r: &Research, path: &[&'a Node]) -> Result<Vec<Kept<'a>>> {
    let noise = db.noise()?;
    let heldout = db.heldout()?;
    let mut kept: Vec<Kept<'_>> = Vec::new();
    for w in path.windows(2) {
        let (parent, node) = (w[0], w[1]);
        let (pr, nr) = (db.metrics_of(parent.id)?.len().max(1), db.metrics_of(node.id)?.len().max(1));
        let mean = |id: i64| heldout.get(&id).filter(|v| !v.is_empty()).map(|v| mean_std(v).0);
        kept.push(Kept {
            node,
            parent,
            gain: r.direction().gain(parent.metric.unwrap_or(f64::NAN), node.metric.unwrap_or(f64::NAN)),
            se: (noise.df > 0.0).then(|| noise.sigma * (1.0 / pr as f64 + 1.0 / nr as f64).sqrt()),
            runs: (pr, nr),
            heldout: mean(parent.id).zip(mean(node.id)),
        });
    }
    Ok(kept)
}

/// The branches the kept changes go on: each change onto the base alone, else onto the branch
/// it applies to, else all in one.
fn group(git: &Git, kept: &[Kept<'_>], base_tree: Oid) -> Result<Vec<Group>> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, k) in kept.iter().enumerate() {
        let (from, to) = (commit_of(k.parent)?, commit_of(k.node)?);
        if let Some(tree) = git.apply_change(from, to, base_tree)? {
            groups.push(Group { members: vec![i], tree });
            continue;
        }
        let mut joined = false;
        for g in groups.iter_mut() {
            if let Some(tree) = git.apply_change(from, to, g.tree)? {
                g.members.push(i);
                g.tree = tree;
                joined = true;
                break;
            }
        }
        if !joined {
            // It needs the changes of several branches: they become one, the path up to here.
            let mut members: Vec<usize> = groups.drain(..).flat_map(|g| g.members).collect();
            members.push(i);
            members.sort_unstable();
            groups.push(Group { members, tree: git.tree_of(to)? });
        }
    }
    Ok(groups)
}

/// The branches, made again (those of an earlier finalize are deleted first, even when nothing
/// was kept): each member a commit of its own on the base. Their names and heads, in order.
fn make_branches(git: &Git, r: &Research, kept: &[Kept<'_>], groups: &[Group], base: Oid, base_tree: Oid) -> Result<Vec<(String, Oid)>> {
    let tag = &r.cfg.tag;
    for old in git.branches_under(&prefix(tag))? {
        git.delete_named_branch(&old)?;
    }
    let mut branches: Vec<(String, Oid)> = Vec::new();
    for (gi, g) in groups.iter().enumerate() {
        let (mut head, mut tree) = (base, base_tree);
        for &i in &g.members {
            let k = &kept[i];
            tree = git.apply_change(commit_of(k.parent)?, commit_of(k.node)?, tree)?.with_context(|| format!("{} does not apply on its branch", k.node.name()))?;
            head = git.commit_tree(tree, head, &message(k, r, tag))?;
        }
        let names: Vec<String> = g.members.iter().map(|&i| kept[i].node.name()).collect();
        let name = format!("{}{:02}-{}-{}", prefix(tag), gi + 1, names.join("-"), slug(&kept[g.members[0]].node.description));
        git.set_named_branch(&name, head, "autoresearch finalize")?;
        branches.push((name, head));
    }
    Ok(branches)
}

/// The tree the branches give merged together on the base (None: they conflict), to say
/// whether it is the best's code.
fn merge_all(git: &Git, base: Oid, base_tree: Oid, branches: &[(String, Oid)]) -> Result<Option<Oid>> {
    let mut merged = Some(base_tree);
    for (_, head) in branches {
        merged = match merged {
            Some(t) => git.apply_change(base, *head, t)?,
            None => None,
        };
    }
    Ok(merged)
}

/// One row per branch: its changes, their gains and held-out gains, the files it touches.
fn branch_table(s: &mut String, git: &Git, r: &Research, kept: &[Kept<'_>], groups: &[Group], branches: &[(String, Oid)], base: Oid) -> Result<()> {
    s.push_str("| branch | changes | gain +- SE | held-out gain | files |\n|---|---|---|---|---|\n");
    for (g, (name, head)) in groups.iter().zip(branches) {
        let changes: Vec<String> = g.members.iter().map(|&i| format!("{}: {}", kept[i].node.name(), kept[i].node.description.replace('|', "/"))).collect();
        let gains: Vec<String> = g.members.iter().map(|&i| format!("{:+.6}{}", kept[i].gain, kept[i].se.map(|se| format!(" +- {se:.6}")).unwrap_or_default())).collect();
        let held: Vec<String> = g.members.iter().map(|&i| kept[i].heldout.map(|(p, n)| format!("{:+.6}", r.direction().gain(p, n))).unwrap_or_else(|| "-".into())).collect();
        let files = git.changed_paths(base, *head)?;
        let _ = writeln!(s, "| `{name}` | {} | {} | {} | {} |", changes.join("; "), gains.join("; "), held.join("; "), files.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_short_lowercase_words() {
        assert_eq!(slug("matrix_lr = 0.04 (was 0.5)"), "matrix-lr-0-04-was-0-5");
        assert_eq!(slug("  ***  "), "change");
        assert!(slug(&"word ".repeat(30)).len() <= 40);
    }
}
