//! The slurm executor against a real one-node cluster on loopback (common/slurm.rs): experiments
//! run as concurrent sbatch jobs, a job cancelled mid-run is recorded as a crash while the loop
//! goes on, and a runner killed with jobs in flight follows them after `run --resume` instead
//! of submitting them again. Each test skips where Slurm is not installed, unless
//! AUTORESEARCH_REQUIRE_SLURM=1 (CI).

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::slurm::Cluster;
use common::*;

const HPARAMS: &str = "[gpu]\nmatrix_lr = 0.5\ndelay = 0\n";

/// Experiment k sets matrix_lr and delay from the lists below (k = 1, 2, ...).
fn proposer(lrs: &[&str], delays: &[&str]) -> String {
    format!(
        r#"#!/bin/sh
n=$(cat "$TOOLS/count" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$TOOLS/count"
lr=$(echo "{}" | cut -d' ' -f$n); d=$(echo "{}" | cut -d' ' -f$n)
sed -i "s/^matrix_lr = .*/matrix_lr = $lr/; s/^delay = .*/delay = $d/" trainer/hparams.toml
echo "lr $lr" > "$AUTORESEARCH_PROPOSAL_FILE"
"#,
        lrs.join(" "),
        delays.join(" ")
    )
}

fn fixture(max: u32, slots: u32, lrs: &[&str], delays: &[&str]) -> Fixture {
    let fx = Fixture::new(
        HPARAMS,
        &format!(
            "keep_rule = \"strict\"\nmax_experiments = {max}\nslots = {slots}\nexecutor = \"slurm\"\nhard_timeout_seconds = 120\nproposer = \"command\"\nexperiment_command = \"sh $TOOLS/experiment.sh {{summary_json}}\"\n[command]\ncommand = \"sh $TOOLS/propose.sh\"\n[slurm]\ngpus = 0\ncpus_per_task = 1\npoll_seconds = 0.3\nextra_directives = [\"--comment=autoresearch-test\"]\n"
        ),
    );
    std::fs::write(fx.tools.join("experiment.sh"), TIMED_EXPERIMENT).unwrap();
    std::fs::write(fx.tools.join("propose.sh"), proposer(lrs, delays)).unwrap();
    fx
}

fn timeline(fx: &Fixture) -> String {
    std::fs::read_to_string(fx.tools.join("timeline")).unwrap_or_default()
}

fn starts(fx: &Fixture, node: &str) -> usize {
    timeline(fx).lines().filter(|l| l.starts_with(&format!("start {node} "))).count()
}

#[test]
fn experiments_run_as_concurrent_jobs() {
    let Some(cluster) = Cluster::start() else { return };
    let fx = fixture(3, 2, &["0.3", "0.05", "0.2"], &["3", "3", "1"]);
    let out = fx.cmd(&["run", "--yes"]).envs(cluster.env()).output().unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), cluster.logs());
    assert!(stdout(&out).contains("slurm, 2 jobs at a time"), "{}", stdout(&out));

    let rows = fx.rows();
    let status: Vec<&str> = rows.iter().map(|r| r[3].as_str()).collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(status[0], "keep");
    // n2 (lr 0.3) and n3 (lr 0.05) ran side by side, as Slurm jobs.
    let t = timeline(&fx);
    let field = |what: &str, node: &str, i: usize| -> String {
        t.lines().find(|l| l.starts_with(&format!("{what} {node} "))).unwrap_or_else(|| panic!("{what} {node}:\n{t}")).split(' ').nth(i).unwrap().to_string()
    };
    let at = |what: &str, node: &str| field(what, node, 2).parse::<f64>().unwrap();
    assert!(at("start", "n3") < at("end", "n2") && at("start", "n2") < at("end", "n3"), "not concurrent:\n{t}");
    assert!(!field("start", "n2", 3).is_empty(), "not run by Slurm:\n{t}");
    assert_ne!(field("start", "n2", 3), field("start", "n3", 3));
    // The job script carries the config's directives; the branch is at the best; all clean.
    let script = std::fs::read_to_string(fx.repo.join(".autoresearch/t1/logs/n2-0.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --comment=autoresearch-test") && script.contains("#SBATCH --cpus-per-task=1"), "{script}");
    assert!(!script.contains("--gres"), "{script}");
    let nodes = fx.nodes();
    let best = nodes.iter().filter(|n| n["status"] == "keep").max_by_key(|n| n["finish_seq"].as_i64()).unwrap();
    assert_eq!(best["description"], "lr 0.05", "{nodes:#?}");
    assert!(fx.branch_tip().starts_with(best["commit"].as_str().unwrap()));
    fx.assert_worktrees_clean();
    assert!(cluster.queue().is_empty());
}

