//! progress.png / progress.svg: the metric of every experiment in the order it finished, like
//! the reference's progress chart. Kept, discarded and failed experiments are styled apart, a
//! step line follows the best so far, kept changes carry their descriptions, the baseline (with
//! its runs) and the best are marked, and each decided experiment shows the bar it had to clear.

use super::canvas::{Anchor, Canvas, Color, GRID, INK, MUTED, Paint, Text, WHITE};
use super::data::{Point, Research};
use super::font;
use crate::config::Direction;
use crate::db::{Node, Status};

pub const WIDTH: f32 = 1600.0;
pub const HEIGHT: f32 = 860.0;
const LEFT: f32 = 100.0;
const RIGHT: f32 = 40.0;
const TOP: f32 = 80.0;
const BOTTOM: f32 = 70.0;
/// At most this many kept changes get a label (the largest gains), so a long run stays legible.
const MAX_LABELS: usize = 40;

pub const KEEP: Color = Color::rgb(46, 139, 87);
pub const DISCARD: Color = Color::rgb(150, 150, 150);
pub const CRASH: Color = Color::rgb(214, 39, 40);
pub const BEST: Color = Color::rgb(218, 165, 32);
pub const BASELINE: Color = Color::rgb(31, 119, 180);
/// Results recorded by hand that no scorer signed: drawn apart, never on the best line.
pub const UNVERIFIED: Color = Color::rgb(148, 103, 189);
/// A candidate that passed the keep rule and failed the checks.
pub const CHECKS_FAILED: Color = Color::rgb(214, 150, 20);

/// 1, 2 or 5 times a power of ten, giving about `n` steps over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let p = 10f64.powf(raw.log10().floor());
    let m = raw / p;
    p * if m < 1.5 {
        1.0
    } else if m < 3.5 {
        2.0
    } else if m < 7.5 {
        5.0
    } else {
        10.0
    }
}

fn decimals(step: f64) -> usize {
    (-step.log10().floor()).clamp(0.0, 8.0) as usize
}

struct Frame {
    x_max: f64,
    lo: f64,
    hi: f64,
}

impl Frame {
    fn x(&self, i: f64) -> f32 {
        // Half a step of room at both ends, so the first and last points clear the frame.
        let w = WIDTH - LEFT - RIGHT;
        let pad = (self.x_max * 0.015).max(0.3);
        LEFT + ((i + pad) / (self.x_max + 2.0 * pad)) as f32 * w
    }

    fn y(&self, v: f64) -> f32 {
        let h = HEIGHT - TOP - BOTTOM;
        let t = ((v - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0);
        TOP + (1.0 - t as f32) * h
    }
}

/// The y range: every metric, except that far-off bad results (a diverged run) are clipped
/// so they do not flatten the improvements; clipped points are drawn at the edge.
fn y_range(values: &[f64], baseline: Option<f64>, best: Option<f64>, dir: Direction) -> (f64, f64) {
    let lo = values.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let (mut lo, mut hi) = (lo, hi);
    if let (Some(b), Some(best)) = (baseline, best) {
        let room = ((b - best).abs() * 3.0).max(b.abs() * 0.02).max(1e-9);
        match dir {
            Direction::Lower => hi = hi.min(b + room),
            Direction::Higher => lo = lo.max(b - room),
        }
    }
    let pad = ((hi - lo) * 0.06).max(lo.abs().max(hi.abs()) * 0.005).max(1e-6);
    (lo - pad, hi + pad)
}

/// A kept change's description, slanted 30 degrees up and to the right of its point, or, when
/// the frame leaves more room that way, down and to the left; cut to stay inside the frame.
fn label(c: &mut dyn Canvas, n: &Node, x: f32, y: f32, (x0, y0, x1, y1): (f32, f32, f32, f32)) {
    const SIZE: f32 = 12.0;
    const MAX: f32 = 260.0;
    let (sin, cos) = (0.5f32, 0.866f32);
    let up_right = ((y - y0 - 4.0) / sin).min((x1 - x - 12.0) / cos).min(MAX);
    let down_left = ((y1 - y - 20.0) / sin).min((x - x0 - 12.0) / cos).min(MAX);
    let text = if n.description.trim().is_empty() { n.name() } else { n.description.trim().to_string() };
    let want = font::width(&text, SIZE);
    let t = if up_right >= want.min(MAX) || up_right >= down_left {
        Text::new("", x + 8.0, y - 8.0, SIZE).anchor(Anchor::Start)
    } else {
        Text::new("", x - 8.0, y + 16.0, SIZE).anchor(Anchor::End)
    };
    let room = if t.anchor == Anchor::Start { up_right } else { down_left };
    if room < 30.0 {
        return;
    }
    let s = font::fit(&text, SIZE, room);
    c.text(Text { s: &s, ..t }.angle(-30.0).color(KEEP));
}

/// The plot area's edges: left, right, top, bottom.
const EDGES: (f32, f32, f32, f32) = (LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM);

pub fn draw(r: &Research, c: &mut dyn Canvas) {
    let plot = Plot::new(r);
    plot.title(c);
    plot.axes(c);
    if plot.points.is_empty() {
        let (x0, x1, y0, y1) = EDGES;
        c.text(Text::new("no finished experiments yet", (x0 + x1) / 2.0, (y0 + y1) / 2.0, 20.0).anchor(Anchor::Middle).color(MUTED));
        legend(c);
        return;
    }
    plot.baseline(c);
    plot.keep_bars(c);
    plot.best_so_far(c);
    plot.experiments(c);
    plot.labels(c);
    plot.best(c);
    legend(c);
}

/// What the chart shows, placed in its frame: drawn layer by layer, the later over the earlier.
struct Plot<'a> {
    r: &'a Research,
    dir: Direction,
    metric: String,
    points: Vec<Point<'a>>,
    baseline_node: Option<&'a Node>,
    /// The baseline's runs (its seeds).
    baseline_runs: Vec<f64>,
    /// Each decided experiment's index and the value it had to reach.
    needed: Vec<(usize, f64)>,
    best: Option<&'a Node>,
    f: Frame,
}

