//! Downloads against a scripted HTTP/1.1 server on loopback.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use super::*;

/// What the server does with one request.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then close (Content-Length still says the full size).
    cut_after: Option<usize>,
}

/// A request as the server saw it: path and `Range` header.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
}

/// Starts a server that answers request `n` (0-based) with `script(n, &seen)`.
fn serve(
    script: impl Fn(usize, &Seen) -> Reply + Send + 'static,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("range")
                {
                    range = Some(v.trim().to_string());
                }
            }
            let seen = Seen { path, range };
            log2.lock().unwrap().push(seen.clone());
            let reply = script(n, &seen);
            let mut head = format!(
                "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                reply.status,
                reply.body.len()
            );
            for (k, v) in &reply.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let send = reply.cut_after.unwrap_or(reply.body.len());
            let _ = stream.write_all(&reply.body[..send]);
            let _ = stream.flush();
        }
    });
    (base, log)
}

fn shard_bytes() -> Vec<u8> {
    let mut b = b"PAR1".to_vec();
    b.extend((0..5000u32).map(|i| (i * 7 % 251) as u8));
    b.extend_from_slice(b"PAR1");
    b
}

fn ok(body: Vec<u8>) -> Reply {
    Reply { status: 200, headers: vec![], body, cut_after: None }
}

fn fast(base: &str) -> DownloadConfig {
    DownloadConfig {
        base_url: base.to_string(),
        attempts: 5,
        backoff_base: Duration::from_millis(1),
        workers: 2,
        progress: false,
    }
}

#[test]
fn normal_transfer_downloads_every_shard_and_leaves_no_part_file() {
    let data = shard_bytes();
    let d2 = data.clone();
    let (base, log) = serve(move |_, _| ok(d2.clone()));
    let dir = tempfile::tempdir().unwrap();
    let paths = download_shards(&[0, 1, 6542], dir.path(), &fast(&base)).unwrap();
    for p in &paths {
        assert_eq!(std::fs::read(p).unwrap(), data);
    }
    let mut seen: Vec<String> = log.lock().unwrap().iter().map(|s| s.path.clone()).collect();
    seen.sort();
    assert_eq!(seen, ["/shard_00000.parquet", "/shard_00001.parquet", "/shard_06542.parquet"]);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().all(|n| !n.to_string_lossy().ends_with(".part")), "{names:?}");
    // A second run finds the files and asks for nothing.
    download_shards(&[0, 1, 6542], dir.path(), &fast(&base)).unwrap();
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[test]
fn interrupted_transfer_resumes_with_range() {
    let data = shard_bytes();
    let d2 = data.clone();
    let (base, log) = serve(move |n, seen| {
        if n == 0 {
            Reply { cut_after: Some(1000), ..ok(d2.clone()) }
        } else {
            let start: usize = seen
                .range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|r| r.parse().ok())
                .expect("the retry asks for a range");
            Reply {
                status: 206,
                headers: vec![(
                    "Content-Range".into(),
                    format!("bytes {start}-{}/{}", d2.len() - 1, d2.len()),
                )],
                body: d2[start..].to_vec(),
                cut_after: None,
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("shard_00000.parquet");
    download_file(&format!("{base}/shard_00000.parquet"), &dest, &fast(&base)).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].range, None);
    assert_eq!(log[1].range.as_deref(), Some("bytes=1000-"));
}

#[test]
fn server_ignoring_range_restarts_the_file() {
    let data = shard_bytes();
    let d2 = data.clone();
    let (base, log) = serve(move |n, _| {
        if n == 0 {
            Reply { cut_after: Some(700), ..ok(d2.clone()) }
        } else {
            ok(d2.clone()) // 200 with the whole file, despite the Range header
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("s.parquet");
    download_file(&format!("{base}/s.parquet"), &dest, &fast(&base)).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(log.lock().unwrap()[1].range.as_deref(), Some("bytes=700-"));
}

#[test]
fn server_errors_are_retried() {
    let data = shard_bytes();
    let d2 = data.clone();
    let (base, log) = serve(move |n, _| {
        if n < 2 {
            Reply { status: 503, headers: vec![], body: b"busy".to_vec(), cut_after: None }
        } else {
            ok(d2.clone())
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("s.parquet");
    download_file(&format!("{base}/s.parquet"), &dest, &fast(&base)).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[test]
fn persistent_server_errors_give_up_after_the_attempts() {
    let (base, log) = serve(|_, _| Reply { status: 500, headers: vec![], body: vec![], cut_after: None });
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{base}/s.parquet");
    let err = download_file(&url, &dir.path().join("s.parquet"), &fast(&base)).unwrap_err();
    assert!(matches!(err, DownloadError::GaveUp { attempts: 5, .. }), "{err}");
    assert!(err.to_string().contains(&url));
    assert_eq!(log.lock().unwrap().len(), 5);
}

#[test]
fn not_found_fails_at_once_naming_the_url() {
    let (base, log) = serve(|_, _| Reply { status: 404, headers: vec![], body: b"no".to_vec(), cut_after: None });
    let dir = tempfile::tempdir().unwrap();
    let err = download_shards(&[3], dir.path(), &fast(&base)).unwrap_err().to_string();
    assert!(err.contains(&format!("{base}/shard_00003.parquet")) && err.contains("404"), "{err}");
    assert_eq!(log.lock().unwrap().len(), 1, "a 404 is not retried");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing is left behind");
}

#[test]
fn a_non_parquet_answer_is_rejected() {
    let (base, _) = serve(|_, _| ok(b"<html>login</html>".to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let err = download_shards(&[0], dir.path(), &fast(&base)).unwrap_err().to_string();
    assert!(err.contains("parquet"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn unreachable_server_is_a_clear_error() {
    // Bind then drop: the port is (almost certainly) closed.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let cfg = DownloadConfig { attempts: 2, ..fast(&base) };
    let dir = tempfile::tempdir().unwrap();
    let err = download_shards(&[0], dir.path(), &cfg).unwrap_err().to_string();
    assert!(err.contains("shard_00000.parquet") && err.contains("2 attempts"), "{err}");
}
