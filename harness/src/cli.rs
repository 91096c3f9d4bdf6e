//! Command line of the `harness` binary.

use std::path::PathBuf;

use clap::Parser;
use prepare::clock::Budget;

const ABOUT: &str = "Runs one autoresearch experiment: trains the model of the `trainer` crate under a \
fixed budget, checks that it is causal, scores it with val_bpb, and prints the reference summary.";

const LONG_ABOUT: &str = "\
Runs one autoresearch experiment and prints the reference's end-of-run summary.

The harness is read-only to the agents that edit the trainer: it owns the clock, the data, the \
causality check and the metric, so a trainer can change how well it learns but not how it is \
measured.

Flow:
  1. load the platform profile (--profile, else the reference defaults) and the prepared data
     (--cache-dir; run `prepare` first);
  2. call trainer::train with the device, the data, the profile, the clock, the seed and the
     optional hyperparameter overrides; the clock stops training once the budget is spent
     (warm-up steps excluded from the time);
  3. causality probe: on a sample of validation rows, change every token at positions >= T/2
     and refuse the model (exit 4) if its logits at positions < T/2 move;
  4. val_bpb = prepare::eval::evaluate_bpb on the pinned validation shard;
  5. print a `memory_source:` line, then the `---` summary block (val_bpb, training_seconds,
     total_seconds, peak_vram_mb, mfu_percent, total_tokens_M, num_steps, num_params_M, depth),
     and write --summary-json if asked.

MFU = flops_per_token * counted_tokens / training_seconds / peak_flops * 100, with peak_flops from \
the profile, or on a CPU device cores * SIMD f32 lanes * FMA units * 2 * clock (from \
/proc/cpuinfo), or unknown (MFU 0) on a GPU without a profile peak.

peak_vram_mb: the device memory pool where the backend has one (wgpu), else the peak resident \
set of the process (VmHWM; flex, ndarray, LibTorch).";

/// Command-line arguments.
#[derive(Debug, Clone, Parser)]
#[command(name = "harness", version, about = ABOUT, long_about = LONG_ABOUT, after_help = after_help())]
pub struct Cli {
    /// Prepared data (tokenizer and token files) written by `prepare`.
    /// [default: $AUTORESEARCH_CACHE, else ~/.cache/autoresearch]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Platform profile TOML (e.g. configs/platforms/cpu.toml): sequence length, evaluation size,
    /// batch scale, warm-up steps, peak FLOP/s. [default: the reference's H100 values]
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,

    /// Training budget: SECONDS or time:SECONDS (counted time, warm-up excluded), tokens:N,
    /// or flops:N (training FLOPs). Numbers take exponents: tokens:5e6.
    #[arg(long, value_name = "SPEC", default_value = "300", value_parser = Budget::parse)]
    pub budget: Budget,

    /// Execution device (see the list below). [default: $BURN_DEVICE, else the profile's
    /// backend when compiled in, else flex]. An explicit --device always beats BURN_DEVICE.
    #[arg(long, value_name = "NAME")]
    pub device: Option<String>,

    /// Seed for initialisation and data order.
    #[arg(long, value_name = "N", default_value_t = 42)]
    pub seed: u64,

    /// Also write the summary and run details as JSON to FILE (temporary file, then rename).
    /// A failed run writes {"status": ..., "exit_code": ..., "error": ...} there too.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,

    /// TOML file whose text is handed to the trainer as hyperparameter overrides.
    #[arg(long, value_name = "FILE")]
    pub hparams: Option<PathBuf>,

    /// Overrides the profile's device_batch_scale, in (0, 1]: the trainer scales its device
    /// batch by it and raises gradient accumulation to keep the total batch. The runner halves
    /// it after an out-of-memory exit (3).
    #[arg(long, value_name = "X")]
    pub device_batch_scale: Option<f64>,

    /// Print the devices this build can run on as JSON (wgpu adapters through Burn, CUDA and
    /// MPS through libtorch) and exit; `autoresearch detect` reads it.
    #[arg(long)]
    pub list_devices: bool,
}

fn after_help() -> String {
    format!(
        "{}\n{}\nEnvironment:\n  AUTORESEARCH_CACHE   default --cache-dir\n  BURN_DEVICE          default --device when --device is not given\n  AUTORESEARCH_COMMIT  commit recorded in --summary-json\n",
        crate::exit::help_text(),
        crate::device::help_text()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_has_defaults() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["harness"]).unwrap();
        assert_eq!(cli.budget, Budget::Time(300.0));
        assert_eq!(cli.seed, 42);
        assert!(cli.device.is_none());
        let cli = Cli::try_parse_from(["harness", "--budget", "tokens:5e6", "--device", "ndarray", "--device-batch-scale", "0.5"]).unwrap();
        assert_eq!(cli.budget, Budget::Tokens(5_000_000));
        assert_eq!(cli.device_batch_scale, Some(0.5));
    }

    #[test]
    fn bad_budget_is_a_usage_error() {
        let err = Cli::try_parse_from(["harness", "--budget", "bytes:3"]).unwrap_err();
        assert_eq!(err.exit_code(), crate::exit::USAGE);
        assert!(err.to_string().contains("bytes"), "{err}");
    }

    #[test]
    fn help_teaches_exit_codes_and_devices() {
        let help = Cli::command().render_long_help().to_string();
        for needle in ["Exit codes", "  3  out of memory", "cuda[:N]", "wgpu-cpu", "causality", "MFU"] {
            assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
        }
    }
}
