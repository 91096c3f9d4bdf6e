//! One experiment, start to finish, in four phases: configure (profile, device, data,
//! [`crate::setup`]), train (the training process in its sandbox, on the harness's clock),
//! evaluate (a fresh process per group of rows, then the witness rows), summarise (the figures
//! and the reference's block). The run's [`RunSummary`] is filled in as it goes, and written
//! (and signed) whatever happens.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use contract::summary::{EvalSummary, HeldOut, RunSummary};
use contract::wire::{FailureKind, Hello, PROTOCOL_VERSION, Task};
use experiment::device::DeviceClass;
use experiment::flops::{choose_peak, mfu_percent, this_cpu_peak};
use experiment::memory::{self, PeakMemory};
use prepare::clock::{Clock, allowance};
use prepare::loader::PackedLoader;
use serde_json::Value;

use crate::cli::Cli;
use crate::evaluate::{EvalError, EvalLimits, Evaluation, Evaluator, Launcher, Rows};
use crate::exit::{self, Failure};
use crate::sandbox_policy::trainer_policy;
use crate::setup::{Setup, configure};
use crate::spawn::{Spawner, install_signal_handlers, sandbox_available, saved_model_bytes};
use crate::summary::write_json_atomic;
use crate::train_phase::{TrainFailure, TrainPhase, steps_csv};
use crate::trainer_process::{Exit, Scratch, TrainerProcess, become_subreaper};

