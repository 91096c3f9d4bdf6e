//! Landlock (Linux 5.13+) through its three system calls, as `include/uapi/linux/landlock.h`
//! defines them. A ruleset is built in the parent, before `fork`; the child only calls
//! `landlock_restrict_self`, which allocates nothing and is safe between `fork` and `exec`.
//!
//! Every right the kernel's ABI knows is handled, so anything not granted by a rule is denied:
//! files (ABI 1-3, 5), TCP bind and connect (ABI 4), signals and abstract Unix sockets to
//! processes outside the sandbox (ABI 6).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub const ACCESS_FS_EXECUTE: u64 = 1 << 0;
pub const ACCESS_FS_WRITE_FILE: u64 = 1 << 1;
pub const ACCESS_FS_READ_FILE: u64 = 1 << 2;
pub const ACCESS_FS_READ_DIR: u64 = 1 << 3;
pub const ACCESS_FS_REMOVE_DIR: u64 = 1 << 4;
pub const ACCESS_FS_REMOVE_FILE: u64 = 1 << 5;
pub const ACCESS_FS_MAKE_CHAR: u64 = 1 << 6;
pub const ACCESS_FS_MAKE_DIR: u64 = 1 << 7;
pub const ACCESS_FS_MAKE_REG: u64 = 1 << 8;
pub const ACCESS_FS_MAKE_SOCK: u64 = 1 << 9;
pub const ACCESS_FS_MAKE_FIFO: u64 = 1 << 10;
pub const ACCESS_FS_MAKE_BLOCK: u64 = 1 << 11;
pub const ACCESS_FS_MAKE_SYM: u64 = 1 << 12;
pub const ACCESS_FS_REFER: u64 = 1 << 13;
pub const ACCESS_FS_TRUNCATE: u64 = 1 << 14;
pub const ACCESS_FS_IOCTL_DEV: u64 = 1 << 15;
pub const ACCESS_NET_BIND_TCP: u64 = 1 << 0;
pub const ACCESS_NET_CONNECT_TCP: u64 = 1 << 1;
pub const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
pub const SCOPE_SIGNAL: u64 = 1 << 1;

/// Rights that apply to a file (the others only make sense on a directory).
pub const FILE_RIGHTS: u64 = ACCESS_FS_EXECUTE | ACCESS_FS_WRITE_FILE | ACCESS_FS_READ_FILE | ACCESS_FS_TRUNCATE | ACCESS_FS_IOCTL_DEV;

const CREATE_RULESET_VERSION: u32 = 1 << 0;
const RULE_PATH_BENEATH: libc::c_int = 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// The kernel's landlock ABI version, or why there is none.
pub fn abi() -> Result<u32, String> {
    // SAFETY: the documented version query: no pointer is read.
    let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<RulesetAttr>(), 0usize, CREATE_RULESET_VERSION) };
    if v < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOSYS) => "the kernel has no landlock (Linux 5.13 or later with CONFIG_SECURITY_LANDLOCK)".into(),
            Some(libc::EOPNOTSUPP) => "landlock is built into the kernel but not enabled (add `landlock` to the lsm= boot parameter)".into(),
            _ => format!("landlock is unavailable: {e}"),
        });
    }
    Ok(v as u32)
}

/// The file-system rights ABI `abi` knows.
pub fn fs_rights(abi: u32) -> u64 {
    let mut r = ACCESS_FS_EXECUTE
        | ACCESS_FS_WRITE_FILE
        | ACCESS_FS_READ_FILE
        | ACCESS_FS_READ_DIR
        | ACCESS_FS_REMOVE_DIR
        | ACCESS_FS_REMOVE_FILE
        | ACCESS_FS_MAKE_CHAR
        | ACCESS_FS_MAKE_DIR
        | ACCESS_FS_MAKE_REG
        | ACCESS_FS_MAKE_SOCK
        | ACCESS_FS_MAKE_FIFO
        | ACCESS_FS_MAKE_BLOCK
        | ACCESS_FS_MAKE_SYM;
    if abi >= 2 {
        r |= ACCESS_FS_REFER;
    }
    if abi >= 3 {
        r |= ACCESS_FS_TRUNCATE;
    }
    if abi >= 5 {
        r |= ACCESS_FS_IOCTL_DEV;
    }
    r
}

/// A ruleset under construction, then ready to enforce.
pub struct Ruleset {
    fd: OwnedFd,
    handled_fs: u64,
}

impl Ruleset {
    /// A ruleset handling every right of `abi`: files, TCP (ABI 4+), signal and abstract-socket
    /// scoping (ABI 6+).
    pub fn new(abi: u32) -> io::Result<Ruleset> {
        let handled_fs = fs_rights(abi);
        let attr = RulesetAttr {
            handled_access_fs: handled_fs,
            handled_access_net: if abi >= 4 { ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP } else { 0 },
            scoped: if abi >= 6 { SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL } else { 0 },
        };
        // An older kernel reads only the fields it knows and refuses non-zero ones past them.
        let size = match abi {
            0..=3 => 8,
            4 | 5 => 16,
            _ => std::mem::size_of::<RulesetAttr>(),
        };
        // SAFETY: attr outlives the call and `size` bytes of it are initialised.
        let fd = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, &attr as *const RulesetAttr, size, 0u32) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Ruleset { fd: unsafe { OwnedFd::from_raw_fd(fd as i32) }, handled_fs })
    }

    /// Allows `rights` beneath `path` (a file takes only its file rights). Returns false when
    /// the path does not exist.
    pub fn allow(&mut self, path: &Path, rights: u64) -> io::Result<bool> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))?;
        // SAFETY: a valid C string; O_PATH opens anything without reading it.
        let raw = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::NotFound {
                return Ok(false);
            }
            return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
        }
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let is_dir = std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false);
        let mut allowed = rights & self.handled_fs;
        if !is_dir {
            allowed &= FILE_RIGHTS;
        }
        if allowed == 0 {
            return Ok(true);
        }
        let attr = PathBeneathAttr { allowed_access: allowed, parent_fd: fd.as_raw_fd() };
        // SAFETY: attr outlives the call.
        let r = unsafe { libc::syscall(libc::SYS_landlock_add_rule, self.fd.as_raw_fd(), RULE_PATH_BENEATH, &attr as *const PathBeneathAttr, 0u32) };
        if r != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("landlock rule for {}: {e}", path.display())));
        }
        Ok(true)
    }

    /// [`Ruleset::allow`] for a folder named by a C string, without allocating: for a child
    /// between `fork` and `exec` (`/proc/self/...` then names the child).
    pub fn allow_in_child(&self, dir: &std::ffi::CStr, rights: u64) -> io::Result<()> {
        // SAFETY: a valid C string; O_PATH opens anything without reading it.
        let raw = unsafe { libc::open(dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is ours; OwnedFd closes it (the rule keeps the inode).
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let attr = PathBeneathAttr { allowed_access: rights & self.handled_fs, parent_fd: fd.as_raw_fd() };
        // SAFETY: attr outlives the call.
        let r = unsafe { libc::syscall(libc::SYS_landlock_add_rule, self.fd.as_raw_fd(), RULE_PATH_BENEATH, &attr as *const PathBeneathAttr, 0u32) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Restricts the calling thread (and, called before `exec` in a single-threaded child, the
    /// whole process and everything it starts). Needs `no_new_privs` or CAP_SYS_ADMIN.
    /// Async-signal-safe: one system call.
    pub fn restrict_self(&self) -> io::Result<()> {
        // SAFETY: a plain system call on our descriptor.
        let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, self.fd.as_raw_fd(), 0u32) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
