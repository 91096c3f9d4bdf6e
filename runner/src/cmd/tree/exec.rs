//! `autoresearch tree exec N`: one experiment of a person's (or an agent's), run exactly as the
//! loop runs one. The change in node N's worktree is committed, that commit is synced into the
//! run's build tree and built there in the build sandbox (as the local executor does), and the
//! run's scorer runs it with the run's own settings: its profile snapshot, seed, budget, cache,
//! device batch scale, signing key. It is the loop's first run of the experiment (run 0, with
//! its files: `logs/N-0.log`, `runs/N-0.json` and the per-step CSV beside it), recorded on N
//! with its commit and its timings; a loop waiting for N goes on from it as from its own run
//! (confirmation runs, the decision), and `tree exec` waits for that decision and prints it.
//! The build shares the main checkout's target directory, as the loop's do: afterwards the
//! members' units are handed back, so the main checkout's next build compiles its own code.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use serde_json::{Value, json};

use crate::config::ResearchConfig;
use crate::db::{Db, Node, Run, now};
use crate::errors::{repo_state, usage};
use crate::executor::{Finished, Outcome, RunSpec};
use crate::git::Git;
use crate::layout::{Paths, attempt};
use crate::tree::{self, fmt_metric};


/// What a person says of the experiment, stored with its result.
#[derive(Debug, Default)]
pub struct Notes<'a> {
    pub description: Option<&'a str>,
    pub hypothesis: Option<&'a str>,
    pub insight: Option<&'a str>,
}

/// Runs node `id`'s experiment; returns the exit code (0 when the run was scored).
pub fn exec(db: &mut Db, git: &Git, cfg: &ResearchConfig, id: i64, notes: &Notes<'_>) -> Result<i32> {
    // The run's own settings (budget, seed, batch scale...), whatever configs/research.toml
    // says now or the flags its `run` was given.
    let cfg = &db.run_config(cfg)?;
    let n = db.require_node(id)?;
    let tag = &cfg.tag;
    super::not_finished(&n, tag)?;
    if let Some(rec) = &n.recorded {
        return Err(usage(format!(
            "{} already has a recorded result ({}); the loop decides it. Try another change with `autoresearch tree add --tag {tag} --parent {} ...`",
            n.name(),
            rec.get("metric").map(|m| m.to_string()).or_else(|| rec.get("crash").map(|c| format!("crash: {c}"))).unwrap_or_default(),
            n.parent.map(crate::db::node_name).unwrap_or_default()
        )));
    }
    let executor = crate::executor::build(cfg);
    if let Some(why) = executor.tree_exec_refusal(&n.name()) {
        return Err(usage(why));
    }
    let Some(parent) = n.parent else {
        return Err(usage(format!("{} is the baseline: the loop runs it (`autoresearch run`)", n.name())));
    };
    let path = git.worktree_path(tag, &n.name());
    let Some(head) = git.worktree_head(tag, &n.name())? else {
        return Err(repo_state(format!(
            "{} has no worktree ({} does not exist): create it with `autoresearch tree worktree --tag {tag} {}`",
            n.name(),
            path.display(),
            n.name()
        )));
    };
    let commit = commit_change(db, git, cfg, &n, parent, (&path, head), notes)?;
    let paths = Paths::new(&git.root, cfg);
    paths.create_run_dirs()?;
    // The loop's first run of an experiment, with its seed and its files: the waiting loop
    // reuses it as its own run 0 and goes on from there (confirmation runs, held-out run).
    let profile = crate::platform::run_profile(&git.root, cfg)?;
    let spec = RunSpec { commit: commit.to_string(), ..RunSpec::for_run(Arc::new(cfg.clone()), &git.root, &path, &profile, &n.name(), attempt::FIRST) };
    crate::executor::ensure_sign_key(&paths.sign_key())?;
    println!(
        "{}: building commit {} in the run's build tree and scoring it as the loop does (budget {}, seed {}, profile {}, device batch scale {})\nlog: {}",
        n.name(),
        &commit.to_string()[..12],
        cfg.budget,
        spec.seed,
        spec.profile.display(),
        spec.batch_scale,
        spec.log.display()
    );
    crate::process::install_interrupt_handler();
    let started = now();
    let finished = executor.run(&spec, &mut |_| Ok(()), &mut |_| {});
    // Whatever happened, the main checkout's next build compiles its own code.
    crate::executor::build_tree::hand_back_locked(&git.root);
    let finished = finished?;
    if matches!(finished.outcome, Outcome::Interrupted) {
        println!("{}: interrupted; nothing recorded (`autoresearch tree exec {}` runs it again)", n.name(), n.name());
        return Ok(crate::errors::code::INTERRUPTED);
    }
    let (run, crash) = record_run(db, cfg, id, &spec, &finished, (commit, started), notes)?;
    let curve = crate::curve::read(&crate::curve::path_for(&spec.summary_json)).map(|c| format!("; {}", c.describe())).unwrap_or_default();
    match &crash {
        None => println!("{}: run 0 (seed {}): {} {} in {:.1} s{curve}", n.name(), run.seed, cfg.metric, fmt_metric(run.metric), run.seconds),
        Some(why) => println!("{}: {} in {:.1} s: {why} (log: {})", n.name(), run.outcome, run.seconds, spec.log.display()),
    }
    if tree::is_idea(&n) {
        println!("the loop decides it when it next runs (`autoresearch run --resume --tag {tag}` takes up recorded ideas), with the confirmation runs its keep rule asks for");
        return Ok(if crash.is_none() { crate::errors::code::OK } else { crate::errors::code::FAILURE });
    }
    match await_decision(db, &paths.state_dir, id)? {
        Some(decided) => println!("{decided}"),
        None => println!("no runner of tag {tag} is running now: `autoresearch run --resume --tag {tag}` decides it"),
    }
    Ok(if crash.is_none() { crate::errors::code::OK } else { crate::errors::code::FAILURE })
}

