//! The kernel sandbox of the code under research (Linux).
//!
//! A [`Policy`] lists what a process may touch; [`Policy::prepare`] turns it, in the parent,
//! into a [`Sandbox`] whose [`Sandbox::enter`] runs in the child between `fork` and `exec`
//! (see [`Sandbox::apply`]). Entering:
//!
//! 1. dies with the parent (`PR_SET_PDEATHSIG`), and fails if the parent is already gone;
//! 2. leads a new process group (the harness kills the group as one);
//! 3. as root, gives up every capability, for good (`SECBIT_NOROOT`, empty bounding set);
//! 4. sets `no_new_privs`;
//! 5. enforces the landlock ruleset: only the listed files, no TCP, no signals or abstract
//!    Unix sockets to processes outside;
//! 6. installs the seccomp filter (see `seccomp`), when the policy asks for it.
//!
//! Everything is inherited across `exec` and by every process the child starts, and cannot be
//! undone from inside.

mod landlock;
mod seccomp;

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

pub use landlock::abi as landlock_abi;
use landlock::{
    ACCESS_FS_EXECUTE, ACCESS_FS_IOCTL_DEV, ACCESS_FS_READ_DIR, ACCESS_FS_READ_FILE, ACCESS_FS_TRUNCATE, ACCESS_FS_WRITE_FILE, Ruleset,
};

/// `AUTORESEARCH_SANDBOX=off` makes [`Policy::prepare`] report that there is no sandbox.
pub const DISABLE_ENV: &str = "AUTORESEARCH_SANDBOX";

/// What a sandboxed process may reach.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Files and folders it may read (and list).
    pub read: Vec<PathBuf>,
    /// Files it may read and execute.
    pub execute: Vec<PathBuf>,
    /// Folders it may read, write, create and delete in (but not execute from).
    pub write: Vec<PathBuf>,
    /// Device files (or folders of them) it may read, write and `ioctl`.
    pub devices: Vec<PathBuf>,
    /// Install the seccomp filter: no socket but `AF_UNIX`, no `setsid`/`setpgid`, no
    /// `ptrace`, no io_uring, no System V IPC, message queues, keyrings or `bpf()`.
    pub filter_syscalls: bool,
    /// Let the process read its own `/proc/<pid>`, and write its own threads' files
    /// (`/proc/<pid>/task`, e.g. a thread's `comm`): NVIDIA's CUDA driver fails to initialise
    /// without it (error 304). Only
    /// its own: the rule is added in the child, where `/proc/self` is the child (to the ruleset
    /// the child shares with this policy's [`Sandbox`]: prepare one per child).
    pub own_threads: bool,
}

/// Why a sandbox cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("no kernel sandbox on this machine: {0}")]
    Unavailable(String),
    #[error("cannot build the sandbox: {0}")]
    Build(#[from] io::Error),
}

impl Policy {
    /// Builds the ruleset and the filter (in the parent: this allocates and opens files).
    pub fn prepare(&self) -> Result<Sandbox, SandboxError> {
        // A way to see, and test, how a run behaves where there is no sandbox: it can only make
        // a run refuse to start, or (with the caller's explicit consent) run marked unsandboxed.
        if std::env::var_os(DISABLE_ENV).is_some_and(|v| v == "off") {
            return Err(SandboxError::Unavailable(format!("disabled by {DISABLE_ENV}=off")));
        }
        if !cfg!(target_os = "linux") {
            return Err(SandboxError::Unavailable(format!("landlock is Linux-only (this is {})", std::env::consts::OS)));
        }
        let abi = landlock_abi().map_err(SandboxError::Unavailable)?;
        let mut ruleset = Ruleset::new(abi)?;
        let mut missing = Vec::new();
        let all = landlock::fs_rights(abi);
        let groups: [(&[PathBuf], u64); 4] = [
            (&self.read, ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR),
            (&self.execute, ACCESS_FS_READ_FILE | ACCESS_FS_EXECUTE),
            (&self.write, all & !ACCESS_FS_EXECUTE),
            (&self.devices, ACCESS_FS_READ_FILE | ACCESS_FS_WRITE_FILE | ACCESS_FS_IOCTL_DEV | ACCESS_FS_READ_DIR),
        ];
        for (paths, rights) in groups {
            for p in paths {
                if !ruleset.allow(p, rights)? {
                    missing.push(p.clone());
                }
            }
        }
        Ok(Sandbox {
            ruleset,
            abi,
            filter: if self.filter_syscalls { seccomp::program() } else { Vec::new() },
            parent: std::process::id() as libc::pid_t,
            drop_capabilities: unsafe { libc::geteuid() } == 0,
            own_threads: self.own_threads,
            missing,
        })
    }
}

