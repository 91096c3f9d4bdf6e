//! Evaluation throughput of the trainer's model: the lock-step decoder the harness drives (one
//! position of every row of a group at a time, through the KV cache) beside a teacher-forced
//! pass over the same rows (what evaluation cost before it was sealed by its order), on random
//! tokens, outside the harness. With `--check` it also compares the two's logits.
//!
//! ```sh
//! target/release/bench_eval --rows 256 --seq 256 --devices flex     # the cpu profile's shape
//! ```

use std::time::Instant;

use anyhow::{Context, Result};
use burn::prelude::*;
use clap::Parser;
use experiment::device::{build_device, parse_device};
use experiment::LogitsModel;
use trainer::hparams::Hparams;
use trainer::model::GptConfig;

#[derive(Debug, Parser)]
#[command(about = "Lock-step evaluation (the KV-cache decoder) beside a teacher-forced pass, per backend")]
struct Args {
    /// The trainer's hyperparameter table (`cpu` or `gpu`) the model is built from.
    #[arg(long, default_value = "cpu")]
    class: String,
    #[arg(long, default_value_t = 8192)]
    vocab: usize,
    /// Rows of a group (the profile's eval_batch_size).
    #[arg(long, default_value_t = 256)]
    rows: usize,
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Rows per teacher-forced forward pass.
    #[arg(long, default_value_t = 16)]
    forward_rows: usize,
    /// Comma-separated devices (harness names).
    #[arg(long, default_value = "flex")]
    devices: String,
    /// Compare the decoder's logits with the teacher-forced ones (largest |difference|).
    #[arg(long)]
    check: bool,
    /// Only the decoder (for profiling it).
    #[arg(long)]
    decode_only: bool,
    /// Print each position's time.
    #[arg(long)]
    trace: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let hp = Hparams::load(&args.class, None)?;
    println!("| device | rows x seq | teacher-forced | lock-step decode | decode / forward | per position |");
    println!("|---|---|---|---|---|---|");
    for name in args.devices.split(',').filter(|d| !d.is_empty()) {
        let device = build_device(&parse_device(name)?).with_context(|| format!("device {name}"))?;
        device.seed(1);
        kernels::tune_allocator();
        let model = GptConfig::new(&hp, args.vocab, args.seq).init(&device);
        let ids: Vec<i64> = (0..args.rows * args.seq).map(|i| ((i as u64).wrapping_mul(2654435761) % args.vocab as u64) as i64).collect();
        let rows_tensor = |from: usize, to: usize| Tensor::<2, Int>::from_data(TensorData::new(ids[from * args.seq..to * args.seq].to_vec(), [to - from, args.seq]), &device);

        let t0 = Instant::now();
        let mut forward = Vec::new();
        for from in (0..if args.decode_only { 0 } else { args.rows }).step_by(args.forward_rows) {
            let to = (from + args.forward_rows).min(args.rows);
            let logits = model.logits(rows_tensor(from, to));
            let lse = logits.clone().exp().sum_dim(2).log();
            let _ = lse.into_data();
            if args.check {
                forward.push(logits);
            }
        }
        let teacher = t0.elapsed().as_secs_f64();

        let t0 = Instant::now();
        let mut decoder = model.decoder(args.rows);
        let mut worst = 0f32;
        for p in 0..args.seq {
            let column: Vec<i64> = (0..args.rows).map(|r| ids[r * args.seq + p]).collect();
            let t1 = Instant::now();
            let step = decoder.step(Tensor::from_data(TensorData::new(column, [args.rows]), &device));
            let values = step.clone().into_data();
            if args.trace {
                eprintln!("position {p}: {:.1} ms", t1.elapsed().as_secs_f64() * 1000.0);
            }
            if args.check {
                let want: Vec<Tensor<2>> = forward.iter().map(|l| l.clone().slice(s![.., p..p + 1, ..]).reshape([l.dims()[0], args.vocab])).collect();
                let want = Tensor::cat(want, 0);
                worst = worst.max((Tensor::<2>::from_data(values, &device) - want).abs().max().into_scalar::<f32>());
            }
        }
        let decode = t0.elapsed().as_secs_f64();
        println!(
            "| {name} | {} x {} | {teacher:.2} s | {decode:.2} s | {:.2}x | {:.1} ms |{}",
            args.rows,
            args.seq,
            decode / teacher,
            1000.0 * decode / args.seq as f64,
            if args.check { format!(" max |diff| {worst:.2e}") } else { String::new() }
        );
    }
    Ok(())
}
