//! `autoresearch run`: the keep/discard loop.
//!
//! Per experiment: plan (proposer) -> node in the db -> worktree at the parent's commit -> change
//! (proposer) -> commit, kept under refs/autoresearch/<tag>/<node> -> guard -> run (hard timeout,
//! one retry at half batch after an out-of-memory exit) -> keep rule -> db transaction -> branch
//! (keep only) -> results.tsv and JSONL rows -> worktree removed. `--resume` repairs whatever a
//! kill left between those steps, from the database.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

use crate::config::{KeepRule, ResearchConfig};
use crate::db::{Db, Finish, Node, Run, Status, iso8601, now};
use crate::errors::{CliError, repo_state};
use crate::executor::{self, Outcome, RunSpec};
use crate::git::{Git, branch_name};
use crate::keep::{self, Verdict};
use crate::progress::Progress;
use crate::proposer::{self, Applied, Ctx, Plan};
use crate::results;

/// Where a run keeps its state.
pub struct Paths {
    pub state_dir: PathBuf,
    pub db: PathBuf,
    pub jsonl: PathBuf,
    pub results: PathBuf,
    pub summary: PathBuf,
}

impl Paths {
    pub fn new(root: &Path, cfg: &ResearchConfig) -> Paths {
        let state_dir = root.join(".autoresearch").join(&cfg.tag);
        Paths {
            db: state_dir.join("tree.db"),
            jsonl: state_dir.join("experiments.jsonl"),
            summary: state_dir.join("autoresearch-summary.md"),
            results: crate::config::resolve(root, Path::new(&cfg.results_file)),
            state_dir,
        }
    }
}

pub struct Options {
    pub resume: bool,
    pub yes: bool,
}

/// The platform profile used by the run: explicit, else the detected one.
pub fn resolve_profile(root: &Path, cfg: &ResearchConfig) -> Result<(PathBuf, String, String)> {
    let path = if cfg.profile.is_empty() {
        crate::detect::detect(root, &cfg.features)?.profile_path
    } else {
        crate::config::resolve(root, Path::new(&cfg.profile))
    };
    let p = crate::detect::read_profile(&path).map_err(|e| crate::errors::usage(format!("profile: {e:#}")))?;
    let class = p.get("class").and_then(|v| v.as_str()).unwrap_or("gpu").to_string();
    let name = p.get("name").and_then(|v| v.as_str()).unwrap_or("custom").to_string();
    Ok((path, class, name))
}

pub fn describe(cfg: &ResearchConfig, paths: &Paths, profile: &Path) -> String {
    let max = if cfg.max_experiments == 0 { "unlimited".to_string() } else { cfg.max_experiments.to_string() };
    let keep = match cfg.keep_rule {
        KeepRule::Strict => "strict (keep only a strictly better metric)".to_string(),
        KeepRule::NoiseAware => format!(
            "noise-aware ({} baseline runs, bar = max(2 sigma, {}), confirmation run)",
            cfg.baseline_runs, cfg.noise_floor
        ),
    };
    let proposer = match cfg.proposer {
        crate::config::ProposerKind::Command => format!("command: {}", cfg.command.command),
        crate::config::ProposerKind::Agent => format!("agent: {}", cfg.agent.command),
        crate::config::ProposerKind::Search => format!("search over {}", cfg.search_space),
        crate::config::ProposerKind::Manual => "manual (waits for `tree record`)".into(),
    };
    let exp = if cfg.experiment_command.is_empty() { executor::default_command(cfg) } else { cfg.experiment_command.clone() };
    format!(
        "tag:            {tag}\nbranch:         {branch}\nbudget:         {budget}\nmetric:         {metric} ({dir} is better)\nexperiments:    {max}\nscope:          {scope}\nread-only:      {ro}\nproposer:       {proposer}\nexecutor:       {exec}: {exp}\nprofile:        {profile}\nkeep rule:      {keep}\nhard timeout:   {timeout} s\nseed:           {seed}\nresults:        {results}\nstate:          {state}\n",
        tag = cfg.tag,
        branch = branch_name(&cfg.tag),
        budget = cfg.budget,
        metric = cfg.metric,
        dir = cfg.direction,
        scope = cfg.scope.join(", "),
        ro = cfg.read_only.join(", "),
        exec = cfg.executor,
        profile = profile.display(),
        timeout = cfg.hard_timeout().as_secs(),
        seed = cfg.seed,
        results = paths.results.display(),
        state = paths.state_dir.display(),
    )
}

