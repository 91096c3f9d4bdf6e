//! Just enough HTTP/1.1 for a read-only page on loopback: one GET (or HEAD) request per
//! connection, its path and Host header; responses with a length, or an event stream.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The most a request's head may be: a browser's is well under this.
const MAX_HEAD: usize = 16 * 1024;

/// A request line and the header the server looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    /// The path without its query.
    pub path: String,
    pub host: Option<String>,
}

/// Reads one request head; None when the client sent none (or too much, or too slowly).
pub fn read_request(stream: &TcpStream) -> Option<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut reader = BufReader::new(stream.take(MAX_HEAD as u64));
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?);
    let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
    let mut host = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("host")
        {
            host = Some(v.trim().to_string());
        }
    }
    Some(Request { method, path, host })
}

/// What every response says besides its status and type: the page loads nothing from
/// anywhere (its script and style are inline), and nothing is cached.
const HEADERS: &str = "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nContent-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'\r\nConnection: close\r\n";

/// Writes a whole response (without the body for HEAD).
pub fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8], head_only: bool) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{HEADERS}\r\n", body.len());
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

/// Starts an event stream (server-sent events); the caller writes `event(...)`s after it.
pub fn start_events(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{HEADERS}\r\n").as_bytes())?;
    stream.flush()
}

/// One server-sent event of type `name` (its data on one line).
pub fn event(name: &str, data: &str) -> String {
    format!("event: {name}\ndata: {}\n\n", data.replace(['\r', '\n'], " "))
}

/// Whether a Host header names this server on loopback (`127.0.0.1:PORT`, `localhost:PORT`,
/// `[::1]:PORT`): a page on another site that resolves its own name to 127.0.0.1 (DNS
/// rebinding) sends its own name, and is refused.
pub fn loopback_host(host: Option<&str>, port: u16) -> bool {
    let Some(h) = host else { return false };
    let (name, p) = match h.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(':') => (n, p.parse::<u16>().ok()),
        _ => (h, Some(80)),
    };
    p == Some(port) && matches!(name.to_ascii_lowercase().as_str(), "127.0.0.1" | "localhost" | "[::1]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_hosts() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /state.json?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nAccept: */*\r\n\r\n").unwrap();
        });
        let (s, _) = listener.accept().unwrap();
        client.join().unwrap();
        assert_eq!(read_request(&s), Some(Request { method: "GET".into(), path: "/state.json".into(), host: Some("127.0.0.1:9".into()) }));
        assert!(loopback_host(Some("localhost:8077"), 8077) && loopback_host(Some("[::1]:8077"), 8077));
        assert!(!loopback_host(Some("evil.example:8077"), 8077) && !loopback_host(Some("127.0.0.1:1"), 8077) && !loopback_host(None, 8077));
        assert_eq!(event("state", "a\nb"), "event: state\ndata: a b\n\n");
    }
}
