//! The runs of one node, on a worker thread: the baseline's seeds, or an experiment's run and its
//! confirmation (under `significant`, runs of the candidate or of the best, whichever has
//! fewer), each with one out-of-memory retry at half the device batch. A worker decides
//! against the best metric known when it started; the loop re-checks the decision against the
//! best at the moment the result arrives (results can arrive out of order).
//!
//! Every run is recorded in the database as it starts (`jobs`: its process group or Slurm job
//! id) and as it ends (`runs`), so a worker started again by `run --resume` skips the runs that
//! finished, follows the ones still in flight, and starts the rest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use contract::summary::RunSummary;
use serde_json::{Value, json};

use crate::config::ResearchConfig;
use crate::db::{Db, Job, Node, Run, Status, node_name, now};
use crate::executor::{self, Executor, Finished, Outcome, RunSpec};
use crate::git::Git;
use crate::keep::{self, Look, Noise, Runs, Verdict};
use crate::layout;
use crate::throughput;
pub use super::decision::{Decision, apply_checks, failure, without_heldout};
use crate::progress::Progress;

/// What every worker shares.
pub struct Shared {
    pub cfg: Arc<ResearchConfig>,
    pub root: PathBuf,
    pub profile: PathBuf,
    pub db_path: PathBuf,
    pub executor: Box<dyn Executor>,
    pub progress: Progress,
}

/// What a node's worker has to do.
#[derive(Debug, Clone, Copy)]
pub enum Task {
    /// `baseline_runs` seeds (one with the strict rule), as many at once as there are slots.
    Baseline,
    /// One run, decided against the best (`best_node`, its value `best`) with the keep bar
    /// `bar`; more runs if the rule asks for them.
    Experiment { best: f64, bar: f64, best_node: i64 },
}

/// What the throughput guard did for a decision.
#[derive(Default)]
struct Guarded {
    /// The best's value in its run beside the candidate, when it ran again.
    again: Option<f64>,
    /// For the insight (and so the log line and the report).
    note: String,
    /// For the experiment log and the report.
    record: Option<Value>,
    interrupted: bool,
}

/// How a run a test asked for went.
enum Again {
    Ran,
    /// It failed: the candidate is not kept.
    Failed,
    Interrupted,
}

/// A look's verdict as the node's status: kept, or not (a look that still asks for runs is
/// not a keep).
fn status_of(verdict: Verdict) -> Status {
    if verdict == Verdict::Keep { Status::Keep } else { Status::Discard }
}

/// The first seed of the runs of the best that candidates' tests ask for (candidate `n` takes
/// `n * 100 + k` above it): apart from the baseline's seeds, the candidates' and the held-out runs'.
const AGAIN_SEEDS: u64 = 1_000_000;

pub fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

impl Shared {
    pub fn work(&self, node: &Node, worktree: &Path, task: Task) -> Result<Decision> {
        match task {
            Task::Baseline => self.baseline(node, worktree),
            Task::Experiment { best, bar, best_node } => {
                let mut d = match keep::rule(&self.cfg).runs() {
                    Runs::Tested => self.tested(node, worktree, best, bar, best_node)?,
                    Runs::AgainstTheBest => self.experiment(node, worktree, best, bar, best_node)?,
                };
                apply_checks(&self.cfg, &self.root, worktree, node, &mut d)?;
                // Only where the baseline scored one: else the split is NONE (or the command
                // cannot score it) and the extra run would buy nothing.
                if d.status == Status::Keep && self.cfg.held_out && !Db::open(&self.db_path)?.heldout()?.is_empty() {
                    self.score_held_out(node, worktree, &mut d)?;
                }
                Ok(d)
            }
        }
    }