fn confirm(prompt: &str) -> Result<()> {
    eprint!("{prompt} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim().to_lowercase().as_str(), "y" | "yes") { Ok(()) } else { Err(CliError::Cancelled.into()) }
}

struct Loop<'a> {
    cfg: &'a ResearchConfig,
    git: &'a Git,
    db: Db,
    paths: Paths,
    profile: PathBuf,
    class: String,
    platform: String,
    ro_hashes: BTreeMap<String, String>,
    progress: Progress,
    started: f64,
}

pub fn run(cfg: &ResearchConfig, git: &Git, opts: Options) -> Result<()> {
    let root = git.root.clone();
    let paths = Paths::new(&root, cfg);
    let (profile, class, platform) = resolve_profile(&root, cfg)?;
    let tip = git.branch_tip(&cfg.tag)?;
    match (tip, opts.resume) {
        (Some(_), false) => {
            return Err(repo_state(format!(
                "branch {} already exists: pass --resume to continue that run, or choose another --tag",
                branch_name(&cfg.tag)
            )));
        }
        (None, true) => {
            return Err(repo_state(format!("nothing to resume: branch {} does not exist (start it without --resume)", branch_name(&cfg.tag))));
        }
        (None, false) if paths.db.exists() => {
            return Err(repo_state(format!(
                "{} exists from an earlier run with this tag: remove {} or choose another --tag",
                paths.db.display(),
                paths.state_dir.display()
            )));
        }
        _ => {}
    }
    println!("{}", describe(cfg, &paths, &profile));
    if !opts.yes && std::io::stdin().is_terminal() {
        confirm(if opts.resume { "Resume this run?" } else { "Start this run?" })?;
    }
    crate::process::install_interrupt_handler();
    std::fs::create_dir_all(paths.state_dir.join("logs"))?;
    std::fs::create_dir_all(paths.state_dir.join("runs"))?;
    let db = Db::open(&paths.db)?;
    let ro_hashes = if opts.resume {
        let text = db.meta("ro_hashes")?.ok_or_else(|| anyhow!("{}: no recorded read-only hashes", paths.db.display()))?;
        serde_json::from_str(&text)?
    } else {
        let base = git.head_commit()?;
        let hashes = git.tree_hashes(base, &cfg.read_only)?;
        db.set_meta("tag", &cfg.tag)?;
        db.set_meta("base_commit", &base.to_string())?;
        db.set_meta("ro_hashes", &serde_json::to_string(&hashes)?)?;
        db.set_meta("config", &serde_json::to_string(cfg)?)?;
        db.set_meta("started_at", &now().to_string())?;
        git.create_branch(&cfg.tag, base)?;
        println!("created branch {} at {}", branch_name(&cfg.tag), &base.to_string()[..7]);
        hashes
    };
    let started = db.meta("started_at")?.and_then(|s| s.parse().ok()).unwrap_or_else(now);
    let total = cfg.max_experiments;
    let mut lp = Loop { cfg, git, db, paths, profile, class, platform, ro_hashes, progress: Progress::new(total), started };
    if opts.resume {
        lp.recover()?;
    }
    let result = lp.main_loop();
    lp.progress.finish();
    let summary = lp.write_summary();
    match (&result, summary) {
        (_, Ok(p)) => println!("summary: {}", p.display()),
        (Ok(()), Err(e)) => return Err(e),
        (Err(_), Err(_)) => {}
    }
    result
}

