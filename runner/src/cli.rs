//! The command line: parsing, config overrides and dispatch.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use contract::budget::Budget;

use crate::config::{Direction, ExecutorKind, KeepRuleKind, ProposerKind, ResearchConfig};
use crate::errors::{code, usage};
use crate::git::Git;
use crate::layout::Paths;

const ABOUT: &str = "Autonomous research on a Rust GPT trainer: propose a change, train for a fixed budget, keep it if val_bpb improves.";

const LONG_ABOUT: &str = "\
Autonomous research on a Rust GPT trainer (a port of karpathy/autoresearch).

Every experiment changes the `trainer` crate only, trains it for a fixed budget with the read-only \
`harness` (which owns the data, the clock and the metric), and is kept when val_bpb (validation \
bits per byte, lower is better) improves. Kept experiments advance the branch autoresearch/<tag>; \
every experiment, kept or not, stays reachable under refs/autoresearch/<tag>/<node>.

Typical session:
  autoresearch detect                   # hardware, platform profile, backend
  autoresearch train                    # one run of the current trainer (a sanity check)
  autoresearch run --max-experiments 50 # the loop (Ctrl-C, then `run --resume` to continue)
  autoresearch results                  # results.tsv as a table
  autoresearch watch                    # live view of a running loop (another terminal)
  autoresearch stop                     # stop a running loop as Ctrl-C does (from anywhere)
  autoresearch report                   # progress chart, tree picture, summary, report.html
  autoresearch serve                    # the same as a live page in the browser (loopback)
  autoresearch finalize                 # the kept changes as branches to review and merge
  autoresearch tree visualize           # the experiment tree";

const AFTER_HELP: &str = "\
Exit codes:
  0    success
  1    failure (the error says what went wrong)
  2    usage: a bad flag, config key or value (the message names it)
  3    repository state: not a git repo, branch exists (use --resume), no such run
  4    cancelled at the confirmation prompt
  130  interrupted (Ctrl-C); `autoresearch run --resume` continues
  `train` exits with the harness's own code (0 ok, 1 diverged, 3 out of memory, 4 causality, ...)

