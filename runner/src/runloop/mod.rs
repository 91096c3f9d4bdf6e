//! `autoresearch run`: the keep/discard loop.
//!
//! Per experiment: plan (proposer) -> node in the db -> worktree at the parent's commit -> change
//! (proposer) -> commit, kept under refs/autoresearch/<tag>/<node> -> guard -> runs on a worker
//! thread through the executor (see `worker`) -> keep rule, re-checked against the best when the
//! result arrives -> db transaction -> branch (keep only) -> results.tsv and JSONL rows ->
//! worktree removed. Up to `slots` experiments are in flight at once; only this thread touches
//! git, the branch and the result files, so rows are whole and never interleaved (a worker adds
//! and removes only the detached worktree its test runs the best in). `--resume`
//! repairs whatever a kill left between those steps, from the database, and follows Slurm jobs
//! that are still running.
//!
//! Here: the run's setup, the main loop and the workers' bookkeeping. Starting the baseline and
//! an experiment is in `experiment`, queued ideas in `ideas`, recording a result in `record`,
//! `--resume` in `resume`.

mod decision;
mod experiment;
mod ideas;
mod limits;
mod record;
mod resume;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use crate::config::ResearchConfig;
use crate::db::{Db, Node, Status, now};
use crate::errors::{CliError, repo_state};
use crate::executor;
use crate::git::{Git, branch_name};
use crate::keep;
use crate::layout::Paths;
use crate::progress::Progress;
use crate::proposer::{self, Ctx};
use crate::results;
use crate::tree::{self, fmt_metric};
use worker::{Decision, Shared, Task};

pub struct Options {
    pub resume: bool,
    pub yes: bool,
}

pub fn describe(cfg: &ResearchConfig, paths: &Paths, profile: &Path, runs_on: &dyn executor::Executor) -> String {
    let max = if cfg.max_experiments == 0 { "unlimited".to_string() } else { cfg.max_experiments.to_string() };
    let keep = keep::rule(cfg).describe();
    let proposer = match cfg.proposer {
        crate::config::ProposerKind::Command => format!("command: {}", cfg.command.command),
        crate::config::ProposerKind::Agent => match cfg.agent_preset() {
            Ok((key, p)) if cfg.agent.command.trim().is_empty() => format!("agent {key} ({}): {}", p.name, p.command),
            _ => format!("agent: {}", cfg.agent.command),
        },
        crate::config::ProposerKind::Search => format!("search over {}", cfg.search_space),
        crate::config::ProposerKind::Manual => "manual (waits for `tree exec` or `tree record`)".into(),
    };
    // The scorer's command line of an experiment's first run, as the loop will run it, with
    // paths relative to the repository and the node and run left open.
    let here = Path::new(".");
    let first_run = executor::RunSpec {
        batch_scale: crate::platform::batch_scale(cfg, profile),
        ..executor::RunSpec::for_run(Arc::new(cfg.clone()), here, here, &Paths::new(here, cfg).profile_snapshot(), "n<id>", "<run>")
    };
    let exp = match executor::custom_command(cfg) {
        Some(c) => c.to_string(),
        None => format!(
            "{}{} in the build sandbox (one build at a time), then the run's scorer on a private copy of the trainer: {}",
            runs_on.before_build(),
            executor::build_command(cfg),
            executor::harness_command(&first_run)
        ),
    };
    let exec = runs_on.describe();
    let checks = if cfg.checks_command.trim().is_empty() { "none".to_string() } else { format!("{} (in the build sandbox, {} s at most)", cfg.checks_command, cfg.checks_timeout_seconds) };
    let mut stops: Vec<String> = Vec::new();
    if cfg.max_without_keep > 0 {
        stops.push(format!("{} experiments in a row without a keep", cfg.max_without_keep));
    }
    if cfg.max_hours > 0.0 {
        stops.push(format!("{} h", cfg.max_hours));
    }
    if cfg.max_cost > 0.0 {
        stops.push(format!("${} (agent costs + ${}/h)", cfg.max_cost, cfg.cost_per_hour));
    }
    let max = if stops.is_empty() { max } else { format!("{max}, or stop at {}", stops.join(", ")) };
    let guard = match (cfg.throughput_guard, cfg.budget) {
        (true, contract::budget::Budget::Time(_)) => "on: a decision whose runs differ in tokens/s beyond their spread is flagged and the best runs again beside it",
        (true, _) => "off: the budget is not a time (the steps do not follow the speed)",
        (false, _) => "off",
    };
    format!(
        "tag:            {tag}\nbranch:         {branch}\nbudget:         {budget}\nmetric:         {metric} ({dir} is better)\nexperiments:    {max}\nchecks:         {checks}\nthroughput:     {guard}\nscope:          {scope}\nread-only:      {ro}\nproposer:       {proposer}\nexecutor:       {exec}: {exp}\nsandbox:        {sandbox}\nprofile:        {profile}\nkeep rule:      {keep}\nhard timeout:   {timeout} s\nseed:           {seed}\nresults:        {results}\nstate:          {state}\n",
        tag = cfg.tag,
        branch = branch_name(&cfg.tag),
        budget = cfg.budget,
        metric = cfg.metric,
        dir = cfg.direction,
        scope = cfg.scope.join(", "),
        ro = cfg.read_only.join(", "),
        sandbox = if cfg.require_sandbox { "required (landlock + seccomp, for builds and runs)" } else { "used where there is one; results without one say `sandbox: none`" },
        profile = profile.display(),
        timeout = cfg.hard_timeout().as_secs(),
        seed = cfg.seed,
        results = paths.results.display(),
        state = paths.state_dir.display(),
    )
}