    fn baseline(&self, node: &Node, wt: &Path) -> Result<Decision> {
        let cfg = &self.cfg;
        let rule = keep::rule(cfg);
        let k = rule.baseline_runs();
        let width = self.executor.slots().max(1) as u64;
        let mut results: Vec<(Outcome, Run)> = Vec::new();
        // Seeds in waves of `slots`: nothing else runs while the baseline does.
        for wave in (0..k).collect::<Vec<_>>().chunks(width as usize) {
            let wave_results: Vec<Result<(Outcome, Run)>> = std::thread::scope(|s| {
                let handles: Vec<_> = wave.iter().map(|&i| s.spawn(move || self.attempt(node, wt, &i.to_string(), cfg.seed + i))).collect();
                handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a baseline run panicked")))).collect()
            });
            for r in wave_results {
                results.push(r?);
            }
            if results.iter().any(|(o, _)| !matches!(o, Outcome::Ok { .. })) {
                break;
            }
        }
        let runs: Vec<Run> = results.iter().map(|(_, r)| r.clone()).collect();
        if let Some((bad, _)) = results.iter().find(|(o, _)| !matches!(o, Outcome::Ok { .. })) {
            return Ok(Decision::failed(bad, runs));
        }
        let mut metrics = Vec::new();
        let mut memory = None;
        let mut summary = Value::Null;
        let mut heldout = Vec::new();
        for (o, _) in &results {
            if let Outcome::Ok { metric, memory_mb, summary: s } = o {
                metrics.push(*metric);
                memory = max_opt(memory, *memory_mb);
                heldout.extend(s.get("heldout_bpb").and_then(Value::as_f64));
                summary = without_heldout(s.clone());
            }
        }
        let (mean, sd) = keep::mean_std(&metrics);
        let bar = rule.bar(sd);
        if let Value::Object(m) = &mut summary {
            m.insert("runs".into(), json!(metrics));
            m.insert("sigma".into(), json!(sd));
        }
        Ok(Decision {
            status: Status::Keep,
            metric: Some(mean),
            summary: Some(summary),
            memory_mb: memory,
            insight: format!("{} runs: {:?}; sigma {:.6}; keep bar {:.6}", metrics.len(), metrics, sd, bar),
            runs,
            interrupted: false,
            sigma: Some(sd),
            heldout,
            bar: None,
            throughput: None,
        })
    }

    /// A rule that compares the candidate with the best's value (see `keep::Runs`): its first
    /// run, and the confirmation run the rule may ask for.
    fn experiment(&self, node: &Node, wt: &Path, best: f64, bar: f64, best_node: i64) -> Result<Decision> {
        let cfg = &self.cfg;
        let (out, run) = self.attempt(node, wt, layout::attempt::FIRST, cfg.seed)?;
        let mut runs = vec![run];
        let (m1, mem1, summary) = match out {
            Outcome::Ok { metric, memory_mb, summary } => (metric, memory_mb, summary),
            other => return Ok(Decision::failed(&other, runs)),
        };
        let guard = self.throughput_guard(node, best_node, 1)?;
        if guard.interrupted {
            return Ok(Decision::failed(&Outcome::Interrupted, runs));
        }
        // The best ran again beside the candidate: its value is the mean of its runs now.
        let best = match guard.again {
            Some(_) => Db::open(&self.db_path)?.set_mean_of_runs(best_node)?.unwrap_or(best),
            None => best,
        };
        let decided = |status, metric, summary, memory_mb, insight: String, runs| Decision {
            status,
            metric: Some(metric),
            summary: Some(summary),
            memory_mb,
            insight: format!("{insight}{}", guard.note),
            runs,
            interrupted: false,
            sigma: None,
            heldout: Vec::new(),
            bar: Some(bar),
            throughput: guard.record.clone(),
        };
        let rule = keep::rule(cfg);
        let look = |candidate: &[f64]| rule.look(&Look { best, best_runs: &[], candidate, runs: candidate.len(), bar, noise: Noise::default() });
        let first = look(&[m1]);
        if !matches!(first.verdict, Verdict::Confirm | Verdict::ConfirmBest) {
            return Ok(decided(status_of(first.verdict), m1, summary, mem1, first.why, runs));
        }
        let (out, run) = self.attempt(node, wt, "1", cfg.seed + 1)?;
        runs.push(run);
        match out {
            Outcome::Ok { metric: m2, memory_mb, .. } => {
                let vals = [m1, m2];
                let (mean, _) = keep::mean_std(&vals);
                let mut summary = summary;
                if let Value::Object(m) = &mut summary {
                    m.insert("runs".into(), json!(vals));
                }
                let confirmed = look(&vals);
                Ok(decided(status_of(confirmed.verdict), mean, summary, max_opt(mem1, memory_mb), confirmed.why, runs))
            }
            Outcome::Interrupted => Ok(Decision::failed(&Outcome::Interrupted, runs)),
            other => Ok(decided(Status::Discard, m1, summary, mem1, format!("the confirmation run failed ({}): not kept", other.label()), runs)),
        }
    }

