//! `autoresearch bench`: training-step throughput of the trainer on every backend of the build,
//! optionally beside PyTorch, at one or more model sizes.
//!
//! Each backend runs in its own `bench_step` process (trainer/src/bin/bench_step.rs), so the
//! peak resident set it reports (VmHWM on CPU backends) is that backend's alone. The PyTorch
//! side (`--vs-torch`) runs at the same sizes in the same invocation, right before the Burn
//! backends of each size, and every row gets its ratio to it: on a shared machine only ratios
//! measured side by side mean anything.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::errors::{code, usage};
use crate::git::Git;

/// A model and batch shape to benchmark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Size {
    pub name: String,
    pub width: usize,
    pub depth: usize,
    pub heads: usize,
    pub batch: usize,
    pub seq: usize,
}

/// The two benchmark sizes.
pub const PRESETS: &[(&str, &str)] = &[("small", "256x4:8x256"), ("large", "512x8:4x1024")];

/// `small`, `large`, or `WIDTHxDEPTH:BATCHxSEQ[:hHEADS]` (4 heads when not given).
pub fn parse_size(text: &str) -> Result<Size> {
    let bad = || {
        usage(format!(
            "--size {text:?}: expected small ({}), large ({}) or WIDTHxDEPTH:BATCHxSEQ[:hHEADS], e.g. 256x4:8x256:h4",
            PRESETS[0].1, PRESETS[1].1
        ))
    };
    let spec = PRESETS.iter().find(|(name, _)| *name == text).map(|(_, spec)| *spec).unwrap_or(text);
    let parts: Vec<&str> = spec.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(bad());
    }
    let pair = |s: &str| -> Option<(usize, usize)> {
        let (a, b) = s.split_once('x')?;
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    };
    let (width, depth) = pair(parts[0]).ok_or_else(bad)?;
    let (batch, seq) = pair(parts[1]).ok_or_else(bad)?;
    let heads = match parts.get(2) {
        Some(h) => h.strip_prefix('h').and_then(|n| n.parse().ok()).ok_or_else(bad)?,
        None => 4,
    };
    if [width, depth, batch, seq, heads].contains(&0) {
        return Err(usage(format!("--size {text:?}: every dimension must be at least 1")));
    }
    if width % heads != 0 {
        return Err(usage(format!("--size {text:?}: width {width} is not a multiple of {heads} heads")));
    }
    Ok(Size { name: if spec == text { text.to_string() } else { format!("{text} ({spec})") }, width, depth, heads, batch, seq })
}

/// What `autoresearch bench` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub sizes: Vec<Size>,
    pub vocab: usize,
    /// `None`: every CPU device of the build.
    pub devices: Option<Vec<String>>,
    pub steps: usize,
    pub warmup: usize,
    /// Rounds per size, alternating PyTorch and the backends; each keeps its median.
    pub repeat: usize,
    /// `muon` (the trainer's MuonAdamW) or `adamw` (Burn's AdamW, like the PyTorch side).
    pub optim: String,
    /// `Some("")`: the default PyTorch script; `Some(cmd)`: that command.
    pub vs_torch: Option<String>,
    pub python: String,
    pub out: PathBuf,
    /// Build the workspace first (`cargo build --release --locked --workspace`).
    pub build: bool,
    /// Extra cargo features for that build (e.g. `tch`).
    pub features: String,
}

/// One implementation at one size.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub size: String,
    pub implementation: String,
    pub params: Option<u64>,
    pub tokens_per_s: Option<f64>,
    pub step_s: Option<f64>,
    pub mfu_percent: Option<f64>,
    pub peak_mem_mb: Option<f64>,
    pub memory_source: Option<String>,
    pub startup_s: Option<f64>,
    pub first_step_s: Option<f64>,
    pub loss: Option<f64>,
    pub vs_torch: Option<f64>,
    /// Rounds run (`--repeat`) and the lowest and highest tokens/s among them.
    pub rounds: Option<usize>,
    pub tokens_per_s_min: Option<f64>,
    pub tokens_per_s_max: Option<f64>,
    pub error: Option<String>,
}

/// The default PyTorch side: `../shared/bench/torch_reference.py` beside the repository.
pub fn default_torch_script(root: &Path) -> PathBuf {
    root.join("..").join("shared").join("bench").join("torch_reference.py")
}

