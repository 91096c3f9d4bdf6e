//! autoresearch-summary.md: what a person wants the morning after. Baseline, best,
//! improvement and best commit; the top improvements; what did not work, by category; totals
//! (experiments, keeps, crashes, hours, experiments per hour, share of time training); and
//! next directions drawn from the tree's recorded insights and near misses.

use std::fmt::Write;

use super::data::{Research, category};
use crate::db::{Node, Status};
use crate::git::branch_name;
use crate::tree::fmt_metric;

/// Lines the runner itself writes into insights (keep-rule arithmetic, not lessons).
fn runner_note(line: &str) -> bool {
    let l = line.trim();
    l.is_empty()
        || ["gain ", "runs [", "recorded; gain", "interrupted", "timeout:", "out of memory", "causality violation", "the confirmation run"]
            .iter()
            .any(|p| l.starts_with(p))
        || (l.contains(" runs: [") && l.contains("keep bar"))
}

/// The lessons a node records (a person's or an agent's), without the runner's notes.
pub fn lessons(n: &Node) -> Vec<String> {
    n.insight.lines().filter(|l| !runner_note(l)).map(|l| l.trim().to_string()).collect()
}

fn short(c: &Option<String>) -> String {
    c.as_deref().map(|c| c.chars().take(7).collect()).unwrap_or_else(|| "-".into())
}

fn cell(s: &str) -> String {
    s.replace('|', "/").replace('\n', " ")
}

fn pct(gain: f64, base: f64) -> f64 {
    100.0 * gain / base.abs().max(1e-12)
}

pub fn markdown(r: &Research) -> String {
    let cfg = &r.cfg;
    let mut s = format!("# autoresearch run `{}`\n\n", cfg.tag);
    let _ = writeln!(s, "- branch: `{}`", branch_name(&cfg.tag));
    let _ = writeln!(s, "- metric: {} ({} is better), budget {}, proposer {}, keep rule {}", cfg.metric, cfg.direction, cfg.budget, cfg.proposer, cfg.keep_rule);
    result(&mut s, r);
    held_out(&mut s, r);
    let exps = r.experiments();
    totals(&mut s, r, &exps);
    like_with_like(&mut s, r, &exps);
    top_improvements(&mut s, r, &exps);
    what_did_not_work(&mut s, r);
    s.push_str("\n## Recommended next directions\n\n");
    for line in directions(r) {
        let _ = writeln!(s, "- {line}");
    }
    s
}

/// Baseline, best, the improvement and the run's noise.
fn result(s: &mut String, r: &Research) {
    let dir = r.direction();
    s.push_str("\n## Result\n\n");
    let baseline = r.baseline();
    let best = r.best();
    match (baseline, best) {
        (Some(b), Some(best)) => {
            let (m0, m1) = (b.metric.unwrap_or(f64::NAN), best.metric.unwrap_or(f64::NAN));
            let gain = dir.gain(m0, m1);
            let kept = r.best_path().iter().filter(|n| n.parent.is_some()).count();
            let _ = writeln!(s, "- baseline: {} ({}, commit `{}`)", fmt_metric(b.metric), b.name(), short(&b.commit));
            let _ = writeln!(s, "- best: {} ({}, commit `{}`)", fmt_metric(best.metric), best.name(), short(&best.commit));
            let _ = writeln!(s, "- improvement: {gain:.6} ({:.2} %) through {kept} kept change(s)", pct(gain, m0));
        }
        _ => s.push_str("- no baseline yet: the run has not finished its first experiment\n"),
    }
    if r.noise.df > 0.0 {
        let _ = writeln!(s, "- noise: sigma {:.6}, pooled over {} runs of {} configurations ({} degrees of freedom)", r.noise.sigma, r.noise.runs, r.noise.groups, r.noise.df);
    }
}

/// The held-out split: scored on the baseline and the kept nodes only, never seen by a
/// proposer or a keep decision.
fn held_out(s: &mut String, r: &Research) {
    let dir = r.direction();
    s.push_str("\n## Held-out split\n\n");
    if r.heldout.is_empty() {
        s.push_str("No held-out scores: the run was asked for none (`held_out = false`), or the validation data has no documents beyond what the evaluation uses.\n");
    } else {
        if let Some((gain, se, nb, nk)) = r.heldout_gain() {
            let _ = writeln!(
                s,
                "- held-out gain of the best over the baseline: {gain:+.6} +- {se:.6} (one standard error; {nb} baseline run(s), {nk} of the best), against a validation gain of {:+.6}",
                match (r.baseline(), r.best()) {
                    (Some(b), Some(k)) => dir.gain(b.metric.unwrap_or(f64::NAN), k.metric.unwrap_or(f64::NAN)),
                    _ => f64::NAN,
                }
            );
        }
        s.push_str("\n| node | validation | held-out | change |\n|---|---|---|---|\n");
        for n in r.nodes.iter().filter(|n| r.heldout.contains_key(&n.id)) {
            let (m, _) = crate::keep::mean_std(&r.heldout[&n.id]);
            let _ = writeln!(s, "| {} | {} | {m:.6} | {} |", n.name(), fmt_metric(n.metric), cell(&n.description));
        }
    }
}

