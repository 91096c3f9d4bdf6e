//! A small trainer for the harness's tests: the bigram model of `contract::fixture`, so a run
//! takes a second, and the attacks of the red-team suite (`tests/sealed.rs`), each a
//! few lines that a dishonest trainer could add, chosen by the `attack = "..."` line of the
//! hyperparameter overrides (`harness --hparams`). Other `key = "value"` lines give an attack
//! its targets (a path to forge, a port to reach). Every attack prints `ATTACK <name>: <what
//! happened>` while training, where the test can read it, and then trains honestly. The
//! evaluation attacks run in the evaluating processes, whose output is withheld: they report
//! through the one channel the test can read afterwards, the score (and, for what must stay
//! impossible, the files they try to leave behind).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;

use contract::channel::Channel;
use contract::fixture::Bigram;
use contract::wire::{Done, Failure, FailureKind, Hello, Task};

/// `key = "value"` pairs of the override text.
fn settings(hello: &Hello) -> HashMap<String, String> {
    let text = hello.hparams_override.clone().unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

fn report(attack: &str, what: impl std::fmt::Display) {
    println!("ATTACK {attack}: {what}");
    let _ = std::io::stdout().flush();
}

fn main() {
    let mut ch = match Channel::from_harness() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fixture: {e}");
            std::process::exit(2);
        }
    };
    let hello = ch.hello().clone();
    let s = settings(&hello);
    let attack = s.get("attack").cloned().unwrap_or_default();
    let get = |k: &str| s.get(k).cloned().unwrap_or_default();
    match hello.task {
        Task::Train => train(&mut ch, &hello, &attack, &get),
        Task::Evaluate { .. } => {
            let model = match contract::fixture::load(&ch) {
                Ok(m) => m,
                Err(e) => {
                    ch.fail(Failure { kind: FailureKind::Error, message: format!("cannot load the bigram: {e}"), step: None, loss: None });
                    std::process::exit(1);
                }
            };
            evaluate(&mut ch, &hello, &attack, &get, model);
        }
    }
}

fn train(ch: &mut Channel, hello: &Hello, attack: &str, get: &dyn Fn(&str) -> String) {
    before_training(attack, get, hello);
    let mut model = Bigram::new(hello.vocab_size);
    if let Err(e) = ch.send_model(contract::wire::ModelInfo { num_params: (hello.vocab_size * hello.vocab_size) as u64, flops_per_token: 2.0, depth: 1 }) {
        eprintln!("fixture: {e}");
        std::process::exit(2);
    }
    let rows: usize = get("rows").parse().unwrap_or(8);
    let mut kept: Vec<Vec<u16>> = Vec::new();
    let mut report_loss = None;
    let mut step = 0;
    loop {
        let batch = match ch.next_step(rows, report_loss) {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                eprintln!("fixture: {e}");
                std::process::exit(2);
            }
        };
        for r in 0..batch.rows {
            model.learn(batch.row(r));
            kept.push(batch.row(r).to_vec());
        }
        during_training(attack, get, step, &mut model);
        let loss = if attack == "diverge" && step == 3 { f64::NAN } else { 3.0 / (1.0 + step as f64) };
        report_loss = Some(contract::wire::StepReport { loss, lr_multiplier: 1.0 });
        print!("\rstep {step:05} | loss: {loss:.6} | tok/sec: 1    ");
        let _ = std::io::stdout().flush();
        step += 1;
    }
    println!();
    after_training(attack, get, &mut model, &kept);
    let dir = Path::new(&hello.model_dir);
    if attack == "no-save" {
        report(attack, "saved nothing");
    } else if attack == "bad-save" {
        let _ = std::fs::write(dir.join(contract::fixture::MODEL_FILE), [1u8, 2, 3]);
    } else if attack == "model-link" {
        // The model folder replaced by a link to somewhere the trainer wants evaluation to read.
        let r = std::fs::remove_dir_all(dir).and_then(|_| std::os::unix::fs::symlink(get("path"), dir));
        report(attack, format!("model folder replaced by a link: {r:?}"));
    } else if let Err(e) = model.save(dir) {
        eprintln!("fixture: saving: {e}");
        std::process::exit(1);
    }
    if let Err(e) = ch.training_done(Done::default()) {
        eprintln!("fixture: {e}");
        std::process::exit(2);
    }
    if attack == "linger" {
        // Stays alive after training, as a process that would wait for validation tokens.
        std::thread::sleep(std::time::Duration::from_secs(30));
    }
}