/// Takes the run's own copy of its platform profile (`Paths::profile_snapshot`) when the run
/// starts. Its sha256 is in the database (`profile_sha256`) and in every summary.
fn snapshot_profile(source: &Path, paths: &Paths, db: &Db) -> Result<PathBuf> {
    let snapshot = paths.profile_snapshot();
    let text = std::fs::read(source).with_context(|| format!("reading the profile {}", source.display()))?;
    if snapshot.exists() {
        let kept = std::fs::read(&snapshot).with_context(|| format!("reading {}", snapshot.display()))?;
        if kept != text {
            println!("note: {} changed since the run started; the run keeps its snapshot {}", source.display(), snapshot.display());
        }
        return Ok(snapshot);
    }
    results::write_atomic(&snapshot, &text)?;
    let sha = crate::git::sha256_hex(&text);
    db.set_meta("profile_sha256", &sha)?;
    db.set_meta("profile_source", &source.display().to_string())?;
    println!("profile snapshot: {} (sha256 {})", snapshot.display(), &sha[..12]);
    Ok(snapshot)
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
    class: String,
    platform: String,
    ro_hashes: BTreeMap<String, String>,
    progress: Progress,
    started: f64,
    /// Seconds runners spent on the run before this one started (`limits::ACTIVE_SECONDS`).
    active_before: f64,
    /// When this runner started.
    invocation_start: f64,
    shared: Arc<Shared>,
    /// Nodes whose worker is running.
    in_flight: BTreeSet<i64>,
    tx: mpsc::Sender<(i64, Result<Decision>)>,
    rx: mpsc::Receiver<(i64, Result<Decision>)>,
    /// Set when a worker was interrupted: no new work, stop once the others are in.
    stopping: bool,
}

