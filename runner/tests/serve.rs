//! `autoresearch serve` in a real headless browser (Debian's chromium, driven over the DevTools
//! protocol): the page loads with the run in it, and a result that arrives while it is open
//! appears without a reload. Plain HTTP for the rest: read-only, loopback only, diffs.
//!
//! Without chromium the browser part is skipped with the reason printed, unless
//! AUTORESEARCH_REQUIRE_BROWSER=1 (CI), where it fails.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HPARAMS: &str = "[gpu]\nmatrix_lr = 0.5\nmode = \"ok\"\n";

/// val_bpb = 1 + |matrix_lr - 0.04|; the experiment n2 waits for $TOOLS/go before it ends (two
/// minutes at most, so that a failed test leaves no process behind).
const WAITING: &str = r#"#!/bin/sh
lr=$(grep '^matrix_lr' trainer/hparams.toml | sed 's/^[^=]*= *//')
if [ "$AUTORESEARCH_NODE" = "n2" ]; then
  touch "$TOOLS/n2-started"
  i=0
  while [ ! -e "$TOOLS/go" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
fi
val=$(awk -v lr="$lr" 'BEGIN { d = lr - 0.04; if (d < 0) d = -d; printf "%.6f", 1 + d }')
printf '{"val_bpb": %s, "peak_vram_mb": 1024.0}\n' "$val" > "$1"
"#;

/// A process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP request: (status line, body), the body read to its Content-Length (a browser's
/// DevTools endpoint keeps the connection open), else to the end.
fn http(addr: &str, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut length = None;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).unwrap();
        }
        None => {
            r.read_to_end(&mut body).unwrap();
        }
    }
    (status.trim_end().to_string(), String::from_utf8_lossy(&body).into_owned())
}

fn get(addr: &str, path: &str) -> (String, String) {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"))
}

/// The chromium to drive: $AUTORESEARCH_CHROMIUM, else the first on PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AUTORESEARCH_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"].iter().flat_map(|b| std::env::split_paths(&path).map(move |d| d.join(b))).find(|p| p.is_file())
}

/// A minimal client of the DevTools protocol over one websocket.
struct Devtools {
    ws: TcpStream,
    next: u64,
}

impl Devtools {
    /// Connects to the first page target of the browser whose DevTools HTTP endpoint is `http`.
    fn connect(http_addr: &str) -> Devtools {
        let mut ws_url = String::new();
        wait_for("the page target", Duration::from_secs(30), || {
            let (_, body) = get(http_addr, "/json/list");
            let targets: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if let Some(url) = targets.as_array().into_iter().flatten().find(|t| t["type"] == "page").and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
                ws_url = url.to_string();
            }
            !ws_url.is_empty()
        });
        let rest = ws_url.strip_prefix("ws://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut ws = TcpStream::connect(host).unwrap();
        ws.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(ws, "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            ws.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        Devtools { ws, next: 1 }
    }

    fn send(&mut self, text: &str) {
        let data = text.as_bytes();
        let mut frame = vec![0x81u8];
        match data.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend((n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend((n as u64).to_be_bytes());
            }
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        frame.extend(mask);
        frame.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.ws.write_all(&frame).unwrap();
    }

    /// The next whole text message (continuation frames joined).
    fn receive(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut h = [0u8; 2];
            self.ws.read_exact(&mut h).unwrap();
            let mut len = (h[1] & 0x7f) as u64;
            if len == 126 {
                let mut b = [0u8; 2];
                self.ws.read_exact(&mut b).unwrap();
                len = u16::from_be_bytes(b) as u64;
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.ws.read_exact(&mut b).unwrap();
                len = u64::from_be_bytes(b);
            }
            let mut payload = vec![0u8; len as usize];
            self.ws.read_exact(&mut payload).unwrap();
            message.extend(payload);
            if h[0] & 0x80 != 0 {
                return String::from_utf8_lossy(&message).into_owned();
            }
        }
    }

    /// Evaluates `expression` in the page; its value.
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let id = self.next;
        self.next += 1;
        self.send(&serde_json::json!({"id": id, "method": "Runtime.evaluate", "params": {"expression": expression, "returnByValue": true}}).to_string());
        loop {
            let m: serde_json::Value = serde_json::from_str(&self.receive()).unwrap();
            if m["id"] == id {
                return m["result"]["result"]["value"].clone();
            }
        }
    }
}

/// Starts headless chromium on `url` with a fresh profile; the address of its DevTools endpoint.
fn browser(chromium: &Path, url: &str, profile: &Path) -> (Killed, String) {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            &format!("--user-data-dir={}", profile.display()),
            url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", chromium.display()));
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("DevTools listening on ws://") {
                let rest = &line[at + "DevTools listening on ws://".len()..];
                let _ = tx.send(rest.split('/').next().unwrap_or("").to_string());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(60)).expect("chromium never said where its DevTools listen");
    (Killed(child), addr)
}

