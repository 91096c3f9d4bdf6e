//! `autoresearch tree ...`: read and edit the experiment tree of a run (the queries they share
//! with the loop and the report are in `tree`).

pub mod exec;

use std::path::Path;

use anyhow::{Context, Result};
use contract::summary::RunSummary;
use serde_json::{Value, json};

use crate::config::ResearchConfig;
use crate::db::{Db, Node, Status, node_name, parse_node_id};
use crate::errors::{repo_state, usage};
use crate::git::Git;
use crate::layout::{Paths, attempt};
use crate::tree::{best, best_path, fmt_metric, is_idea};

pub fn node_id(s: &str) -> Result<i64> {
    parse_node_id(s).ok_or_else(|| usage(format!("`{s}` is not a node id (use 7 or n7, see `autoresearch tree list`)")))
}

fn short(c: &Option<String>) -> String {
    c.as_deref().map(|c| c[..7.min(c.len())].to_string()).unwrap_or_else(|| "-".into())
}

/// A node as the tree commands show it: its log record without the held-out scores, which a
/// proposer may not see (they are in the report and `results --json`).
fn shown(mut n: Node) -> Node {
    if let Some(v) = n.jsonl.as_deref().and_then(|l| serde_json::from_str(l).ok()) {
        n.jsonl = Some(crate::runloop::worker::without_heldout(v).to_string());
    }
    n
}

pub fn list(db: &Db, json_out: bool) -> Result<()> {
    let nodes = db.nodes()?;
    if json_out {
        let nodes: Vec<Node> = nodes.into_iter().map(shown).collect();
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(());
    }
    println!("{:<6} {:<6} {:<9} {:<8} {:>10}  description", "node", "parent", "status", "commit", "metric");
    for n in &nodes {
        println!(
            "{:<6} {:<6} {:<9} {:<8} {:>10}  {}",
            n.name(),
            n.parent.map(node_name).unwrap_or_else(|| "-".into()),
            n.status.as_str(),
            short(&n.commit),
            fmt_metric(n.metric),
            n.description
        );
    }
    Ok(())
}

pub fn show(db: &Db, git: &Git, state_dir: &Path, id: i64, json_out: bool, diff: bool) -> Result<()> {
    let n = db.require_node(id)?;
    let runs = db.runs(id)?;
    let curves: Vec<Option<crate::curve::Curve>> = runs.iter().map(|r| crate::curve::of_run(state_dir, &n.name(), &r.attempt)).collect();
    if json_out {
        let runs: Vec<Value> = runs
            .iter()
            .zip(&curves)
            .map(|(r, c)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["curve"] = json!(c);
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&json!({"node": shown(n), "runs": runs}))?);
        return Ok(());
    }
    println!("{}  {}  parent {}", n.name(), n.status.as_str(), n.parent.map(node_name).unwrap_or_else(|| "-".into()));
    println!("commit:      {}", n.commit.as_deref().unwrap_or("-"));
    println!("description: {}", n.description);
    println!("hypothesis:  {}", n.hypothesis);
    println!("metric:      {}   memory: {}", fmt_metric(n.metric), n.memory_mb.map(|m| format!("{:.1} GB", m / 1024.0)).unwrap_or("-".into()));
    println!("platform:    {}   proposer: {}", n.platform, n.proposer);
    if let (Some(s), Some(f)) = (n.started_at, n.finished_at) {
        println!("time:        {:.1} s ({} -> {})", f - s, crate::db::iso8601(s), crate::db::iso8601(f));
    }
    for (r, c) in runs.iter().zip(&curves) {
        let exit = r.exit_code.map_or_else(|| "-".to_string(), |c| c.to_string());
        println!("run:         seed {} {} exit {exit} {} {:.1}s log {}", r.seed, r.outcome, fmt_metric(r.metric), r.seconds, r.log);
        if let Some(c) = c {
            println!("curve:       {}", c.describe());
        }
    }
    if !n.insight.is_empty() {
        println!("insight:\n{}", indent(&n.insight));
    }
    if diff
        && let (Some(c), Some(p)) = (&n.commit, n.parent.and_then(|p| db.node(p).ok().flatten()).and_then(|p| p.commit))
    {
        println!("\n{}", git.diff_text(Git::oid(&p)?, Git::oid(c)?, true)?);
    }
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