fn before_training(attack: &str, get: &dyn Fn(&str) -> String, _hello: &Hello) {
    match attack {
        // Work before the first request (an untimed pre-training, if the clock started late).
        "pretrain" => {
            let secs: f64 = get("seconds").parse().unwrap_or(3.0);
            let t0 = std::time::Instant::now();
            while t0.elapsed().as_secs_f64() < secs {
                std::hint::black_box(t0.elapsed());
            }
            report(attack, format!("spent {secs} s before asking for data"));
        }
        "env" => {
            let found: Vec<String> = std::env::vars().map(|(k, _)| k).filter(|k| k.starts_with("AUTORESEARCH") && k != "AUTORESEARCH_CHANNEL_FD" && k != "AUTORESEARCH_SHM_FD").collect();
            report(attack, format!("autoresearch variables visible: {found:?}; HOME={}", std::env::var("HOME").unwrap_or_default()));
            if let Ok(path) = std::env::var("AUTORESEARCH_SUMMARY_JSON") {
                report(attack, format!("forge through the environment: {:?}", std::fs::write(path, r#"{"val_bpb": 0.5}"#)));
            }
        }
        _ => {}
    }
}

fn during_training(attack: &str, get: &dyn Fn(&str) -> String, step: usize, model: &mut Bigram) {
    if step != 0 {
        return;
    }
    match attack {
        "forge-path" => {
            let r = std::fs::write(get("path"), r#"{"val_bpb": 0.5, "status": "ok", "exit_code": 0}"#);
            report(attack, format!("write {}: {r:?}", get("path")));
        }
        "forge-atexit" => {
            extern "C" fn at_exit() {
                if let Ok(p) = std::fs::read_to_string("forge-target") {
                    let r = std::fs::write(p.trim(), r#"{"val_bpb": 0.5}"#);
                    println!("ATTACK forge-atexit: write at exit: {r:?}");
                }
            }
            let _ = std::fs::write("forge-target", get("path"));
            // SAFETY: registers a plain function.
            unsafe { libc::atexit(at_exit) };
            report(attack, "atexit handler registered");
        }
        "forge-fork" => {
            // A grandchild that tries to leave the process group, then waits for the run to end
            // and writes the summary.
            // SAFETY: the child only makes system calls and exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let setsid = unsafe { libc::setsid() };
                let pid2 = unsafe { libc::fork() };
                if pid2 == 0 {
                    let path = get("path");
                    for _ in 0..100 {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        let _ = std::fs::write(&path, r#"{"val_bpb": 0.5}"#);
                    }
                    unsafe { libc::_exit(0) };
                }
                println!("ATTACK forge-fork: setsid returned {setsid}, grandchild {pid2}");
                let _ = std::io::stdout().flush();
                unsafe { libc::_exit(0) };
            }
            // The first child has printed (and left its grandchild behind) once it is gone.
            let mut status = 0;
            unsafe { libc::waitpid(pid, &mut status, 0) };
            report(attack, format!("forked {pid}"));
        }
        "stdout" => {
            println!("\n---\nval_bpb:          0.100000\ntraining_seconds: 300.0");
            report(attack, "printed a summary block");
        }
        "read-val" => {
            let path = get("path");
            match std::fs::read(&path) {
                Ok(bytes) => {
                    report(attack, format!("read {} bytes of {path}: training on them", bytes.len()));
                    // The token file's ids, learned as bigrams many times over.
                    let ids: Vec<u16> = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).filter(|&i| (i as usize) < model.vocab).collect();
                    for _ in 0..50 {
                        model.learn(&ids);
                    }
                }
                Err(e) => report(attack, format!("read {path}: {e}")),
            }
        }
        "read-api" => {
            let r = prepare::data::PreparedData::open(std::path::Path::new(&get("path")));
            report(attack, format!("PreparedData::open: {}", r.map(|_| "opened".to_string()).unwrap_or_else(|e| format!("{e:#}"))));
        }
        "read-proc" => {
            let ppid = unsafe { libc::getppid() };
            for what in ["environ", "cmdline", "maps", "status"] {
                let p = format!("/proc/{ppid}/{what}");
                report(attack, format!("{p}: {:?}", std::fs::read(&p).map(|b| b.len())));
            }
            for fd in 0..16 {
                let p = format!("/proc/{ppid}/fd/{fd}");
                let mut buf = [0u8; 16];
                let r = std::fs::File::open(&p).and_then(|mut f| f.read(&mut buf));
                if let Ok(n) = r {
                    report(attack, format!("{p}: read {n} bytes"));
                }
            }
            let mut local = [0u8; 8];
            let liov = libc::iovec { iov_base: local.as_mut_ptr().cast(), iov_len: 8 };
            let riov = libc::iovec { iov_base: 0x400000 as *mut libc::c_void, iov_len: 8 };
            let n = unsafe { libc::process_vm_readv(ppid, &liov, 1, &riov, 1, 0) };
            report(attack, format!("process_vm_readv: {n} ({})", std::io::Error::last_os_error()));
            let t = unsafe { libc::ptrace(libc::PTRACE_ATTACH, ppid, 0, 0) };
            report(attack, format!("ptrace attach: {t} ({})", std::io::Error::last_os_error()));
        }
        "write" => {
            for p in get("paths").split(',').filter(|p| !p.is_empty()) {
                let r = std::fs::OpenOptions::new().create(true).append(true).open(p).and_then(|mut f| f.write_all(b"forged\n"));
                report(attack, format!("write {p}: {}", r.map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string())));
            }
        }
        "network" => {
            let port = get("port");
            let tcp = std::net::TcpStream::connect(format!("127.0.0.1:{port}"));
            report(attack, format!("tcp connect: {}", tcp.map(|_| "connected".to_string()).unwrap_or_else(|e| e.to_string())));
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.send_to(b"hello", format!("127.0.0.1:{}", get("udp_port"))));
            report(attack, format!("udp send: {}", udp.map(|n| format!("sent {n}")).unwrap_or_else(|e| e.to_string())));
            let unix = std::os::unix::net::UnixDatagram::unbound().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string());
            report(attack, format!("unix socket: {unix}"));
        }
        "signal" => {
            let ppid = unsafe { libc::getppid() };
            let r = unsafe { libc::kill(ppid, libc::SIGKILL) };
            report(attack, format!("kill parent: {r} ({})", std::io::Error::last_os_error()));
        }
        "hang" => loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        },
        _ => {}
    }
}

