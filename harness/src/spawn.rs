//! Starting the run's trainer processes: the training process, then a fresh one for each
//! evaluation group, each with a scratch folder of its own and the same sandbox rules, and the
//! signal handling that takes the current one down with the harness.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use contract::summary::RunSummary;
use contract::wire::{Hello, Task, ToTrainer};
use experiment::device::DeviceChoice;

use crate::cli::Cli;
use crate::evaluate::Launched;
use crate::exit::{self, Failure};
use crate::sandbox_policy::{Protected, TrainerSandbox, trainer_policy};
use crate::trainer_process::{Launch, Scratch, TrainerProcess, kill_group};

/// The trainer process running now, for the signal handler.
static TRAINER_GROUP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_terminate(signal: libc::c_int) {
    let pgid = TRAINER_GROUP.load(Ordering::SeqCst);
    kill_group(pgid);
    // SAFETY: async-signal-safe exit.
    unsafe { libc::_exit(128 + signal) };
}

/// A harness stopped by SIGTERM, SIGINT or SIGHUP (the runner's timeout, Ctrl-C) takes its
/// trainer's whole process group with it.
pub fn install_signal_handlers() {
    for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only calls kill and _exit.
        unsafe { libc::signal(s, on_terminate as *const () as libc::sighandler_t) };
    }
}

/// What starts the run's trainer processes: the same binary, device, sandbox rules and run
/// information for each, with a scratch folder of its own.
pub struct Spawner<'a> {
    pub binary: &'a Path,
    pub choice: &'a DeviceChoice,
    pub protected: &'a Protected,
    pub allow_read: &'a [PathBuf],
    /// Whether processes run in the sandbox (false only with `--no-require-sandbox` where
    /// there is none).
    pub sandboxed: bool,
    pub extra_env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    pub scratch_parent: &'a Path,
    /// The training process's Hello; evaluating processes get it with their task.
    pub hello: Hello,
}

impl Spawner<'_> {
    /// The training process, in `scratch`, under `planned`.
    pub fn start_training(&self, scratch: &Scratch, planned: TrainerSandbox) -> Result<TrainerProcess, String> {
        self.start(scratch, planned, self.hello.clone())
    }

    /// A fresh process for one evaluation group of `rows` rows: a scratch folder of its own,
    /// the saved model in `model_dir` readable and nothing else of the run.
    pub fn start_evaluating(&self, rows: usize, model_dir: &Path) -> Result<Launched, String> {
        let scratch = Scratch::create(self.scratch_parent).map_err(|e| format!("{e:#}"))?;
        let mut planned = trainer_policy(self.binary, scratch.path(), self.choice, self.protected, self.allow_read)?;
        planned.policy.read.push(model_dir.to_path_buf());
        let shm_bytes = rows * self.hello.vocab_size * 4;
        let hello = Hello { task: Task::Evaluate { rows }, shm_bytes: shm_bytes as u64, ..self.hello.clone() };
        let process = self.start(&scratch, planned, hello)?;
        Ok(Launched { process, scratch })
    }

    fn start(&self, scratch: &Scratch, planned: TrainerSandbox, hello: Hello) -> Result<TrainerProcess, String> {
        let sandbox = if self.sandboxed { Some(Arc::new(planned.policy.prepare().map_err(|e| e.to_string())?)) } else { None };
        let launch = Launch {
            binary: self.binary,
            scratch: scratch.path(),
            sandbox,
            shm_bytes: hello.shm_bytes as usize,
            library_path: planned.library_path,
            extra_env: self.extra_env.clone(),
        };
        let mut process = TrainerProcess::start(launch).map_err(|e| format!("{e:#}"))?;
        TRAINER_GROUP.store(process.pid(), Ordering::SeqCst);
        process.send(&ToTrainer::Hello(Box::new(hello))).map_err(|e| format!("a trainer process did not take its Hello: {e}"))?;
        Ok(process)
    }
}

/// Whether trainer processes get the sandbox: it is built once here to find out (and to say
/// what it is); where there is none the run stops unless `--no-require-sandbox`, and then says
/// so loudly.
pub fn sandbox_available(cli: &Cli, planned: &TrainerSandbox, summary: &mut RunSummary) -> Result<bool, Failure> {
    for note in &planned.notes {
        eprintln!("harness: sandbox: {note}");
    }
    match planned.policy.prepare() {
        Ok(s) => {
            let text = s.describe();
            println!("harness: sandbox: {text}");
            summary.sandbox = Some(text);
            if !cli.allow_read.is_empty() {
                summary.sandbox_allow_read = Some(cli.allow_read.iter().map(|p| p.display().to_string()).collect());
            }
            Ok(true)
        }
        Err(e) if cli.require_sandbox() => Err(Failure::new(
            exit::USAGE,
            format!("{e}; the trainer would run with the harness's own rights. Pass --no-require-sandbox to run it anyway (its score is then marked `sandbox: none`)"),
        )),
        Err(e) => {
            println!("harness: sandbox: none ({e})");
            eprintln!("harness: WARNING: sandbox: none: the trainer runs unconfined, and can read the validation data and write the summary; its score is not to be trusted");
            summary.sandbox = Some(format!("none: {e}"));
            Ok(false)
        }
    }
}

/// The size of the saved model, once the training process is gone: `model_dir` must be the
/// folder the harness made in the training scratch, not a link the trainer put in its place,
/// and must hold something.
pub fn saved_model_bytes(scratch: &Path, model_dir: &Path) -> Result<u64, Failure> {
    let fail = |text: String| Failure::new(exit::OTHER_FAILURE, text);
    let meta = std::fs::symlink_metadata(model_dir).map_err(|e| fail(format!("the trainer left no model folder {}: {e}", model_dir.display())))?;
    let real = std::fs::canonicalize(model_dir).ok();
    let inside = std::fs::canonicalize(scratch).ok().map(|s| s.join("model"));
    if !meta.is_dir() || real.is_none() || real != inside {
        return Err(fail(format!("the trainer replaced its model folder {} with something else than a folder; evaluation reads only a real folder there", model_dir.display())));
    }
    fn size(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => size(&e.path()),
                Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => 0,
            })
            .sum()
    }
    match size(model_dir) {
        0 => Err(fail(format!(
            "the trainer saved no model: its model folder {} is empty (the model's LogitsModel::save writes what the trainer's load reads; every evaluation group starts from it)",
            model_dir.display()
        ))),
        bytes => Ok(bytes),
    }
}