pub fn validate(opts: &Options) -> Result<()> {
    if opts.sizes.is_empty() {
        return Err(usage("--size: give at least one size"));
    }
    if opts.steps == 0 {
        return Err(usage("--steps must be at least 1"));
    }
    if opts.repeat == 0 {
        return Err(usage("--repeat must be at least 1"));
    }
    if opts.vocab < 2 {
        return Err(usage("--vocab must be at least 2"));
    }
    if !matches!(opts.optim.as_str(), "muon" | "adamw") {
        return Err(usage(format!("--optim {:?}: expected muon or adamw", opts.optim)));
    }
    if let Some(devices) = &opts.devices {
        if devices.is_empty() {
            return Err(usage("--devices: give at least one device (e.g. flex,ndarray)"));
        }
    }
    Ok(())
}

/// Runs the benchmark; prints the table and writes `bench.csv` and `bench.json` under `out`.
pub fn run(git: &Git, opts: &Options) -> Result<i32> {
    validate(opts)?;
    let root = &git.root;
    if opts.build {
        let cfg = crate::config::ResearchConfig { features: opts.features.clone(), ..Default::default() };
        let cmd = crate::executor::workspace_build_command(&cfg);
        crate::executor::build_tree::hand_back_locked(root);
        eprintln!("$ {cmd}");
        let status = Command::new("sh").arg("-c").arg(&cmd).current_dir(root).status().context("cannot run cargo")?;
        if !status.success() {
            bail!("the build failed ({status}); `--no-build` uses what target/release already has");
        }
    }
    let bin = crate::layout::target_dir(root).join("release").join("bench_step");
    if !bin.exists() {
        bail!("{} is missing: build the workspace (cargo build --release --workspace) or drop --no-build", bin.display());
    }
    let devices = match &opts.devices {
        Some(d) => d.clone(),
        None => cpu_devices(&bin)?,
    };
    let torch_cmd = opts.vs_torch.as_ref().map(|c| {
        if c.trim().is_empty() { format!("{} {}", opts.python, shell_quote(&default_torch_script(root).display().to_string())) } else { c.clone() }
    });

    let mut rows = Vec::new();
    for size in &opts.sizes {
        // Rounds alternate PyTorch and the backends, so a load that comes and goes on a shared
        // machine falls on both sides; each implementation keeps its median round.
        let mut rounds: Vec<Vec<Row>> = Vec::new();
        for round in 0..opts.repeat {
            let mut this = Vec::new();
            if let Some(cmd) = &torch_cmd {
                eprintln!("bench: {} round {} PyTorch ({cmd})", size.name, round + 1);
                this.push(run_torch(cmd, size, opts, root));
            }
            for device in &devices {
                eprintln!("bench: {} round {} {device}", size.name, round + 1);
                this.push(run_burn(&bin, device, size, opts, root));
            }
            rounds.push(this);
        }
        let mut merged: Vec<Row> = (0..rounds[0].len()).map(|i| median_round(rounds.iter().map(|r| r[i].clone()).collect())).collect();
        let torch_tps = merged.iter().find(|r| r.implementation.starts_with("torch")).and_then(|r| r.tokens_per_s).filter(|_| torch_cmd.is_some());
        for row in &mut merged {
            row.vs_torch = ratio(row.tokens_per_s, torch_tps);
        }
        rows.extend(merged);
    }

    print!("{}", render_table(&rows, opts));
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    let json = serde_json::json!({
        "steps": opts.steps, "warmup": opts.warmup, "vocab": opts.vocab, "optim": opts.optim,
        "commit": git_head(root), "sizes": opts.sizes, "rows": rows,
    });
    write_atomic(&opts.out.join("bench.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    write_atomic(&opts.out.join("bench.csv"), to_csv(&rows).as_bytes())?;
    eprintln!("bench: wrote {} and {}", opts.out.join("bench.csv").display(), opts.out.join("bench.json").display());
    let burn_rows: Vec<&Row> = rows.iter().filter(|r| !r.implementation.starts_with("torch")).collect();
    if !burn_rows.is_empty() && burn_rows.iter().all(|r| r.error.is_some()) {
        eprintln!("error: no backend finished");
        return Ok(code::FAILURE);
    }
    Ok(code::OK)
}

/// The round with the median tokens/s (the lower middle one for an even count), with the
/// spread of all rounds; a failed round counts only when every round failed.
fn median_round(mut runs: Vec<Row>) -> Row {
    let all = runs.len();
    let first = runs[0].clone();
    runs.retain(|r| r.error.is_none() && r.tokens_per_s.is_some());
    if runs.is_empty() {
        return Row { rounds: Some(all), ..first };
    }
    runs.sort_by(|a, b| a.tokens_per_s.partial_cmp(&b.tokens_per_s).unwrap_or(std::cmp::Ordering::Equal));
    let (lo, hi) = (runs[0].tokens_per_s, runs[runs.len() - 1].tokens_per_s);
    let mut row = runs[(runs.len() - 1) / 2].clone();
    row.rounds = Some(all);
    row.tokens_per_s_min = lo;
    row.tokens_per_s_max = hi;
    row
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn size_args(size: &Size, opts: &Options) -> Vec<String> {
    let mut v = Vec::new();
    for (flag, value) in [
        ("--depth", size.depth),
        ("--width", size.width),
        ("--heads", size.heads),
        ("--vocab", opts.vocab),
        ("--batch", size.batch),
        ("--seq", size.seq),
        ("--steps", opts.steps),
        ("--warmup", opts.warmup),
    ] {
        v.push(flag.to_string());
        v.push(value.to_string());
    }
    v
}

/// The devices of the build that run on the CPU (`bench_step --list-devices`).
fn cpu_devices(bin: &Path) -> Result<Vec<String>> {
    let out = Command::new(bin).arg("--list-devices").output().with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} --list-devices failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let devices: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["class"] == "cpu")
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    if devices.is_empty() {
        bail!("{} lists no CPU device; pass --devices", bin.display());
    }
    Ok(devices)
}

/// The last line of `stdout` that parses as a JSON object and satisfies `pick`.
fn last_json(stdout: &str, pick: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
    stdout.lines().rev().filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok()).find(|v| v.is_object() && pick(v))
}

