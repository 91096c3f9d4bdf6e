//! `autoresearch run`: the keep/discard loop.
//!
//! Per experiment: plan (proposer) -> node in the db -> worktree at the parent's commit -> change
//! (proposer) -> commit, kept under refs/autoresearch/<tag>/<node> -> guard -> runs on a worker
//! thread through the executor (see worker.rs) -> keep rule, re-checked against the best when the
//! result arrives -> db transaction -> branch (keep only) -> results.tsv and JSONL rows ->
//! worktree removed. Up to `slots` experiments are in flight at once; only this thread touches
//! git, the branch and the result files, so rows are whole and never interleaved. `--resume`
//! repairs whatever a kill left between those steps, from the database, and follows Slurm jobs
//! that are still running.

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

use crate::config::{ExecutorKind, KeepRule, ResearchConfig};
use crate::db::{Db, Finish, Node, Run, Status, iso8601, now};
use crate::errors::{CliError, repo_state};
use crate::executor;
use crate::git::{Git, branch_name};
use crate::keep;
use crate::layout::Paths;
use crate::tree::{self, fmt_metric};
use crate::progress::Progress;
use crate::proposer::{self, Applied, Ctx, Plan};
use crate::results;
use crate::worker::{Decision, Shared, Task};

pub struct Options {
    pub resume: bool,
    pub yes: bool,
}

