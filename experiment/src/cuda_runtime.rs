//! What Burn's own CUDA backend (CubeCL, `--device cubecl-cuda`) needs at run time, looked for
//! before the device is built, so that a missing piece is named with the package that brings it
//! rather than surfacing as a panic deep in cudarc or as a failed kernel compilation:
//!
//! - the NVIDIA driver's `libcuda.so.1`, which cudarc loads, and a GPU it sees at the index asked
//!   for;
//! - `libdevice.10.bc`, CUDA's math library in LLVM bitcode, which cubecl-llvm links into every
//!   kernel that calls `exp`, `log`, `tanh`... (all of a GPT's). cubecl-llvm 0.11.3 looks for it
//!   as `$CUDA_PATH/nvvm/libdevice/libdevice.10.bc` when `CUDA_PATH` is set, else under the first
//!   of [`TOOLKIT_ROOTS`] that has `nvvm/libdevice/`. pip's `nvidia-nvvm` (CUDA 13) puts it in
//!   `site-packages/nvidia/cu13/nvvm/libdevice/`, so `CUDA_PATH=site-packages/nvidia/cu13`.
//!
//! The kernels are lowered to PTX through LLVM's NVPTX backend (compiled into the binary), not
//! NVRTC: no NVRTC and no CUDA headers are needed (they would be for cubecl's C++ route, the
//! `cpp` feature of cubecl-cuda, which this build does not turn on).
//!
//! The look-ups are pure functions of the environment and the file system given
//! ([`libdevice_path`], [`missing`]), so the tests run them on a fake layout on any machine.

use std::path::{Path, PathBuf};

/// Where cubecl-llvm looks for a CUDA toolkit when `CUDA_PATH` is not set, in its order.
pub const TOOLKIT_ROOTS: &[&str] = &["/usr/local/cuda", "/opt/cuda", "/usr/lib/cuda", "/usr"];

/// libdevice inside a toolkit root.
pub const LIBDEVICE_IN_ROOT: &str = "nvvm/libdevice/libdevice.10.bc";

/// The NVIDIA driver's CUDA library, as cudarc loads it.
pub const DRIVER_LIBRARY: &str = "libcuda.so.1";

/// What the CubeCL CUDA device lacks on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaMissing {
    /// `libcuda.so.1` does not load (the loader's message).
    Driver { error: String },
    /// The driver loads but does not start (`cuInit` fails) or sees no device at `index`.
    NoDevice { index: usize, found: usize, error: Option<String> },
    /// `libdevice.10.bc` is not where cubecl-llvm looks (`looked`: the paths it would read).
    Libdevice { looked: Vec<PathBuf>, cuda_path_set: bool },
}

impl std::fmt::Display for CudaMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CudaMissing::Driver { error } => write!(
                f,
                "the NVIDIA driver's {DRIVER_LIBRARY} does not load ({error}): install the NVIDIA driver \
                 (Debian/Ubuntu `apt-get install libcuda1` or the driver's `libnvidia-compute` package; \
                 in a container, start it with the GPU passed through, e.g. `docker run --gpus all`), or put \
                 the folder that has {DRIVER_LIBRARY} on LD_LIBRARY_PATH"
            ),
            CudaMissing::NoDevice { index, found, error } => {
                write!(f, "the NVIDIA driver sees {found} CUDA device(s), so there is no device {index}")?;
                if let Some(e) = error {
                    write!(f, " ({e})")?;
                }
                write!(f, ": check `nvidia-smi -L`, and CUDA_VISIBLE_DEVICES, which may hide them")
            }
            CudaMissing::Libdevice { looked, cuda_path_set } => {
                let looked: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
                write!(
                    f,
                    "libdevice.10.bc (CUDA's math library, which the kernels link) is not at {}: \
                     `pip install nvidia-nvvm` and point CUDA_PATH at it \
                     (`export CUDA_PATH=$(python3 -c 'import nvidia.cu13 as m; print(m.__path__[0])')`), \
                     or set CUDA_PATH to a CUDA toolkit that has {LIBDEVICE_IN_ROOT}",
                    if looked.is_empty() { "any of the toolkit folders".to_string() } else { looked.join(" or ") }
                )?;
                if *cuda_path_set {
                    write!(f, " (CUDA_PATH is set, so no other folder is looked in)")?;
                }
                Ok(())
            }
        }
    }
}

