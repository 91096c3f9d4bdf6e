//! report.html: one self-contained page (no external file, script or font) with the progress
//! chart and the tree as inline SVG, the summary, and every node's diff as text; tree nodes
//! link to their diffs.

use std::collections::HashMap;
use std::fmt::Write;

use super::data::Research;
use super::svg::escape;
use crate::tree::fmt_metric;

pub const STYLE: &str = "body{font-family:'DejaVu Sans',Verdana,Arial,sans-serif;margin:24px auto;max-width:1640px;color:#282828;padding:0 16px}
h1{font-size:26px}h2{font-size:20px;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px;text-align:left;vertical-align:top}
th{background:#f4f4f4}code{background:#f4f4f4;padding:0 3px}svg{max-width:100%;height:auto}
.tree{overflow:auto;max-height:85vh;border:1px solid #ddd}.tree svg{max-width:none}
pre{background:#f8f8f8;border:1px solid #e4e4e4;padding:8px;overflow:auto;font-size:12px;max-height:480px}
.meta{color:#666;font-size:13px;white-space:pre-wrap}nav a{margin-right:14px}";

/// `code` spans of an already escaped line.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in s.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// The summary's Markdown (headings, lists, tables, paragraphs: all it uses) as HTML.
pub fn markdown_to_html(md: &str) -> String {
    let mut out = String::new();
    let mut in_list = false;
    let mut table_row = 0;
    for line in md.lines() {
        let l = escape(line.trim_end());
        let is_table = l.starts_with('|');
        if !l.starts_with("- ") && in_list {
            out.push_str("</ul>\n");
            in_list = false;
        }
        if !is_table && table_row > 0 {
            out.push_str("</table>\n");
            table_row = 0;
        }
        if let Some(h) = l.strip_prefix("## ") {
            let _ = writeln!(out, "<h2>{}</h2>", inline(h));
        } else if let Some(h) = l.strip_prefix("# ") {
            let _ = writeln!(out, "<h1>{}</h1>", inline(h));
        } else if let Some(item) = l.strip_prefix("- ") {
            if !in_list {
                out.push_str("<ul>\n");
                in_list = true;
            }
            let _ = writeln!(out, "<li>{}</li>", inline(item));
        } else if is_table {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            if cells.iter().all(|c| !c.is_empty() && c.chars().all(|ch| ch == '-' || ch == ':')) {
                continue; // the header separator
            }
            if table_row == 0 {
                out.push_str("<table>\n");
            }
            let tag = if table_row == 0 { "th" } else { "td" };
            out.push_str("<tr>");
            for c in cells {
                let _ = write!(out, "<{tag}>{}</{tag}>", inline(c));
            }
            out.push_str("</tr>\n");
            table_row += 1;
        } else if !l.is_empty() {
            let _ = writeln!(out, "<p>{}</p>", inline(&l));
        }
    }
    if in_list {
        out.push_str("</ul>\n");
    }
    if table_row > 0 {
        out.push_str("</table>\n");
    }
    out
}

/// The summary's Markdown as HTML without its first heading: a page has its own title, which
/// the heading would repeat.
pub fn summary_body(summary_md: &str) -> String {
    let body = summary_md.strip_prefix('#').map_or(summary_md, |rest| rest.split_once('\n').map_or("", |(_, b)| b));
    markdown_to_html(body)
}

/// The anchor of a node's diff.
pub fn diff_anchor(id: i64) -> String {
    format!("diff-n{id}")
}

/// The page. `chart_svg` and `tree_svg` are inline SVG documents (the tree's links point at
/// `#diff-n<id>`); `diffs` holds each node's diff text, or why there is none.
pub fn page(r: &Research, summary_md: &str, chart_svg: &str, tree_svg: &str, diffs: &HashMap<i64, String>) -> String {
    let title = format!("autoresearch {}", r.cfg.tag);
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n",
        escape(&title)
    );
    let _ = writeln!(s, "<h1>{}</h1>", escape(&title));
    s.push_str("<nav><a href=\"#progress\">progress</a><a href=\"#summary\">summary</a><a href=\"#tree\">tree</a><a href=\"#diffs\">diffs</a></nav>\n");
    let _ = writeln!(s, "<h2 id=\"progress\">Progress</h2>\n{chart_svg}");
    let _ = writeln!(s, "<section id=\"summary\">\n{}</section>", summary_body(summary_md));
    let _ = writeln!(s, "<h2 id=\"tree\">Experiment tree</h2>\n<p class=\"meta\">Click a node for its diff; hover for its hypothesis and insight.</p>\n<div class=\"tree\">\n{tree_svg}</div>");
    s.push_str("<h2 id=\"diffs\">Diffs</h2>\n");
    for n in &r.nodes {
        let _ = writeln!(
            s,
            "<section id=\"{}\">\n<h3>{} · {} · {} · {}</h3>",
            diff_anchor(n.id),
            n.name(),
            n.status.as_str(),
            fmt_metric(n.metric),
            escape(&n.description)
        );
        let mut meta = format!("parent: {}", n.parent.map(crate::db::node_name).unwrap_or_else(|| "-".into()));
        if let Some(c) = &n.commit {
            meta.push_str(&format!("   commit: {c}"));
        }
        for (k, v) in [("hypothesis", &n.hypothesis), ("insight", &n.insight)] {
            if !v.trim().is_empty() {
                meta.push_str(&format!("\n{k}: {}", v.trim()));
            }
        }
        let _ = writeln!(s, "<div class=\"meta\">{}</div>", escape(&meta));
        let diff = diffs.get(&n.id).map(String::as_str).unwrap_or("(no diff)");
        let _ = writeln!(s, "<pre>{}</pre>\n</section>", escape(diff));
    }
    s.push_str("</body>\n</html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_subset() {
        let h = markdown_to_html("# T `x`\n\n- a <b>\n- c\n\n| h1 | h2 |\n|---|---|\n| 1 | 2 |\ntext\n");
        assert!(h.contains("<h1>T <code>x</code></h1>"), "{h}");
        assert!(h.contains("<ul>\n<li>a &lt;b&gt;</li>\n<li>c</li>\n</ul>"), "{h}");
        assert!(h.contains("<table>\n<tr><th>h1</th><th>h2</th></tr>\n<tr><td>1</td><td>2</td></tr>\n</table>"), "{h}");
        assert!(h.contains("<p>text</p>"));
    }
}
