//! Command line of the `harness` binary.

use std::path::PathBuf;

use clap::Parser;
use prepare::clock::Budget;

const ABOUT: &str = "Runs one autoresearch experiment: trains the model of the `trainer` crate under a \
fixed budget, checks that it is causal, scores it with val_bpb, and prints the reference summary.";

const LONG_ABOUT: &str = "\
Runs one autoresearch experiment and prints the reference's end-of-run summary.

The harness is the scorer, read-only to the agents that edit the trainer, and it treats the \
trainer as untrusted: the trainer is another program (the `trainer` binary of the trainer crate), \
started in a kernel sandbox, that asks the harness for its training data and saves its model; \
fresh trainer processes load it and answer the evaluation with logits, one position at a time. \
Only the harness reads the data, keeps the clock, computes val_bpb and writes the summary.

Flow:
  1. load the platform profile (--profile, else the reference defaults) and the prepared data
     (--cache-dir; run `prepare` first);
  2. start the trainer (--trainer) in its sandbox (Linux: landlock + seccomp; it can read its
     binary, the system libraries and its devices, write only its scratch folder, and reach no
     network, no signal target and no data file); its clock starts at that moment;
  3. training: the trainer asks for each optimizer step's rows, cut from the train shards by
     the reference packing loader; the harness counts the tokens and the time (the profile's
     warm-up steps are not counted, for at most warmup_allowance_seconds) and says Stop when the
     budget is spent; finishing later than the budget plus the allowance is `over budget`;
  4. evaluation: the training process saves its model and is killed; the pinned validation
     rows are evaluated in groups (the profile's eval_batch_size), each by a fresh trainer
     process that loads the saved model: the harness sends one position of every row, copies
     the logits of the next position out of shared memory and scores them, and only then sends
     that position (no target reaches a trainer before its logits are scored); witness rows are
     evaluated again by one more process, and a model whose log-probabilities for a row change
     with the rows it is evaluated with is refused (exit 4);
  5. print a `memory_source:` line, then the `---` summary block (val_bpb, training_seconds,
     total_seconds, peak_vram_mb, mfu_percent, total_tokens_M, num_steps, num_params_M, depth),
     and write --summary-json if asked.

The trainer's output is logged with a `[trainer] ` prefix, and not at all once a process has \
seen a validation token.

MFU = flops_per_token * counted_tokens / training_seconds / peak_flops * 100, with peak_flops from \
the profile, or on a CPU device cores * SIMD f32 lanes * FMA units * 2 * clock (from \
/proc/cpuinfo), or unknown (MFU 0) on a GPU without a profile peak. flops_per_token is the \
trainer's own figure.

peak_vram_mb: the device memory pool the trainer reports where the backend has one (wgpu), else \
the peak resident set of the trainer process, measured by the harness.";

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

    /// The trainer executable. [default: `trainer` next to this harness binary]
    #[arg(long, value_name = "FILE")]
    pub trainer: Option<PathBuf>,

    /// Refuse to run the trainer without a kernel sandbox (the default on Linux).
    #[arg(long, overrides_with = "no_require_sandbox")]
    pub require_sandbox: bool,

    /// Run the trainer unconfined where no sandbox is available (macOS, Windows, Linux without
    /// landlock); the log and the JSON say `sandbox: none`.
    #[arg(long, overrides_with = "require_sandbox")]
    pub no_require_sandbox: bool,

    /// A folder the trainer's sandbox must keep out of reach even if a library path contains
    /// it (the runner passes the repository and its state folder). Repeatable.
    #[arg(long, value_name = "DIR")]
    pub protect: Vec<PathBuf>,

    /// A file or folder the trainer may also read (and map), for a driver installed where the
    /// sandbox's defaults do not look; refused when it overlaps a protected folder. Repeatable.
    #[arg(long, value_name = "PATH")]
    pub allow_read: Vec<PathBuf>,

    /// Also score the held-out split after val_bpb (`heldout_bpb` in the JSON): the documents
    /// of the validation shard that the evaluation does not reach, packed the same way, as many
    /// as the evaluation's size. The runner asks for it on the baseline and on kept nodes only.
    #[arg(long)]
    pub held_out: bool,

    /// Sign the summary JSON with the key in FILE (HMAC-SHA256, field `signature`), so that the
    /// runner can tell it from a forged one when it comes back by hand (`tree record`).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,

    /// Write one CSV line per training step: step, tokens, loss, lr multiplier, tokens/s,
    /// elapsed seconds (loss and lr multiplier as the trainer reports them).
    #[arg(long, value_name = "FILE")]
    pub steps_csv: Option<PathBuf>,

    /// Print the devices this build can run on as JSON (wgpu adapters through Burn, CUDA and
    /// MPS through libtorch) and exit; `autoresearch detect` reads it.
    #[arg(long)]
    pub list_devices: bool,
}

impl Cli {
    /// Whether a missing sandbox is an error: yes on Linux unless --no-require-sandbox, no
    /// elsewhere unless --require-sandbox.
    pub fn require_sandbox(&self) -> bool {
        if self.no_require_sandbox {
            false
        } else {
            self.require_sandbox || cfg!(target_os = "linux")
        }
    }
}

fn after_help() -> String {
    format!(
        "{}\n{}\nEnvironment:\n  AUTORESEARCH_CACHE   default --cache-dir\n  BURN_DEVICE          default --device when --device is not given\n  AUTORESEARCH_COMMIT  commit recorded in --summary-json\n  (the trainer gets none of these: only device and thread settings, such as CUDA_*, VK_*,\n  RAYON_NUM_THREADS and LD_LIBRARY_PATH, pass through)\n",
        crate::exit::help_text(),
        experiment::device::help_text()
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
        assert_eq!(cli.require_sandbox(), cfg!(target_os = "linux"));
        assert!(!Cli::try_parse_from(["harness", "--no-require-sandbox"]).unwrap().require_sandbox());
        assert!(Cli::try_parse_from(["harness", "--no-require-sandbox", "--require-sandbox"]).unwrap().require_sandbox());
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
        for needle in ["Exit codes", "  3  out of memory", "cuda[:N]", "wgpu-cpu", "failed evaluation check", "MFU", "sandbox", "--no-require-sandbox"] {
            assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
        }
    }
}
