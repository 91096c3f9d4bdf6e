//! Choosing the execution device at run time among the backends compiled into this build.
//!
//! | name        | cargo feature | device |
//! |-------------|---------------|--------|
//! | `flex`      | `flex`        | Burn's pure-Rust CPU backend (default) |
//! | `ndarray`   | `ndarray`     | ndarray CPU backend |
//! | `wgpu`      | `wgpu`        | wgpu, default adapter (a GPU when there is one) |
//! | `wgpu-cpu`  | `wgpu`        | wgpu on a software adapter (Mesa lavapipe) |
//! | `vulkan`    | `vulkan`      | wgpu pinned to Vulkan |
//! | `metal`     | `metal`       | wgpu pinned to Metal |
//! | `tch-cpu`   | `tch`         | LibTorch on the CPU |
//! | `cuda[:N]`  | `tch`         | LibTorch on CUDA GPU N (default 0) |
//! | `mps`       | `tch`         | LibTorch on Apple's Metal Performance Shaders |
//! | `cubecl-cuda[:N]` | `cubecl-cuda` | Burn's own CUDA backend (CubeCL, kernels through LLVM to PTX) on GPU N, fused and autotuned with `fusion`, `autotune` |
//!
//! `cubecl-cuda` needs the NVIDIA driver and libdevice at run time: [`crate::cuda_runtime`]
//! looks for both before the device is built and names the package of whatever is missing.
//!
//! An explicit `--device` always wins. Without one, `BURN_DEVICE` (if set) is parsed with the
//! same names (`tch` meaning `tch-cpu`), then the profile's `backend`, then `flex`.

#[allow(unused_imports)]
use burn::prelude::{Device, DeviceKind};

/// Whether MFU can use the CPU peak-FLOPs formula for the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceClass {
    Cpu,
    Gpu,
}

/// One device name the harness and the trainer know, whether or not it is compiled in.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSpec {
    /// Name as given to `--device` (`cuda` also takes `:N`).
    pub name: &'static str,
    /// Cargo feature of the harness (and the trainer) that compiles it in.
    pub feature: &'static str,
    /// What it runs on.
    pub description: &'static str,
    /// CPU or GPU, for the MFU peak.
    pub class: DeviceClass,
}

/// Every device name, in the order help text lists them.
pub const ALL_DEVICES: &[DeviceSpec] = &[
    DeviceSpec { name: "flex", feature: "flex", description: "Burn's pure-Rust CPU backend", class: DeviceClass::Cpu },
    DeviceSpec { name: "ndarray", feature: "ndarray", description: "ndarray CPU backend", class: DeviceClass::Cpu },
    DeviceSpec { name: "wgpu", feature: "wgpu", description: "wgpu, default adapter", class: DeviceClass::Gpu },
    DeviceSpec { name: "wgpu-cpu", feature: "wgpu", description: "wgpu on a software adapter (Mesa lavapipe)", class: DeviceClass::Cpu },
    DeviceSpec { name: "vulkan", feature: "vulkan", description: "wgpu pinned to Vulkan", class: DeviceClass::Gpu },
    DeviceSpec { name: "metal", feature: "metal", description: "wgpu pinned to Metal", class: DeviceClass::Gpu },
    DeviceSpec { name: "tch-cpu", feature: "tch", description: "LibTorch on the CPU", class: DeviceClass::Cpu },
    DeviceSpec { name: "cuda", feature: "tch", description: "LibTorch on CUDA GPU N (cuda:N, default 0)", class: DeviceClass::Gpu },
    DeviceSpec { name: "mps", feature: "tch", description: "LibTorch on Apple MPS", class: DeviceClass::Gpu },
    DeviceSpec { name: "cubecl-cuda", feature: "cubecl-cuda", description: "Burn's CUDA backend (CubeCL) on GPU N (:N)", class: DeviceClass::Gpu },
];

/// Whether this build has `feature`.
pub fn feature_enabled(feature: &str) -> bool {
    match feature {
        "flex" => cfg!(feature = "flex"),
        "ndarray" => cfg!(feature = "ndarray"),
        "wgpu" => cfg!(feature = "wgpu"),
        "vulkan" => cfg!(feature = "vulkan"),
        "metal" => cfg!(feature = "metal"),
        "tch" => cfg!(feature = "tch"),
        "cubecl-cuda" => cfg!(feature = "cubecl-cuda"),
        _ => false,
    }
}

