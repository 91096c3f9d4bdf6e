//! The trainer's stdout and stderr, relayed into the harness's own with a prefix on every line
//! until evaluation starts, and withheld from then on.
//!
//! The switch is exact: when training is done the harness asks the relay to withhold, and each
//! pipe is read until it is empty before it stops forwarding. Everything the trainer printed
//! before it said training was done is in the pipe by then, so it is logged; everything after
//! the first evaluation batch is not (the trainer has seen validation inputs, and its output
//! must not be a way to copy them out).

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Prefix of every line of the trainer's output in the harness's log: nothing the trainer
/// prints can start a line with `val_bpb:` (the reference greps `^val_bpb:`).
pub const PREFIX: &str = "[trainer] ";

/// At most this much of the trainer's output reaches the log.
const MAX_FORWARDED_BYTES: u64 = 32 << 20;
/// A line longer than this is cut (memory stays bounded).
const MAX_LINE: usize = 1 << 16;

const FORWARD: u8 = 0;
const DRAIN: u8 = 1;
const WITHHOLD: u8 = 2;

struct State {
    mode: AtomicU8,
    drained: Mutex<usize>,
    changed: Condvar,
    forwarded: AtomicU64,
    withheld: AtomicU64,
}

/// The relay of a trainer's two output pipes.
pub struct Relay {
    state: Arc<State>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Relays `stdout` to the harness's stdout and `stderr` to its stderr.
    pub fn start(stdout: Option<OwnedFd>, stderr: Option<OwnedFd>) -> Relay {
        let state = Arc::new(State { mode: AtomicU8::new(FORWARD), drained: Mutex::new(0), changed: Condvar::new(), forwarded: AtomicU64::new(0), withheld: AtomicU64::new(0) });
        let mut threads = Vec::new();
        for (fd, to_stderr) in [(stdout, false), (stderr, true)] {
            if let Some(fd) = fd {
                let state = state.clone();
                threads.push(std::thread::spawn(move || relay(fd, to_stderr, &state)));
            }
        }
        Relay { state, threads }
    }

    /// Stops forwarding once each pipe has been read empty (waiting at most `wait` for a
    /// trainer that keeps printing).
    pub fn withhold(&self, wait: Duration) {
        self.state.mode.store(DRAIN, Ordering::SeqCst);
        let guard = self.state.drained.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.threads.len();
        let _ = self.state.changed.wait_timeout_while(guard, wait, |d| *d < n);
        self.state.mode.store(WITHHOLD, Ordering::SeqCst);
    }

    /// Bytes not logged since [`Relay::withhold`].
    pub fn withheld_bytes(&self) -> u64 {
        self.state.withheld.load(Ordering::SeqCst)
    }

    /// Waits for both pipes to close (the trainer and everything it started are gone).
    pub fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn relay(fd: OwnedFd, to_stderr: bool, state: &State) {
    use std::io::IsTerminal;
    let terminal = if to_stderr { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
    let mut line: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut withholding = false;
    loop {
        let draining = !withholding && state.mode.load(Ordering::SeqCst) != FORWARD;
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, if draining { 0 } else { 100 }) };
        if ready < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if ready == 0 {
            if draining {
                // Empty: everything printed before this moment has been forwarded.
                flush(&mut line, to_stderr, terminal, state, None);
                withholding = true;
                let mut d = state.drained.lock().unwrap_or_else(|e| e.into_inner());
                *d += 1;
                state.changed.notify_all();
            }
            continue;
        }
        // SAFETY: reads into our buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if !withholding {
                flush(&mut line, to_stderr, terminal, state, None);
                let mut d = state.drained.lock().unwrap_or_else(|e| e.into_inner());
                *d += 1;
                state.changed.notify_all();
            }
            return;
        }
        let bytes = &buf[..n as usize];
        if withholding || state.mode.load(Ordering::SeqCst) == WITHHOLD {
            withholding = true;
            state.withheld.fetch_add(bytes.len() as u64, Ordering::SeqCst);
            continue;
        }
        for &b in bytes {
            line.push(b);
            if b == b'\n' || b == b'\r' || line.len() >= MAX_LINE {
                flush(&mut line, to_stderr, terminal, state, Some(b));
            }
        }
    }
}

/// Writes one segment (ended by `end`, or cut) with the prefix: a `\r` progress line stays one
/// line on a terminal and becomes its own line in a log.
fn flush(line: &mut Vec<u8>, to_stderr: bool, terminal: bool, state: &State, end: Option<u8>) {
    if line.is_empty() {
        return;
    }
    let n = line.len() as u64;
    let total = state.forwarded.fetch_add(n, Ordering::SeqCst) + n;
    if total > MAX_FORWARDED_BYTES {
        if total - n <= MAX_FORWARDED_BYTES {
            emit(to_stderr, format!("{PREFIX}[more than {} MiB of output; the rest is not logged]\n", MAX_FORWARDED_BYTES >> 20).as_bytes());
        }
        line.clear();
        return;
    }
    let body = String::from_utf8_lossy(line.strip_suffix(b"\n").or_else(|| line.strip_suffix(b"\r")).unwrap_or(line)).into_owned();
    let text = match end {
        Some(b'\r') if terminal => format!("\r{PREFIX}{body}"),
        _ => format!("{PREFIX}{body}\n"),
    };
    emit(to_stderr, text.as_bytes());
    line.clear();
}

fn emit(to_stderr: bool, bytes: &[u8]) {
    if to_stderr {
        let _ = std::io::stderr().lock().write_all(bytes);
    } else {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(bytes);
        let _ = o.flush();
    }
}
