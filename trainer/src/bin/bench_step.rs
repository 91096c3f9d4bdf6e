//! Training-step throughput of the trainer on every backend of this build, side by side with
//! the PyTorch reference (`../shared/bench/torch_reference.py`) in the same run.
//!
//! Each backend trains the trainer's own model with its own optimizer (MuonAdamW, or Burn's
//! AdamW with `--optim adamw` to match the PyTorch side) on random tokens, one micro-batch per
//! step, at the sizes given; the PyTorch side runs the same architecture with AdamW.
//! Steady-state tokens/s excludes the warm-up steps. Prints a Markdown table with ratios to
//! PyTorch, and one JSON line per implementation (tokens/s, step time, MFU, peak memory,
//! start-up and first-step time, the loss after the last step, and with `--phases` the mean
//! forward/backward/optimizer split). `autoresearch bench` runs it once per backend, so each
//! process's peak memory (VmHWM) is that backend's.
//!
//! It lives in the trainer package because it drives the trainer's model and optimizer
//! directly (outside the harness: no budget, no sandbox, random tokens). The runner's guard
//! keeps experiments out of `trainer/src/bin/`.
//!
//! ```sh
//! target/release/bench_step --depth 4 --width 256 --heads 4 --batch 8 --seq 256 --steps 12 \
//!     --devices flex,ndarray,wgpu-cpu --torch ../shared/bench/torch_reference.py
//! # On a GPU, at the reference size, bf16 autocast on both sides, PyTorch compiled:
//! target/release/bench_step --depth 8 --width 512 --heads 4 --batch 32 --seq 2048 --dtype bf16 \
//!     --devices cuda --torch torch_reference.py --torch-device cuda --torch-compile --peak-flops 989.5e12
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use clap::{Parser, ValueEnum};
use experiment::device::{DeviceClass, build_device, parse_device};
use experiment::flops::{choose_peak, mfu_percent, this_cpu_peak};
use experiment::memory::MemoryTracker;
use trainer::hparams::Hparams;
use trainer::model::GptConfig;
use trainer::optim::{MuonAdamW, StepSchedule};

#[derive(Debug, Parser)]
#[command(about = "Training-step tokens/s of the trainer per backend, next to PyTorch")]
struct Args {
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Model width (n_embd).
    #[arg(long, default_value_t = 256)]
    width: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 8192)]
    vocab: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 12)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Comma-separated devices (harness names: flex, ndarray, wgpu-cpu, tch-cpu, cuda...).
    #[arg(long, default_value = "flex,ndarray")]
    devices: String,
    /// The PyTorch reference script; omitted: no PyTorch column.
    #[arg(long, value_name = "FILE")]
    torch: Option<String>,
    /// Python interpreter for --torch.
    #[arg(long, default_value = "python3")]
    python: String,
    /// The trainer's MuonAdamW, or Burn's AdamW on every parameter (like the PyTorch side).
    #[arg(long, value_enum, default_value_t = Optim::Muon)]
    optim: Optim,
    /// Run the plain tensor formulation instead of the trainer's fused kernels (trainer/kernels).
    #[arg(long)]
    no_fused: bool,
    /// Time forward, backward and optimizer separately (syncs the device between them).
    #[arg(long)]
    phases: bool,
    /// What matmuls and attention run in: f32, or bf16 (autocast, on devices that have it), on
    /// both sides.
    #[arg(long, value_parser = ["f32", "bf16"], default_value = "f32")]
    dtype: String,
    /// The PyTorch side's device (cpu, cuda, cuda:N, mps).
    #[arg(long, default_value = "cpu")]
    torch_device: String,
    /// Compile the PyTorch side (`torch.compile`).
    #[arg(long)]
    torch_compile: bool,
    /// Peak FLOP/s for MFU on GPUs (e.g. 989.5e12, H100/H200 dense bf16); CPUs use their
    /// measured peak.
    #[arg(long, default_value_t = 0.0)]
    peak_flops: f64,
    /// Print the devices compiled into this build, one JSON object a line, and exit.
    #[arg(long)]
    list_devices: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Optim {
    Muon,
    Adamw,
}

#[derive(Default)]
struct Row {
    name: String,
    tokens_per_s: f64,
    step_s: f64,
    first_step_s: f64,
    /// Seconds from process start (or from the end of the PyTorch side) to the first step:
    /// loading, device, model and optimizer set-up.
    startup_s: f64,
    loss: f64,
    mfu_percent: f64,
    peak_mem_mb: f64,
    memory_source: &'static str,
    params: usize,
    /// Mean seconds per timed step in forward, backward, optimizer (with --phases).
    phases: Option<[f64; 3]>,
}

