//! Child processes in their own process group, with a hard timeout that kills the whole group.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Set by SIGINT/SIGTERM once `install_interrupt_handler` ran.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C stops the running experiment's process group and lets the runner record it.
pub fn install_interrupt_handler() {
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Makes every run in flight stop as if Ctrl-C had been pressed (the runner is stopping).
pub fn request_stop() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub enum Output<'a> {
    /// stdout and stderr both into this file.
    Log(&'a Path),
    /// Like `Log`, appending (a second step of the same run).
    Append(&'a Path),
    /// stdout into this file, stderr into the log (agents print their JSON on stdout).
    Split { stdout: &'a Path, stderr: &'a Path },
    /// The runner's own terminal.
    Inherit,
}

#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// Exit status; None when killed by a signal.
    pub code: Option<i32>,
    pub timed_out: bool,
    pub interrupted: bool,
    pub seconds: f64,
}

/// Runs `sh -c command` in `cwd`, in a new process group. `on_start` gets the group id (to
/// store it: after a runner crash, `--resume` kills the orphaned group); `tick` is called about
/// ten times a second with the elapsed time.
pub fn run_shell(
    command: &str,
    cwd: &Path,
    env: &[(String, String)],
    output: Output<'_>,
    timeout: Duration,
    on_start: impl FnMut(u32) -> Result<()>,
    tick: impl FnMut(Duration),
) -> Result<Finished> {
    run_shell_in(None, command, cwd, env, output, timeout, on_start, tick)
}

/// [`run_shell`], inside `sandbox` when there is one (it leads its own process group too).
#[allow(clippy::too_many_arguments)]
pub fn run_shell_in(
    sandbox: Option<&std::sync::Arc<contract::sandbox::Sandbox>>,
    command: &str,
    cwd: &Path,
    env: &[(String, String)],
    output: Output<'_>,
    timeout: Duration,
    mut on_start: impl FnMut(u32) -> Result<()>,
    mut tick: impl FnMut(Duration),
) -> Result<Finished> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).current_dir(cwd).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    match output {
        Output::Log(path) => {
            let f = File::create(path).with_context(|| format!("creating log {}", path.display()))?;
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        Output::Append(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log {}", path.display()))?;
            cmd.stdout(f.try_clone()?).stderr(f);
        }
        Output::Split { stdout, stderr } => {
            cmd.stdout(File::create(stdout)?).stderr(File::create(stderr)?);
        }
        Output::Inherit => {}
    }
    match sandbox {
        Some(s) => s.apply(&mut cmd),
        None => {
            cmd.process_group(0);
        }
    }
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting `sh -c {command}` in {}", cwd.display()))?;
    let pgid = child.id();
    on_start(pgid)?;
    loop {
        if let Some(status) = child.try_wait()? {
            kill_group(pgid, libc::SIGKILL); // stragglers the command left in the background
            return Ok(Finished { code: status.code(), timed_out: false, interrupted: false, seconds: start.elapsed().as_secs_f64() });
        }
        let elapsed = start.elapsed();
        let timed_out = elapsed >= timeout;
        if timed_out || interrupted() {
            terminate_group(pgid, &mut child);
            return Ok(Finished { code: None, timed_out, interrupted: !timed_out, seconds: start.elapsed().as_secs_f64() });
        }
        tick(elapsed);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill_group(pgid: u32, signal: libc::c_int) -> bool {
    unsafe { libc::kill(-(pgid as libc::pid_t), signal) == 0 }
}

/// SIGTERM to the group, up to 5 s of grace, then SIGKILL; reaps the child.
fn terminate_group(pgid: u32, child: &mut std::process::Child) {
    kill_group(pgid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(pgid, libc::SIGKILL);
    let _ = child.wait();
}

/// An exclusive `flock` on `path` (created if missing), released when dropped or when the process
/// dies: a killed runner never leaves it held.
pub struct FileLock(File);

impl FileLock {
    /// Waits for the lock; gives up (None) once `give_up` says so (timeout, Ctrl-C).
    pub fn acquire(path: &Path, mut give_up: impl FnMut() -> bool) -> Result<Option<FileLock>> {
        use std::os::fd::AsRawFd;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        loop {
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Some(FileLock(f)));
            }
            if give_up() {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Kills a process group left behind by a runner that died (kill -9); true if one was there.
pub fn kill_orphan_group(pgid: i64) -> bool {
    if pgid <= 1 {
        return false;
    }
    kill_group(pgid as u32, libc::SIGKILL)
}

/// The last `n` lines of a text file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Quotes a string for `sh`.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=+,@%".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let t = Instant::now();
        let f = run_shell("sleep 30 & sleep 30; echo never", dir.path(), &[], Output::Log(&log), Duration::from_millis(500), |_| Ok(()), |_| {}).unwrap();
        assert!(f.timed_out && f.code.is_none());
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn exit_codes_and_quotes() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let cmd = format!("echo {}; exit 3", shell_quote("it's $HOME"));
        let f = run_shell(&cmd, dir.path(), &[], Output::Log(&log), Duration::from_secs(10), |_| Ok(()), |_| {}).unwrap();
        assert_eq!(f.code, Some(3));
        assert_eq!(tail(&log, 1), "it's $HOME");
    }
}
