//! `autoresearch detect`: what hardware is here, which platform profile and backend fit it, and
//! what that profile changes. Reads /proc, nvidia-smi and the Vulkan loader files, and, when the
//! harness is built, asks the build's own backends (`harness --list-devices`: wgpu's Vulkan,
//! Metal or DX12 adapters through Burn, CUDA and MPS through libtorch). The runner itself links
//! no GPU API.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::ResearchConfig;

#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    pub model: String,
    pub logical_cores: usize,
    pub simd: Vec<String>,
    pub memory_total_gb: f64,
    pub memory_available_gb: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Gpu {
    pub name: String,
    pub memory_mb: Option<f64>,
    pub driver: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Vulkan {
    pub loader: Option<String>,
    pub icds: Vec<String>,
    /// Only CPU implementations (lavapipe/llvmpipe/swiftshader): no GPU behind them.
    pub software_only: bool,
    /// GPU render nodes (/dev/dri/renderD*): an installed ICD without one drives no GPU.
    pub render_nodes: Vec<String>,
    /// The NVIDIA driver's ICD where the loader does not look by itself (GPU containers mount
    /// it under /usr/local/nvidia), unless `VK_DRIVER_FILES` or `VK_ICD_FILENAMES` names it.
    pub unlisted_nvidia_icd: Option<String>,
    /// NVIDIA's device files (/dev/nvidia0...), which its Vulkan driver uses instead of /dev/dri.
    pub nvidia_devices: bool,
}

impl Vulkan {
    /// A hardware Vulkan driver with a device to drive.
    pub fn usable_gpu(&self) -> bool {
        let device = !self.render_nodes.is_empty() || self.nvidia_devices || !cfg!(target_os = "linux");
        self.loader.is_some() && !self.icds.is_empty() && !self.software_only && device
    }

    /// What to do so that Vulkan reaches an NVIDIA GPU, when something is missing.
    pub fn nvidia_hint(&self, nvidia_gpus: usize) -> Option<String> {
        if nvidia_gpus == 0 || !cfg!(target_os = "linux") {
            return None;
        }
        let has_nvidia_icd = self.icds.iter().any(|p| p.to_lowercase().contains("nvidia"));
        let point = |icd: &str| format!("`export VK_DRIVER_FILES={icd}` (the NVIDIA driver's ICD, where the loader does not look by itself)");
        match (&self.loader, &self.unlisted_nvidia_icd) {
            (None, Some(icd)) => Some(format!("no Vulkan loader (libvulkan.so.1): install it (Debian/Ubuntu `apt-get install libvulkan1`, Fedora/RHEL `dnf install vulkan-loader`), then {}", point(icd))),
            (None, None) => Some(format!(
                "no Vulkan loader (libvulkan.so.1): install it (Debian/Ubuntu `apt-get install libvulkan1`, Fedora/RHEL `dnf install vulkan-loader`){}",
                if has_nvidia_icd { "" } else { "; the NVIDIA driver's Vulkan ICD (nvidia_icd.json) was not found either: install the driver's Vulkan part, or in a container set NVIDIA_DRIVER_CAPABILITIES=all" }
            )),
            (Some(_), Some(icd)) => Some(format!("the Vulkan loader does not see the NVIDIA driver: {}", point(icd))),
            (Some(_), None) if !has_nvidia_icd => Some("the NVIDIA driver's Vulkan ICD (nvidia_icd.json) is not installed: install the driver's Vulkan part, or in a container set NVIDIA_DRIVER_CAPABILITIES=all".to_string()),
            _ => None,
        }
    }
}

/// The PyTorch that `python3` imports: what a `tch` build links with `LIBTORCH_USE_PYTORCH=1`.
#[derive(Debug, Clone, Serialize)]
pub struct PyTorch {
    /// `torch.__version__`, e.g. `2.11.0+cu130`.
    pub version: String,
    /// `torch.version.cuda`, when it is a CUDA build.
    pub cuda: Option<String>,
    /// Its `torch/lib`, for `LD_LIBRARY_PATH`.
    pub lib_dir: String,
}

/// PyTorch versions this project's `tch` build is tested with.
pub const TESTED_PYTORCH: &[&str] = &["2.9.0 (CPU, CI)", "2.11.0+cu130 (CUDA 13, H200)"];

impl PyTorch {
    /// Whether `torch-sys` accepts it without `LIBTORCH_BYPASS_VERSION_CHECK=1`.
    pub fn needs_bypass(&self) -> bool {
        !self.version.starts_with("2.9.0")
    }
}

/// Asks `python3` which PyTorch it has (None without python3 or torch, or after 60 s).
fn pytorch() -> Option<PyTorch> {
    let dir = tempfile::tempdir().ok()?;
    let out = dir.path().join("out");
    let script = "import os, torch; print(torch.__version__); print(torch.version.cuda or ''); print(os.path.join(os.path.dirname(torch.__file__), 'lib'))";
    let cmd = format!("python3 -c {}", crate::process::shell_quote(script));
    let fin = crate::process::run_shell(&cmd, dir.path(), &[], crate::process::Output::Split { stdout: &out, stderr: &dir.path().join("err") }, std::time::Duration::from_secs(60), |_| Ok(()), |_| {}).ok()?;
    if fin.code != Some(0) {
        return None;
    }
    let text = std::fs::read_to_string(&out).ok()?;
    let mut lines = text.lines().map(str::trim);
    let version = lines.next().filter(|v| !v.is_empty())?.to_string();
    let cuda = lines.next().filter(|c| !c.is_empty()).map(str::to_string);
    let lib_dir = lines.next().unwrap_or_default().to_string();
    Some(PyTorch { version, cuda, lib_dir })
}

/// What the built harness found through its backends (`harness --list-devices`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct BuildDevices {
    /// `--device` names compiled in.
    pub compiled: Vec<String>,
    pub wgpu: Vec<WgpuAdapter>,
    pub libtorch: Option<LibTorchDevices>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct WgpuAdapter {
    pub device: String,
    pub name: Option<String>,
    pub software: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct LibTorchDevices {
    pub cuda_devices: usize,
    pub mps: bool,
}

impl BuildDevices {
    fn hardware_wgpu(&self) -> bool {
        self.wgpu.iter().any(|a| !a.software)
    }

    fn cuda(&self) -> usize {
        self.libtorch.as_ref().map_or(0, |l| l.cuda_devices)
    }

    fn mps(&self) -> bool {
        self.libtorch.as_ref().is_some_and(|l| l.mps)
    }

    /// The backends (cargo features) behind the compiled device names.
    fn backends(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for d in &self.compiled {
            let b = match d.as_str() {
                "wgpu-cpu" | "vulkan" | "metal" => "wgpu",
                "tch-cpu" | "cuda" | "mps" => "tch",
                other => other,
            };
            if !out.iter().any(|x| x == b) {
                out.push(b.to_string());
            }
        }
        out
    }
}

/// Asks the built harness (`<repo>/target/release/harness --list-devices`); Err says why not.
fn ask_harness(repo: &Path) -> Result<BuildDevices, String> {
    let harness = crate::layout::target_dir(repo).join("release").join(format!("harness{}", std::env::consts::EXE_SUFFIX));
    if !harness.exists() {
        return Err(format!("{} is not built yet (`cargo build --release --workspace`)", harness.display()));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let cmd = format!("{} --list-devices", crate::process::shell_quote(&harness.display().to_string()));
    let fin = crate::process::run_shell(
        &cmd,
        repo,
        &[],
        crate::process::Output::Split { stdout: &out, stderr: &err },
        std::time::Duration::from_secs(60),
        |_| Ok(()),
        |_| {},
    )
    .map_err(|e| format!("{e:#}"))?;
    if fin.code != Some(0) {
        return Err(format!("`{cmd}` failed: {}", crate::process::tail(&err, 3)));
    }
    let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("`{cmd}` printed no device list ({e}); rebuild the workspace"))
}

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
    let cpu = cpu();
    let nvidia = nvidia();
    let vulkan = vulkan();
    let apple_silicon = cfg!(all(target_os = "macos", target_arch = "aarch64"));
    let (build_devices, build_devices_note) = match ask_harness(repo) {
        Ok(b) => (Some(b), None),
        Err(why) => (None, Some(why)),
    };
    // What the build has, as the harness reports it; before a build, the workspace's default
    // features (flex, ndarray and wgpu).
    let mut build_backends = match &build_devices {
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
    let has = |b: &str| build_backends.iter().any(|x| x == b);
    let found = build_devices.clone().unwrap_or_default();
    let pytorch = if has("tch") || !nvidia.is_empty() || apple_silicon { pytorch() } else { None };
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
    let needs = match recommended {
        "cuda" | "mps" => Some("tch"),
        "wgpu" => Some("wgpu"),
        _ => None,
    };
    let (profile, rebuild_hint) = match needs {
        Some(feat) if !has(feat) => {
            let hint = if feat == "tch" {
                format!(
                    "this {} is unused by the current build. Rebuild with libtorch: {}`export LIBTORCH_USE_PYTORCH=1{}` and `cargo build --release --workspace --features harness/tch,trainer/tch` (`gpu` in place of `tch` adds Vulkan, fusion and autotune), and set features = \"tch\" in configs/research.toml (or pass --features tch). Without libtorch, `--features wgpu` also reaches the GPU (slower).",
                    if recommended == "cuda" { "NVIDIA GPU" } else { "Apple GPU (MPS)" },
                    match &pytorch {
                        Some(p) => format!("with the PyTorch found ({}), ", p.version),
                        None => "`pip install torch` (2.11.0 has CUDA 13; 2.9.0 for the CPU), then ".to_string(),
                    },
                    if pytorch.as_ref().is_none_or(PyTorch::needs_bypass) { " LIBTORCH_BYPASS_VERSION_CHECK=1" } else { "" }
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
        _ => (recommended, None),
    };
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

fn cpu() -> Cpu {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").or_else(|| field("Model")).or_else(|| field("Hardware")).unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let flags = field("flags").or_else(|| field("Features")).unwrap_or_default();
    let interesting = [
        "sse2", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
        "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm",
    ];
    let have: Vec<&str> = flags.split_whitespace().collect();
    let mut simd: Vec<String> = interesting.iter().filter(|f| have.contains(f)).map(|s| s.to_string()).collect();
    if simd.is_empty() && cfg!(target_arch = "aarch64") {
        simd.push("neon".into());
    }
    let logical_cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = |name: &str| {
        mem.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Cpu {
        model,
        logical_cores,
        simd,
        memory_total_gb: kb("MemTotal:") / 1024.0 / 1024.0,
        memory_available_gb: kb("MemAvailable:") / 1024.0 / 1024.0,
    }
}

/// The NVIDIA GPUs experiments may use, as `CUDA_VISIBLE_DEVICES` names them: the runner's own
/// `CUDA_VISIBLE_DEVICES` when set (indices or UUIDs), else every GPU nvidia-smi lists. The local
/// executor runs one slot per GPU by default, each run on its own.
pub fn gpu_ids() -> Vec<String> {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        return v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
    }
    (0..nvidia().len()).map(|i| i.to_string()).collect()
}

fn nvidia() -> Vec<Gpu> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"])
        .output();
    if let Ok(out) = out
        && out.status.success()
    {
        return String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split(',').map(str::trim).collect();
                Gpu {
                    name: f.first().unwrap_or(&"NVIDIA GPU").to_string(),
                    memory_mb: f.get(1).and_then(|m| m.parse().ok()),
                    driver: f.get(2).map(|s| s.to_string()),
                }
            })
            .collect();
    }
    // No nvidia-smi: the kernel driver's own listing.
    let mut gpus = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc/driver/nvidia/gpus") {
        for e in rd.flatten() {
            let info = std::fs::read_to_string(e.path().join("information")).unwrap_or_default();
            let name = info
                .lines()
                .find(|l| l.starts_with("Model:"))
                .map(|l| l.trim_start_matches("Model:").trim().to_string())
                .unwrap_or_else(|| "NVIDIA GPU".into());
            gpus.push(Gpu { name, memory_mb: None, driver: None });
        }
    }
    gpus
}

fn vulkan() -> Vulkan {
    let loaders = [
        "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
        "/usr/lib/aarch64-linux-gnu/libvulkan.so.1",
        "/usr/lib64/libvulkan.so.1",
        "/usr/lib/libvulkan.so.1",
        "/usr/local/lib/libvulkan.so.1",
    ];
    let loader = loaders.iter().find(|p| Path::new(p).exists()).map(|s| s.to_string());
    let mut icds = Vec::new();
    for dir in ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "json") {
                    icds.push(e.path().display().to_string());
                }
            }
        }
    }
    // ICD files named in the environment, which the loader reads in place of its folders.
    let from_env: Vec<String> = ["VK_DRIVER_FILES", "VK_ICD_FILENAMES", "VK_ADD_DRIVER_FILES"]
        .iter()
        .filter_map(|v| std::env::var_os(v))
        .flat_map(|v| std::env::split_paths(&v).collect::<Vec<_>>())
        .filter(|p| p.is_file())
        .map(|p| p.display().to_string())
        .collect();
    for icd in from_env {
        if !icds.contains(&icd) {
            icds.push(icd);
        }
    }
    icds.sort();
    let unlisted_nvidia_icd = ["/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json", "/usr/local/share/nvidia/vulkan/icd.d/nvidia_icd.json"]
        .iter()
        .find(|p| Path::new(p).is_file() && !icds.iter().any(|i| i == *p))
        .map(|p| p.to_string());
    let nvidia_devices = Path::new("/dev/nvidia0").exists();
    let software_only = !icds.is_empty()
        && icds.iter().all(|p| {
            let l = p.to_lowercase();
            l.contains("lvp") || l.contains("llvmpipe") || l.contains("swiftshader")
        });
    let mut render_nodes: Vec<String> = std::fs::read_dir("/dev/dri")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("renderD"))
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default();
    render_nodes.sort();
    Vulkan { loader, icds, software_only, render_nodes, unlisted_nvidia_icd, nvidia_devices }
}