/// Commits the change in node `n`'s worktree (`wt`: its path and head) with the person's
/// notes, refusing one that changes nothing against `parent`; an idea keeps its commit now.
fn commit_change(db: &mut Db, git: &Git, cfg: &ResearchConfig, n: &Node, parent: i64, wt: (&Path, git2::Oid), notes: &Notes<'_>) -> Result<git2::Oid> {
    let (path, head) = wt;
    let (id, tag) = (n.id, &cfg.tag);
    let nodes = db.nodes()?;
    let (base, _) = tree::checkout_commit(&nodes, parent)?;
    let base = Git::oid(&base)?;
    let description = notes.description.unwrap_or(&n.description).trim().to_string();
    let hypothesis = notes.hypothesis.unwrap_or(&n.hypothesis).trim().to_string();
    let mut message = if description.is_empty() { format!("{} (tree exec)", n.name()) } else { description };
    if !hypothesis.is_empty() {
        message = format!("{message}\n\nHypothesis: {hypothesis}");
    }
    for (column, value) in [("description", notes.description), ("hypothesis", notes.hypothesis)] {
        if let Some(v) = value {
            db.set_text(id, column, v.trim())?;
        }
    }
    let commit = git.commit_worktree(path, head, &message)?.unwrap_or(head);
    if git.repo.find_commit(commit)?.tree_id() == git.repo.find_commit(base)?.tree_id() {
        return Err(usage(format!(
            "{} has no change: edit files under [{}] in {} first",
            n.name(),
            cfg.scope.join(", "),
            path.display()
        )));
    }
    let outside: Vec<String> = git.changed_paths(base, commit)?.into_iter().filter(|p| !cfg.scope.iter().any(|s| crate::config::path_has_prefix(p, s))).collect();
    if !outside.is_empty() {
        eprintln!("warning: {} changes paths outside the scope [{}]: {}; the loop will reject it", n.name(), cfg.scope.join(", "), outside.join(", "));
    }
    // A person's idea keeps its commit now, as `tree sync` does; the loop's own node (the
    // manual proposer waiting for this result) takes it from the record.
    if tree::is_idea(n) {
        db.set_text(id, "commit_id", &commit.to_string())?;
        git.set_node_ref(tag, &n.name(), commit)?;
    }
    Ok(commit)
}

