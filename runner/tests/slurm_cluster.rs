//! The loopback Slurm cluster the executor tests use (common/slurm.rs): jobs run side by side,
//! scancel works, fake GPUs are scheduled, and nothing of a cluster outlives it. Each test skips
//! where Slurm is not installed, unless AUTORESEARCH_REQUIRE_SLURM=1.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::slurm::Cluster;

/// `sbatch --wrap SCRIPT` working in the cluster's folder, its output in NAME.out there.
fn wrap(cluster: &Cluster, name: &str, extra: &[&str], script: &str) -> String {
    let dir = cluster.dir().display().to_string();
    let output = format!("{dir}/{name}.out");
    let mut args = vec!["--job-name", name, "--chdir", &dir, "--output", &output];
    args.extend_from_slice(extra);
    args.extend(["--wrap", script]);
    cluster.sbatch(&args)
}

#[test]
fn two_jobs_run_at_once_one_is_cancelled_the_other_completes() {
    let Some(cluster) = Cluster::start() else { return };
    assert!(cluster.cpus() >= 2, "the node must hold two one-CPU jobs at once");
    let t0 = Instant::now();
    let a = wrap(&cluster, "a", &[], "sleep 5; echo hi > a.txt");
    let b = wrap(&cluster, "b", &[], "sleep 5; echo hi > b.txt");
    assert_ne!(a, b);

    // Both RUNNING in the same squeue listing.
    cluster.wait_until("both jobs RUNNING at once", Duration::from_secs(10), || {
        let queue = cluster.queue();
        let running = |id: &str| queue.iter().any(|(i, s)| i == id && s == "RUNNING");
        (running(&a) && running(&b)).then_some(())
    });
    eprintln!("both running after {:.2?}", t0.elapsed());

    cluster.run("scancel", &[&a]);
    let t_cancel = Instant::now();
    // COMPLETING for a few seconds first, then CANCELLED.
    cluster.wait_job_state(&a, &["CANCELLED"], Duration::from_secs(10));
    eprintln!("cancelled after {:.2?}", t_cancel.elapsed());

    cluster.wait_job_state(&b, &["COMPLETED"], Duration::from_secs(15));
    eprintln!("the other completed after {:.2?}", t0.elapsed());
    assert_eq!(std::fs::read_to_string(cluster.dir().join("b.txt")).unwrap(), "hi\n");
    assert!(cluster.dir().join("b.out").exists(), "sbatch --output of the completed job");
    assert!(!cluster.dir().join("a.txt").exists(), "the cancelled job ran to its end");
    assert!(cluster.queue().is_empty(), "{:?}", cluster.queue());
}

#[test]
fn fake_gpus_are_scheduled_two_at_a_time() {
    let Some(cluster) = Cluster::start() else { return };
    let names = ["g1", "g2", "g3"];
    let script = "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; sleep 3";
    let ids: Vec<String> = names.iter().map(|n| wrap(&cluster, n, &["--gres=gpu:1"], script)).collect();
    // Two of them RUNNING and the third PENDING: the node has two GPUs and four CPUs.
    cluster.wait_until("two gpu jobs running, one pending", Duration::from_secs(10), || {
        let queue = cluster.queue();
        let count = |state: &str| queue.iter().filter(|(_, s)| s == state).count();
        (count("RUNNING") == 2 && count("PENDING") == 1).then_some(())
    });
    for id in &ids {
        cluster.wait_job_state(id, &["COMPLETED"], Duration::from_secs(20));
    }
    let mut devices: Vec<String> = names
        .iter()
        .map(|n| std::fs::read_to_string(cluster.dir().join(format!("{n}.out"))).unwrap().trim().to_string())
        .collect();
    devices.sort();
    devices.dedup();
    assert_eq!(devices, ["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]);
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The slurmstepd processes working in DIR (slurmd leaves them in DIR/log).
fn slurmstepds_of(dir: &Path) -> Vec<u32> {
    let mut pids = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        if comm.trim() == "slurmstepd" && cwd.starts_with(dir) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

fn pid_in(path: &Path) -> u32 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

#[test]
fn nothing_of_a_cluster_outlives_it_even_after_its_daemons_are_killed() {
    let Some(cluster) = Cluster::start() else { return };
    let dir = cluster.dir().to_path_buf();
    // A job with a child of its own, both recording their PIDs.
    let id = wrap(&cluster, "stray", &[], "echo $$ > shell.pid; sleep 60 & echo $! > child.pid; wait");
    cluster.wait_until("the job's processes", Duration::from_secs(10), || {
        (dir.join("shell.pid").exists() && dir.join("child.pid").exists()).then_some(())
    });
    assert_eq!(cluster.job_state(&id).as_deref(), Some("RUNNING"));
    let (shell, child) = (pid_in(&dir.join("shell.pid")), pid_in(&dir.join("child.pid")));
    let ctld = pid_in(&dir.join("run/slurmctld.pid"));
    let slurmd = pid_in(&dir.join("run/slurmd.pid"));
    // The daemons die without a word: no scancel nor scontrol shutdown can reach them now, and
    // the job's slurmstepd is left alone with the job.
    for pid in [ctld, slurmd] {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(alive(shell) && alive(child));
    let stepds = slurmstepds_of(&dir);
    assert_eq!(stepds.len(), 1, "the job's slurmstepd");

    drop(cluster);
    for pid in [ctld, slurmd, shell, child].into_iter().chain(stepds) {
        assert!(!alive(pid), "PID {pid} outlived its cluster");
    }
    assert!(!dir.exists(), "the cluster's folder is removed");
}