fn tail(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.trim().lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

fn run_burn(bin: &Path, device: &str, size: &Size, opts: &Options, root: &Path) -> Row {
    let mut row = Row { size: size.name.clone(), implementation: format!("burn {device}"), ..Default::default() };
    let out = Command::new(bin)
        .args(size_args(size, opts))
        .args(["--devices", device, "--optim", &opts.optim])
        .current_dir(root)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            row.error = Some(format!("cannot run {}: {e}", bin.display()));
            return row;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    match last_json(&stdout, |v| v["impl"].as_str().is_some_and(|s| s.starts_with("burn-"))) {
        Some(v) if out.status.success() => {
            let f = |k: &str| v[k].as_f64();
            row.tokens_per_s = f("tokens_per_s");
            row.step_s = f("step_s");
            row.mfu_percent = f("mfu_percent");
            row.peak_mem_mb = f("peak_mem_mb");
            row.memory_source = v["memory_source"].as_str().map(str::to_string);
            row.startup_s = f("startup_s");
            row.first_step_s = f("first_step_s");
            row.loss = f("loss");
            row.params = v["params"].as_u64();
        }
        _ => row.error = Some(format!("bench_step failed ({}): {}", out.status, tail(&out.stderr))),
    }
    row
}

fn run_torch(cmd: &str, size: &Size, opts: &Options, root: &Path) -> Row {
    let mut row = Row { size: size.name.clone(), implementation: "torch".into(), ..Default::default() };
    let line = format!("{cmd} {}", size_args(size, opts).join(" "));
    let out = match Command::new("sh").arg("-c").arg(&line).current_dir(root).output() {
        Ok(o) => o,
        Err(e) => {
            row.error = Some(format!("cannot run sh -c {line:?}: {e}"));
            return row;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    match last_json(&stdout, |v| v["tokens_per_s"].is_number()) {
        Some(v) if out.status.success() => {
            if let Some(version) = v["torch"].as_str() {
                row.implementation = format!("torch {version}");
            }
            row.tokens_per_s = v["tokens_per_s"].as_f64();
            row.step_s = v["step_s"].as_f64();
            row.loss = v["loss"].as_f64();
            row.params = v["params"].as_u64();
        }
        Some(_) | None if !out.status.success() => row.error = Some(format!("`{line}` failed ({}): {}", out.status, tail(&out.stderr))),
        _ => row.error = Some(format!("`{line}` printed no JSON line with tokens_per_s")),
    }
    row
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
}

pub fn render_table(rows: &[Row], opts: &Options) -> String {
    let mut s = format!(
        "\n{} timed steps after {} warm-up, V {}, optimizer {} (PyTorch: AdamW)\n\n",
        opts.steps, opts.warmup, opts.vocab, opts.optim
    );
    s.push_str("| size | implementation | tokens/s | range (rounds) | step (s) | MFU % | peak MB | start-up (s) | first step (s) | loss | vs torch |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        if let Some(e) = &r.error {
            s.push_str(&format!("| {} | {} | error: {e} | | | | | | | | |\n", r.size, r.implementation));
            continue;
        }
        let range = match (r.tokens_per_s_min, r.tokens_per_s_max, r.rounds) {
            (Some(lo), Some(hi), Some(n)) if n > 1 => format!("{lo:.0}-{hi:.0} ({n})"),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {range} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.size,
            r.implementation,
            fmt(r.tokens_per_s, 0),
            fmt(r.step_s, 3),
            fmt(r.mfu_percent, 1),
            fmt(r.peak_mem_mb, 0),
            fmt(r.startup_s, 2),
            fmt(r.first_step_s, 2),
            fmt(r.loss, 4),
            r.vs_torch.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into()),
        ));
    }
    s
}

