//! One experiment, start to finish: profile, data, the training process started in its
//! sandbox, the training phase on the harness's clock, evaluation by a fresh process per group
//! of rows, the summary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use prepare::clock::{Clock, allowance};
use prepare::data::PreparedData;
use prepare::device::{DeviceClass, DeviceSource, choose_device};
use prepare::flops::{choose_peak, mfu_percent, this_cpu_peak};
use prepare::loader::PackedLoader;
use prepare::memory::{self, PeakMemory};
use prepare::profile::PlatformProfile;
use sealed::wire::{FailureKind, Hello, PROTOCOL_VERSION, Task, ToTrainer};
use serde_json::{Map, Value, json};

use crate::cli::Cli;
use crate::evaluate::{EvalError, EvalLimits, Evaluator, Launched, Launcher, Rows, Tolerance};
use crate::exit;
use crate::sandbox_policy::{Protected, TrainerSandbox, trainer_policy};
use crate::summary::{Summary, format_summary, write_json_atomic};
use crate::train_phase::{TrainFailure, TrainPhase, steps_csv};
use crate::trainer_process::{Launch, Scratch, TrainerProcess, become_subreaper, kill_group};

/// Why a run stopped early: the exit code and the message for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// The trainer's process group, for the signal handler.
static TRAINER_GROUP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_terminate(signal: libc::c_int) {
    let pgid = TRAINER_GROUP.load(Ordering::SeqCst);
    kill_group(pgid);
    // SAFETY: async-signal-safe exit.
    unsafe { libc::_exit(128 + signal) };
}

/// A harness stopped by SIGTERM, SIGINT or SIGHUP (the runner's timeout, Ctrl-C) takes its
/// trainer's whole process group with it.
fn install_signal_handlers() {
    for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only calls kill and _exit.
        unsafe { libc::signal(s, on_terminate as *const () as libc::sighandler_t) };
    }
}

fn backend_of(spec: &str) -> &'static str {
    match spec {
        "flex" => "flex",
        "ndarray" => "ndarray",
        "wgpu" | "wgpu-cpu" | "vulkan" | "metal" => "wgpu",
        _ => "tch",
    }
}

/// Runs the experiment described by `cli`; returns the process exit code. `started` is the
/// process start, for `total_seconds`.
pub fn run(cli: &Cli, started: Instant) -> i32 {
    let mut record = Map::new();
    let outcome = execute(cli, started, &mut record);
    let code = match &outcome {
        Ok(()) => exit::SUCCESS,
        Err(failure) => {
            if failure.code == exit::DIVERGED {
                // The reference prints exactly this and exits 1.
                println!("\nFAIL");
            }
            eprintln!("harness: {}", failure.message);
            eprintln!("harness: exit {} ({})", failure.code, exit::status_name(failure.code));
            record.insert("error".into(), json!(failure.message));
            failure.code
        }
    };
    record.insert("status".into(), json!(exit::status_name(code)));
    record.insert("exit_code".into(), json!(code));
    if let Some(key) = &cli.sign_key {
        match std::fs::read_to_string(key) {
            Ok(k) => sealed::signature::sign(k.trim().as_bytes(), &mut record),
            Err(e) => eprintln!("harness: cannot read the signing key {}: {e}; the summary is not signed", key.display()),
        }
    }
    if let Some(path) = &cli.summary_json {
        if let Err(e) = write_json_atomic(path, &Value::Object(record)) {
            eprintln!("harness: {e:#}");
            if code == exit::SUCCESS {
                return exit::OTHER_FAILURE;
            }
        }
    }
    code
}

/// The trainer binary: `--trainer`, else `trainer` next to the harness.
fn trainer_binary(cli: &Cli) -> Result<PathBuf, Failure> {
    let path = match &cli.trainer {
        Some(p) => p.clone(),
        None => {
            let me = std::env::current_exe().map_err(|e| Failure::new(exit::USAGE, format!("cannot locate the harness binary: {e}")))?;
            me.with_file_name(format!("trainer{}", std::env::consts::EXE_SUFFIX))
        }
    };
    let path = std::fs::canonicalize(&path).map_err(|e| {
        Failure::new(exit::USAGE, format!("trainer binary {}: {e}; build it with `cargo build --release --workspace`, or pass --trainer PATH", path.display()))
    })?;
    if !path.is_file() {
        return Err(Failure::new(exit::USAGE, format!("trainer binary {} is not a file", path.display())));
    }
    Ok(path)
}

