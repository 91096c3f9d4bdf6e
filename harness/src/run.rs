//! One experiment, start to finish: profile, data, training, causality probe, val_bpb, summary.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use prepare::clock::TrainingClock;
use prepare::data::PreparedData;
use prepare::experiment::{TrainContext, TrainError, TrainedModel};
use prepare::loader::PackedLoader;
use prepare::profile::PlatformProfile;
use serde_json::{Map, Value, json};

use crate::cli::Cli;
use crate::device::{DeviceSource, build_device, choose_device};
use crate::exit;
use crate::flops::{choose_peak, counted_tokens, mfu_percent, this_cpu_peak};
use crate::memory::{self, MemoryTracker};
use crate::probe::{PROBE_ROWS, check_causality};
use crate::summary::{Summary, format_summary, write_json_atomic};

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

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// A panic during `stage`: out of memory (exit 3) when its message says so, else `other_code`.
pub fn classify_panic(stage: &str, message: &str, other_code: i32) -> Failure {
    if exit::looks_like_out_of_memory(message) {
        Failure::new(exit::OUT_OF_MEMORY, format!("out of memory during {stage} (panic: {message})"))
    } else {
        Failure::new(other_code, format!("{stage} panicked: {message}"))
    }
}

/// Runs `f`, turning a panic into a [`Failure`] classified by [`classify_panic`].
pub fn guarded<T>(stage: &str, other_code: i32, f: impl FnOnce() -> T) -> Result<T, Failure> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| classify_panic(stage, &panic_message(p.as_ref()), other_code))
}

