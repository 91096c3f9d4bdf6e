//! The flags of the commands that take many: the research config's overrides (`ConfigArgs`,
//! and how they override the config file), `run`, `train`, `bench`, and the `tree` subcommands.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand};
use contract::budget::Budget;

use super::help::*;
use crate::config::{Direction, ExecutorKind, KeepRuleKind, ProposerKind, ResearchConfig};

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
    /// reference's) or noise-aware (see docs/loop.md, "Keep rules").
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
        self.set_values(&mut c);
        self.set_the_rest(&mut c);
        c.finalize()?;
        Ok(c)
    }

    /// The flags that replace one config value as they are.
    fn set_values(&self, c: &mut ResearchConfig) {
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
    }

    /// The flags that set values under another name, or several at once.
    fn set_the_rest(&self, c: &mut ResearchConfig) {
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
    }
}