    /// After a keep: one more run of the node that scores the held-out split too (its seed apart
    /// from the decision's runs). Its validation score is one more run of the node: in its mean
    /// (the best's value) and in the pooled noise.
    fn score_held_out(&self, node: &Node, wt: &Path, d: &mut Decision) -> Result<()> {
        let (out, run) = self.attempt(node, wt, layout::attempt::HELD_OUT, self.cfg.seed + 1000)?;
        d.runs.push(run);
        match out {
            Outcome::Ok { summary, metric, .. } => {
                d.heldout.extend(RunSummary::from_value(&summary).and_then(|s| s.heldout_bpb));
                let mut runs: Vec<f64> = match d.summary.as_ref().and_then(|s| s.get("runs")).and_then(Value::as_array) {
                    Some(r) => r.iter().filter_map(Value::as_f64).collect(),
                    None => d.metric.into_iter().collect(),
                };
                runs.push(metric);
                d.metric = Some(keep::mean_std(&runs).0);
                if let Some(Value::Object(m)) = &mut d.summary {
                    m.insert("runs".into(), json!(runs));
                }
            }
            Outcome::Interrupted => d.interrupted = true,
            other => d.insight.push_str(&format!("; its held-out run failed ({})", other.label())),
        }
        Ok(())
    }

    /// A rule that runs a sequential test (see `keep::Runs`): runs of the candidate or of the
    /// best, as the test asks, until it says keep or discard.
    fn tested(&self, node: &Node, wt: &Path, best: f64, bar: f64, best_node: i64) -> Result<Decision> {
        let cfg = &self.cfg;
        let rule = keep::rule(cfg);
        let (out, run) = self.attempt(node, wt, layout::attempt::FIRST, cfg.seed)?;
        let mut runs = vec![run];
        let (m1, mut memory, summary) = match out {
            Outcome::Ok { metric, memory_mb, summary } => (metric, memory_mb, summary),
            other => return Ok(Decision::failed(&other, runs)),
        };
        let mut metrics = vec![m1];
        // The best's runs this decision asked for, in order: the test counts them as they come,
        // so that a decision taken up again by `--resume` makes the same looks. The first may
        // be the throughput guard's, beside the candidate's first run.
        let guard = self.throughput_guard(node, best_node, 1)?;
        if guard.interrupted {
            return Ok(Decision::failed(&Outcome::Interrupted, runs));
        }
        let mut best_again: Vec<f64> = guard.again.into_iter().collect();
        let mut note = guard.note.clone();
        let (status, judged) = loop {
            let db = Db::open(&self.db_path)?;
            let best_runs = self.best_runs(&db, node, best_node, best, &best_again)?;
            let judged = rule.look(&Look { best, best_runs: &best_runs, candidate: &metrics, runs: metrics.len() + best_again.len(), bar, noise: db.noise()? });
            let again = match judged.verdict {
                Verdict::Keep => break (Status::Keep, judged),
                Verdict::Discard => break (Status::Discard, judged),
                Verdict::ConfirmBest => self.best_again_for_test(node, best_node, &mut best_again, &mut note)?,
                Verdict::Confirm => {
                    let k = metrics.len() as u64;
                    let (out, run) = self.attempt(node, wt, &k.to_string(), cfg.seed + k)?;
                    runs.push(run);
                    match out {
                        Outcome::Ok { metric, memory_mb, .. } => {
                            metrics.push(metric);
                            memory = max_opt(memory, memory_mb);
                            Again::Ran
                        }
                        Outcome::Interrupted => Again::Interrupted,
                        other => {
                            note.push_str(&format!("; run {} failed ({}): not kept", k + 1, other.label()));
                            Again::Failed
                        }
                    }
                }
            };
            match again {
                Again::Ran => {}
                Again::Interrupted => return Ok(Decision::failed(&Outcome::Interrupted, runs)),
                Again::Failed => break (Status::Discard, judged),
            }
        };
        if !best_again.is_empty() {
            Db::open(&self.db_path)?.set_mean_of_runs(best_node)?;
        }
        let (mean, _) = keep::mean_std(&metrics);
        let mut summary = summary;
        if let Value::Object(m) = &mut summary {
            m.insert("runs".into(), json!(metrics));
        }
        Ok(Decision {
            status,
            metric: Some(mean),
            summary: Some(summary),
            memory_mb: memory,
            insight: format!("runs [{}]: {}{note}", metrics.iter().map(|m| format!("{m:.6}")).collect::<Vec<_>>().join(", "), judged.why),
            runs,
            bar: Some(judged.bar),
            throughput: guard.record,
            ..Decision::unmeasured(status, "")
        })
    }

