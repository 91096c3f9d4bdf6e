//! The trainer as a child process: started in its sandbox with a clean environment, one
//! socket and (in full mode) the shared logits region; its output relayed with a prefix until
//! evaluation starts (`output`); its whole process group killed and reaped at the end.

use std::ffi::OsString;
use std::io::{BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contract::sandbox::Sandbox;
use contract::shm::Shm;
use contract::wire::{CHANNEL_FD_ENV, SHM_FD_ENV, ToHarness, ToTrainer, WireError};

use crate::output::Relay;

/// Variables passed through from the harness's environment (device and thread settings);
/// everything else is dropped, the harness's own variables included.
const PASSED_PREFIXES: &[&str] = &["CUDA_", "CUBECL_", "WGPU_", "VK_", "MESA_", "NVIDIA_", "TORCH_", "LIBTORCH_", "__GLX_", "__EGL_"];
const PASSED_NAMES: &[&str] = &["RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "RUST_BACKTRACE", "RUST_MIN_STACK", "LANG", "LC_ALL"];

/// The environment the trainer starts with: the passed variables, its library path, and its
/// scratch folder as `HOME`, `TMPDIR` and the XDG folders.
pub fn trainer_env(scratch: &Path, library_path: Option<&OsString>) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            PASSED_NAMES.contains(&k.as_ref()) || PASSED_PREFIXES.iter().any(|p| k.starts_with(p))
        })
        .collect();
    let s = scratch.as_os_str().to_os_string();
    for (k, sub) in [("HOME", ""), ("TMPDIR", "tmp"), ("XDG_CACHE_HOME", "cache"), ("XDG_RUNTIME_DIR", "run"), ("XDG_CONFIG_HOME", "config")] {
        let path = if sub.is_empty() { s.clone() } else { scratch.join(sub).into_os_string() };
        env.push((k.into(), path));
    }
    env.push(("PATH".into(), "/usr/bin:/bin".into()));
    if let Some(lp) = library_path {
        env.push(("LD_LIBRARY_PATH".into(), lp.clone()));
    }
    env
}

/// How the trainer ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal, when one killed it.
    pub signal: Option<i32>,
    /// Peak resident set of the trainer process in MiB (`ru_maxrss`), when reaped.
    pub max_rss_mb: Option<f64>,
    /// Whether the harness killed it (it did not exit by itself in time).
    pub killed: bool,
}

impl Exit {
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("exited with status {c}"),
            (_, Some(s)) => format!("was killed by signal {s}{}", if self.killed { " (by the harness)" } else { "" }),
            _ => "ended in an unknown way".into(),
        }
    }
}

/// A running trainer.
pub struct TrainerProcess {
    pid: libc::pid_t,
    reader: UnixStream,
    writer: BufWriter<UnixStream>,
    shm: Option<Shm>,
    output: Relay,
    exit: Option<Exit>,
    started: Instant,
}

/// What to start.
pub struct Launch<'a> {
    pub binary: &'a Path,
    pub scratch: &'a Path,
    /// None: no sandbox (the log and the summary say so).
    pub sandbox: Option<Arc<Sandbox>>,
    /// Bytes of the shared logits region; 0 for none.
    pub shm_bytes: usize,
    /// The trainer's `LD_LIBRARY_PATH` (the folders its sandbox lets it read).
    pub library_path: Option<OsString>,
    /// Set on top of the passed environment (the profile's kernel settings).
    pub extra_env: Vec<(OsString, OsString)>,
}

