//! Peak FLOP/s and MFU.
//!
//! **MFU** (model FLOPs utilisation), in percent:
//!
//! ```text
//! mfu_percent = flops_per_token * counted_tokens / training_seconds / peak_flops * 100
//! counted_tokens = clock_tokens * (steps - warmup_steps) / steps
//! ```
//!
//! `flops_per_token` comes from the trainer (the reference's `6 * (params - embeddings)` plus
//! attention), `training_seconds` and the tokens from the harness's clock. Warm-up steps are not
//! in `training_seconds`, so their tokens are taken out too (the reference's "steady-state MFU");
//! this assumes every step trains on the same number of tokens, which is how the trainers work.
//!
//! **Peak FLOP/s**: the profile's `peak_flops` when it is above 0 (the reference profile uses
//! the H100 bf16 dense peak, 989.5e12). Otherwise, on a CPU device:
//!
//! ```text
//! peak_flops = cores * simd_f32_lanes * fma_units * 2 * clock_hz
//! ```
//!
//! - `cores`: `std::thread::available_parallelism()` (logical CPUs this process may use; on a
//!   machine with SMT this counts hyperthreads, which share FMA units, so the peak is then
//!   overstated and MFU understated).
//! - `simd_f32_lanes` from the CPU flags: `avx512f` -> 16, `avx2` or `fma` -> 8, `sse` -> 4;
//!   aarch64 `asimd`/NEON -> 4.
//! - `fma_units`: 2 on x86 with AVX2/FMA or AVX-512 (two FMA ports from Haswell on; server
//!   Xeons with AVX-512 have two 512-bit units, some low-end SKUs have only one, which halves
//!   the true peak); 1 on x86 without FMA (an add and a multiply port, counted by the `* 2`);
//!   2 on aarch64 (Neoverse N1/V1 class; Apple's big cores have 4).
//! - `* 2`: one fused multiply-add is two FLOPs.
//! - `clock_hz`: `cpu MHz` of `/proc/cpuinfo` (the current clock, close to base under load),
//!   else `/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq`.
//!
//! On a GPU device without a profile peak, MFU is reported as 0 (`peak_flops_source` =
//! `"unknown"`): the harness does not guess a GPU's peak.

use crate::device::DeviceClass;

/// A CPU's theoretical f32 peak and the figures it was computed from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CpuPeak {
    pub cores: usize,
    pub simd_lanes: u32,
    pub fma_units: u32,
    pub clock_hz: f64,
    pub peak_flops: f64,
    /// The SIMD level the lanes came from (`avx512f`, `avx2`, `sse`, `neon`, `scalar`).
    pub simd: String,
}

/// The CPU peak from `/proc/cpuinfo` text, a core count and a fallback clock in Hz
/// (`cpufreq` max, when `cpuinfo` has no `cpu MHz`). `None` when no clock is known.
pub fn cpu_peak_from_cpuinfo(cpuinfo: &str, cores: usize, fallback_clock_hz: Option<f64>) -> Option<CpuPeak> {
    let field = |key: &str| {
        cpuinfo.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
    };
    let flags: Vec<String> = field("flags")
        .or_else(|| field("Features"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let has = |f: &str| flags.iter().any(|x| x == f);
    let aarch64 = has("asimd") || has("neon") || (flags.is_empty() && cfg!(target_arch = "aarch64"));
    let (simd, lanes, fma_units) = if has("avx512f") {
        ("avx512f", 16, 2)
    } else if has("avx2") || has("fma") {
        ("avx2", 8, 2)
    } else if aarch64 {
        ("neon", 4, 2)
    } else if has("sse") || has("sse2") {
        ("sse", 4, 1)
    } else {
        ("scalar", 1, 1)
    };
    let clock_hz = field("cpu MHz")
        .and_then(|v| v.parse::<f64>().ok())
        .map(|mhz| mhz * 1e6)
        .filter(|hz| *hz > 0.0)
        .or(fallback_clock_hz)?;
    let peak_flops = cores as f64 * lanes as f64 * fma_units as f64 * 2.0 * clock_hz;
    Some(CpuPeak {
        cores,
        simd_lanes: lanes,
        fma_units,
        clock_hz,
        peak_flops,
        simd: simd.to_string(),
    })
}

/// The CPU peak of this machine (Linux: `/proc/cpuinfo`; elsewhere `None`).
pub fn this_cpu_peak() -> Option<CpuPeak> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let fallback = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .map(|khz| khz * 1e3);
    cpu_peak_from_cpuinfo(&cpuinfo, cores, fallback)
}

/// The peak used for MFU and where it came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Peak {
    /// FLOP/s; 0 when unknown.
    pub flops: f64,
    /// `"profile"`, `"cpu_formula"` or `"unknown"`.
    pub source: &'static str,
    /// The CPU figures, when the formula was used.
    pub cpu: Option<CpuPeak>,
}

