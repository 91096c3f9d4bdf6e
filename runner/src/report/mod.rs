//! `autoresearch report`: pictures and a summary of a run, written into its research directory
//! (`.autoresearch/<tag>/`, or `--out DIR`): progress.png and progress.svg (the chart),
//! tree.svg and tree.png (the experiment tree), autoresearch-summary.md, and report.html (all
//! of it on one self-contained page, with every node's diff).

mod canvas;
mod chart;
mod data;
mod font;
mod html;
mod png;
mod raster;
mod summary;
mod svg;
mod tree_svg;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use data::Research;
pub use svg::escape as svg_escape;
#[cfg(test)]
pub use data::blank_node;

use crate::config::ResearchConfig;
use crate::db::Node;
use crate::git::Git;
use crate::results::write_atomic;

/// tree.png is scaled down to stay at most this tall (a 500-node tree is ~23,000 units); the
/// SVG is the readable one at any size.
const TREE_PNG_MAX: f32 = 8000.0;

/// autoresearch-summary.md of a loaded run (also written by `run` when the loop ends).
pub fn summary_text(r: &Research) -> String {
    summary::markdown(r)
}

/// progress.svg.
pub fn chart_svg(r: &Research) -> String {
    let mut c = svg::SvgCanvas::new(chart::WIDTH, chart::HEIGHT);
    chart::draw(r, &mut c);
    c.finish()
}

/// progress.png, with its size in pixels.
pub fn chart_png(r: &Research) -> Result<(Vec<u8>, (u32, u32))> {
    let mut c = raster::RasterCanvas::new(chart::WIDTH, chart::HEIGHT, 1.0).context("allocating the chart image")?;
    chart::draw(r, &mut c);
    Ok((c.png(), c.size()))
}

/// tree.svg; `link` is a node's link target.
pub fn tree_svg(r: &Research, link: &dyn Fn(&Node) -> Option<String>) -> String {
    let (w, h) = tree_svg::size(r);
    let mut c = svg::SvgCanvas::new(w, h);
    tree_svg::draw(r, &mut c, link);
    c.finish()
}

/// tree.png (scaled down for a very large tree), with its size in pixels.
pub fn tree_png(r: &Research) -> Result<(Vec<u8>, (u32, u32))> {
    let (w, h) = tree_svg::size(r);
    let scale = (TREE_PNG_MAX / w.max(h)).min(1.0);
    let mut c = raster::RasterCanvas::new(w, h, scale).context("allocating the tree image")?;
    tree_svg::draw(r, &mut c, &|_| None);
    Ok((c.png(), c.size()))
}

/// A node's change as text: the diff from the nearest ancestor with a commit, or why there is
/// none.
pub fn node_diff(git: &Git, nodes: &[Node], n: &Node) -> String {
    match (&n.commit, n.parent) {
        (None, _) => "(no commit: not run yet)".to_string(),
        (Some(_), None) => "(the baseline: the code as the run found it)".to_string(),
        (Some(c), Some(p)) => match crate::tree::checkout_commit(nodes, p) {
            Err(_) => "(no ancestor with a commit to compare with)".to_string(),
            Ok((base, _)) if base == *c => "(no change: the same commit as its parent)".to_string(),
            Ok((base, _)) => Git::oid(&base)
                .and_then(|b| Ok((b, Git::oid(c)?)))
                .and_then(|(b, c)| git.diff_text(b, c, true))
                .unwrap_or_else(|e| format!("(diff unavailable: {e:#})")),
        },
    }
}

/// Each node's change as text (see [`node_diff`]).
fn diffs(git: &Git, nodes: &[Node]) -> HashMap<i64, String> {
    nodes.iter().map(|n| (n.id, node_diff(git, nodes, n))).collect()
}

/// The summary as HTML, without its title (a page has its own): what report.html shows.
pub fn summary_html(r: &Research) -> String {
    html::summary_body(&summary::markdown(r))
}

/// The style sheet of report.html, for other pages that look the same.
pub const PAGE_STYLE: &str = html::STYLE;

/// Writes every report file into `out` (default: the run's directory); returns their paths.
pub fn write(git: &Git, cfg: &ResearchConfig, out: Option<&Path>) -> Result<Vec<PathBuf>> {
    let db = crate::db::Db::open_run(&git.root, cfg)?;
    let r = Research::load(&db, cfg)?;
    drop(db);
    let dir = match out {
        Some(d) => crate::config::resolve(&std::env::current_dir()?, d),
        None => crate::layout::Paths::new(&git.root, cfg).state_dir,
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {} (pass --out DIR to write elsewhere)", dir.display()))?;
    let mut written = Vec::new();
    let mut put = |name: &str, data: &[u8]| -> Result<()> {
        let p = dir.join(name);
        write_atomic(&p, data)?;
        written.push(p);
        Ok(())
    };
    let chart = chart_svg(&r);
    put("progress.svg", chart.as_bytes())?;
    put("progress.png", &chart_png(&r)?.0)?;
    put("tree.svg", tree_svg(&r, &|n| Some(format!("report.html#{}", html::diff_anchor(n.id)))).as_bytes())?;
    put("tree.png", &tree_png(&r)?.0)?;
    let md = summary::markdown(&r);
    put("autoresearch-summary.md", md.as_bytes())?;
    let inline_tree = tree_svg(&r, &|n| Some(format!("#{}", html::diff_anchor(n.id))));
    put("report.html", html::page(&r, &md, &chart, &inline_tree, &diffs(git, &r.nodes)).as_bytes())?;
    Ok(written)
}

/// `autoresearch report`.
pub fn run(git: &Git, cfg: &ResearchConfig, out: Option<&Path>) -> Result<()> {
    for p in write(git, cfg, out)? {
        println!("{}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