impl Loop<'_> {
    fn tag(&self) -> &str {
        &self.cfg.tag
    }

    /// Repairs what a kill left: orphaned experiment processes, unfinished nodes, worktrees,
    /// missing refs, the branch, and results/JSONL rows.
    fn recover(&mut self) -> Result<()> {
        for n in self.db.nodes()? {
            // Finished nodes, and ideas planned with `tree add`, need nothing.
            if n.status.finished() || n.proposer == crate::tree::PLANNED {
                continue;
            }
            if let Some(pid) = n.pid
                && crate::process::kill_orphan_group(pid)
            {
                self.progress.line(&format!("resume: killed the orphaned experiment of {} (process group {pid})", n.name()));
            }
            match &n.commit {
                Some(_) => {
                    let insight = "interrupted: the runner stopped during this experiment";
                    self.finish_node(&n, Status::Crash, None, None, None, insight, None, &[])?;
                    self.progress.line(&format!("resume: {} was left {}, recorded as crash", n.name(), n.status.as_str()));
                }
                None => {
                    self.db.delete_node(n.id)?;
                    self.git.delete_node_ref(self.tag(), &n.name())?;
                }
            }
        }
        // Worktrees of planned nodes belong to a person (`tree worktree`): they stay.
        let planned: Vec<String> = self.db.nodes()?.iter().filter(|n| n.proposer == crate::tree::PLANNED).map(|n| n.name()).collect();
        for wt in self.git.cleanup_worktrees(self.tag(), &planned)? {
            self.progress.line(&format!("resume: removed worktree {wt}"));
        }
        let nodes = self.db.nodes()?;
        for n in &nodes {
            if let Some(c) = &n.commit {
                self.git.set_node_ref(self.tag(), &n.name(), Git::oid(c)?)?;
            }
        }
        if let Some(best) = self.best_node(&nodes)
            && let Some(c) = &best.commit
            && self.git.branch_tip(self.tag())?.map(|o| o.to_string()).as_deref() != Some(c.as_str())
        {
            self.git.set_branch(self.tag(), Git::oid(c)?, "autoresearch: resume")?;
            self.progress.line(&format!("resume: branch moved to the best experiment {}", best.name()));
        }
        self.reconcile_rows(&nodes)?;
        Ok(())
    }

    fn reconcile_rows(&self, nodes: &[Node]) -> Result<()> {
        let mut done: Vec<&Node> = nodes.iter().filter(|n| n.finish_seq.is_some()).collect();
        done.sort_by_key(|n| n.finish_seq);
        let rows: Vec<String> = done.iter().filter_map(|n| n.result_row.clone()).collect();
        let lines: Vec<String> = done.iter().filter_map(|n| n.jsonl.clone()).collect();
        let a = results::reconcile(&self.paths.results, Some(results::HEADER), &rows)?;
        let b = results::reconcile(&self.paths.jsonl, None, &lines)?;
        if a + b > 0 {
            self.progress.line(&format!("resume: restored {a} results rows and {b} log lines"));
        }
        Ok(())
    }

    /// The best experiment: the last keep.
    fn best_node<'n>(&self, nodes: &'n [Node]) -> Option<&'n Node> {
        nodes.iter().filter(|n| n.status == Status::Keep).max_by_key(|n| n.finish_seq)
    }

    /// What a proposer sees for experiment number `iteration`, with `best` the current best.
    fn proposer_ctx(&self, best: i64, iteration: u64) -> Ctx<'_> {
        Ctx {
            cfg: self.cfg,
            git: self.git,
            db: &self.db,
            tag: &self.cfg.tag,
            best,
            iteration,
            state_dir: &self.paths.state_dir,
            results_file: self.paths.results.clone(),
            class: &self.class,
        }
    }

    fn sigma(&self) -> f64 {
        self.db.meta("sigma").ok().flatten().and_then(|s| s.parse().ok()).unwrap_or(0.0)
    }

    fn main_loop(&mut self) -> Result<()> {
        let mut idle = 0; // consecutive proposals that changed nothing or failed
        loop {
            if crate::process::interrupted() {
                return Err(CliError::Interrupted.into());
            }
            let nodes = self.db.nodes()?;
            let done = nodes.iter().filter(|n| n.parent.is_some() && n.finish_seq.is_some()).count() as u64;
            let best = match self.best_node(&nodes) {
                Some(b) => b.clone(),
                None => {
                    self.baseline()?;
                    continue;
                }
            };
            self.progress.set_done(done, &format!("{} ({})", proposer::fmt_metric(best.metric), best.name()));
            if self.cfg.max_experiments > 0 && done >= self.cfg.max_experiments {
                self.progress.line(&format!("done: {done} experiments"));
                return Ok(());
            }
            if idle >= 3 {
                self.progress.line("stopping: the proposer made no usable change three times in a row");
                return Ok(());
            }
            let mut prop = proposer::build(self.cfg, &self.git.root)?;
            let ctx = self.proposer_ctx(best.id, done + 1);
            let Some(plan) = prop.plan(&ctx)? else {
                self.progress.line("stopping: the search space is exhausted");
                return Ok(());
            };
            match self.experiment(&mut *prop, &plan, &best, done + 1)? {
                true => idle = 0,
                false => idle += 1,
            }
            let finished = done + 1;
            if finished % 10 == 0 {
                self.progress_line(finished)?;
            }
        }
    }

    fn progress_line(&self, finished: u64) -> Result<()> {
        let nodes = self.db.nodes()?;
        let count = |s: Status| nodes.iter().filter(|n| n.parent.is_some() && n.status == s).count();
        let best = self.best_node(&nodes);
        let hours = ((now() - self.started) / 3600.0).max(1e-9);
        self.progress.line(&format!(
            "-- {finished} experiments: best {} ({}), {} keeps, {} discards, {} crashes, {} rejected, {:.1} experiments/hour",
            proposer::fmt_metric(best.and_then(|b| b.metric)),
            best.map(|b| b.name()).unwrap_or_default(),
            count(Status::Keep),
            count(Status::Discard),
            count(Status::Crash),
            count(Status::Rejected),
            finished as f64 / hours
        ));
        Ok(())
    }

    /// The unmodified trainer, run `baseline_runs` times (noise-aware) to measure the noise.
    fn baseline(&mut self) -> Result<()> {
        let tip = self.git.branch_tip(self.tag())?.context("the run branch disappeared")?;
        let id = self.db.insert_node(None, "the unmodified trainer", "baseline", None, "baseline", &self.platform)?;
        let node = self.db.require_node(id)?;
        self.db.set_text(id, "commit_id", &tip.to_string())?;
        self.git.set_node_ref(self.tag(), &node.name(), tip)?;
        let node = self.db.require_node(id)?;
        self.db.set_running(id)?;
        let wt = self.git.add_worktree(self.tag(), &node.name(), tip)?;
        let k = if self.cfg.keep_rule == KeepRule::NoiseAware { self.cfg.baseline_runs.max(2) } else { 1 };
        let mut metrics = Vec::new();
        let mut runs = Vec::new();
        let mut memory: Option<f64> = None;
        let mut last_summary = None;
        for i in 0..k {
            let (out, run) = self.run_with_retry(&node, &wt, self.cfg.seed + i as u64, i)?;
            runs.push(run);
            match out {
                Outcome::Ok { metric, memory_mb, summary } => {
                    metrics.push(metric);
                    memory = max_opt(memory, memory_mb);
                    last_summary = Some(summary);
                }
                Outcome::Interrupted => return self.interrupted(&node, &runs),
                other => {
                    let (status, insight) = failure(&other);
                    self.finish_node(&node, status, None, None, None, &insight, None, &runs)?;
                    self.git.remove_worktree(self.tag(), &node.name())?;
                    return Err(anyhow!(
                        "the baseline failed ({}); fix the trainer or the setup, then `autoresearch run --resume --tag {}`:\n{}",
                        other.label(),
                        self.tag(),
                        insight
                    ));
                }
            }
        }
        let (mean, sd) = keep::mean_std(&metrics);
        self.db.set_meta("sigma", &sd.to_string())?;
        let bar = keep::bar(self.cfg.keep_rule, sd, self.cfg.noise_floor);
        let insight = format!("{} runs: {:?}; sigma {:.6}; keep bar {:.6}", metrics.len(), metrics, sd, bar);
        let mut summary = last_summary.unwrap_or(Value::Null);
        if let Value::Object(m) = &mut summary {
            m.insert("runs".into(), json!(metrics));
            m.insert("sigma".into(), json!(sd));
        }
        self.finish_node(&node, Status::Keep, Some(mean), Some(&summary), memory, &insight, None, &runs)?;
        self.git.remove_worktree(self.tag(), &node.name())?;
        self.progress.line(&format!("{} baseline {} = {:.6} (sigma {:.6}, bar {:.6})", node.name(), self.cfg.metric, mean, sd, bar));
        Ok(())
    }

    /// One experiment. Returns false when the proposer produced nothing usable.
    fn experiment(&mut self, prop: &mut dyn proposer::Proposer, plan: &Plan, best: &Node, iteration: u64) -> Result<bool> {
        let parent = self.db.require_node(plan.parent)?;
        let parent_oid = Git::oid(parent.commit.as_deref().context("the parent node has no commit")?)?;
        let id = self.db.insert_node(Some(parent.id), &plan.hypothesis, &plan.description, plan.change.as_ref(), &prop.kind().to_string(), &self.platform)?;
        let node = self.db.require_node(id)?;
        let wt = self.git.add_worktree(self.tag(), &node.name(), parent_oid)?;
        let ctx = self.proposer_ctx(best.id, iteration);
        let applied = match prop.apply(&ctx, &node, plan, &wt) {
            Ok(a) => a,
            Err(e) => {
                self.drop_node(&node)?;
                return Err(e);
            }
        };
        let (description, hypothesis) = match applied {
            Applied::Failed(reason) => {
                self.drop_node(&node)?;
                self.progress.line(&format!("{}: no proposal ({reason})", node.name()));
                return Ok(false);
            }
            Applied::Done { description, hypothesis } => {
                (description.unwrap_or_else(|| plan.description.clone()), hypothesis.unwrap_or_else(|| plan.hypothesis.clone()))
            }
        };
        self.db.set_text(id, "description", &description)?;
        self.db.set_text(id, "hypothesis", &hypothesis)?;
        let message = if hypothesis.is_empty() { description.clone() } else { format!("{description}\n\nHypothesis: {hypothesis}") };
        let Some(commit) = self.git.commit_worktree(&wt, parent_oid, &message)? else {
            self.drop_node(&node)?;
            self.progress.line(&format!("{}: no proposal (the change was empty)", node.name()));
            return Ok(false);
        };
        self.db.set_text(id, "commit_id", &commit.to_string())?;
        self.git.set_node_ref(self.tag(), &node.name(), commit)?;
        let node = self.db.require_node(id)?;
        if let Some(reason) = crate::guard::check(self.git, self.cfg, parent_oid, commit, &wt, &self.ro_hashes)? {
            self.finish_node(&node, Status::Rejected, None, None, None, &reason, Some(best), &[])?;
            self.git.remove_worktree(self.tag(), &node.name())?;
            self.report(&node.name(), "rejected", None, best, &format!("{description}: {reason}"));
            return Ok(true);
        }
        self.db.set_running(id)?;
        let best_value = best.metric.context("the best node has no metric")?;
        let bar = keep::bar(self.cfg.keep_rule, self.sigma(), self.cfg.noise_floor);
        let (status, metric, summary, memory, insight, runs) = if prop.executes() {
            self.execute_and_decide(&node, &wt, best_value, bar)?
        } else {
            self.recorded_and_decide(&node, best_value, bar)?
        };
        if status == Status::Running {
            return self.interrupted(&node, &runs).map(|_| true);
        }
        self.finish_node(&node, status, metric, summary.as_ref(), memory, &insight, Some(best), &runs)?;
        self.git.remove_worktree(self.tag(), &node.name())?;
        self.report(&node.name(), status.as_str(), metric, best, &description);
        Ok(true)
    }

    fn report(&self, name: &str, status: &str, metric: Option<f64>, best: &Node, description: &str) {
        let delta = match (metric, best.metric) {
            (Some(m), Some(b)) => format!(" ({:+.6})", m - b),
            _ => String::new(),
        };
        self.progress.line(&format!("{name} {status:<8} {}{delta}  {description}", proposer::fmt_metric(metric)));
    }

    fn drop_node(&mut self, node: &Node) -> Result<()> {
        self.git.remove_worktree(self.tag(), &node.name())?;
        self.git.delete_node_ref(self.tag(), &node.name())?;
        self.db.delete_node(node.id)
    }

    #[allow(clippy::type_complexity)]
    fn execute_and_decide(
        &mut self,
        node: &Node,
        wt: &Path,
        best: f64,
        bar: f64,
    ) -> Result<(Status, Option<f64>, Option<Value>, Option<f64>, String, Vec<Run>)> {
        let dir = self.cfg.direction;
        let (out, run) = self.run_with_retry(node, wt, self.cfg.seed, 0)?;
        let mut runs = vec![run];
        let (m1, mem1, summary) = match out {
            Outcome::Ok { metric, memory_mb, summary } => (metric, memory_mb, summary),
            Outcome::Interrupted => return Ok((Status::Running, None, None, None, String::new(), runs)),
            other => {
                let (status, insight) = failure(&other);
                return Ok((status, None, None, None, insight, runs));
            }
        };
        match keep::first(self.cfg.keep_rule, dir, best, m1, bar) {
            Verdict::Keep => Ok((Status::Keep, Some(m1), Some(summary), mem1, format!("gain {:.6} over {:.6}", dir.gain(best, m1), best), runs)),
            Verdict::Discard => Ok((
                Status::Discard,
                Some(m1),
                Some(summary),
                mem1,
                format!("gain {:.6} does not clear the bar {:.6}", dir.gain(best, m1), bar),
                runs,
            )),
            Verdict::Confirm => {
                let (out, run) = self.run_with_retry(node, wt, self.cfg.seed + 1, 1)?;
                runs.push(run);
                match out {
                    Outcome::Ok { metric: m2, memory_mb, .. } => {
                        let vals = [m1, m2];
                        let (mean, _) = keep::mean_std(&vals);
                        let mut summary = summary;
                        if let Value::Object(m) = &mut summary {
                            m.insert("runs".into(), json!(vals));
                        }
                        let mem = max_opt(mem1, memory_mb);
                        let v = keep::confirmed(dir, best, &vals, bar);
                        let insight = format!("runs {vals:?}, mean gain {:.6} vs bar {:.6}", dir.gain(best, mean), bar);
                        let status = if v == Verdict::Keep { Status::Keep } else { Status::Discard };
                        Ok((status, Some(mean), Some(summary), mem, insight, runs))
                    }
                    Outcome::Interrupted => Ok((Status::Running, None, None, None, String::new(), runs)),
                    other => Ok((
                        Status::Discard,
                        Some(m1),
                        Some(summary),
                        mem1,
                        format!("the confirmation run failed ({}): not kept", other.label()),
                        runs,
                    )),
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn recorded_and_decide(&mut self, node: &Node, best: f64, bar: f64) -> Result<(Status, Option<f64>, Option<Value>, Option<f64>, String, Vec<Run>)> {
        let rec = self.db.require_node(node.id)?.recorded.unwrap_or(Value::Null);
        if let Some(why) = rec.get("crash").and_then(Value::as_str) {
            return Ok((Status::Crash, None, None, None, why.to_string(), vec![]));
        }
        let Some(m) = rec.get("metric").and_then(Value::as_f64) else {
            return Ok((Status::Crash, None, None, None, "recorded without a metric".into(), vec![]));
        };
        let mem = rec.get("memory_mb").and_then(Value::as_f64);
        let summary = rec.get("summary").cloned();
        // One recorded run: a confirmation would need another manual run, so the bar alone decides.
        let gain = self.cfg.direction.gain(best, m);
        let keep = match self.cfg.keep_rule {
            KeepRule::Strict => gain > 0.0,
            KeepRule::NoiseAware => gain > bar,
        };
        let status = if keep { Status::Keep } else { Status::Discard };
        Ok((status, Some(m), summary, mem, format!("recorded; gain {gain:.6}, bar {bar:.6}"), vec![]))
    }

    /// One run; after an out-of-memory exit, one retry with the device batch halved.
    fn run_with_retry(&mut self, node: &Node, wt: &Path, seed: u64, attempt: u32) -> Result<(Outcome, Run)> {
        let mut scale = if self.cfg.device_batch_scale > 0.0 {
            self.cfg.device_batch_scale
        } else {
            crate::detect::profile_batch_scale(&self.profile)
        };
        let mut retried = false;
        loop {
            let suffix = if retried { format!("{attempt}-oom") } else { attempt.to_string() };
            let spec = RunSpec {
                cfg: self.cfg,
                repo_root: &self.git.root,
                worktree: wt,
                profile: &self.profile,
                seed,
                batch_scale: scale,
                summary_json: self.paths.state_dir.join("runs").join(format!("{}-{suffix}.json", node.name())),
                log: self.paths.state_dir.join("logs").join(format!("{}-{suffix}.log", node.name())),
                timeout: self.cfg.hard_timeout(),
            };
            self.progress.start_run(&format!("{} seed {seed}", node.name()), spec.timeout);
            let db = &self.db;
            let progress = &self.progress;
            let id = node.id;
            let res = executor::run_once(&spec, |pgid| db.set_pid(id, Some(pgid as i64)), |e| progress.tick(e));
            self.progress.end_run();
            let (out, seconds, code) = res?;
            self.db.set_pid(node.id, None)?;
            let run = Run {
                node: node.id,
                seed,
                batch_scale: Some(scale),
                exit_code: code,
                outcome: out.label().to_string(),
                metric: if let Outcome::Ok { metric, .. } = &out { Some(*metric) } else { None },
                seconds,
                log: spec.log.display().to_string(),
            };
            self.db.insert_run(&run)?;
            if let Outcome::OutOfMemory { .. } = out
                && !retried
            {
                retried = true;
                scale /= 2.0;
                self.progress.line(&format!("{}: out of memory, retrying with device batch scale {scale}", node.name()));
                continue;
            }
            return Ok((out, run));
        }
    }

    fn interrupted(&mut self, node: &Node, runs: &[Run]) -> Result<()> {
        self.finish_node(node, Status::Crash, None, None, None, "interrupted by the user", None, runs)?;
        self.git.remove_worktree(self.tag(), &node.name())?;
        Err(CliError::Interrupted.into())
    }

    /// Records a finished node: db transaction, then the branch (keep), then the two log rows.
    #[allow(clippy::too_many_arguments)]
    fn finish_node(
        &mut self,
        node: &Node,
        status: Status,
        metric: Option<f64>,
        summary: Option<&Value>,
        memory_mb: Option<f64>,
        insight: &str,
        best: Option<&Node>,
        runs: &[Run],
    ) -> Result<()> {
        let commit = node.commit.clone().unwrap_or_default();
        let mut desc = node.description.clone();
        if status.failed() {
            // The reason (first insight line) and the last line of the log tail.
            let reason = insight.lines().next().unwrap_or(status.as_str()).trim();
            let tail: Vec<&str> = insight.lines().skip(1).collect();
            let last = tail.iter().rev().find(|l| !l.trim().is_empty()).copied().unwrap_or("").trim();
            let why = if last.is_empty() { reason.to_string() } else { format!("{reason}: {last}") };
            desc = format!("{desc} [{}]", why.chars().take(200).collect::<String>());
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
            "memory_gb": memory_mb.map(|m| m / 1024.0),
            "hypothesis": node.hypothesis,
            "description": node.description,
            "insight": insight,
            "platform": self.platform,
            "started_at": node.started_at.map(iso8601),
            "finished_at": iso8601(finished),
            "seconds": runs.iter().map(|r| r.seconds).sum::<f64>(),
            "runs": runs.iter().map(|r| json!({"seed": r.seed, "outcome": r.outcome, "metric": r.metric, "exit_code": r.exit_code, "batch_scale": r.batch_scale, "log": r.log})).collect::<Vec<_>>(),
        });
        let line = record.to_string();
        let has_commit = node.commit.is_some();
        self.db.finish(
            node.id,
            &Finish {
                status,
                metric,
                metrics: summary,
                memory_mb,
                insight,
                result_row: has_commit.then_some(row.as_str()),
                jsonl: Some(&line),
            },
        )?;
        if status == Status::Keep && has_commit {
            self.git.set_branch(self.tag(), Git::oid(&commit)?, &format!("autoresearch: keep {}", node.name()))?;
        }
        if has_commit {
            results::append_line(&self.paths.results, Some(results::HEADER), &row)?;
        }
        results::append_line(&self.paths.jsonl, None, &line)?;
        Ok(())
    }

    fn write_summary(&self) -> Result<PathBuf> {
        let nodes = self.db.nodes()?;
        let text = summary_markdown(self.cfg, &nodes, self.started);
        results::write_atomic(&self.paths.summary, &text)?;
        Ok(self.paths.summary.clone())
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// Status and insight for a failed run.
fn failure(out: &Outcome) -> (Status, String) {
    match out {
        Outcome::Causality { tail } => (Status::Rejected, format!("causality violation (harness exit 4)\n{tail}")),
        Outcome::OutOfMemory { tail } => (Status::Crash, format!("out of memory, also at half the device batch\n{tail}")),
        Outcome::Timeout { tail } => (Status::Crash, format!("timeout: killed at the hard timeout\n{tail}")),
        Outcome::Crash { reason, tail } => (Status::Crash, format!("{reason}\n{tail}")),
        Outcome::Interrupted => (Status::Crash, "interrupted".into()),
        Outcome::Ok { .. } => (Status::Keep, String::new()),
    }
}

/// `autoresearch-summary.md`.
pub fn summary_markdown(cfg: &ResearchConfig, nodes: &[Node], started: f64) -> String {
    let baseline = nodes.iter().find(|n| n.parent.is_none() && n.status == Status::Keep);
    let best = nodes.iter().filter(|n| n.status == Status::Keep).max_by_key(|n| n.finish_seq);
    let exps: Vec<&Node> = nodes.iter().filter(|n| n.parent.is_some() && n.finish_seq.is_some()).collect();
    let count = |s: Status| exps.iter().filter(|n| n.status == s).count();
    let last = nodes.iter().filter_map(|n| n.finished_at).fold(started, f64::max);
    let hours = ((last - started) / 3600.0).max(1e-9);
    let mut s = format!("# autoresearch run `{}`\n\n", cfg.tag);
    s.push_str(&format!("- branch: `{}`\n- metric: {} ({} is better), budget {}\n", branch_name(&cfg.tag), cfg.metric, cfg.direction, cfg.budget));
    if let Some(b) = baseline {
        s.push_str(&format!("- baseline: {} ({})\n", proposer::fmt_metric(b.metric), b.name()));
    }
    if let (Some(b), Some(base)) = (best, baseline) {
        let (bm, m0) = (b.metric.unwrap_or(f64::NAN), base.metric.unwrap_or(f64::NAN));
        let gain = cfg.direction.gain(m0, bm);
        s.push_str(&format!(
            "- best: {} ({}, commit {})\n- improvement: {:.6} ({:.2} %)\n",
            proposer::fmt_metric(b.metric),
            b.name(),
            b.commit.as_deref().map(|c| &c[..7.min(c.len())]).unwrap_or("-"),
            gain,
            100.0 * gain / m0.abs().max(1e-12)
        ));
    }
    s.push_str(&format!(
        "- experiments: {} ({} keep, {} discard, {} crash, {} rejected, {} pruned) in {:.2} h: {:.1} experiments/hour\n",
        exps.len(),
        count(Status::Keep),
        count(Status::Discard),
        count(Status::Crash),
        count(Status::Rejected),
        count(Status::Pruned),
        hours,
        exps.len() as f64 / hours
    ));
    s.push_str("\n## Kept changes\n\n| node | metric | description |\n|---|---|---|\n");
    let mut keeps: Vec<&Node> = nodes.iter().filter(|n| n.status == Status::Keep).collect();
    keeps.sort_by_key(|n| n.finish_seq);
    for n in keeps {
        s.push_str(&format!("| {} | {} | {} |\n", n.name(), proposer::fmt_metric(n.metric), n.description.replace('|', "/")));
    }
    s
}
