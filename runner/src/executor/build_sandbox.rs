//! Experiment builds in the kernel sandbox: an experiment's trainer is compiled by cargo and
//! rustc, which read what its sources name (`include_bytes!`, `#[path]`), so the build may
//! read only the toolchain, the system, the build tree and the target directory, and write
//! only the last two. The data cache, `.autoresearch/` (but its build tree), the repository
//! and `$HOME` are out of reach, so embedding a validation file fails at compile time; and
//! there is no network (`--frozen`: everything was fetched when the scorer was built).

use std::path::{Path, PathBuf};

use contract::sandbox::Policy;

/// The toolchain's folders: cargo's home (registry, binaries) and rustup's (toolchains).
pub fn toolchain_dirs() -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let from_env = |var: &str, default: &str| std::env::var_os(var).map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(default)));
    let mut dirs: Vec<PathBuf> = [from_env("CARGO_HOME", ".cargo"), from_env("RUSTUP_HOME", ".rustup")].into_iter().flatten().collect();
    // A toolchain installed elsewhere (a distribution's, or RUSTC pointing at one).
    for tool in ["cargo", "rustc"] {
        if let Some(dir) = which(tool).and_then(|p| std::fs::canonicalize(p).ok()).and_then(|p| p.parent().and_then(Path::parent).map(Path::to_path_buf)) {
            dirs.push(dir);
        }
    }
    dirs
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// What a sandboxed build of `tree` into `target` may reach.
pub fn policy(tree: &Path, target: &Path) -> Policy {
    let system: Vec<PathBuf> = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt"].iter().map(PathBuf::from).collect();
    let toolchain = toolchain_dirs();
    let mut read = [system.clone(), toolchain.clone(), vec![tree.to_path_buf()]].concat();
    // LibTorch for a `tch` build (torch-sys links against it).
    for var in ["LIBTORCH", "LIBTORCH_LIB", "LIBTORCH_INCLUDE"] {
        read.extend(std::env::var_os(var).map(PathBuf::from));
    }
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        read.extend(std::env::split_paths(&paths).filter(|p| p.is_absolute()));
    }
    let mut write = vec![target.to_path_buf(), tree.to_path_buf()];
    // Cargo's locks on its package cache, and its cache tracker (a small SQLite database).
    if let Some(cargo_home) = toolchain.first() {
        write.extend([".package-cache", ".package-cache-mutate", ".global-cache"].iter().map(|f| cargo_home.join(f)));
    }
    // Build scripts of dependencies are programs in the target directory.
    let execute = [system, toolchain, vec![target.to_path_buf()]].concat();
    Policy {
        read,
        execute,
        write,
        devices: ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full"].iter().map(PathBuf::from).collect(),
        filter_syscalls: true,
        own_threads: false,
    }
}

/// The sandbox of an experiment build, or None with `require_sandbox` off where there is none;
/// Err says why the build cannot run.
pub fn prepare(tree: &Path, target: &Path, require_sandbox: bool) -> Result<Option<std::sync::Arc<contract::sandbox::Sandbox>>, String> {
    // The rules name folders that must exist when the sandbox is built.
    for dir in [target.to_path_buf(), target.join("tmp")] {
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    match policy(tree, target).prepare() {
        Ok(s) => Ok(Some(std::sync::Arc::new(s))),
        Err(e) if require_sandbox => Err(format!("{e}: the experiment's build would read what the runner can (set require_sandbox = false to build and run without a sandbox)")),
        Err(_) => Ok(None),
    }
}

/// The environment of a build: the runner's, with the target directory and a temporary folder
/// inside it (the sandbox lets the build write nowhere else).
pub fn build_env(target: &Path) -> Vec<(String, String)> {
    vec![("CARGO_TARGET_DIR".into(), target.display().to_string()), ("TMPDIR".into(), target.join("tmp").display().to_string())]
}

/// `autoresearch sandbox-build`: runs `command` in `tree` in the build sandbox, the terminal
/// attached; returns its exit code.
pub fn run_sandboxed(tree: &Path, target: &Path, require_sandbox: bool, command: &[String]) -> anyhow::Result<i32> {
    let sandbox = prepare(tree, target, require_sandbox).map_err(anyhow::Error::msg)?;
    let (program, args) = command.split_first().ok_or_else(|| crate::errors::usage("sandbox-build: no command given after --"))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).current_dir(tree).envs(build_env(target));
    match &sandbox {
        Some(s) => s.apply(&mut cmd),
        None => eprintln!("warning: building {} without a sandbox", tree.display()),
    }
    let status = cmd.status().map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    Ok(status.code().unwrap_or(crate::errors::code::FAILURE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::Arc;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A one-crate workspace whose main embeds `include`, built in the sandbox.
    fn sandboxed_build(dir: &Path, include: &Path) -> (bool, String) {
        let tree = dir.join("repo/.autoresearch/.build");
        let target = dir.join("repo/target");
        write(&tree, "Cargo.toml", "[package]\nname = \"t\"\nversion = \"0.1.0\"\nedition = \"2024\"\n");
        write(&tree, "src/main.rs", &format!("static DATA: &[u8] = include_bytes!({:?});\nfn main() {{ println!(\"{{}}\", DATA.len()); }}\n", include.display().to_string()));
        let lock = Command::new("cargo").args(["generate-lockfile", "--offline"]).current_dir(&tree).status().unwrap();
        assert!(lock.success());
        std::fs::create_dir_all(target.join("tmp")).unwrap();
        let sandbox = Arc::new(policy(&tree, &target).prepare().unwrap());
        let mut cmd = Command::new("cargo");
        cmd.args(["build", "--release", "--frozen"]).current_dir(&tree).env("CARGO_TARGET_DIR", &target).env("TMPDIR", target.join("tmp"));
        sandbox.apply(&mut cmd);
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    #[test]
    fn a_build_compiles_its_own_tree_but_cannot_embed_a_file_from_outside() {
        let dir = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(dir.path()).unwrap();
        // Inside the build tree: fine.
        write(&dir, "repo/.autoresearch/.build/data.bin", "inside");
        let (ok, log) = sandboxed_build(&dir, &dir.join("repo/.autoresearch/.build/data.bin"));
        assert!(ok, "{log}");
        // The run's state, the repository and a data cache: out of reach at compile time.
        for outside in ["repo/.autoresearch/tag/results.tsv", "repo/README.md", "cache/tokens/val.tok"] {
            write(&dir, outside, "secret");
            let (ok, log) = sandboxed_build(&dir, &dir.join(outside));
            assert!(!ok, "embedded {outside}:\n{log}");
            assert!(log.contains("Permission denied") || log.contains("os error 13"), "{outside}: {log}");
        }
    }
}