/// Experiments, hours, the rate and the share of the time spent training.
fn totals(s: &mut String, r: &Research, exps: &[&Node]) {
    let wall = r.wall_seconds();
    let hours = wall / 3600.0;
    let training = r.training_seconds();
    s.push_str("\n## Totals\n\n");
    let _ = writeln!(s, "- experiments: {} ({})", exps.len(), r.tally());
    // Under a minute of wall time (a test fixture) gives no meaningful rate.
    let rate = if wall >= 60.0 { format!("{:.1}", exps.len() as f64 / hours) } else { "-".into() };
    let _ = writeln!(s, "- time: {hours:.2} h, {rate} experiments per hour");
    // Capped: summaries written by hand (`tree record`) can claim more training than wall time.
    let share = if wall >= 60.0 { format!("{:.0} %", (100.0 * training / wall).min(100.0)) } else { "-".into() };
    let _ = writeln!(s, "- training: {:.2} h, {share} of the time (the rest: builds, start-up, evaluation, proposing)", training / 3600.0);
    let planned = r.planned();
    if !planned.is_empty() {
        let _ = writeln!(s, "- ideas not run yet: {}", planned.len());
    }
}

/// Like with like: decisions whose runs ran at other speeds than the best's.
fn like_with_like(s: &mut String, r: &Research, exps: &[&Node]) {
    s.push_str("\n## Like with like (throughput)\n\n");
    let looked: Vec<(&Node, serde_json::Value)> = exps.iter().filter_map(|n| Some((*n, r.throughput(n)?))).collect();
    let flagged: Vec<&(&Node, serde_json::Value)> = looked.iter().filter(|(_, t)| t["flagged"] == true).collect();
    if looked.is_empty() {
        s.push_str("The throughput guard looked at no decision (a token or FLOP budget, summaries without tokens_per_sec, or throughput_guard = false).\n");
    } else {
        let _ = writeln!(
            s,
            "- {} decision(s) looked at, {} flagged: their tokens/s differed from the best's by more than the runs' spread, and the best ran again beside them",
            looked.len(),
            flagged.len()
        );
        let f = |v: &serde_json::Value| v.as_f64().map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
        for (n, t) in flagged {
            let beside = match t.get("machine_moved").and_then(serde_json::Value::as_bool) {
                Some(true) => format!("; beside it the best ran at {} tok/s: the machine had moved", f(&t["best_beside"])),
                Some(false) => format!("; beside it the best ran at {} tok/s: the candidate's own speed", f(&t["best_beside"])),
                None => "; the best's run beside it did not finish".into(),
            };
            let _ = writeln!(s, "- {} ({}, {}): {} tok/s against the best's {} (tolerance {}){beside}", n.name(), n.status.as_str(), cell(&n.description), f(&t["candidate"]), f(&t["best"]), f(&t["tolerance"]));
        }
    }
}

/// Kept changes by their gain over their parent, the largest ten.
fn top_improvements(s: &mut String, r: &Research, exps: &[&Node]) {
    let mut keeps: Vec<(&Node, f64)> = exps.iter().filter(|n| n.status == Status::Keep).filter_map(|n| Some((*n, r.step_gain(n)?))).collect();
    keeps.sort_by(|a, b| b.1.total_cmp(&a.1));
    s.push_str("\n## Top improvements\n\n");
    if keeps.is_empty() {
        s.push_str("No change has been kept yet.\n");
    } else {
        s.push_str("| node | gain | metric | commit | change |\n|---|---|---|---|---|\n");
        for (n, g) in keeps.iter().take(10) {
            let _ = writeln!(s, "| {} | {g:+.6} | {} | `{}` | {} |", n.name(), fmt_metric(n.metric), short(&n.commit), cell(&n.description));
        }
    }
}