    /// The best's runs a test of `node` compares with: its own runs (not those this decision
    /// asked for, which come in order in `best_again`), else its value.
    fn best_runs(&self, db: &Db, node: &Node, best_node: i64, best: f64, best_again: &[f64]) -> Result<Vec<f64>> {
        let mine = layout::attempt::asked_by(&node.name());
        let mut best_runs: Vec<f64> = db.runs(best_node)?.into_iter().filter(|r| r.outcome == "ok" && !r.attempt.starts_with(&mine)).filter_map(|r| r.metric).collect();
        if best_runs.is_empty() {
            best_runs.push(best);
        }
        best_runs.extend(best_again);
        Ok(best_runs)
    }

    /// The run of the best a test asked for (its `best_again.len() + 1`-th), added to `best_again`.
    fn best_again_for_test(&self, node: &Node, best_node: i64, best_again: &mut Vec<f64>, note: &mut String) -> Result<Again> {
        let k = best_again.len() + 1;
        Ok(match self.run_best_again(node, best_node, k)? {
            Outcome::Ok { metric, .. } => {
                best_again.push(metric);
                note.push_str(&format!("; {} ran again for it ({metric:.6})", node_name(best_node)));
                Again::Ran
            }
            Outcome::Interrupted => Again::Interrupted,
            other => {
                note.push_str(&format!("; the best's run {} failed ({}): not kept", layout::attempt::again(&node.name(), k), other.label()));
                Again::Failed
            }
        })
    }

