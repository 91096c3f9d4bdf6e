//! `autoresearch serve`: the run as a live page in the browser (pi-autoresearch and orx serve
//! one): what `watch` shows and what `report` shows, updated as results arrive. It only reads:
//! the tree database opened read-only (WAL readers never block the runner), and git for a
//! node's diff. It binds to loopback unless told otherwise, and refuses requests that do not
//! name it there (DNS rebinding). The held-out figures appear where the report has them (its
//! summary), and nowhere a proposer looks.
//!
//! Routes: `/` the page, `/state.json` its sections, `/events` server-sent events (a `state`
//! event with the tree's version whenever it changes), `/diff/n<id>` a node's diff as text.

mod http;
mod page;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::ResearchConfig;
use crate::db::{Db, now, parse_node_id};
use crate::errors::usage;
use crate::git::Git;
use crate::report::Research;

pub struct Options {
    /// Where to listen: loopback unless a person says otherwise.
    pub bind: String,
    pub port: u16,
    /// Seconds between looks at the database for changes.
    pub interval: f64,
}

/// What the page shows, as /state.json sends it.
#[derive(Debug, Serialize)]
pub struct State {
    pub tag: String,
    /// Changes whenever the tree does (`Db::fingerprint`).
    pub version: String,
    /// The `watch` view, as text.
    pub watch: String,
    /// The report's chart, summary (HTML) and tree, as inline SVG and HTML.
    pub chart: String,
    pub summary: String,
    pub tree: String,
}

/// Connections served at once, at most; more wait for the browser to retry.
const MAX_CONNECTIONS: usize = 64;

struct Server {
    cfg: ResearchConfig,
    db_path: PathBuf,
    root: PathBuf,
    port: u16,
    /// Whether requests must name this server on loopback.
    loopback: bool,
    interval: Duration,
    open: AtomicUsize,
}

impl Server {
    fn db(&self) -> Result<Db> {
        Db::open_read_only(&self.db_path)
    }

    fn state(&self) -> Result<State> {
        let db = self.db()?;
        let r = Research::load(&db, &self.cfg)?;
        let jobs = db.jobs(None)?;
        Ok(State {
            tag: r.cfg.tag.clone(),
            version: db.fingerprint()?,
            watch: crate::cmd::watch::frame(&r, &jobs, now(), 15, 110),
            chart: crate::report::chart_svg(&r),
            summary: crate::report::summary_html(&r),
            tree: crate::report::tree_svg(&r, &|n| Some(format!("/diff/{}", n.name()))),
        })
    }

    fn diff(&self, node: &str) -> Result<Option<String>> {
        let Some(id) = parse_node_id(node) else { return Ok(None) };
        let nodes = self.db()?.nodes()?;
        let Some(n) = nodes.iter().find(|n| n.id == id) else { return Ok(None) };
        let git = Git::discover(&self.root)?;
        Ok(Some(format!("{} {} {}: {}\n\n{}", n.name(), n.status.as_str(), crate::tree::fmt_metric(n.metric), n.description, crate::report::node_diff(&git, &nodes, n))))
    }

