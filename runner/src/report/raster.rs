//! The raster side of the canvas: tiny-skia paints anti-aliased shapes, text is the bundled
//! font's glyph outlines filled as paths; `png` encodes the result.

use ab_glyph::{Font, OutlineCurve};
use tiny_skia::{FillRule, LineCap, LineJoin, PathBuilder, Pixmap, Rect, Stroke, StrokeDash, Transform};

use super::canvas::{Anchor, Canvas, Color, Paint, Text};
use super::font;

pub struct RasterCanvas {
    pixmap: Pixmap,
    /// Drawing coordinates to pixels (below 1 to fit a large drawing into a bounded image).
    base: Transform,
}

fn skia_paint(c: Color) -> tiny_skia::Paint<'static> {
    let mut p = tiny_skia::Paint::default();
    p.set_color_rgba8(c.r, c.g, c.b, (c.a.clamp(0.0, 1.0) * 255.0).round() as u8);
    p.anti_alias = true;
    p
}

fn stroke(width: f32, dash: Option<f32>) -> Stroke {
    Stroke {
        width: width.max(0.1),
        line_cap: LineCap::Round,
        line_join: LineJoin::Round,
        dash: dash.and_then(|d| StrokeDash::new(vec![d, d], 0.0)),
        ..Stroke::default()
    }
}

impl RasterCanvas {
    /// A picture of a `w` x `h` drawing, at `scale` pixels per drawing unit, white background.
    /// `None` when the size is zero or too large to allocate.
    pub fn new(w: f32, h: f32, scale: f32) -> Option<RasterCanvas> {
        if !(w > 0.0 && h > 0.0 && scale > 0.0) {
            return None;
        }
        // At least one pixel: a very long, flat tree scaled down must still make an image.
        let (pw, ph) = (((w * scale).round() as u32).max(1), ((h * scale).round() as u32).max(1));
        let mut pixmap = Pixmap::new(pw, ph)?;
        pixmap.fill(tiny_skia::Color::WHITE);
        Some(RasterCanvas { pixmap, base: Transform::from_scale(scale, scale) })
    }

    pub fn size(&self) -> (u32, u32) {
        (self.pixmap.width(), self.pixmap.height())
    }

    /// Rows of RGB bytes (the background is opaque, so no alpha channel is needed).
    pub fn rgb(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pixmap.pixels().len() * 3);
        for p in self.pixmap.pixels() {
            let c = p.demultiply();
            out.extend_from_slice(&[c.red(), c.green(), c.blue()]);
        }
        out
    }

    pub fn png(&self) -> Vec<u8> {
        let (w, h) = self.size();
        super::png::encode_rgb(w, h, &self.rgb())
    }

    fn draw(&mut self, path: &tiny_skia::Path, paint: Paint, t: Transform) {
        if let Some(c) = paint.fill {
            self.pixmap.fill_path(path, &skia_paint(c), FillRule::Winding, t, None);
        }
        if let Some(c) = paint.stroke {
            self.pixmap.stroke_path(path, &skia_paint(c), &stroke(paint.width, paint.dash), t, None);
        }
    }
}

impl Canvas for RasterCanvas {
    fn path(&mut self, points: &[(f32, f32)], closed: bool, paint: Paint) {
        if points.len() < 2 {
            return;
        }
        let mut pb = PathBuilder::new();
        pb.move_to(points[0].0, points[0].1);
        for &(x, y) in &points[1..] {
            pb.line_to(x, y);
        }
        if closed {
            pb.close();
        }
        if let Some(p) = pb.finish() {
            self.draw(&p, paint, self.base);
        }
    }

    fn circle(&mut self, cx: f32, cy: f32, r: f32, paint: Paint) {
        if let Some(p) = PathBuilder::from_circle(cx, cy, r) {
            self.draw(&p, paint, self.base);
        }
    }

    fn rect(&mut self, x: f32, y: f32, w: f32, h: f32, radius: f32, paint: Paint) {
        let r = radius.min(w / 2.0).min(h / 2.0).max(0.0);
        let path = if r <= 0.0 {
            Rect::from_xywh(x, y, w, h).map(PathBuilder::from_rect)
        } else {
            let mut pb = PathBuilder::new();
            pb.move_to(x + r, y);
            pb.line_to(x + w - r, y);
            pb.quad_to(x + w, y, x + w, y + r);
            pb.line_to(x + w, y + h - r);
            pb.quad_to(x + w, y + h, x + w - r, y + h);
            pb.line_to(x + r, y + h);
            pb.quad_to(x, y + h, x, y + h - r);
            pb.line_to(x, y + r);
            pb.quad_to(x, y, x + r, y);
            pb.close();
            pb.finish()
        };
        if let Some(p) = path {
            self.draw(&p, paint, self.base);
        }
    }

    fn text(&mut self, t: Text<'_>) {
        let Some(f) = font::font() else { return };
        let (glyphs, width) = font::layout(t.s, t.size);
        let x0 = t.x - match t.anchor {
            Anchor::Start => 0.0,
            Anchor::Middle => width / 2.0,
            Anchor::End => width,
        };
        let k = font::scale(f, t.size);
        let mut pb = PathBuilder::new();
        for (id, dx) in glyphs {
            let Some(outline) = f.outline(id) else { continue };
            let map = |p: ab_glyph::Point| (x0 + dx + p.x * k, t.y - p.y * k);
            let mut last: Option<(f32, f32)> = None;
            for c in &outline.curves {
                let (start, end) = match c {
                    OutlineCurve::Line(a, b) | OutlineCurve::Quad(a, _, b) | OutlineCurve::Cubic(a, _, _, b) => (map(*a), map(*b)),
                };
                if last != Some(start) {
                    pb.move_to(start.0, start.1);
                }
                match c {
                    OutlineCurve::Line(..) => pb.line_to(end.0, end.1),
                    OutlineCurve::Quad(_, c1, _) => {
                        let c1 = map(*c1);
                        pb.quad_to(c1.0, c1.1, end.0, end.1)
                    }
                    OutlineCurve::Cubic(_, c1, c2, _) => {
                        let (c1, c2) = (map(*c1), map(*c2));
                        pb.cubic_to(c1.0, c1.1, c2.0, c2.1, end.0, end.1)
                    }
                }
                last = Some(end);
            }
        }
        let Some(path) = pb.finish() else { return };
        let tr = self.base.pre_concat(Transform::from_rotate_at(t.angle, t.x, t.y));
        // No bold face is bundled: a thin outline of the text's colour thickens it.
        let paint = if t.bold { Paint::both(t.color, t.color, t.size * 0.06) } else { Paint::fill(t.color) };
        self.draw(&path, paint, tr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_text_and_shapes_in_pixels() {
        let mut c = RasterCanvas::new(120.0, 40.0, 1.0).unwrap();
        assert_eq!(c.size(), (120, 40));
        c.text(Text::new("Wg", 10.0, 30.0, 24.0));
        c.rect(80.0, 5.0, 30.0, 30.0, 4.0, Paint::fill(Color::rgb(255, 0, 0)));
        let rgb = c.rgb();
        let dark = rgb.chunks(3).filter(|p| p[0] < 100 && p[1] < 100 && p[2] < 100).count();
        assert!(dark > 50, "text painted {dark} dark pixels");
        let px = |x: usize, y: usize| &rgb[(y * 120 + x) * 3..(y * 120 + x) * 3 + 3];
        assert_eq!(px(95, 20), &[255, 0, 0]);
        assert_eq!(px(2, 2), &[255, 255, 255]);
        assert!(RasterCanvas::new(0.0, 10.0, 1.0).is_none());
    }
}
