//! The red-team suite, through the real harness: each attack is a few lines of a fixture
//! trainer (`examples/fixture_trainer.rs`, a bigram model that trains in a second) that try
//! what a dishonest trainer would, and each must fail or gain nothing. A control run without
//! the sandbox shows that the attack would otherwise have worked.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// 8 evaluation groups of 8 rows of 64 positions, 8 witness rows; one warm-up step; a short
/// allowance.
const PROFILE: &str = "name = \"tiny\"\nclass = \"cpu\"\nseq_len = 64\neval_tokens = 4096\neval_batch_size = 8\neval_witness_rows = 8\nwarmup_steps = 1\nwarmup_allowance_seconds = 0.5\ndtype = \"f32\"\n";

struct Fixture {
    dir: tempfile::TempDir,
    cache: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        prepare::fixtures::prepare_tiny_cache(&cache).unwrap();
        std::fs::write(dir.path().join("tiny.toml"), PROFILE).unwrap();
        // The same rows in 2 groups of 32.
        std::fs::write(dir.path().join("groups32.toml"), PROFILE.replace("eval_batch_size = 8", "eval_batch_size = 32")).unwrap();
        // No witness rows.
        std::fs::write(dir.path().join("no-witness.toml"), PROFILE.replace("eval_witness_rows = 8", "eval_witness_rows = 0")).unwrap();
        // An evaluation that reaches every validation document: no held-out split is left.
        std::fs::write(dir.path().join("exhaust.toml"), PROFILE.replace("eval_tokens = 4096\neval_batch_size = 8", "eval_tokens = 131072\neval_batch_size = 64")).unwrap();
        Fixture { dir, cache }
    })
}

fn harness_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_harness"))
}

fn fixture_trainer() -> PathBuf {
    let p = harness_bin().parent().unwrap().join("examples").join("fixture_trainer");
    assert!(p.exists(), "{} is built by `cargo test` (an example of the harness)", p.display());
    p
}

/// The validation token file of the tiny cache.
fn val_tokens() -> PathBuf {
    prepare::data::PreparedData::open(&fixture().cache).unwrap().val_file().path().to_path_buf()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    summary: Value,
    seconds: f64,
}

impl Run {
    fn bpb(&self) -> f64 {
        self.summary["val_bpb"].as_f64().unwrap_or(f64::NAN)
    }

    fn attack_lines(&self) -> Vec<&str> {
        self.stdout.lines().filter(|l| l.contains("ATTACK ")).collect()
    }

    fn all(&self) -> String {
        format!("exit {}\n--- stdout\n{}\n--- stderr\n{}\n--- summary\n{}", self.code, self.stdout, self.stderr, self.summary)
    }
}

/// A fresh folder for one run's summary and overrides, inside the fixture's folder.
fn run_dir(name: &str) -> PathBuf {
    let d = fixture().dir.path().join("runs").join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The harness on the fixture trainer with `settings` as its override text.
fn harness(name: &str, settings: &str, budget: &str, profile: &str, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = run_dir(name);
    let summary = dir.join("summary.json");
    let hp = dir.join("hparams.toml");
    std::fs::write(&hp, settings).unwrap();
    let mut cmd = Command::new(harness_bin());
    cmd.arg("--cache-dir")
        .arg(&fixture().cache)
        .arg("--profile")
        .arg(fixture().dir.path().join(format!("{profile}.toml")))
        .arg("--hparams")
        .arg(&hp)
        .arg("--summary-json")
        .arg(&summary)
        .arg("--trainer")
        .arg(fixture_trainer())
        .args(["--budget", budget, "--device", "flex", "--seed", "7"])
        .args(extra)
        .env_remove("BURN_DEVICE")
        .env_remove("AUTORESEARCH_SANDBOX");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t0 = Instant::now();
    let out = cmd.output().unwrap();
    let summary = std::fs::read(&summary).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        summary,
        seconds: t0.elapsed().as_secs_f64(),
    }
}

fn attack(name: &str, settings: &str) -> Run {
    harness(name, &format!("attack = \"{name}\"\n{settings}"), "tokens:8192", "tiny", &[], &[])
}