#[test]
fn a_cancelled_job_is_a_crash_and_the_loop_goes_on() {
    let Some(cluster) = Cluster::start() else { return };
    let fx = fixture(3, 2, &["0.3", "0.05", "0.2"], &["60", "1", "1"]);
    let child = fx.cmd(&["run", "--yes"]).envs(cluster.env()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // n2 is the slow one: cancel its job once it runs.
    let t0 = Instant::now();
    let job = loop {
        let t = timeline(&fx);
        if let Some(l) = t.lines().find(|l| l.starts_with("start n2 ")) {
            break l.split(' ').nth(3).unwrap().to_string();
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "n2 never started:\n{t}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(100));
    };
    cluster.run("scancel", &[&job]);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(t0.elapsed() < Duration::from_secs(50), "the cancelled job was waited for");
    let rows = fx.rows();
    assert_eq!(rows.len(), 4, "{rows:?}");
    let n2 = fx.nodes().into_iter().find(|n| n["id"] == 2).unwrap();
    assert_eq!(n2["status"], "crash", "{n2:#}");
    let row = rows.iter().find(|r| r.join("\t") == n2["result_row"].as_str().unwrap()).unwrap();
    assert!(row[4].contains("cancelled"), "{row:?}");
    assert_eq!(rows.iter().filter(|r| r[3] == "crash").count(), 1, "{rows:?}");
    fx.assert_worktrees_clean();
}

#[test]
fn a_killed_runner_follows_its_jobs_after_resume() {
    let Some(cluster) = Cluster::start() else { return };
    let fx = fixture(3, 2, &["0.3", "0.05", "0.2"], &["5", "5", "1"]);
    let mut child = fx.cmd(&["run", "--yes"]).envs(cluster.env()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while starts(&fx, "n2") + starts(&fx, "n3") < 2 {
        assert!(t0.elapsed() < Duration::from_secs(60), "two jobs never ran:\n{}\n{}", timeline(&fx), cluster.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap(); // SIGKILL: the jobs go on without their runner
    child.wait().unwrap();
    assert_eq!(cluster.queue().len(), 2, "the jobs outlive the runner");
    assert_eq!(fx.rows().len(), 1, "only the baseline finished");

    let out = fx.cmd(&["run", "--yes", "--resume"]).envs(cluster.env()).output().unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    let log = stdout(&out);
    assert!(log.contains("resume: following n2 run 0 (slurm:") && log.contains("resume: following n3 run 0 (slurm:"), "{log}");
    // Followed, not submitted again.
    assert_eq!((starts(&fx, "n2"), starts(&fx, "n3")), (1, 1), "{}", timeline(&fx));
    let rows = fx.rows();
    assert_eq!(rows.len(), 4, "{rows:?}");
    let mut lines: Vec<String> = rows.iter().map(|r| r.join("\t")).collect();
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 4, "duplicated rows: {rows:?}");
    let nodes = fx.nodes();
    assert!(nodes.iter().all(|n| n["status"] != "running" && n["status"] != "pending"), "{nodes:#?}");
    assert_eq!(nodes.iter().find(|n| n["id"] == 3).unwrap()["status"], "keep", "{nodes:#?}\n{log}");
    // The followed jobs ran in their own, untouched worktrees: each measured its own change.
    for (id, want) in [(2, 1.26), (3, 1.01)] {
        let m = nodes.iter().find(|n| n["id"] == id).unwrap()["metric"].as_f64().unwrap();
        assert!((m - want).abs() < 1e-9, "n{id}: {m} (want {want})\n{nodes:#?}");
    }
    fx.assert_worktrees_clean();
}

/// A person's cluster experiment: `tree add` writes the job script and says how to submit it,
/// the person edits and syncs, submits it with sbatch, records the job's summary, and the loop
/// concludes it. This fixture's experiment is a script, not the run's scorer, so its summary is
/// unsigned: the loop records it as `unverified` and does not compare it (a job of the real
/// harness signs its summary with the run's key, and is concluded as keep or discard).
#[test]
fn a_person_submits_a_queued_idea_and_records_it() {
    let Some(cluster) = Cluster::start() else { return };
    let fx = fixture(1, 1, &["0.3"], &["0"]);
    let out = fx.cmd(&["run", "--yes"]).envs(cluster.env()).output().unwrap();
    assert!(out.status.success(), "{}", stdout(&out));

    let o = fx.run(&["tree", "add", "--parent", "n2", "--hypothesis", "closer to 0.04", "--description", "lr 0.05 on the cluster"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(text.lines().next(), Some("n3"), "{text}");
    let script = fx.repo.canonicalize().unwrap().join(".autoresearch/t1/jobs/n3.sbatch");
    assert!(text.contains(&format!("sbatch {}", script.display())), "{text}");
    let summary = text.lines().find_map(|l| l.split("--summary-json ").nth(1)).unwrap().trim().to_string();
    let o = fx.run(&["tree", "worktree", "n3"]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("sbatch "), "{}", stdout(&o));
    let wt = fx.repo.join(".worktrees/t1-n3");
    std::fs::write(wt.join("trainer/hparams.toml"), "[gpu]\nmatrix_lr = 0.05\ndelay = 0\n").unwrap();
    let o = fx.run(&["tree", "sync", "n3"]);
    assert!(o.status.success(), "{}", stdout(&o));

    let out = cluster.cmd("sbatch").arg("--parsable").arg(&script).env("TOOLS", &fx.tools).output().unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    let job = String::from_utf8_lossy(&out.stdout).trim().to_string();
    cluster.wait_job_state(&job, &["COMPLETED"], Duration::from_secs(60));
    let o = fx.run(&["tree", "record", "n3", "--summary-json", &summary]);
    assert!(o.status.success(), "{}", stdout(&o));
    let o = fx.run(&["tree", "worktree", "n3", "--remove"]);
    assert!(o.status.success(), "{}", stdout(&o));

    let out = fx.cmd(&["run", "--yes", "--resume", "--max-experiments", "2"]).envs(cluster.env()).output().unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    let n3 = fx.nodes().into_iter().find(|n| n["id"] == 3).unwrap();
    assert_eq!(n3["status"], "unverified", "{n3:#}");
    assert!((n3["metric"].as_f64().unwrap() - 1.01).abs() < 1e-9, "{n3:#}");
    assert!(!fx.branch_tip().starts_with(n3["commit"].as_str().unwrap()), "an unverified result does not move the branch");
    assert_eq!(fx.rows().len(), 3);
    fx.assert_worktrees_clean();
}

/// docs/cluster.md, "Running on a cluster": its config block and its `autoresearch` commands,
/// verbatim, against the loopback cluster (only the fixture's experiment command and proposer
/// are added).
#[test]
fn cluster_doc_runs_as_written() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cluster.md")).unwrap();
    let section = &doc[doc.find("# Running on a cluster").expect("docs/cluster.md has the section")..];
    let block = |lang: &str| -> String {
        let start = section.find(&format!("```{lang}\n")).unwrap_or_else(|| panic!("no ```{lang} block")) + lang.len() + 4;
        section[start..start + section[start..].find("```").unwrap()].to_string()
    };
    let (config, commands) = (block("toml"), block("sh"));
    assert!(config.contains("executor = \"slurm\""), "{config}");
    let Some(cluster) = Cluster::start() else { return };
    let fx = Fixture::new(
        HPARAMS,
        &format!(
            "keep_rule = \"strict\"\nproposer = \"command\"\nexperiment_command = \"sh $TOOLS/experiment.sh {{summary_json}}\"\n{config}\n[command]\ncommand = \"sh $TOOLS/propose.sh\"\n"
        ),
    );
    std::fs::write(fx.tools.join("experiment.sh"), TIMED_EXPERIMENT).unwrap();
    std::fs::write(fx.tools.join("propose.sh"), proposer(&["0.3", "0.05", "0.2", "0.04"], &["1", "1", "1", "1"])).unwrap();
    let mut ran = 0;
    for line in commands.lines().map(|l| l.split('#').next().unwrap().trim()).filter(|l| !l.is_empty()) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let out = if words[0] == "autoresearch" {
            ran += 1;
            fx.cmd(&words[1..]).envs(cluster.env()).output().unwrap()
        } else {
            let mut c = cluster.cmd(words[0]);
            // The quoted squeue format is one argument.
            match line.split_once('\'') {
                Some((head, rest)) => c.args(head.split_whitespace().skip(1)).arg(rest.trim_end_matches('\'')),
                None => c.args(&words[1..]),
            };
            c.output().unwrap()
        };
        assert!(out.status.success(), "`{line}`: {}", stdout(&out));
    }
    assert_eq!(ran, 2, "{commands}");
    let rows = fx.rows();
    assert_eq!(rows.len(), 5, "baseline + 4 experiments: {rows:?}");
    let script = std::fs::read_to_string(fx.repo.join(".autoresearch/t1/logs/n2-0.sbatch")).unwrap();
    for d in ["--partition=debug", "--gres=gpu:1", "--cpus-per-task=2", "--mem=4G", "--comment=autoresearch"] {
        assert!(script.contains(&format!("#SBATCH {d}\n")), "{d} missing:\n{script}");
    }
    fx.assert_worktrees_clean();
}

/// Ctrl-C with jobs in flight: every job is cancelled with scancel, the interrupted nodes are
/// not recorded, and `run --resume` runs them again (same nodes) and goes on.
#[test]
fn ctrl_c_cancels_the_jobs_in_flight() {
    let Some(cluster) = Cluster::start() else { return };
    let fx = fixture(3, 2, &["0.3", "0.05", "0.2"], &["60", "60", "1"]);
    std::fs::write(fx.tools.join("quick_reruns"), "").unwrap();
    let child = fx.cmd(&["run", "--yes"]).envs(cluster.env()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    while starts(&fx, "n2") + starts(&fx, "n3") < 2 {
        assert!(t0.elapsed() < Duration::from_secs(60), "two jobs never ran:\n{}\n{}", timeline(&fx), cluster.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stdout(&out));
    assert!(t.elapsed() < Duration::from_secs(30), "stopping took {:?}", t.elapsed());
    assert!(cluster.queue().is_empty(), "jobs left running: {:?}", cluster.queue());
    let rows = fx.rows();
    assert_eq!(rows.len(), 1, "only the baseline is recorded: {rows:?}");
    for node in ["n2", "n3"] {
        assert!(stdout(&out).contains(&format!("{node}: interrupted; `autoresearch run --resume --tag t1` runs it again")), "{}", stdout(&out));
    }
    fx.assert_worktrees_clean();
    let out = fx.cmd(&["run", "--yes", "--resume", "--max-experiments", "3"]).envs(cluster.env()).output().unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    assert!((starts(&fx, "n2"), starts(&fx, "n3")) == (2, 2), "both ran again:\n{}", timeline(&fx));
    let rows = fx.rows();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r[3] != "crash"), "{rows:?}");
}

/// A job that runs past the hard timeout (counted from when it starts running) is cancelled
/// with scancel and recorded as a timeout crash.
#[test]
fn a_job_past_the_hard_timeout_is_cancelled() {
    let Some(cluster) = Cluster::start() else { return };
    let fx = fixture(1, 1, &["0.3"], &["120"]);
    let config = fx.repo.join("configs/research.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace("hard_timeout_seconds = 120", "hard_timeout_seconds = 4");
    std::fs::write(&config, text).unwrap();
    git(&fx.repo, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "short timeout"]);
    let t0 = Instant::now();
    let out = fx.cmd(&["run", "--yes"]).envs(cluster.env()).output().unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}", t0.elapsed());
    let rows = fx.rows();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1][3], "crash");
    assert!(rows[1][4].contains("timeout"), "{rows:?}");
    assert!(cluster.queue().is_empty(), "{:?}", cluster.queue());
    let script = std::fs::read_to_string(fx.repo.join(".autoresearch/t1/logs/n2-0.sbatch")).unwrap();
    assert!(script.contains("#SBATCH --time=11\n"), "Slurm's own limit backs the runner's: {script}");
}