/// Records the run `tree exec` made as node `id`'s run 0 and its result, as verified as the
/// loop's own; returns the run and, for a failed one, why.
fn record_run(db: &mut Db, cfg: &ResearchConfig, id: i64, spec: &RunSpec, finished: &Finished, made: (git2::Oid, f64), notes: &Notes<'_>) -> Result<(Run, Option<String>)> {
    let (commit, started) = made;
    let paths = Paths::new(&spec.repo_root, cfg);
    let run = Run {
        node: id,
        attempt: attempt::FIRST.into(),
        seed: spec.seed,
        batch_scale: Some(spec.batch_scale),
        exit_code: finished.code,
        outcome: finished.outcome.label().into(),
        metric: if let Outcome::Ok { metric, .. } = &finished.outcome { Some(*metric) } else { None },
        seconds: finished.seconds,
        log: spec.log.display().to_string(),
    };
    let crash = match &finished.outcome {
        Outcome::Ok { .. } => None,
        other => Some(crate::runloop::worker::failure(other).1.lines().next().unwrap_or("failed").to_string()),
    };
    let sign_key = paths.sign_key();
    let args = super::RecordArgs {
        summary_json: crash.is_none().then_some(spec.summary_json.as_path()),
        metric: None,
        memory_mb: None,
        crash: crash.as_deref(),
        description: notes.description,
        hypothesis: notes.hypothesis,
        insight: notes.insight,
    };
    // The run's own executor scored it, exactly as it scores the loop's runs (which the loop
    // trusts without a signature check): as verified as any of the loop's results.
    let mut extra = json!({"commit": commit.to_string(), "started_at": started, "seconds": finished.seconds, "command": tree::TREE_EXEC});
    if crash.is_none() {
        extra["verified"] = json!(true);
    }
    // The run first: a loop polling for the record finds its run with it.
    db.insert_run(&run)?;
    super::record_with(db, cfg, &sign_key, id, &args, Some(&extra))?;
    Ok((run, crash))
}

/// Waits while the tag's runner decides node `id` (it may run it again: the confirmation runs
/// of its keep rule), printing the runs it adds; None when no runner is there to decide.
fn await_decision(db: &Db, state_dir: &std::path::Path, id: i64) -> Result<Option<String>> {
    let name = crate::db::node_name(id);
    let mut seen = 1;
    println!("the runner decides {name} now; its keep rule may run it again (the confirmation runs), as for any experiment of the loop");
    loop {
        let n = db.require_node(id)?;
        let runs = db.runs(id)?;
        for r in runs.iter().skip(seen) {
            println!("{name}: run {} (seed {}): {} {}", r.attempt, r.seed, r.outcome, fmt_metric(r.metric));
        }
        seen = seen.max(runs.len());
        if n.status.finished() {
            let record: Value = n.jsonl.as_deref().and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null);
            let margin = match (record.get("delta").and_then(Value::as_f64), record.get("gain").and_then(Value::as_f64), record.get("bar").and_then(Value::as_f64)) {
                (Some(d), Some(g), Some(b)) => format!(" ({d:+.6}; gain {g:.6} {} bar {b:.6})", if g > b { ">" } else { "<=" }),
                (Some(d), _, _) => format!(" ({d:+.6})"),
                _ => String::new(),
            };
            let insight = n.insight.lines().next().unwrap_or("");
            return Ok(Some(format!("{name} {} {}{margin} [{insight}]", n.status.as_str(), fmt_metric(n.metric))));
        }
        if crate::pidfile::live(state_dir).is_none() || crate::process::interrupted() {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
