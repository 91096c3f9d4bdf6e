//! Smoke training on every backend compiled into this build: the real harness binary, a tiny
//! model on a tiny prepared cache, and a loss that must fall.
//!
//! flex and ndarray always run. wgpu runs on a software Vulkan adapter (Mesa's lavapipe,
//! Debian `mesa-vulkan-drivers`) when the build has the `wgpu` feature; CI installs Mesa, so
//! there a missing adapter is a failure, not a skip. tch runs on libtorch's CPU in builds with
//! the `tch` feature (`.ci/run` makes one).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const PROFILE: &str = "\
name = \"tiny\"
class = \"cpu\"
seq_len = 64
eval_tokens = 4096
eval_batch_size = 32
eval_witness_rows = 4
eval_position_seconds = 0.25
warmup_steps = 1
dtype = \"f32\"
fusion = false
autotune = false
";

/// Two layers of width 64 (two heads of 32), one 512-token micro-batch per step.
const HPARAMS: &str = "\
depth = 2
aspect_ratio = 32
head_dim = 32
window_pattern = \"SL\"
total_batch_tokens = 512
device_batch_size = 8
";

/// One prepared cache, profile and hparams file shared by every test of this binary.
fn fixture() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static FIXTURE: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        prepare::fixtures::prepare_tiny_cache(dir.path()).unwrap();
        let profile = dir.path().join("tiny.toml");
        let hparams = dir.path().join("hparams.toml");
        std::fs::write(&profile, PROFILE).unwrap();
        std::fs::write(&hparams, HPARAMS).unwrap();
        (dir, profile, hparams)
    })
}