/// The git checkout `dir` lies in, if any.
fn git_root(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|d| d.join(".git").exists()).map(Path::to_path_buf)
}

/// Folders the trainer's sandbox must keep out of reach, whatever its library paths say.
fn protected(cli: &Cli, cache_dir: &Path, trainer: &Path) -> Protected {
    let mut trees = vec![cache_dir.to_path_buf()];
    trees.extend(cli.protect.iter().cloned());
    if let Ok(cwd) = std::env::current_dir() {
        trees.extend(git_root(&cwd));
    }
    trees.extend(trainer.parent().and_then(git_root));
    for file in [&cli.profile, &cli.summary_json, &cli.steps_csv, &cli.sign_key].into_iter().flatten() {
        if let Some(dir) = std::fs::canonicalize(file).ok().or_else(|| Some(file.clone())).and_then(|f| f.parent().map(Path::to_path_buf)) {
            if !dir.as_os_str().is_empty() {
                trees.push(dir);
            }
        }
    }
    let homes = std::env::var_os("HOME").map(PathBuf::from).into_iter().collect();
    Protected { trees, homes }
}

fn execute(cli: &Cli, started: Instant, record: &mut Map<String, Value>) -> Result<(), Failure> {
    // Configuration: every problem here is a usage error (2).
    let (mut profile, profile_sha256) = match &cli.profile {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| Failure::new(exit::USAGE, format!("cannot read platform profile {}: {e}", path.display())))?;
            let text = String::from_utf8(bytes.clone()).map_err(|_| Failure::new(exit::USAGE, format!("platform profile {} is not UTF-8", path.display())))?;
            let p = PlatformProfile::parse(&text, &path.display().to_string()).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
            (p, Some(sha256_hex(&bytes)))
        }
        None => (PlatformProfile::default(), None),
    };
    if let Some(scale) = cli.device_batch_scale {
        profile.device_batch_scale = scale;
    }
    profile.validate().map_err(|e| Failure::new(exit::USAGE, format!("platform profile {:?}: {e}", profile.name)))?;
    let hparams_override = match &cli.hparams {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| Failure::new(exit::USAGE, format!("cannot read hyperparameter file {}: {e}", path.display())))?),
        None => None,
    };
    let env_device = std::env::var("BURN_DEVICE").ok();
    let (choice, source, notes) = choose_device(cli.device.as_deref(), env_device.as_deref(), &profile.backend).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    for note in notes {
        eprintln!("harness: {note}");
    }
    if choice.spec == "vulkan" && !prepare::device::vulkan_loader_present() {
        let e = prepare::device::DeviceError::NoVulkanLoader { name: choice.name.clone() };
        return Err(Failure::new(exit::USAGE, e.to_string()));
    }
    if choice.spec == "cuda" {
        let found = prepare::device::libtorch_cuda_devices();
        if choice.index >= found {
            let e = prepare::device::DeviceError::NoCudaDevice { name: choice.name.clone(), found };
            return Err(Failure::new(exit::USAGE, e.to_string()));
        }
    }
    let source_text = match source {
        DeviceSource::Flag => "--device",
        DeviceSource::Env => "BURN_DEVICE",
        DeviceSource::Profile => "profile backend",
        DeviceSource::Fallback => "fallback",
    };
    let trainer_bin = trainer_binary(cli)?;
    let cache_dir = cli.cache_dir.clone().unwrap_or_else(prepare::constants::default_cache_dir);
    let cache_dir = std::fs::canonicalize(&cache_dir).unwrap_or(cache_dir);
    record.insert("device".into(), json!(choice.name));
    record.insert("backend".into(), json!(backend_of(choice.spec)));
    record.insert("device_class".into(), json!(choice.class));
    record.insert("device_source".into(), json!(source_text));
    record.insert("profile".into(), json!(profile.name));
    record.insert("profile_file".into(), json!(cli.profile.as_ref().map(|p| p.display().to_string())));
    record.insert("profile_sha256".into(), json!(profile_sha256));
    record.insert("device_batch_scale".into(), json!(profile.device_batch_scale));
    record.insert("seq_len".into(), json!(profile.seq_len));
    record.insert("budget".into(), json!(cli.budget.to_string()));
    record.insert("seed".into(), json!(cli.seed));
    record.insert("hparams_file".into(), json!(cli.hparams.as_ref().map(|p| p.display().to_string())));
    record.insert("cache_dir".into(), json!(cache_dir.display().to_string()));
    record.insert("trainer".into(), json!(trainer_bin.display().to_string()));
    record.insert("commit".into(), json!(std::env::var("AUTORESEARCH_COMMIT").ok().filter(|c| !c.is_empty())));

    // Data (5).
    let data = PreparedData::open(&cache_dir).map_err(|e| Failure::new(exit::DATA_ERROR, format!("prepared data in {}: {e:#}", cache_dir.display())))?;
    if data.vocab_size() > u16::MAX as usize + 1 {
        return Err(Failure::new(exit::DATA_ERROR, format!("a vocabulary of {} ids does not fit the 16-bit wire format", data.vocab_size())));
    }
    let mut train_loader = PackedLoader::train(&data, 1, profile.seq_len, cli.seed).map_err(|e| Failure::new(exit::DATA_ERROR, format!("{e:#}")))?;

    // The sandbox (2 when one is required and there is none), and what starts every trainer
    // process of the run: the training process, then one per evaluation group.
    let scratch_parent = std::env::temp_dir();
    let train_scratch = Scratch::create(&scratch_parent).map_err(|e| Failure::new(exit::OTHER_FAILURE, format!("{e:#}")))?;
    let model_dir = train_scratch.path().join("model");
    std::fs::create_dir(&model_dir).map_err(|e| Failure::new(exit::OTHER_FAILURE, format!("creating {}: {e}", model_dir.display())))?;
    let protected = protected(cli, &cache_dir, &trainer_bin);
    let planned = trainer_policy(&trainer_bin, train_scratch.path(), &choice, &protected, &cli.allow_read).map_err(|e| Failure::new(exit::USAGE, e))?;
    for note in &planned.notes {
        eprintln!("harness: sandbox: {note}");
    }
    let sandboxed = match planned.policy.prepare() {
        Ok(s) => {
            let text = s.describe();
            println!("harness: sandbox: {text}");
            record.insert("sandbox".into(), json!(text));
            if !cli.allow_read.is_empty() {
                record.insert("sandbox_allow_read".into(), json!(cli.allow_read.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()));
            }
            true
        }
        Err(e) if cli.require_sandbox() => {
            return Err(Failure::new(exit::USAGE, format!("{e}; the trainer would run with the harness's own rights. Pass --no-require-sandbox to run it anyway (its score is then marked `sandbox: none`)")));
        }
        Err(e) => {
            let text = format!("none ({e})");
            println!("harness: sandbox: {text}");
            eprintln!("harness: WARNING: sandbox: none: the trainer runs unconfined, and can read the validation data and write the summary; its score is not to be trusted");
            record.insert("sandbox".into(), json!(format!("none: {e}")));
            false
        }
    };
    if let Some(note) = &profile.eval_transport {
        println!("harness: the profile's eval_transport = {note:?} is no longer used: evaluation sends one position at a time and every logit crosses in shared memory");
    }
    let (b, t, v) = (profile.eval_batch_size, profile.seq_len, data.vocab_size());
    // Rows per evaluating process: the profile's, scaled down with the device batch (the runner
    // halves it after an out-of-memory exit, which the KV cache of a large group can cause too).
    let group_rows = ((b as f64 * profile.device_batch_scale).ceil() as usize).clamp(1, b);

    println!("harness: device {} ({source_text}), profile {}, budget {}, seed {}, trainer {}", choice.name, profile.name, cli.budget, cli.seed, trainer_bin.display());

    // The training process, and the clock from its start.
    become_subreaper();
    install_signal_handlers();
    let kernels = KernelSettings::of(&profile, &choice);
    for note in &kernels.notes {
        println!("harness: {note}");
    }
    record.insert("fusion".into(), json!(kernels.fusion));
    record.insert("autotune".into(), json!(kernels.autotune));
    record.insert("dtype".into(), json!(profile.dtype));
    let spawner = Spawner {
        binary: &trainer_bin,
        choice: &choice,
        protected: &protected,
        allow_read: &cli.allow_read,
        sandboxed,
        extra_env: kernels.env,
        scratch_parent: &scratch_parent,
        hello: Hello {
            protocol: PROTOCOL_VERSION,
            task: Task::Train,
            device: choice.name.clone(),
            seed: cli.seed,
            class: profile.class.clone(),
            dtype: profile.dtype.clone(),
            seq_len: t,
            vocab_size: v,
            bos_id: data.bos_id(),
            device_batch_scale: profile.device_batch_scale,
            warmup_steps: profile.warmup_steps,
            budget: cli.budget.to_string(),
            hparams_override,
            model_dir: model_dir.display().to_string(),
            shm_bytes: 0,
        },
    };
    let mut trainer = spawner.start_training(&train_scratch, planned).map_err(|e| Failure::new(exit::OTHER_FAILURE, e))?;
    let allowance = allowance(cli.budget, profile.warmup_allowance_seconds);
    let mut clock = Clock::new(cli.budget, profile.warmup_steps, allowance, trainer.started());

    // Training.
    let trained = TrainPhase { clock: &mut clock, loader: &mut train_loader, seq_len: t }.run(&mut trainer).map_err(|f| train_failure(f, &mut trainer))?;
    // Nothing of the training process is left when evaluation starts: it has said it is done,
    // and its whole process group goes now.
    let train_exit = trainer.finish(Duration::from_secs(2));
    record.insert("trainer_exit".into(), json!(train_exit.describe()));
    let training_seconds = clock.training_seconds();
    record.insert("training_seconds".into(), json!(training_seconds));
    record.insert("warmup_seconds".into(), json!(clock.warmup_seconds()));
    record.insert("warmup_allowance_seconds".into(), json!(allowance.as_secs_f64()));
    record.insert("num_steps".into(), json!(clock.steps()));
    record.insert("total_tokens".into(), json!(clock.tokens()));
    record.insert("warmup_steps".into(), json!(clock.warmup_steps_taken()));
    record.insert("num_params".into(), json!(trained.model.num_params));
    record.insert("flops_per_token".into(), json!(trained.model.flops_per_token));
    record.insert("depth".into(), json!(trained.model.depth));
    record.insert("reported_by_trainer".into(), json!(["num_params", "flops_per_token", "depth", "loss", "device_memory_mb"]));
    if let Some(path) = &cli.steps_csv {
        write_text_atomic(path, &steps_csv(&trained.steps)).map_err(|e| Failure::new(exit::OTHER_FAILURE, e))?;
    }
    let model_bytes = saved_model_bytes(train_scratch.path(), &model_dir).map_err(|e| Failure::new(exit::OTHER_FAILURE, e))?;
    record.insert("saved_model_bytes".into(), json!(model_bytes));
    if model_bytes == 0 {
        return Err(Failure::new(
            exit::OTHER_FAILURE,
            format!("the trainer saved no model: its model folder {} is empty (the model's LogitsModel::save writes what the trainer's load reads; every evaluation group starts from it)", model_dir.display()),
        ));
    }
    println!(
        "harness: trained {} steps, {} tokens, {:.1} s counted; evaluating val_bpb: {} rows in groups of {group_rows}, one position at a time, each group in a fresh process",
        clock.steps(),
        clock.tokens(),
        training_seconds,
        profile.eval_steps() * b
    );

    // Evaluation.
    let counted_rate = if training_seconds > 0.0 { clock.counted_tokens() as f64 / training_seconds } else { 0.0 };
    let limits = eval_limits(group_rows * t, t, counted_rate, profile.eval_position_seconds, Duration::from_secs_f64(clock.warmup_seconds()));
    record.insert("eval_limit_seconds".into(), json!(limits.group.as_secs_f64()));
    record.insert("eval_ready_limit_seconds".into(), json!(limits.ready.as_secs_f64()));
    let launch = |rows: usize| spawner.start_evaluating(rows, &model_dir);
    let evaluator = Evaluator {
        data: &data,
        batch_rows: b,
        batches: profile.eval_steps(),
        group_rows,
        seq_len: t,
        rows: Rows::Validation,
        limits,
        witness_rows: profile.eval_witness_rows,
        tolerance: Tolerance::for_dtype(&profile.dtype),
    };
    let evaluation = evaluator.run(&launch).map_err(|e| eval_failure(e, record))?;
    // The held-out split, asked for: the same model, rows no validation row shares a document
    // with.
    if cli.held_out {
        let h = score_held_out(&evaluator, &evaluation, &launch).map_err(|e| eval_failure(e, record))?;
        match &h {
            HeldOut::Scored { bpb, rows, split_documents, split_tokens, .. } => {
                println!("harness: held-out split: heldout_bpb {bpb:.6} over {rows} rows (of {split_documents} documents, {split_tokens} tokens past the validation rows)")
            }
            HeldOut::None(why) => println!("harness: HELD-OUT SPLIT: NONE: {why}"),
        }
        record.insert("heldout".into(), json!(h));
        if let HeldOut::Scored { bpb, .. } = h {
            record.insert("heldout_bpb".into(), json!(bpb));
        }
    }
    drop(train_scratch);
    record.insert("trainer_output_withheld_bytes".into(), json!(evaluation.withheld_bytes));
    let sums = evaluation.sums;
    let val_bpb = sums.bpb();
    if !val_bpb.is_finite() {
        return Err(Failure::new(exit::OTHER_FAILURE, format!("val_bpb is not finite ({val_bpb})")));
    }
    let ready_max = evaluation.groups.iter().map(|g| g.ready_seconds).fold(0.0, f64::max);
    let group_max = evaluation.groups.iter().map(|g| g.seconds).fold(0.0, f64::max);
    record.insert(
        "eval".into(),
        json!({
            "order": "one position of every row of a group at a time, each group in a fresh process",
            "rows": evaluation.rows,
            "groups": evaluation.groups.len(),
            "rows_per_group": group_rows,
            "seconds": evaluation.seconds,
            "ready_seconds_max": ready_max,
            "group_seconds_max": group_max,
            "ready_limit_seconds": limits.ready.as_secs_f64(),
            "group_limit_seconds": limits.group.as_secs_f64(),
            "peak_rss_mb": evaluation.peak_rss_mb,
            "witnesses": evaluation.witnesses,
        }),
    );
    record.insert("eval_seconds".into(), json!(evaluation.seconds));
    println!(
        "harness: evaluated {} rows in {} group(s), one position at a time: {:.1} s (model loaded in at most {ready_max:.2} s; a group took at most {group_max:.1} s of {:.1} s allowed); {} witness rows agreed apart from their group (max |diff| {:.2e})",
        evaluation.rows,
        evaluation.groups.len(),
        evaluation.seconds,
        limits.group.as_secs_f64(),
        evaluation.witnesses.rows,
        evaluation.witnesses.max_abs_diff
    );

    // Summary.
    let peak_mem = match trained.done.device_memory_mb {
        Some(mb) => PeakMemory { mb, source: "device_pool" },
        None => memory::choose(None, || match (train_exit.max_rss_mb, evaluation.peak_rss_mb) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }),
    };
    let peak = choose_peak(profile.peak_flops, choice.class, this_cpu_peak);
    let counted = clock.counted_tokens() as f64;
    let mfu = mfu_percent(trained.model.flops_per_token, counted, training_seconds, peak.flops);
    let summary = Summary {
        val_bpb,
        training_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        peak_vram_mb: peak_mem.mb,
        mfu_percent: if choice.class == DeviceClass::Gpu && peak.flops <= 0.0 { 0.0 } else { mfu },
        total_tokens_m: clock.tokens() as f64 / 1e6,
        num_steps: clock.steps(),
        num_params_m: trained.model.num_params as f64 / 1e6,
        depth: trained.model.depth as usize,
    };
    if let Value::Object(fields) = json!(summary) {
        record.extend(fields);
    }
    record.insert("memory_source".into(), json!(peak_mem.source));
    record.insert("peak_flops".into(), json!(peak.flops));
    record.insert("peak_flops_source".into(), json!(peak.source));
    record.insert("cpu_peak".into(), json!(peak.cpu));
    record.insert("counted_tokens".into(), json!(counted));
    record.insert("tokens_per_sec".into(), json!(counted_rate));
    record.insert("eval_tokens".into(), json!(sums.tokens));
    record.insert("eval_bytes".into(), json!(sums.bytes));
    record.insert("eval_nats".into(), json!(sums.nats));

    println!("{}", memory::describe(&peak_mem));
    if peak.source == "unknown" {
        println!("mfu_note: no peak FLOP/s for this GPU (set peak_flops in the profile); mfu_percent is 0");
    } else {
        println!("mfu_note: peak {:.3e} FLOP/s from {}", peak.flops, peak.source);
    }
    print!("{}", format_summary(&summary));
    Ok(())
}

