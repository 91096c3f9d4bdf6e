//! `autoresearch bench` end to end at a tiny size: the real bench_step on flex (and ndarray),
//! a stand-in PyTorch command, and the CSV and JSON it leaves.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn autoresearch(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_autoresearch")).args(args).current_dir(workspace()).output().unwrap()
}

#[test]
fn bench_runs_each_backend_beside_torch_and_writes_csv_and_json() {
    if !workspace().join("target/release/bench_step").exists() {
        panic!("target/release/bench_step is missing: run `cargo build --release --workspace` first");
    }
    let dir = tempfile::tempdir().unwrap();
    let torch = dir.path().join("torch.sh");
    // Echoes its flags to stderr and reports a fixed 1000 tokens/s.
    std::fs::write(&torch, "echo \"$@\" > \"$(dirname \"$0\")/torch-args\"\necho '{\"torch\": \"stand-in\", \"tokens_per_s\": 1000.0, \"step_s\": 0.5}'\n").unwrap();
    let out = dir.path().join("out");
    let o = autoresearch(&[
        "bench", "--no-build", "--size", "64x2:2x32:h2", "--vocab", "256", "--steps", "2", "--warmup", "1",
        "--devices", "flex,ndarray", "--repeat", "2", "--vs-torch", &format!("sh {}", torch.display()), "--out", out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("| 64x2:2x32:h2 | burn flex |"), "{stdout}");
    // The PyTorch command got the same sizes.
    let targs = std::fs::read_to_string(dir.path().join("torch-args")).unwrap();
    assert!(targs.contains("--depth 2 --width 64 --heads 2 --vocab 256 --batch 2 --seq 32 --steps 2 --warmup 1"), "{targs}");

    let csv = std::fs::read_to_string(out.join("bench.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[0].starts_with("size,implementation,params,tokens_per_s,step_s,mfu_percent,peak_mem_mb"));
    assert!(lines[1].starts_with("64x2:2x32:h2,torch stand-in,,1000,0.5,"), "{csv}");

    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("bench.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let mut losses = Vec::new();
    for r in &rows[1..] {
        assert!(r["error"].is_null(), "{r}");
        let tps = r["tokens_per_s"].as_f64().unwrap();
        assert!(tps > 0.0);
        assert!((r["vs_torch"].as_f64().unwrap() - tps / 1000.0).abs() < 1e-9);
        assert!(r["step_s"].as_f64().unwrap() > 0.0);
        assert_eq!(r["rounds"], 2);
        assert!(r["tokens_per_s_min"].as_f64().unwrap() <= tps && tps <= r["tokens_per_s_max"].as_f64().unwrap());
        assert!(r["peak_mem_mb"].as_f64().unwrap() > 0.0);
        assert_eq!(r["memory_source"], "process_peak_rss");
        assert!(r["mfu_percent"].as_f64().is_some() && r["startup_s"].as_f64().is_some() && r["first_step_s"].as_f64().is_some());
        losses.push(r["loss"].as_f64().unwrap());
    }
    // Same model, same data, same seed: the backends agree on the loss after 3 steps.
    assert!((losses[0] - losses[1]).abs() < 0.05, "{losses:?}");
    assert!(losses[0] > 0.0 && losses[0] < 10.0);
    // Nothing half-written is left beside the files.
    let names: Vec<String> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn bench_rejects_bad_flags_with_usage_errors() {
    for (args, needle) in [
        (vec!["bench", "--no-build", "--size", "huge"], "--size \"huge\""),
        (vec!["bench", "--no-build", "--steps", "0"], "--steps"),
        (vec!["bench", "--no-build", "--optim", "sgd"], "--optim"),
        (vec!["bench", "--no-build", "--devices", ","], "--devices"),
        (vec!["bench", "--no-build", "--repeat", "0"], "--repeat"),
    ] {
        let o = autoresearch(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(needle), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // An unknown device is that backend's error row, not a crash; with no backend left, exit 1.
    let dir = tempfile::tempdir().unwrap();
    let o = autoresearch(&["bench", "--no-build", "--size", "64x1:1x16:h2", "--vocab", "64", "--steps", "1", "--devices", "nosuch", "--out", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let csv = std::fs::read_to_string(dir.path().join("bench.csv")).unwrap();
    assert!(csv.contains("burn nosuch") && csv.contains("unknown device"), "{csv}");
}
