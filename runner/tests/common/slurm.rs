//! A real one-node Slurm cluster on loopback for the tests: Debian 12's `slurmctld slurmd
//! slurm-client` (Slurm 22.05), run as root, with no munge, systemd or cgroups.
//!
//! ```ignore
//! mod common;
//! use common::slurm::Cluster;
//!
//! #[test]
//! fn jobs_run() {
//!     let Some(cluster) = Cluster::start() else { return }; // no Slurm here: skipped
//!     let id = cluster.sbatch(&["--wrap", "true"]);
//!     cluster.wait_job_state(&id, &["COMPLETED"], std::time::Duration::from_secs(20));
//!     // A process that should use this cluster gets `.envs(cluster.env())` (SLURM_CONF).
//! }
//! ```
//!
//! Without Slurm, [`Cluster::start`] prints why and returns `None`, so `cargo test` passes on a
//! machine that lacks it; with `AUTORESEARCH_REQUIRE_SLURM=1` (as `.ci/run` sets) it panics instead.
//!
//! One source of truth: the cluster is `slurm-loopback.sh` beside this file, filling in
//! `slurm.conf.in` and `gres.conf.in`. The fixture only picks free ports, calls the script, and
//! on drop calls its `stop`. The same cluster by hand, as root:
//!
//! ```sh
//! apt-get install -y slurmctld slurmd slurm-client      # Debian 12: Slurm 22.05
//! runner/tests/common/slurm-loopback.sh start /tmp/cluster
//! export SLURM_CONF=/tmp/cluster/slurm.conf               # what `start` prints
//! sinfo                                                   # debug* up infinite 1 idle <host>
//! sbatch --parsable --wrap 'sleep 5; hostname'            # then squeue, scontrol show job ID
//! runner/tests/common/slurm-loopback.sh stop /tmp/cluster
//! ```
//!
//! It listens on 6817 and 6818 unless `SLURM_LOOPBACK_CTLD_PORT` and `SLURM_LOOPBACK_SLURMD_PORT`
//! say otherwise. The node has max(nproc, 4) CPUs (`SLURM_LOOPBACK_CPUS`), so one-CPU jobs run
//! side by side even on a 2-core machine, 8000 MB of memory, and two fake GPUs for `--gres=gpu:N`.
//! `stop` cancels every job, waits for them to leave the queue, runs `scontrol shutdown`, and
//! then SIGKILLs, by PID, whatever of this cluster is still there: the daemons from their pid
//! files, and slurmstepd and job processes found through /proc by their ties to the cluster's
//! folder (a slurmstepd left behind ignores SIGTERM). Never anything by name alone: other
//! clusters may be running.
//!
//! Slurm 22.05 as seen here: `start` takes well under a second (the node is idle at once), but
//! the first jobs wait 2 to 3 s (PENDING, reason None) for the scheduler's first pass; later ones
//! start within about a second (the controller's background loop; `batch_sched_delay=0`, or
//! jobs submitted in a row would wait 3 s each). A cancelled job shows COMPLETING in `squeue` and in
//! `scontrol show job` for about 3 s (KillWait=2) and only then CANCELLED, in `scontrol` alone,
//! for MinJobAge=300 s. `scontrol shutdown` leaves running jobs running.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Set to 1 (CI does) to make a machine without Slurm fail the tests that need it.
pub const REQUIRE_ENV: &str = "AUTORESEARCH_REQUIRE_SLURM";

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/slurm-loopback.sh");

/// The programs the cluster needs: the daemons, and the clients the runner and the tests call.
const PROGRAMS: [&str; 7] = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo"];

/// Tests of one binary that use a cluster run one at a time: jobs' timings stay meaningful on a
/// 2-core machine. Clusters of different processes don't collide either: each has its own folder
/// and free ports.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub struct Cluster {
    dir: tempfile::TempDir,
    /// Released last, once the cluster is stopped and its folder removed.
    _turn: MutexGuard<'static, ()>,
}