impl TrainerProcess {
    /// Starts the trainer. Its clock starts now: see [`TrainerProcess::started`].
    pub fn start(launch: Launch<'_>) -> anyhow::Result<TrainerProcess> {
        use anyhow::Context;
        let (parent_end, child_end) = UnixStream::pair().context("creating the trainer's socket")?;
        let shm = if launch.shm_bytes > 0 { Some(Shm::create(launch.shm_bytes).context("creating the shared logits region")?) } else { None };
        let child_fd = child_end.as_raw_fd();
        let shm_fd = shm.as_ref().map(|s| s.raw_fd());
        let mut cmd = Command::new(launch.binary);
        cmd.env_clear()
            .envs(trainer_env(launch.scratch, launch.library_path.as_ref()))
            .envs(launch.extra_env.iter().map(|(k, v)| (k, v)))
            .env(CHANNEL_FD_ENV, child_fd.to_string())
            .current_dir(launch.scratch)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(fd) = shm_fd {
            cmd.env(SHM_FD_ENV, fd.to_string());
        }
        // SAFETY: fcntl only, on descriptors created above.
        unsafe {
            cmd.pre_exec(move || {
                for fd in [Some(child_fd), shm_fd].into_iter().flatten() {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        match &launch.sandbox {
            Some(s) => s.apply(&mut cmd),
            None => {
                cmd.process_group(0);
            }
        }
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting the trainer {}", launch.binary.display()))?;
        drop(child_end);
        let pid = child.id() as libc::pid_t;
        let output = Relay::start(child.stdout.take().map(Into::into), child.stderr.take().map(Into::into));
        // The Child handle is dropped without waiting: the harness reaps by pid (wait4, which
        // also gives the peak memory).
        drop(child);
        Ok(TrainerProcess {
            pid,
            reader: parent_end.try_clone()?,
            writer: BufWriter::new(parent_end),
            shm,
            output,
            exit: None,
            started,
        })
    }

    /// When the trainer was started: the training clock's zero.
    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    pub fn shm(&self) -> Option<&Shm> {
        self.shm.as_ref()
    }

    /// Sends a message; a trainer that is gone is [`WireError::Closed`].
    pub fn send(&mut self, m: &ToTrainer) -> Result<(), WireError> {
        m.write(&mut self.writer).and_then(|_| self.writer.flush()).map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => WireError::Closed,
            _ => WireError::Io(e),
        })
    }

    /// The trainer's next message, waiting at most until `deadline`.
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<ToHarness, WireError> {
        ToHarness::read(&mut Deadlined { stream: &mut self.reader, deadline })
    }

    /// From now on nothing the trainer prints reaches the log: it has seen validation inputs,
    /// and its output must not be a way to copy them out.
    pub fn withhold_output(&self) {
        self.output.withhold(Duration::from_secs(2));
    }

    /// Bytes of output withheld since [`TrainerProcess::withhold_output`].
    pub fn withheld_bytes(&self) -> u64 {
        self.output.withheld_bytes()
    }

    /// Waits up to `grace` for the trainer to exit on its own, then kills its process group;
    /// reaps it and any descendant left to the harness. Idempotent.
    pub fn finish(&mut self, grace: Duration) -> Exit {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        let deadline = Instant::now() + grace;
        let mut exit = loop {
            if let Some(e) = reap(self.pid, false) {
                break e;
            }
            if Instant::now() >= deadline {
                kill_group(self.pid);
                let mut e = reap(self.pid, true).unwrap_or(Exit { code: None, signal: None, max_rss_mb: None, killed: true });
                e.killed = true;
                break e;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // Whatever the trainer started is in its process group (it cannot leave it): gone too.
        kill_group(self.pid);
        reap_orphans();
        self.output.join();
        if exit.code.is_none() && exit.signal.is_none() {
            exit.killed = true;
        }
        self.exit = Some(exit.clone());
        exit
    }
}

impl Drop for TrainerProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            kill_group(self.pid);
            self.finish(Duration::ZERO);
        }
    }
}

/// SIGKILL to the trainer's process group (its pid: it leads the group).
pub fn kill_group(pgid: libc::pid_t) {
    if pgid > 1 {
        // SAFETY: a plain system call.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// Reaps `pid`; `block` waits for it.
fn reap(pid: libc::pid_t, block: bool) -> Option<Exit> {
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pointers to locals.
        let r = unsafe { libc::wait4(pid, &mut status, if block { 0 } else { libc::WNOHANG }, &mut usage) };
        if r == pid {
            let (code, signal) = if libc::WIFEXITED(status) {
                (Some(libc::WEXITSTATUS(status)), None)
            } else if libc::WIFSIGNALED(status) {
                (None, Some(libc::WTERMSIG(status)))
            } else {
                (None, None)
            };
            // ru_maxrss is in KiB on Linux.
            let max_rss_mb = (usage.ru_maxrss > 0).then(|| usage.ru_maxrss as f64 / 1024.0);
            return Some(Exit { code, signal, max_rss_mb, killed: false });
        }
        if r == 0 {
            return None;
        }
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // ECHILD: already reaped or never ours.
            return Some(Exit { code: None, signal: None, max_rss_mb: None, killed: false });
        }
    }
}

/// Reaps every child left to the harness (descendants of the trainer reparented to it, which
/// is a child subreaper; see [`become_subreaper`]).
fn reap_orphans() {
    loop {
        let mut status = 0;
        // SAFETY: pointer to a local.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r <= 0 {
            return;
        }
    }
}

/// Makes processes the trainer double-forks become children of the harness when their parent
/// dies, instead of init's, so that they are reaped here.
pub fn become_subreaper() {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// A reader that gives up at a deadline, however slowly the bytes come.
struct Deadlined<'a> {
    stream: &'a mut UnixStream,
    deadline: Option<Instant>,
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let timeout = match self.deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline passed"));
                }
                Some(left)
            }
            None => None,
        };
        self.stream.set_read_timeout(timeout)?;
        self.stream.read(buf)
    }
}

/// A scratch folder for the trainer (its only writable place), removed on drop.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A fresh folder under `parent`, readable and writable by the trainer alone.
    pub fn create(parent: &Path) -> anyhow::Result<Scratch> {
        use anyhow::Context;
        use std::os::unix::fs::DirBuilderExt;
        let mut rng = contract::random::Unpredictable::new();
        let path = parent.join(format!("autoresearch-trainer-{}-{:016x}", std::process::id(), rng.next_u64()));
        std::fs::DirBuilder::new().mode(0o700).create(&path).with_context(|| format!("creating the trainer's scratch folder {}", path.display()))?;
        for sub in ["tmp", "cache", "run", "config"] {
            std::fs::DirBuilder::new().mode(0o700).create(path.join(sub))?;
        }
        Ok(Scratch { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