pub fn run(cfg: &ResearchConfig, git: &Git, opts: Options) -> Result<()> {
    let root = git.root.clone();
    let paths = Paths::new(&root, cfg);
    let (profile, class, platform) = crate::platform::resolve_profile(&root, cfg)?;
    refuse_wrong_start(cfg, git, &paths, opts.resume)?;
    crate::agents::require_installed(cfg)?;
    let executor = crate::executor::build(cfg);
    println!("{}", describe(cfg, &paths, &profile, executor.as_ref()));
    if !opts.yes && std::io::stdin().is_terminal() {
        confirm(if opts.resume { "Resume this run?" } else { "Start this run?" })?;
    }
    crate::process::install_interrupt_handler();
    paths.create_run_dirs()?;
    // Held until this function returns, whatever way: one runner per tag.
    let pid_file = crate::pidfile::PidFile::claim(&paths.state_dir, &cfg.tag)?;
    println!("runner pid {} in {} (`autoresearch stop --tag {}` stops it as Ctrl-C does)", std::process::id(), pid_file.path().display(), cfg.tag);
    let db = Db::open(&paths.db)?;
    let ro_hashes = if opts.resume { recorded_hashes(&db, &paths)? } else { start_branch(cfg, git, &db)? };
    let profile = snapshot_profile(&profile, &paths, &db)?;
    executor::ensure_sign_key(&paths.sign_key())?;
    let started = db.meta("started_at")?.and_then(|s| s.parse().ok()).unwrap_or_else(now);
    let active_before = db.meta(limits::ACTIVE_SECONDS)?.and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let progress = Progress::new(cfg.max_experiments);
    let shared = Arc::new(Shared {
        cfg: Arc::new(cfg.clone()),
        root: root.clone(),
        profile,
        db_path: paths.db.clone(),
        executor,
        progress: progress.clone(),
    });
    let (tx, rx) = mpsc::channel();
    let mut lp = Loop {
        cfg,
        git,
        db,
        paths,
        class,
        platform,
        ro_hashes,
        progress,
        started,
        active_before,
        invocation_start: now(),
        shared,
        in_flight: BTreeSet::new(),
        tx,
        rx,
        stopping: false,
    };
    let mut result = if opts.resume { lp.recover() } else { Ok(()) };
    if result.is_ok() {
        result = lp.main_loop();
    }
    lp.wind_down(&result)?;
    // The pictures and the page too; a run's result never depends on them.
    drop(lp);
    write_report(git, cfg);
    result
}

/// A run starts on a tag that has no branch and no database yet, and resumes one that has a
/// branch: anything else would mix two runs, or resume nothing.
fn refuse_wrong_start(cfg: &ResearchConfig, git: &Git, paths: &Paths, resume: bool) -> Result<()> {
    match (git.branch_tip(&cfg.tag)?, resume) {
        (Some(_), false) => Err(repo_state(format!(
            "branch {} already exists: pass --resume to continue that run, or choose another --tag",
            branch_name(&cfg.tag)
        ))),
        (None, true) => Err(repo_state(format!("nothing to resume: branch {} does not exist (start it without --resume)", branch_name(&cfg.tag)))),
        (None, false) if paths.db.exists() => Err(repo_state(format!(
            "{} exists from an earlier run with this tag: remove {} or choose another --tag",
            paths.db.display(),
            paths.state_dir.display()
        ))),
        _ => Ok(()),
    }
}

