//! tree.svg: the experiment tree laid out left to right (depth = column, one row per leaf,
//! a parent centred on its children), so a wide search of 200+ nodes stays a readable
//! scrolling list rather than a strip too wide to read. Nodes are coloured by status and show
//! their metric; the best path is drawn thick and gold; pruned branches are greyed out.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::canvas::{Anchor, Canvas, Color, INK, MUTED, Paint, Text, WHITE};
use super::chart::BEST;
use super::data::Research;
use super::font;
use crate::db::{Node, Status};

const COL: f32 = 290.0;
const ROW: f32 = 46.0;
const BOX_W: f32 = 240.0;
const BOX_H: f32 = 36.0;
const MARGIN: f32 = 24.0;
const HEADER: f32 = 84.0;

/// Fill and border of a node by status.
pub fn status_colors(s: Status) -> (Color, Color) {
    match s {
        Status::Keep => (Color::rgb(220, 242, 226), Color::rgb(46, 139, 87)),
        Status::Discard => (Color::rgb(238, 238, 238), Color::rgb(140, 140, 140)),
        Status::Crash => (Color::rgb(252, 224, 224), Color::rgb(214, 39, 40)),
        Status::Rejected => (Color::rgb(253, 236, 214), Color::rgb(230, 126, 34)),
        Status::Running => (Color::rgb(222, 235, 250), Color::rgb(31, 119, 180)),
        Status::Pending => (WHITE, Color::rgb(120, 120, 160)),
        Status::Pruned => (Color::rgb(245, 245, 245), Color::rgb(200, 200, 200)),
        Status::Unverified => (Color::rgb(236, 228, 245), super::chart::UNVERIFIED),
        Status::ChecksFailed => (Color::rgb(255, 244, 214), super::chart::CHECKS_FAILED),
    }
}

pub struct Layout {
    /// Top-left corner of each node's box.
    pub pos: HashMap<i64, (f32, f32)>,
    pub width: f32,
    pub height: f32,
}

/// Rows for leaves in depth-first order; each parent sits midway between its first and last
/// child. Iterative, and each node is placed once, so a deep chain or a damaged parent link
/// (a cycle) cannot overflow the stack or loop.
pub fn layout(nodes: &[Node]) -> Layout {
    let ids: HashSet<i64> = nodes.iter().map(|n| n.id).collect();
    let mut kids: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut roots = Vec::new();
    for n in nodes {
        match n.parent.filter(|p| ids.contains(p) && *p != n.id) {
            Some(p) => kids.entry(p).or_default().push(n.id),
            None => roots.push(n.id),
        }
    }
    let mut row: HashMap<i64, f32> = HashMap::new();
    let mut depth: HashMap<i64, usize> = HashMap::new();
    let mut next_row = 0.0f32;
    // (node, depth, children done?)
    let mut stack: Vec<(i64, usize, bool)> = roots.iter().rev().map(|r| (*r, 0, false)).collect();
    let mut seen: HashSet<i64> = HashSet::new();
    let mut max_depth = 0;
    while let Some((id, d, done)) = stack.pop() {
        if done {
            let placed: Vec<f32> = kids.get(&id).into_iter().flatten().filter_map(|k| row.get(k).copied()).collect();
            let r = match (placed.first(), placed.last()) {
                (Some(a), Some(b)) => (a + b) / 2.0,
                _ => {
                    next_row += 1.0;
                    next_row - 1.0
                }
            };
            row.insert(id, r);
            continue;
        }
        if !seen.insert(id) {
            continue;
        }
        depth.insert(id, d);
        max_depth = max_depth.max(d);
        stack.push((id, d, true));
        for k in kids.get(&id).into_iter().flatten().rev() {
            if !seen.contains(k) {
                stack.push((*k, d + 1, false));
            }
        }
    }
    // Nodes only reachable through a cycle: put them at the bottom, unconnected.
    for n in nodes {
        if !row.contains_key(&n.id) {
            row.insert(n.id, next_row);
            depth.insert(n.id, 0);
            next_row += 1.0;
        }
    }
    let pos = row.iter().map(|(id, r)| (*id, (MARGIN + depth[id] as f32 * COL, HEADER + r * ROW))).collect();
    Layout { pos, width: (2.0 * MARGIN + max_depth as f32 * COL + BOX_W).max(900.0), height: HEADER + next_row.max(1.0) * ROW + MARGIN }
}

/// The tooltip of a node: everything the box has no room for.
fn tooltip(n: &Node) -> String {
    let mut t = format!("{} {} {}", n.name(), n.status.as_str(), crate::tree::fmt_metric(n.metric));
    for (k, v) in [("", &n.description), ("hypothesis: ", &n.hypothesis), ("insight: ", &n.insight)] {
        if !v.trim().is_empty() {
            t.push_str(&format!("\n{k}{}", v.trim()));
        }
    }
    t
}

