//! The SVG side of the canvas: plain SVG 1.1 text, the bundled font's family named first.

use std::fmt::Write;

use super::canvas::{Anchor, Canvas, Color, Paint, Text, WHITE};

pub struct SvgCanvas {
    out: String,
    /// Whether each open group is wrapped in a link.
    groups: Vec<bool>,
}

/// Text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

fn paint_attrs(p: Paint) -> String {
    let mut s = String::new();
    match p.fill {
        Some(c) => {
            let _ = write!(s, " fill=\"{}\"", c.hex());
            if c.a < 1.0 {
                let _ = write!(s, " fill-opacity=\"{:.2}\"", c.a);
            }
        }
        None => s.push_str(" fill=\"none\""),
    }
    if let Some(c) = p.stroke {
        let _ = write!(s, " stroke=\"{}\" stroke-width=\"{:.1}\" stroke-linejoin=\"round\" stroke-linecap=\"round\"", c.hex(), p.width);
        if c.a < 1.0 {
            let _ = write!(s, " stroke-opacity=\"{:.2}\"", c.a);
        }
        if let Some(d) = p.dash {
            let _ = write!(s, " stroke-dasharray=\"{d:.1} {d:.1}\"");
        }
    }
    s
}

impl SvgCanvas {
    /// A `w` x `h` picture on a white background.
    pub fn new(w: f32, h: f32) -> SvgCanvas {
        let mut out = String::new();
        let _ = write!(
            out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" xmlns:xlink=\"http://www.w3.org/1999/xlink\" width=\"{w:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\" font-family=\"'DejaVu Sans', Verdana, Arial, sans-serif\">\n"
        );
        let mut c = SvgCanvas { out, groups: Vec::new() };
        c.rect(0.0, 0.0, w, h, 0.0, Paint::fill(WHITE));
        c
    }

    pub fn finish(mut self) -> String {
        while !self.groups.is_empty() {
            self.end_group();
        }
        self.out.push_str("</svg>\n");
        self.out
    }
}

fn color_attr(name: &str, c: Color) -> String {
    if c.a < 1.0 { format!(" {name}=\"{}\" {name}-opacity=\"{:.2}\"", c.hex(), c.a) } else { format!(" {name}=\"{}\"", c.hex()) }
}

impl Canvas for SvgCanvas {
    fn path(&mut self, points: &[(f32, f32)], closed: bool, paint: Paint) {
        if points.len() < 2 {
            return;
        }
        let pts: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let tag = if closed { "polygon" } else { "polyline" };
        let _ = writeln!(self.out, "<{tag} points=\"{}\"{}/>", pts.join(" "), paint_attrs(paint));
    }

    fn circle(&mut self, cx: f32, cy: f32, r: f32, paint: Paint) {
        let _ = writeln!(self.out, "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"{r:.1}\"{}/>", paint_attrs(paint));
    }

    fn rect(&mut self, x: f32, y: f32, w: f32, h: f32, radius: f32, paint: Paint) {
        let rx = if radius > 0.0 { format!(" rx=\"{radius:.1}\"") } else { String::new() };
        let _ = writeln!(self.out, "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\"{rx}{}/>", paint_attrs(paint));
    }

    fn text(&mut self, t: Text<'_>) {
        let anchor = match t.anchor {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        };
        let rotate = if t.angle != 0.0 { format!(" transform=\"rotate({:.1} {:.1} {:.1})\"", t.angle, t.x, t.y) } else { String::new() };
        let bold = if t.bold { " font-weight=\"bold\"" } else { "" };
        let _ = writeln!(
            self.out,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"{:.1}\" text-anchor=\"{anchor}\"{}{bold}{rotate}>{}</text>",
            t.x,
            t.y,
            t.size,
            color_attr("fill", t.color),
            escape(t.s)
        );
    }

    fn begin_group(&mut self, link: Option<&str>, title: Option<&str>) {
        if let Some(href) = link {
            let _ = write!(self.out, "<a href=\"{0}\" xlink:href=\"{0}\">", escape(href));
        }
        self.groups.push(link.is_some());
        self.out.push_str("<g>");
        if let Some(t) = title {
            let _ = write!(self.out, "<title>{}</title>", escape(t));
        }
        self.out.push('\n');
    }

    fn end_group(&mut self) {
        match self.groups.pop() {
            Some(true) => self.out.push_str("</g></a>\n"),
            Some(false) => self.out.push_str("</g>\n"),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_escapes_text_and_closes() {
        let mut c = SvgCanvas::new(100.0, 50.0);
        c.begin_group(Some("#diff-n1"), Some("a < b & \"c\""));
        c.text(Text::new("x<y & z", 1.0, 2.0, 10.0));
        c.end_group();
        c.path(&[(0.0, 0.0)], false, Paint::stroke(WHITE, 1.0)); // one point: nothing drawn
        let s = c.finish();
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("x&lt;y &amp; z") && s.contains("a &lt; b &amp; &quot;c&quot;"));
        assert!(!s.contains("polyline"));
    }
}