/// Device names available in this build.
pub fn compiled_devices() -> Vec<&'static str> {
    ALL_DEVICES
        .iter()
        .filter(|d| feature_enabled(d.feature))
        .map(shown_name)
        .collect()
}

/// Whether the device takes a GPU index (`NAME:N`).
pub fn takes_index(name: &str) -> bool {
    matches!(name, "cuda" | "cubecl-cuda")
}

/// The name as help text shows it (`cuda[:N]`).
fn shown_name(d: &DeviceSpec) -> &'static str {
    match d.name {
        "cuda" => "cuda[:N]",
        "cubecl-cuda" => "cubecl-cuda[:N]",
        other => other,
    }
}

/// A device that could not be selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceError {
    /// The name is known but its backend is not in this build.
    NotCompiled { name: String, feature: &'static str, available: Vec<&'static str> },
    /// The name is not one the harness knows.
    Unknown { name: String, available: Vec<&'static str> },
    /// `cuda:N` with a bad `N`.
    BadIndex { name: String },
    /// `cuda:N` where libtorch sees fewer than N + 1 CUDA devices.
    NoCudaDevice { name: String, found: usize },
    /// `vulkan` on a machine without the Vulkan loader.
    NoVulkanLoader { name: String },
    /// `cubecl-cuda` on a machine without what it needs at run time (the driver, a device,
    /// libdevice): each missing piece with the package that brings it.
    CubeclCudaMissing { name: String, missing: Vec<crate::cuda_runtime::CudaMissing> },
}

impl std::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceError::NotCompiled { name, feature, available } => write!(
                f,
                "device {name:?} is not compiled into this build; this build has: {}. \
                 Rebuild with `cargo build --release --workspace --features harness/{feature},trainer/{feature}` to use it",
                available.join(", ")
            ),
            DeviceError::Unknown { name, available } => write!(
                f,
                "unknown device {name:?}; this build has: {} (all devices: {})",
                available.join(", "),
                ALL_DEVICES.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
            ),
            DeviceError::BadIndex { name } => {
                write!(f, "device {name:?}: the GPU index after ':' must be a non-negative integer")
            }
            DeviceError::NoVulkanLoader { name } => write!(
                f,
                "device {name:?}: no Vulkan loader (libvulkan.so.1) on this machine: install it (Debian/Ubuntu \
                 `apt-get install libvulkan1`, Fedora/RHEL `dnf install vulkan-loader`). Where the GPU driver's ICD file \
                 lies outside the loader's folders (GPU containers: /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json), \
                 also `export VK_DRIVER_FILES=` that file. `autoresearch detect` says what is missing"
            ),
            DeviceError::CubeclCudaMissing { name, missing } => {
                write!(f, "device {name:?} (Burn's CUDA backend) cannot start here:")?;
                for (i, m) in missing.iter().enumerate() {
                    write!(f, " ({}) {m}.", i + 1)?;
                }
                Ok(())
            }
            DeviceError::NoCudaDevice { name, found } => write!(
                f,
                "device {name:?}: libtorch sees {found} CUDA device(s). Check the PyTorch this build links \
                 (`python3 -c 'import torch; print(torch.__version__, torch.cuda.is_available())'`): a CPU-only \
                 PyTorch, no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them"
            ),
        }
    }
}

impl std::error::Error for DeviceError {}

/// A parsed device: its canonical name, class, and (for `cuda`) index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceChoice {
    /// Canonical name (`cuda:1`, `flex`...).
    pub name: String,
    /// Entry of [`ALL_DEVICES`].
    pub spec: &'static str,
    /// CPU or GPU.
    pub class: DeviceClass,
    /// GPU index for `cuda:N`.
    pub index: usize,
}