/// Draws the tree; `link` gives each node's link target (its diff), if any.
pub fn draw(r: &Research, c: &mut dyn Canvas, link: &dyn Fn(&Node) -> Option<String>) {
    let lay = layout(&r.nodes);
    let on_path: HashSet<i64> = r.best_path().iter().map(|n| n.id).collect();
    let best = r.best().map(|b| b.id);
    let dir = r.direction();

    let title = format!("autoresearch {}: experiment tree ({} nodes)", r.cfg.tag, r.nodes.len());
    c.text(Text::new(&title, MARGIN, 34.0, 20.0).bold());
    legend(c, MARGIN, 62.0);
    if r.nodes.is_empty() {
        c.text(Text::new("no experiments yet", MARGIN, HEADER + 20.0, 16.0).color(MUTED));
        return;
    }

    // Edges first, so boxes cover their ends; the best path last, on top of the rest.
    let mut edges: Vec<(&Node, (f32, f32), (f32, f32))> = Vec::new();
    for n in &r.nodes {
        if let Some(p) = n.parent
            && let (Some(a), Some(b)) = (lay.pos.get(&p), lay.pos.get(&n.id))
            && p != n.id
        {
            edges.push((n, *a, *b));
        }
    }
    edges.sort_by_key(|(n, _, _)| on_path.contains(&n.id));
    for (n, (px, py), (x, y)) in edges {
        let (x1, y1, x2, y2) = (px + BOX_W, py + BOX_H / 2.0, x, y + BOX_H / 2.0);
        let mid = x1 + (x2 - x1) / 2.0;
        let pts = [(x1, y1), (mid, y1), (mid, y2), (x2, y2)];
        let paint = if on_path.contains(&n.id) {
            Paint::stroke(BEST, 3.5)
        } else if n.status == Status::Pruned {
            Paint::stroke(Color::rgb(210, 210, 210), 1.2).dashed(4.0)
        } else {
            Paint::stroke(Color::rgb(170, 170, 170), 1.2)
        };
        c.path(&pts, false, paint);
    }

    for n in &r.nodes {
        let Some(&(x, y)) = lay.pos.get(&n.id) else { continue };
        let (fill, border) = status_colors(n.status);
        let pruned = n.status == Status::Pruned;
        let text = if pruned { Color::rgb(165, 165, 165) } else { INK };
        c.begin_group(link(n).as_deref(), Some(&tooltip(n)));
        let mut paint = Paint::both(fill, border, 1.2);
        if n.status == Status::Pending {
            paint = paint.dashed(4.0);
        }
        if on_path.contains(&n.id) {
            paint = Paint::both(fill, BEST, 3.0);
        }
        c.rect(x, y, BOX_W, BOX_H, 5.0, paint);
        // " · ", not spaces: SVG viewers collapse runs of spaces.
        let mut head = format!("{} · {}", n.name(), crate::tree::fmt_metric(n.metric));
        if n.status == Status::Keep
            && let Some(g) = r.step_gain(n)
        {
            // The change in the metric itself (a drop is good when lower is better).
            let delta = if dir == crate::config::Direction::Lower { -g } else { g };
            head.push_str(&format!(" ({delta:+.4})"));
        }
        let status = if Some(n.id) == best { "best".to_string() } else { n.status.as_str().to_string() };
        c.text(Text::new(&head, x + 8.0, y + 15.0, 12.0).color(text).bold());
        c.text(Text::new(&status, x + BOX_W - 7.0, y + 15.0, 10.0).anchor(Anchor::End).color(if pruned { text } else { border }));
        let desc = if n.description.trim().is_empty() { n.hypothesis.trim() } else { n.description.trim() };
        c.text(Text::new(&font::fit(desc, 11.0, BOX_W - 16.0), x + 8.0, y + 29.0, 11.0).color(if pruned { text } else { MUTED }));
        c.end_group();
    }
}

fn legend(c: &mut dyn Canvas, mut x: f32, y: f32) {
    for s in [Status::Keep, Status::Discard, Status::ChecksFailed, Status::Crash, Status::Rejected, Status::Unverified, Status::Running, Status::Pending, Status::Pruned] {
        let (fill, border) = status_colors(s);
        c.rect(x, y - 11.0, 16.0, 14.0, 3.0, Paint::both(fill, border, 1.2));
        c.text(Text::new(s.as_str(), x + 22.0, y, 12.0));
        x += 34.0 + font::width(s.as_str(), 12.0);
    }
    c.line(x + 6.0, y - 4.0, x + 30.0, y - 4.0, Paint::stroke(BEST, 3.5));
    c.text(Text::new("best path", x + 36.0, y, 12.0));
}

/// The drawing's size for `r`.
pub fn size(r: &Research) -> (f32, f32) {
    let l = layout(&r.nodes);
    (l.width, l.height)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn layout_places_every_node_once_even_with_a_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("t.db")).unwrap();
        let a = db.insert_node(None, "", "baseline", None, "baseline", "cpu").unwrap();
        let b = db.insert_node(Some(a), "", "b", None, "search", "cpu").unwrap();
        let c = db.insert_node(Some(a), "", "c", None, "search", "cpu").unwrap();
        let mut nodes = db.nodes().unwrap();
        let l = layout(&nodes);
        assert_eq!(l.pos.len(), 3);
        // The parent sits between its two children, one column to the left.
        let (pa, pb, pc) = (l.pos[&a], l.pos[&b], l.pos[&c]);
        assert_eq!(pa.1, (pb.1 + pc.1) / 2.0);
        assert!(pa.0 < pb.0 && pb.0 == pc.0);
        // A damaged database: a and b each other's parent.
        nodes[0].parent = Some(b);
        let l = layout(&nodes);
        assert_eq!(l.pos.len(), 3);
    }
}
