//! A small seccomp filter for what landlock does not cover. It denies, with an error (never a
//! kill, so a library that probes gets an answer):
//!
//! - `socket()` of any family but `AF_UNIX`: landlock scopes TCP only, not UDP or raw sockets;
//! - `setsid()` and `setpgid()`: every process the trainer starts stays in its process group,
//!   which the harness kills as one at the end;
//! - `ptrace()`, `process_vm_readv()`, `process_vm_writev()`: belt and braces over landlock's
//!   own ptrace restriction;
//! - `io_uring_setup()`: io_uring can open sockets without the `socket()` system call;
//! - System V IPC (`shmget`, `msgget`, `semget` and their operations), POSIX message queues,
//!   kernel keyrings and `bpf()`: state that outlives a process without a path landlock could
//!   refuse, so one evaluating process could leave validation tokens for the next.
//!
//! Everything else is allowed. A system call of another architecture (or the x32 ABI) kills
//! the process: its numbers would mean other calls.

use std::io;

use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, sock_filter};

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARG0_LOW: u32 = 16;

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code: code as u16, jt, jf, k }
}

fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (e as u32 & libc::SECCOMP_RET_DATA)
}

/// The filter program, built before `fork`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn program() -> Vec<sock_filter> {
    let denied: [(libc::c_long, i32); 29] = [
        (libc::SYS_setsid, libc::EPERM),
        (libc::SYS_setpgid, libc::EPERM),
        (libc::SYS_ptrace, libc::EPERM),
        (libc::SYS_process_vm_readv, libc::EPERM),
        (libc::SYS_process_vm_writev, libc::EPERM),
        (libc::SYS_io_uring_setup, libc::ENOSYS),
        (libc::SYS_io_uring_register, libc::ENOSYS),
        (libc::SYS_shmget, libc::EPERM),
        (libc::SYS_shmat, libc::EPERM),
        (libc::SYS_shmctl, libc::EPERM),
        (libc::SYS_shmdt, libc::EPERM),
        (libc::SYS_msgget, libc::EPERM),
        (libc::SYS_msgsnd, libc::EPERM),
        (libc::SYS_msgrcv, libc::EPERM),
        (libc::SYS_msgctl, libc::EPERM),
        (libc::SYS_semget, libc::EPERM),
        (libc::SYS_semop, libc::EPERM),
        (libc::SYS_semtimedop, libc::EPERM),
        (libc::SYS_semctl, libc::EPERM),
        (libc::SYS_mq_open, libc::EPERM),
        (libc::SYS_mq_unlink, libc::EPERM),
        (libc::SYS_mq_timedsend, libc::EPERM),
        (libc::SYS_mq_timedreceive, libc::EPERM),
        (libc::SYS_mq_notify, libc::EPERM),
        (libc::SYS_mq_getsetattr, libc::EPERM),
        (libc::SYS_add_key, libc::EPERM),
        (libc::SYS_request_key, libc::EPERM),
        (libc::SYS_keyctl, libc::EPERM),
        (libc::SYS_bpf, libc::EPERM),
    ];
    let mut p = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, OFFSET_ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD | BPF_W | BPF_ABS, OFFSET_NR),
        // x32 system calls (bit 30) on x86_64.
        jump(BPF_JMP | BPF_JGE | BPF_K, 0x4000_0000, 0, 1),
        stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    for (nr, e) in denied {
        p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, nr as u32, 0, 1));
        p.push(stmt(BPF_RET | BPF_K, errno(e)));
    }
    // socket(family, ...): only AF_UNIX.
    p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_socket as u32, 0, 3));
    p.push(stmt(BPF_LD | BPF_W | BPF_ABS, OFFSET_ARG0_LOW));
    p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, libc::AF_UNIX as u32, 1, 0));
    p.push(stmt(BPF_RET | BPF_K, errno(libc::EACCES)));
    p.push(stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW));
    p
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn program() -> Vec<sock_filter> {
    Vec::new()
}

/// Installs `program` on the calling thread (inherited across `fork` and `exec`). Needs
/// `no_new_privs`. Async-signal-safe: one system call.
pub fn install(program: &[sock_filter]) -> io::Result<()> {
    if program.is_empty() {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "no seccomp filter for this architecture"));
    }
    let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut sock_filter };
    // SAFETY: prog points at a valid program for the duration of the call; the kernel copies it.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0u32, &prog as *const libc::sock_fprog) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
