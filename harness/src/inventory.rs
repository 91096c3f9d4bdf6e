//! `harness --list-devices`: the devices this build can run on, found by the backends
//! themselves (wgpu's adapters through Burn's `Device::enumerate`, CUDA and MPS through
//! libtorch), as JSON for `autoresearch detect`. The runner can't see these on its own: it
//! has no Burn, and nvidia-smi or Vulkan ICD files say nothing of Metal, DX12, or what a given
//! build of libtorch can use.

use serde::Serialize;

#[derive(Debug, Clone, Serialize, Default)]
pub struct Inventory {
    /// `--device` names compiled into this build (`cuda` also takes `:N`).
    pub compiled: Vec<String>,
    /// wgpu adapters (Vulkan, Metal or DX12, whichever wgpu picks on this platform).
    pub wgpu: Vec<Adapter>,
    /// Present in a build with the `tch` feature.
    pub libtorch: Option<LibTorch>,
    /// Present in a build with the `cubecl-cuda` feature: what Burn's CUDA backend finds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cubecl_cuda: Option<CubeclCuda>,
    /// What could not be asked, and why.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Adapter {
    /// Burn's name for the device, e.g. `DiscreteGpu(0)`.
    pub device: String,
    /// The adapter's own name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: Option<String>,
    /// No physical card behind it: a CPU or a software rasterizer (Mesa's lavapipe).
    pub software: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CubeclCuda {
    /// CUDA devices the NVIDIA driver sees (0 without a driver).
    pub devices: usize,
    /// What `--device cubecl-cuda` lacks here (the driver, libdevice), each with its package.
    pub missing: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LibTorch {
    pub cuda_devices: usize,
    pub mps: bool,
}

/// Runs `f`, turning a backend's panic (no driver, no adapter) into a note.
#[allow(dead_code)]
fn ask<T>(what: &str, notes: &mut Vec<String>, f: impl FnOnce() -> T) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            notes.push(format!("{what}: {}", msg.lines().next().unwrap_or("failed")));
            None
        }
    }
}

/// `Device<Cube(Wgpu(WgpuDevice { kind: DiscreteGpu(0), backend: Auto }))>` -> `DiscreteGpu(0), backend Auto`.
#[allow(dead_code)]
fn short_name(debug: &str) -> String {
    match debug.split_once("{ kind: ").and_then(|(_, rest)| rest.split_once(" }")) {
        Some((inner, _)) => inner.replace(", backend: ", ", backend "),
        None => debug.to_string(),
    }
}

pub fn inventory() -> Inventory {
    let mut inv = Inventory { compiled: experiment::device::compiled_devices().iter().map(|s| s.trim_end_matches("[:N]").to_string()).collect(), ..Default::default() };
    // Backends that find nothing may panic; their messages go into `notes`, not stderr.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    #[cfg(feature = "wgpu")]
    {
        use burn::prelude::Device;
        use burn::tensor::DeviceType;
        let devices = ask("wgpu adapters", &mut inv.notes, || Device::enumerate(DeviceType::Wgpu).into_vec()).unwrap_or_default();
        for d in devices {
            let identity = ask("wgpu adapter identity", &mut inv.notes, || d.identity()).flatten();
            inv.wgpu.push(Adapter {
                device: short_name(&format!("{d:?}")),
                software: identity.as_ref().is_none_or(|i| i.physical.is_none()),
                name: identity.map(|i| i.name),
            });
        }
        if inv.wgpu.is_empty() {
            inv.notes.push("wgpu found no adapter (it skips software ones; `--device wgpu-cpu` forces Mesa's lavapipe)".into());
        }
    }
    // burn-tch is deprecated in Burn 0.22 but is how this project reaches CUDA and MPS.
    #[cfg(feature = "tch")]
    #[allow(deprecated)]
    {
        use burn::prelude::{Device, Tensor};
        use burn::tensor::DeviceType;
        let cuda_devices = ask("libtorch CUDA", &mut inv.notes, || Device::enumerate(DeviceType::LibTorch).into_vec().len()).unwrap_or(0);
        // Asking libtorch for MPS off Apple hardware only prints errors.
        let mps = cfg!(target_os = "macos")
            && ask("libtorch MPS", &mut inv.notes, || Tensor::<1>::zeros([1], &Device::libtorch_mps()).into_data()).is_some();
        inv.libtorch = Some(LibTorch { cuda_devices, mps });
    }
    #[cfg(feature = "cubecl-cuda")]
    {
        let devices = experiment::cuda_runtime::probe_driver().map(|(_, n)| n).unwrap_or(0);
        let missing = experiment::cuda_runtime::missing_here(0).iter().map(ToString::to_string).collect();
        inv.cubecl_cuda = Some(CubeclCuda { devices, missing });
    }
    std::panic::set_hook(hook);
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_shortened() {
        assert_eq!(short_name("Device<Cube(Wgpu(WgpuDevice { kind: DiscreteGpu(0), backend: Auto }))>"), "DiscreteGpu(0), backend Auto");
        assert_eq!(short_name("Flex"), "Flex");
    }

    #[test]
    fn lists_the_compiled_cpu_backends_and_never_panics() {
        let inv = inventory();
        assert!(inv.compiled.iter().any(|d| d == "flex"), "{inv:?}");
        let json = serde_json::to_value(&inv).unwrap();
        assert!(json["wgpu"].is_array() && json["notes"].is_array(), "{json}");
        #[cfg(feature = "tch")]
        assert!(json["libtorch"]["cuda_devices"].is_u64(), "{json}");
    }
}