/// The honest fixture's score (same seed, same data: every attack that gains nothing equals it).
fn honest_bpb() -> f64 {
    static B: OnceLock<f64> = OnceLock::new();
    *B.get_or_init(|| {
        let r = harness("honest", "", "tokens:8192", "tiny", &[], &[]);
        assert_eq!(r.code, 0, "{}", r.all());
        r.bpb()
    })
}

fn assert_honest_score(r: &Run) {
    assert_eq!(r.code, 0, "{}", r.all());
    assert!((r.bpb() - honest_bpb()).abs() < 1e-9, "the attack changed the score: {} vs honest {}\n{}", r.bpb(), honest_bpb(), r.all());
}

fn assert_denied(r: &Run, what: &str) {
    let line = r.attack_lines().into_iter().find(|l| l.contains(what)).unwrap_or_else(|| panic!("no ATTACK line about {what}:\n{}", r.all()));
    assert!(
        ["Permission denied", "Operation not permitted", "No such file", "os error 13", "os error 1)", "os error 2"].iter().any(|d| line.contains(d)),
        "not denied: {line}\n{}",
        r.all()
    );
}

#[test]
fn the_honest_fixture_is_scored_in_the_sandbox_one_position_at_a_time() {
    let r = harness("honest-check", "", "tokens:8192", "tiny", &[], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.bpb().is_finite() && r.bpb() > 0.0);
    assert!(r.summary["sandbox"].as_str().unwrap().starts_with("landlock ABI"), "{}", r.summary);
    let eval = &r.summary["eval"];
    assert_eq!((eval["rows"].as_u64(), eval["groups"].as_u64(), eval["rows_per_group"].as_u64()), (Some(64), Some(8), Some(8)), "{eval}");
    assert_eq!(eval["witnesses"]["rows"], 8, "{eval}");
    assert!(eval["witnesses"]["first_failure"].is_null() && eval["witnesses"]["max_abs_diff"].as_f64() == Some(0.0), "a row-independent model gives the same log-probabilities in any company: {eval}");
    assert_eq!(r.summary["num_steps"], 16, "8192 tokens in steps of 8 rows x 64");
    assert!(r.stdout.contains("[trainer] step 00000"), "the trainer's progress lines are logged with a prefix, one per step:\n{}", r.stdout);
    assert_eq!(r.summary["trainer_exit"], "exited with status 0");
    assert!(r.summary["saved_model_bytes"].as_u64().unwrap() > 0, "{}", r.summary);
    assert!(r.summary["profile_sha256"].as_str().unwrap().len() == 64);
}