    /// The throughput guard (see `throughput`), after a candidate's first run, at a time
    /// budget: its tokens/s against the best's runs'; when they differ beyond the spread, the
    /// best runs again beside it (run `k` of the best this decision asks for).
    fn throughput_guard(&self, node: &Node, best_node: i64, k: usize) -> Result<Guarded> {
        let mut g = Guarded::default();
        if !self.cfg.throughput_guard || !matches!(self.cfg.budget, contract::budget::Budget::Time(_)) {
            return Ok(g);
        }
        let db = Db::open(&self.db_path)?;
        let state_dir = layout::Paths::new(&self.root, &self.cfg).state_dir;
        let best = db.require_node(best_node)?;
        let tps_of = |n: &Node| -> Result<Vec<f64>> { Ok(db.runs(n.id)?.iter().filter_map(|r| throughput::of_run(&state_dir, &n.name(), r)).collect()) };
        let Some(c) = throughput::check(&tps_of(&best)?, &tps_of(node)?, throughput::spread(&db, &state_dir)?) else { return Ok(g) };
        let mut record = json!(c);
        if c.flagged {
            self.progress.line(&format!("{}: throughput {}: flagged; {} runs again beside it", node.name(), c.describe(), best.name()));
            g.note = format!("; throughput flagged: {}", c.describe());
            match self.run_best_again(node, best_node, k)? {
                Outcome::Ok { metric, summary, .. } => {
                    g.again = Some(metric);
                    if let Some(beside) = throughput::of_summary(&summary) {
                        let moved = (c.candidate - beside).abs() <= c.tolerance;
                        record["best_beside"] = json!(beside);
                        record["machine_moved"] = json!(moved);
                        g.note.push_str(&format!(
                            "; {} ran again beside it at {beside:.0} tok/s: {}",
                            best.name(),
                            if moved { "the machine had moved, not the change" } else { "the candidate's own speed" }
                        ));
                    }
                }
                Outcome::Interrupted => g.interrupted = true,
                other => g.note.push_str(&format!("; {}'s run beside it failed ({})", best.name(), other.label())),
            }
        }
        g.record = Some(record);
        Ok(g)
    }

    /// Run `k` (from 1) of the best that `candidate`'s test asked for: the best's commit in a
    /// worktree of its own (a worker's, detached, removed after the run), recorded under the
    /// best, with a seed no other run of the best has.
    fn run_best_again(&self, candidate: &Node, best_node: i64, k: usize) -> Result<Outcome> {
        let best = Db::open(&self.db_path)?.require_node(best_node)?;
        let commit = best.commit.as_deref().ok_or_else(|| anyhow::anyhow!("{} has no commit to run again", best.name()))?;
        let oid = Git::oid(commit)?;
        let git = Git::discover(&self.root)?;
        let (tag, name) = (&self.cfg.tag, format!("{}-{}", best.name(), layout::attempt::again(&candidate.name(), k)));
        // A run still in flight from before a restart runs in the worktree it was started in.
        let wt = match git.worktree_head(tag, &name)? {
            Some(head) if head == oid => git.worktree_path(tag, &name),
            _ => git.add_worktree(tag, &name, oid)?,
        };
        let seed = self.cfg.seed + AGAIN_SEEDS + candidate.id as u64 * 100 + k as u64;
        let ran = self.attempt(&best, &wt, &layout::attempt::again(&candidate.name(), k), seed);
        git.remove_worktree(tag, &name)?;
        Ok(ran?.0)
    }

    fn spec(&self, node: &Node, wt: &Path, attempt: &str, seed: u64, scale: f64) -> RunSpec {
        RunSpec {
            commit: node.commit.clone().unwrap_or_default(),
            seed,
            batch_scale: scale,
            // The baseline's seeds and a kept node's extra run score the held-out split; a run
            // of the best that a test asked for does not.
            held_out: self.cfg.held_out
                && !attempt.starts_with(layout::attempt::AGAIN)
                && (node.parent.is_none() || attempt.starts_with(layout::attempt::HELD_OUT)),
            ..RunSpec::for_run(self.cfg.clone(), &self.root, wt, &self.profile, &node.name(), attempt)
        }
    }

    fn initial_scale(&self) -> f64 {
        crate::platform::batch_scale(&self.cfg, &self.profile)
    }