impl<'a> Plot<'a> {
    /// The y range takes in every value drawn: the experiments, the baseline's runs and the bars.
    fn new(r: &'a Research) -> Plot<'a> {
        let dir = r.direction();
        let metric = if r.cfg.metric.is_empty() { "metric".to_string() } else { r.cfg.metric.clone() };
        let points = r.finished();
        let baseline_node = r.baseline();
        let baseline_runs = baseline_node.map(|b| r.run_metrics(b)).unwrap_or_default();
        let needed: Vec<(usize, f64)> = points.iter().filter_map(|p| Some((p.index, r.needed(p.node)?))).filter(|(_, v)| v.is_finite()).collect();
        let values: Vec<f64> = points
            .iter()
            .filter_map(|p| p.node.metric)
            .chain(baseline_runs.iter().copied())
            .chain(needed.iter().map(|(_, v)| *v))
            .filter(|m| m.is_finite())
            .collect();
        let best = r.best();
        let (lo, hi) = y_range(&values, baseline_node.and_then(|b| b.metric), best.and_then(|b| b.metric), dir);
        let f = Frame { x_max: points.len().saturating_sub(1).max(1) as f64, lo, hi };
        Plot { r, dir, metric, points, baseline_node, baseline_runs, needed, best, f }
    }

    fn baseline_metric(&self) -> Option<f64> {
        self.baseline_node.and_then(|b| b.metric)
    }

    /// The run, its counts, and the change from the baseline to the best.
    fn title(&self, c: &mut dyn Canvas) {
        let points = &self.points;
        let kept = points.iter().filter(|p| p.node.status == Status::Keep && p.node.parent.is_some()).count();
        let exps = points.iter().filter(|p| p.node.parent.is_some()).count();
        let mut title = format!("autoresearch {}: {exps} experiments, {kept} kept", self.r.cfg.tag);
        if let (Some(b), Some(m)) = (self.baseline_metric(), self.best.and_then(|b| b.metric)) {
            title.push_str(&format!(" · {} {b:.6} → {m:.6} ({:+.2} %)", self.metric, 100.0 * (m - b) / b.abs().max(1e-12)));
        }
        c.text(Text::new(&title, LEFT, 40.0, 22.0).bold());
    }

    /// Grid, ticks and axes.
    fn axes(&self, c: &mut dyn Canvas) {
        let (x0, x1, y0, y1) = EDGES;
        let (f, lo, hi) = (&self.f, self.f.lo, self.f.hi);
        let ystep = nice_step(hi - lo, 8.0);
        let mut v = (lo / ystep).ceil() * ystep;
        while v <= hi + ystep * 1e-9 {
            let y = f.y(v);
            c.line(x0, y, x1, y, Paint::stroke(GRID, 1.0));
            c.text(Text::new(&format!("{:.*}", decimals(ystep), v), x0 - 8.0, y + 4.0, 12.0).anchor(Anchor::End).color(MUTED));
            v += ystep;
        }
        let xstep = nice_step(f.x_max, 12.0).max(1.0);
        let mut i = 0.0;
        while i <= f.x_max + 1e-9 {
            let x = f.x(i);
            c.line(x, y1, x, y1 + 5.0, Paint::stroke(INK, 1.0));
            c.text(Text::new(&format!("{i:.0}"), x, y1 + 20.0, 12.0).anchor(Anchor::Middle).color(MUTED));
            i += xstep;
        }
        c.rect(x0, y0, x1 - x0, y1 - y0, 0.0, Paint::stroke(INK, 1.0));
        c.text(Text::new("experiment (in the order it finished; 0 = baseline)", (x0 + x1) / 2.0, HEIGHT - 22.0, 14.0).anchor(Anchor::Middle));
        let better = if self.dir == Direction::Lower { "lower" } else { "higher" };
        c.text(Text::new(&format!("{} ({better} is better)", self.metric), 28.0, (y0 + y1) / 2.0, 14.0).anchor(Anchor::Middle).angle(-90.0));
    }

    /// The baseline's line, and its runs (its seeds): the spread a change must stand out from.
    fn baseline(&self, c: &mut dyn Canvas) {
        let (x0, x1, _, _) = EDGES;
        let (f, lo, hi) = (&self.f, self.f.lo, self.f.hi);
        if let Some(b) = self.baseline_metric() {
            let y = f.y(b);
            c.line(x0, y, x1, y, Paint::stroke(BASELINE, 1.5).dashed(6.0));
            c.text(Text::new(&format!("baseline {b:.6}"), x1 - 6.0, y - 6.0, 12.0).anchor(Anchor::End).color(BASELINE));
        }
        if let Some(p) = self.baseline_node.and_then(|b| self.points.iter().find(|p| p.node.id == b.id)) {
            let x = f.x(p.index as f64);
            for &m in &self.baseline_runs {
                c.circle(x, f.y(m.clamp(lo, hi)), 3.0, Paint::stroke(BASELINE, 1.2));
            }
        }
    }

    /// The keep bar: for each decided experiment, the value it had to reach (the best when it
    /// was decided, moved by the bar), joined to its point, so a near-miss shows as a short gap.
    fn keep_bars(&self, c: &mut dyn Canvas) {
        let (f, lo, hi) = (&self.f, self.f.lo, self.f.hi);
        for &(i, v) in &self.needed {
            let x = f.x(i as f64);
            let y = f.y(v.clamp(lo, hi));
            c.line(x - 7.0, y, x + 7.0, y, Paint::stroke(BEST, 2.0));
            if let Some(m) = self.points.get(i).and_then(|p| p.node.metric).filter(|m| m.is_finite()) {
                c.line(x, y, x, f.y(m.clamp(lo, hi)), Paint::stroke(BEST.alpha(0.5), 1.0).dashed(2.0));
            }
        }
    }

    /// Best so far: a step line through the kept experiments.
    fn best_so_far(&self, c: &mut dyn Canvas) {
        let f = &self.f;
        let mut steps: Vec<(f32, f32)> = Vec::new();
        for p in &self.points {
            if p.node.status == Status::Keep
                && let Some(m) = p.node.metric
            {
                let (x, y) = (f.x(p.index as f64), f.y(m));
                if let Some(&(_, py)) = steps.last() {
                    steps.push((x, py));
                }
                steps.push((x, y));
            }
        }
        if let Some(&(_, y)) = steps.last() {
            steps.push((f.x(f.x_max), y));
            c.path(&steps, false, Paint::stroke(KEEP, 2.5));
        }
    }

    /// The points: discarded (grey), failed (red cross at the bad edge), unverified (a
    /// diamond), then the kept (green) over them.
    fn experiments(&self, c: &mut dyn Canvas) {
        let (_, _, y0, y1) = EDGES;
        let (f, lo, hi, dir) = (&self.f, self.f.lo, self.f.hi, self.dir);
        let bad_edge = if dir == Direction::Lower { y0 + 8.0 } else { y1 - 8.0 };
        for p in &self.points {
            let n = p.node;
            let x = f.x(p.index as f64);
            match (n.status, n.metric) {
                (Status::Keep, _) => {}
                (Status::Unverified, Some(m)) if m.is_finite() => {
                    let y = f.y(m.clamp(lo, hi));
                    c.path(&[(x, y - 6.0), (x + 6.0, y), (x, y + 6.0), (x - 6.0, y)], true, Paint::stroke(UNVERIFIED, 1.8));
                }
                (_, Some(m)) if m.is_finite() => {
                    let y = f.y(m);
                    let clipped = m > hi || m < lo;
                    let color = match n.status {
                        Status::Pruned => DISCARD.alpha(0.45),
                        Status::ChecksFailed => CHECKS_FAILED,
                        _ => DISCARD,
                    };
                    if clipped {
                        let s = if dir == Direction::Lower { -1.0 } else { 1.0 };
                        c.path(&[(x - 6.0, y - s * 3.0), (x + 6.0, y - s * 3.0), (x, y + s * 6.0)], true, Paint::fill(color));
                    } else {
                        c.circle(x, y, 4.5, Paint::both(color.alpha(color.a * 0.7), WHITE, 0.8));
                    }
                }
                _ => {
                    let (s, y) = (5.0, bad_edge);
                    c.line(x - s, y - s, x + s, y + s, Paint::stroke(CRASH, 2.0));
                    c.line(x - s, y + s, x + s, y - s, Paint::stroke(CRASH, 2.0));
                }
            }
        }
        for (i, n) in self.kept() {
            let (x, y) = (f.x(i as f64), f.y(n.metric.unwrap_or(lo)));
            c.circle(x, y, 6.5, Paint::both(KEEP, WHITE, 1.5));
        }
    }

    /// The kept experiments with a metric, by index.
    fn kept(&self) -> Vec<(usize, &'a Node)> {
        self.points.iter().filter(|p| p.node.status == Status::Keep && p.node.metric.is_some()).map(|p| (p.index, p.node)).collect()
    }

    /// Labels of kept changes (the largest gains when there are many), turned to stay clear.
    fn labels(&self, c: &mut dyn Canvas) {
        let (x0, x1, y0, y1) = EDGES;
        let f = &self.f;
        let mut keeps = self.kept();
        keeps.retain(|(_, n)| n.parent.is_some());
        if keeps.len() > MAX_LABELS {
            let r = self.r;
            keeps.sort_by(|a, b| r.step_gain(b.1).unwrap_or(0.0).total_cmp(&r.step_gain(a.1).unwrap_or(0.0)));
            keeps.truncate(MAX_LABELS);
        }
        for (i, n) in keeps {
            let (x, y) = (f.x(i as f64), f.y(n.metric.unwrap_or(f.lo)));
            label(c, n, x, y, (x0, y0, x1, y1));
        }
    }

    /// The best: a ring and its value.
    fn best(&self, c: &mut dyn Canvas) {
        let f = &self.f;
        if let Some(b) = self.best
            && let Some(m) = b.metric
            && let Some(p) = self.points.iter().find(|p| p.node.id == b.id)
        {
            let (x, y) = (f.x(p.index as f64), f.y(m));
            c.circle(x, y, 11.0, Paint::stroke(BEST, 3.0));
            let anchor = if x > WIDTH - 300.0 { Anchor::End } else { Anchor::Start };
            let dx = if anchor == Anchor::End { -14.0 } else { 14.0 };
            let dy = if self.dir == Direction::Lower { 26.0 } else { -20.0 };
            c.text(Text::new(&format!("best {m:.6} ({})", b.name()), x + dx, y + dy, 14.0).anchor(anchor).bold().color(INK));
        }
    }
}

fn legend(c: &mut dyn Canvas) {
    let (mut x, y) = (WIDTH - RIGHT - 940.0, 62.0);
    let item = |c: &mut dyn Canvas, x: f32, label: &str| c.text(Text::new(label, x + 12.0, y + 4.0, 12.0).color(INK));
    c.circle(x, y, 6.0, Paint::both(KEEP, WHITE, 1.5));
    item(c, x, "keep");
    x += 70.0;
    c.circle(x, y, 4.5, Paint::fill(DISCARD));
    item(c, x, "discard");
    x += 90.0;
    c.line(x - 5.0, y - 5.0, x + 5.0, y + 5.0, Paint::stroke(CRASH, 2.0));
    c.line(x - 5.0, y + 5.0, x + 5.0, y - 5.0, Paint::stroke(CRASH, 2.0));
    item(c, x, "crash / rejected");
    x += 150.0;
    c.path(&[(x, y - 6.0), (x + 6.0, y), (x, y + 6.0), (x - 6.0, y)], true, Paint::stroke(UNVERIFIED, 1.8));
    item(c, x, "unverified");
    x += 110.0;
    c.line(x - 8.0, y, x + 8.0, y, Paint::stroke(KEEP, 2.5));
    item(c, x + 4.0, "best so far");
    x += 115.0;
    c.line(x - 8.0, y, x + 8.0, y, Paint::stroke(BASELINE, 1.5).dashed(4.0));
    item(c, x + 4.0, "baseline");
    x += 90.0;
    c.circle(x, y, 3.0, Paint::stroke(BASELINE, 1.2));
    item(c, x, "baseline runs");
    x += 115.0;
    c.line(x - 7.0, y, x + 7.0, y, Paint::stroke(BEST, 2.0));
    item(c, x + 4.0, "keep bar");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes drawn, with their outline colour: enough to find a mark by its colour and place.
    #[derive(Default)]
    struct Recorder {
        circles: Vec<(f32, f32, Paint)>,
        paths: Vec<(Vec<(f32, f32)>, Paint)>,
    }

    impl Canvas for Recorder {
        fn path(&mut self, points: &[(f32, f32)], _closed: bool, paint: Paint) {
            self.paths.push((points.to_vec(), paint));
        }
        fn circle(&mut self, cx: f32, cy: f32, _r: f32, paint: Paint) {
            self.circles.push((cx, cy, paint));
        }
        fn rect(&mut self, _x: f32, _y: f32, _w: f32, _h: f32, _radius: f32, _paint: Paint) {}
        fn text(&mut self, _t: Text<'_>) {}
    }

    #[test]
    fn the_baseline_runs_and_each_experiments_keep_bar_are_drawn() {
        let node = |id: i64, parent: Option<i64>, status: Status, metric: f64, jsonl: serde_json::Value| Node {
            parent,
            description: format!("n{id}"),
            status,
            metric: Some(metric),
            finish_seq: Some(id),
            jsonl: Some(jsonl.to_string()),
            ..crate::report::data::blank_node(id)
        };
        let runs = |ms: &[f64]| serde_json::json!(ms.iter().map(|m| serde_json::json!({"metric": m})).collect::<Vec<_>>());
        let nodes = [
            node(1, None, Status::Keep, 2.0, serde_json::json!({"runs": runs(&[1.99, 2.0, 2.01, 2.03])})),
            // A near-miss: 1.97 against a bar that asked for 1.96.
            node(2, Some(1), Status::Discard, 1.97, serde_json::json!({"previous_best": 2.0, "bar": 0.04, "runs": runs(&[1.97])})),
            // An older record without a bar: no mark.
            node(3, Some(1), Status::Discard, 2.05, serde_json::json!({"previous_best": 2.0})),
        ];
        let r = Research::from_nodes(&crate::config::ResearchConfig::default(), &nodes, None);
        assert_eq!(r.needed(&nodes[1]), Some(1.96));
        assert_eq!(r.needed(&nodes[2]), None);
        let mut c = Recorder::default();
        draw(&r, &mut c);
        let baseline_x = c.circles.iter().filter(|(_, _, p)| p.stroke == Some(BASELINE) && p.width == 1.2).map(|(x, _, _)| *x).collect::<Vec<_>>();
        // Four runs at the baseline's place, one more in the legend.
        assert_eq!(baseline_x.len(), 5, "{baseline_x:?}");
        assert!(baseline_x[..4].iter().all(|x| *x == baseline_x[0]));
        let bars: Vec<&Vec<(f32, f32)>> = c.paths.iter().filter(|(_, p)| p.stroke == Some(BEST) && p.width == 2.0).map(|(pts, _)| pts).collect();
        // n2's bar and the legend's; the bar lies below n2's point (lower is better) at 1.96.
        assert_eq!(bars.len(), 2, "{bars:?}");
        let n2 = c.circles.iter().find(|(_, _, p)| p.fill == Some(DISCARD.alpha(DISCARD.a * 0.7))).unwrap();
        let bar = bars[0];
        assert!(bar[0].0 < n2.0 && bar[1].0 > n2.0 && bar[0].1 == bar[1].1, "{bar:?} vs {n2:?}");
        assert!(bar[0].1 > n2.1, "the bar (1.96) is drawn below the point (1.97): {bar:?} vs {n2:?}");
    }

    #[test]
    fn nice_steps_and_ranges() {
        assert_eq!(nice_step(1.0, 10.0), 0.1);
        assert_eq!(nice_step(0.3, 8.0), 0.05);
        assert_eq!(decimals(0.05), 2);
        // A diverged run (9.0) is clipped, the improvements keep the room.
        let (lo, hi) = y_range(&[1.0, 0.9, 9.0], Some(1.0), Some(0.9), Direction::Lower);
        assert!(lo < 0.9 && hi < 1.5, "{lo} {hi}");
        // One value: a range around it, never empty.
        let (lo, hi) = y_range(&[2.5], None, None, Direction::Lower);
        assert!(lo < 2.5 && hi > 2.5);
    }
}