/// The same rows in 2 groups of 32, or (as after an out-of-memory exit, which halves the device
/// batch) in 16 groups of 4: the same score to the bit.
#[test]
fn the_score_does_not_depend_on_how_rows_are_grouped() {
    let r = harness("honest-groups32", "", "tokens:8192", "groups32", &[], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.summary["eval"]["groups"], 2, "{}", r.summary);
    assert_eq!(r.bpb(), honest_bpb(), "the same rows, summed in the same order");
    let r = harness("honest-halved", "", "tokens:8192", "tiny", &["--device-batch-scale", "0.5"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!((r.summary["eval"]["groups"].as_u64(), r.summary["eval"]["rows_per_group"].as_u64()), (Some(16), Some(4)), "{}", r.summary);
    assert_eq!(r.bpb(), honest_bpb());
}

#[test]
fn forging_the_summary_by_path_is_denied() {
    let target = run_dir("forge-path").join("summary.json");
    let r = attack("forge-path", &format!("path = \"{}\"", target.display()));
    assert_denied(&r, "write");
    assert_honest_score(&r);
}

#[test]
fn forging_the_summary_at_exit_is_denied() {
    let target = run_dir("forge-atexit").join("summary.json");
    let r = attack("forge-atexit", &format!("path = \"{}\"", target.display()));
    assert_honest_score(&r);
    assert!(!r.stdout.contains("write at exit: Ok"), "{}", r.all());
}

/// The fixture binary's live processes, by /proc/*/exe.
fn fixture_processes() -> Vec<i32> {
    let exe = std::fs::canonicalize(fixture_trainer()).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == exe))
        .filter(|pid| !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z "))
        .collect()
}

#[test]
fn a_double_forked_child_cannot_leave_the_group_and_dies_with_the_run() {
    let target = run_dir("forge-fork").join("summary.json");
    let r = attack("forge-fork", &format!("path = \"{}\"", target.display()));
    assert_honest_score(&r);
    assert!(r.stdout.contains("setsid returned -1"), "setsid is refused:\n{}", r.all());
    let before = std::fs::read(&target).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(std::fs::read(&target).unwrap(), before, "nothing wrote the summary after the run");
    let alive: Vec<i32> = fixture_processes().into_iter().filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/environ")).unwrap_or_default().contains("forge-fork")).collect();
    assert!(alive.is_empty(), "processes of the run outlived it: {alive:?}");
}

#[test]
fn the_environment_names_nothing_of_the_run() {
    let r = harness("env", "attack = \"env\"", "tokens:8192", "tiny", &[], &[("AUTORESEARCH_SUMMARY_JSON", "/tmp/forged.json"), ("AUTORESEARCH_COMMIT", "abc")]);
    assert_honest_score(&r);
    let line = r.attack_lines().into_iter().find(|l| l.contains("variables visible")).unwrap().to_string();
    assert!(line.contains("visible: []"), "{line}");
    assert!(line.contains("HOME=") && line.contains("autoresearch-trainer-"), "HOME is the scratch folder: {line}");
    assert!(!Path::new("/tmp/forged.json").exists());
}

#[test]
fn a_summary_block_printed_by_the_trainer_is_not_the_summary() {
    let r = attack("stdout", "");
    assert_honest_score(&r);
    let at_line_start: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with("val_bpb:")).collect();
    assert_eq!(at_line_start.len(), 1, "{}", r.stdout);
    assert!(at_line_start[0].contains(&format!("{:.6}", r.bpb())));
    assert!(r.stdout.contains("[trainer] val_bpb:          0.100000"), "the trainer's own line is prefixed");
}

#[test]
fn the_validation_file_cannot_be_read_and_would_have_helped() {
    let settings = format!("path = \"{}\"", val_tokens().display());
    let r = attack("read-val", &settings);
    assert_denied(&r, "read");
    assert_honest_score(&r);
    // The control: the same trainer without the sandbox reads the file and scores far better.
    let open = harness("read-val-unsandboxed", &format!("attack = \"read-val\"\n{settings}"), "tokens:8192", "tiny", &["--no-require-sandbox"], &[("AUTORESEARCH_SANDBOX", "off")]);
    assert_eq!(open.code, 0, "{}", open.all());
    assert!(open.stdout.contains("training on them"), "{}", open.all());
    assert!(open.bpb() < honest_bpb() - 0.05, "without the sandbox the attack helps: {} vs {}", open.bpb(), honest_bpb());
    assert!(open.summary["sandbox"].as_str().unwrap().starts_with("none"), "{}", open.summary);
    assert!(open.stdout.contains("sandbox: none"), "said loudly:\n{}", open.stdout);
}

#[test]
fn the_data_api_cannot_open_the_cache() {
    let r = attack("read-api", &format!("path = \"{}\"", fixture().cache.display()));
    let line = r.attack_lines().join("\n");
    assert!(line.contains("Permission denied") && !line.contains("opened"), "{}", r.all());
    assert_honest_score(&r);
}