/// Every `loss: X` of the trainer's progress lines, in order.
fn losses(stdout: &str) -> Vec<f64> {
    stdout
        .split(['\r', '\n'])
        .filter_map(|line| line.split("| loss: ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// The workspace's trainer, next to the harness. `cargo test --workspace` builds it because the
/// trainer package has an integration test (`trainer/tests/executable.rs`).
fn trainer() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_harness")).with_file_name(format!("trainer{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "{} is missing: run the tests with `--workspace`, which builds it", path.display());
    path
}

/// The harness binary on the tiny cache, 20480 tokens (40 steps of 512) on `device`.
fn harness(cache: &Path, profile: &Path, hparams: &Path, device: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.arg("--trainer").arg(trainer());
    cmd.arg("--cache-dir").arg(cache).arg("--profile").arg(profile).arg("--hparams").arg(hparams);
    cmd.args(["--budget", "tokens:20480", "--device", device]).env_remove("BURN_DEVICE");
    cmd
}

struct Smoke {
    first_loss: f64,
    last_loss: f64,
    summary: serde_json::Value,
}

fn smoke(device: &str) -> Smoke {
    let (dir, profile, hparams) = fixture();
    let json = dir.path().join(format!("summary-{device}.json"));
    let out = harness(dir.path(), profile, hparams, device).arg("--summary-json").arg(&json).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "harness on {device} failed: {:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("\n---\nval_bpb:"), "no summary block on {device}:\n{stdout}");
    let losses = losses(&stdout);
    assert!(losses.len() >= 30, "expected a progress line per step on {device}, got {losses:?}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    Smoke { first_loss: losses[0], last_loss: *losses.last().unwrap(), summary }
}

fn assert_learns(device: &str) {
    let s = smoke(device);
    let vocab_ln = (prepare::fixtures::TINY_VOCAB as f64).ln();
    assert!((s.first_loss - vocab_ln).abs() < 1.0, "{device}: first loss {} should be near ln V = {vocab_ln}", s.first_loss);
    assert!(s.last_loss < s.first_loss - 1.0, "{device}: loss did not fall: {} -> {}", s.first_loss, s.last_loss);
    let bpb = s.summary["val_bpb"].as_f64().unwrap();
    assert!(bpb.is_finite() && bpb > 0.0, "{device}: val_bpb {bpb}");
    assert_eq!(s.summary["num_steps"].as_u64(), Some(40), "{device}: 20480 tokens at 512 per step");
    // Evaluated one position at a time, in 2 groups of 32 rows, each by a fresh process that
    // loaded the saved model; 4 witness rows gave the same log-probabilities apart.
    let eval = &s.summary["eval"];
    assert_eq!((eval["rows"].as_u64(), eval["groups"].as_u64()), (Some(64), Some(2)), "{device}: {eval}");
    assert_eq!(eval["witnesses"]["rows"], 4, "{device}: {eval}");
    assert!(eval["witnesses"]["first_failure"].is_null(), "{device}: {eval}");
    assert!(s.summary["saved_model_bytes"].as_u64().unwrap() > 100_000, "{device}: {}", s.summary);
    eprintln!("{device}: loss {:.3} -> {:.3}, val_bpb {bpb:.4}", s.first_loss, s.last_loss);
}

#[cfg(feature = "flex")]
#[test]
fn flex_smoke_training_loss_falls() {
    assert_learns("flex");
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_smoke_training_loss_falls() {
    assert_learns("ndarray");
}

/// Whether a Vulkan driver is installed (lavapipe's ICD is enough).
#[cfg(feature = "wgpu")]
fn vulkan_icd_present() -> bool {
    ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .filter_map(|d| std::fs::read_dir(Path::new(d)).ok())
        .flatten()
        .any(|e| e.map(|e| e.path().extension().is_some_and(|x| x == "json")).unwrap_or(false))
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_software_adapter_smoke_training_loss_falls() {
    if !vulkan_icd_present() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install mesa-vulkan-drivers so that wgpu has a software adapter"
        );
        eprintln!("no Vulkan driver: install mesa-vulkan-drivers to run the wgpu smoke test");
        return;
    }
    assert_learns("wgpu-cpu");
}

/// libtorch on the CPU (build with `--features harness/tch`, `LIBTORCH_USE_PYTORCH=1` and pip
/// `torch==2.9.0`; `.ci/run` does).
#[cfg(feature = "tch")]
#[test]
fn tch_cpu_smoke_training_loss_falls() {
    assert_learns("tch-cpu");
}

/// A diverging run prints `FAIL` on a line of its own and exits 1, as the reference, and
/// writes no summary block.
#[test]
fn diverging_training_prints_fail_and_exits_1() {
    let (dir, profile, _) = fixture();
    let hparams = dir.path().join("diverge.toml");
    std::fs::write(&hparams, format!("{HPARAMS}matrix_lr = 1e9\nembedding_lr = 1e9\nunembedding_lr = 1e9\n")).unwrap();
    let out = harness(dir.path(), profile, &hparams, "flex").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "expected exit 1:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().any(|l| l == "FAIL"), "no FAIL line:\n{stdout}");
    assert!(!stdout.contains("val_bpb:"), "a failed run must not print a summary:\n{stdout}");
}

#[test]
fn summary_json_of_a_smoke_run_matches_the_printed_block() {
    let s = smoke("flex");
    for key in ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent", "total_tokens_M", "num_steps", "num_params_M", "depth"] {
        assert!(s.summary.get(key).is_some(), "summary JSON lacks {key}: {}", s.summary);
    }
    assert_eq!(s.summary["depth"].as_u64(), Some(2));
}

/// `--list-devices` answers from the backends of this build (what `autoresearch detect` reads).
#[test]
fn list_devices_reports_this_builds_backends() {
    let out = Command::new(env!("CARGO_BIN_EXE_harness")).arg("--list-devices").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let compiled: Vec<&str> = v["compiled"].as_array().unwrap().iter().filter_map(|d| d.as_str()).collect();
    assert_eq!(compiled.contains(&"flex"), cfg!(feature = "flex"), "{v}");
    assert_eq!(compiled.contains(&"cuda"), cfg!(feature = "tch"), "{v}");
    // A tch build asks libtorch; libtorch's CPU build from pip sees no CUDA device here.
    assert_eq!(v["libtorch"].is_object(), cfg!(feature = "tch"), "{v}");
    if cfg!(feature = "tch") {
        assert!(v["libtorch"]["cuda_devices"].is_u64(), "{v}");
    }
}

/// `--device cuda` where libtorch sees no CUDA device (CI's CPU-only PyTorch) is a usage error
/// that says what to check, before any trainer starts; on a build without `tch`, one that says
/// how to rebuild.
#[test]
fn cuda_where_there_is_none_is_a_usage_error_saying_what_to_do() {
    let (dir, profile, hparams) = fixture();
    let out = harness(dir.path(), profile, hparams, "cuda:0").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if cfg!(feature = "tch") && experiment::device::libtorch_cuda_devices() > 0 {
        return; // a machine with a GPU: nothing to refuse
    }
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let want = if cfg!(feature = "tch") { "libtorch sees 0 CUDA device(s)" } else { "--features harness/tch" };
    assert!(stderr.contains(want), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("[trainer]"), "no trainer may start");
}