    fn handle(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let Some(req) = http::read_request(&stream) else { return Ok(()) };
        let head_only = req.method == "HEAD";
        if req.method != "GET" && !head_only {
            return http::respond(&mut stream, "405 Method Not Allowed", "text/plain; charset=utf-8", b"read-only: GET only\n", false);
        }
        if self.loopback && !http::loopback_host(req.host.as_deref(), self.port) {
            return http::respond(&mut stream, "403 Forbidden", "text/plain; charset=utf-8", b"this page answers to 127.0.0.1 and localhost only\n", head_only);
        }
        let failed = |stream: &mut TcpStream, e: anyhow::Error| http::respond(stream, "503 Service Unavailable", "text/plain; charset=utf-8", format!("reading the run failed: {e:#}\n").as_bytes(), head_only);
        match req.path.as_str() {
            "/" => match self.state() {
                Ok(s) => http::respond(&mut stream, "200 OK", "text/html; charset=utf-8", page::html(&s).as_bytes(), head_only),
                Err(e) => failed(&mut stream, e),
            },
            "/state.json" => match self.state() {
                Ok(s) => http::respond(&mut stream, "200 OK", "application/json", &serde_json::to_vec(&s).unwrap_or_default(), head_only),
                Err(e) => failed(&mut stream, e),
            },
            "/events" => self.events(stream),
            p if p.starts_with("/diff/") => match self.diff(&p["/diff/".len()..]) {
                Ok(Some(text)) => http::respond(&mut stream, "200 OK", "text/plain; charset=utf-8", text.as_bytes(), head_only),
                Ok(None) => http::respond(&mut stream, "404 Not Found", "text/plain; charset=utf-8", b"no such node\n", head_only),
                Err(e) => failed(&mut stream, e),
            },
            _ => http::respond(&mut stream, "404 Not Found", "text/plain; charset=utf-8", b"not found: try /\n", head_only),
        }
    }

    /// The event stream: the version at once, then each new one, and a comment every 15 s so
    /// that a closed tab is noticed (the write fails) and its thread ends.
    fn events(&self, mut stream: TcpStream) -> std::io::Result<()> {
        http::start_events(&mut stream)?;
        stream.write_all(b"retry: 2000\n\n")?;
        let mut sent = String::new();
        let mut quiet = Instant::now();
        let mut db: Option<Db> = None;
        loop {
            if db.is_none() {
                db = self.db().ok();
            }
            match db.as_ref().map(Db::fingerprint) {
                // A connection that failed is opened again at the next look.
                Some(Err(_)) => db = None,
                Some(Ok(v)) if v != sent => {
                    stream.write_all(http::event("state", &v).as_bytes())?;
                    stream.flush()?;
                    sent = v;
                    quiet = Instant::now();
                }
                _ => {}
            }
            if quiet.elapsed() >= Duration::from_secs(15) {
                stream.write_all(b": still here\n\n")?;
                stream.flush()?;
                quiet = Instant::now();
            }
            std::thread::sleep(self.interval);
        }
    }
}

/// `autoresearch serve`.
pub fn run(git: &Git, cfg: &ResearchConfig, opts: &Options) -> Result<()> {
    if !(opts.interval.is_finite() && opts.interval > 0.0) {
        return Err(usage(format!("--interval {}: give a number of seconds above 0, e.g. 1", opts.interval)));
    }
    let db_path = crate::layout::Paths::new(&git.root, cfg).db;
    // A clear error when there is no such run; then only ever read.
    drop(Db::open_run(&git.root, cfg)?);
    let ip: std::net::IpAddr = opts.bind.parse().map_err(|_| usage(format!("--bind {}: give an IP address, e.g. 127.0.0.1 (loopback, the default) or 0.0.0.0 (every interface)", opts.bind)))?;
    let listener = TcpListener::bind(SocketAddr::new(ip, opts.port)).with_context(|| format!("listening on {}:{} (pass another --port, or 0 for any free one)", ip, opts.port))?;
    let addr = listener.local_addr()?;
    let server = Arc::new(Server {
        cfg: cfg.clone(),
        db_path,
        root: git.root.clone(),
        port: addr.port(),
        loopback: ip.is_loopback(),
        interval: Duration::from_secs_f64(opts.interval.clamp(0.05, 60.0)),
        open: AtomicUsize::new(0),
    });
    if !ip.is_loopback() {
        eprintln!("warning: serving on {ip}, not loopback: anyone who can reach this machine sees the run, its diffs and its held-out figures");
    }
    let host = if ip.is_loopback() { format!("127.0.0.1:{}", addr.port()) } else { addr.to_string() };
    println!("serving run `{}` at http://{host}/ (read-only; Ctrl-C stops)", cfg.tag);
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if server.open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            server.open.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let server = server.clone();
        std::thread::spawn(move || {
            let _ = server.handle(stream);
            server.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}