fn after_training(attack: &str, get: &dyn Fn(&str) -> String, model: &mut Bigram, kept: &[Vec<u16>]) {
    if attack == "overtrain" {
        // Keeps training on the rows it kept, past the budget.
        let secs: f64 = get("seconds").parse().unwrap_or(30.0);
        let t0 = std::time::Instant::now();
        while t0.elapsed().as_secs_f64() < secs {
            for r in kept {
                model.learn(r);
            }
        }
    }
}

/// Where the evaluation attacks try to leave what they remember for the next group's process,
/// and look for what an earlier one left: their scratch folder (`HOME`), the saved model's
/// folder, the shared temporary folders (named after the run's `carry` setting), and a System V
/// shared-memory segment (keyed by it).
fn carry_paths(hello: &Hello, tag: &str) -> Vec<std::path::PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    vec![
        Path::new(&home).join("seen.bin"),
        Path::new(&hello.model_dir).join("seen.bin"),
        std::path::PathBuf::from(format!("/tmp/autoresearch-seen-{tag}.bin")),
        std::path::PathBuf::from(format!("/dev/shm/autoresearch-seen-{tag}.bin")),
    ]
}

/// The System V key of the run's `carry` setting.
fn carry_key(tag: &str) -> libc::key_t {
    (tag.bytes().fold(0x5EA1_ED27u32, |h, b| h.rotate_left(5) ^ b as u32) & 0x7FFF_FFFF) as libc::key_t
}