/// Where cubecl-llvm will read libdevice: `Ok(path)` when the file is there, else the paths it
/// would have read. `cuda_path` is `$CUDA_PATH` (which, when set, is the only root looked in);
/// `roots` are the toolkit roots otherwise ([`TOOLKIT_ROOTS`]), the first with `nvvm/libdevice/`
/// chosen even when the file is not in it, as cubecl-llvm does.
pub fn libdevice_path(cuda_path: Option<&Path>, roots: &[PathBuf]) -> Result<PathBuf, Vec<PathBuf>> {
    // An empty CUDA_PATH is set too, for cubecl-llvm: it then reads a relative path.
    let root = match cuda_path {
        Some(root) => root.to_path_buf(),
        None => match roots.iter().find(|r| r.join("nvvm").join("libdevice").is_dir()) {
            Some(root) => root.clone(),
            None => return Err(roots.iter().map(|r| r.join(LIBDEVICE_IN_ROOT)).collect()),
        },
    };
    let path = root.join(LIBDEVICE_IN_ROOT);
    if path.is_file() { Ok(path) } else { Err(vec![path]) }
}

/// [`libdevice_path`] for this process: `CUDA_PATH` from the environment, the real roots.
pub fn libdevice_here() -> Result<PathBuf, Vec<PathBuf>> {
    let cuda_path = std::env::var_os("CUDA_PATH").map(PathBuf::from);
    let roots: Vec<PathBuf> = TOOLKIT_ROOTS.iter().map(PathBuf::from).collect();
    libdevice_path(cuda_path.as_deref(), &roots)
}

/// What the driver says: `Err` when `libcuda.so.1` does not load, else `cuInit`'s failure (if
/// any) and the number of devices.
pub type DriverProbe = Result<(Option<String>, usize), String>;

/// Everything missing for `cubecl-cuda:index`, from the driver's answer and the libdevice
/// look-up (empty: all there).
pub fn missing(index: usize, driver: DriverProbe, libdevice: Result<PathBuf, Vec<PathBuf>>, cuda_path_set: bool) -> Vec<CudaMissing> {
    let mut out = Vec::new();
    match driver {
        Err(error) => out.push(CudaMissing::Driver { error }),
        Ok((error, found)) if index >= found => out.push(CudaMissing::NoDevice { index, found, error }),
        Ok(_) => {}
    }
    if let Err(looked) = libdevice {
        out.push(CudaMissing::Libdevice { looked, cuda_path_set });
    }
    out
}

/// What is missing here for `cubecl-cuda:index` (empty: all there).
pub fn missing_here(index: usize) -> Vec<CudaMissing> {
    let cuda_path_set = std::env::var_os("CUDA_PATH").is_some();
    missing(index, probe_driver(), libdevice_here(), cuda_path_set)
}

