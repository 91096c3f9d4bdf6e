//! What hardware is here: reads /proc, nvidia-smi and the Vulkan loader files, and, when the
//! harness is built, asks the build's own backends (`harness --list-devices`: wgpu's Vulkan,
//! Metal or DX12 adapters through Burn, CUDA and MPS through libtorch). The runner itself links
//! no GPU API.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

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
pub(super) fn pytorch() -> Option<PyTorch> {
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
    pub(super) fn hardware_wgpu(&self) -> bool {
        self.wgpu.iter().any(|a| !a.software)
    }

    pub(super) fn cuda(&self) -> usize {
        self.libtorch.as_ref().map_or(0, |l| l.cuda_devices)
    }

    pub(super) fn mps(&self) -> bool {
        self.libtorch.as_ref().is_some_and(|l| l.mps)
    }

    /// The backends (cargo features) behind the compiled device names.
    pub(super) fn backends(&self) -> Vec<String> {
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
pub(super) fn ask_harness(repo: &Path) -> Result<BuildDevices, String> {
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

pub(super) fn cpu() -> Cpu {
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

pub(super) fn nvidia() -> Vec<Gpu> {
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

pub(super) fn vulkan() -> Vulkan {
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

