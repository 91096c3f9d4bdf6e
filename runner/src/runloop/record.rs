//! Recording a result: the keep decision re-checked against the best as it is when the result
//! arrives, a result recorded by hand decided, then the node finished in one database
//! transaction, the branch moved on a keep, the results.tsv row and the JSONL record appended,
//! and the log line.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use serde_json::{Value, json};

use super::Loop;
use crate::db::{Finish, Node, Status, iso8601, now};
use crate::executor;
use crate::git::Git;
use crate::keep::Measured;
use crate::results;
use crate::tree::{self, fmt_metric};
use crate::runloop::worker::Decision;

impl Loop<'_> {
    /// Records a worker's result: the keep decision re-checked against the best as it is now
    /// (another experiment may have finished first), the database, the branch, the rows, the
    /// worktree.
    pub(super) fn conclude(&mut self, id: i64, result: Result<Decision>) -> Result<()> {
        let node = self.db.require_node(id)?;
        let mut d = match result {
            Ok(d) => d,
            Err(e) => {
                // The worker itself failed (a database or executor error, not the experiment):
                // the node is recorded as a crash so the run stays consistent, then the loop stops.
                let best = self.current_best()?;
                self.finish_node(&node, &Decision::unmeasured(Status::Crash, format!("runner error: {e:#}")), best.as_ref())?;
                self.git.remove_worktree(self.tag(), &node.name())?;
                return Err(e);
            }
        };
        if d.interrupted && self.reruns(&node)? == 0 {
            // Left unfinished: `run --resume` runs it again (a second interruption is a crash).
            self.stopping = true;
            self.db.clear_jobs(node.id)?;
            self.git.remove_worktree(self.tag(), &node.name())?;
            self.progress.line(&format!("{}: interrupted; `autoresearch run --resume --tag {}` runs it again", node.name(), self.tag()));
            return Ok(());
        }
        if node.parent.is_none() {
            return self.conclude_baseline(&node, d);
        }
        let best = self.current_best()?;
        if d.status == Status::Keep
            && let (Some(m), Some(b)) = (d.metric, best.as_ref().and_then(|b| b.metric))
        {
            let runs: Vec<f64> = d.runs.iter().filter(|r| r.outcome == "ok").filter_map(|r| r.metric).collect();
            let mut best_runs = self.db.metrics_of(best.as_ref().map(|b| b.id).unwrap_or(0))?;
            if best_runs.is_empty() {
                best_runs.push(b);
            }
            // A candidate of the loop is kept from its second run on.
            let last = self.rule().last(Measured { value: b, runs: &best_runs }, Measured { value: m, runs: &runs }, self.bar(), self.db.noise()?, 2);
            if !last.keep {
                d.status = Status::Discard;
                d.insight = format!("{}; not kept: {} reached {} while it ran (gain {:.6})", d.insight, best.as_ref().map(|b| b.name()).unwrap_or_default(), fmt_metric(Some(b)), last.gain);
            }
        }
        if d.interrupted {
            self.stopping = true;
        }
        if d.status == Status::Keep && !d.heldout.is_empty() {
            self.db.set_heldout(node.id, &d.heldout)?;
        }
        self.finish_node(&node, &d, best.as_ref())?;
        // A person's worktree (a recorded `tree add` idea) is theirs to remove.
        if !tree::is_idea(&node) {
            self.git.remove_worktree(self.tag(), &node.name())?;
        }
        let margin = if matches!(d.status, Status::Keep | Status::Discard | Status::ChecksFailed) { format!(" [{}]", d.insight.lines().next().unwrap_or("")) } else { String::new() };
        self.log_result(&node.name(), d.status.as_str(), d.metric, best.as_ref(), d.decided_bar(), &format!("{}{margin}", node.description));
        self.after_result()
    }

    fn conclude_baseline(&mut self, node: &Node, d: Decision) -> Result<()> {
        if d.interrupted {
            self.stopping = true;
        }
        if !d.heldout.is_empty() {
            self.db.set_heldout(node.id, &d.heldout)?;
        } else if self.cfg.held_out && d.status == Status::Keep {
            let why = if executor::custom_command(self.cfg).is_some() {
                "the experiment command wrote no heldout_bpb (it is asked through {held_out} or AUTORESEARCH_HELD_OUT)"
            } else {
                "the baseline's runs scored no held-out split (their logs say why)"
            };
            self.progress.line(&format!("HELD-OUT SPLIT: NONE: {why}; the report will have no held-out figures"));
        }
        self.finish_node(node, &d, None)?;
        self.git.remove_worktree(self.tag(), &node.name())?;
        if d.status != Status::Keep {
            if d.interrupted {
                return Ok(());
            }
            return Err(anyhow!(
                "the baseline failed ({}); fix the trainer or the setup, then `autoresearch run --resume --tag {}`:\n{}",
                d.status.as_str(),
                self.tag(),
                d.insight
            ));
        }
        let sd = d.sigma.unwrap_or(0.0);
        self.db.set_meta("sigma", &sd.to_string())?;
        let rule = self.rule().baseline_note(sd, self.db.noise()?);
        self.progress.line(&format!("{} baseline {} = {:.6} ({rule})", node.name(), self.cfg.metric, d.metric.unwrap_or(f64::NAN)));
        Ok(())
    }

    /// Decides a result recorded by hand (`tree record`) against the best's value `best`: a
    /// crash as it is, an unverified one (no signature of the run's scorer) never compared, a
    /// verified one by one look of the keep rule.
    pub(super) fn recorded_and_decide(&mut self, node: &Node, best: f64, bar: f64) -> Result<Decision> {
        let rec = self.db.require_node(node.id)?.recorded.unwrap_or(Value::Null);
        if let Some(why) = rec.get("crash").and_then(Value::as_str) {
            return Ok(Decision::unmeasured(Status::Crash, why));
        }
        let Some(m) = rec.get("metric").and_then(Value::as_f64) else {
            return Ok(Decision::unmeasured(Status::Crash, "recorded without a metric"));
        };
        let measured = |status, insight: String| Decision {
            metric: Some(m),
            summary: rec.get("summary").cloned().map(crate::runloop::worker::without_heldout),
            memory_mb: rec.get("memory_mb").and_then(Value::as_f64),
            ..Decision::unmeasured(status, insight)
        };
        if rec.get("verified") != Some(&Value::Bool(true)) {
            // Not scored by this run's harness: recorded as it is, never compared.
            let why = rec.get("unverified_because").and_then(Value::as_str).unwrap_or("recorded by hand");
            return Ok(measured(Status::Unverified, format!("unverified: {why}; not compared with scored results")));
        }
        // One recorded run: a confirmation would need another run by hand, so one look decides.
        let last = self.rule().last(Measured { value: best, runs: &[best] }, Measured { value: m, runs: &[m] }, bar, self.db.noise()?, 1);
        Ok(Decision {
            // The run `tree exec` made, when it made one: its seconds and log are the node's.
            runs: self.db.runs(node.id)?,
            bar: Some(last.bar),
            ..measured(if last.keep { Status::Keep } else { Status::Discard }, format!("recorded; gain {:.6}, bar {:.6}", last.gain, last.bar))
        })
    }

    /// Records the decision `d` on a node: db transaction, then the branch (keep), then the two
    /// log rows. `best` is the best the decision was measured against.
    pub(super) fn finish_node(&mut self, node: &Node, d: &Decision, best: Option<&Node>) -> Result<()> {
        let (status, metric, memory_mb, insight, bar) = (d.status, d.metric, d.memory_mb, d.insight.as_str(), d.decided_bar());
        let commit = node.commit.clone().unwrap_or_default();
        let mut desc = node.description.clone();
        if status.has_reason() {
            // The reason (first insight line) and the last line of the log tail.
            let reason = insight.lines().next().unwrap_or(status.as_str()).trim();
            let tail: Vec<&str> = insight.lines().skip(1).collect();
            let last = tail.iter().rev().find(|l| !l.trim().is_empty()).copied().unwrap_or("").trim();
            let why = if last.is_empty() { reason.to_string() } else { format!("{reason}: {last}") };
            desc = format!("{desc} [{}]", why.chars().take(200).collect::<String>());
        }
        if unsandboxed(d.summary.as_ref()) {
            // Loud in the results row too: this score came from a trainer that ran unconfined.
            desc.push_str(" [sandbox: none]");
        }
        let row = results::format_row(&commit, if status.failed() { None } else { metric }, memory_mb, status.as_str(), &desc);
        let prev = best.and_then(|b| b.metric);
        let finished = now();
        let record = json!({
            "timestamp": iso8601(finished),
            "tag": self.cfg.tag,
            "node": node.name(),
            "parent": node.parent.map(crate::db::node_name),
            "commit": commit,
            "status": status.as_str(),
            "metric_name": self.cfg.metric,
            "metric": metric,
            "previous_best": prev,
            "delta": match (metric, prev) { (Some(m), Some(p)) => Some(m - p), _ => None },
            // The margin: the gain over the best (positive is better, whichever the direction)
            // and the bar the keep rule set for it.
            "gain": match (metric, prev) { (Some(m), Some(p)) if bar.is_some() => Some(self.cfg.direction.gain(p, m)), _ => None },
            "bar": bar,
            "memory_gb": memory_mb.map(|m| m / 1024.0),
            "hypothesis": node.hypothesis,
            "description": node.description,
            "insight": insight,
            "platform": self.platform,
            "executor": self.cfg.executor.to_string(),
            "started_at": node.started_at.map(iso8601),
            "finished_at": iso8601(finished),
            "seconds": d.runs.iter().map(|r| r.seconds).sum::<f64>(),
            "runs": d.runs.iter().map(|r| json!({"attempt": r.attempt, "seed": r.seed, "outcome": r.outcome, "metric": r.metric, "exit_code": r.exit_code, "batch_scale": r.batch_scale, "seconds": r.seconds, "log": r.log})).collect::<Vec<_>>(),
            "heldout": self.db.heldout()?.get(&node.id),
            // The throughput guard's look: the candidate's and the best's tokens/s, the spread,
            // whether it flagged the decision and what the best's run beside it showed.
            "throughput": d.throughput,
        });
        let line = record.to_string();
        let has_commit = node.commit.is_some();
        self.db.finish(
            node.id,
            &Finish {
                status,
                metric,
                metrics: d.summary.as_ref(),
                memory_mb,
                insight,
                result_row: has_commit.then_some(row.as_str()),
                jsonl: Some(&line),
            },
        )?;
        self.db.clear_jobs(node.id)?;
        if status == Status::Keep && has_commit {
            self.git.set_branch(self.tag(), Git::oid(&commit)?, &format!("autoresearch: keep {}", node.name()))?;
        }
        if has_commit {
            results::append_line(&self.paths.results, Some(results::HEADER), &row)?;
        }
        results::append_line(&self.paths.jsonl, None, &line)?;
        Ok(())
    }

    /// Records a change the guard (or the proposer's own guard) refused: its node is
    /// `rejected`, with the reason.
    pub(super) fn reject(&mut self, node: &Node, reason: &str, best: Option<&Node>) -> Result<()> {
        self.finish_node(node, &Decision::unmeasured(Status::Rejected, reason), best)?;
        self.log_result(&node.name(), Status::Rejected.as_str(), None, best, None, &format!("{}: {reason}", node.description));
        Ok(())
    }

    /// The log line of a decided node: `n2 discard  2.176912 (-0.039211; gain 0.039211 <= bar
    /// 0.039266)  description [insight]`: the difference from the best, and the gain (positive
    /// is better, whichever the direction) against the bar the keep rule set.
    fn log_result(&self, name: &str, status: &str, metric: Option<f64>, best: Option<&Node>, bar: Option<f64>, description: &str) {
        let delta = match (metric, best.and_then(|b| b.metric)) {
            (Some(m), Some(b)) => {
                let gain = self.cfg.direction.gain(b, m);
                match bar {
                    Some(bar) => format!(" ({:+.6}; gain {gain:.6} {} bar {bar:.6})", m - b, if gain > bar { ">" } else { "<=" }),
                    None => format!(" ({:+.6})", m - b),
                }
            }
            _ => String::new(),
        };
        self.progress.line(&format!("{name} {status:<8} {}{delta}  {description}", fmt_metric(metric)));
    }

    pub(super) fn write_summary(&self) -> Result<PathBuf> {
        let mut r = crate::report::Research::load(&self.db, self.cfg)?;
        r.started = Some(self.started);
        let text = crate::report::summary_text(&r);
        results::write_atomic(&self.paths.summary, &text)?;
        Ok(self.paths.summary.clone())
    }
}

/// Whether a run's summary says its trainer ran without a sandbox.
fn unsandboxed(summary: Option<&Value>) -> bool {
    summary.and_then(|s| s.get("sandbox")).and_then(Value::as_str).is_some_and(|s| s.starts_with("none"))
}