/// A prepared sandbox, ready to be entered by a child.
pub struct Sandbox {
    ruleset: Ruleset,
    abi: u32,
    filter: Vec<libc::sock_filter>,
    parent: libc::pid_t,
    drop_capabilities: bool,
    own_threads: bool,
    missing: Vec<PathBuf>,
}

// SAFETY: sock_filter holds plain integers; nothing here is tied to a thread.
unsafe impl Send for Sandbox {}
unsafe impl Sync for Sandbox {}

impl Sandbox {
    /// The kernel's landlock ABI.
    pub fn abi(&self) -> u32 {
        self.abi
    }

    /// Paths of the policy that did not exist (no rule was needed for them).
    pub fn missing(&self) -> &[PathBuf] {
        &self.missing
    }

    /// One line for logs and summaries, e.g. `landlock ABI 7 (files, TCP, signals), seccomp,
    /// no capabilities`.
    pub fn describe(&self) -> String {
        let mut scope = vec!["files"];
        if self.abi >= 4 {
            scope.push("TCP");
        }
        if self.abi >= 6 {
            scope.push("signals, abstract sockets");
        }
        let mut s = format!("landlock ABI {} ({})", self.abi, scope.join(", "));
        if !self.filter.is_empty() {
            s.push_str(", seccomp (no network sockets, no new sessions, no ptrace, no IPC that outlives a process)");
        }
        s.push_str(", no capabilities");
        s
    }

    /// Makes `cmd`'s child enter this sandbox just before `exec`.
    pub fn apply(self: &Arc<Self>, cmd: &mut Command) {
        let sandbox = self.clone();
        // SAFETY: `enter` only makes system calls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || sandbox.enter());
        }
    }

    /// Restricts the calling process for good. Call it in a single-threaded child between
    /// `fork` and `exec` (see [`Sandbox::apply`]); it allocates nothing.
    pub fn enter(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != self.parent {
                return Err(io::Error::other("the parent exited before the sandbox was entered"));
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if self.drop_capabilities {
                drop_capabilities()?;
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if self.own_threads {
            // In the child: `/proc/self` names it, and keeps naming it across `exec`.
            self.ruleset.allow_in_child(c"/proc/self", ACCESS_FS_READ_FILE | ACCESS_FS_READ_DIR)?;
            self.ruleset.allow_in_child(c"/proc/self/task", ACCESS_FS_READ_FILE | ACCESS_FS_WRITE_FILE | ACCESS_FS_TRUNCATE | ACCESS_FS_READ_DIR)?;
        }
        self.ruleset.restrict_self()?;
        if !self.filter.is_empty() {
            seccomp::install(&self.filter)?;
        }
        Ok(())
    }
}

/// Root gives up every capability, including at later `exec`s: `SECBIT_NOROOT` (locked) stops
/// uid 0 regaining them, the bounding set is emptied, then the sets themselves.
#[cfg(target_os = "linux")]
unsafe fn drop_capabilities() -> io::Result<()> {
    const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
    const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
    const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_SETUID_FIXUP
        | SECBIT_NO_SETUID_FIXUP_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    unsafe {
        if libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        for cap in 0..64 {
            // EINVAL past the kernel's last capability.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 && *libc::__errno_location() != libc::EINVAL {
                return Err(io::Error::last_os_error());
            }
        }
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0);
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = Header { version: 0x2008_0522, pid: 0 };
        let data = [Data { effective: 0, permitted: 0, inheritable: 0 }, Data { effective: 0, permitted: 0, inheritable: 0 }];
        if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether `path` equals `dir` or lies below it (both absolute, compared lexically after the
/// links in both are resolved where they exist).
pub fn is_within(path: &Path, dir: &Path) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canon(path).starts_with(canon(dir))
}

#[cfg(all(test, target_os = "linux"))]
mod tests;