pub fn describe(cfg: &ResearchConfig, paths: &Paths, profile: &Path, slots: usize) -> String {
    let max = if cfg.max_experiments == 0 { "unlimited".to_string() } else { cfg.max_experiments.to_string() };
    let keep = match cfg.keep_rule {
        KeepRule::Strict => "strict (keep only a strictly better metric)".to_string(),
        KeepRule::NoiseAware => format!(
            "noise-aware ({} baseline runs, bar = max(2 sigma, {}), confirmation run)",
            cfg.baseline_runs, cfg.noise_floor
        ),
        KeepRule::Significant => format!(
            "significant (one-sided t-test at {}, sigma pooled over every repeated run, {} baseline runs, up to {} runs a candidate, gain > {})",
            cfg.significance, cfg.baseline_runs, cfg.max_candidate_runs, cfg.noise_floor
        ),
    };
    let proposer = match cfg.proposer {
        crate::config::ProposerKind::Command => format!("command: {}", cfg.command.command),
        crate::config::ProposerKind::Agent => format!("agent: {}", cfg.agent.command),
        crate::config::ProposerKind::Search => format!("search over {}", cfg.search_space),
        crate::config::ProposerKind::Manual => "manual (waits for `tree exec` or `tree record`)".into(),
    };
    let exp = match executor::custom_command(cfg) {
        Some(c) => c.to_string(),
        None => format!(
            "{}{} in the build sandbox (one build at a time), then the run's scorer on a private copy of the trainer: {}",
            match cfg.executor {
                ExecutorKind::Local => "commit synced into .autoresearch/.build, then ",
                ExecutorKind::Slurm => "",
            },
            executor::build_command(cfg),
            executor::harness_command(cfg)
                .replace("{harness}", &crate::layout::scorer(cfg, Path::new(".")).display().to_string())
                .replace("{trainer}", ".autoresearch/<tag>/bin/<run>/trainer")
        ),
    };
    let exec = match cfg.executor {
        ExecutorKind::Local => format!("local, {slots} at a time"),
        ExecutorKind::Slurm => {
            let s = &cfg.slurm;
            let part = if s.partition.is_empty() { "default partition".to_string() } else { format!("partition {}", s.partition) };
            format!("slurm, {slots} jobs at a time ({part}, {} GPU, {} CPUs per job)", s.gpus, s.cpus_per_task)
        }
    };
    format!(
        "tag:            {tag}\nbranch:         {branch}\nbudget:         {budget}\nmetric:         {metric} ({dir} is better)\nexperiments:    {max}\nscope:          {scope}\nread-only:      {ro}\nproposer:       {proposer}\nexecutor:       {exec}: {exp}\nsandbox:        {sandbox}\nprofile:        {profile}\nkeep rule:      {keep}\nhard timeout:   {timeout} s\nseed:           {seed}\nresults:        {results}\nstate:          {state}\n",
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
    let (profile, class, platform) = crate::detect::resolve_profile(&root, cfg)?;
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
    let executor = crate::executor::build(cfg);
    println!("{}", describe(cfg, &paths, &profile, executor.slots()));
    if !opts.yes && std::io::stdin().is_terminal() {
        confirm(if opts.resume { "Resume this run?" } else { "Start this run?" })?;
    }
    crate::process::install_interrupt_handler();
    paths.create_run_dirs()?;
    // Held until this function returns, whatever way: one runner per tag.
    let pid_file = crate::pidfile::PidFile::claim(&paths.state_dir, &cfg.tag)?;
    println!("runner pid {} in {} (`autoresearch stop --tag {}` stops it as Ctrl-C does)", std::process::id(), pid_file.path().display(), cfg.tag);
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
    let profile = snapshot_profile(&profile, &paths, &db)?;
    executor::ensure_sign_key(&paths.sign_key())?;
    let started = db.meta("started_at")?.and_then(|s| s.parse().ok()).unwrap_or_else(now);
    let progress = Progress::new(cfg.max_experiments);
    let shared = Arc::new(Shared {
        cfg: Arc::new(cfg.clone()),
        root: root.clone(),
        profile,
        state_dir: paths.state_dir.clone(),
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
    // Whatever stopped the loop, no run is left behind: stop the workers' runs and record them.
    if !lp.in_flight.is_empty() {
        crate::process::request_stop();
        if let Err(e) = lp.drain() {
            lp.progress.line(&format!("error while stopping the runs in flight: {e:#}"));
        }
    }
    lp.progress.finish();
    // The members' units in the target directory are the last experiment's: make the next
    // build of the main checkout compile its own.
    crate::executor::build_tree::hand_back_locked(&git.root);
    let summary = lp.write_summary();
    match (&result, summary) {
        (_, Ok(p)) => println!("summary: {}", p.display()),
        (Ok(()), Err(e)) => return Err(e),
        (Err(_), Err(_)) => {}
    }
    // The pictures and the page too; a run's result never depends on them.
    drop(lp);
    match crate::report::write(git, cfg, None) {
        Ok(files) => {
            if let Some(page) = files.iter().find(|p| p.ends_with("report.html")) {
                println!("report: {}", page.display());
            }
        }
        Err(e) => eprintln!("warning: the report was not written ({e:#}); `autoresearch report` retries"),
    }
    result
}

impl Loop<'_> {
    fn tag(&self) -> &str {
        &self.cfg.tag
    }

    /// Repairs what a kill left: orphaned experiment processes, unfinished nodes, worktrees,
    /// missing refs, the branch, and results/JSONL rows. Nodes whose runs may still be going
    /// (Slurm jobs), or that have runs left to do, get a worker again.
    fn recover(&mut self) -> Result<()> {
        let mut resumable = Vec::new();
        for n in self.db.nodes()? {
            // Finished nodes, and ideas planned with `tree add`, need nothing.
            if n.status.finished() || tree::is_idea(&n) {
                continue;
            }
            let jobs = self.db.jobs(Some(n.id))?;
            let mut orphans: Vec<i64> = jobs.iter().filter_map(|j| j.handle.strip_prefix("local:").and_then(|p| p.parse().ok())).collect();
            orphans.extend(n.pid);
            for pgid in orphans {
                if crate::process::kill_orphan_group(pgid) {
                    self.progress.line(&format!("resume: killed the orphaned experiment of {} (process group {pgid})", n.name()));
                }
            }
            let followable = jobs.iter().any(|j| j.handle.starts_with("slurm:"));
            match &n.commit {
                Some(_) if n.status == Status::Running && followable => resumable.push(n),
                // Interrupted for the first time (Ctrl-C, `stop`, kill -9): its idea is not lost,
                // it runs again from the same commit, keeping the runs that finished.
                Some(_) if n.status == Status::Running && self.reruns(&n)? == 0 => {
                    self.db.set_meta(&rerun_key(&n), "1")?;
                    self.db.forget_interrupted_runs(n.id)?;
                    self.progress.line(&format!("resume: {} was interrupted; running it again from its commit", n.name()));
                    resumable.push(n);
                }
                Some(_) => {
                    let insight = if self.reruns(&n)? > 0 {
                        "interrupted twice: the runner stopped during this experiment and again during its re-run"
                    } else {
                        "interrupted: the runner stopped during this experiment"
                    };
                    self.db.clear_jobs(n.id)?;
                    self.finish_node(&n, Status::Crash, None, None, None, insight, None, &[], None)?;
                    self.progress.line(&format!("resume: {} was left {}, recorded as crash", n.name(), n.status.as_str()));
                }
                None => {
                    self.db.delete_node(n.id)?;
                    self.git.delete_node_ref(self.tag(), &n.name())?;
                }
            }
        }
        // Worktrees of planned nodes belong to a person (`tree worktree`), and those of
        // followed jobs are in use: they stay.
        let mut keep: Vec<String> = self.db.nodes()?.iter().filter(|n| tree::is_idea(n)).map(|n| n.name()).collect();
        keep.extend(resumable.iter().map(|n| n.name()));
        for wt in self.git.cleanup_worktrees(self.tag(), &keep)? {
            self.progress.line(&format!("resume: removed worktree {wt}"));
        }
        let nodes = self.db.nodes()?;
        for n in &nodes {
            if let Some(c) = &n.commit {
                self.git.set_node_ref(self.tag(), &n.name(), Git::oid(c)?)?;
            }
        }
        if let Some(best) = tree::best(&nodes)
            && let Some(c) = &best.commit
            && self.git.branch_tip(self.tag())?.map(|o| o.to_string()).as_deref() != Some(c.as_str())
        {
            self.git.set_branch(self.tag(), Git::oid(c)?, "autoresearch: resume")?;
            self.progress.line(&format!("resume: branch moved to the best experiment {}", best.name()));
        }
        self.reconcile_rows(&nodes)?;
        // Nodes with Slurm jobs to follow, and interrupted nodes to run again.
        for n in resumable {
            // The jobs run in this worktree: keep it as it is (re-creating it would pull the
            // directory out from under them); make it only if it is gone.
            let wt = match self.git.worktree_head(self.tag(), &n.name())? {
                Some(_) => self.git.worktree_path(self.tag(), &n.name()),
                None => self.git.add_worktree(self.tag(), &n.name(), Git::oid(n.commit.as_deref().unwrap_or_default())?)?,
            };
            let task = match (n.parent, tree::best(&nodes).and_then(|b| b.metric)) {
                (None, _) => Task::Baseline,
                (Some(_), Some(best)) => Task::Experiment { best, bar: self.bar(), best_node: tree::best(&nodes).map(|b| b.id).unwrap_or(0) },
                (Some(_), None) => continue,
            };
            if jobs_left_by_slurm(&self.db, n.id)? {
                self.progress.line(&format!("resume: {} has runs in flight, following them", n.name()));
            }
            self.spawn(n, wt, task);
        }
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

    /// How many times `node` was started again after an interruption.
    fn reruns(&self, node: &Node) -> Result<u32> {
        Ok(self.db.meta(&rerun_key(node))?.and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    fn sigma(&self) -> f64 {
        self.db.meta("sigma").ok().flatten().and_then(|s| s.parse().ok()).unwrap_or(0.0)
    }

    fn bar(&self) -> f64 {
        keep::bar(self.cfg.keep_rule, self.sigma(), self.cfg.noise_floor)
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
            let stop_proposing = reached || exhausted || idle >= 3;
            if stop_proposing && self.in_flight.is_empty() {
                if reached {
                    self.progress.line(&format!("done: {done} experiments"));
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

    /// Every 10 finished experiments, the reference's progress line.
    fn after_result(&self) -> Result<()> {
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

    /// The unmodified trainer, run `baseline_runs` times (noise-aware) to measure the noise.
    fn start_baseline(&mut self) -> Result<()> {
        let tip = self.git.branch_tip(self.tag())?.context("the run branch disappeared")?;
        let id = self.db.insert_node(None, "the unmodified trainer", "baseline", None, "baseline", &self.platform)?;
        let node = self.db.require_node(id)?;
        self.db.set_text(id, "commit_id", &tip.to_string())?;
        self.git.set_node_ref(self.tag(), &node.name(), tip)?;
        self.db.set_running(id)?;
        let node = self.db.require_node(id)?;
        let wt = self.git.add_worktree(self.tag(), &node.name(), tip)?;
        self.spawn(node, wt, Task::Baseline);
        Ok(())
    }

    /// Ideas queued with `tree add` go before the proposer's own, oldest first, once their
    /// parent has run: one with a commit (`tree sync`) runs as it is, or is concluded when a
    /// person recorded its result (`tree record`); one without is implemented by the proposer
    /// when it can (`adopt`). An idea a person has a worktree for, and no commit yet, waits.
    /// Some(started) when an idea was taken.
    fn take_idea(&mut self, prop: &mut dyn proposer::Proposer, best: &Node, iteration: u64) -> Result<Option<bool>> {
        let nodes = self.db.nodes()?;
        let ideas = nodes.iter().filter(|n| tree::is_idea(n) && n.status == Status::Pending && !self.in_flight.contains(&n.id));
        for idea in ideas {
            let Some(parent) = idea.parent.and_then(|p| nodes.iter().find(|n| n.id == p)) else { continue };
            if !matches!(parent.status, Status::Keep | Status::Discard) || parent.commit.is_none() {
                continue;
            }
            let persons_worktree = self.git.worktree_head(self.tag(), &idea.name())?.is_some();
            match (&idea.commit, &idea.recorded) {
                (Some(_), Some(_)) => return self.conclude_recorded_idea(idea, parent).map(|_| Some(true)),
                (Some(_), None) if !persons_worktree => return self.run_synced_idea(prop, idea, parent).map(|_| Some(true)),
                (None, None) if !persons_worktree => {
                    let ctx = self.proposer_ctx(best.id, iteration);
                    if let Some(plan) = prop.adopt(&ctx, idea)? {
                        self.progress.line(&format!("{}: taking up the queued idea \"{}\"", idea.name(), idea.description));
                        return self.experiment(prop, &plan, best, iteration, Some(idea.clone())).map(Some);
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// A person's experiment, committed and recorded: guarded on its commit, then decided.
    fn conclude_recorded_idea(&mut self, idea: &Node, parent: &Node) -> Result<()> {
        let (p, c) = (Git::oid(parent.commit.as_deref().unwrap_or_default())?, Git::oid(idea.commit.as_deref().unwrap_or_default())?);
        let best = self.current_best()?.context("no best node")?;
        if let Some(reason) = crate::guard::check_commit(self.git, self.cfg, p, c, &self.ro_hashes)? {
            self.finish_node(idea, Status::Rejected, None, None, None, &reason, Some(&best), &[], None)?;
            self.report(&idea.name(), "rejected", None, Some(&best), &format!("{}: {reason}", idea.description));
            return Ok(());
        }
        let best_value = best.metric.context("the best node has no metric")?;
        if tree::ran_by_tree_exec(idea) {
            // Its run 0 is the loop's (`tree exec`): the worker decides, with the runs the keep
            // rule asks for. From here the loop owns the node, as a synced idea's: it makes (or
            // takes over) its worktree and removes it, and resume runs it again.
            self.db.set_text(idea.id, "proposer", &self.cfg.proposer.to_string())?;
            let wt = match self.git.worktree_head(self.tag(), &idea.name())? {
                Some(_) => self.git.worktree_path(self.tag(), &idea.name()),
                None => self.git.add_worktree(self.tag(), &idea.name(), c)?,
            };
            self.db.set_running(idea.id)?;
            let node = self.db.require_node(idea.id)?;
            self.progress.line(&format!("{}: deciding the queued change \"{}\" from its run by `tree exec`", node.name(), node.description));
            self.spawn(node, wt, Task::Experiment { best: best_value, bar: self.bar(), best_node: best.id });
            return Ok(());
        }
        let d = self.recorded_and_decide(idea, best_value, self.bar())?;
        self.conclude(idea.id, Ok(d))
    }

    /// A person's change, committed with `tree sync` but not run: the loop runs it.
    fn run_synced_idea(&mut self, prop: &dyn proposer::Proposer, idea: &Node, parent: &Node) -> Result<()> {
        let (p, c) = (Git::oid(parent.commit.as_deref().unwrap_or_default())?, Git::oid(idea.commit.as_deref().unwrap_or_default())?);
        // From here the loop owns the node: it makes and removes its worktree, resume repairs it.
        self.db.set_text(idea.id, "proposer", &prop.kind().to_string())?;
        let node = self.db.require_node(idea.id)?;
        let wt = self.git.add_worktree(self.tag(), &node.name(), c)?;
        self.progress.line(&format!("{}: running the queued change \"{}\"", node.name(), node.description));
        let best = self.current_best()?.context("no best node")?;
        if let Some(reason) = crate::guard::check(self.git, self.cfg, p, c, &wt, &self.ro_hashes)? {
            self.finish_node(&node, Status::Rejected, None, None, None, &reason, Some(&best), &[], None)?;
            self.git.remove_worktree(self.tag(), &node.name())?;
            self.report(&node.name(), "rejected", None, Some(&best), &format!("{}: {reason}", node.description));
            return Ok(());
        }
        self.db.set_running(node.id)?;
        let node = self.db.require_node(node.id)?;
        let best_value = best.metric.context("the best node has no metric")?;
        self.spawn(node, wt, Task::Experiment { best: best_value, bar: self.bar(), best_node: best.id });
        Ok(())
    }

    /// Prepares one experiment (a new node, or the queued `idea` it implements) and hands it to
    /// a worker (or, for `manual`, records it). Returns false when the proposer produced nothing
    /// usable.
    fn experiment(&mut self, prop: &mut dyn proposer::Proposer, plan: &Plan, best: &Node, iteration: u64, idea: Option<Node>) -> Result<bool> {
        let parent = self.db.require_node(plan.parent)?;
        let parent_oid = Git::oid(parent.commit.as_deref().context("the parent node has no commit")?)?;
        let kind = prop.kind().to_string();
        let id = match &idea {
            Some(n) => {
                self.db.set_text(n.id, "proposer", &kind)?;
                n.id
            }
            None => self.db.insert_node(Some(parent.id), &plan.hypothesis, &plan.description, plan.change.as_ref(), &kind, &self.platform)?,
        };
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
                self.drop_or_requeue(&node, idea.is_some())?;
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
        // A result recorded by `tree exec` names the commit it built and scored: that commit is
        // the node's, whatever the worktree holds now.
        let built = if prop.executes() { None } else { self.recorded_commit(id, parent_oid)? };
        let commit = match built {
            Some(c) => Some(c),
            None => self.git.commit_worktree(&wt, parent_oid, &message)?,
        };
        let Some(commit) = commit else {
            self.drop_or_requeue(&node, idea.is_some())?;
            self.progress.line(&format!("{}: no proposal (the change was empty)", node.name()));
            return Ok(false);
        };
        self.db.set_text(id, "commit_id", &commit.to_string())?;
        self.git.set_node_ref(self.tag(), &node.name(), commit)?;
        let node = self.db.require_node(id)?;
        if let Some(reason) = crate::guard::check(self.git, self.cfg, parent_oid, commit, &wt, &self.ro_hashes)? {
            let best = self.current_best()?;
            self.finish_node(&node, Status::Rejected, None, None, None, &reason, best.as_ref(), &[], None)?;
            self.git.remove_worktree(self.tag(), &node.name())?;
            self.report(&node.name(), "rejected", None, best.as_ref(), &format!("{description}: {reason}"));
            return Ok(true);
        }
        self.db.set_running(id)?;
        let node = self.db.require_node(id)?;
        let best_value = best.metric.context("the best node has no metric")?;
        // A change run by `tree exec` made the loop's run 0: the worker goes on from it (more
        // runs where the keep rule asks for them) exactly as for the loop's own experiments.
        if prop.executes() || tree::ran_by_tree_exec(&node) {
            self.spawn(node, wt, Task::Experiment { best: best_value, bar: self.bar(), best_node: best.id });
        } else {
            let d = self.recorded_and_decide(&node, best_value, self.bar())?;
            self.conclude(id, Ok(d))?;
        }
        Ok(true)
    }

    /// The commit a node's recorded result was built from (`tree exec`), when it descends from
    /// the node's parent; a record that names another commit is refused.
    fn recorded_commit(&self, id: i64, parent: git2::Oid) -> Result<Option<git2::Oid>> {
        let rec = self.db.require_node(id)?.recorded;
        let Some(c) = rec.as_ref().and_then(|r| r.get("commit")).and_then(Value::as_str) else { return Ok(None) };
        let oid = Git::oid(c)?;
        if oid != parent && self.git.repo.graph_descendant_of(oid, parent).unwrap_or(false) {
            Ok(Some(oid))
        } else {
            Err(anyhow!("n{id}'s recorded result names commit {c}, which does not descend from its parent's commit {parent}"))
        }
    }

    fn current_best(&self) -> Result<Option<Node>> {
        Ok(tree::best(&self.db.nodes()?).cloned())
    }

    /// Records a worker's result: the keep decision re-checked against the best as it is now
    /// (another experiment may have finished first), the database, the branch, the rows, the
    /// worktree.
    fn conclude(&mut self, id: i64, result: Result<Decision>) -> Result<()> {
        let node = self.db.require_node(id)?;
        let mut d = match result {
            Ok(d) => d,
            Err(e) => {
                // The worker itself failed (a database or executor error, not the experiment):
                // the node is recorded as a crash so the run stays consistent, then the loop stops.
                let insight = format!("runner error: {e:#}");
                let best = self.current_best()?;
                self.finish_node(&node, Status::Crash, None, None, None, &insight, best.as_ref(), &[], None)?;
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
            let gain = self.cfg.direction.gain(b, m);
            let clears = match self.cfg.keep_rule {
                KeepRule::Strict => gain > 0.0,
                KeepRule::NoiseAware => gain > self.bar(),
                KeepRule::Significant => {
                    let runs: Vec<f64> = d.runs.iter().filter(|r| r.outcome == "ok").filter_map(|r| r.metric).collect();
                    let best_node = best.as_ref().map(|b| b.id).unwrap_or(0);
                    let mut best_runs = self.db.metrics_of(best_node)?;
                    if best_runs.is_empty() {
                        best_runs.push(b);
                    }
                    let t = keep::test(self.cfg.direction, &best_runs, &runs, self.db.noise()?, self.cfg.significance, self.cfg.max_candidate_runs);
                    keep::significant(&t, runs.len(), self.cfg.max_candidate_runs, self.cfg.noise_floor) == keep::Verdict::Keep
                }
            };
            if !clears {
                d.status = Status::Discard;
                d.insight = format!("{}; not kept: {} reached {} while it ran (gain {gain:.6})", d.insight, best.as_ref().map(|b| b.name()).unwrap_or_default(), fmt_metric(Some(b)));
            }
        }
        if d.interrupted {
            self.stopping = true;
        }
        if d.status == Status::Keep && !d.heldout.is_empty() {
            self.db.set_heldout(node.id, &d.heldout)?;
        }
        let bar = if matches!(d.status, Status::Keep | Status::Discard) { d.bar } else { None };
        self.finish_node(&node, d.status, d.metric, d.summary.as_ref(), d.memory_mb, &d.insight, best.as_ref(), &d.runs, bar)?;
        // A person's worktree (a recorded `tree add` idea) is theirs to remove.
        if !tree::is_idea(&node) {
            self.git.remove_worktree(self.tag(), &node.name())?;
        }
        let margin = if matches!(d.status, Status::Keep | Status::Discard) { format!(" [{}]", d.insight.lines().next().unwrap_or("")) } else { String::new() };
        self.report_with_bar(&node.name(), d.status.as_str(), d.metric, best.as_ref(), bar, &format!("{}{margin}", node.description));
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
        self.finish_node(node, d.status, d.metric, d.summary.as_ref(), d.memory_mb, &d.insight, None, &d.runs, None)?;
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
        let rule = match self.cfg.keep_rule {
            KeepRule::Significant => {
                let n = self.db.noise()?;
                format!("pooled sigma {:.6} over {} runs, df {}; keep at p < {:.4}", n.sigma, n.runs, n.df, self.cfg.significance / (self.cfg.max_candidate_runs.max(2) - 1) as f64)
            }
            _ => format!("sigma {sd:.6}, bar {:.6}", keep::bar(self.cfg.keep_rule, sd, self.cfg.noise_floor)),
        };
        self.progress.line(&format!("{} baseline {} = {:.6} ({rule})", node.name(), self.cfg.metric, d.metric.unwrap_or(f64::NAN)));
        Ok(())
    }

    fn report(&self, name: &str, status: &str, metric: Option<f64>, best: Option<&Node>, description: &str) {
        self.report_with_bar(name, status, metric, best, None, description)
    }

    /// The log line of a decided node: `n2 discard  2.176912 (-0.039211; gain 0.039211 <= bar
    /// 0.039266)  description [insight]`: the difference from the best, and the gain (positive
    /// is better, whichever the direction) against the bar the keep rule set.
    fn report_with_bar(&self, name: &str, status: &str, metric: Option<f64>, best: Option<&Node>, bar: Option<f64>, description: &str) {
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

    fn drop_node(&mut self, node: &Node) -> Result<()> {
        self.git.remove_worktree(self.tag(), &node.name())?;
        self.git.delete_node_ref(self.tag(), &node.name())?;
        self.db.delete_node(node.id)
    }

    /// A proposal that produced nothing: a new node is dropped; a queued idea is not lost but
    /// marked `crash` with the reason, so it isn't offered again and again.
    fn drop_or_requeue(&mut self, node: &Node, is_idea: bool) -> Result<()> {
        if !is_idea {
            return self.drop_node(node);
        }
        self.git.remove_worktree(self.tag(), &node.name())?;
        let best = self.current_best()?;
        self.finish_node(node, Status::Crash, None, None, None, "the proposer could not implement this queued idea", best.as_ref(), &[], None)
    }

    fn recorded_and_decide(&mut self, node: &Node, best: f64, bar: f64) -> Result<Decision> {
        let rec = self.db.require_node(node.id)?.recorded.unwrap_or(Value::Null);
        let failed = |why: &str| Decision {
            status: Status::Crash,
            metric: None,
            summary: None,
            memory_mb: None,
            insight: why.to_string(),
            runs: vec![],
            interrupted: false,
            sigma: None,
            heldout: Vec::new(),
            bar: None,
        };
        if let Some(why) = rec.get("crash").and_then(Value::as_str) {
            return Ok(failed(why));
        }
        let Some(m) = rec.get("metric").and_then(Value::as_f64) else {
            return Ok(failed("recorded without a metric"));
        };
        if rec.get("verified") != Some(&Value::Bool(true)) {
            // Not scored by this run's harness: recorded as it is, never compared.
            let why = rec.get("unverified_because").and_then(Value::as_str).unwrap_or("recorded by hand");
            return Ok(Decision {
                status: Status::Unverified,
                metric: Some(m),
                summary: rec.get("summary").cloned().map(crate::worker::without_heldout),
                memory_mb: rec.get("memory_mb").and_then(Value::as_f64),
                insight: format!("unverified: {why}; not compared with scored results"),
                runs: vec![],
                interrupted: false,
                sigma: None,
                heldout: Vec::new(),
                bar: None,
            });
        }
        // One recorded run: a confirmation would need another manual run, so one look decides.
        let gain = self.cfg.direction.gain(best, m);
        let (keep, bar) = match self.cfg.keep_rule {
            KeepRule::Strict => (gain > 0.0, 0.0),
            KeepRule::NoiseAware => (gain > bar, bar),
            KeepRule::Significant => {
                let noise = self.db.noise()?;
                let t = keep::test(self.cfg.direction, &[best], &[m], noise, self.cfg.significance, self.cfg.max_candidate_runs);
                let needed = self.cfg.significance / (self.cfg.max_candidate_runs.max(2) - 1) as f64;
                (gain > self.cfg.noise_floor && t.p < needed, t.gain_needed(needed, self.cfg.noise_floor))
            }
        };
        Ok(Decision {
            status: if keep { Status::Keep } else { Status::Discard },
            metric: Some(m),
            summary: rec.get("summary").cloned().map(crate::worker::without_heldout),
            memory_mb: rec.get("memory_mb").and_then(Value::as_f64),
            insight: format!("recorded; gain {gain:.6}, bar {bar:.6}"),
            // The run `tree exec` made, when it made one: its seconds and log are the node's.
            runs: self.db.runs(node.id)?,
            interrupted: false,
            sigma: None,
            heldout: Vec::new(),
            bar: Some(bar),
        })
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
        bar: Option<f64>,
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
        if unsandboxed(summary) {
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
            "seconds": runs.iter().map(|r| r.seconds).sum::<f64>(),
            "runs": runs.iter().map(|r| json!({"attempt": r.attempt, "seed": r.seed, "outcome": r.outcome, "metric": r.metric, "exit_code": r.exit_code, "batch_scale": r.batch_scale, "seconds": r.seconds, "log": r.log})).collect::<Vec<_>>(),
            "heldout": self.db.heldout()?.get(&node.id),
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

    fn write_summary(&self) -> Result<PathBuf> {
        let mut r = crate::report::Research::load(&self.db, self.cfg)?;
        r.started = Some(self.started);
        let text = crate::report::summary_text(&r);
        results::write_atomic(&self.paths.summary, &text)?;
        Ok(self.paths.summary.clone())
    }
}

/// The database key counting a node's re-runs after interruptions.
fn rerun_key(node: &Node) -> String {
    format!("reruns:{}", node.name())
}

/// Whether a node has runs that Slurm may still be running (they are followed, not restarted).
fn jobs_left_by_slurm(db: &Db, node: i64) -> Result<bool> {
    Ok(db.jobs(Some(node))?.iter().any(|j| j.handle.starts_with("slurm:")))
}

/// Whether a run's summary says its trainer ran without a sandbox.
fn unsandboxed(summary: Option<&Value>) -> bool {
    summary.and_then(|s| s.get("sandbox")).and_then(Value::as_str).is_some_and(|s| s.starts_with("none"))
}