/// Runs the experiment described by `cli`; returns the process exit code. `started` is the
/// process start, for `total_seconds`.
pub fn run(cli: &Cli, started: Instant) -> i32 {
    let mut summary = RunSummary::default();
    let code = match execute(cli, started, &mut summary) {
        Ok(()) => exit::SUCCESS,
        Err(failure) => {
            if failure.code == exit::DIVERGED {
                // The reference prints exactly this and exits 1.
                println!("\nFAIL");
            }
            eprintln!("harness: {}", failure.message);
            eprintln!("harness: exit {} ({})", failure.code, exit::status_name(failure.code));
            summary.error = Some(failure.message);
            failure.code
        }
    };
    summary.status = exit::status_name(code).into();
    summary.exit_code = code;
    let mut record = summary.to_record();
    if let Some(key) = &cli.sign_key {
        match std::fs::read_to_string(key) {
            Ok(k) => contract::signature::sign(k.trim().as_bytes(), &mut record),
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

fn execute(cli: &Cli, started: Instant, summary: &mut RunSummary) -> Result<(), Failure> {
    let setup = configure(cli, summary)?;
    let scratch_parent = std::env::temp_dir();
    let train_scratch = Scratch::create(&scratch_parent).map_err(|e| Failure::new(exit::OTHER_FAILURE, format!("{e:#}")))?;
    let model_dir = train_scratch.path().join("model");
    std::fs::create_dir(&model_dir).map_err(|e| Failure::new(exit::OTHER_FAILURE, format!("creating {}: {e}", model_dir.display())))?;
    let planned = trainer_policy(&setup.trainer_bin, train_scratch.path(), &setup.choice, &setup.protected, &cli.allow_read).map_err(|e| Failure::new(exit::USAGE, e))?;
    let sandboxed = sandbox_available(cli, &planned, summary)?;
    let spawner = Spawner {
        binary: &setup.trainer_bin,
        choice: &setup.choice,
        protected: &setup.protected,
        allow_read: &cli.allow_read,
        sandboxed,
        extra_env: setup.kernels.env.clone(),
        scratch_parent: &scratch_parent,
        hello: hello(cli, &setup, &model_dir),
    };
    println!(
        "harness: device {} ({}), profile {}, budget {}, seed {}, trainer {}",
        setup.choice.name,
        setup.source,
        setup.profile.name,
        cli.budget,
        cli.seed,
        setup.trainer_bin.display()
    );
    become_subreaper();
    install_signal_handlers();
    let loader = PackedLoader::train(&setup.data, 1, setup.profile.seq_len, cli.seed).map_err(|e| Failure::new(exit::DATA_ERROR, format!("{e:#}")))?;
    let mut trainer = spawner.start_training(&train_scratch, planned).map_err(|e| Failure::new(exit::OTHER_FAILURE, e))?;
    let trained = train(cli, &setup, &mut trainer, loader, &train_scratch, summary)?;
    let evaluation = evaluate(cli, &setup, &trained, &|rows| spawner.start_evaluating(rows, &model_dir), summary)?;
    drop(train_scratch);
    summarise(&setup, &trained, &evaluation, started, summary);
    Ok(())
}

/// The training process's Hello: everything it is told about the run.
fn hello(cli: &Cli, setup: &Setup, model_dir: &Path) -> Hello {
    let p = &setup.profile;
    Hello {
        protocol: PROTOCOL_VERSION,
        task: Task::Train,
        device: setup.choice.name.clone(),
        seed: cli.seed,
        class: p.class.clone(),
        dtype: p.dtype.clone(),
        seq_len: p.seq_len,
        vocab_size: setup.data.vocab_size(),
        bos_id: setup.data.bos_id(),
        device_batch_scale: p.device_batch_scale,
        warmup_steps: p.warmup_steps,
        budget: cli.budget.to_string(),
        hparams_override: setup.hparams_override.clone(),
        model_dir: model_dir.display().to_string(),
        shm_bytes: 0,
    }
}

/// How training went, for the phases after it.
struct Trained {
    phase: crate::train_phase::Trained,
    clock: Clock,
    exit: Exit,
}

/// The training process on the harness's clock, to its end; then it is gone (its whole process
/// group) and its saved model is checked.
fn train(cli: &Cli, setup: &Setup, trainer: &mut TrainerProcess, mut loader: PackedLoader, scratch: &Scratch, summary: &mut RunSummary) -> Result<Trained, Failure> {
    let t = setup.profile.seq_len;
    let allowance = allowance(cli.budget, setup.profile.warmup_allowance_seconds);
    let mut clock = Clock::new(cli.budget, setup.profile.warmup_steps, allowance, trainer.started());
    let phase = TrainPhase { clock: &mut clock, loader: &mut loader, seq_len: t }.run(trainer).map_err(|f| train_failure(f, trainer))?;
    let exit = trainer.finish(Duration::from_secs(2));
    summary.trainer_exit = Some(exit.describe());
    summary.training_seconds = Some(clock.training_seconds());
    summary.warmup_seconds = Some(clock.warmup_seconds());
    summary.warmup_allowance_seconds = Some(allowance.as_secs_f64());
    summary.num_steps = Some(clock.steps());
    summary.total_tokens = Some(clock.tokens());
    summary.warmup_steps = Some(clock.warmup_steps_taken());
    summary.num_params = Some(phase.model.num_params);
    summary.flops_per_token = Some(phase.model.flops_per_token);
    summary.depth = Some(phase.model.depth);
    summary.reported_by_trainer = Some(["num_params", "flops_per_token", "depth", "loss", "device_memory_mb"].map(String::from).to_vec());
    if let Some(path) = &cli.steps_csv {
        write_text_atomic(path, &steps_csv(&phase.steps)).map_err(|e| Failure::new(exit::OTHER_FAILURE, e))?;
    }
    summary.saved_model_bytes = Some(saved_model_bytes(scratch.path(), &scratch.path().join("model"))?);
    println!("harness: trained {} steps, {} tokens, {:.1} s counted", clock.steps(), clock.tokens(), clock.training_seconds());
    Ok(Trained { phase, clock, exit })
}

/// val_bpb (and the held-out split, asked for), each group by a process `launch` starts.
fn evaluate(cli: &Cli, setup: &Setup, trained: &Trained, launch: &Launcher<'_>, summary: &mut RunSummary) -> Result<Evaluation, Failure> {
    let p = &setup.profile;
    let (b, t) = (p.eval_batch_size, p.seq_len);
    // Rows per evaluating process: the profile's, scaled down with the device batch (the runner
    // halves it after an out-of-memory exit, which the KV cache of a large group can cause too).
    let group_rows = ((b as f64 * p.device_batch_scale).ceil() as usize).clamp(1, b);
    let limits = eval_limits(group_rows * t, t, counted_rate(&trained.clock), p.eval_position_seconds, Duration::from_secs_f64(trained.clock.warmup_seconds()));
    summary.eval_limit_seconds = Some(limits.group.as_secs_f64());
    summary.eval_ready_limit_seconds = Some(limits.ready.as_secs_f64());
    println!("harness: evaluating val_bpb: {} rows in groups of {group_rows}, one position at a time, each group in a fresh process", p.eval_steps() * b);
    let evaluator = Evaluator {
        data: &setup.data,
        batch_rows: b,
        batches: p.eval_steps(),
        group_rows,
        seq_len: t,
        rows: Rows::Validation,
        limits,
        witness_rows: p.eval_witness_rows,
        tolerance: contract::summary::Tolerance::for_dtype(&p.dtype),
    };
    let evaluation = evaluator.run(launch).map_err(|e| eval_failure(e, summary))?;
    if cli.held_out {
        let h = score_held_out(&evaluator, &evaluation, launch).map_err(|e| eval_failure(e, summary))?;
        match &h {
            HeldOut::Scored { bpb, rows, split_documents, split_tokens, .. } => {
                println!("harness: held-out split: heldout_bpb {bpb:.6} over {rows} rows (of {split_documents} documents, {split_tokens} tokens past the validation rows)");
                summary.heldout_bpb = Some(*bpb);
            }
            HeldOut::None(why) => println!("harness: HELD-OUT SPLIT: NONE: {why}"),
        }
        summary.heldout = Some(h);
    }
    let report = eval_summary(&evaluation, group_rows, limits);
    println!(
        "harness: evaluated {} rows in {} group(s), one position at a time: {:.1} s (model loaded in at most {:.2} s; a group took at most {:.1} s of {:.1} s allowed); {} witness rows agreed apart from their group (max |diff| {:.2e})",
        report.rows,
        report.groups,
        report.seconds,
        report.ready_seconds_max,
        report.group_seconds_max,
        report.group_limit_seconds,
        report.witnesses.rows,
        report.witnesses.max_abs_diff
    );
    summary.eval = Some(report);
    summary.eval_seconds = Some(evaluation.seconds);
    summary.trainer_output_withheld_bytes = Some(evaluation.withheld_bytes);
    Ok(evaluation)
}

fn eval_summary(e: &Evaluation, group_rows: usize, limits: EvalLimits) -> EvalSummary {
    EvalSummary {
        order: "one position of every row of a group at a time, each group in a fresh process".into(),
        rows: e.rows,
        groups: e.groups.len(),
        rows_per_group: group_rows,
        seconds: e.seconds,
        ready_seconds_max: e.groups.iter().map(|g| g.ready_seconds).fold(0.0, f64::max),
        group_seconds_max: e.groups.iter().map(|g| g.seconds).fold(0.0, f64::max),
        ready_limit_seconds: limits.ready.as_secs_f64(),
        group_limit_seconds: limits.group.as_secs_f64(),
        peak_rss_mb: e.peak_rss_mb,
        witnesses: e.witnesses.clone(),
    }
}

/// Tokens per second over the counted time.
fn counted_rate(clock: &Clock) -> f64 {
    let seconds = clock.training_seconds();
    if seconds > 0.0 { clock.counted_tokens() as f64 / seconds } else { 0.0 }
}

/// The figures: val_bpb, memory, MFU, and the reference's block, printed.
fn summarise(setup: &Setup, trained: &Trained, evaluation: &Evaluation, started: Instant, summary: &mut RunSummary) {
    let sums = &evaluation.sums;
    let peak_mem = match trained.phase.done.device_memory_mb {
        Some(mb) => PeakMemory { mb, source: "device_pool" },
        None => memory::choose(None, || match (trained.exit.max_rss_mb, evaluation.peak_rss_mb) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }),
    };
    let class = setup.choice.class;
    let peak = choose_peak(setup.profile.peak_flops, class, this_cpu_peak);
    let (clock, model) = (&trained.clock, &trained.phase.model);
    let counted = clock.counted_tokens() as f64;
    let mfu = mfu_percent(model.flops_per_token, counted, clock.training_seconds(), peak.flops);
    summary.val_bpb = Some(sums.bpb());
    summary.total_seconds = Some(started.elapsed().as_secs_f64());
    summary.peak_vram_mb = Some(peak_mem.mb);
    summary.mfu_percent = Some(if class == DeviceClass::Gpu && peak.flops <= 0.0 { 0.0 } else { mfu });
    summary.total_tokens_m = Some(clock.tokens() as f64 / 1e6);
    summary.num_params_m = Some(model.num_params as f64 / 1e6);
    summary.memory_source = Some(peak_mem.source.into());
    summary.peak_flops = Some(peak.flops);
    summary.peak_flops_source = Some(peak.source.into());
    summary.cpu_peak = peak.cpu.as_ref().and_then(|c| serde_json::to_value(c).ok());
    summary.counted_tokens = Some(counted);
    summary.tokens_per_sec = Some(counted_rate(clock));
    summary.eval_tokens = Some(sums.tokens);
    summary.eval_bytes = Some(sums.bytes);
    summary.eval_nats = Some(sums.nats);
    println!("{}", memory::describe(&peak_mem));
    if peak.source == "unknown" {
        println!("mfu_note: no peak FLOP/s for this GPU (set peak_flops in the profile); mfu_percent is 0");
    } else {
        println!("mfu_note: peak {:.3e} FLOP/s from {}", peak.flops, peak.source);
    }
    print!("{}", summary.block());
}

/// Scores the held-out split with the same saved model, after the validation rows.
fn score_held_out(main: &Evaluator<'_>, validation: &Evaluation, launch: &Launcher<'_>) -> Result<HeldOut, EvalError> {
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
        source: "the validation shard's documents that the evaluation does not reach".into(),
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

fn eval_failure(e: EvalError, summary: &mut RunSummary) -> Failure {
    match e {
        EvalError::Inconsistent(text) => {
            let text = format!("EVALUATION CHECK FAILED: {text}. The run is refused: its answers are not a distribution that can be scored.");
            println!("{text}");
            Failure::new(exit::CAUSALITY_VIOLATION, text)
        }
        EvalError::Witness(report) => {
            let text = crate::evaluate::refusal(&report);
            println!("{text}");
            summary.witnesses = Some(report);
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

fn write_text_atomic(path: &PathBuf, text: &str) -> Result<(), String> {
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
        let summary = || RunSummary::from_json(&std::fs::read_to_string(&json).unwrap()).unwrap();

        let code = run(&cli(&["--device", "tpu", "--summary-json", json_s, "--trainer", trainer]), Instant::now());
        assert_eq!(code, exit::USAGE);
        let s = summary();
        assert_eq!((s.status.as_str(), s.exit_code), ("usage", 2));
        assert!(s.error.unwrap().contains("tpu"));

        assert_eq!(run(&cli(&["--profile", "/no/such/profile.toml", "--trainer", trainer]), Instant::now()), exit::USAGE);
        assert_eq!(run(&cli(&["--device-batch-scale", "2", "--trainer", trainer]), Instant::now()), exit::USAGE);
        let missing = run(&cli(&["--device", "flex", "--trainer", "/no/such/trainer", "--summary-json", json_s]), Instant::now());
        assert_eq!(missing, exit::USAGE);
        assert!(summary().error.unwrap().contains("/no/such/trainer"));

        let empty = dir.path().join("empty-cache");
        std::fs::create_dir_all(&empty).unwrap();
        let code = run(&cli(&["--device", "flex", "--cache-dir", empty.to_str().unwrap(), "--summary-json", json_s, "--trainer", trainer]), Instant::now());
        assert_eq!(code, exit::DATA_ERROR);
        let s = summary();
        assert_eq!((s.status.as_str(), s.device.as_deref()), ("data", Some("flex")));
    }
}