Files:
  configs/research.toml        defaults for every `run` flag
  configs/search_space.toml    the built-in search's parameters and values
  configs/program.md           the coding agent's instructions
  .autoresearch/<tag>/         results.tsv (one row per experiment, reference format), tree.db
                               (SQLite), experiments.jsonl, logs/, runs/ (summaries and per-step
                               CSVs), runner.pid while the loop runs, autoresearch-summary.md;
                               `report` adds progress.png/.svg, tree.svg/.png, report.html;
                               `finalize` adds finalize.md (and branches autoresearch/<tag>-final/*)
  .worktrees/<tag>-n<id>       an experiment's checkout while it runs";

#[derive(Debug, Parser)]
#[command(name = "autoresearch", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// Repository to work in. [default: the git repository containing the current directory]
    #[arg(long, global = true, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report the CPU, GPUs and Vulkan, pick a platform profile and backend, show its adjustments.
    Detect {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Cargo features the harness is (or will be) built with, e.g. tch or wgpu.
        /// [default: `features` of the research config]
        #[arg(long, value_name = "LIST")]
        features: Option<String>,
    },
    /// Prepare the data: build and run the `prepare` binary of this checkout with ARGS
    /// (`autoresearch prepare -- --num-shards 10`, `-- --source-dir DIR`; `-- --help` for all).
    Prepare {
        /// Arguments for `prepare` (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// One run of the current trainer in this checkout: build the harness, train, print the summary.
    Train(TrainArgs),
    /// The research loop: propose, commit, guard, train, keep or discard, repeat.
    #[command(long_about = RUN_LONG_ABOUT)]
    Run(RunArgs),
    /// Inspect and edit the experiment tree of a run.
    #[command(after_long_help = HUMAN_LOOP)]
    Tree {
        /// Run to inspect. [default: the config's tag, else today's date]
        #[arg(long, global = true)]
        tag: Option<String>,
        /// Research config. [default: configs/research.toml]
        #[arg(long, global = true, value_name = "FILE")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: TreeCommand,
    },
    /// Stop a running loop as Ctrl-C would: its runs in flight are stopped and recorded, and
    /// `run --resume` runs them again.
    Stop {
        /// Run to stop. [default: the config's tag, else today's date]
        #[arg(long)]
        tag: Option<String>,
        /// Research config. [default: configs/research.toml]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Seconds to wait for the runner to exit.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        wait: u64,
    },
    /// Show a run's results.tsv as a table.
    Results {
        /// Run whose results to show. [default: the config's tag, else today's date]
        #[arg(long)]
        tag: Option<String>,
        /// results file. [default: `results_file` of the config, for the tag]
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        /// Research config. [default: configs/research.toml]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write the run's progress chart, tree picture, summary and HTML report.
    #[command(long_about = REPORT_LONG_ABOUT)]
    Report {
        /// Run to report on. [default: the config's tag, else today's date]
        #[arg(long)]
        tag: Option<String>,
        /// Research config. [default: configs/research.toml]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Directory to write into. [default: .autoresearch/<tag>/]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// The kept changes of a run as independent branches to review and merge, with a summary.
    #[command(long_about = FINALIZE_LONG_ABOUT)]
    Finalize {
        /// Run to finalize. [default: the config's tag, else today's date]
        #[arg(long)]
        tag: Option<String>,
        /// Research config. [default: configs/research.toml]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Training-step throughput of the trainer on every backend of the build, beside PyTorch.
    #[command(long_about = BENCH_LONG_ABOUT)]
    Bench(BenchArgs),
    /// A live view of a run: what runs now (with a countdown), the best so far, the last results.
    #[command(long_about = WATCH_LONG_ABOUT)]
    Watch {
        /// Run to watch. [default: the config's tag, else today's date]
        #[arg(long)]
        tag: Option<String>,
        /// Research config. [default: configs/research.toml]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Seconds between redraws.
        #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
        interval: f64,
        /// Print one view and exit.
        #[arg(long)]
        once: bool,
        /// How many recent results to list.
        #[arg(long, value_name = "N", default_value_t = 10)]
        last: usize,
    },
    /// The run as a live page in the browser: what `watch` and `report` show, updated as
    /// results arrive (read-only; loopback by default).
    #[command(long_about = SERVE_LONG_ABOUT)]
    Serve {
        /// Run to show. [default: the config's tag, else today's date]
        #[arg(long)]
        tag: Option<String>,
        /// Research config. [default: configs/research.toml]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Port to listen on (0: any free one, printed).
        #[arg(long, default_value_t = 8077)]
        port: u16,
        /// Address to listen on: loopback by default; 0.0.0.0 shows the run to every machine
        /// that can reach this one.
        #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
        bind: String,
        /// Seconds between looks at the database for new results.
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
        interval: f64,
    },
    /// Runs a build command in the experiment-build sandbox (what a Slurm job builds its trainer
    /// with): it may read the toolchain, the system, TREE and TARGET, write only TREE and TARGET,
    /// and reach no network.
    #[command(hide = true)]
    SandboxBuild {
        /// The checkout to build.
        #[arg(long, value_name = "DIR")]
        tree: PathBuf,
        /// The cargo target directory.
        #[arg(long, value_name = "DIR")]
        target: PathBuf,
        /// Build without a sandbox where there is none.
        #[arg(long)]
        no_require_sandbox: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

const SERVE_LONG_ABOUT: &str = "\
The run as a live page in the browser: what `watch` shows (what runs now, with countdowns; the \
best; the last results) and what `report` shows (the progress chart, the summary with its \
held-out section, the tree; a node's diff one click away), updated as results arrive: the page \
listens to server-sent events and fetches the new state when the tree changes.

It only reads (the tree database opened read-only, git for diffs), so serving cannot disturb a \
run; it works during a run and after it. It listens on 127.0.0.1 unless --bind says otherwise, \
and answers only requests addressed to 127.0.0.1 or localhost there. The page is one HTML file \
with its script inline: nothing is loaded from anywhere else.

Examples:
  autoresearch serve                  # http://127.0.0.1:8077/
  autoresearch serve --tag dec02 --port 0
  ssh -L 8077:127.0.0.1:8077 gpu-box  # then open http://127.0.0.1:8077/ here";

const FINALIZE_LONG_ABOUT: &str = "\
The kept changes of a run as independent branches a person can review and merge one by one.

Each kept change on the path from the baseline to the best is applied to the run's base commit \
alone (a three-way merge of its diff, like `git cherry-pick`) and gets a branch of its own, \
autoresearch/<tag>-final/NN-n<id>-<slug>. A change that touches lines an earlier kept change \
touched follows that change on its branch, as a commit of its own. Each commit message holds \
the change's description, hypothesis, measured gain over its parent with the standard error of \
the pooled noise, and its held-out figure where the run scored one. The summary \
(.autoresearch/<tag>/finalize.md) lists the branches, says whether merged together they give \
the best's code, and holds each branch's diff. Running it again makes the branches again; it \
is refused while the run's runner is running.

Examples:
  autoresearch finalize
  autoresearch finalize --tag dec02
  git log -p autoresearch/dec02-final/01-n4-matrix-lr-0-04";

const BENCH_LONG_ABOUT: &str = "\
Training-step throughput of the trainer on every backend of the build, beside PyTorch.

Builds the workspace (unless --no-build), then runs the trainer's bench_step once per backend and \
size, each in its own process so its peak memory (VmHWM on CPU backends) is its own: the \
trainer's model and optimizer on random tokens, `--warmup` untimed steps, then `--steps` timed \
ones. Reports tokens/s, step time, MFU, peak memory, start-up and first-step time, and the loss \
after the last step (backends should agree). --vs-torch runs the PyTorch reference \
(../shared/bench/torch_reference.py, AdamW) at the same sizes in the same run and adds the \
ratios; only such side-by-side ratios mean anything on a shared machine. Writes bench.csv and \
bench.json under --out.

Sizes: small = 256x4:8x256 (d256, 4 layers, B8, T256), large = 512x8:4x1024, or \
WIDTHxDEPTH:BATCHxSEQ[:hHEADS].

  autoresearch bench --size small,large --vs-torch
  autoresearch bench --devices flex,tch-cpu --features tch --steps 20";

const REPORT_LONG_ABOUT: &str = "\
Write pictures and a summary of a run into its directory, .autoresearch/<tag>/ (or --out DIR):
  progress.png, progress.svg   the metric of every experiment in order: kept, discarded and failed
                               styled apart, the best so far as a step line, kept changes labelled,
                               baseline and best marked
  tree.svg, tree.png           the experiment tree, coloured by status, best path highlighted,
                               pruned branches greyed (tree.svg nodes link to their diffs)
  autoresearch-summary.md      baseline, best, improvement, top improvements, what didn't work,
                               totals, recommended next directions
  report.html                  all of the above on one self-contained page, with every diff
It only reads the tree database and git, so it can run while the loop does.";

const WATCH_LONG_ABOUT: &str = "\
A live terminal view of a run, redrawn every --interval seconds until Ctrl-C: the experiments in \
flight with a countdown (to the typical experiment length and to the hard timeout), the best so \
far against the baseline, and the last results. It reads the tree database only, in short read \
transactions, so it never disturbs the runner; start it in a second terminal. --once prints one \
view (for scripts).";

const RUN_LONG_ABOUT: &str = "\
The research loop.

Setup: creates branch autoresearch/<tag> at HEAD (refuses an existing one unless --resume), hashes \
the read-only paths (sha256), builds the run's scorer (the harness) once, and runs the unmodified \
trainer as the baseline (--baseline-runs seeds, to measure run-to-run noise; they also score the \
held-out split).

Each experiment: the proposer picks a parent node and makes one change in a fresh worktree \
(.worktrees/<tag>-n<id>, checked out at the parent); the runner commits it (kept forever under \
refs/autoresearch/<tag>/n<id>), checks that only the scope changed and the read-only files still \
match their hashes (else `rejected`), builds the trainer in a sandbox and scores it with the run's \
scorer under a hard timeout (the whole process group is killed), retries once at half the device \
batch after an out-of-memory exit, applies the keep rule (significant: a one-sided test on the \
noise pooled over every repeated run, with up to --max-candidate-runs runs while the answer is \
open; at a time budget, a candidate whose tokens/s differ from the best's beyond their spread has \
the best run again beside it), runs --checks-command on a candidate the rule keeps (a failure is \
`checks_failed`), scores the held-out split on one more run of a kept node, moves the branch on a keep, \
appends a results.tsv row and a JSONL record, and removes the worktree. All worktrees share one \
cargo target directory (<repo>/target); each experiment's commit is synced into one build tree \
(<repo>/.autoresearch/.build), so only what an experiment changed recompiles.

It stops after --max-experiments, or earlier at --max-without-keep experiments in a row without a \
keep, --max-hours, or --max-cost dollars (the agent's reported costs plus --cost-per-hour).

Proposers: the built-in search; a coding agent by name (--agent claude, codex, gemini, opencode, \
aider: presets in configs/research.toml; `autoresearch detect` says which are installed) or by \
command line (--agent-command); any script (--proposer-command); a person (--proposer manual).

Every flag overrides the key of the same name in the research config (configs/research.toml). \
The resolved config is printed, and confirmed when stdin is a terminal (--yes skips).

Examples:
  autoresearch run --agent claude --max-hours 8 --checks-command 'sh checks.sh'
  autoresearch run --max-experiments 50 --max-without-keep 15";

const HUMAN_LOOP: &str = "\
A person's experiment, step by step:
  autoresearch tree add --parent n4 --hypothesis \"...\" --description \"warmup 0.05\"   # prints n9
  autoresearch tree worktree n9        # checkout at n4's commit
  (edit trainer/ in .worktrees/<tag>-n9)
  autoresearch tree exec n9            # commit, build and score it as the loop does, record it
  autoresearch tree show n9            # its run, curve and timings
  autoresearch tree insight n9 \"warmup helps below 300 s\"
  autoresearch tree worktree n9 --remove
The loop decides it (keep or discard) when it next runs; with `run --proposer manual` running,
queued ideas are its next experiments, each at its own parent.
By hand instead of `tree exec`: `tree sync n9`, run it, `tree record n9 --summary-json FILE`.";

const INSIGHT_LONG_ABOUT: &str = "\
Store the lesson learned from node N: what the experiment taught, whatever its status. \
`tree show` prints it and the agent proposer's prompt lists it next to the node. Replaces the \
previous insight (an empty TEXT clears it); an insight set while the loop runs the node is kept, \
the runner's own note added after it.

Examples:
  autoresearch tree insight n7 \"matrix_lr above 0.06 diverges at this depth\"
  autoresearch tree insight --tag nov25 7 \"\"        # clear it";

const WORKTREE_LONG_ABOUT: &str = "\
Create the git worktree .worktrees/<tag>-n<N>, checked out (detached) at node N's commit, or, for \
a node without one (made by `tree add`), at the commit of its nearest ancestor that has one. \
Prints its path and the command that builds and runs the experiment there (all worktrees share \
the cargo target directory <repo>/target). An existing worktree is kept as it is. \
With --remove, removes it (refused while it has uncommitted changes, unless --force).

Examples:
  autoresearch tree worktree n9
  autoresearch tree worktree n9 --remove";

const EXEC_LONG_ABOUT: &str = "\
Run node N's experiment exactly as the loop runs one. The change in its worktree \
(.worktrees/<tag>-n<N>) is committed; that commit is synced into the run's build tree \
(.autoresearch/.build), built in the build sandbox and scored by the run's scorer with the run's \
own settings (those its `run` started with): the profile snapshot, seed, budget, cache, device \
batch scale, signing key. It is the loop's first run of the experiment: log \
.autoresearch/<tag>/logs/n<N>-0.log, summary runs/n<N>-0.json, per-step CSV \
runs/n<N>-0.steps.csv. The result, its commit and its timings are recorded on N. A loop waiting \
for N (manual proposer) goes on from that run as from its own: it runs the confirmation runs its \
keep rule asks for and decides; `tree exec` waits for the decision and prints it (gain and bar). \
A queued idea (`tree add`) is decided when the loop next runs. Afterwards the main checkout's \
next cargo build compiles its own code, not the experiment's.

Examples:
  autoresearch tree exec n5
  autoresearch tree exec --tag dec02 5";

const SYNC_LONG_ABOUT: &str = "\
Record the commit checked out in node N's worktree as N's commit. Uncommitted changes are \
committed first (message: the node's description and hypothesis). The commit stays reachable \
under refs/autoresearch/<tag>/n<N>, like the loop's. Prints `n<N> <commit>`. Only for a \
node of your own (made by `tree add`) that is not finished yet. Warns when the change touches \
paths outside the scope.

Examples:
  autoresearch tree sync n9";

#[derive(Debug, Args, Default)]
pub struct ConfigArgs {
    /// Research config file. [default: configs/research.toml; absent: built-in defaults]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run name: branch autoresearch/<tag>. [default: today's date, e.g. nov25]
    #[arg(long)]
    pub tag: Option<String>,
    /// The trainer crate (the code under research).
    #[arg(long, value_name = "PATH")]
    pub trainer: Option<String>,
    /// Path a change may touch (repeat for several). [default: the trainer]
    #[arg(long, value_name = "PATH")]
    pub scope: Vec<String>,
    /// Read-only path, hashed at run start (repeat for several; replaces the config's list).
    #[arg(long = "read-only", value_name = "PATH")]
    pub read_only: Vec<String>,
    /// Training budget: SECONDS, time:SECONDS, tokens:N or flops:N. [default: time:300]
    #[arg(long, value_name = "SPEC", value_parser = Budget::parse)]
    pub budget: Option<Budget>,
    /// Summary-JSON key to optimise. [default: val_bpb]
    #[arg(long)]
    pub metric: Option<String>,
    /// Which way the metric improves.
    #[arg(long, value_enum)]
    pub direction: Option<DirectionArg>,
    /// Experiments after the baseline (0 = unlimited).
    #[arg(long, value_name = "N")]
    pub max_experiments: Option<u64>,
    /// Run until stopped (same as --max-experiments 0).
    #[arg(long, conflicts_with = "max_experiments")]
    pub unlimited: bool,
    /// results.tsv path.
    #[arg(long, value_name = "FILE")]
    pub results_file: Option<String>,
    /// Who proposes changes.
    #[arg(long, value_enum)]
    pub proposer: Option<ProposerKind>,
    /// Shell command of the `command` proposer (run in the worktree).
    #[arg(long, value_name = "CMD")]
    pub proposer_command: Option<String>,
    /// The coding agent of the `agent` proposer, by preset: claude, codex, gemini, opencode,
    /// aider (or a preset of your own, [agents.<name>] in the config); sets --proposer agent.
    /// `autoresearch detect` says which are installed.
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// Command line of the `agent` proposer instead of a preset's ({prompt}, {prompt_file},
    /// {worktree}, {scope}, {scope_rules:FORMAT}, {scope_files}).
    #[arg(long, value_name = "CMD")]
    pub agent_command: Option<String>,
    /// Where experiments run: local (this machine) or slurm (one sbatch job per run; the
    /// [slurm] table of the config sets partition, GPUs, CPUs, memory, account).
    #[arg(long, value_enum)]
    pub executor: Option<ExecutorKind>,
    /// Experiments in flight at once. [default: local: one per GPU, 1 without; slurm: 4]
    #[arg(long, value_name = "N")]
    pub slots: Option<usize>,
    /// Slurm partition (the config's slurm.partition).
    #[arg(long, value_name = "NAME")]
    pub slurm_partition: Option<String>,
    /// significant (a one-sided test on the pooled noise, the default), strict (the
    /// reference's) or noise-aware (see the README, "Keep rules").
    #[arg(long, value_enum)]
    pub keep_rule: Option<KeepRuleKind>,
    /// Baseline repetitions (seeds seed, seed+1, ...) for the noise estimate. [default: 4]
    #[arg(long, value_name = "K")]
    pub baseline_runs: Option<u32>,
    /// Smallest gain that counts (it decides alone when the runs are deterministic).
    #[arg(long, value_name = "X")]
    pub noise_floor: Option<f64>,
    /// `significant` rule: the test's one-sided level, the chance that a change that does
    /// nothing is kept. [default: 0.05]
    #[arg(long, value_name = "P")]
    pub significance: Option<f64>,
    /// `significant` rule: the most runs of one decision: the candidate's, and the best's its test asks for. [default: 3]
    #[arg(long, value_name = "N")]
    pub max_candidate_runs: Option<u32>,
    /// Score the held-out split on the baseline and after each keep (for the report only,
    /// never shown to a proposer). [default: true]
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub held_out: Option<bool>,
    /// Shell command run in a candidate's worktree (build sandbox) after it passes the keep
    /// rule; a failure records `checks_failed` and keeps nothing. [default: none]
    #[arg(long, value_name = "CMD")]
    pub checks_command: Option<String>,
    /// Seconds the checks may take. [default: 600]
    #[arg(long, value_name = "SECONDS")]
    pub checks_timeout: Option<u64>,
    /// Stop after N experiments in a row without a keep (0: never). [default: 0]
    #[arg(long, value_name = "N")]
    pub max_without_keep: Option<u64>,
    /// Start no experiment once the run has been going HOURS, over all its `--resume`s (0: no
    /// limit). [default: 0]
    #[arg(long, value_name = "HOURS")]
    pub max_hours: Option<f64>,
    /// Start no experiment once the run has cost USD: the agent's reported costs plus
    /// --cost-per-hour for each hour (0: no limit). [default: 0]
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<f64>,
    /// What an hour of this machine costs, in dollars, for --max-cost. [default: 0]
    #[arg(long, value_name = "USD")]
    pub cost_per_hour: Option<f64>,
    /// At a time budget, flag a decision whose runs differ in tokens/s by more than their
    /// spread and run the best again beside the candidate. [default: true]
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub throughput_guard: Option<bool>,
    /// Kill an experiment after SECONDS (build included). [default: 2 x budget + build allowance]
    #[arg(long, value_name = "SECONDS")]
    pub hard_timeout: Option<u64>,
    /// Seed of the first run of each experiment.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Platform profile TOML. [default: the one `detect` picks]
    #[arg(long, value_name = "FILE")]
    pub profile: Option<String>,
    /// Harness --device.
    #[arg(long)]
    pub device: Option<String>,
    /// Harness --cache-dir (prepared data).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<String>,
    /// Extra cargo features of the harness build (tch, wgpu).
    #[arg(long, value_name = "LIST")]
    pub features: Option<String>,
    /// Harness --device-batch-scale in (0, 1].
    #[arg(long, value_name = "X")]
    pub device_batch_scale: Option<f64>,
    /// Shell command that runs one experiment (placeholders: see configs/research.toml).
    #[arg(long, value_name = "CMD")]
    pub experiment_command: Option<String>,
    /// Search space of the `search` proposer.
    #[arg(long, value_name = "FILE")]
    pub search_space: Option<String>,
    /// Search: children tried under the best node before backtracking.
    #[arg(long, value_name = "N")]
    pub search_patience: Option<u32>,
    /// Seconds added to 2 x the time budget for the build (automatic hard timeout).
    #[arg(long, value_name = "SECONDS")]
    pub build_allowance: Option<u64>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DirectionArg {
    Lower,
    Higher,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Continue the run of this tag (after Ctrl-C, a crash or kill -9).
    #[arg(long)]
    pub resume: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Also write the summary JSON here. [default: .autoresearch/train-summary.json]
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Sizes to run: small, large, or WIDTHxDEPTH:BATCHxSEQ[:hHEADS], comma-separated.
    #[arg(long, value_name = "LIST", default_value = "small")]
    pub size: String,
    /// Devices (harness names: flex, ndarray, tch-cpu, wgpu-cpu, cuda...). [default: every CPU device of the build]
    #[arg(long, value_name = "LIST")]
    pub devices: Option<String>,
    /// Timed steps per backend and size.
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Rounds per size, alternating PyTorch and the backends; each keeps its median round and
    /// the table shows the range.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Vocabulary size.
    #[arg(long, default_value_t = 8192)]
    pub vocab: usize,
    /// muon (the trainer's MuonAdamW) or adamw (Burn's AdamW on every parameter, like PyTorch's side).
    #[arg(long, default_value = "muon")]
    pub optim: String,
    /// Also run PyTorch at the same sizes: ../shared/bench/torch_reference.py, or CMD (given the
    /// size flags; it prints a JSON line with tokens_per_s).
    #[arg(long, value_name = "CMD", num_args = 0..=1, default_missing_value = "")]
    pub vs_torch: Option<String>,
    /// Python interpreter for the default PyTorch script.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Where bench.csv and bench.json go. [default: .autoresearch/bench]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Use target/release/bench_step as it is.
    #[arg(long)]
    pub no_build: bool,
    /// Cargo features for the build, e.g. tch. [default: `features` of the research config]
    #[arg(long, value_name = "LIST")]
    pub features: Option<String>,
}

/// What a person says of an experiment: stored on the node (the description and hypothesis
/// also in its commit message).
#[derive(clap::Args, Debug, Default)]
pub struct NoteArgs {
    /// What the change does.
    #[arg(long)]
    pub description: Option<String>,
    /// Why it should help.
    #[arg(long)]
    pub hypothesis: Option<String>,
    /// The lesson learned (also `autoresearch tree insight N TEXT`).
    #[arg(long, value_name = "TEXT")]
    pub insight: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TreeCommand {
    /// Every node: id, parent, status, commit, metric, description.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One node in detail (runs, timings, insight; --diff for the change).
    Show {
        node: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        diff: bool,
    },
    /// Add a planned node (an idea to try) under PARENT.
    Add {
        #[arg(long)]
        parent: String,
        #[arg(long)]
        hypothesis: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Record the result of a node run outside the runner (manual proposer).
    Record {
        node: String,
        /// The harness's --summary-json output.
        #[arg(long, value_name = "FILE")]
        summary_json: Option<PathBuf>,
        /// The metric value.
        #[arg(long, value_name = "X")]
        metric: Option<f64>,
        #[arg(long, value_name = "MB")]
        memory_mb: Option<f64>,
        /// The run failed: why.
        #[arg(long, value_name = "WHY")]
        crash: Option<String>,
        #[command(flatten)]
        notes: NoteArgs,
    },
    /// Store the lesson learned from node N (shown by `tree show`, given to the agent).
    #[command(long_about = INSIGHT_LONG_ABOUT)]
    Insight {
        /// Node id: 7 or n7.
        node: String,
        /// The lesson, in one or a few lines ("" clears it).
        text: String,
    },
    /// Check node N out in .worktrees/<tag>-n<N> and print how to build and run it.
    #[command(long_about = WORKTREE_LONG_ABOUT)]
    Worktree {
        /// Node id: 7 or n7.
        node: String,
        /// Remove the worktree instead (refused with uncommitted changes unless --force).
        #[arg(long)]
        remove: bool,
        /// With --remove: discard uncommitted changes.
        #[arg(long, requires = "remove")]
        force: bool,
    },
    /// Build and score node N's change exactly as the loop does, and record the result.
    #[command(long_about = EXEC_LONG_ABOUT)]
    Exec {
        /// Node id: 7 or n7.
        node: String,
        #[command(flatten)]
        notes: NoteArgs,
    },
    /// Commit node N's worktree and store that commit as the node's.
    #[command(long_about = SYNC_LONG_ABOUT)]
    Sync {
        /// Node id: 7 or n7.
        node: String,
    },
    /// The path from the baseline to the best node.
    BestPath {
        #[arg(long)]
        json: bool,
    },
    /// Mark a node and its subtree `pruned` (never expanded again).
    Prune { node: String },
    /// Delete a node (and with --recursive its subtree) and its refs.
    Delete {
        node: String,
        #[arg(long)]
        recursive: bool,
    },
    /// Draw the tree.
    Visualize,
    /// Metrics of two nodes side by side, and the diff between their commits.
    Compare { a: String, b: String },
}

impl ConfigArgs {
    /// Loads the config file and applies the flags.
    pub fn resolve(&self, root: &Path) -> Result<ResearchConfig> {
        let mut c = ResearchConfig::load(root, self.config.as_deref())?;
        macro_rules! set {
            ($field:ident) => {
                if let Some(v) = &self.$field {
                    c.$field = v.clone();
                }
            };
        }
        set!(tag);
        set!(trainer);
        set!(budget);
        set!(metric);
        set!(max_experiments);
        set!(results_file);
        set!(proposer);
        set!(executor);
        set!(slots);
        if let Some(p) = &self.slurm_partition {
            c.slurm.partition = p.clone();
        }
        set!(keep_rule);
        set!(baseline_runs);
        set!(noise_floor);
        set!(significance);
        set!(max_candidate_runs);
        set!(held_out);
        set!(seed);
        set!(profile);
        set!(device);
        set!(cache_dir);
        set!(features);
        set!(device_batch_scale);
        set!(experiment_command);
        set!(search_space);
        set!(search_patience);
        set!(checks_command);
        set!(max_without_keep);
        set!(max_hours);
        set!(max_cost);
        set!(cost_per_hour);
        set!(throughput_guard);
        if let Some(t) = self.checks_timeout {
            c.checks_timeout_seconds = t;
        }
        if let Some(b) = self.build_allowance {
            c.build_allowance_seconds = b;
        }
        if let Some(t) = self.trainer.as_ref()
            && self.scope.is_empty()
        {
            c.scope = vec![t.clone()];
        }
        if !self.scope.is_empty() {
            c.scope = self.scope.clone();
        }
        if !self.read_only.is_empty() {
            c.read_only = self.read_only.clone();
        }
        if let Some(d) = self.direction {
            c.direction = match d {
                DirectionArg::Lower => Direction::Lower,
                DirectionArg::Higher => Direction::Higher,
            };
        }
        if self.unlimited {
            c.max_experiments = 0;
        }
        if let Some(cmd) = &self.proposer_command {
            c.command.command = cmd.clone();
        }
        if let Some(name) = &self.agent {
            // A preset named on the command line wins over a command line in the file.
            c.proposer = ProposerKind::Agent;
            c.agent.preset = name.clone();
            c.agent.command.clear();
        }
        if let Some(cmd) = &self.agent_command {
            c.agent.command = cmd.clone();
        }
        if let Some(t) = self.hard_timeout {
            c.hard_timeout_seconds = t;
        }
        c.finalize()?;
        Ok(c)
    }
}

/// Parses arguments, runs the command, returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { code::USAGE } else { code::OK };
        }
    };
    match dispatch(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            crate::errors::exit_code_of(&e)
        }
    }
}

fn repo(cli_repo: &Option<PathBuf>) -> Result<Git> {
    let dir = match cli_repo {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    Git::discover(&dir)
}

fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Detect { json, features } => {
            let root = match repo(&cli.repo) {
                Ok(g) => g.root,
                Err(_) => std::env::current_dir()?,
            };
            let cfg = ResearchConfig::load(&root, None).unwrap_or_default();
            crate::cmd::detect::run(&root, &cfg, features.as_deref().unwrap_or(&cfg.features), json)
        }
        Command::Prepare { args } => {
            let git = repo(&cli.repo)?;
            crate::cmd::train::prepare(&git, &args)
        }
        Command::Train(args) => {
            let git = repo(&cli.repo)?;
            let cfg = args.config.resolve(&git.root)?;
            crate::cmd::train::train(&cfg, &git, args.summary_json.as_deref())
        }
        Command::Run(args) => {
            let git = repo(&cli.repo)?;
            let cfg = args.config.resolve(&git.root)?;
            crate::runloop::run(&cfg, &git, crate::runloop::Options { resume: args.resume, yes: args.yes })?;
            Ok(code::OK)
        }
        Command::Tree { tag, config, command } => {
            let git = repo(&cli.repo)?;
            let args = ConfigArgs { tag, config, ..Default::default() };
            let cfg = args.resolve(&git.root)?;
            let mut db = crate::db::Db::open_run(&git.root, &cfg)?;
            let state_dir = Paths::new(&git.root, &cfg).state_dir;
            use crate::cmd::tree::{self as t, node_id};
            match command {
                TreeCommand::List { json } => t::list(&db, json)?,
                TreeCommand::Show { node, json, diff } => t::show(&db, &git, &state_dir, node_id(&node)?, json, diff)?,
                TreeCommand::Add { parent, hypothesis, description } => t::add(&db, &git, &cfg, node_id(&parent)?, &hypothesis, &description)?,
                TreeCommand::Record { node, summary_json, metric, memory_mb, crash, notes } => t::record(
                    &mut db,
                    &cfg,
                    &Paths::new(&git.root, &cfg).sign_key(),
                    node_id(&node)?,
                    &t::RecordArgs {
                        summary_json: summary_json.as_deref(),
                        metric,
                        memory_mb,
                        crash: crash.as_deref(),
                        description: notes.description.as_deref(),
                        hypothesis: notes.hypothesis.as_deref(),
                        insight: notes.insight.as_deref(),
                    },
                )?,
                TreeCommand::Insight { node, text } => t::insight(&mut db, node_id(&node)?, &text)?,
                TreeCommand::Worktree { node, remove, force } => t::worktree(&db, &git, &cfg, node_id(&node)?, remove, force)?,
                TreeCommand::Sync { node } => t::sync(&db, &git, &cfg, node_id(&node)?)?,
                TreeCommand::Exec { node, notes } => {
                    let notes = crate::cmd::tree::exec::Notes { description: notes.description.as_deref(), hypothesis: notes.hypothesis.as_deref(), insight: notes.insight.as_deref() };
                    return crate::cmd::tree::exec::exec(&mut db, &git, &cfg, node_id(&node)?, &notes);
                }
                TreeCommand::BestPath { json } => t::best_path_cmd(&db, json)?,
                TreeCommand::Prune { node } => t::prune(&db, node_id(&node)?)?,
                TreeCommand::Delete { node, recursive } => t::delete(&mut db, &git, &cfg.tag, node_id(&node)?, recursive)?,
                TreeCommand::Visualize => t::visualize(&db)?,
                TreeCommand::Compare { a, b } => t::compare(&db, &git, &state_dir, node_id(&a)?, node_id(&b)?)?,
            }
            Ok(code::OK)
        }
        Command::Serve { tag, config, port, bind, interval } => {
            let git = repo(&cli.repo)?;
            let cfg = ConfigArgs { tag, config, ..Default::default() }.resolve(&git.root)?;
            crate::cmd::serve::run(&git, &cfg, &crate::cmd::serve::Options { bind, port, interval })?;
            Ok(code::OK)
        }
        Command::Finalize { tag, config } => {
            let git = repo(&cli.repo)?;
            let cfg = ConfigArgs { tag, config, ..Default::default() }.resolve(&git.root)?;
            crate::cmd::finalize::run(&git, &cfg)?;
            Ok(code::OK)
        }
        Command::Report { tag, config, out } => {
            let git = repo(&cli.repo)?;
            let cfg = ConfigArgs { tag, config, ..Default::default() }.resolve(&git.root)?;
            crate::report::run(&git, &cfg, out.as_deref())?;
            Ok(code::OK)
        }
        Command::Bench(args) => {
            let git = repo(&cli.repo)?;
            let cfg = ResearchConfig::load(&git.root, None).unwrap_or_default();
            let sizes = args.size.split(',').map(str::trim).filter(|s| !s.is_empty()).map(crate::cmd::bench::parse_size).collect::<Result<Vec<_>>>()?;
            let devices = args.devices.map(|d| d.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect());
            let opts = crate::cmd::bench::Options {
                sizes,
                vocab: args.vocab,
                devices,
                steps: args.steps,
                warmup: args.warmup,
                repeat: args.repeat,
                optim: args.optim,
                vs_torch: args.vs_torch,
                python: args.python,
                out: args.out.map(|o| crate::config::resolve(&std::env::current_dir().unwrap_or_default(), &o)).unwrap_or_else(|| git.root.join(".autoresearch").join("bench")),
                build: !args.no_build,
                features: args.features.unwrap_or(cfg.features),
            };
            crate::cmd::bench::run(&git, &opts)
        }
        Command::SandboxBuild { tree, target, no_require_sandbox, command } => {
            crate::executor::build_sandbox::run_sandboxed(&tree, &target, !no_require_sandbox, &command)
        }
        Command::Watch { tag, config, interval, once, last } => {
            let git = repo(&cli.repo)?;
            let cfg = ConfigArgs { tag, config, ..Default::default() }.resolve(&git.root)?;
            crate::cmd::watch::run(&git, &cfg, &crate::cmd::watch::Options { interval, once, last })?;
            Ok(code::OK)
        }
        Command::Stop { tag, config, wait } => {
            let git = repo(&cli.repo)?;
            let cfg = ConfigArgs { tag, config, ..Default::default() }.resolve(&git.root)?;
            let state_dir = Paths::new(&git.root, &cfg).state_dir;
            let pid = crate::pidfile::stop(&state_dir, &cfg.tag, std::time::Duration::from_secs(wait))?;
            println!("stopped the runner of tag {} (pid {pid}); `autoresearch run --resume --tag {}` continues", cfg.tag, cfg.tag);
            Ok(code::OK)
        }
        Command::Results { tag, file, config, json } => {
            let git = repo(&cli.repo)?;
            let cfg = ConfigArgs { tag, config, ..Default::default() }.resolve(&git.root)?;
            let path = match file {
                Some(f) => crate::config::resolve(&std::env::current_dir()?, &f),
                None => Paths::new(&git.root, &cfg).results,
            };
            if !path.exists() {
                return Err(usage(format!(
                    "{}: no results for tag {} yet (run `autoresearch run`, pass --tag for another run, or --file)",
                    path.display(),
                    cfg.tag
                )));
            }
            let rows = crate::results::read_rows(&path)?;
            if json {
                // Beside each row, the held-out score of its node when the run has one.
                let db = Paths::new(&git.root, &cfg).db;
                let heldout: Vec<(String, Vec<f64>)> = if db.exists() {
                    let db = crate::db::Db::open(&db)?;
                    let scores = db.heldout()?;
                    db.nodes()?.into_iter().filter_map(|n| Some((n.commit.clone()?, scores.get(&n.id)?.clone()))).collect()
                } else {
                    Vec::new()
                };
                let rows: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|r| {
                        let mut v = serde_json::to_value(r).unwrap_or_default();
                        let h = heldout.iter().find(|(c, _)| !r.commit.is_empty() && c.starts_with(&r.commit)).map(|(_, s)| crate::keep::mean_std(s).0);
                        v["heldout"] = serde_json::json!(h);
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_results(&rows);
            }
            Ok(code::OK)
        }
    }
}

fn print_results(rows: &[crate::results::Row]) {
    println!("{:>3}  {:<8} {:>10} {:>9}  {:<9} description", "#", "commit", "val_bpb", "memory_gb", "status");
    let mut best: Option<f64> = None;
    for (i, r) in rows.iter().enumerate() {
        let mark = if r.status == "keep" && best.is_none_or(|b| r.val_bpb < b) {
            best = Some(r.val_bpb);
            "*"
        } else {
            " "
        };
        println!("{:>3}{mark} {:<8} {:>10.6} {:>9.1}  {:<9} {}", i + 1, r.commit, r.val_bpb, r.memory_gb, r.status, r.description);
    }
    let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
    println!(
        "{} rows: {} keep, {} discard, {} crash, {} rejected; best {}",
        rows.len(),
        count("keep"),
        count("discard"),
        count("crash"),
        count("rejected"),
        best.map(|b| format!("{b:.6}")).unwrap_or_else(|| "-".into())
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
