//! `autoresearch train`: one run of the current trainer in the main checkout.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;

use crate::config::ResearchConfig;
use crate::executor::{self, RunSpec};
use crate::git::Git;
use crate::process::{self, Output};

/// Builds and runs the harness (or `experiment_command`) with the terminal attached; returns
/// the harness's exit code.
pub fn train(cfg: &ResearchConfig, git: &Git, summary_json: Option<&Path>) -> Result<i32> {
    let (profile, _, name) = crate::platform::resolve_profile(&git.root, cfg)?;
    let state = git.root.join(".autoresearch");
    std::fs::create_dir_all(&state)?;
    let summary = summary_json.map(Path::to_path_buf).unwrap_or_else(|| state.join("train-summary.json"));
    // A loop's run of the checkout, but with both binaries built in place (the target
    // directory's), and files of its own.
    let built = crate::layout::target_dir(&git.root).join("release");
    let spec = RunSpec {
        commit: git.head_commit().map(|c| c.to_string()).unwrap_or_default(),
        summary_json: summary.clone(),
        log: state.join("train.log"),
        scorer: built.join("harness"),
        trainer_copy: built.join("trainer"),
        ..RunSpec::for_run(Arc::new(cfg.clone()), &git.root, &git.root, &profile, "train", crate::layout::attempt::FIRST)
    };
    executor::ensure_sign_key(&crate::layout::Paths::new(&git.root, cfg).sign_key())?;
    let command = match executor::custom_command(cfg) {
        Some(custom) => executor::render(custom, &spec),
        None => executor::build_and_score_command(&spec),
    };
    eprintln!("profile {name} ({}), budget {}, seed {}\n$ {command}", profile.display(), cfg.budget, cfg.seed);
    process::install_interrupt_handler();
    if executor::custom_command(cfg).is_none() {
        executor::build_tree::hand_back_locked(&git.root);
    }
    let fin = process::run_shell(&command, &git.root, &executor::env_for(&spec), Output::Inherit, spec.timeout, |_| Ok(()), |_| {})?;
    if fin.timed_out {
        eprintln!("error: killed at the hard timeout ({} s)", spec.timeout.as_secs());
        return Ok(crate::errors::code::FAILURE);
    }
    if fin.interrupted {
        return Ok(crate::errors::code::INTERRUPTED);
    }
    if fin.code == Some(0) && !cfg.experiment_command.trim().is_empty() && summary.exists() {
        // A custom command may not print the summary block: show its JSON.
        println!("{}", std::fs::read_to_string(&summary)?);
    }
    if fin.code == Some(0) {
        eprintln!("summary JSON: {}", summary.display());
    }
    Ok(fin.code.unwrap_or(crate::errors::code::FAILURE))
}

/// `autoresearch prepare ARGS`: builds the workspace (the same feature set as every other
/// build, so Burn compiles once) and runs the read-only `prepare` binary with the terminal
/// attached; returns its exit code.
pub fn prepare(git: &Git, args: &[String]) -> Result<i32> {
    let cargo = |what: &str| anyhow::anyhow!("cannot run {what} (is the Rust toolchain on PATH?)");
    crate::executor::build_tree::hand_back_locked(&git.root);
    let built = std::process::Command::new("cargo")
        .args(["build", "--release", "--locked", "--workspace"])
        .current_dir(&git.root)
        .status()
        .map_err(|_| cargo("cargo build"))?;
    if !built.success() {
        return Ok(built.code().unwrap_or(crate::errors::code::FAILURE));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| git.root.join("target"));
    let status = std::process::Command::new(target.join("release").join("prepare"))
        .args(args)
        .current_dir(&git.root)
        .status()
        .map_err(|_| cargo("target/release/prepare"))?;
    Ok(status.code().unwrap_or(crate::errors::code::FAILURE))
}
