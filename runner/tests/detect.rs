//! `autoresearch detect` reads what the built harness finds through its backends
//! (`harness --list-devices`): a GPU that only wgpu sees (Metal, DX12) or only libtorch sees
//! decides the profile, and a harness that can't answer is reported, not fatal. The harness
//! here is a script printing what a real one prints (see harness/src/inventory.rs, whose own
//! test runs the real enumeration).

mod common;
use common::*;

fn with_harness(fx: &Fixture, script: &str) {
    let dir = fx.repo.join("target/release");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("harness");
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    for p in ["cuda", "wgpu", "mps"] {
        std::fs::write(fx.repo.join(format!("configs/platforms/{p}.toml")), format!("name = \"{p}\"\nclass = \"gpu\"\nbackend = \"{p}\"\n")).unwrap();
    }
}

fn detect(fx: &Fixture) -> (serde_json::Value, String) {
    let o = fx.run(&["detect", "--json"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let json = serde_json::from_slice(&o.stdout).unwrap();
    let o = fx.run(&["detect"]);
    assert!(o.status.success(), "{}", stdout(&o));
    (json, String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn a_gpu_seen_only_through_wgpu_picks_the_wgpu_profile() {
    let fx = Fixture::new("[gpu]\n", "");
    if std::path::Path::new("/proc/driver/nvidia").exists() {
        return; // a real NVIDIA GPU would win
    }
    with_harness(
        &fx,
        r#"[ "$1" = --list-devices ] || exit 2
echo '{"compiled": ["flex", "ndarray", "wgpu", "wgpu-cpu"], "wgpu": [{"device": "DiscreteGpu(0)", "name": "Apple M3 Max", "software": false}, {"device": "Cpu", "name": "llvmpipe", "software": true}], "libtorch": null, "notes": []}'"#,
    );
    let (d, text) = detect(&fx);
    assert_eq!(d["build_devices"]["wgpu"][0]["name"], "Apple M3 Max", "{d:#}");
    if !cfg!(target_os = "macos") {
        assert_eq!(d["recommended_profile"], "wgpu", "{d:#}");
        assert_eq!(d["profile"], "wgpu", "{d:#}");
    }
    assert!(text.contains("wgpu adapters (through Burn): Apple M3 Max (DiscreteGpu(0)), llvmpipe (Cpu, software)"), "{text}");
    assert!(text.contains("libtorch: not in this build"), "{text}");
}

#[test]
fn cuda_through_libtorch_picks_cuda_and_a_failing_harness_is_reported() {
    let fx = Fixture::new("[gpu]\n", "");
    with_harness(
        &fx,
        r#"echo '{"compiled": ["flex", "tch-cpu", "cuda", "mps"], "wgpu": [], "libtorch": {"cuda_devices": 2, "mps": false}, "notes": ["wgpu found no adapter"]}'"#,
    );
    let (d, text) = detect(&fx);
    assert_eq!(d["recommended_profile"], "cuda", "{d:#}");
    assert_eq!(d["profile"], "cuda", "{d:#}");
    assert!(d["rebuild_hint"].is_null(), "the build has tch: {d:#}");
    assert_eq!(d["build_backends"], serde_json::json!(["flex", "tch"]), "{d:#}");
    assert!(text.contains("libtorch: 2 CUDA device(s), MPS no") && text.contains("note: wgpu found no adapter"), "{text}");

    with_harness(&fx, "echo 'libtorch_cuda.so: cannot open shared object file' >&2; exit 127");
    let (d, text) = detect(&fx);
    assert!(d["build_devices"].is_null(), "{d:#}");
    assert!(text.contains("devices not asked through the backends") && text.contains("cannot open shared object"), "{text}");
}