/// A memory as bytes: (prefix hash, next token) pairs.
fn memory_bytes(memory: &HashMap<u64, u16>) -> Vec<u8> {
    memory.iter().flat_map(|(h, t)| h.to_le_bytes().into_iter().chain(t.to_le_bytes())).collect()
}

fn memory_from(bytes: &[u8], into: &mut HashMap<u64, u16>) {
    for c in bytes.chunks_exact(10) {
        into.insert(u64::from_le_bytes(c[..8].try_into().unwrap()), u16::from_le_bytes([c[8], c[9]]));
    }
}

/// What an earlier evaluating process left behind, wherever it could.
fn carried(hello: &Hello, tag: &str, into: &mut HashMap<u64, u16>) {
    for p in carry_paths(hello, tag) {
        if let Ok(b) = std::fs::read(&p) {
            memory_from(&b, into);
        }
    }
    // SAFETY: plain System V calls; the segment is read within the size it records.
    unsafe {
        let id = libc::shmget(carry_key(tag), 0, 0);
        if id >= 0 {
            let p = libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY);
            if p as isize != -1 {
                let n = (*(p as *const u64)).min(1 << 26) as usize;
                memory_from(std::slice::from_raw_parts((p as *const u8).add(8), n), into);
            }
        }
    }
}

/// Leaves the memory wherever it can, for a later process.
fn leave(hello: &Hello, tag: &str, memory: &HashMap<u64, u16>) {
    let bytes = memory_bytes(memory);
    for p in carry_paths(hello, tag) {
        let _ = std::fs::write(&p, &bytes);
    }
    // SAFETY: plain System V calls on a segment large enough for what is written.
    unsafe {
        let key = carry_key(tag);
        let mut id = libc::shmget(key, 8 + bytes.len(), libc::IPC_CREAT | 0o600);
        if id < 0 {
            // An older, smaller segment: replace it.
            let old = libc::shmget(key, 0, 0);
            libc::shmctl(old, libc::IPC_RMID, std::ptr::null_mut());
            id = libc::shmget(key, 8 + bytes.len(), libc::IPC_CREAT | 0o600);
        }
        if id >= 0 {
            let p = libc::shmat(id, std::ptr::null(), 0);
            if p as isize != -1 {
                *(p as *mut u64) = bytes.len() as u64;
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), (p as *mut u8).add(8), bytes.len());
                libc::shmdt(p);
            }
        }
    }
}

