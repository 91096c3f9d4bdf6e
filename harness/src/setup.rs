//! The run's configuration, read once at the start: the platform profile, the device, the
//! trainer binary, the prepared data, the folders no trainer process may reach, and the kernel
//! settings. Every problem here is the user's to fix (a usage or data error) and is found before
//! any trainer process starts.

use std::path::{Path, PathBuf};

use contract::summary::RunSummary;
use experiment::device::{DeviceChoice, DeviceSource, choose_device};
use prepare::data::PreparedData;
use prepare::profile::PlatformProfile;

use crate::cli::Cli;
use crate::exit::{self, Failure};
use crate::sandbox_policy::Protected;

/// What a run is configured with.
pub struct Setup {
    pub profile: PlatformProfile,
    pub choice: DeviceChoice,
    /// Where the device came from, in words (`--device`, `BURN_DEVICE`, ...).
    pub source: &'static str,
    pub trainer_bin: PathBuf,
    pub data: PreparedData,
    pub hparams_override: Option<String>,
    pub protected: Protected,
    pub kernels: KernelSettings,
}

/// Reads the configuration, recording it in `summary` as it goes.
pub fn configure(cli: &Cli, summary: &mut RunSummary) -> Result<Setup, Failure> {
    let (profile, profile_sha256) = profile(cli)?;
    let hparams_override = match &cli.hparams {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| Failure::new(exit::USAGE, format!("cannot read hyperparameter file {}: {e}", path.display())))?),
        None => None,
    };
    let (choice, source) = device(cli, &profile)?;
    let trainer_bin = trainer_binary(cli)?;
    let cache_dir = cli.cache_dir.clone().unwrap_or_else(prepare::constants::default_cache_dir);
    let cache_dir = std::fs::canonicalize(&cache_dir).unwrap_or(cache_dir);
    summary.device = Some(choice.name.clone());
    summary.backend = Some(backend_of(choice.spec).into());
    summary.device_class = Some(format!("{:?}", choice.class).to_lowercase());
    summary.device_source = Some(source.into());
    summary.profile = Some(profile.name.clone());
    summary.profile_file = cli.profile.as_ref().map(|p| p.display().to_string());
    summary.profile_sha256 = profile_sha256;
    summary.device_batch_scale = Some(profile.device_batch_scale);
    summary.seq_len = Some(profile.seq_len);
    summary.budget = Some(cli.budget.to_string());
    summary.seed = Some(cli.seed);
    summary.hparams_file = cli.hparams.as_ref().map(|p| p.display().to_string());
    summary.cache_dir = Some(cache_dir.display().to_string());
    summary.trainer = Some(trainer_bin.display().to_string());
    summary.commit = std::env::var("AUTORESEARCH_COMMIT").ok().filter(|c| !c.is_empty());

    let data = PreparedData::open(&cache_dir).map_err(|e| Failure::new(exit::DATA_ERROR, format!("prepared data in {}: {e:#}", cache_dir.display())))?;
    if data.vocab_size() > u16::MAX as usize + 1 {
        return Err(Failure::new(exit::DATA_ERROR, format!("a vocabulary of {} ids does not fit the 16-bit wire format", data.vocab_size())));
    }
    if let Some(note) = &profile.eval_transport {
        println!("harness: the profile's eval_transport = {note:?} is no longer used: evaluation sends one position at a time and every logit crosses in shared memory");
    }
    let kernels = KernelSettings::of(&profile, &choice);
    for note in &kernels.notes {
        println!("harness: {note}");
    }
    summary.fusion = Some(kernels.fusion);
    summary.autotune = Some(kernels.autotune);
    summary.dtype = Some(profile.dtype.clone());
    let protected = protected(cli, &cache_dir, &trainer_bin);
    Ok(Setup { profile, choice, source, trainer_bin, data, hparams_override, protected, kernels })
}

/// The profile (`--profile`, else the reference's) with `--device-batch-scale` applied, and its
/// file's sha256.
fn profile(cli: &Cli) -> Result<(PlatformProfile, Option<String>), Failure> {
    let (mut profile, sha256) = match &cli.profile {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| Failure::new(exit::USAGE, format!("cannot read platform profile {}: {e}", path.display())))?;
            let text = String::from_utf8(bytes.clone()).map_err(|_| Failure::new(exit::USAGE, format!("platform profile {} is not UTF-8", path.display())))?;
            let p = PlatformProfile::parse(&text, &path.display().to_string()).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
            (p, Some(sha256_hex(&bytes)))
        }
        None => (PlatformProfile::default(), None),
    };
    if let Some(scale) = cli.device_batch_scale {
        profile.device_batch_scale = scale;
    }
    profile.validate().map_err(|e| Failure::new(exit::USAGE, format!("platform profile {:?}: {e}", profile.name)))?;
    Ok((profile, sha256))
}