#[test]
fn the_cache_under_the_home_folder_cannot_be_read() {
    // A cache at its default place, $HOME/.cache/autoresearch, with HOME set for the harness.
    let home = fixture().dir.path().join("home");
    let cache = home.join(".cache").join("autoresearch");
    if !cache.exists() {
        std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
        let status = Command::new("cp").arg("-r").arg(&fixture().cache).arg(&cache).status().unwrap();
        assert!(status.success());
    }
    let target = cache.join("tokens").join(val_tokens().file_name().unwrap());
    let dir = run_dir("read-home");
    std::fs::write(dir.join("hp.toml"), format!("attack = \"read-val\"\npath = \"{}\"", target.display())).unwrap();
    let out = Command::new(harness_bin())
        .arg("--profile")
        .arg(fixture().dir.path().join("tiny.toml"))
        .arg("--hparams")
        .arg(dir.join("hp.toml"))
        .arg("--trainer")
        .arg(fixture_trainer())
        .args(["--budget", "tokens:8192", "--device", "flex", "--seed", "7"])
        .env("HOME", &home)
        .env_remove("AUTORESEARCH_CACHE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find(|l| l.contains("ATTACK read-val")).unwrap();
    assert!(line.contains("Permission denied"), "{line}");
    assert!(stdout.contains(&format!("val_bpb:          {:.6}", honest_bpb())), "{stdout}");
}

#[test]
fn proc_and_the_parents_memory_are_out_of_reach() {
    let r = attack("read-proc", "");
    assert_honest_score(&r);
    let lines = r.attack_lines();
    assert!(lines.iter().filter(|l| l.contains("/proc/") && !l.contains("/fd/")).all(|l| l.contains("Err")), "{}", r.all());
    assert!(!lines.iter().any(|l| l.contains("/fd/")), "no descriptor of the harness could be read:\n{}", r.all());
    assert!(lines.iter().any(|l| l.contains("process_vm_readv: -1")), "{}", r.all());
    assert!(lines.iter().any(|l| l.contains("ptrace attach: -1")), "{}", r.all());
}

#[test]
fn nothing_outside_the_scratch_folder_can_be_written() {
    let dir = run_dir("write");
    let repo = dir.join("repo");
    for sub in [".git", ".autoresearch/tag", "target/release", ".autoresearch/.build"] {
        std::fs::create_dir_all(repo.join(sub)).unwrap();
    }
    let targets = [
        repo.join("results.tsv"),
        repo.join(".autoresearch/tag/experiments.jsonl"),
        repo.join(".autoresearch/.build/trainer.rs"),
        repo.join("target/release/harness"),
        repo.join(".git/config"),
        fixture().dir.path().join("tiny.toml"),
        val_tokens(),
    ];
    let profile_before = std::fs::read(&targets[5]).unwrap();
    let paths: Vec<String> = targets.iter().map(|p| p.display().to_string()).collect();
    let r = attack("write", &format!("paths = \"{}\"", paths.join(",")));
    assert_honest_score(&r);
    for p in &paths {
        let line = r.attack_lines().into_iter().find(|l| l.contains(p.as_str())).unwrap_or_else(|| panic!("{p}:\n{}", r.all()));
        assert!(line.contains("Permission denied"), "{line}");
    }
    for t in &targets[..5] {
        assert!(!t.exists(), "{} was created", t.display());
    }
    assert_eq!(std::fs::read(&targets[5]).unwrap(), profile_before, "the profile is unchanged");
}

#[test]
fn no_network_socket_can_be_opened() {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let r = attack("network", &format!("port = \"{}\"\nudp_port = \"{}\"", tcp.local_addr().unwrap().port(), udp.local_addr().unwrap().port()));
    assert_honest_score(&r);
    let lines = r.attack_lines().join("\n");
    assert!(lines.contains("tcp connect: Permission denied"), "{lines}");
    assert!(lines.contains("udp send: Permission denied"), "{lines}");
    tcp.set_nonblocking(true).unwrap();
    udp.set_nonblocking(true).unwrap();
    assert!(tcp.accept().is_err(), "nothing connected");
    assert!(udp.recv(&mut [0u8; 8]).is_err(), "nothing arrived");
}

#[test]
fn the_trainer_cannot_signal_the_harness() {
    let r = attack("signal", "");
    assert_honest_score(&r);
    assert!(r.attack_lines().iter().any(|l| l.contains("kill parent: -1")), "{}", r.all());
}

/// The fixture's System V key for a `carry` tag.
fn carry_key(tag: &str) -> libc::key_t {
    (tag.bytes().fold(0x5EA1_ED27u32, |h, b| h.rotate_left(5) ^ b as u32) & 0x7FFF_FFFF) as libc::key_t
}

/// No System V segment with the attack's key exists (it would have outlived its process).
fn no_shared_segment_left(tag: &str) -> bool {
    // SAFETY: a lookup only.
    unsafe { libc::shmget(carry_key(tag), 0, 0) < 0 }
}

/// The issue's attack: remember what followed every prefix seen, raise it when a prefix comes
/// back, and carry the memory from one evaluating process to the next, on every position, on
/// 1 % of them, or from a thread that outlives each answer. No target is ever sent before its
/// logits are scored, and nothing outlives a process: it gains nothing, to the last bit, and
/// leaves nothing behind.
#[test]
fn remembering_what_was_shown_gains_nothing() {
    for a in ["remember", "remember-1pct", "remember-thread"] {
        let r = attack(a, &format!("carry = \"{a}\""));
        assert_honest_score(&r);
        assert!(r.summary["eval"]["witnesses"]["first_failure"].is_null(), "{a}: {}", r.summary);
        for left in [format!("/tmp/autoresearch-seen-{a}.bin"), format!("/dev/shm/autoresearch-seen-{a}.bin")] {
            assert!(!Path::new(&left).exists(), "{left} was written");
        }
        assert!(no_shared_segment_left(a), "a System V segment outlived the run");
    }
}

/// The control: without the sandbox the memory does cross from one process to the next (through
/// /tmp and System V memory), so the witness rows, evaluated last, are recognised and raised,
/// and the run is refused. In the sandbox (above) the same code finds nothing.
#[test]
fn without_the_sandbox_the_memory_would_cross_processes() {
    let tag = format!("control-{}", std::process::id());
    let r = harness("remember-unsandboxed", &format!("attack = \"remember\"\ncarry = \"{tag}\""), "tokens:8192", "tiny", &["--no-require-sandbox"], &[("AUTORESEARCH_SANDBOX", "off")]);
    let _ = std::fs::remove_file(format!("/tmp/autoresearch-seen-{tag}.bin"));
    let _ = std::fs::remove_file(format!("/dev/shm/autoresearch-seen-{tag}.bin"));
    // SAFETY: removes the control's own segment.
    unsafe {
        let id = libc::shmget(carry_key(&tag), 0, 0);
        if id >= 0 {
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        }
    }
    assert_eq!(r.code, 4, "{}", r.all());
    assert!(r.stdout.contains("depend on the other rows"), "{}", r.all());
}

/// Writing into the shared region after the next position arrived (whose tokens are the last
/// answer's targets) changes nothing: the harness copied the answer out before it sent them.
#[test]
fn rewriting_an_answer_after_its_targets_arrive_changes_nothing() {
    assert_honest_score(&attack("rewrite", ""));
}

/// Waiting for the next position before answering this one: it never comes.
#[test]
fn waiting_for_the_next_position_runs_into_the_limit() {
    let r = attack("wait", "");
    assert_eq!(r.code, 6, "{}", r.all());
    assert!(r.summary["error"].as_str().unwrap().contains("longer to evaluate"), "{}", r.summary);
}

/// A model that learns from its group as it is revealed (the bigrams of every row, test-time
/// training): the witness rows, evaluated again without that company, give other
/// log-probabilities, and the run is refused. Without witness rows it would have gained.
#[test]
fn a_model_that_learns_from_its_group_is_refused_by_the_witness_rows() {
    let r = attack("ttt", "");
    assert_eq!(r.code, 4, "{}", r.all());
    assert!(r.stdout.contains("EVALUATION CHECK FAILED") && r.stdout.contains("depend on the other rows"), "{}", r.all());
    assert!(r.summary["witnesses"]["first_failure"].is_array(), "{}", r.summary);
    let unchecked = harness("ttt-no-witness", "attack = \"ttt\"", "tokens:8192", "no-witness", &[], &[]);
    assert_eq!(unchecked.code, 0, "{}", unchecked.all());
    assert!(unchecked.bpb() < honest_bpb() - 0.01, "the adaptation helps: {} vs {}", unchecked.bpb(), honest_bpb());
}

/// A NaN where a counted target is scored is refused, not averaged.
#[test]
fn a_non_finite_answer_is_refused() {
    let r = attack("nan", "");
    assert_eq!(r.code, 4, "{}", r.all());
    assert!(r.stdout.contains("EVALUATION CHECK FAILED"), "{}", r.all());
}

/// The training process is gone before evaluation starts, whatever it does after TrainingDone.
#[test]
fn the_training_process_is_gone_before_evaluation() {
    let r = attack("linger", "");
    assert_honest_score(&r);
    assert!(r.summary["trainer_exit"].as_str().unwrap().contains("killed"), "{}", r.summary);
    assert!(r.seconds < 20.0, "the harness did not wait for it: {} s", r.seconds);
}

/// Evaluation loads what training saved, from the folder the harness made: an empty folder is
/// refused before any evaluating process starts, and a folder replaced by a link is not
/// followed.
#[test]
fn the_saved_model_must_be_there_and_be_a_folder() {
    let r = attack("no-save", "");
    assert_eq!(r.code, 6, "{}", r.all());
    assert!(r.summary["error"].as_str().unwrap().contains("saved no model"), "{}", r.summary);
    // A model its loader refuses: the loader's own message (no validation token seen yet).
    let r = attack("bad-save", "");
    assert_eq!(r.code, 6, "{}", r.all());
    let error = r.summary["error"].as_str().unwrap();
    assert!(error.contains("could not load the saved model") && error.contains("holds 3 bytes"), "{}", r.summary);
    let r = attack("model-link", &format!("path = \"{}\"", fixture().cache.display()));
    assert_eq!(r.code, 6, "{}", r.all());
    assert!(r.summary["error"].as_str().unwrap().contains("replaced its model folder"), "{}", r.summary);
}

#[test]
fn work_before_the_first_step_is_on_the_clock() {
    // Longer than the budget: over budget before it asks for any data.
    let r = harness("pretrain-long", "attack = \"pretrain\"\nseconds = \"3\"", "time:2", "tiny", &[], &[]);
    assert_eq!(r.code, 6, "{}", r.all());
    assert!(r.summary["error"].as_str().unwrap().contains("over budget"), "{}", r.summary);
    // Shorter: the run is no longer for it; warm-up ends at its allowance (5 % of 3 s).
    let r = harness("pretrain-short", "attack = \"pretrain\"\nseconds = \"1\"", "time:3", "tiny", &[], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let (warmup, training) = (r.summary["warmup_seconds"].as_f64().unwrap(), r.summary["training_seconds"].as_f64().unwrap());
    assert!((warmup - 0.15).abs() < 1e-6, "warm-up capped at the allowance: {}", r.summary);
    assert!(warmup + training <= 3.0 + 2.0 * 0.15 + 0.05, "the work before the first step came out of the budget: {}", r.summary);
}

#[test]
fn training_past_the_budget_is_a_crash() {
    let r = harness("overtrain", "attack = \"overtrain\"\nseconds = \"30\"", "time:2", "tiny", &[], &[]);
    assert_eq!(r.code, 6, "{}", r.all());
    assert!(r.summary["error"].as_str().unwrap().contains("over budget"), "{}", r.summary);
    assert!(r.seconds < 15.0, "the harness did not wait for the trainer: {} s", r.seconds);
    let hang = harness("hang", "attack = \"hang\"", "time:2", "tiny", &[], &[]);
    assert_eq!(hang.code, 6, "{}", hang.all());
    assert!(hang.summary["error"].as_str().unwrap().contains("over budget"), "{}", hang.summary);
}

#[test]
fn training_while_being_evaluated_runs_into_the_evaluation_limit() {
    let r = harness("slow-eval", "attack = \"slow-eval\"\nseconds = \"6\"", "tokens:8192", "tiny", &[], &[]);
    assert_eq!(r.code, 6, "{}", r.all());
    assert!(r.summary["error"].as_str().unwrap().contains("longer to evaluate"), "{}", r.summary);
}

#[test]
fn nothing_the_trainer_says_after_seeing_validation_inputs_is_logged() {
    let r = attack("chatty-eval", "");
    assert_honest_score(&r);
    assert!(!r.stdout.contains("VALIDATION"), "{}", r.all());
    assert!(r.summary["trainer_output_withheld_bytes"].as_u64().unwrap() > 0);
    let crash = attack("crash-eval", "");
    assert_eq!(crash.code, 6, "{}", crash.all());
    assert!(!crash.all().contains("validation inputs: ["), "the failure message is withheld:\n{}", crash.all());
}

#[test]
fn a_diverged_loss_is_fail_and_exit_1() {
    let r = attack("diverge", "");
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.lines().any(|l| l == "FAIL"), "{}", r.all());
}

#[test]
fn the_trainer_dies_with_the_harness() {
    let dir = run_dir("orphan");
    std::fs::write(dir.join("hp.toml"), "attack = \"hang\"\n").unwrap();
    let mut child = Command::new(harness_bin())
        .arg("--cache-dir")
        .arg(&fixture().cache)
        .arg("--profile")
        .arg(fixture().dir.path().join("tiny.toml"))
        .arg("--hparams")
        .arg(dir.join("hp.toml"))
        .arg("--trainer")
        .arg(fixture_trainer())
        .args(["--budget", "time:100", "--device", "flex"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let harness_pid = child.id() as i32;
    let ours = || fixture_processes().into_iter().filter(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default().split_whitespace().nth(3) == Some(&harness_pid.to_string())).collect::<Vec<_>>();
    let t0 = Instant::now();
    while ours().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "the trainer never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let trainer = ours()[0];
    child.kill().unwrap(); // SIGKILL: no handler runs in the harness
    child.wait().unwrap();
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{trainer}/exe")).exists() && fixture_processes().contains(&trainer) {
        assert!(t0.elapsed() < Duration::from_secs(5), "the trainer outlived its harness");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn without_a_sandbox_the_run_refuses_or_says_so_loudly() {
    let refused = harness("no-sandbox", "", "tokens:8192", "tiny", &[], &[("AUTORESEARCH_SANDBOX", "off")]);
    assert_eq!(refused.code, 2, "{}", refused.all());
    assert!(refused.stderr.contains("--no-require-sandbox"), "{}", refused.all());
    let allowed = harness("no-sandbox-ok", "", "tokens:8192", "tiny", &["--no-require-sandbox"], &[("AUTORESEARCH_SANDBOX", "off")]);
    assert_eq!(allowed.code, 0, "{}", allowed.all());
    assert!(allowed.stdout.contains("harness: sandbox: none"), "{}", allowed.stdout);
    assert!(allowed.stderr.contains("WARNING: sandbox: none"), "{}", allowed.stderr);
    assert!(allowed.summary["sandbox"].as_str().unwrap().starts_with("none"));
}

#[test]
fn a_trainer_started_by_hand_says_what_it_is() {
    let out = Command::new(fixture_trainer()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("started by the harness"));
}

#[test]
fn the_summary_is_signed_with_the_run_key_and_a_forged_copy_fails() {
    let dir = run_dir("signed");
    let key = dir.join("scorer.key");
    std::fs::write(&key, contract::signature::new_key_hex()).unwrap();
    let r = harness("signed", "", "tokens:8192", "tiny", &["--sign-key", key.to_str().unwrap()], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let k = std::fs::read_to_string(&key).unwrap();
    contract::signature::verify(k.trim().as_bytes(), &r.summary).unwrap();
    let mut forged = r.summary.clone();
    forged["val_bpb"] = serde_json::json!(0.5);
    assert!(contract::signature::verify(k.trim().as_bytes(), &forged).is_err());
}

#[test]
fn the_held_out_split_is_scored_when_asked_and_shares_no_document_with_validation() {
    let r = harness("held-out", "", "tokens:8192", "tiny", &["--held-out"], &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let h = &r.summary["heldout"]["scored"];
    assert!(h["bpb"].as_f64().unwrap().is_finite(), "{}", r.summary);
    assert_eq!(h["overlap_with_validation"], 0);
    assert!(h["documents"].as_u64().unwrap() > 0 && h["witnesses"]["first_failure"].is_null(), "{h}");
    assert!((r.bpb() - honest_bpb()).abs() < 1e-9, "val_bpb does not change when the held-out split is scored too");
    let plain = harness("held-out-not-asked", "", "tokens:8192", "tiny", &[], &[]);
    assert!(plain.summary.get("heldout").is_none() && plain.summary.get("heldout_bpb").is_none());
    // Where the evaluation reaches every validation document, the run says so, loudly.
    let none = harness("held-out-none", "", "tokens:8192", "exhaust", &["--held-out"], &[]);
    assert_eq!(none.code, 0, "{}", none.all());
    assert!(none.stdout.contains("HELD-OUT SPLIT: NONE"), "{}", none.stdout);
    assert!(none.summary["heldout"]["none"].is_string(), "{}", none.summary);
}