/// Answers one group, one position at a time; some attacks change how.
///
/// - `remember`: keeps, for every prefix it has seen, the token that followed it, and raises
///   that token's logit when a row's prefix is one it has seen; leaves everything it saw for the
///   next group's process and starts from what an earlier one left (the issue's read-ahead by
///   memory);
/// - `remember-1pct`: the same, on 1 % of the positions only;
/// - `remember-thread`: the memory kept by a thread that outlives each answer, which also
///   writes it out as it grows;
/// - `rewrite`: once the next position's tokens (the targets of the last answer) arrive,
///   writes a raised version of the last answer into the shared region, as if it could still
///   change what was scored;
/// - `wait`: does not answer a position until it has seen the next one;
/// - `ttt`: learns the bigrams of every row as they are revealed (adapting to the group);
/// - `slow-eval`, `crash-eval`, `chatty-eval`, `nan`: take too long, fail with validation
///   tokens in the message, print them, answer with a NaN.
fn evaluate(ch: &mut Channel, hello: &Hello, attack: &str, get: &dyn Fn(&str) -> String, mut model: Bigram) {
    let v = hello.vocab_size;
    let remember = attack.starts_with("remember");
    let tag = get("carry");
    // Prefix (hashed) -> the token that followed it, starting from what an earlier process left.
    let memory = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<u64, u16>::new()));
    if remember {
        carried(hello, &tag, &mut memory.lock().unwrap());
    }
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    if attack == "remember-thread" {
        // The memory written out by a thread that outlives every answer, as it grows.
        let (memory, hello, tag) = (memory.clone(), hello.clone(), tag.clone());
        std::thread::spawn(move || {
            while rx.recv().is_ok() {
                let snapshot = memory.lock().unwrap().clone();
                leave(&hello, &tag, &snapshot);
            }
        });
    }
    if let Err(e) = ch.ready() {
        eprintln!("fixture: {e}");
        std::process::exit(2);
    }
    let mut hashes: Vec<u64> = Vec::new();
    let mut last: Option<Vec<f32>> = None;
    let mut previous: Option<Vec<u16>> = None;
    let mut position = 0usize;
    loop {
        let tokens = match ch.next_tokens() {
            Ok(Some(t)) => t,
            Ok(None) => break,
            Err(e) => {
                eprintln!("fixture: {e}");
                std::process::exit(2);
            }
        };
        let rows = tokens.len();
        if hashes.is_empty() {
            hashes = vec![0; rows];
        }
        if attack == "slow-eval" && position == 0 {
            std::thread::sleep(std::time::Duration::from_secs_f64(get("seconds").parse().unwrap_or(2.0)));
        }
        if attack == "crash-eval" && position == 3 {
            ch.fail(Failure { kind: FailureKind::Error, message: format!("validation inputs: {:?}", &tokens[..rows.min(32)]), step: None, loss: None });
            std::process::exit(1);
        }
        if attack == "chatty-eval" {
            println!("VALIDATION {:?}", &tokens[..rows.min(16)]);
        }
        if attack == "rewrite" {
            if let Some(mut prev) = last.take() {
                // These tokens are the targets of the last answer: raise them, after the fact.
                for (r, &t) in tokens.iter().enumerate() {
                    prev[r * v + t as usize] += 20.0;
                }
                // A mapping of its own of the shared region, written behind the channel's back.
                let fd: i32 = std::env::var(contract::wire::SHM_FD_ENV).ok().and_then(|f| f.parse().ok()).unwrap_or(-1);
                // SAFETY: a duplicate of the region's descriptor, mapped for as long as it lives.
                if let Ok(mut region) = unsafe { contract::shm::Shm::from_inherited(libc::dup(fd), hello.shm_bytes as usize) } {
                    let _ = region.write_f32s(&prev);
                }
            }
        }
        if attack == "wait" {
            // Wait for the next position before answering this one: it never comes.
            std::thread::sleep(std::time::Duration::from_secs(30));
        }
        // The revealed tokens: the memory learns what followed each prefix.
        for (r, &t) in tokens.iter().enumerate() {
            if remember && position > 0 {
                memory.lock().unwrap().insert(hashes[r], t);
            }
            hashes[r] = prefix_hash(hashes[r], t);
        }
        if attack == "remember-thread" {
            let _ = tx.send(());
        }
        if attack == "ttt" {
            // The bigram (previous token, this token) of every row is revealed now: learn it
            // before answering, so the answer uses this group's text so far.
            if let Some(prev) = &previous {
                for (&a, &b) in prev.iter().zip(&tokens) {
                    model.learn(&[a, b]);
                }
            }
            previous = Some(tokens.clone());
        }
        let mut logits = model.next_logits(&tokens);
        if remember {
            let mem = memory.lock().unwrap();
            for r in 0..rows {
                let recall = attack != "remember-1pct" || (r * 7919 + position * 104729) % 100 == 0;
                if let (true, Some(&next)) = (recall, mem.get(&hashes[r])) {
                    logits[r * v + next as usize] += 8.0;
                }
            }
        }
        if attack == "nan" && position == 2 {
            logits.iter_mut().for_each(|x| *x = f32::NAN);
        }
        if let Err(e) = ch.answer(&logits) {
            eprintln!("fixture: {e}");
            std::process::exit(2);
        }
        if remember && attack != "remember-thread" {
            leave(hello, &tag, &memory.lock().unwrap());
        }
        last = Some(logits);
        position += 1;
    }
}

/// A running hash of a prefix, one token at a time.
fn prefix_hash(h: u64, token: u16) -> u64 {
    (h ^ token as u64).wrapping_mul(0x100_0000_01B3).rotate_left(29) ^ 0x9E37_79B9_7F4A_7C15
}
