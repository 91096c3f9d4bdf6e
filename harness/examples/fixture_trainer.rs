//! A small trainer for the harness's tests: the bigram model of `sealed::fixture`, so a run
//! takes a second, and the attacks of the red-team suite (`tests/sealed.rs`), each a
//! few lines that a dishonest trainer could add, chosen by the `attack = "..."` line of the
//! hyperparameter overrides (`harness --hparams`). Other `key = "value"` lines give an attack
//! its targets (a path to forge, a port to reach). Every attack prints `ATTACK <name>: <what
//! happened>` while training, where the test can read it, and then trains honestly.

use std::collections::HashMap;
use std::io::{Read, Write};

use sealed::child::{Channel, EvalRequest};
use sealed::fixture::{Bigram, summarize};
use sealed::wire::{Done, EvalMode, Failure, FailureKind, Hello};

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
    before_training(&attack, &get, &hello);
    let mut model = Bigram::new(hello.vocab_size);
    if let Err(e) = ch.send_model(sealed::wire::ModelInfo { num_params: (hello.vocab_size * hello.vocab_size) as u64, flops_per_token: 2.0, depth: 1 }) {
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
        during_training(&attack, &get, step, &mut model);
        let loss = if attack == "diverge" && step == 3 { f64::NAN } else { 3.0 / (1.0 + step as f64) };
        report_loss = Some(sealed::wire::StepReport { loss, lr_multiplier: 1.0 });
        print!("\rstep {step:05} | loss: {loss:.6} | tok/sec: 1    ");
        let _ = std::io::stdout().flush();
        step += 1;
    }
    println!();
    after_training(&attack, &get, &mut model, &kept);
    if let Err(e) = ch.training_done(Done::default()) {
        eprintln!("fixture: {e}");
        std::process::exit(2);
    }
    evaluate(&mut ch, &hello, &attack, &get, &mut model);
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

/// Answers evaluation; some attacks change how.
fn evaluate(ch: &mut Channel, hello: &Hello, attack: &str, get: &dyn Fn(&str) -> String, model: &mut Bigram) {
    let v = hello.vocab_size;
    let mut seen: HashMap<Vec<u16>, Vec<f32>> = HashMap::new();
    let mut last: Vec<f32> = Vec::new();
    let mut batches = 0;
    loop {
        let req = match ch.next_eval() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("fixture: {e}");
                std::process::exit(2);
            }
        };
        match req {
            EvalRequest::Quit => break,
            EvalRequest::Batch(b) => {
                let (rows, t) = (b.rows, b.seq_len);
                if attack == "slow-eval" {
                    std::thread::sleep(std::time::Duration::from_secs_f64(get("seconds").parse().unwrap_or(2.0)));
                }
                if attack == "crash-eval" && batches == 1 {
                    ch.fail(Failure { kind: FailureKind::Error, message: format!("validation inputs: {:?}", &b.inputs[..t.min(32)]), step: None, loss: None });
                    std::process::exit(1);
                }
                let mut logits = vec![0f32; rows * t * v];
                for r in 0..rows {
                    let row = &b.inputs[r * t..(r + 1) * t];
                    if attack == "cache" {
                        if let Some(cached) = seen.get(row) {
                            logits[r * t * v..(r + 1) * t * v].copy_from_slice(cached);
                            continue;
                        }
                    }
                    for p in 0..t {
                        let out = &mut logits[(r * t + p) * v..(r * t + p + 1) * v];
                        model.logits(row[p], out);
                        // Read the answer: the next input is the target of this position.
                        let peek = match attack {
                            "peek" | "cache" => p + 1 < t,
                            "peek-late" => p + 1 < t && p >= t / 2,
                            _ => false,
                        };
                        if peek {
                            out[row[p + 1] as usize] += 8.0;
                        }
                    }
                    if attack == "cache" {
                        seen.insert(row.to_vec(), logits[r * t * v..(r + 1) * t * v].to_vec());
                    }
                    if attack == "ttt" {
                        model.learn(row);
                    }
                }
                if attack == "chatty-eval" {
                    println!("VALIDATION {:?}", &b.inputs[..t.min(16)]);
                }
                let sent = match hello.eval_mode {
                    EvalMode::Full => ch.answer_full(&logits),
                    EvalMode::Summary => {
                        let (lse, mut next, fin) = summarize(&logits, &b.inputs, rows, t, v);
                        if attack == "lie" {
                            // Claim more mass on the next token than the logits give.
                            next.iter_mut().for_each(|z| *z += 2.0);
                        }
                        ch.answer_summary(lse, next, fin)
                    }
                };
                if let Err(e) = sent {
                    eprintln!("fixture: {e}");
                    std::process::exit(2);
                }
                last = logits;
                batches += 1;
            }
            EvalRequest::Reveal(positions) => {
                let t = hello.seq_len;
                let out: Vec<f32> = positions.iter().flat_map(|p| last[(p.row as usize * t + p.pos as usize) * v..(p.row as usize * t + p.pos as usize + 1) * v].iter().copied()).collect();
                if let Err(e) = ch.send_vectors(out) {
                    eprintln!("fixture: {e}");
                    std::process::exit(2);
                }
            }
        }
    }
}
