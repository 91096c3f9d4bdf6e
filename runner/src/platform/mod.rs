//! The platform profile: which of configs/platforms/*.toml fits this machine and build (the
//! domain decision behind `autoresearch detect`, which only prints it), what that profile changes
//! in the trainer, and the profile and device batch scale a run uses. The loop, the executors,
//! `train` and the manual proposer take their profile from here.

pub mod hardware;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::ResearchConfig;
pub use hardware::gpu_ids;
use hardware::{BuildDevices, Cpu, Gpu, PyTorch, Vulkan};

#[derive(Debug, Clone, Serialize)]
pub struct Adjustments {
    pub class: String,
    pub seq_len: Option<i64>,
    pub device_batch_scale: f64,
    pub device_batch_size: Option<i64>,
    pub total_batch_tokens: Option<i64>,
    /// Gradient-accumulation steps that keep the total batch at this scale.
    pub grad_accum_steps: Option<i64>,
    pub fusion: bool,
    pub autotune: bool,
    pub dtype: String,
    pub eval_tokens: Option<i64>,
    pub warmup_steps: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    pub cpu: Cpu,
    pub nvidia: Vec<Gpu>,
    pub vulkan: Vulkan,
    pub apple_silicon: bool,
    /// What the built harness found through its backends; None with `build_devices_note` saying why.
    pub build_devices: Option<BuildDevices>,
    pub build_devices_note: Option<String>,
    /// The PyTorch `python3` has, asked where a `tch` build or a GPU makes it matter.
    pub pytorch: Option<PyTorch>,
    /// What Vulkan needs to reach the NVIDIA GPU, when something is missing.
    pub vulkan_hint: Option<String>,
    /// The profile that fits the hardware.
    pub recommended_profile: String,
    /// The profile `run` and `train` use with the current build features.
    pub profile: String,
    pub profile_path: PathBuf,
    pub backend: String,
    /// Backends the harness build has (default features + `features` of the config).
    pub build_backends: Vec<String>,
    pub adjustments: Option<Adjustments>,
    /// How to rebuild when the hardware has a GPU the build cannot use.
    pub rebuild_hint: Option<String>,
    /// The coding agents of the config's presets (`--agent NAME`), found on PATH or not.
    pub agents: Vec<crate::agents::Installed>,
}

/// What this machine has, for the config `cfg` (its agent presets) and the build features
/// `features`.
pub fn detect(repo: &Path, cfg: &ResearchConfig, features: &str) -> Result<Detection> {
    let cpu = hardware::cpu();
    let nvidia = hardware::nvidia();
    let vulkan = hardware::vulkan();
    let apple_silicon = cfg!(all(target_os = "macos", target_arch = "aarch64"));
    let (build_devices, build_devices_note) = match hardware::ask_harness(repo) {
        Ok(b) => (Some(b), None),
        Err(why) => (None, Some(why)),
    };
    let build_backends = build_backends(build_devices.as_ref(), features);
    let has = |b: &str| build_backends.iter().any(|x| x == b);
    let found = build_devices.clone().unwrap_or_default();
    let pytorch = if has("tch") || !nvidia.is_empty() || apple_silicon { hardware::pytorch() } else { None };
    let vulkan_hint = vulkan.nvidia_hint(nvidia.len());
    // A GPU that wgpu reaches through Burn (Vulkan, Metal or DX12) counts even where the
    // Vulkan files say nothing (macOS, Windows).
    let wgpu_gpu = vulkan.usable_gpu() || found.hardware_wgpu();
    let recommended = if !nvidia.is_empty() || found.cuda() > 0 {
        "cuda"
    } else if apple_silicon || found.mps() {
        "mps"
    } else if wgpu_gpu {
        "wgpu"
    } else {
        "cpu"
    };
    let (profile, rebuild_hint) = fit_build(recommended, &build_backends, pytorch.as_ref(), wgpu_gpu, &vulkan);
    let profile_path = repo.join("configs/platforms").join(format!("{profile}.toml"));
    let (backend, adjustments) = match read_profile(&profile_path) {
        Ok(p) => (
            p.get("backend").and_then(|v| v.as_str()).unwrap_or("flex").to_string(),
            Some(adjustments(repo, &p)),
        ),
        Err(_) => (if profile == "cpu" { "flex" } else { profile }.to_string(), None),
    };
    Ok(Detection {
        cpu,
        nvidia,
        vulkan,
        apple_silicon,
        build_devices,
        build_devices_note,
        pytorch,
        vulkan_hint,
        recommended_profile: recommended.to_string(),
        profile: profile.to_string(),
        profile_path,
        backend,
        build_backends,
        adjustments,
        rebuild_hint,
        agents: crate::agents::installed(cfg),
    })
}