/// The profile's peak when above 0, else the CPU formula on a CPU device, else unknown.
pub fn choose_peak(profile_peak: f64, class: DeviceClass, cpu: impl FnOnce() -> Option<CpuPeak>) -> Peak {
    if profile_peak > 0.0 && profile_peak.is_finite() {
        return Peak { flops: profile_peak, source: "profile", cpu: None };
    }
    if class == DeviceClass::Cpu {
        if let Some(cpu) = cpu() {
            return Peak { flops: cpu.peak_flops, source: "cpu_formula", cpu: Some(cpu) };
        }
    }
    Peak { flops: 0.0, source: "unknown", cpu: None }
}

/// Tokens of the counted (post-warm-up) steps, assuming equal tokens per step.
pub fn counted_tokens(tokens: u64, steps: u64, warmup_steps: u64) -> f64 {
    if steps == 0 {
        return 0.0;
    }
    tokens as f64 * steps.saturating_sub(warmup_steps) as f64 / steps as f64
}

/// MFU in percent; 0 when the peak or the time is unknown or zero.
pub fn mfu_percent(flops_per_token: f64, counted_tokens: f64, training_seconds: f64, peak_flops: f64) -> f64 {
    if !(peak_flops > 0.0 && training_seconds > 0.0) {
        return 0.0;
    }
    let mfu = flops_per_token * counted_tokens / training_seconds / peak_flops * 100.0;
    if mfu.is_finite() { mfu } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XEON: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\ncpu MHz\t\t: 2200.000\nflags\t\t: fpu vme sse sse2 avx fma avx2 avx512f avx512bw\n\nprocessor\t: 1\ncpu MHz\t\t: 2100.000\n";

    #[test]
    fn avx512_xeon_peak() {
        let p = cpu_peak_from_cpuinfo(XEON, 2, None).unwrap();
        assert_eq!((p.simd_lanes, p.fma_units, p.simd.as_str()), (16, 2, "avx512f"));
        // 2 cores x 16 lanes x 2 FMA units x 2 FLOPs x 2.2 GHz = 281.6 GFLOP/s
        assert!((p.peak_flops - 281.6e9).abs() < 1.0, "{}", p.peak_flops);
    }

    #[test]
    fn avx2_sse_and_neon_lanes() {
        let avx2 = "cpu MHz : 3000.0\nflags : sse sse2 avx fma avx2\n";
        let p = cpu_peak_from_cpuinfo(avx2, 4, None).unwrap();
        assert_eq!(p.peak_flops, 4.0 * 8.0 * 2.0 * 2.0 * 3e9);
        let sse = "cpu MHz : 1000.0\nflags : fpu sse sse2\n";
        let p = cpu_peak_from_cpuinfo(sse, 1, None).unwrap();
        assert_eq!(p.peak_flops, 4.0 * 1.0 * 2.0 * 1e9);
        let arm = "processor : 0\nFeatures : fp asimd evtstrm aes\n";
        assert!(cpu_peak_from_cpuinfo(arm, 8, None).is_none(), "no clock, no peak");
        let p = cpu_peak_from_cpuinfo(arm, 8, Some(2.0e9)).unwrap();
        assert_eq!((p.simd.as_str(), p.peak_flops), ("neon", 8.0 * 4.0 * 2.0 * 2.0 * 2e9));
    }

    #[test]
    fn peak_choice_and_mfu() {
        let cpu = || cpu_peak_from_cpuinfo(XEON, 2, None);
        assert_eq!(choose_peak(989.5e12, DeviceClass::Gpu, cpu).source, "profile");
        assert_eq!(choose_peak(0.0, DeviceClass::Cpu, cpu).source, "cpu_formula");
        let gpu = choose_peak(0.0, DeviceClass::Gpu, cpu);
        assert_eq!((gpu.flops, gpu.source), (0.0, "unknown"));
        assert_eq!(counted_tokens(1000, 10, 2), 800.0);
        assert_eq!(counted_tokens(1000, 0, 2), 0.0);
        // Reference: 953 steps of 2^19 tokens, 300.1 s, 989.5e12 peak.
        let fpt = 0.398 * 989.5e12 * 300.1 / (943.0 * 524288.0);
        let mfu = mfu_percent(fpt, counted_tokens(953 * 524288, 953, 10), 300.1, 989.5e12);
        assert!((mfu - 39.8).abs() < 1e-9, "{mfu}");
        assert_eq!(mfu_percent(1.0, 1.0, 0.0, 1.0), 0.0);
        assert_eq!(mfu_percent(1.0, 1.0, 1.0, 0.0), 0.0);
    }
}
