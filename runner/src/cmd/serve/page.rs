//! The live page: what `watch` shows (what runs now, the best, the last results) above what
//! `report` shows (the chart, the summary with its held-out section, the tree), filled in by
//! the server, then kept up to date by its inline script: an event stream says when the tree
//! changed, and the page fetches the new state (no build step, no file from anywhere else).

use std::fmt::Write;

use super::State;
use crate::report::svg_escape;

/// The script: on each `state` event whose version differs, fetch /state.json and replace the
/// sections; every 5 s anyway, for the countdowns. EventSource reconnects by itself when the
/// server goes away and comes back.
const SCRIPT: &str = r#"
let version = document.body.dataset.version;
const live = document.getElementById('live');
async function refresh() {
  try {
    const r = await fetch('/state.json', {cache: 'no-store'});
    if (!r.ok) throw new Error(r.status);
    const s = await r.json();
    version = s.version;
    document.body.dataset.version = s.version;
    document.getElementById('watch').textContent = s.watch;
    document.getElementById('chart').innerHTML = s.chart;
    document.getElementById('summary').innerHTML = s.summary;
    document.getElementById('tree').innerHTML = s.tree;
    live.textContent = 'live: updated ' + new Date().toLocaleTimeString();
  } catch (e) {
    live.textContent = 'not updated: ' + e;
  }
}
const events = new EventSource('/events');
events.addEventListener('state', e => { if (e.data !== version) refresh(); });
events.onerror = () => { live.textContent = 'connection lost; retrying'; };
setInterval(refresh, 5000);
"#;

/// The whole page for `state`.
pub fn html(state: &State) -> String {
    let title = format!("autoresearch {} (live)", state.tag);
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{t}</title>\n<style>\n{style}\npre.watch{{max-height:none}}#live{{color:#666;font-size:13px}}\n</style>\n</head>\n<body data-version=\"{v}\">\n<h1>{t}</h1>\n<p id=\"live\">as of loading; live updates need JavaScript</p>\n\
         <nav><a href=\"#now\">now</a><a href=\"#progress\">progress</a><a href=\"#summary\">summary</a><a href=\"#treebox\">tree</a></nav>\n\
         <h2 id=\"now\">Now</h2>\n<pre class=\"watch\" id=\"watch\">{watch}</pre>\n\
         <h2 id=\"progress\">Progress</h2>\n<div id=\"chart\">{chart}</div>\n\
         <section id=\"summary\">{summary}</section>\n\
         <h2 id=\"treebox\">Experiment tree</h2>\n<p class=\"meta\">Click a node for its diff.</p>\n<div class=\"tree\" id=\"tree\">{tree}</div>\n\
         <script>{SCRIPT}</script>\n</body>\n</html>\n",
        t = svg_escape(&title),
        style = crate::report::PAGE_STYLE,
        v = svg_escape(&state.version),
        watch = svg_escape(&state.watch),
        chart = state.chart,
        summary = state.summary,
        tree = state.tree,
    );
    s
}