/// Human-readable report.
pub fn render(d: &Detection) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "CPU      {} ({} logical cores)\n         SIMD: {}\n         memory: {:.1} GiB total, {:.1} GiB available\n",
        d.cpu.model,
        d.cpu.logical_cores,
        if d.cpu.simd.is_empty() { "none found".into() } else { d.cpu.simd.join(" ") },
        d.cpu.memory_total_gb,
        d.cpu.memory_available_gb
    ));
    if d.nvidia.is_empty() {
        s.push_str("NVIDIA   none (no nvidia-smi, no /proc/driver/nvidia)\n");
    }
    for g in &d.nvidia {
        s.push_str(&format!(
            "NVIDIA   {}{}{}\n",
            g.name,
            g.memory_mb.map(|m| format!(", {:.0} MiB", m)).unwrap_or_default(),
            g.driver.as_ref().map(|v| format!(", driver {v}")).unwrap_or_default()
        ));
    }
    s.push_str(&format!(
        "Vulkan   loader: {}; ICDs: {}{}\n         GPU render nodes: {}\n",
        d.vulkan.loader.as_deref().unwrap_or("not found"),
        if d.vulkan.icds.is_empty() { "none".into() } else { d.vulkan.icds.join(", ") },
        if d.vulkan.software_only { " (software only, no GPU)" } else { "" },
        if d.vulkan.render_nodes.is_empty() { "none (no GPU for Vulkan to drive)".into() } else { d.vulkan.render_nodes.join(", ") }
    ));
    if let Some(h) = &d.vulkan_hint {
        s.push_str(&format!("         note: {h}\n"));
    }
    if let Some(p) = &d.pytorch {
        s.push_str(&format!(
            "PyTorch  {}{} at {} (tested: {}){}\n",
            p.version,
            p.cuda.as_ref().map(|c| format!(", CUDA {c}")).unwrap_or_default(),
            p.lib_dir,
            TESTED_PYTORCH.join(", "),
            if p.needs_bypass() { "; a tch build against it needs LIBTORCH_BYPASS_VERSION_CHECK=1 (torch-sys expects 2.9.0)" } else { "" }
        ));
    }
    s.push_str(&format!("Apple    {}\n", if d.apple_silicon { "Apple Silicon: MPS (libtorch) or Metal (wgpu)" } else { "no" }));
    s.push_str(&format!("Build    backends: {}\n", d.build_backends.join(", ")));
    match (&d.build_devices, &d.build_devices_note) {
        (Some(b), _) => {
            let adapters: Vec<String> = b
                .wgpu
                .iter()
                .map(|a| format!("{} ({}{})", a.name.as_deref().unwrap_or("unnamed"), a.device, if a.software { ", software" } else { "" }))
                .collect();
            s.push_str(&format!(
                "         wgpu adapters (through Burn): {}\n",
                if adapters.is_empty() { "none".to_string() } else { adapters.join(", ") }
            ));
            match &b.libtorch {
                Some(l) => s.push_str(&format!("         libtorch: {} CUDA device(s), MPS {}\n", l.cuda_devices, if l.mps { "yes" } else { "no" })),
                None => s.push_str("         libtorch: not in this build (--features tch)\n"),
            }
            for n in &b.notes {
                s.push_str(&format!("         note: {n}\n"));
            }
        }
        (None, Some(why)) => s.push_str(&format!("         devices not asked through the backends: {why}\n")),
        (None, None) => {}
    }
    s.push_str(&format!(
        "\nProfile  {} ({}), backend {}{}\n",
        d.profile,
        d.profile_path.display(),
        d.backend,
        if d.profile != d.recommended_profile { format!(" (the hardware fits `{}`)", d.recommended_profile) } else { String::new() }
    ));
    if let Some(a) = &d.adjustments {
        s.push_str(&format!("         trainer table [{}], seq_len {}\n", a.class, opt(a.seq_len)));
        s.push_str(&format!(
            "         device batch scale {} -> {} rows per forward/backward, {} accumulation steps keep {} tokens per step\n",
            a.device_batch_scale,
            a.device_batch_size.map(|b| ((b as f64 * a.device_batch_scale).round() as i64).max(1).to_string()).unwrap_or("?".into()),
            opt(a.grad_accum_steps),
            opt(a.total_batch_tokens)
        ));
        s.push_str(&format!(
            "         dtype {}, fusion {}, autotune {}, warm-up steps {}, eval tokens {}\n",
            a.dtype,
            on_off(a.fusion),
            on_off(a.autotune),
            opt(a.warmup_steps),
            opt(a.eval_tokens)
        ));
    } else {
        s.push_str("         (profile file not found: run from the repository root or pass --repo)\n");
    }
    if let Some(h) = &d.rebuild_hint {
        s.push_str(&format!("\nRebuild  {h}\n"));
    }
    s.push_str("\nAgents   (the agent proposer's presets: `autoresearch run --agent NAME`)\n");
    for a in &d.agents {
        match &a.path {
            Some(p) => s.push_str(&format!("         {:<9} {}: {p}\n", a.preset, a.name)),
            None => s.push_str(&format!("         {:<9} {}: not installed (`{}` is not on PATH); install: {}\n", a.preset, a.name, a.binary, a.install)),
        }
    }
    s
}

