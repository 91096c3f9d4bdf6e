//! Training-step throughput of the trainer on every backend of this build, side by side with
//! the PyTorch reference (`../shared/bench/torch_reference.py`) in the same run.
//!
//! Each backend trains the trainer's own model with its own optimizer (MuonAdamW) on random
//! tokens, one micro-batch per step, at the sizes given; the PyTorch side runs the same
//! architecture with AdamW. Steady-state tokens/s excludes the warm-up steps. Prints a
//! Markdown table with ratios to PyTorch, and one JSON line per implementation.
//!
//! ```sh
//! target/release/bench_step --depth 4 --width 256 --heads 4 --batch 8 --seq 256 --steps 12 \
//!     --devices flex,ndarray,wgpu-cpu --torch ../shared/bench/torch_reference.py
//! ```

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::optim::GradientsAccumulator;
use burn::prelude::*;
use clap::Parser;
use harness::device::{build_device, parse_device};
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
}

struct Row {
    name: String,
    tokens_per_s: f64,
    step_s: f64,
    first_step_s: f64,
    loss: f64,
}

fn bench_burn(args: &Args, device_name: &str) -> Result<Row> {
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
    let device = build_device(&parse_device(device_name)?)?.autodiff();
    device.seed(42);
    let config = GptConfig::new(&hp, args.vocab, args.seq);
    anyhow::ensure!(config.n_embd == args.width, "width {} is not depth x a multiple of head_dim", args.width);
    let mut model = config.init(&device);
    let mut optim = MuonAdamW::new(&model, &hp);
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
    let (mut t0, mut first_step_s, mut loss) = (Instant::now(), 0.0, f64::NAN);
    for s in 0..args.warmup + args.steps {
        if s == args.warmup {
            t0 = Instant::now();
        }
        let started = Instant::now();
        let (x, y) = random_rows();
        let mut grads = GradientsAccumulator::new();
        let l = trainer::micro_step(&model, x, y, 1, &mut grads);
        model = optim.step(model, grads.grads(), schedule);
        loss = l.into_scalar::<f32>() as f64;
        device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if s == 0 {
            first_step_s = started.elapsed().as_secs_f64();
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    Ok(Row {
        name: format!("burn-{device_name}"),
        tokens_per_s: (args.steps * args.batch * args.seq) as f64 / dt,
        step_s: dt / args.steps as f64,
        first_step_s,
        loss,
    })
}

fn bench_torch(args: &Args, script: &str) -> Result<Row> {
    let out = Command::new(&args.python)
        .arg(script)
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
    Ok(Row {
        name: format!("torch {}", v["torch"].as_str().unwrap_or("?")),
        tokens_per_s: v["tokens_per_s"].as_f64().unwrap_or(0.0),
        step_s: v["step_s"].as_f64().unwrap_or(0.0),
        first_step_s: f64::NAN,
        loss: f64::NAN,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    // PyTorch first and last would be fairer on a drifting machine; first is enough for ratios
    // measured minutes apart on a quiet one. The table says when it ran.
    if let Some(script) = &args.torch {
        match bench_torch(&args, script) {
            Ok(row) => rows.push(row),
            Err(e) => eprintln!("bench_step: PyTorch side skipped: {e:#}"),
        }
    }
    for name in args.devices.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match bench_burn(&args, name) {
            Ok(row) => rows.push(row),
            Err(e) => eprintln!("bench_step: {name}: {e:#}"),
        }
    }
    let torch = rows.iter().find(|r| r.name.starts_with("torch")).map(|r| r.tokens_per_s);
    println!(
        "\nd{} x {} layers, {} heads, V {}, B {} x T {}, {} timed steps after {} warm-up\n",
        args.width, args.depth, args.heads, args.vocab, args.batch, args.seq, args.steps, args.warmup
    );
    println!("| implementation | tokens/s | step (s) | first step (s) | loss after | vs PyTorch |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        let ratio = torch.map(|t| format!("{:.2}x", r.tokens_per_s / t)).unwrap_or_else(|| "-".into());
        println!("| {} | {:.0} | {:.3} | {:.2} | {:.3} | {ratio} |", r.name, r.tokens_per_s, r.step_s, r.first_step_s, r.loss);
    }
    for r in &rows {
        println!(
            "{}",
            serde_json::json!({"impl": r.name, "tokens_per_s": r.tokens_per_s, "step_s": r.step_s, "first_step_s": r.first_step_s, "loss": r.loss})
        );
    }
    Ok(())
}
