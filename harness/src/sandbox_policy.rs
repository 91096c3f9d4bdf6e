//! What the trainer's sandbox lets it reach: its binary and the dynamic loader (read and
//! execute), the system libraries, the CPU description, the devices it computes on, the
//! library folders of `LD_LIBRARY_PATH` (LibTorch) and the folders their run paths name (its
//! CUDA runtime, from pip), and its own scratch folder (read and
//! write). Nothing else: not the data cache, the repository, `.autoresearch/`, `target/`,
//! `$HOME` or `.git`, and no network.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use experiment::cuda_runtime::{TOOLKIT_ROOTS, libdevice_path};
use experiment::device::DeviceChoice;
use contract::sandbox::{Policy, is_within};

use crate::elf;

/// System folders of shared libraries and the loader's configuration.
const SYSTEM_READ: &[&str] = &[
    "/lib",
    "/lib32",
    "/lib64",
    "/usr/lib",
    "/usr/lib32",
    "/usr/lib64",
    "/usr/local/lib",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    // The CPU's description (thread pools, SIMD dispatch).
    "/proc/cpuinfo",
    "/sys/devices/system/cpu",
];

/// Devices every process may use.
const COMMON_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"];

/// What GPU backends read: Vulkan and GL loader configuration, driver information.
const GPU_READ: &[&str] = &["/usr/share/vulkan", "/etc/vulkan", "/usr/share/glvnd", "/etc/glvnd", "/usr/share/drirc.d", "/etc/drirc", "/usr/share/egl", "/proc/driver/nvidia", "/sys"];