/// What starts the run's trainer processes: the same binary, device, sandbox rules and run
/// information for each, with a scratch folder of its own.
struct Spawner<'a> {
    binary: &'a Path,
    choice: &'a prepare::device::DeviceChoice,
    protected: &'a Protected,
    allow_read: &'a [PathBuf],
    /// Whether processes run in the sandbox (false only with `--no-require-sandbox` where
    /// there is none).
    sandboxed: bool,
    extra_env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    scratch_parent: &'a Path,
    /// The training process's Hello; evaluating processes get it with their task.
    hello: Hello,
}

impl Spawner<'_> {
    /// The training process, in `scratch`, under `planned` (already checked).
    fn start_training(&self, scratch: &Scratch, planned: TrainerSandbox) -> Result<TrainerProcess, String> {
        let sandbox = if self.sandboxed { Some(Arc::new(planned.policy.prepare().map_err(|e| e.to_string())?)) } else { None };
        let launch = Launch { binary: self.binary, scratch: scratch.path(), sandbox, shm_bytes: 0, library_path: planned.library_path, extra_env: self.extra_env.clone() };
        let mut process = TrainerProcess::start(launch).map_err(|e| format!("{e:#}"))?;
        TRAINER_GROUP.store(process.pid(), Ordering::SeqCst);
        process.send(&ToTrainer::Hello(Box::new(self.hello.clone()))).map_err(|e| format!("the trainer did not take its Hello: {e}"))?;
        Ok(process)
    }

    /// A fresh process for one evaluation group of `rows` rows: a scratch folder of its own,
    /// the saved model in `model_dir` readable and nothing else of the run.
    fn start_evaluating(&self, rows: usize, model_dir: &Path) -> Result<Launched, String> {
        let scratch = Scratch::create(self.scratch_parent).map_err(|e| format!("{e:#}"))?;
        let mut planned = trainer_policy(self.binary, scratch.path(), self.choice, self.protected, self.allow_read)?;
        planned.policy.read.push(model_dir.to_path_buf());
        let sandbox = if self.sandboxed { Some(Arc::new(planned.policy.prepare().map_err(|e| e.to_string())?)) } else { None };
        let shm_bytes = rows * self.hello.vocab_size * 4;
        let launch = Launch { binary: self.binary, scratch: scratch.path(), sandbox, shm_bytes, library_path: planned.library_path, extra_env: self.extra_env.clone() };
        let mut process = TrainerProcess::start(launch).map_err(|e| format!("{e:#}"))?;
        TRAINER_GROUP.store(process.pid(), Ordering::SeqCst);
        let hello = Hello { task: Task::Evaluate { rows }, shm_bytes: shm_bytes as u64, ..self.hello.clone() };
        process.send(&ToTrainer::Hello(Box::new(hello))).map_err(|e| format!("an evaluating process did not take its Hello: {e}"))?;
        Ok(Launched { process, scratch })
    }
}