/// Loads `libcuda.so.1`, initializes it and counts its devices, through the driver API's two
/// stable C entry points (`cuInit`, `cuDeviceGetCount`). The library stays loaded: cudarc loads
/// it again right after.
pub fn probe_driver() -> DriverProbe {
    #[cfg(unix)]
    {
        use std::ffi::{CStr, c_int, c_uint};
        // SAFETY: dlopen/dlsym of C strings; the two symbols have the driver API's documented
        // signatures (CUresult is an int); cuDeviceGetCount writes one int.
        unsafe {
            let handle = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if handle.is_null() {
                let err = libc::dlerror();
                let text = if err.is_null() { "dlopen failed".to_string() } else { CStr::from_ptr(err).to_string_lossy().into_owned() };
                return Err(text);
            }
            let init = libc::dlsym(handle, c"cuInit".as_ptr());
            let count = libc::dlsym(handle, c"cuDeviceGetCount".as_ptr());
            if init.is_null() || count.is_null() {
                return Err("libcuda.so.1 loads but has no cuInit/cuDeviceGetCount: not the NVIDIA driver's".into());
            }
            let init: extern "C" fn(c_uint) -> c_int = std::mem::transmute(init);
            let count: extern "C" fn(*mut c_int) -> c_int = std::mem::transmute(count);
            let status = init(0);
            if status != 0 {
                return Ok((Some(format!("cuInit failed with CUDA error {status}")), 0));
            }
            let mut n: c_int = 0;
            let status = count(&mut n);
            if status != 0 {
                return Ok((Some(format!("cuDeviceGetCount failed with CUDA error {status}")), 0));
            }
            Ok((None, n.max(0) as usize))
        }
    }
    #[cfg(not(unix))]
    Err("the CubeCL CUDA probe runs on Linux only".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"BC").unwrap();
    }

    #[test]
    fn libdevice_is_found_as_cubecl_llvm_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, pip) = (dir.path().join("usr-local-cuda"), dir.path().join("opt-cuda"), dir.path().join("site-packages/nvidia/cu13"));
        let roots = vec![a.clone(), b.clone()];
        // Nothing anywhere: every root's path is named.
        assert_eq!(libdevice_path(None, &roots), Err(vec![a.join(LIBDEVICE_IN_ROOT), b.join(LIBDEVICE_IN_ROOT)]));
        // The second root has it.
        touch(&b.join(LIBDEVICE_IN_ROOT));
        assert_eq!(libdevice_path(None, &roots), Ok(b.join(LIBDEVICE_IN_ROOT)));
        // The first root has the folder but not the file: cubecl-llvm stops there, and so do we.
        std::fs::create_dir_all(a.join("nvvm/libdevice")).unwrap();
        assert_eq!(libdevice_path(None, &roots), Err(vec![a.join(LIBDEVICE_IN_ROOT)]));
        // CUDA_PATH is the only root looked in when set: pip's nvidia-nvvm layout.
        assert_eq!(libdevice_path(Some(&pip), &roots), Err(vec![pip.join(LIBDEVICE_IN_ROOT)]));
        touch(&pip.join(LIBDEVICE_IN_ROOT));
        assert_eq!(libdevice_path(Some(&pip), &roots), Ok(pip.join("nvvm/libdevice/libdevice.10.bc")));
        // An empty CUDA_PATH is still CUDA_PATH to cubecl-llvm: a relative path, named as such.
        assert_eq!(libdevice_path(Some(Path::new("")), &roots), Err(vec![PathBuf::from(LIBDEVICE_IN_ROOT)]));
    }

    #[test]
    fn each_missing_piece_names_what_to_install() {
        let lib = PathBuf::from("/x/nvvm/libdevice/libdevice.10.bc");
        assert!(missing(0, Ok((None, 1)), Ok(lib.clone()), false).is_empty());
        let all = missing(0, Err("libcuda.so.1: cannot open shared object file".into()), Err(vec![lib.clone()]), true);
        assert_eq!(all.len(), 2, "{all:?}");
        let driver = all[0].to_string();
        assert!(driver.contains("libcuda.so.1") && driver.contains("install the NVIDIA driver") && driver.contains("cannot open"), "{driver}");
        let libdevice = all[1].to_string();
        assert!(libdevice.contains("pip install nvidia-nvvm") && libdevice.contains("CUDA_PATH") && libdevice.contains(&lib.display().to_string()), "{libdevice}");
        assert!(libdevice.contains("no other folder"), "{libdevice}");
        let none = missing(1, Ok((None, 1)), Ok(lib.clone()), false);
        assert_eq!(none, vec![CudaMissing::NoDevice { index: 1, found: 1, error: None }]);
        assert!(none[0].to_string().contains("no device 1") && none[0].to_string().contains("nvidia-smi"), "{}", none[0]);
        let failed = missing(0, Ok((Some("cuInit failed with CUDA error 100".into()), 0)), Ok(lib), false);
        assert!(failed[0].to_string().contains("cuInit failed"), "{}", failed[0]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_driver_probe_agrees_with_the_loader_cache() {
        // Where neither the loader's cache nor LD_LIBRARY_PATH can bring libcuda.so.1 (this CPU
        // machine, CI), the probe reports the driver missing rather than panicking.
        let cached = std::process::Command::new("/sbin/ldconfig").arg("-p").output().map(|o| String::from_utf8_lossy(&o.stdout).contains("libcuda.so.1 ")).ok();
        if cached == Some(false) && std::env::var_os("LD_LIBRARY_PATH").is_none() {
            let err = probe_driver().unwrap_err();
            assert!(err.contains("libcuda.so.1"), "{err}");
            let text = missing_here(0)[0].to_string();
            assert!(text.contains("install the NVIDIA driver"), "{text}");
        }
    }
}