#[test]
fn the_live_page_shows_a_result_that_arrives_while_it_is_open() {
    let fx = Fixture::new(
        HPARAMS,
        "keep_rule = \"strict\"\nmax_experiments = 1\nexperiment_command = \"sh $TOOLS/waiting.sh {summary_json}\"\nproposer = \"command\"\n[command]\ncommand = \"sed -i 's/^matrix_lr = .*/matrix_lr = 0.05/' trainer/hparams.toml; echo 'matrix_lr 0.05' > $AUTORESEARCH_PROPOSAL_FILE\"\n",
    );
    std::fs::write(fx.tools.join("waiting.sh"), WAITING).unwrap();
    // Whatever happens to the test, n2's experiment is let go.
    struct LetGo(PathBuf);
    impl Drop for LetGo {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, "");
        }
    }
    let _let_go = LetGo(fx.tools.join("go"));
    let runner = fx.cmd(&["run", "--yes"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let mut runner = Background(runner);
    wait_for("n2 to start", Duration::from_secs(60), || fx.tools.join("n2-started").exists());

    let mut serve = fx.cmd(&["serve", "--port", "0", "--interval", "0.2"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _serve = Killed(serve);
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("no address in {line:?}")).to_string();
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    assert!(line.starts_with("serving run `t1` at http://127.0.0.1:"), "{line}");

    // Plain HTTP: the sections, read-only, loopback names only, diffs.
    let (status, body) = get(&addr, "/state.json");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(state["watch"].as_str().unwrap().contains("n2    matrix_lr 0.05"), "n2 runs: {state}");
    assert!(state["chart"].as_str().unwrap().starts_with("<svg") && state["tree"].as_str().unwrap().contains("/diff/n1"), "{state}");
    assert_eq!(http(&addr, &format!("POST /state.json HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n")).0, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(http(&addr, "GET / HTTP/1.1\r\nHost: rebound.example:80\r\n\r\n").0, "HTTP/1.1 403 Forbidden");
    assert_eq!(get(&addr, "/diff/n99").0, "HTTP/1.1 404 Not Found");

    let Some(chromium) = chromium() else {
        assert!(std::env::var("AUTORESEARCH_REQUIRE_BROWSER").as_deref() != Ok("1"), "AUTORESEARCH_REQUIRE_BROWSER=1 but no chromium on PATH (Debian: apt-get install chromium)");
        eprintln!("skipping the browser half: no chromium, chromium-browser or google-chrome on PATH (Debian: apt-get install chromium)");
        std::fs::write(fx.tools.join("go"), "").unwrap();
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let (_browser, devtools) = browser(&chromium, &url, profile.path());
    let mut page = Devtools::connect(&devtools);
    let text = |page: &mut Devtools, id: &str| page.eval(&format!("(document.getElementById('{id}') || {{}}).textContent || ''")).as_str().unwrap_or("").to_string();
    wait_for("the page with n2 running", Duration::from_secs(30), || text(&mut page, "watch").contains("n2    matrix_lr 0.05"));
    // Marked, so that a reload would show.
    page.eval("window.stillTheSamePage = true");
    assert!(!text(&mut page, "watch").contains("n2    keep"), "no result yet");

    std::fs::write(fx.tools.join("go"), "").unwrap();
    wait_for("n2's result on the open page", Duration::from_secs(30), || text(&mut page, "watch").contains("n2    keep       1.010000"));
    assert_eq!(page.eval("window.stillTheSamePage === true"), serde_json::json!(true), "the page was reloaded, not updated");
    assert!(text(&mut page, "summary").contains("1.010000 (n2"), "the summary too: {}", text(&mut page, "summary"));
    assert!(text(&mut page, "live").starts_with("live: updated"), "{}", text(&mut page, "live"));

    let status = runner.0.wait().unwrap();
    assert!(status.success());
    // After the run: serving reads and never writes.
    let db = fx.repo.join(".autoresearch/t1/tree.db");
    let before = std::fs::read(&db).unwrap();
    for _ in 0..3 {
        assert_eq!(get(&addr, "/state.json").0, "HTTP/1.1 200 OK");
    }
    let (status, diff) = get(&addr, "/diff/n2");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(diff.contains("-matrix_lr = 0.5\n+matrix_lr = 0.05"), "{diff}");
    assert_eq!(std::fs::read(&db).unwrap(), before, "serving wrote to the database");
}