/// `tree add`: queues an idea under `parent`; prints its name first. Where runs are jobs (slurm) it
/// also writes the node's job script and says how to submit it (a person's cluster job).
pub fn add(db: &Db, git: &Git, cfg: &ResearchConfig, parent: i64, hypothesis: &str, description: &str) -> Result<()> {
    db.require_node(parent)?;
    let id = db.insert_node(Some(parent), hypothesis, description, None, crate::tree::IDEA_PROPOSER, "")?;
    let name = node_name(id);
    println!("{name}");
    let wt = git.worktree_path(&cfg.tag, &name);
    if let Some(job) = crate::executor::build(cfg).job_script(&git.root, cfg, &name, &wt)? {
        println!(
            "job script: {}\nto run it yourself: `autoresearch tree worktree {name}`, edit, `autoresearch tree sync {name}`, then\n{}\n(or leave it queued: `autoresearch run --resume` takes it up)",
            job.path.display(),
            job.hint(&cfg.tag, &name)
        );
    }
    Ok(())
}

pub struct RecordArgs<'a> {
    pub summary_json: Option<&'a Path>,
    pub metric: Option<f64>,
    pub memory_mb: Option<f64>,
    pub crash: Option<&'a str>,
    pub description: Option<&'a str>,
    pub hypothesis: Option<&'a str>,
    pub insight: Option<&'a str>,
}

/// `tree record`: a result run outside the loop. A summary JSON counts as scored (`verified`)
/// only when it carries the signature of this run's scorer (see `contract::signature`); a bare
/// `--metric`, or any other summary, is kept as `unverified` and never compared with scored
/// results.
pub fn record(db: &mut Db, cfg: &ResearchConfig, sign_key: &Path, id: i64, a: &RecordArgs<'_>) -> Result<()> {
    record_with(db, cfg, sign_key, id, a, None)
}