/// Parses a device name and checks that this build has it. Accepts `tch` for `tch-cpu` and
/// `cuda:N`; case-insensitive.
pub fn parse_device(text: &str) -> Result<DeviceChoice, DeviceError> {
    let lower = text.trim().to_ascii_lowercase();
    let (base, index) = match lower.split_once(':') {
        Some((base, idx)) => {
            if !takes_index(base) {
                return Err(DeviceError::Unknown { name: text.to_string(), available: compiled_devices() });
            }
            let index = idx
                .parse::<usize>()
                .map_err(|_| DeviceError::BadIndex { name: text.to_string() })?;
            (base.to_string(), Some(index))
        }
        None => (lower.clone(), None),
    };
    let base = match base.as_str() {
        "tch" | "libtorch" => "tch-cpu".to_string(),
        _ => base,
    };
    let Some(spec) = ALL_DEVICES.iter().find(|d| d.name == base) else {
        return Err(DeviceError::Unknown { name: text.to_string(), available: compiled_devices() });
    };
    if !feature_enabled(spec.feature) {
        return Err(DeviceError::NotCompiled {
            name: text.to_string(),
            feature: spec.feature,
            available: compiled_devices(),
        });
    }
    let index = index.unwrap_or(0);
    let name = if takes_index(spec.name) { format!("{}:{index}", spec.name) } else { spec.name.to_string() };
    Ok(DeviceChoice { name, spec: spec.name, class: spec.class, index })
}

/// Where the device choice came from, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSource {
    /// `--device`.
    Flag,
    /// `BURN_DEVICE`.
    Env,
    /// The profile's `backend`.
    Profile,
    /// Nothing chose: the first compiled-in CPU backend.
    Fallback,
}

/// Picks the device: `--device`, else `BURN_DEVICE`, else the profile's backend when compiled
/// in, else `flex` (or the first compiled-in device). Returns notes worth printing.
pub fn choose_device(
    flag: Option<&str>,
    env: Option<&str>,
    profile_backend: &str,
) -> Result<(DeviceChoice, DeviceSource, Vec<String>), DeviceError> {
    let mut notes = Vec::new();
    let env = env.map(str::trim).filter(|e| !e.is_empty());
    if let Some(flag) = flag {
        let choice = parse_device(flag)?;
        if let Some(env) = env {
            notes.push(format!("BURN_DEVICE={env} is ignored: --device {flag} was given"));
        }
        return Ok((choice, DeviceSource::Flag, notes));
    }
    if let Some(env) = env {
        return Ok((parse_device(env)?, DeviceSource::Env, notes));
    }
    match parse_device(profile_backend) {
        Ok(choice) => return Ok((choice, DeviceSource::Profile, notes)),
        Err(e) => notes.push(format!(
            "the profile's backend {profile_backend:?} is not usable here ({e}); falling back"
        )),
    }
    let fallback = compiled_devices()
        .first()
        .map(|n| n.trim_end_matches("[:N]").to_string())
        .ok_or_else(|| DeviceError::Unknown { name: "<none>".into(), available: vec![] })?;
    Ok((parse_device(&fallback)?, DeviceSource::Fallback, notes))
}

/// Whether the Vulkan loader (`libvulkan.so.1`) loads; where there is no such thing to ask
/// (not Linux), true.
pub fn vulkan_loader_present() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: dlopen of a C string, and dlclose of what it returned.
        unsafe {
            let handle = libc::dlopen(c"libvulkan.so.1".as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if handle.is_null() {
                return false;
            }
            libc::dlclose(handle);
        }
        true
    }
    #[cfg(not(target_os = "linux"))]
    true
}

/// CUDA devices that libtorch sees: 0 in a build without `tch`, with a CPU-only libtorch, or
/// without an NVIDIA driver (libtorch's panic then is caught, and silenced).
pub fn libtorch_cuda_devices() -> usize {
    #[cfg(feature = "tch")]
    {
        use burn::tensor::DeviceType;
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let n = std::panic::catch_unwind(|| Device::enumerate(DeviceType::LibTorch).into_vec().len()).unwrap_or(0);
        std::panic::set_hook(hook);
        n
    }
    #[cfg(not(feature = "tch"))]
    0
}

/// What `cubecl-cuda:index` lacks on this machine, as an error; `Ok` when all is there.
pub fn check_cubecl_cuda(choice: &DeviceChoice) -> Result<(), DeviceError> {
    let missing = crate::cuda_runtime::missing_here(choice.index);
    if missing.is_empty() { Ok(()) } else { Err(DeviceError::CubeclCudaMissing { name: choice.name.clone(), missing }) }
}