impl Cluster {
    /// Starts a fresh cluster and waits for its node to be idle; `None` (after saying why on
    /// stderr) where Slurm is not installed or this is not root, unless `AUTORESEARCH_REQUIRE_SLURM=1`,
    /// which turns that into a panic. Panics when an installed Slurm fails to start, with the
    /// daemons' log tails.
    pub fn start() -> Option<Cluster> {
        if let Err(why) = available() {
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{REQUIRE_ENV}=1 but Slurm can't run here: {why}");
            }
            eprintln!("skipped: Slurm can't run here: {why}");
            return None;
        }
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut failures = String::new();
        // Another process may take a free port between our look and the daemon's bind: try anew.
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("slurm-").tempdir().expect("a temporary folder");
            let (ctld_port, slurmd_port) = free_ports();
            let t0 = Instant::now();
            let out = Command::new("bash")
                .arg(SCRIPT)
                .arg("start")
                .arg(dir.path())
                .env("SLURM_LOOPBACK_CTLD_PORT", ctld_port.to_string())
                .env("SLURM_LOOPBACK_SLURMD_PORT", slurmd_port.to_string())
                .output()
                .expect("bash runs");
            if out.status.success() {
                eprintln!("slurm: cluster in {} up in {:.2?}", dir.path().display(), t0.elapsed());
                return Some(Cluster { dir, _turn: turn });
            }
            failures += &format!("{}{}\n", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            stop(dir.path());
        }
        panic!("the loopback Slurm cluster did not start, three times:\n{failures}");
    }

    /// The cluster's folder: slurm.conf, state/, spool/, log/, run/ (pid files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// What a process needs in its environment to use this cluster: `SLURM_CONF`.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SLURM_CONF".to_string(), self.conf_path().display().to_string())]
    }

    /// The node's CPUs, as slurm.conf gives them.
    pub fn cpus(&self) -> usize {
        let conf = std::fs::read_to_string(self.conf_path()).expect("slurm.conf");
        conf.lines()
            .filter(|l| l.starts_with("NodeName="))
            .flat_map(|l| l.split_whitespace())
            .find_map(|w| w.strip_prefix("CPUs=")?.parse().ok())
            .expect("CPUs= on the NodeName line")
    }

    /// A client command (`sbatch`, `squeue`, `scontrol`, `scancel`, `sinfo`) aimed at this cluster.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(self.env());
        c
    }

    /// Runs a client command; panics unless it succeeds; its stdout, trimmed.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.cmd(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(out.status.success(), "{program} {args:?} failed:\n{}", self.explain(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `sbatch --parsable ARGS`: the job's id.
    pub fn sbatch(&self, args: &[&str]) -> String {
        let mut all = vec!["--parsable"];
        all.extend_from_slice(args);
        let out = self.run("sbatch", &all);
        out.split(';').next().unwrap_or_default().trim().to_string()
    }

    /// The jobs `squeue` shows (pending, running, completing): (id, state) as in
    /// `squeue --noheader --format=%i|%T`, e.g. ("3", "RUNNING").
    pub fn queue(&self) -> Vec<(String, String)> {
        self.run("squeue", &["--noheader", "--format=%i|%T"])
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(id, state)| (id.trim().to_string(), state.trim().to_string()))
            .collect()
    }

    /// `JobState=` of `scontrol show job ID` (PENDING, RUNNING, COMPLETING, COMPLETED, CANCELLED,
    /// FAILED, TIMEOUT, ...); `None` once Slurm has forgotten the job, or never knew it.
    pub fn job_state(&self, id: &str) -> Option<String> {
        let out = self.cmd("scontrol").args(["show", "job", id]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace().find_map(|w| w.strip_prefix("JobState=")).map(str::to_string)
    }

    /// Polls `scontrol show job ID` until its JobState is one of `states`; that state. Panics
    /// after `timeout`, with the queue and the daemons' logs.
    pub fn wait_job_state(&self, id: &str, states: &[&str], timeout: Duration) -> String {
        self.wait_until(&format!("job {id} to be one of {states:?}"), timeout, || {
            self.job_state(id).filter(|s| states.contains(&s.as_str()))
        })
    }

    /// Calls `poll` every 100 ms until it gives `Some`; panics after `timeout`, saying what it
    /// waited for, with the queue and the tails of the daemons' logs.
    pub fn wait_until<T>(&self, what: &str, timeout: Duration, mut poll: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = poll() {
                return v;
            }
            if Instant::now() > deadline {
                let queue = self.cmd("squeue").output().map(|o| self.explain(&o)).unwrap_or_default();
                panic!("waited {timeout:?} for {what}\nsqueue:\n{queue}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of each daemon's log, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        let mut files: Vec<_> = std::fs::read_dir(self.dir().join("log")).into_iter().flatten().flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s += &format!("--- last lines of {}\n{}\n", f.display(), lines[lines.len().saturating_sub(20)..].join("\n"));
        }
        s
    }

    /// Stops the cluster now (dropping it does the same).
    pub fn stop(self) {}

    fn explain(&self, out: &Output) -> String {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let t0 = Instant::now();
        stop(self.dir.path());
        eprintln!("slurm: cluster in {} stopped in {:.2?}", self.dir.path().display(), t0.elapsed());
    }
}

/// `slurm-loopback.sh stop DIR`: scancel, scontrol shutdown, then SIGKILL by PID what is left.
fn stop(dir: &Path) {
    match Command::new("bash").arg(SCRIPT).arg("stop").arg(dir).output() {
        Ok(out) if out.status.success() => {
            let said = String::from_utf8_lossy(&out.stderr);
            if !said.trim().is_empty() {
                eprintln!("{}", said.trim_end());
            }
        }
        Ok(out) => eprintln!("slurm: stopping {} failed:\n{}", dir.display(), String::from_utf8_lossy(&out.stderr)),
        Err(e) => eprintln!("slurm: stopping {}: {e}", dir.display()),
    }
}

/// Why Slurm can't run here, if it can't.
fn available() -> Result<(), String> {
    let missing: Vec<&str> = PROGRAMS.iter().copied().filter(|p| find_program(p).is_none()).collect();
    if !missing.is_empty() {
        return Err(format!("{} not found (Debian: apt-get install slurmctld slurmd slurm-client)", missing.join(", ")));
    }
    // SlurmUser=root and SlurmdUser=root: the daemons must start as root.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the loopback cluster runs its daemons as root, and this is not root".to_string());
    }
    Ok(())
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Two distinct ports free right now on loopback.
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}
