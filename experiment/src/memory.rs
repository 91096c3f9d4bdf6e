//! Peak memory of a run.
//!
//! - `device_pool`: where the backend reports an allocator (`Device::memory_pool_usage()`, the
//!   CubeCL backends such as wgpu), `peak_vram_mb = bytes_reserved / 2^20`, sampled by the
//!   trainer when training ends and reported to the harness (a figure the trainer could
//!   misstate: the JSON says where it came from). Burn reports what the pool holds *now*, not a
//!   high-water mark, but pools keep their pages for reuse, so the reserved bytes approximate
//!   the peak.
//! - `process_peak_rss`: otherwise (flex, ndarray, LibTorch), the peak resident set of the
//!   trainer process, which the harness measures itself (`ru_maxrss` when it reaps the
//!   trainer; `VmHWM` of `/proc/self/status` for a process measuring itself, as the benchmark
//!   does), from kB to MiB. On a LibTorch GPU this does not see GPU memory.
//! - `unavailable`: neither: 0.

use burn::prelude::Device;

/// A peak-memory figure and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PeakMemory {
    /// MiB (the reference's `peak_vram_mb` is `max_memory_allocated / 1024 / 1024`).
    pub mb: f64,
    /// `"device_pool"`, `"process_peak_rss"` or `"unavailable"`.
    pub source: &'static str,
}

/// `VmHWM` (peak resident set) in kB from `/proc/self/status` text.
pub fn parse_vmhwm_kb(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix("VmHWM:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// This process's peak resident set in MiB, when the OS says.
pub fn process_peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vmhwm_kb(&status).map(|kb| kb as f64 / 1024.0)
}

/// Samples a device's pool; keep the largest of several samples with [`MemoryTracker`].
pub fn device_pool_mb(device: &Device) -> Option<f64> {
    device
        .memory_pool_usage()
        .map(|u| u.bytes_reserved.max(u.bytes_in_use) as f64 / (1024.0 * 1024.0))
}

/// Keeps the largest device-pool sample of a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryTracker {
    pool_mb: Option<f64>,
}

impl MemoryTracker {
    /// Records what the device pool holds now (nothing on a backend without one).
    pub fn sample(&mut self, device: &Device) {
        if let Some(mb) = device_pool_mb(device) {
            self.pool_mb = Some(self.pool_mb.map_or(mb, |old| old.max(mb)));
        }
    }

    /// The device-pool peak when the backend has a pool, else the process peak RSS.
    pub fn peak(&self) -> PeakMemory {
        choose(self.pool_mb, process_peak_rss_mb)
    }
}

/// The device-pool figure when there is one, else the peak resident set.
pub fn choose(pool_mb: Option<f64>, rss: impl FnOnce() -> Option<f64>) -> PeakMemory {
    match pool_mb {
        Some(mb) => PeakMemory { mb, source: "device_pool" },
        None => match rss() {
            Some(mb) => PeakMemory { mb, source: "process_peak_rss" },
            None => PeakMemory { mb: 0.0, source: "unavailable" },
        },
    }
}

/// One line saying where the peak-memory figure came from, printed before the summary.
pub fn describe(peak: &PeakMemory) -> String {
    let how = match peak.source {
        "device_pool" => "bytes reserved by the device memory pool, as the trainer reported them",
        "process_peak_rss" => "peak resident set of the trainer process; the backend has no device pool",
        _ => "no memory figure available on this platform",
    };
    format!("memory_source: {} ({how})", peak.source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmhwm_is_parsed_from_proc_status() {
        let status = "Name:\tharness\nVmPeak:\t 9000 kB\nVmHWM:\t   204800 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vmhwm_kb(status), Some(204800));
        assert_eq!(parse_vmhwm_kb("Name: x\n"), None);
    }

    #[test]
    fn pool_beats_rss_and_rss_beats_nothing() {
        assert_eq!(choose(Some(10.0), || Some(99.0)), PeakMemory { mb: 10.0, source: "device_pool" });
        assert_eq!(choose(None, || Some(99.0)).source, "process_peak_rss");
        assert_eq!(choose(None, || None), PeakMemory { mb: 0.0, source: "unavailable" });
    }

    #[cfg(all(target_os = "linux", feature = "flex"))]
    #[test]
    fn flex_has_no_pool_so_rss_is_used() {
        let mut t = MemoryTracker::default();
        t.sample(&Device::flex());
        let p = t.peak();
        assert_eq!(p.source, "process_peak_rss");
        assert!(p.mb > 0.0);
    }
}
