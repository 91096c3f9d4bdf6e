//! `autoresearch detect`: what hardware is here, which platform profile and backend fit it, and
//! what that profile changes, printed for a person or as JSON. The choice itself is `platform`'s.

use std::path::Path;

use anyhow::Result;

use crate::config::ResearchConfig;
use crate::errors::code;
use crate::platform::Detection;
use crate::platform::hardware::TESTED_PYTORCH;

/// Detects with the build features `features` and prints the result (`json`: machine-readable).
pub fn run(root: &Path, cfg: &ResearchConfig, features: &str, json: bool) -> Result<i32> {
    let d = crate::platform::detect(root, cfg, features)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print!("{}", render(&d));
    }
    Ok(code::OK)
}

/// Human-readable report.
pub fn render(d: &Detection) -> String {
    let mut s = render_hardware(d);
    s.push_str(&render_profile(d));
    s
}

/// The CPU, the GPUs, Vulkan, PyTorch and what the build's backends found.
fn render_hardware(d: &Detection) -> String {
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
    s
}

/// The profile picked, what it changes in the trainer, how to rebuild, the agents found.
fn render_profile(d: &Detection) -> String {
    let mut s = String::new();
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