pub const CSV_HEADER: &str =
    "size,implementation,params,tokens_per_s,step_s,mfu_percent,peak_mem_mb,memory_source,startup_s,first_step_s,loss,vs_torch,rounds,tokens_per_s_min,tokens_per_s_max,error";

pub fn to_csv(rows: &[Row]) -> String {
    let mut s = String::from(CSV_HEADER);
    s.push('\n');
    let num = |x: Option<f64>| x.map(|v| format!("{v}")).unwrap_or_default();
    for r in rows {
        let fields = [
            csv_field(&r.size),
            csv_field(&r.implementation),
            r.params.map(|p| p.to_string()).unwrap_or_default(),
            num(r.tokens_per_s),
            num(r.step_s),
            num(r.mfu_percent),
            num(r.peak_mem_mb),
            csv_field(r.memory_source.as_deref().unwrap_or("")),
            num(r.startup_s),
            num(r.first_step_s),
            num(r.loss),
            num(r.vs_torch),
            r.rounds.map(|n| n.to_string()).unwrap_or_default(),
            num(r.tokens_per_s_min),
            num(r.tokens_per_s_max),
            csv_field(r.error.as_deref().unwrap_or("")),
        ];
        s.push_str(&fields.join(","));
        s.push('\n');
    }
    s
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:=".contains(c)) { s.to_string() } else { format!("'{}'", s.replace('\'', "'\\''")) }
}

fn git_head(root: &Path) -> Option<String> {
    let out = Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(root).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.flush()?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_presets_and_specs_and_name_bad_input() {
        let s = parse_size("small").unwrap();
        assert_eq!((s.width, s.depth, s.batch, s.seq, s.heads), (256, 4, 8, 256, 4));
        let l = parse_size("large").unwrap();
        assert_eq!((l.width, l.depth, l.batch, l.seq), (512, 8, 4, 1024));
        let c = parse_size("64x2:2x32:h2").unwrap();
        assert_eq!((c.width, c.depth, c.batch, c.seq, c.heads, c.name.as_str()), (64, 2, 2, 32, 2, "64x2:2x32:h2"));
        for bad in ["huge", "64x2", "64:2x32", "64x2:2x32:2", "0x2:2x32", "66x2:2x32:h4"] {
            let e = parse_size(bad).unwrap_err();
            assert_eq!(crate::errors::exit_code_of(&e), code::USAGE, "{bad}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn csv_quotes_fields_and_leaves_missing_figures_empty() {
        let row = Row { size: "s".into(), implementation: "burn flex".into(), tokens_per_s: Some(10.5), error: Some("a, \"b\"".into()), ..Default::default() };
        let csv = to_csv(&[row]);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[1], "s,burn flex,,10.5,,,,,,,,,,,,\"a, \"\"b\"\"\"");
    }
}