/// Maps a trainer error to its exit code: diverged 1, out of memory 3, else 6 (3 when the
/// message says out of memory).
pub fn classify_train_error(err: &TrainError) -> Failure {
    match err {
        TrainError::Diverged { .. } => Failure::new(exit::DIVERGED, err.to_string()),
        TrainError::OutOfMemory(_) => Failure::new(exit::OUT_OF_MEMORY, err.to_string()),
        TrainError::Other(e) => {
            let text = format!("training failed: {e:#}");
            if exit::looks_like_out_of_memory(&text) {
                Failure::new(exit::OUT_OF_MEMORY, text)
            } else {
                Failure::new(exit::OTHER_FAILURE, text)
            }
        }
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
                // The reference prints exactly this and exits 1. The leading newline ends a
                // progress line the trainer may have left open with `\r`, so `^FAIL` greps.
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

fn execute(cli: &Cli, started: Instant, record: &mut Map<String, Value>) -> Result<(), Failure> {
    // Configuration: every problem here is a usage error (2).
    let mut profile = match &cli.profile {
        Some(path) => PlatformProfile::load(path).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?,
        None => PlatformProfile::default(),
    };
    if let Some(scale) = cli.device_batch_scale {
        profile.device_batch_scale = scale;
    }
    profile
        .validate()
        .map_err(|e| Failure::new(exit::USAGE, format!("platform profile {:?}: {e}", profile.name)))?;
    let hparams_override = match &cli.hparams {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            Failure::new(exit::USAGE, format!("cannot read hyperparameter file {}: {e}", path.display()))
        })?),
        None => None,
    };
    let env_device = std::env::var("BURN_DEVICE").ok();
    let (choice, source, notes) = choose_device(cli.device.as_deref(), env_device.as_deref(), &profile.backend)
        .map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    for note in notes {
        eprintln!("harness: {note}");
    }
    let device = build_device(&choice).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    let source_text = match source {
        DeviceSource::Flag => "--device",
        DeviceSource::Env => "BURN_DEVICE",
        DeviceSource::Profile => "profile backend",
        DeviceSource::Fallback => "fallback",
    };
    let cache_dir = cli.cache_dir.clone().unwrap_or_else(prepare::constants::default_cache_dir);
    record.insert("device".into(), json!(choice.name));
    record.insert("backend".into(), json!(backend_of(choice.spec)));
    record.insert("device_class".into(), json!(choice.class));
    record.insert("device_source".into(), json!(source_text));
    record.insert("profile".into(), json!(profile.name));
    record.insert("profile_file".into(), json!(cli.profile.as_ref().map(|p| p.display().to_string())));
    record.insert("device_batch_scale".into(), json!(profile.device_batch_scale));
    record.insert("seq_len".into(), json!(profile.seq_len));
    record.insert("budget".into(), json!(cli.budget.to_string()));
    record.insert("seed".into(), json!(cli.seed));
    record.insert("hparams_file".into(), json!(cli.hparams.as_ref().map(|p| p.display().to_string())));
    record.insert("cache_dir".into(), json!(cache_dir.display().to_string()));
    record.insert(
        "commit".into(),
        json!(std::env::var("AUTORESEARCH_COMMIT").ok().filter(|c| !c.is_empty())),
    );
    println!(
        "harness: device {} ({source_text}), profile {}, budget {}, seed {}",
        choice.name, profile.name, cli.budget, cli.seed
    );

    // Data (5).
    let data = guarded("opening the prepared data", exit::DATA_ERROR, || PreparedData::open(&cache_dir))?
        .map_err(|e| Failure::new(exit::DATA_ERROR, format!("prepared data in {}: {e:#}", cache_dir.display())))?;

    // Training.
    let mut clock = TrainingClock::new(cli.budget, profile.warmup_steps);
    let trained: TrainedModel = {
        let ctx = TrainContext {
            device: device.clone(),
            data: &data,
            profile: &profile,
            clock: &mut clock,
            seed: cli.seed,
            hparams_override,
        };
        guarded("training", exit::OTHER_FAILURE, || {
            device.seed(cli.seed);
            trainer::train(ctx)
        })?
        .map_err(|e| classify_train_error(&e))?
    };
    let training_seconds = clock.training_seconds();
    let mut mem = MemoryTracker::default();
    mem.sample(&device);
    record.insert("training_seconds".into(), json!(training_seconds));
    record.insert("num_steps".into(), json!(clock.steps()));
    record.insert("total_tokens".into(), json!(clock.tokens()));
    record.insert("warmup_steps".into(), json!(clock.warmup_steps()));
    record.insert("num_params".into(), json!(trained.num_params));
    record.insert("flops_per_token".into(), json!(trained.flops_per_token));
    record.insert("depth".into(), json!(trained.depth));
    println!(
        "harness: trained {} steps, {} tokens, {:.1} s counted; probing causality",
        clock.steps(),
        clock.tokens(),
        training_seconds
    );

    // Causality probe (4).
    let probe_inputs = guarded("reading the probe's validation rows", exit::DATA_ERROR, || {
        PackedLoader::validation(&data, PROBE_ROWS, profile.seq_len).and_then(|mut l| l.next_batch())
    })?
    .map_err(|e| Failure::new(exit::DATA_ERROR, format!("validation rows for the causality probe: {e:#}")))?;
    let report = guarded("the causality probe", exit::OTHER_FAILURE, || {
        check_causality(
            trained.model.as_ref(),
            &probe_inputs.inputs,
            probe_inputs.batch_size,
            probe_inputs.seq_len,
            data.vocab_size(),
            &device,
        )
    })?
    .map_err(|e| Failure::new(exit::OTHER_FAILURE, format!("causality probe: {e:#}")))?;
    record.insert("causality_probe".into(), json!(report));
    if !report.is_causal() {
        println!("{}", report.refusal());
        return Err(Failure::new(exit::CAUSALITY_VIOLATION, report.refusal()));
    }
    mem.sample(&device);

    // val_bpb.
    println!("harness: causal (max |diff| {:.2e}); evaluating val_bpb", report.max_abs_diff);
    let sums = guarded("evaluation", exit::OTHER_FAILURE, || {
        prepare::eval::evaluate_bpb(trained.model.as_ref(), &data, &profile, &device)
    })?
    .map_err(|e| {
        let text = format!("evaluation failed: {e:#}");
        let code = if exit::looks_like_out_of_memory(&text) { exit::OUT_OF_MEMORY } else { exit::OTHER_FAILURE };
        Failure::new(code, text)
    })?;
    mem.sample(&device);
    let val_bpb = sums.bpb();
    if !val_bpb.is_finite() {
        return Err(Failure::new(exit::OTHER_FAILURE, format!("val_bpb is not finite ({val_bpb})")));
    }

    // Summary.
    let peak_mem = mem.peak();
    let peak = choose_peak(profile.peak_flops, choice.class, this_cpu_peak);
    let counted = counted_tokens(clock.tokens(), clock.steps(), clock.warmup_steps());
    let mfu = mfu_percent(trained.flops_per_token, counted, training_seconds, peak.flops);
    let tokens_per_sec = if training_seconds > 0.0 { counted / training_seconds } else { 0.0 };
    let summary = Summary {
        val_bpb,
        training_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        peak_vram_mb: peak_mem.mb,
        mfu_percent: mfu,
        total_tokens_m: clock.tokens() as f64 / 1e6,
        num_steps: clock.steps(),
        num_params_m: trained.num_params as f64 / 1e6,
        depth: trained.depth,
    };
    if let Value::Object(fields) = json!(summary) {
        record.extend(fields);
    }
    record.insert("memory_source".into(), json!(peak_mem.source));
    record.insert("peak_flops".into(), json!(peak.flops));
    record.insert("peak_flops_source".into(), json!(peak.source));
    record.insert("cpu_peak".into(), json!(peak.cpu));
    record.insert("counted_tokens".into(), json!(counted));
    record.insert("tokens_per_sec".into(), json!(tokens_per_sec));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_errors_map_to_exit_codes() {
        let d = TrainError::Diverged { step: 3, loss: f64::NAN };
        assert_eq!(classify_train_error(&d).code, exit::DIVERGED);
        assert_eq!(classify_train_error(&TrainError::OutOfMemory("x".into())).code, exit::OUT_OF_MEMORY);
        let other = TrainError::Other(anyhow::anyhow!("wgpu: Out of memory allocating buffer"));
        assert_eq!(classify_train_error(&other).code, exit::OUT_OF_MEMORY);
        let other = TrainError::Other(anyhow::anyhow!("bad hparams"));
        assert_eq!(classify_train_error(&other).code, exit::OTHER_FAILURE);
    }

    #[test]
    fn panics_are_caught_and_classified() {
        let f = guarded("training", exit::OTHER_FAILURE, || -> u32 { panic!("CUDA out of memory. Tried to allocate 2 GiB") }).unwrap_err();
        assert_eq!(f.code, exit::OUT_OF_MEMORY);
        let f = guarded("training", exit::OTHER_FAILURE, || -> u32 { panic!("index {} out of range", 7) }).unwrap_err();
        assert_eq!(f.code, exit::OTHER_FAILURE);
        assert!(f.message.contains("index 7 out of range"), "{}", f.message);
        let f = guarded("opening data", exit::DATA_ERROR, || -> u32 { todo!() }).unwrap_err();
        assert_eq!(f.code, exit::DATA_ERROR);
        assert_eq!(guarded("x", 6, || 5).unwrap(), 5);
    }

    fn cli(args: &[&str]) -> Cli {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("harness").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn usage_and_data_errors_exit_2_and_5_and_write_a_failure_record() {
        let dir = std::env::temp_dir().join(format!("harness-run-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("s.json");
        let json_s = json.to_str().unwrap();

        let code = run(&cli(&["--device", "tpu", "--summary-json", json_s]), Instant::now());
        assert_eq!(code, exit::USAGE);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!((v["status"].as_str(), v["exit_code"].as_i64()), (Some("usage"), Some(2)));
        assert!(v["error"].as_str().unwrap().contains("tpu"));

        let code = run(&cli(&["--profile", "/no/such/profile.toml"]), Instant::now());
        assert_eq!(code, exit::USAGE);
        let code = run(&cli(&["--device-batch-scale", "2"]), Instant::now());
        assert_eq!(code, exit::USAGE);

        let empty = dir.join("empty-cache");
        std::fs::create_dir_all(&empty).unwrap();
        let code = run(
            &cli(&["--device", "flex", "--cache-dir", empty.to_str().unwrap(), "--summary-json", json_s]),
            Instant::now(),
        );
        assert_eq!(code, exit::DATA_ERROR);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["status"], "data");
        assert_eq!(v["device"], "flex");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