/// The device (`--device`, else `BURN_DEVICE`, else the profile's backend), checked to be there.
fn device(cli: &Cli, profile: &PlatformProfile) -> Result<(DeviceChoice, &'static str), Failure> {
    let env_device = std::env::var("BURN_DEVICE").ok();
    let (choice, source, notes) = choose_device(cli.device.as_deref(), env_device.as_deref(), &profile.backend).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    for note in notes {
        eprintln!("harness: {note}");
    }
    if choice.spec == "vulkan" && !experiment::device::vulkan_loader_present() {
        let e = experiment::device::DeviceError::NoVulkanLoader { name: choice.name.clone() };
        return Err(Failure::new(exit::USAGE, e.to_string()));
    }
    if choice.spec == "cubecl-cuda" {
        experiment::device::check_cubecl_cuda(&choice).map_err(|e| Failure::new(exit::USAGE, e.to_string()))?;
    }
    if choice.spec == "cuda" {
        let found = experiment::device::libtorch_cuda_devices();
        if choice.index >= found {
            let e = experiment::device::DeviceError::NoCudaDevice { name: choice.name.clone(), found };
            return Err(Failure::new(exit::USAGE, e.to_string()));
        }
    }
    let source = match source {
        DeviceSource::Flag => "--device",
        DeviceSource::Env => "BURN_DEVICE",
        DeviceSource::Profile => "profile backend",
        DeviceSource::Fallback => "fallback",
    };
    Ok((choice, source))
}

fn backend_of(spec: &str) -> &'static str {
    match spec {
        "flex" => "flex",
        "ndarray" => "ndarray",
        "wgpu" | "wgpu-cpu" | "vulkan" | "metal" => "wgpu",
        "cubecl-cuda" => "cubecl-cuda",
        _ => "tch",
    }
}

/// The trainer binary: `--trainer`, else `trainer` next to the harness.
fn trainer_binary(cli: &Cli) -> Result<PathBuf, Failure> {
    let path = match &cli.trainer {
        Some(p) => p.clone(),
        None => {
            let me = std::env::current_exe().map_err(|e| Failure::new(exit::USAGE, format!("cannot locate the harness binary: {e}")))?;
            me.with_file_name(format!("trainer{}", std::env::consts::EXE_SUFFIX))
        }
    };
    let path = std::fs::canonicalize(&path).map_err(|e| {
        Failure::new(exit::USAGE, format!("trainer binary {}: {e}; build it with `cargo build --release --workspace`, or pass --trainer PATH", path.display()))
    })?;
    if !path.is_file() {
        return Err(Failure::new(exit::USAGE, format!("trainer binary {} is not a file", path.display())));
    }
    Ok(path)
}

/// The git checkout `dir` lies in, if any.
fn git_root(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|d| d.join(".git").exists()).map(Path::to_path_buf)
}

/// Folders the trainer's sandbox must keep out of reach, whatever its library paths say.
fn protected(cli: &Cli, cache_dir: &Path, trainer: &Path) -> Protected {
    let mut trees = vec![cache_dir.to_path_buf()];
    trees.extend(cli.protect.iter().cloned());
    if let Ok(cwd) = std::env::current_dir() {
        trees.extend(git_root(&cwd));
    }
    trees.extend(trainer.parent().and_then(git_root));
    for file in [&cli.profile, &cli.summary_json, &cli.steps_csv, &cli.sign_key].into_iter().flatten() {
        if let Some(dir) = std::fs::canonicalize(file).ok().or_else(|| Some(file.clone())).and_then(|f| f.parent().map(Path::to_path_buf)) {
            if !dir.as_os_str().is_empty() {
                trees.push(dir);
            }
        }
    }
    let homes = std::env::var_os("HOME").map(PathBuf::from).into_iter().collect();
    Protected { trees, homes }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// What the profile's `fusion` and `autotune` come to on this build and device. Fusion is
/// Burn's compile-time choice (the `fusion` feature wraps every CubeCL device); autotune's level
/// is CubeCL's run-time setting, which the trainer gets as `CUBECL_AUTOTUNE_LEVEL` unless the
/// harness's own environment sets it.
pub struct KernelSettings {
    pub fusion: bool,
    pub autotune: bool,
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    pub notes: Vec<String>,
}

impl KernelSettings {
    fn of(profile: &PlatformProfile, device: &DeviceChoice) -> KernelSettings {
        let cubecl = device.spec.starts_with("wgpu") || matches!(device.spec, "vulkan" | "metal" | "cubecl-cuda");
        let built = cfg!(feature = "fusion");
        let mut notes = Vec::new();
        if !cubecl {
            // LibTorch, flex and ndarray run eagerly: neither setting applies.
            return KernelSettings { fusion: false, autotune: false, env: Vec::new(), notes };
        }
        if profile.fusion && !built {
            notes.push(format!("the profile asks for kernel fusion, which this build lacks: rebuild with `--features harness/fusion,trainer/fusion` (or `gpu`) for {}", device.name));
        } else if !profile.fusion && built {
            notes.push("the profile turns kernel fusion off, but this build fuses every CubeCL device (the `fusion` feature): fusion stays on".to_string());
        }
        let mut env = Vec::new();
        if std::env::var_os("CUBECL_AUTOTUNE_LEVEL").is_none() {
            env.push(("CUBECL_AUTOTUNE_LEVEL".into(), if profile.autotune { "balanced" } else { "minimal" }.into()));
        }
        KernelSettings { fusion: built, autotune: profile.autotune, env, notes }
    }
}
