//! `autoresearch watch`: a live terminal view of a run (what runs now, with a countdown; the
//! best so far; the last results), redrawn every few seconds. It only reads the tree database,
//! in short read transactions (WAL mode: readers never block the runner's writes), and never
//! talks to the runner, so watching cannot disturb a run.

use std::fmt::Write;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Result;

use crate::config::ResearchConfig;
use crate::db::{Db, Job, Node, Status, now};
use crate::git::{Git, branch_name};
use crate::report::Research;
use crate::tree::fmt_metric;

pub struct Options {
    pub interval: f64,
    pub once: bool,
    pub last: usize,
}

/// `1h 02m`, `3m 05s`, `42s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The terminal's width, else 100 columns.
fn columns() -> usize {
    // SAFETY: TIOCGWINSZ only fills the winsize struct passed to it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col >= 40 { ws.ws_col as usize } else { 100 }
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max { s.to_string() } else { format!("{}…", s.chars().take(max.saturating_sub(1)).collect::<String>()) }
}

/// Whether a run's process group is gone (the runner was killed, say); `None` when that
/// cannot be told from here (a Slurm job, no process recorded).
fn gone(handle: Option<&str>, pid: Option<i64>) -> Option<bool> {
    let pgid = match handle {
        Some(h) => h.strip_prefix("local:")?.parse::<i64>().ok()?,
        None => pid?,
    };
    if pgid <= 1 {
        return None;
    }
    // Signal 0 checks existence without signalling; a negative pid names the process group.
    let r = unsafe { libc::kill(-(pgid as libc::pid_t), 0) };
    Some(r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH))
}

/// One countdown line: time since `start`, against the typical run and the hard timeout.
fn countdown(el: f64, typical: Option<f64>, timeout: f64) -> String {
    let mut line = format!("{} running", duration(el));
    if let Some(ty) = typical {
        let left = ty - el;
        let _ = write!(line, "  {} ", bar(el / ty, 24));
        line.push_str(&if left >= 0.0 { format!("about {} left (typical {})", duration(left), duration(ty)) } else { format!("{} over the typical {}", duration(-left), duration(ty)) });
    }
    if timeout > 0.0 {
        let _ = write!(line, "; killed in {}", duration(timeout - el));
    }
    line
}