/// GPU device files: DRM render nodes (Vulkan) and NVIDIA's (CUDA, Vulkan).
const GPU_DEVICES: &[&str] = &["/dev/dri", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset", "/dev/nvidia-caps"];

/// Folders the trainer must never be able to read, even through a library folder (from
/// `LD_LIBRARY_PATH`) that contains them.
#[derive(Debug, Clone, Default)]
pub struct Protected {
    /// Nothing in them or above them: the cache, the repository, the run state, the folders
    /// of the profile and of the summary.
    pub trees: Vec<PathBuf>,
    /// Nothing above them, but a folder inside is fine: `$HOME` (LibTorch is often installed
    /// under it, far from the cache in `~/.cache`, which is in `trees`).
    pub homes: Vec<PathBuf>,
}

impl Protected {
    /// The first protected folder that `path` overlaps.
    fn overlap(&self, path: &Path) -> Option<&Path> {
        let tree = self.trees.iter().find(|p| is_within(path, p) || is_within(p, path));
        tree.or_else(|| self.homes.iter().find(|h| is_within(h, path))).map(PathBuf::as_path)
    }
}

/// A trainer's sandbox: the policy, the library path the trainer is given (the folders of
/// `LD_LIBRARY_PATH` it may read), and notes for the log.
#[derive(Debug, Clone)]
pub struct TrainerSandbox {
    pub policy: Policy,
    pub library_path: Option<OsString>,
    pub notes: Vec<String>,
}

/// The policy for a trainer binary on `device`, writing only to `scratch`. A library or
/// driver path that overlaps a protected folder is left out (the trainer does not get it).
pub fn trainer_policy(binary: &Path, scratch: &Path, device: &DeviceChoice, protected: &Protected, allow_read: &[PathBuf]) -> Result<TrainerSandbox, String> {
    for path in allow_read {
        if let Some(p) = protected.overlap(path) {
            return Err(format!("--allow-read {} overlaps {}, which the trainer must not read", path.display(), p.display()));
        }
    }
    let mut sandbox = policy_with_env(binary, scratch, device, protected, &|name| std::env::var_os(name))?;
    sandbox.policy.read.extend(allow_read.iter().cloned());
    Ok(sandbox)
}

/// [`trainer_policy`] with the harness's environment given as `env` (tests pass their own).
fn policy_with_env(binary: &Path, scratch: &Path, device: &DeviceChoice, protected: &Protected, env: &dyn Fn(&str) -> Option<OsString>) -> Result<TrainerSandbox, String> {
    let mut read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
    let mut devices: Vec<PathBuf> = COMMON_DEVICES.iter().map(PathBuf::from).collect();
    let gpu = device.class == experiment::device::DeviceClass::Gpu || device.spec.starts_with("wgpu");
    if gpu {
        read.extend(GPU_READ.iter().map(PathBuf::from));
        devices.extend(GPU_DEVICES.iter().map(PathBuf::from));
        devices.extend(nvidia_device_files());
    }
    // Libraries the loader is pointed at (LibTorch's), Vulkan drivers named by file, and the
    // system's own library folders from the loader's configuration (a GPU driver's, such as
    // /usr/local/nvidia/lib64).
    let mut extra: Vec<(PathBuf, &str)> = loader_config_folders(Path::new(LOADER_CONFIG)).into_iter().map(|p| (p, LOADER_CONFIG)).collect();
    // NVIDIA's Vulkan driver reads more of /usr than the libraries and the Vulkan and GL
    // configuration (measured on an H200: it fails to start without /usr, not without /etc,
    // /proc or /dev); the overlap check below keeps a repository or cache under /usr out.
    if matches!(device.spec, "wgpu" | "vulkan") {
        extra.push((PathBuf::from("/usr"), "the Vulkan driver"));
    }
    // Burn's CUDA backend links libdevice (CUDA's math library) into its kernels as the trainer
    // compiles them: the folder it lies in, found as the trainer will find it (`CUDA_PATH`
    // passes through to the trainer; else the toolkit folders).
    if device.spec == "cubecl-cuda" {
        let cuda_path = env("CUDA_PATH").map(PathBuf::from);
        let roots: Vec<PathBuf> = TOOLKIT_ROOTS.iter().map(PathBuf::from).collect();
        if let Some(folder) = libdevice_path(cuda_path.as_deref(), &roots).ok().and_then(|f| f.parent().map(Path::to_path_buf)) {
            extra.push((folder, "libdevice (CUDA_PATH)"));
        }
    }
    if let Some(paths) = env("LD_LIBRARY_PATH") {
        extra.extend(std::env::split_paths(&paths).filter(|p| p.is_absolute()).map(|p| (p, "LD_LIBRARY_PATH")));
    }
    for var in ["VK_ICD_FILENAMES", "VK_DRIVER_FILES", "VK_ADD_DRIVER_FILES"] {
        if let Some(files) = env(var) {
            extra.extend(std::env::split_paths(&files).filter(|p| p.is_absolute()).map(|p| (p, var)));
        }
    }
    let mut notes = Vec::new();
    let mut library_dirs = Vec::new();
    for (path, var) in extra {
        if let Some(p) = protected.overlap(&path) {
            notes.push(format!("{var} entry {} overlaps {}: the trainer does not get it", path.display(), p.display()));
            continue;
        }
        if var == "LD_LIBRARY_PATH" {
            library_dirs.push(path.clone());
        }
        read.push(path);
    }
    // What those libraries name by run path: LibTorch's CUDA runtime from pip. Not the binary's
    // own run path: the experiment built it, and must not widen its own sandbox.
    for dir in run_path_folders(&library_dirs) {
        if let Some(p) = protected.overlap(&dir) {
            notes.push(format!("run path folder {} overlaps {}: the trainer does not get it", dir.display(), p.display()));
            continue;
        }
        read.push(dir);
    }
    let library_path = (!library_dirs.is_empty()).then(|| std::env::join_paths(&library_dirs).ok()).flatten();
    if let Some(p) = protected.overlap(scratch) {
        return Err(format!("the trainer's scratch folder {} lies in {} (set TMPDIR elsewhere)", scratch.display(), p.display()));
    }
    let mut execute = vec![binary.to_path_buf()];
    // The experiment built the binary, and with it the loader path it names: one inside a
    // protected folder (the build tree, the cache) is not the system's.
    for loader in interpreter(binary) {
        if let Some(p) = protected.overlap(&loader) {
            return Err(format!("the trainer binary {} names its loader {} inside {}: refused", binary.display(), loader.display(), p.display()));
        }
        execute.push(loader);
    }
    // CUDA's driver writes its threads' files under /proc/<pid>/task (the trainer's own only).
    let policy = Policy { read, execute, write: vec![scratch.to_path_buf()], devices, filter_syscalls: true, own_threads: gpu };
    Ok(TrainerSandbox { policy, library_path, notes })
}

/// The system loader's configuration: the library folders it searches besides the defaults.
const LOADER_CONFIG: &str = "/etc/ld.so.conf";

/// Most configuration files followed through `include` lines.
const MAX_LOADER_CONFIG_FILES: usize = 64;

/// The folders that the loader configuration `file` names, following its `include` lines
/// (whose patterns may hold `*` in the file name, as `ld.so.conf.d/*.conf`). Relative and
/// missing folders are left out. Only root can write these files: they name system libraries.
fn loader_config_folders(file: &Path) -> Vec<PathBuf> {
    let (mut files, mut folders, mut next) = (vec![file.to_path_buf()], Vec::new(), 0);
    while next < files.len() && files.len() <= MAX_LOADER_CONFIG_FILES {
        let text = std::fs::read_to_string(&files[next]).unwrap_or_default();
        let base = files[next].parent().map(Path::to_path_buf).unwrap_or_default();
        next += 1;
        for line in text.lines().map(|l| l.split('#').next().unwrap_or("").trim()).filter(|l| !l.is_empty()) {
            match line.strip_prefix("include").filter(|rest| rest.starts_with(char::is_whitespace)) {
                Some(pattern) => {
                    for f in expand_file_pattern(&base.join(pattern.trim())) {
                        if !files.contains(&f) {
                            files.push(f);
                        }
                    }
                }
                None => {
                    let dir = PathBuf::from(line);
                    if dir.is_absolute() && dir.is_dir() && !folders.contains(&dir) {
                        folders.push(dir);
                    }
                }
            }
        }
    }
    folders
}

/// The files a pattern with at most one `*`, in its file name, matches (sorted), or the file
/// itself.
fn expand_file_pattern(pattern: &Path) -> Vec<PathBuf> {
    let name = pattern.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Some((prefix, suffix)) = name.split_once('*') else { return vec![pattern.to_path_buf()] };
    let dir = pattern.parent().unwrap_or(Path::new("/"));
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.len() >= prefix.len() + suffix.len() && n.starts_with(prefix) && n.ends_with(suffix)))
        .collect();
    found.sort();
    found
}