/// Builds the Burn device for a parsed choice.
#[allow(deprecated, unreachable_code, unused_variables)]
pub fn build_device(choice: &DeviceChoice) -> Result<Device, DeviceError> {
    let not_compiled = |feature| DeviceError::NotCompiled {
        name: choice.name.clone(),
        feature,
        available: compiled_devices(),
    };
    match choice.spec {
        "flex" => {
            #[cfg(feature = "flex")]
            return Ok(Device::flex());
            Err(not_compiled("flex"))
        }
        "ndarray" => {
            #[cfg(feature = "ndarray")]
            return Ok(Device::ndarray());
            Err(not_compiled("ndarray"))
        }
        "wgpu" => {
            #[cfg(feature = "wgpu")]
            return Ok(Device::wgpu(DeviceKind::DefaultDevice));
            Err(not_compiled("wgpu"))
        }
        "wgpu-cpu" => {
            #[cfg(feature = "wgpu")]
            return Ok(Device::wgpu(DeviceKind::Cpu));
            Err(not_compiled("wgpu"))
        }
        "vulkan" => {
            #[cfg(feature = "vulkan")]
            {
                if !vulkan_loader_present() {
                    return Err(DeviceError::NoVulkanLoader { name: choice.name.clone() });
                }
                return Ok(Device::vulkan(DeviceKind::DefaultDevice));
            }
            Err(not_compiled("vulkan"))
        }
        "metal" => {
            #[cfg(feature = "metal")]
            return Ok(Device::metal(DeviceKind::DefaultDevice));
            Err(not_compiled("metal"))
        }
        "tch-cpu" => {
            #[cfg(feature = "tch")]
            return Ok(Device::libtorch());
            Err(not_compiled("tch"))
        }
        "cuda" => {
            #[cfg(feature = "tch")]
            {
                let found = libtorch_cuda_devices();
                if choice.index >= found {
                    return Err(DeviceError::NoCudaDevice { name: choice.name.clone(), found });
                }
                return Ok(Device::libtorch_cuda(choice.index));
            }
            Err(not_compiled("tch"))
        }
        "mps" => {
            #[cfg(feature = "tch")]
            return Ok(Device::libtorch_mps());
            Err(not_compiled("tch"))
        }
        "cubecl-cuda" => {
            #[cfg(feature = "cubecl-cuda")]
            {
                // Before cudarc: it panics on a missing driver, and a missing libdevice would
                // only show as the first kernel's compilation error.
                check_cubecl_cuda(choice)?;
                return Ok(Device::cuda(choice.index));
            }
            Err(not_compiled("cubecl-cuda"))
        }
        _ => Err(DeviceError::Unknown { name: choice.name.clone(), available: compiled_devices() }),
    }
}