/// `record`, with `extra` keys stored in the record too (`tree exec`: the commit it built, when
/// it started, how long it ran).
pub fn record_with(db: &mut Db, cfg: &ResearchConfig, sign_key: &Path, id: i64, a: &RecordArgs<'_>, extra: Option<&Value>) -> Result<()> {
    let n = db.require_node(id)?;
    if n.status.finished() {
        let hint = if a.insight.is_some() { format!(" (for the lesson alone: `autoresearch tree insight {} \"TEXT\"`)", n.name()) } else { String::new() };
        return Err(usage(format!("{} is already {}: only a pending or running node can be recorded{hint}", n.name(), n.status.as_str())));
    }
    let mut rec = json!({});
    if let Some(p) = a.summary_json {
        let text = std::fs::read_to_string(p).with_context(|| format!("--summary-json {}", p.display()))?;
        let s: Value = serde_json::from_str(&text).map_err(|e| usage(format!("--summary-json {}: {e}", p.display())))?;
        let typed = RunSummary::from_value(&s).ok_or_else(|| usage(format!("--summary-json {}: not a run summary the harness writes", p.display())))?;
        let m = s.get(&cfg.metric).and_then(Value::as_f64).ok_or_else(|| usage(format!("--summary-json {}: no `{}` in it (or pass --crash)", p.display(), cfg.metric)))?;
        rec["metric"] = json!(m);
        rec["memory_mb"] = json!(typed.peak_vram_mb);
        let verified = match std::fs::read_to_string(sign_key) {
            Ok(key) => contract::signature::verify(key.trim().as_bytes(), &s),
            Err(_) => Err(format!("this run has no signing key ({}): nothing it did not score can be verified", sign_key.display())),
        };
        rec["verified"] = json!(verified.is_ok());
        if let Err(why) = verified {
            rec["unverified_because"] = json!(why);
        }
        rec["summary"] = s;
    }
    if let Some(m) = a.metric {
        rec["metric"] = json!(m);
        rec["verified"] = json!(false);
        rec["unverified_because"] = json!("recorded with --metric: no scorer produced it");
    }
    if let Some(m) = a.memory_mb {
        rec["memory_mb"] = json!(m);
    }
    if let Some(c) = a.crash {
        rec["crash"] = json!(c);
    }
    if rec.get("metric").is_none() && rec.get("crash").is_none() {
        return Err(usage("tree record needs --summary-json FILE, --metric VALUE or --crash WHY"));
    }
    if let Some(d) = a.description {
        rec["description"] = json!(d);
    }
    if let Some(h) = a.hypothesis {
        rec["hypothesis"] = json!(h);
    }
    if let Some(Value::Object(extra)) = extra {
        for (k, v) in extra {
            rec[k] = v.clone();
        }
        if let Some(t) = extra.get("started_at").and_then(Value::as_f64) {
            db.set_started(id, t)?;
        }
        if rec["verified"] == json!(true) {
            if let Some(o) = rec.as_object_mut() {
                o.remove("unverified_because");
            }
        }
    }
    db.set_recorded(id, &rec, a.insight)?;
    // `tree exec` says what it ran in a line of its own; the whole record (the summary with it)
    // is for a person checking a result brought in by hand.
    if extra.is_none() {
        println!("recorded {}: {}", n.name(), rec);
    }
    if rec.get("metric").is_some() && rec["verified"] != json!(true) {
        println!(
            "note: {} is unverified ({}); the loop records it as `unverified` and never compares it with scored results",
            n.name(),
            rec["unverified_because"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `tree insight N TEXT`: the lesson learned from node N (shown by `tree show`, given to agents).
pub fn insight(db: &mut Db, id: i64, text: &str) -> Result<()> {
    let n = db.require_node(id)?;
    let text = text.trim();
    db.set_insight(id, text)?;
    if text.is_empty() {
        println!("cleared the insight of {}", n.name());
    } else {
        println!("insight of {}: {text}", n.name());
    }
    Ok(())
}

/// Whether a run of the loop owns the node (it makes, commits and removes its worktree itself).
fn owned_by_loop(n: &Node) -> bool {
    !n.status.finished() && !is_idea(n)
}

/// `tree worktree N [--remove]`: a person's checkout of node N, and how to build and run it.
pub fn worktree(db: &Db, git: &Git, cfg: &ResearchConfig, id: i64, remove: bool, force: bool) -> Result<()> {
    let n = db.require_node(id)?;
    let tag = &cfg.tag;
    let path = git.worktree_path(tag, &n.name());
    if remove {
        if owned_by_loop(&n) {
            return Err(usage(format!(
                "{} is {} in a run of the loop (proposer {}), which removes its worktree itself (`run --resume` after a crash)",
                n.name(),
                n.status.as_str(),
                n.proposer
            )));
        }
        let Some(_) = git.worktree_head(tag, &n.name())? else {
            if path.exists() {
                git.remove_worktree(tag, &n.name())?;
                println!("removed {}", path.display());
            } else {
                println!("{} has no worktree ({} does not exist)", n.name(), path.display());
            }
            return Ok(());
        };
        if !force && git.is_dirty(&path)? {
            return Err(repo_state(format!(
                "{} has uncommitted changes in {}: keep them with `autoresearch tree sync {}`, or pass --force to discard them",
                n.name(),
                path.display(),
                n.name()
            )));
        }
        git.remove_worktree(tag, &n.name())?;
        println!("removed {}", path.display());
        return Ok(());
    }
    match git.worktree_head(tag, &n.name())? {
        Some(h) => println!("{} already has a worktree, at {h}", n.name()),
        None => {
            let (commit, from) = crate::tree::checkout_commit(&db.nodes()?, id)?;
            let oid = Git::oid(&commit)?;
            git.repo.find_commit(oid).with_context(|| format!("{}'s commit {commit} is not in this repository", node_name(from)))?;
            git.add_worktree(tag, &n.name(), oid)?;
            let whose = if from == id { String::new() } else { format!(" ({}'s commit)", node_name(from)) };
            println!("created the worktree of {} at {commit}{whose}", n.name());
        }
    }
    let summary = Paths::new(&git.root, cfg).run_files(&n.name(), attempt::BY_HAND).summary_json;
    println!("{}", path.display());
    if let Some(job) = crate::executor::build(cfg).job_script(&git.root, cfg, &n.name(), &path)? {
        println!("edit files under [{}] there, commit them (`autoresearch tree sync {}`), then submit its job:", cfg.scope.join(", "), n.name());
        println!("  {}", job.submit);
    } else {
        println!("edit files under [{}] there, then build, score and record it exactly as the loop would:", cfg.scope.join(", "));
        println!("  {} --description \"what you changed\"", crate::proposer::manual::exec_hint(tag, &n.name()));
        println!("(it commits the edit, builds it in the run's build tree, scores it with the loop's flags and records it)");
        return Ok(());
    }
    if owned_by_loop(&n) {
        println!("then record it (the loop is waiting):\n  autoresearch tree record --tag {tag} {} --summary-json {}", n.name(), summary.display());
    } else {
        println!(
            "then:\n  autoresearch tree sync --tag {tag} {n}      # commit the change and store it as {n}'s commit\n  \
             autoresearch tree record --tag {tag} {n} --summary-json {json} [--insight \"what it taught\"]",
            n = n.name(),
            json = summary.display()
        );
    }
    Ok(())
}

/// Refuses a finished node: its commit is final, and a change belongs in a new node on top.
pub fn not_finished(n: &Node, tag: &str) -> Result<()> {
    if n.status.finished() {
        return Err(usage(format!(
            "{} is already {}: its commit is final; try a change on top of it with `autoresearch tree add --tag {tag} --parent {} ...`",
            n.name(),
            n.status.as_str(),
            n.name()
        )));
    }
    Ok(())
}

/// `tree sync N`: commits the changes in node N's worktree (if any) and records the commit
/// checked out there as the node's commit, kept under refs/autoresearch/<tag>/n<N>.
pub fn sync(db: &Db, git: &Git, cfg: &ResearchConfig, id: i64) -> Result<()> {
    let n = db.require_node(id)?;
    let tag = &cfg.tag;
    not_finished(&n, tag)?;
    if owned_by_loop(&n) {
        return Err(usage(format!(
            "{} is {} in a run of the loop (proposer {}), which commits it itself once you `autoresearch tree record {}`",
            n.name(),
            n.status.as_str(),
            n.proposer,
            n.name()
        )));
    }
    let path = git.worktree_path(tag, &n.name());
    let Some(head) = git.worktree_head(tag, &n.name())? else {
        return Err(repo_state(format!(
            "{} has no worktree ({} does not exist): create it with `autoresearch tree worktree {}`",
            n.name(),
            path.display(),
            n.name()
        )));
    };
    let mut message = if n.description.trim().is_empty() { format!("{} (tree sync)", n.name()) } else { n.description.clone() };
    if !n.hypothesis.trim().is_empty() {
        message = format!("{message}\n\nHypothesis: {}", n.hypothesis);
    }
    let commit = match git.commit_worktree(&path, head, &message)? {
        Some(c) => {
            println!("committed the changes in {}", path.display());
            c
        }
        None => head,
    };
    db.set_text(id, "commit_id", &commit.to_string())?;
    git.set_node_ref(tag, &n.name(), commit)?;
    let nodes = db.nodes()?;
    if let Some(p) = n.parent
        && let Ok((base, _)) = crate::tree::checkout_commit(&nodes, p)
    {
        let base = Git::oid(&base)?;
        if base == commit {
            eprintln!("note: {} has no change yet: its commit is its parent's", n.name());
        } else {
            let outside: Vec<String> = git
                .changed_paths(base, commit)?
                .into_iter()
                .filter(|p| !cfg.scope.iter().any(|s| crate::config::path_has_prefix(p, s)))
                .collect();
            if !outside.is_empty() {
                eprintln!("warning: {} changes paths outside the scope [{}]: {}", n.name(), cfg.scope.join(", "), outside.join(", "));
            }
        }
    }
    println!("{} {commit}", n.name());
    Ok(())
}

fn subtree(nodes: &[Node], id: i64) -> Vec<i64> {
    let mut out = vec![id];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(nodes.iter().filter(|n| n.parent == Some(cur)).map(|n| n.id));
        i += 1;
    }
    out
}

pub fn prune(db: &Db, id: i64) -> Result<()> {
    let nodes = db.nodes()?;
    db.require_node(id)?;
    let ids = subtree(&nodes, id);
    let path: Vec<i64> = best_path(&nodes).iter().map(|n| n.id).collect();
    if ids.iter().any(|i| path.contains(i)) {
        return Err(usage(format!("n{id}'s subtree holds the best path: it cannot be pruned")));
    }
    for i in &ids {
        db.set_status(*i, Status::Pruned)?;
    }
    println!("pruned {} node(s)", ids.len());
    Ok(())
}

pub fn delete(db: &mut Db, git: &Git, tag: &str, id: i64, recursive: bool) -> Result<()> {
    let nodes = db.nodes()?;
    db.require_node(id)?;
    let path: Vec<i64> = best_path(&nodes).iter().map(|n| n.id).collect();
    let mut ids = if recursive { subtree(&nodes, id) } else { vec![id] };
    if ids.iter().any(|i| path.contains(i)) {
        return Err(usage(format!("n{id} is on (or above) the best path: it cannot be deleted")));
    }
    if ids.iter().any(|i| nodes.iter().any(|n| n.id == *i && n.status == Status::Running)) {
        return Err(usage("a running node cannot be deleted: stop the run first"));
    }
    ids.reverse(); // children first
    for i in &ids {
        db.delete_node(*i)?;
        git.delete_node_ref(tag, &node_name(*i))?;
    }
    println!("deleted {} node(s) and their refs", ids.len());
    Ok(())
}

pub fn visualize(db: &Db) -> Result<()> {
    let nodes = db.nodes()?;
    let best_id = best(&nodes).map(|b| b.id);
    fn walk(nodes: &[Node], id: i64, prefix: &str, last: bool, root: bool, best: Option<i64>, out: &mut String) {
        let n = nodes.iter().find(|n| n.id == id).unwrap();
        let branch = if root { "" } else if last { "└── " } else { "├── " };
        out.push_str(&format!(
            "{prefix}{branch}{} {} {} {}{}\n",
            n.name(),
            n.status.as_str(),
            fmt_metric(n.metric),
            n.description,
            if Some(n.id) == best { "  <- best" } else { "" }
        ));
        let kids: Vec<&Node> = nodes.iter().filter(|m| m.parent == Some(id)).collect();
        let child_prefix = if root { prefix.to_string() } else { format!("{prefix}{}", if last { "    " } else { "│   " }) };
        for (i, k) in kids.iter().enumerate() {
            walk(nodes, k.id, &child_prefix, i + 1 == kids.len(), false, best, out);
        }
    }
    let mut out = String::new();
    for r in nodes.iter().filter(|n| n.parent.is_none()) {
        walk(&nodes, r.id, "", true, true, best_id, &mut out);
    }
    print!("{out}");
    Ok(())
}

pub fn best_path_cmd(db: &Db, json_out: bool) -> Result<()> {
    let nodes = db.nodes()?;
    let path = best_path(&nodes);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&path)?);
        return Ok(());
    }
    for n in path {
        println!("{} {} {} {}", n.name(), short(&n.commit), fmt_metric(n.metric), n.description);
    }
    Ok(())
}