/// `/dev/nvidia0`, `/dev/nvidia1`, ...
fn nvidia_device_files() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/dev") else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.strip_prefix("nvidia").is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))))
        .collect()
}

/// The ELF interpreter (dynamic loader) of `binary`, which the kernel opens for execution too;
/// the usual loaders when the binary cannot be read.
fn interpreter(binary: &Path) -> Vec<PathBuf> {
    match elf::interpreter(binary) {
        Some(p) => {
            let mut v = vec![p.clone()];
            if let Ok(real) = std::fs::canonicalize(&p) {
                v.push(real);
            }
            v
        }
        None => ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"].iter().map(PathBuf::from).collect(),
    }
}

/// Most folders followed through run paths; LibTorch with CUDA names about fifteen.
const MAX_RUN_PATH_FOLDERS: usize = 256;

/// The folders, canonical and existing, that the run paths of the shared libraries in
/// `library_dirs` name, followed from library to library: pip's LibTorch loads its CUDA
/// runtime from `site-packages/nvidia/*/lib` through `$ORIGIN/../../nvidia/...`.
fn run_path_folders(library_dirs: &[PathBuf]) -> Vec<PathBuf> {
    // Every folder seen, in the order found; the given ones first, each scanned once.
    let mut seen: Vec<PathBuf> = library_dirs.iter().filter_map(|d| std::fs::canonicalize(d).ok()).collect();
    let given = seen.len();
    let mut next = 0;
    while next < seen.len() && seen.len() < given + MAX_RUN_PATH_FOLDERS {
        let libraries = std::fs::read_dir(&seen[next]).into_iter().flatten().flatten().map(|e| e.path());
        let libraries = libraries.filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains(".so")) && p.is_file());
        for dir in libraries.flat_map(|lib| elf::search_path(&lib)).filter_map(|d| std::fs::canonicalize(d).ok()).collect::<Vec<_>>() {
            if dir.is_dir() && !seen.contains(&dir) && seen.len() < given + MAX_RUN_PATH_FOLDERS {
                seen.push(dir);
            }
        }
        next += 1;
    }
    seen.split_off(given)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::cc;

    #[test]
    fn a_library_folder_over_a_protected_one_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let home = dir.path().join("home");
        let protected = Protected { trees: vec![cache.clone()], homes: vec![home.clone()] };
        assert_eq!(protected.overlap(&cache.join("lib")), Some(cache.as_path()), "a folder inside the cache");
        assert_eq!(protected.overlap(Path::new("/usr/lib")), None);
        assert_eq!(protected.overlap(&home), Some(home.as_path()), "the home folder itself");
        assert!(protected.overlap(dir.path()).is_some(), "a folder containing both");
        assert_eq!(protected.overlap(&home.join(".local/lib/torch/lib")), None, "a library folder inside the home folder");
    }

    #[test]
    fn run_paths_are_followed_from_library_to_library() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        // torch/lib -> nvidia/cuda_runtime/lib -> nvidia/nvjitlink/lib, and a dangling one.
        cc(&root.join("torch/lib"), "libtorch_cuda.so", true, "$ORIGIN/../../nvidia/cuda_runtime/lib:$ORIGIN/../../nvidia/missing/lib");
        cc(&root.join("nvidia/cuda_runtime/lib"), "libcudart.so.12", true, "$ORIGIN/../../nvjitlink/lib:$ORIGIN");
        std::fs::create_dir_all(root.join("nvidia/nvjitlink/lib")).unwrap();
        let found = run_path_folders(&[root.join("torch/lib")]);
        assert_eq!(found, vec![root.join("nvidia/cuda_runtime/lib"), root.join("nvidia/nvjitlink/lib")]);
        assert!(run_path_folders(&[root.join("nvidia/nvjitlink/lib")]).is_empty(), "a folder without libraries names nothing");
    }

    /// The policy for a trainer `binary`, on flex, with `LD_LIBRARY_PATH` set to `library_path`.
    fn policy(binary: &Path, scratch: &Path, protected: &Protected, library_path: &Path) -> TrainerSandbox {
        let device = experiment::device::parse_device("flex").unwrap();
        let path = library_path.as_os_str().to_os_string();
        policy_with_env(binary, scratch, &device, protected, &|name| (name == "LD_LIBRARY_PATH").then(|| path.clone())).unwrap()
    }

    #[test]
    fn a_run_path_into_a_protected_folder_is_refused_and_others_are_granted() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (cache, scratch) = (root.join("cache"), root.join("scratch"));
        std::fs::create_dir_all(cache.join("lib")).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        cc(&root.join("torch/lib"), "libtorch.so", true, &format!("$ORIGIN/../../nvidia/lib:{}", cache.join("lib").display()));
        std::fs::create_dir_all(root.join("nvidia/lib")).unwrap();
        let protected = Protected { trees: vec![cache.clone()], homes: vec![] };
        let binary = std::env::current_exe().unwrap();
        let sandbox = policy(&binary, &scratch, &protected, &root.join("torch/lib"));
        assert!(sandbox.policy.read.contains(&root.join("nvidia/lib")), "{:?}", sandbox.policy.read);
        assert!(!sandbox.policy.read.iter().any(|p| is_within(p, &cache) || is_within(&cache, p)), "{:?}", sandbox.policy.read);
        assert!(sandbox.notes.iter().any(|n| n.contains("run path folder") && n.contains(&cache.display().to_string())), "{:?}", sandbox.notes);
    }

    #[test]
    fn the_loader_configuration_names_system_library_folders() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        for d in ["conf.d", "nvidia/lib64", "usr/lib/extra", "cache"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let (nvidia, extra) = (root.join("nvidia/lib64"), root.join("usr/lib/extra"));
        std::fs::write(root.join("ld.so.conf"), format!("# comment\ninclude conf.d/*.conf\n{}\nrelative/lib\n", extra.display())).unwrap();
        std::fs::write(root.join("conf.d/10-nvidia.conf"), format!("{}   # the driver\n/no/such/folder\n", nvidia.display())).unwrap();
        std::fs::write(root.join("conf.d/20-loop.conf"), "include ../ld.so.conf\n").unwrap();
        std::fs::write(root.join("conf.d/README"), root.join("cache").display().to_string()).unwrap();
        let mut found = loader_config_folders(&root.join("ld.so.conf"));
        found.sort();
        assert_eq!(found, vec![nvidia, extra], "each folder once, includes followed (the loop too); relative, missing and non-config files left out");
        assert!(loader_config_folders(&root.join("missing.conf")).is_empty());
    }

    #[test]
    fn an_allowed_read_is_granted_unless_it_overlaps_a_protected_folder() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (cache, scratch, driver) = (root.join("cache"), root.join("scratch"), root.join("driver"));
        for d in [&cache, &scratch, &driver] {
            std::fs::create_dir_all(d).unwrap();
        }
        let protected = Protected { trees: vec![cache.clone()], homes: vec![] };
        let binary = std::env::current_exe().unwrap();
        let device = experiment::device::parse_device("flex").unwrap();
        let sandbox = trainer_policy(&binary, &scratch, &device, &protected, std::slice::from_ref(&driver)).unwrap();
        assert!(sandbox.policy.read.contains(&driver), "{:?}", sandbox.policy.read);
        for bad in [cache.join("tokens"), root.clone()] {
            let err = trainer_policy(&binary, &scratch, &device, &protected, &[bad.clone()]).unwrap_err();
            assert!(err.contains("--allow-read") && err.contains(&cache.display().to_string()), "{err}");
        }
    }

    /// The experiment builds the trainer binary: a loader it names inside a protected folder is
    /// refused, and the system's is granted.
    #[test]
    fn a_loader_inside_a_protected_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (cache, scratch) = (root.join("cache"), root.join("scratch"));
        for d in [&cache, &scratch] {
            std::fs::create_dir_all(d).unwrap();
        }
        let loader = cache.join("ld.so");
        std::fs::copy(elf::interpreter(&std::env::current_exe().unwrap()).unwrap(), &loader).unwrap();
        // `-rpath X,--dynamic-linker,L`: cc's -Wl splits at the commas.
        cc(&root.join("bin"), "trainer", false, &format!("/nothing,--dynamic-linker,{}", loader.display()));
        assert_eq!(elf::interpreter(&root.join("bin/trainer")), Some(loader.clone()), "the test binary names the loader");
        let protected = Protected { trees: vec![cache.clone()], homes: vec![] };
        let device = experiment::device::parse_device("flex").unwrap();
        let err = trainer_policy(&root.join("bin/trainer"), &scratch, &device, &protected, &[]).err().expect("refused");
        assert!(err.contains("names its loader") && err.contains(&loader.display().to_string()), "{err}");
        let system = trainer_policy(&std::env::current_exe().unwrap(), &scratch, &device, &protected, &[]).unwrap();
        assert!(system.policy.execute.iter().any(|p| p.to_string_lossy().contains("ld-linux")), "{:?}", system.policy.execute);
    }

    /// `cubecl-cuda` reads libdevice from `CUDA_PATH` (pip's nvidia-nvvm): that folder only, and
    /// not when it lies in a protected one. Built by hand: the default build has no such device.
    #[test]
    fn cubecl_cuda_gets_the_libdevice_folder_of_cuda_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (scratch, cu13, cache) = (root.join("scratch"), root.join("site-packages/nvidia/cu13"), root.join("cache"));
        let libdevice = cu13.join("nvvm/libdevice");
        for d in [&scratch, &libdevice, &cache.join("nvvm/libdevice")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(libdevice.join("libdevice.10.bc"), b"BC").unwrap();
        std::fs::write(cache.join("nvvm/libdevice/libdevice.10.bc"), b"BC").unwrap();
        let device = DeviceChoice { name: "cubecl-cuda:0".into(), spec: "cubecl-cuda", class: experiment::device::DeviceClass::Gpu, index: 0 };
        let protected = Protected { trees: vec![cache.clone()], homes: vec![] };
        let binary = std::env::current_exe().unwrap();
        let with = |cuda_path: &Path| {
            let p = cuda_path.as_os_str().to_os_string();
            policy_with_env(&binary, &scratch, &device, &protected, &|name| (name == "CUDA_PATH").then(|| p.clone())).unwrap()
        };
        let sandbox = with(&cu13);
        assert!(sandbox.policy.read.contains(&libdevice), "{:?}", sandbox.policy.read);
        assert!(!sandbox.policy.read.contains(&cu13), "the folder of libdevice, not the whole package");
        assert!(sandbox.policy.devices.iter().any(|d| d == Path::new("/dev/nvidiactl")), "a GPU device's files");
        let sandbox = with(&cache);
        assert!(!sandbox.policy.read.iter().any(|p| is_within(p, &cache)), "{:?}", sandbox.policy.read);
        assert!(sandbox.notes.iter().any(|n| n.contains("libdevice")), "{:?}", sandbox.notes);
        // flex gets no libdevice, CUDA_PATH or not.
        let flex = experiment::device::parse_device("flex").unwrap();
        let p = cu13.as_os_str().to_os_string();
        let sandbox = policy_with_env(&binary, &scratch, &flex, &protected, &|name| (name == "CUDA_PATH").then(|| p.clone())).unwrap();
        assert!(!sandbox.policy.read.contains(&libdevice));
    }

    /// The experiment builds the trainer binary: a run path in it must not widen its sandbox.
    #[test]
    fn the_trainer_binarys_own_run_path_grants_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (secrets, scratch, libs) = (root.join("secrets"), root.join("scratch"), root.join("lib"));
        for d in [&secrets, &scratch, &libs] {
            std::fs::create_dir_all(d).unwrap();
        }
        cc(&root.join("bin"), "trainer", false, &secrets.display().to_string());
        assert_eq!(elf::search_path(&root.join("bin/trainer")), vec![secrets.clone()], "the test binary carries the run path");
        let sandbox = policy(&root.join("bin/trainer"), &scratch, &Protected::default(), &libs);
        assert!(!sandbox.policy.read.iter().chain(&sandbox.policy.execute).any(|p| is_within(&secrets, p)), "{:?}", sandbox.policy);
    }
}