fn opt(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vulkan(loader: bool, icds: &[&str], unlisted: Option<&str>) -> Vulkan {
        Vulkan {
            loader: loader.then(|| "/usr/lib/x86_64-linux-gnu/libvulkan.so.1".to_string()),
            icds: icds.iter().map(|s| s.to_string()).collect(),
            software_only: false,
            render_nodes: vec![],
            unlisted_nvidia_icd: unlisted.map(str::to_string),
            nvidia_devices: true,
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn what_vulkan_lacks_for_an_nvidia_gpu_is_said_with_the_fix() {
        let icd = "/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json";
        let hint = vulkan(false, &[], Some(icd)).nvidia_hint(1).unwrap();
        assert!(hint.contains("apt-get install libvulkan1") && hint.contains(&format!("VK_DRIVER_FILES={icd}")), "{hint}");
        let hint = vulkan(true, &[], Some(icd)).nvidia_hint(1).unwrap();
        assert!(!hint.contains("apt-get") && hint.contains(&format!("VK_DRIVER_FILES={icd}")), "{hint}");
        let hint = vulkan(true, &["/usr/share/vulkan/icd.d/lvp_icd.x86_64.json"], None).nvidia_hint(1).unwrap();
        assert!(hint.contains("nvidia_icd.json") && hint.contains("NVIDIA_DRIVER_CAPABILITIES"), "{hint}");
        assert_eq!(vulkan(true, &["/usr/share/vulkan/icd.d/nvidia_icd.json"], None).nvidia_hint(1), None, "all there");
        assert_eq!(vulkan(false, &[], None).nvidia_hint(0), None, "no NVIDIA GPU, nothing to say");
        // NVIDIA's Vulkan driver needs no /dev/dri render node.
        assert!(vulkan(true, &["/usr/share/vulkan/icd.d/nvidia_icd.json"], None).usable_gpu());
    }

    #[test]
    fn only_pytorch_2_9_builds_without_the_bypass() {
        let p = |v: &str| PyTorch { version: v.into(), cuda: None, lib_dir: String::new() };
        assert!(!p("2.9.0+cpu").needs_bypass());
        assert!(p("2.11.0+cu130").needs_bypass());
    }
}