fn bar(frac: f64, width: usize) -> String {
    let done = ((frac.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("[{}{}]", "=".repeat(done), " ".repeat(width - done))
}

/// One screen of the view at time `t`.
pub fn frame(r: &Research, jobs: &[Job], t: f64, last: usize, width: usize) -> String {
    let cfg = &r.cfg;
    let dir = r.direction();
    let mut s = String::new();
    let _ = writeln!(s, "autoresearch run `{}`  (branch {}, {} {} is better)  {}", cfg.tag, branch_name(&cfg.tag), cfg.metric, cfg.direction, crate::db::iso8601(t));
    let exps = r.experiments();
    let of = if cfg.max_experiments > 0 { format!(" of {}", cfg.max_experiments) } else { String::new() };
    let hours = r.wall_seconds() / 3600.0;
    let rate = if hours > 0.0 { format!(", {:.1}/h", exps.len() as f64 / hours) } else { String::new() };
    let _ = writeln!(s, "experiments: {}{of} done ({}), {}{rate}", exps.len(), r.tally(), duration(r.wall_seconds()));
    match (r.best(), r.baseline()) {
        (Some(b), Some(base)) if b.metric.is_some() && base.metric.is_some() => {
            let (m, m0) = (b.metric.unwrap_or_default(), base.metric.unwrap_or_default());
            let _ = writeln!(
                s,
                "best: {m:.6} ({}, {:+.2} % vs baseline {m0:.6})  {}",
                b.name(),
                100.0 * (m - m0) / m0.abs().max(1e-12),
                cut(&b.description, width.saturating_sub(50))
            );
        }
        _ => s.push_str("best: - (no baseline yet)\n"),
    }
    if r.noise.df > 0.0 {
        let _ = writeln!(s, "noise: sigma {:.6} pooled over {} runs ({} df)", r.noise.sigma, r.noise.runs, r.noise.df);
    }

    // Running experiments, with a countdown to the typical run length and to the hard timeout
    // (both per run: a noise-aware keep or an out-of-memory retry runs again).
    let mut lengths: Vec<f64> = exps
        .iter()
        .filter_map(|n| {
            let runs = n.metrics.as_ref().and_then(|m| m.get("runs")).and_then(|r| r.as_array()).map_or(1, |r| r.len().max(1));
            Some((n.finished_at? - n.started_at?) / runs as f64)
        })
        .filter(|d| *d > 0.0)
        .collect();
    lengths.sort_by(f64::total_cmp);
    let typical = lengths.get(lengths.len() / 2).copied();
    let timeout = cfg.hard_timeout().as_secs_f64();
    let running: Vec<&Node> = r.nodes.iter().filter(|n| n.status == Status::Running).collect();
    s.push_str("\nrunning:\n");
    if running.is_empty() {
        s.push_str("  nothing: the loop is between experiments, done, or stopped\n");
    }
    for n in running {
        let _ = writeln!(s, "  {:<5} {}", n.name(), cut(&n.description, width.saturating_sub(10)));
        let mine: Vec<&Job> = jobs.iter().filter(|j| j.node == n.id).collect();
        let mut lost = false;
        if mine.is_empty() {
            // Being proposed, built or between runs: time since the node started.
            let _ = writeln!(s, "        {}", countdown(n.started_at.map_or(0.0, |st| t - st), typical, 0.0));
            lost |= gone(None, n.pid) == Some(true);
        }
        for j in mine {
            let _ = writeln!(s, "        run {} (seed {}, {}): {}", j.attempt, j.seed, j.handle, countdown(t - j.started_at, typical, timeout));
            lost |= gone(Some(&j.handle), None) == Some(true);
        }
        if lost {
            s.push_str("        its process is gone: the runner stopped? (`autoresearch run --resume` continues)\n");
        }
    }

    // The last results.
    let mut done: Vec<&Node> = exps.clone();
    done.sort_by_key(|n| std::cmp::Reverse(n.finish_seq));
    let _ = writeln!(s, "\nlast results:\n  {:<5} {:<8} {:>10} {:>10}  change", "node", "status", cfg.metric, "vs parent");
    if done.is_empty() {
        s.push_str("  none yet\n");
    }
    for n in done.iter().take(last) {
        let delta = match r.step_gain(n) {
            Some(g) => format!("{:+.6}", if dir == crate::config::Direction::Lower { -g } else { g }),
            None => String::new(),
        };
        let head = format!("  {:<5} {:<8} {:>10} {:>10}  ", n.name(), n.status.as_str(), fmt_metric(n.metric), delta);
        let _ = writeln!(s, "{head}{}", cut(&n.description, width.saturating_sub(head.chars().count() + 1)));
    }
    s
}

/// `autoresearch watch`.
pub fn run(git: &Git, cfg: &ResearchConfig, opts: &Options) -> Result<()> {
    if !(opts.interval.is_finite() && opts.interval > 0.0) {
        return Err(crate::errors::usage(format!("--interval {}: give a number of seconds above 0, e.g. 2", opts.interval)));
    }
    let db: Db = Db::open_run(&git.root, cfg)?;
    let tty = std::io::stdout().is_terminal();
    let interval = Duration::from_secs_f64(opts.interval.clamp(0.2, 3600.0));
    loop {
        let text = match Research::load(&db, cfg).and_then(|r| Ok((r, db.jobs(None)?))) {
            Ok((r, jobs)) => frame(&r, &jobs, now(), opts.last, if tty { columns() } else { 100 }),
            // A transient error (the database busy for over 10 s): show it, try again.
            Err(e) => format!("reading the tree database failed: {e:#}\n"),
        };
        if opts.once {
            print!("{text}");
            return Ok(());
        }
        if tty {
            // Home, clear, the frame: the view redraws in place.
            print!("\x1b[H\x1b[2J{text}\n(every {:.0} s; Ctrl-C to stop)\n", interval.as_secs_f64());
        } else {
            println!("{text}");
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(185.0), "3m 05s");
        assert_eq!(duration(3720.0), "1h 02m");
        assert_eq!(duration(-5.0), "0s");
        assert_eq!(bar(0.5, 4), "[==  ]");
        assert_eq!(bar(7.0, 4), "[====]");
    }

    #[test]
    fn frame_of_a_run_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("t.db")).unwrap();
        let a = db.insert_node(None, "", "baseline", None, "baseline", "cpu").unwrap();
        db.set_running(a).unwrap();
        let f = crate::db::Finish { status: Status::Keep, metric: Some(1.0), metrics: None, memory_mb: None, insight: "", result_row: None, jsonl: None };
        db.finish(a, &f).unwrap();
        let b = db.insert_node(Some(a), "", "matrix_lr = 0.02", None, "search", "cpu").unwrap();
        db.set_running(b).unwrap();
        let mut cfg = ResearchConfig { tag: "w".into(), ..Default::default() };
        cfg.finalize().unwrap();
        let r = Research::load(&db, &cfg).unwrap();
        let text = frame(&r, &[], now() + 30.0, 5, 100);
        assert!(text.contains("run `w`"), "{text}");
        assert!(text.contains("best: 1.000000 (n1"), "{text}");
        assert!(text.contains("n2    matrix_lr = 0.02\n        30s running"), "{text}");
        // A run in flight: its own countdown, to the hard timeout too; a vanished process is said.
        let job = Job { node: b, attempt: "0".into(), seed: 42, batch_scale: 1.0, handle: "local:999999999".into(), started_at: now() };
        let text = frame(&r, &[job], now() + 60.0, 5, 100);
        assert!(text.contains("run 0 (seed 42, local:999999999): 1m 00s running; killed in"), "{text}");
        assert!(text.contains("its process is gone"), "{text}");
        assert!(text.contains("vs parent  change\n  none yet"), "{text}");
    }
}