/// The size of the saved model, once the training process is gone: `model_dir` must be the
/// folder the harness made in the training scratch, not a link the trainer put in its place.
fn saved_model_bytes(scratch: &Path, model_dir: &Path) -> Result<u64, String> {
    let meta = std::fs::symlink_metadata(model_dir).map_err(|e| format!("the trainer left no model folder {}: {e}", model_dir.display()))?;
    let real = std::fs::canonicalize(model_dir).ok();
    let inside = std::fs::canonicalize(scratch).ok().map(|s| s.join("model"));
    if !meta.is_dir() || real.is_none() || real != inside {
        return Err(format!("the trainer replaced its model folder {} with something else than a folder; evaluation reads only a real folder there", model_dir.display()));
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
    Ok(size(model_dir))
}

/// The held-out score of a run, or why there is none.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldOut {
    Scored { bpb: f64, seconds: f64, tokens: u64, bytes: u64, rows: usize, documents: usize, split_documents: usize, split_tokens: u64, overlap_with_validation: usize, source: &'static str, witnesses: crate::evaluate::WitnessReport },
    None(String),
}

/// Scores the held-out split with the same trainer, after the validation rows.
fn score_held_out(main: &Evaluator<'_>, validation: &crate::evaluate::Evaluation, launch: &Launcher<'_>) -> Result<HeldOut, EvalError> {
    let exclude = validation.placed.clone();
    let Some(split) = prepare::held_out::split(main.data, &exclude, main.batch_rows, main.seq_len, main.batches) else {
        return Ok(HeldOut::None(format!(
            "the validation shard holds no document beyond the {} the evaluation uses; prepare more validation text (it is scored only where no validation row reaches)",
            exclude.len()
        )));
    };
    let evaluator = Evaluator { rows: Rows::HeldOut { exclude: exclude.clone() }, batches: split.steps, ..*main };
    let e = evaluator.run(launch)?;
    let overlap = e.placed.intersection(&exclude).count();
    Ok(HeldOut::Scored {
        bpb: e.sums.bpb(),
        seconds: e.seconds,
        tokens: e.sums.tokens,
        bytes: e.sums.bytes,
        rows: e.rows,
        documents: e.placed.len(),
        split_documents: split.docs.len(),
        split_tokens: split.tokens,
        overlap_with_validation: overlap,
        source: "the validation shard's documents that the evaluation does not reach",
        witnesses: e.witnesses,
    })
}

/// How long an evaluating process may take, for a group of `group_tokens` tokens in `positions`
/// positions: to load the model, the warm-up the training process used plus 5 s; to answer every
/// position, 2 s, plus as long as training on the group's tokens took (a forward pass is a third
/// of a training step; decoding one position at a time costs more), plus the profile's
/// `eval_position_seconds` a position (a decode step's latency beyond its arithmetic), at least
/// 5 s. Each group's process starts from the saved model and dies with its group, so this is
/// also the most a trainer could compute outside its budget: docs/threat-model.md counts
/// it.
pub fn eval_limits(group_tokens: usize, positions: usize, counted_tokens_per_second: f64, position_seconds: f64, warmup: Duration) -> EvalLimits {
    let training_equivalent = if counted_tokens_per_second > 0.0 { group_tokens as f64 / counted_tokens_per_second } else { 60.0 };
    let group = 2.0 + training_equivalent + positions as f64 * position_seconds;
    EvalLimits { ready: warmup + Duration::from_secs(5), group: Duration::from_secs_f64(group.max(5.0)) }
}

fn train_failure(f: TrainFailure, trainer: &mut TrainerProcess) -> Failure {
    let mut exit_text = || trainer.finish(Duration::from_secs(5)).describe();
    match f {
        TrainFailure::Diverged { step, loss } => Failure::new(exit::DIVERGED, format!("FAIL: the trainer's loss diverged at step {step} (loss {loss})")),
        TrainFailure::Reported(r) => {
            let code = match r.kind {
                FailureKind::Diverged => exit::DIVERGED,
                FailureKind::OutOfMemory => exit::OUT_OF_MEMORY,
                FailureKind::Error => exit::OTHER_FAILURE,
            };
            Failure::new(code, format!("the trainer failed: {}", r.message))
        }
        TrainFailure::OverBudget(o) => {
            let ended = exit_text();
            Failure::new(exit::OTHER_FAILURE, format!("over budget: the trainer trained {:.1} s of counted time, more than the budget and its grace for the last step ({:.1} s); it {ended}", o.counted, o.limit))
        }
        TrainFailure::Trainer(text) => {
            let _ = exit_text();
            Failure::new(exit::OTHER_FAILURE, text)
        }
    }
}

fn eval_failure(e: EvalError, record: &mut Map<String, Value>) -> Failure {
    match e {
        EvalError::Inconsistent(text) => {
            let text = format!("EVALUATION CHECK FAILED: {text}. The run is refused: its answers are not a distribution that can be scored.");
            println!("{text}");
            Failure::new(exit::CAUSALITY_VIOLATION, text)
        }
        EvalError::Witness(report) => {
            let text = report.refusal();
            println!("{text}");
            record.insert("witnesses".into(), json!(report));
            Failure::new(exit::CAUSALITY_VIOLATION, text)
        }
        EvalError::Data(text) => Failure::new(exit::DATA_ERROR, format!("validation data: {text}")),
        EvalError::Trainer(text) => Failure::new(exit::OTHER_FAILURE, text),
        // It has seen no validation token yet: its own message helps and leaks nothing.
        EvalError::Load(f) => match f.kind {
            FailureKind::OutOfMemory => Failure::new(exit::OUT_OF_MEMORY, format!("an evaluating process ran out of memory loading the model: {}", f.message)),
            _ => Failure::new(exit::OTHER_FAILURE, format!("an evaluating process could not load the saved model: {}", f.message)),
        },
        // It has seen validation tokens: its own message is not passed on.
        EvalError::Failed(f) => match f.kind {
            FailureKind::OutOfMemory => Failure::new(exit::OUT_OF_MEMORY, "the trainer ran out of memory during evaluation"),
            _ => Failure::new(exit::OTHER_FAILURE, "the trainer failed during evaluation (its message is withheld: it has seen validation inputs)"),
        },
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn write_text_atomic(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_file_name(format!(".{}.tmp.{}", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), std::process::id()));
    std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("harness").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn a_group_gets_the_warmup_to_load_and_a_training_equivalent_to_answer() {
        let l = eval_limits(65536, 256, 4096.0, 0.05, Duration::from_millis(1500));
        assert_eq!(l.ready, Duration::from_millis(6500));
        assert_eq!(l.group, Duration::from_secs_f64(2.0 + 16.0 + 12.8));
        assert_eq!(eval_limits(100, 10, 1e9, 0.0, Duration::ZERO).group, Duration::from_secs(5), "at least 5 s");
    }

    #[test]
    fn usage_and_data_errors_exit_2_and_5_and_write_a_failure_record() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("s.json");
        let json_s = json.to_str().unwrap();
        let fake_trainer = dir.path().join("trainer");
        std::fs::write(&fake_trainer, "").unwrap();
        let trainer = fake_trainer.to_str().unwrap();

        let code = run(&cli(&["--device", "tpu", "--summary-json", json_s, "--trainer", trainer]), Instant::now());
        assert_eq!(code, exit::USAGE);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!((v["status"].as_str(), v["exit_code"].as_i64()), (Some("usage"), Some(2)));
        assert!(v["error"].as_str().unwrap().contains("tpu"));

        assert_eq!(run(&cli(&["--profile", "/no/such/profile.toml", "--trainer", trainer]), Instant::now()), exit::USAGE);
        assert_eq!(run(&cli(&["--device-batch-scale", "2", "--trainer", trainer]), Instant::now()), exit::USAGE);
        let missing = run(&cli(&["--device", "flex", "--trainer", "/no/such/trainer", "--summary-json", json_s]), Instant::now());
        assert_eq!(missing, exit::USAGE);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert!(v["error"].as_str().unwrap().contains("/no/such/trainer"), "{v}");

        let empty = dir.path().join("empty-cache");
        std::fs::create_dir_all(&empty).unwrap();
        let code = run(&cli(&["--device", "flex", "--cache-dir", empty.to_str().unwrap(), "--summary-json", json_s, "--trainer", trainer]), Instant::now());
        assert_eq!(code, exit::DATA_ERROR);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["status"], "data");
        assert_eq!(v["device"], "flex");
    }
}