/// The benchmark's model: the trainer's, at the given sizes, every layer full causal (as the
/// PyTorch side).
fn model_config(args: &Args) -> Result<(Hparams, GptConfig)> {
    if args.width % args.heads != 0 {
        bail!("--width {} is not a multiple of --heads {}", args.width, args.heads);
    }
    let head_dim = args.width / args.heads;
    let over = format!(
        "depth = {}\naspect_ratio = {}\nhead_dim = {head_dim}\nwindow_pattern = \"L\"\ntotal_batch_tokens = {}\ndevice_batch_size = {}",
        args.depth,
        args.width / args.depth,
        args.batch * args.seq,
        args.batch
    );
    let hp = Hparams::load("cpu", Some(&over))?;
    let config = GptConfig::new(&hp, args.vocab, args.seq);
    anyhow::ensure!(config.n_embd == args.width, "width {} is not depth x a multiple of head_dim", args.width);
    Ok((hp, config))
}

fn bench_burn(args: &Args, device_name: &str, setup_start: Instant) -> Result<Row> {
    let (hp, mut config) = model_config(args)?;
    let choice = parse_device(device_name)?;
    let inner = build_device(&choice)?;
    let device = inner.clone().autodiff();
    device.seed(42);
    kernels::set_enabled(!args.no_fused);
    kernels::tune_allocator();
    config.matmul_dtype = trainer::matmul_dtype(&args.dtype, &device);
    let mut model = config.init(&device);
    let params = model.num_params();
    let mut muon = MuonAdamW::new(&model, &hp)?;
    let mut adamw = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut random_rows = || -> (Tensor<2, Int>, Tensor<2, Int>) {
        let t = args.seq + 1;
        let ids: Vec<i64> = (0..args.batch * t)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % args.vocab as u64) as i64
            })
            .collect();
        let rows = Tensor::<2, Int>::from_data(TensorData::new(ids, [args.batch, t]), &device);
        (rows.clone().narrow(1, 0, args.seq), rows.narrow(1, 1, args.seq))
    };
    let schedule = StepSchedule { lr_multiplier: 1.0, muon_momentum: hp.muon_momentum(0), muon_weight_decay: hp.muon_weight_decay(0.0) };
    let sync = |d: &Device| d.sync().map_err(|e| anyhow::anyhow!("device sync failed: {e:?}"));
    let startup_s = setup_start.elapsed().as_secs_f64();
    let mut memory = MemoryTracker::default();
    let (mut t0, mut first_step_s, mut loss) = (Instant::now(), 0.0, f64::NAN);
    let mut phase_totals = [Duration::ZERO; 3];
    for s in 0..args.warmup + args.steps {
        if s == args.warmup {
            t0 = Instant::now();
            phase_totals = [Duration::ZERO; 3];
        }
        let started = Instant::now();
        let (x, y) = random_rows();
        let l = model.loss(x, y);
        if args.phases {
            sync(&device)?;
        }
        let forward_done = Instant::now();
        let grads = GradientsParams::from_grads(l.clone().backward(), &model);
        if args.phases {
            sync(&device)?;
        }
        let backward_done = Instant::now();
        model = match args.optim {
            Optim::Muon => muon.step(model, grads, schedule),
            Optim::Adamw => adamw.step(1e-3, model, grads),
        };
        loss = l.into_scalar::<f32>() as f64;
        sync(&device)?;
        memory.sample(&device);
        let done = Instant::now();
        phase_totals[0] += forward_done - started;
        phase_totals[1] += backward_done - forward_done;
        phase_totals[2] += done - backward_done;
        if s == 0 {
            first_step_s = started.elapsed().as_secs_f64();
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    let tokens = (args.steps * args.batch * args.seq) as f64;
    let peak = choose_peak(args.peak_flops, choice.class, this_cpu_peak);
    let mem = memory.peak();
    let optim = match args.optim {
        Optim::Muon => "",
        Optim::Adamw => " adamw",
    };
    Ok(Row {
        name: format!("burn-{device_name} {:?}{optim}{}", config.matmul_dtype, if args.no_fused { " unfused" } else { "" }),
        tokens_per_s: tokens / dt,
        step_s: dt / args.steps as f64,
        first_step_s,
        startup_s,
        loss,
        mfu_percent: if choice.class == DeviceClass::Cpu || peak.flops > 0.0 {
            mfu_percent(config.flops_per_token(), tokens, dt, peak.flops)
        } else {
            f64::NAN
        },
        peak_mem_mb: mem.mb,
        memory_source: mem.source,
        params,
        phases: args.phases.then(|| phase_totals.map(|d| d.as_secs_f64() / args.steps as f64)),
    })
}

fn bench_torch(args: &Args, script: &str) -> Result<Row> {
    let mut cmd = Command::new(&args.python);
    cmd.arg(script).args(["--device", &args.torch_device, "--dtype", &args.dtype]);
    if args.torch_compile {
        cmd.arg("--compile");
    }
    let out = cmd
        .args(["--depth", &args.depth.to_string(), "--width", &args.width.to_string()])
        .args(["--heads", &args.heads.to_string(), "--vocab", &args.vocab.to_string()])
        .args(["--batch", &args.batch.to_string(), "--seq", &args.seq.to_string()])
        .args(["--steps", &args.steps.to_string(), "--warmup", &args.warmup.to_string()])
        .output()
        .with_context(|| format!("cannot run {} {script}", args.python))?;
    if !out.status.success() {
        bail!("{script} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap_or_default())
        .with_context(|| format!("{script} printed no JSON line: {line}"))?;
    let tokens_per_s = v["tokens_per_s"].as_f64().unwrap_or(0.0);
    // The same FLOPs per token as the Burn side (the same architecture and sizes).
    let (_, config) = model_config(args)?;
    let peak = if args.torch_device == "cpu" { choose_peak(0.0, DeviceClass::Cpu, this_cpu_peak).flops } else { args.peak_flops };
    Ok(Row {
        name: format!("torch {} {}{} {}", v["torch"].as_str().unwrap_or("?"), args.torch_device, if args.torch_compile { " compiled" } else { "" }, args.dtype),
        tokens_per_s,
        step_s: v["step_s"].as_f64().unwrap_or(0.0),
        first_step_s: f64::NAN,
        startup_s: f64::NAN,
        loss: v["loss"].as_f64().unwrap_or(f64::NAN),
        mfu_percent: if peak > 0.0 { mfu_percent(config.flops_per_token(), tokens_per_s, 1.0, peak) } else { f64::NAN },
        peak_mem_mb: v["peak_mem_mb"].as_f64().unwrap_or(f64::NAN),
        memory_source: if v["peak_mem_mb"].is_number() { "torch.cuda.max_memory_allocated" } else { "unavailable" },
        params: v["params"].as_u64().unwrap_or(0) as usize,
        phases: None,
    })
}

fn main() -> Result<()> {
    let process_start = Instant::now();
    let args = Args::parse();
    if args.list_devices {
        for d in experiment::device::ALL_DEVICES.iter().filter(|d| experiment::device::feature_enabled(d.feature)) {
            println!("{}", serde_json::json!({"name": d.name, "class": d.class, "description": d.description}));
        }
        return Ok(());
    }
    let mut setup_start = process_start;
    let mut rows = Vec::new();
    // PyTorch first and last would be fairer on a drifting machine; first is enough for ratios
    // measured minutes apart on a quiet one. The table says when it ran.
    if let Some(script) = &args.torch {
        match bench_torch(&args, script) {
            Ok(row) => rows.push(row),
            Err(e) => eprintln!("bench_step: PyTorch side skipped: {e:#}"),
        }
        setup_start = Instant::now();
    }
    for name in args.devices.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match bench_burn(&args, name, setup_start) {
            Ok(row) => rows.push(row),
            Err(e) => eprintln!("bench_step: {name}: {e:#}"),
        }
        setup_start = Instant::now();
    }
    let torch = rows.iter().find(|r| r.name.starts_with("torch")).map(|r| r.tokens_per_s);
    println!(
        "\nd{} x {} layers, {} heads, V {}, B {} x T {}, {} timed steps after {} warm-up\n",
        args.width, args.depth, args.heads, args.vocab, args.batch, args.seq, args.steps, args.warmup
    );
    println!("| implementation | tokens/s | step (s) | first step (s) | start-up (s) | MFU % | peak MB | loss after | vs PyTorch |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let ratio = torch.map(|t| format!("{:.2}x", r.tokens_per_s / t)).unwrap_or_else(|| "-".into());
        println!(
            "| {} | {:.0} | {:.3} | {:.2} | {:.2} | {:.1} | {:.0} | {:.4} | {ratio} |",
            r.name, r.tokens_per_s, r.step_s, r.first_step_s, r.startup_s, r.mfu_percent, r.peak_mem_mb, r.loss
        );
    }
    for r in rows.iter().filter(|r| r.phases.is_some()) {
        let [f, b, o] = r.phases.unwrap_or_default();
        println!("{}: forward {f:.3} s, backward {b:.3} s, optimizer {o:.3} s per step", r.name);
    }
    for r in &rows {
        println!(
            "{}",
            serde_json::json!({
                "impl": r.name, "tokens_per_s": r.tokens_per_s, "step_s": r.step_s,
                "first_step_s": finite(r.first_step_s), "startup_s": finite(r.startup_s), "loss": finite(r.loss),
                "mfu_percent": finite(r.mfu_percent), "peak_mem_mb": finite(r.peak_mem_mb),
                "memory_source": r.memory_source, "params": r.params,
                "forward_s": r.phases.map(|p| p[0]), "backward_s": r.phases.map(|p| p[1]), "optimizer_s": r.phases.map(|p| p[2]),
            })
        );
    }
    Ok(())
}

/// `None` (JSON null) for NaN or infinite figures.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}