/// The device table as help text, marking what this build has.
pub fn help_text() -> String {
    let mut text = String::from("Devices (--device NAME):\n");
    for d in ALL_DEVICES {
        let shown = shown_name(d);
        let mark = if feature_enabled(d.feature) {
            "compiled in".to_string()
        } else {
            format!("rebuild with --features {}", d.feature)
        };
        text.push_str(&format!("  {shown:<15} {:<44} [{mark}]\n", d.description));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_build_has_flex_and_ndarray() {
        let devices = compiled_devices();
        assert!(devices.contains(&"flex"), "{devices:?}");
        assert!(devices.contains(&"ndarray"), "{devices:?}");
        assert_eq!(parse_device("FLEX").unwrap().name, "flex");
        assert_eq!(parse_device("flex").unwrap().class, DeviceClass::Cpu);
    }

    #[test]
    fn unknown_device_error_lists_the_compiled_devices() {
        let err = parse_device("tpu").unwrap_err().to_string();
        assert!(err.contains("\"tpu\""), "{err}");
        assert!(err.contains("this build has: flex, ndarray"), "{err}");
        let err = parse_device("flex:1").unwrap_err().to_string();
        assert!(err.contains("this build has"), "{err}");
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn device_not_compiled_in_names_the_feature_and_lists_what_is_there() {
        let err = parse_device("cuda:1").unwrap_err();
        assert!(matches!(err, DeviceError::NotCompiled { feature: "tch", .. }));
        let text = err.to_string();
        assert!(text.contains("--features harness/tch"), "{text}");
        assert!(text.contains("this build has: flex, ndarray"), "{text}");
        let text = parse_device("tch").unwrap_err().to_string();
        assert!(text.contains("--features harness/tch"), "{text}");
    }

    #[cfg(not(feature = "metal"))]
    #[test]
    fn metal_needs_its_feature() {
        let text = parse_device("metal").unwrap_err().to_string();
        assert!(text.contains("--features harness/metal") && text.contains("flex"), "{text}");
    }

    #[test]
    fn a_missing_gpu_runtime_says_what_to_install_or_check() {
        let text = DeviceError::NoVulkanLoader { name: "vulkan".into() }.to_string();
        assert!(text.contains("apt-get install libvulkan1") && text.contains("VK_DRIVER_FILES"), "{text}");
        let text = DeviceError::NoCudaDevice { name: "cuda:1".into(), found: 1 }.to_string();
        assert!(text.contains("libtorch sees 1 CUDA device(s)") && text.contains("torch.cuda.is_available()"), "{text}");
        // This machine's loader, as the harness sees it, agrees with the loader's own cache.
        #[cfg(target_os = "linux")]
        {
            let cached = std::process::Command::new("/sbin/ldconfig").arg("-p").output().map(|o| String::from_utf8_lossy(&o.stdout).contains("libvulkan.so.1 ")).ok();
            if let Some(cached) = cached {
                assert_eq!(vulkan_loader_present(), cached);
            }
        }
    }

    #[cfg(not(feature = "cubecl-cuda"))]
    #[test]
    fn cubecl_cuda_is_listed_and_needs_its_feature() {
        let err = parse_device("cubecl-cuda:1").unwrap_err();
        assert!(matches!(err, DeviceError::NotCompiled { feature: "cubecl-cuda", .. }), "{err}");
        assert!(err.to_string().contains("--features harness/cubecl-cuda,trainer/cubecl-cuda"), "{err}");
        let help = help_text();
        assert!(help.contains("cubecl-cuda[:N]") && help.contains("[rebuild with --features cubecl-cuda]"), "{help}");
    }

    #[test]
    fn cubecl_cuda_missing_pieces_are_listed_in_one_error() {
        use crate::cuda_runtime::CudaMissing;
        let e = DeviceError::CubeclCudaMissing {
            name: "cubecl-cuda:0".into(),
            missing: vec![CudaMissing::Driver { error: "not found".into() }, CudaMissing::Libdevice { looked: vec!["/c/nvvm/libdevice/libdevice.10.bc".into()], cuda_path_set: false }],
        };
        let text = e.to_string();
        assert!(text.contains("(1) the NVIDIA driver's libcuda.so.1") && text.contains("(2) libdevice.10.bc") && text.contains("pip install nvidia-nvvm"), "{text}");
    }

    #[test]
    fn bad_cuda_index_is_named() {
        let err = parse_device("cuda:x").unwrap_err();
        assert!(matches!(err, DeviceError::BadIndex { .. }), "{err}");
    }

    #[test]
    fn explicit_flag_beats_burn_device() {
        let (choice, source, notes) = choose_device(Some("ndarray"), Some("flex"), "tch").unwrap();
        assert_eq!(choice.name, "ndarray");
        assert_eq!(source, DeviceSource::Flag);
        assert!(notes[0].contains("BURN_DEVICE=flex is ignored"), "{notes:?}");
        let (choice, source, _) = choose_device(None, Some("ndarray"), "flex").unwrap();
        assert_eq!((choice.name.as_str(), source), ("ndarray", DeviceSource::Env));
        let (choice, source, _) = choose_device(None, None, "ndarray").unwrap();
        assert_eq!((choice.name.as_str(), source), ("ndarray", DeviceSource::Profile));
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn profile_backend_not_compiled_falls_back_to_flex_with_a_note() {
        let (choice, source, notes) = choose_device(None, None, "tch").unwrap();
        assert_eq!((choice.name.as_str(), source), ("flex", DeviceSource::Fallback));
        assert!(notes[0].contains("tch"), "{notes:?}");
    }

    #[test]
    fn help_marks_what_is_compiled() {
        let text = help_text();
        assert!(text.contains("flex") && text.contains("compiled in"), "{text}");
    }
}