/// The hashes of the read-only paths a resumed run recorded when it started.
fn recorded_hashes(db: &Db, paths: &Paths) -> Result<BTreeMap<String, String>> {
    let text = db.meta("ro_hashes")?.ok_or_else(|| anyhow!("{}: no recorded read-only hashes", paths.db.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// A new run: records what it starts from (the base commit, the read-only paths' hashes, the
/// config, the time) and creates its branch at HEAD; returns the hashes.
fn start_branch(cfg: &ResearchConfig, git: &Git, db: &Db) -> Result<BTreeMap<String, String>> {
    let base = git.head_commit()?;
    let hashes = git.tree_hashes(base, &cfg.read_only)?;
    db.set_meta("tag", &cfg.tag)?;
    db.set_meta("base_commit", &base.to_string())?;
    db.set_meta("ro_hashes", &serde_json::to_string(&hashes)?)?;
    db.set_meta("config", &serde_json::to_string(cfg)?)?;
    db.set_meta("started_at", &now().to_string())?;
    git.create_branch(&cfg.tag, base)?;
    println!("created branch {} at {}", branch_name(&cfg.tag), &base.to_string()[..7]);
    Ok(hashes)
}

/// The report's pictures and page after a run; a failure is a warning, `autoresearch report`
/// retries.
fn write_report(git: &Git, cfg: &ResearchConfig) {
    match crate::report::write(git, cfg, None) {
        Ok(files) => {
            if let Some(page) = files.iter().find(|p| p.ends_with("report.html")) {
                println!("report: {}", page.display());
            }
        }
        Err(e) => eprintln!("warning: the report was not written ({e:#}); `autoresearch report` retries"),
    }
}

impl Loop<'_> {
    fn tag(&self) -> &str {
        &self.cfg.tag
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

    fn rule(&self) -> Box<dyn keep::Rule> {
        keep::rule(self.cfg)
    }

    fn bar(&self) -> f64 {
        self.rule().bar(self.sigma())
    }

    fn slots(&self) -> usize {
        self.shared.executor.slots().max(1)
    }

    /// Starts a worker for `node` in `worktree`.
    fn spawn(&mut self, node: Node, worktree: PathBuf, task: Task) {
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        let id = node.id;
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.work(&node, &worktree, task)))
                .unwrap_or_else(|_| Err(anyhow!("the worker of {} panicked", node.name())));
            let _ = tx.send((id, r));
        });
        self.in_flight.insert(id);
    }

    /// Waits up to `timeout` for one worker's result and records it.
    fn collect(&mut self, timeout: Duration) -> Result<bool> {
        match self.rx.recv_timeout(timeout) {
            Ok((id, result)) => {
                self.in_flight.remove(&id);
                self.conclude(id, result)?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// Waits for every worker (after Ctrl-C or an error), recording each result.
    fn drain(&mut self) -> Result<()> {
        let mut first_err = None;
        while !self.in_flight.is_empty() {
            if let Err(e) = self.collect(Duration::from_millis(200)) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Whatever stopped the loop (`result`), no run is left behind: the workers' runs are
    /// stopped and recorded, the run's time stored, the build tree handed back and the summary
    /// written. Errs only when the loop succeeded and the summary could not be written.
    fn wind_down(&mut self, result: &Result<()>) -> Result<()> {
        if !self.in_flight.is_empty() {
            crate::process::request_stop();
            if let Err(e) = self.drain() {
                self.progress.line(&format!("error while stopping the runs in flight: {e:#}"));
            }
        }
        self.save_active_time();
        self.progress.finish();
        // The members' units in the target directory are the last experiment's: make the next
        // build of the main checkout compile its own.
        crate::executor::build_tree::hand_back_locked(&self.git.root);
        match (result, self.write_summary()) {
            (_, Ok(p)) => println!("summary: {}", p.display()),
            (Ok(()), Err(e)) => return Err(e),
            (Err(_), Err(_)) => {}
        }
        Ok(())
    }

    fn current_best(&self) -> Result<Option<Node>> {
        Ok(tree::best(&self.db.nodes()?).cloned())
    }

    fn main_loop(&mut self) -> Result<()> {
        let mut idle = 0; // consecutive proposals that changed nothing or failed
        // The proposer had nothing left when this many nodes had finished; a later result (a
        // new best, say) may give it something again.
        let mut exhausted_at: Option<usize> = None;
        loop {
            if crate::process::interrupted() || self.stopping {
                self.drain()?;
                return Err(CliError::Interrupted.into());
            }
            while self.collect(Duration::ZERO)? {}
            let nodes = self.db.nodes()?;
            let done = nodes.iter().filter(|n| n.parent.is_some() && n.finish_seq.is_some()).count() as u64;
            let Some(best) = tree::best(&nodes).cloned() else {
                if self.in_flight.is_empty() {
                    self.start_baseline()?;
                }
                self.collect(Duration::from_millis(200))?;
                continue;
            };
            let running = self.in_flight.len() as u64;
            let exhausted = exhausted_at == Some(nodes.iter().filter(|n| n.finish_seq.is_some()).count());
            self.progress.set_done(done, &format!("{} ({})", fmt_metric(best.metric), best.name()), self.in_flight.len());
            let reached = self.cfg.max_experiments > 0 && done + running >= self.cfg.max_experiments;
            let limit = limits::reached(self.cfg, &nodes, self.active_seconds(), self.agent_cost());
            let stop_proposing = reached || limit.is_some() || exhausted || idle >= 3;
            if stop_proposing && self.in_flight.is_empty() {
                if reached {
                    self.progress.line(&format!("done: {done} experiments"));
                } else if let Some(why) = limit {
                    self.progress.line(&format!("stopping: {why}; {done} experiments"));
                } else if exhausted {
                    self.progress.line("stopping: the search space is exhausted");
                } else {
                    self.progress.line("stopping: the proposer made no usable change three times in a row");
                }
                return Ok(());
            }
            if stop_proposing || self.in_flight.len() >= self.slots() {
                self.collect(Duration::from_millis(200))?;
                continue;
            }
            let mut prop = proposer::build(self.cfg, &self.git.root)?;
            let iteration = done + running + 1;
            if let Some(started) = self.take_idea(&mut *prop, &best, iteration)? {
                idle = if started { 0 } else { idle + 1 };
                continue;
            }
            let ctx = self.proposer_ctx(best.id, iteration);
            let Some(plan) = prop.plan(&ctx)? else {
                exhausted_at = Some(nodes.iter().filter(|n| n.finish_seq.is_some()).count());
                continue;
            };
            match self.experiment(&mut *prop, &plan, &best, iteration, None)? {
                true => idle = 0,
                false => idle += 1,
            }
        }
    }

    /// Seconds runners have spent on the run, this one included.
    fn active_seconds(&self) -> f64 {
        self.active_before + (now() - self.invocation_start).max(0.0)
    }

    /// What the run's agents reported they cost so far (dollars).
    fn agent_cost(&self) -> f64 {
        self.db.meta(crate::proposer::agent::COST_KEY).ok().flatten().and_then(|s| s.parse().ok()).unwrap_or(0.0)
    }

    /// Stores the run's active time so far, for the next `--resume`'s `max_hours`.
    fn save_active_time(&self) {
        if let Err(e) = self.db.set_meta(limits::ACTIVE_SECONDS, &self.active_seconds().to_string()) {
            self.progress.line(&format!("warning: the run's time so far was not stored ({e:#}); max_hours counts from this start after a --resume"));
        }
    }

    /// Every 10 finished experiments, the reference's progress line.
    fn after_result(&self) -> Result<()> {
        self.save_active_time();
        let nodes = self.db.nodes()?;
        let finished = nodes.iter().filter(|n| n.parent.is_some() && n.finish_seq.is_some()).count() as u64;
        if finished > 0 && finished % 10 == 0 {
            self.progress_line(&nodes, finished);
        }
        Ok(())
    }

    fn progress_line(&self, nodes: &[Node], finished: u64) {
        let count = |s: Status| nodes.iter().filter(|n| n.parent.is_some() && n.status == s).count();
        let best = tree::best(nodes);
        let hours = ((now() - self.started) / 3600.0).max(1e-9);
        self.progress.line(&format!(
            "-- {finished} experiments: best {} ({}), {} keeps, {} discards, {} crashes, {} rejected, {:.1} experiments/hour",
            fmt_metric(best.and_then(|b| b.metric)),
            best.map(|b| b.name()).unwrap_or_default(),
            count(Status::Keep),
            count(Status::Discard),
            count(Status::Crash),
            count(Status::Rejected),
            finished as f64 / hours
        ));
    }
}