/// What did not work, by category.
fn what_did_not_work(s: &mut String, r: &Research) {
    let failed = r.by_category(|n| matches!(n.status, Status::Discard | Status::ChecksFailed | Status::Crash | Status::Rejected));
    s.push_str("\n## What didn't work\n\n");
    if failed.is_empty() {
        s.push_str("Nothing was discarded or crashed.\n");
    } else {
        // The checks' column only in a run that has failed some.
        let checks = r.count(Status::ChecksFailed) > 0;
        s.push_str(if checks {
            "| category | tried | discard | checks failed | crash | rejected | closest gain | examples |\n|---|---|---|---|---|---|---|---|\n"
        } else {
            "| category | tried | discard | crash | rejected | closest gain | examples |\n|---|---|---|---|---|---|---|\n"
        });
        let mut rows: Vec<(&String, &Vec<&Node>)> = failed.iter().collect();
        rows.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
        for (cat, ns) in rows {
            let c = |st: Status| ns.iter().filter(|n| n.status == st).count();
            let closest = ns.iter().filter_map(|n| r.step_gain(n).map(|g| (g, *n))).max_by(|a, b| a.0.total_cmp(&b.0));
            let closest = closest.map(|(g, n)| format!("{g:+.6} ({})", n.name())).unwrap_or_else(|| "-".into());
            let examples: Vec<String> = ns.iter().take(3).map(|n| format!("{}: {}", n.name(), cell(&n.description))).collect();
            let checked = if checks { format!(" {} |", c(Status::ChecksFailed)) } else { String::new() };
            let _ = writeln!(s, "| {} | {} | {} |{checked} {} | {} | {closest} | {} |", cell(cat), ns.len(), c(Status::Discard), c(Status::Crash), c(Status::Rejected), examples.join("; "));
        }
    }
}

/// Suggestions, most useful first: lessons recorded along the best path, then elsewhere;
/// near misses worth a second look; categories that helped; planned ideas; dead ends.
pub fn directions(r: &Research) -> Vec<String> {
    let mut out = Vec::new();
    let path: Vec<i64> = r.best_path().iter().map(|n| n.id).collect();
    let mut with_lessons: Vec<&Node> = r.nodes.iter().filter(|n| !lessons(n).is_empty()).collect();
    with_lessons.sort_by_key(|n| (!path.contains(&n.id), std::cmp::Reverse(n.finish_seq)));
    for n in with_lessons.iter().take(8) {
        out.push(format!("{} ({}, {}): {}", n.name(), n.status.as_str(), cell(&n.description), lessons(n).join(" ")));
    }
    let mut near: Vec<(&Node, f64)> =
        r.experiments().into_iter().filter(|n| n.status == Status::Discard).filter_map(|n| Some((n, r.step_gain(n)?))).filter(|(_, g)| *g > 0.0).collect();
    near.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (n, g) in near.iter().take(3) {
        out.push(format!("near miss {}: {} gained {g:+.6} but not enough to keep; re-run it with more seeds or push it further", n.name(), cell(&n.description)));
    }
    let mut helped: Vec<String> = Vec::new();
    for c in r.experiments().into_iter().filter(|n| n.status == Status::Keep).map(category) {
        if !helped.contains(&c) {
            helped.push(c);
        }
    }
    if !helped.is_empty() {
        out.push(format!("kept changes came from: {}; nearby values and combinations are the next thing to try", helped.join(", ")));
    }
    for n in r.planned().iter().take(5) {
        let what = if n.hypothesis.trim().is_empty() { n.description.clone() } else { n.hypothesis.clone() };
        out.push(format!("planned idea {} (under {}): {}", n.name(), n.parent.map(crate::db::node_name).unwrap_or_else(|| "-".into()), cell(&what)));
    }
    let dead: Vec<String> = r
        .by_category(|n| n.status != Status::Pending && n.status != Status::Running)
        .into_iter()
        .filter(|(_, ns)| ns.len() >= 2 && ns.iter().all(|n| n.status != Status::Keep && r.step_gain(n).is_none_or(|g| g <= 0.0)))
        .map(|(c, ns)| format!("{c} ({} tries)", ns.len()))
        .collect();
    if !dead.is_empty() {
        out.push(format!("dead ends so far, try something else first: {}", dead.join(", ")));
    }
    if out.is_empty() {
        out.push("no lessons recorded yet: store them with `autoresearch tree insight N TEXT`".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_notes_are_not_lessons() {
        for l in ["gain -0.024506 does not clear the bar 0.044198", "runs [1.0, 2.0], mean gain 0.1 vs bar 0.04", "2 runs: [1.0, 2.0]; sigma 0.1; keep bar 0.2", "recorded; gain 0.1, bar 0.0"] {
            assert!(runner_note(l), "{l}");
        }
        assert!(!runner_note("matrix_lr above 0.06 diverges at this depth"));
    }
}
