//! The command line: parsing and dispatch to the commands (`cmd`). The flag structs and how
//! they override the config are in `args`, the long help texts in `help`.

mod args;
mod help;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub use args::*;
use help::*;
use crate::config::ResearchConfig;
use crate::errors::code;
use crate::git::Git;
use crate::layout::Paths;

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
        Command::Tree { tag, config, command } => tree(&repo(&cli.repo)?, ConfigArgs { tag, config, ..Default::default() }, command),
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
        Command::Bench(args) => bench(&repo(&cli.repo)?, args),
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
            crate::cmd::results::run(&git, &cfg, file.as_deref(), json)
        }
    }
}

/// `tree ...`: the subcommand on the run `args` names.
fn tree(git: &Git, args: ConfigArgs, command: TreeCommand) -> Result<i32> {
    let cfg = args.resolve(&git.root)?;
    let mut db = crate::db::Db::open_run(&git.root, &cfg)?;
    let state_dir = Paths::new(&git.root, &cfg).state_dir;
    use crate::cmd::tree::{self as t, node_id};
    match command {
        TreeCommand::List { json } => t::list(&db, json)?,
        TreeCommand::Show { node, json, diff } => t::show(&db, git, &state_dir, node_id(&node)?, json, diff)?,
        TreeCommand::Add { parent, hypothesis, description } => t::add(&db, git, &cfg, node_id(&parent)?, &hypothesis, &description)?,
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
        TreeCommand::Worktree { node, remove, force } => t::worktree(&db, git, &cfg, node_id(&node)?, remove, force)?,
        TreeCommand::Sync { node } => t::sync(&db, git, &cfg, node_id(&node)?)?,
        TreeCommand::Exec { node, notes } => {
            let notes = crate::cmd::tree::exec::Notes { description: notes.description.as_deref(), hypothesis: notes.hypothesis.as_deref(), insight: notes.insight.as_deref() };
            return crate::cmd::tree::exec::exec(&mut db, git, &cfg, node_id(&node)?, &notes);
        }
        TreeCommand::BestPath { json } => t::best_path_cmd(&db, json)?,
        TreeCommand::Prune { node } => t::prune(&db, node_id(&node)?)?,
        TreeCommand::Delete { node, recursive } => t::delete(&mut db, git, &cfg.tag, node_id(&node)?, recursive)?,
        TreeCommand::Visualize => t::visualize(&db)?,
        TreeCommand::Compare { a, b } => t::compare(&db, git, &state_dir, node_id(&a)?, node_id(&b)?)?,
    }
    Ok(code::OK)
}

/// `bench`: its flags as the command's options.
fn bench(git: &Git, args: BenchArgs) -> Result<i32> {
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
    crate::cmd::bench::run(git, &opts)
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