    /// One run of the node (`attempt` names it), with one retry at half the device batch after
    /// an out-of-memory exit. A run already recorded is not run again; one still in flight from
    /// an earlier runner is followed rather than started again.
    fn attempt(&self, node: &Node, wt: &Path, attempt: &str, seed: u64) -> Result<(Outcome, Run)> {
        let mut db = Db::open(&self.db_path)?;
        let done = db.runs(node.id)?;
        let jobs = db.jobs(Some(node.id))?;
        let mut scale = self.initial_scale();
        for retry in [false, true] {
            let label = if retry { format!("{attempt}-oom") } else { attempt.to_string() };
            if let Some(run) = done.iter().find(|r| r.attempt == label) {
                let spec = self.spec(node, wt, &label, seed, run.batch_scale.unwrap_or(scale));
                let out = recorded_outcome(run, &spec);
                if matches!(out, Outcome::OutOfMemory { .. }) && !retry {
                    scale = run.batch_scale.unwrap_or(scale) / 2.0;
                    continue;
                }
                return Ok((out, run.clone()));
            }
            let job = jobs.iter().find(|j| j.attempt == label);
            if let Some(j) = job {
                scale = j.batch_scale;
            }
            let spec = self.spec(node, wt, &label, seed, scale);
            let bar = self.progress.run_bar(&format!("{} seed {seed}", node.name()), spec.timeout);
            let mut tick = |e| bar.tick(e);
            let fin = match job {
                Some(j) => {
                    self.progress.line(&format!("resume: following {} run {label} ({})", node.name(), j.handle));
                    self.executor.attach(&spec, &j.handle, &mut tick)?.unwrap_or_else(|| Finished {
                        outcome: Outcome::Crash {
                            reason: "interrupted: the runner stopped during this run".into(),
                            tail: crate::process::tail(&spec.log, 40),
                        },
                        seconds: 0.0,
                        code: None,
                    })
                }
                None => {
                    let mut started = |handle: &str| {
                        db.set_job(&Job { node: node.id, attempt: label.clone(), seed, batch_scale: scale, handle: handle.to_string(), started_at: now() })
                    };
                    self.executor.run(&spec, &mut started, &mut tick)?
                }
            };
            drop(bar);
            let run = Run {
                node: node.id,
                attempt: label.clone(),
                seed,
                batch_scale: Some(scale),
                exit_code: fin.code,
                outcome: fin.outcome.label().to_string(),
                metric: if let Outcome::Ok { metric, .. } = &fin.outcome { Some(*metric) } else { None },
                seconds: fin.seconds,
                log: spec.log.display().to_string(),
            };
            db.insert_run(&run)?;
            self.progress.line(&run_line(node, &run, &self.cfg.metric, &spec));
            if matches!(fin.outcome, Outcome::OutOfMemory { .. }) && !retry {
                scale /= 2.0;
                self.progress.line(&format!("{}: out of memory, retrying with device batch scale {scale}", node.name()));
                continue;
            }
            return Ok((fin.outcome, run));
        }
        unreachable!("the retry loop returns on its second pass")
    }
}

/// The runner log's line for one finished run: `n0 run 1 (seed 43): ok val_bpb 2.436123 in
/// 64.2 s; 93 steps, loss 3.412000, 5.1k +- 0.4k tok/s`.
fn run_line(node: &Node, run: &Run, metric: &str, spec: &RunSpec) -> String {
    let value = run.metric.map(|m| format!(" {metric} {m:.6}")).unwrap_or_default();
    let curve = crate::curve::read(&crate::curve::path_for(&spec.summary_json)).map(|c| format!("; {}", c.describe())).unwrap_or_default();
    format!("{} run {} (seed {}): {}{value} in {:.1} s{curve}", node.name(), run.attempt, run.seed, run.outcome, run.seconds)
}

/// The outcome of a run recorded before a restart, rebuilt from its row, summary and log.
fn recorded_outcome(run: &Run, spec: &RunSpec) -> Outcome {
    let tail = || crate::process::tail(&spec.log, 40);
    match run.outcome.as_str() {
        "ok" => executor::classify(spec, Some(0), false, false),
        "oom" => Outcome::OutOfMemory { tail: tail() },
        "causality" => Outcome::Causality { tail: tail() },
        "timeout" => Outcome::Timeout { tail: tail() },
        "interrupted" => Outcome::Interrupted,
        _ => Outcome::Crash { reason: run.exit_code.map(|c| format!("exit {c}")).unwrap_or_else(|| "crashed".into()), tail: tail() },
    }
}