pub fn compare(db: &Db, git: &Git, state_dir: &Path, a: i64, b: i64) -> Result<()> {
    let (x, y) = (db.require_node(a)?, db.require_node(b)?);
    println!("{:<18} {:>14} {:>14} {:>12}", "", x.name(), y.name(), "delta");
    println!("{:<18} {:>14} {:>14}", "status", x.status.as_str(), y.status.as_str());
    let mut keys: Vec<String> = Vec::new();
    for m in [&x.metrics, &y.metrics].into_iter().flatten() {
        if let Value::Object(o) = m {
            for (k, v) in o {
                if v.is_number() && !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
        }
    }
    let get = |n: &Node, k: &str| n.metrics.as_ref().and_then(|m| m.get(k)).and_then(Value::as_f64);
    for k in keys {
        let (va, vb) = (get(&x, &k), get(&y, &k));
        let d = match (va, vb) {
            (Some(p), Some(q)) => format!("{:+.6}", q - p),
            _ => String::new(),
        };
        let f = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_else(|| "-".into());
        println!("{k:<18} {:>14} {:>14} {d:>12}", f(va), f(vb));
    }
    // The runs' curves, one line each: where the steps and the throughput went.
    for n in [&x, &y] {
        for r in db.runs(n.id)? {
            if let Some(c) = crate::curve::of_run(state_dir, &n.name(), &r.attempt) {
                println!("curve {} run {}: {}", n.name(), r.attempt, c.describe());
            }
        }
    }
    if let (Some(c1), Some(c2)) = (&x.commit, &y.commit) {
        println!("\n{}", git.diff_text(Git::oid(c1)?, Git::oid(c2)?, false)?);
    }
    Ok(())
}