/// What the build has, as the harness reports it; before a build, the workspace's default
/// features (flex, ndarray and wgpu). The build features `features` add theirs.
fn build_backends(build_devices: Option<&BuildDevices>, features: &str) -> Vec<String> {
    let mut build_backends = match build_devices {
        Some(b) if !b.compiled.is_empty() => b.backends(),
        _ => vec!["flex".to_string(), "ndarray".to_string(), "wgpu".to_string()],
    };
    for f in features.split([',', ' ']).filter(|f| !f.is_empty()) {
        let f = match f {
            "vulkan" | "metal" => "wgpu",
            other => other,
        };
        if !build_backends.iter().any(|b| b == f) {
            build_backends.push(f.to_string());
        }
    }
    build_backends
}

/// The profile the build can use for the `recommended` one (the hardware's), and how to
/// rebuild when the build lacks the backend the hardware wants.
fn fit_build(recommended: &'static str, build_backends: &[String], pytorch: Option<&PyTorch>, wgpu_gpu: bool, vulkan: &Vulkan) -> (&'static str, Option<String>) {
    let has = |b: &str| build_backends.iter().any(|x| x == b);
    let needs = match recommended {
        "cuda" | "mps" => Some("tch"),
        "wgpu" => Some("wgpu"),
        _ => None,
    };
    let Some(feat) = needs.filter(|f| !has(f)) else { return (recommended, None) };
    let hint = if feat == "tch" {
        format!(
            "this {} is unused by the current build. Rebuild with libtorch: {}`export LIBTORCH_USE_PYTORCH=1{}` and `cargo build --release --workspace --features harness/tch,trainer/tch` (`gpu` in place of `tch` adds Vulkan, fusion and autotune), and set features = \"tch\" in configs/research.toml (or pass --features tch). Without libtorch, `--features wgpu` also reaches the GPU (slower).",
            if recommended == "cuda" { "NVIDIA GPU" } else { "Apple GPU (MPS)" },
            match pytorch {
                Some(p) => format!("with the PyTorch found ({}), ", p.version),
                None => "`pip install torch` (2.11.0 has CUDA 13; 2.9.0 for the CPU), then ".to_string(),
            },
            if pytorch.is_none_or(PyTorch::needs_bypass) { " LIBTORCH_BYPASS_VERSION_CHECK=1" } else { "" }
        )
    } else {
        "this Vulkan GPU is unused by the current build: `cargo build --release --workspace --features harness/wgpu` and set features = \"wgpu\" in configs/research.toml (or pass --features wgpu).".to_string()
    };
    // Without libtorch, Apple GPUs are still reached through Metal and NVIDIA GPUs
    // through Vulkan, both by wgpu.
    let wgpu_reaches_it = recommended == "mps" || wgpu_gpu;
    let hint = if feat == "tch" && has("wgpu") && !wgpu_reaches_it && vulkan.loader.is_none() && cfg!(target_os = "linux") {
        format!("{hint} This build has wgpu, but no Vulkan loader is installed, so it sees no GPU: install it (Debian/Ubuntu: `apt-get install libvulkan1`) to train on the GPU through Vulkan without libtorch.")
    } else {
        hint
    };
    if feat == "tch" && has("wgpu") && wgpu_reaches_it { ("wgpu", Some(hint)) } else { ("cpu", Some(hint)) }
}

