//! The runner's PID file, `.autoresearch/<tag>/runner.pid`: which process runs a tag's loop, so
//! that `autoresearch stop` finds it (and a shell can: `kill -INT "$(head -1 FILE)"`), and a
//! second `run` of the same tag is refused while the first lives.
//!
//! Line 1 is the process id, line 2 the process's start time (clock ticks since boot, from
//! `/proc/<pid>/stat`, where there is one): a stale file whose id the system gave to another
//! process since does not count as a live runner.
//!
//! The claim itself is a lock on `runner.lock` beside it, held while the runner lives (the
//! system drops it when the process dies, however it dies): two runners of one tag started in
//! the same instant cannot both see "no runner" and both go on.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::errors::repo_state;

pub const FILE: &str = "runner.pid";
const LOCK: &str = "runner.lock";

/// A live runner, as its PID file names it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Runner {
    pub pid: u32,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The process's start time, where the system tells it (Linux); None elsewhere or when it has
/// no such process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn alive(pid: u32) -> bool {
    // Signal 0 checks that the process exists (EPERM: it exists, as another user's).
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The runner the tag's PID file names, if that process still runs.
pub fn live(state_dir: &Path) -> Option<Runner> {
    let text = std::fs::read_to_string(path(state_dir)).ok()?;
    let mut lines = text.lines();
    let pid: u32 = lines.next()?.trim().parse().ok()?;
    let recorded: Option<u64> = lines.next().and_then(|l| l.trim().parse().ok());
    if pid == 0 || !alive(pid) {
        return None;
    }
    match (recorded, start_time(pid)) {
        (Some(a), Some(b)) if a != b => None,
        _ => Some(Runner { pid }),
    }
}

/// This process's claim on a tag, released (the file removed, the lock dropped) when dropped.
pub struct PidFile {
    path: PathBuf,
    _lock: std::fs::File,
}

impl PidFile {
    /// Writes the PID file, refusing when another live runner holds the tag.
    pub fn claim(state_dir: &Path, tag: &str) -> Result<PidFile> {
        let me = std::process::id();
        let held = |who: String| {
            repo_state(format!(
                "a runner of tag {tag} is running ({who}, {}): stop it first (`autoresearch stop --tag {tag}`), or choose another --tag",
                path(state_dir).display()
            ))
        };
        let lock_path = state_dir.join(LOCK);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(held(live(state_dir).map(|r| format!("pid {}", r.pid)).unwrap_or_else(|| "starting".into())));
            }
            Err(std::fs::TryLockError::Error(e)) => anyhow::bail!("cannot lock {}: {e}", lock_path.display()),
        }
        // A runner of a version without the lock leaves only its PID file.
        if let Some(other) = live(state_dir)
            && other.pid != me
        {
            return Err(held(format!("pid {}", other.pid)));
        }
        let text = format!("{me}\n{}\n", start_time(me).map(|t| t.to_string()).unwrap_or_default());
        crate::results::write_atomic(&path(state_dir), text)?;
        Ok(PidFile { path: path(state_dir), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only our own: a file another runner wrote since is theirs.
        let ours = std::fs::read_to_string(&self.path).ok().and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok())) == Some(std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `autoresearch stop`: asks the tag's runner to stop as Ctrl-C does (SIGINT: the runs in
/// flight are stopped and recorded, and `run --resume` runs them again), then waits up to
/// `wait` for it to exit. Returns the runner's pid.
pub fn stop(state_dir: &Path, tag: &str, wait: Duration) -> Result<u32> {
    let Some(runner) = live(state_dir) else {
        let stale = path(state_dir).exists();
        if stale {
            let _ = std::fs::remove_file(path(state_dir));
        }
        return Err(repo_state(format!(
            "no runner of tag {tag} is running{}",
            if stale { " (its stale PID file was removed)" } else { "" }
        )));
    };
    if unsafe { libc::kill(runner.pid as libc::pid_t, libc::SIGINT) } != 0 {
        anyhow::bail!("cannot signal the runner of tag {tag} (pid {}): {}", runner.pid, std::io::Error::last_os_error());
    }
    let t0 = Instant::now();
    while live(state_dir) == Some(runner) {
        if t0.elapsed() >= wait {
            anyhow::bail!(
                "the runner of tag {tag} (pid {}) is still stopping after {} s: it stops its runs in flight first; wait, or `kill -9 {}` and `autoresearch run --resume`",
                runner.pid,
                wait.as_secs(),
                runner.pid
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(runner.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_names_this_process_until_dropped_and_a_stale_file_names_no_runner() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(live(dir.path()), None);
        let claim = PidFile::claim(dir.path(), "t").unwrap();
        assert_eq!(live(dir.path()), Some(Runner { pid: std::process::id() }));
        drop(claim);
        assert!(!path(dir.path()).exists());
        // A live pid with another start time is a reused id: not a runner.
        std::fs::write(path(dir.path()), format!("{}\n1\n", std::process::id())).unwrap();
        assert_eq!(live(dir.path()), None);
        let err = stop(dir.path(), "t", Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("stale PID file was removed"), "{err}");
        assert!(!path(dir.path()).exists());
        // A process that exited: not a runner.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        std::fs::write(path(dir.path()), format!("{pid}\n")).unwrap();
        assert_eq!(live(dir.path()), None);
    }

    #[test]
    fn a_second_claim_of_a_tag_is_refused_while_the_first_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = PidFile::claim(dir.path(), "t").unwrap();
        // The same process, so the PID file alone would let it through: the lock does not.
        let err = PidFile::claim(dir.path(), "t").err().expect("a second claim must be refused");
        assert!(err.to_string().contains("a runner of tag t is running"), "{err}");
        assert_eq!(live(dir.path()), Some(Runner { pid: std::process::id() }), "the refused claim left the first one's file alone");
        drop(first);
        let again = PidFile::claim(dir.path(), "t").unwrap();
        assert_eq!(live(dir.path()), Some(Runner { pid: std::process::id() }));
        drop(again);
    }
}