/// What the profile's `fusion` and `autotune` come to on this build and device. Fusion is
/// Burn's compile-time choice (the `fusion` feature wraps every CubeCL device); autotune's level
/// is CubeCL's run-time setting, which the trainer gets as `CUBECL_AUTOTUNE_LEVEL` unless the
/// harness's own environment sets it.
struct KernelSettings {
    fusion: bool,
    autotune: bool,
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    notes: Vec<String>,
}

impl KernelSettings {
    fn of(profile: &PlatformProfile, device: &prepare::device::DeviceChoice) -> KernelSettings {
        let cubecl = device.spec.starts_with("wgpu") || matches!(device.spec, "vulkan" | "metal");
        let built = cfg!(feature = "fusion");
        let mut notes = Vec::new();
        if !cubecl {
            // LibTorch, flex and ndarray run eagerly: neither setting applies.
            return KernelSettings { fusion: false, autotune: false, env: Vec::new(), notes };
        }
        if profile.fusion && !built {
            notes.push(format!("the profile asks for kernel fusion, which this build lacks: rebuild with `--features harness/fusion,trainer/fusion` (or `gpu`) for {}", device.name));
        } else if !profile.fusion && built {
            notes.push("the profile turns kernel fusion off, but this build fuses every CubeCL device (the `fusion` feature): fusion stays on".to_string());
        }
        let mut env = Vec::new();
        if std::env::var_os("CUBECL_AUTOTUNE_LEVEL").is_none() {
            env.push(("CUBECL_AUTOTUNE_LEVEL".into(), if profile.autotune { "balanced" } else { "minimal" }.into()));
        }
        KernelSettings { fusion: built, autotune: profile.autotune, env, notes }
    }
}