pub fn read_profile(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading platform profile {} (see configs/platforms/)", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The platform profile a run uses: the config's, else the detected one. Returns its path, its
/// class (the trainer table it selects, `cpu` or `gpu`) and its name.
pub fn resolve_profile(root: &Path, cfg: &ResearchConfig) -> Result<(PathBuf, String, String)> {
    let path = if cfg.profile.is_empty() { detect(root, cfg, &cfg.features)?.profile_path } else { crate::config::resolve(root, Path::new(&cfg.profile)) };
    let p = read_profile(&path).map_err(|e| crate::errors::usage(format!("profile: {e:#}")))?;
    let class = p.get("class").and_then(|v| v.as_str()).unwrap_or("gpu").to_string();
    let name = p.get("name").and_then(|v| v.as_str()).unwrap_or("custom").to_string();
    Ok((path, class, name))
}

/// The profile a run's experiments are scored with: the run's snapshot once it has started
/// (`Paths::profile_snapshot`), else the configured or detected one.
pub fn run_profile(root: &Path, cfg: &ResearchConfig) -> Result<PathBuf> {
    let snapshot = crate::layout::Paths::new(root, cfg).profile_snapshot();
    if snapshot.exists() { Ok(snapshot) } else { Ok(resolve_profile(root, cfg)?.0) }
}

/// The device batch scale a run starts with: the config's, else the profile's (an
/// out-of-memory retry halves it).
pub fn batch_scale(cfg: &ResearchConfig, profile: &Path) -> f64 {
    if cfg.device_batch_scale > 0.0 { cfg.device_batch_scale } else { profile_batch_scale(profile) }
}

/// The profile's device batch scale (1.0 when absent or unreadable).
pub fn profile_batch_scale(path: &Path) -> f64 {
    read_profile(path)
        .ok()
        .and_then(|p| p.get("device_batch_scale").and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64))))
        .unwrap_or(1.0)
}

fn adjustments(repo: &Path, p: &toml::Table) -> Adjustments {
    let int = |k: &str| p.get(k).and_then(|v| v.as_integer().or(v.as_float().map(|f| f as i64)));
    let class = p.get("class").and_then(|v| v.as_str()).unwrap_or("gpu").to_string();
    let scale = p.get("device_batch_scale").and_then(|v| v.as_float()).unwrap_or(1.0);
    let seq_len = int("seq_len");
    // The trainer's batch for this class: [class] over [gpu].
    let hp: Option<toml::Table> = std::fs::read_to_string(repo.join("trainer/hparams.toml"))
        .ok()
        .and_then(|t| toml::from_str(&t).ok());
    let hp_int = |k: &str| -> Option<i64> {
        let hp = hp.as_ref()?;
        [class.as_str(), "gpu"]
            .iter()
            .find_map(|t| hp.get(*t).and_then(|t| t.get(k)).and_then(|v| v.as_integer()))
    };
    let device_batch_size = hp_int("device_batch_size");
    let total = hp_int("total_batch_tokens");
    let grad_accum_steps = match (device_batch_size, total, seq_len) {
        (Some(b), Some(t), Some(s)) => {
            let rows = ((b as f64 * scale).round() as i64).max(1);
            Some(((t as f64) / (rows * s) as f64).ceil().max(1.0) as i64)
        }
        _ => None,
    };
    Adjustments {
        class,
        seq_len,
        device_batch_scale: scale,
        device_batch_size,
        total_batch_tokens: total,
        grad_accum_steps,
        fusion: p.get("fusion").and_then(|v| v.as_bool()).unwrap_or(false),
        autotune: p.get("autotune").and_then(|v| v.as_bool()).unwrap_or(false),
        dtype: p.get("dtype").and_then(|v| v.as_str()).unwrap_or("f32").to_string(),
        eval_tokens: int("eval_tokens"),
        warmup_steps: int("warmup_steps"),
    }
}
