//! What the chart and the tree draw on: a few primitives that an SVG writer and a raster
//! (PNG) painter both implement, so progress.svg and progress.png come from one drawing.

/// An RGB colour with opacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Color {
    pub r: u8,
    pub g: u8,
    pub b: u8,
    pub a: f32,
}

impl Color {
    pub const fn rgb(r: u8, g: u8, b: u8) -> Color {
        Color { r, g, b, a: 1.0 }
    }

    pub const fn alpha(self, a: f32) -> Color {
        Color { a, ..self }
    }

    /// `#rrggbb` (the opacity goes in a separate SVG attribute).
    pub fn hex(self) -> String {
        format!("#{:02x}{:02x}{:02x}", self.r, self.g, self.b)
    }
}

pub const WHITE: Color = Color::rgb(255, 255, 255);
pub const INK: Color = Color::rgb(40, 40, 40);
pub const GRID: Color = Color::rgb(225, 225, 225);
pub const MUTED: Color = Color::rgb(120, 120, 120);

/// Where a text's x coordinate sits on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    Start,
    Middle,
    End,
}

/// How a shape is painted: an optional fill and an optional outline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paint {
    pub fill: Option<Color>,
    pub stroke: Option<Color>,
    pub width: f32,
    /// Dash and gap length; `None` draws a solid line.
    pub dash: Option<f32>,
}

impl Paint {
    pub fn fill(c: Color) -> Paint {
        Paint { fill: Some(c), stroke: None, width: 0.0, dash: None }
    }

    pub fn stroke(c: Color, width: f32) -> Paint {
        Paint { fill: None, stroke: Some(c), width, dash: None }
    }

    pub fn both(fill: Color, stroke: Color, width: f32) -> Paint {
        Paint { fill: Some(fill), stroke: Some(stroke), width, dash: None }
    }

    pub fn dashed(self, len: f32) -> Paint {
        Paint { dash: Some(len), ..self }
    }
}

/// A text run: baseline at `y`, `size` in pixels (the em size), turned by `angle` degrees
/// (clockwise, as in SVG) around its anchor point.
#[derive(Debug, Clone, Copy)]
pub struct Text<'a> {
    pub s: &'a str,
    pub x: f32,
    pub y: f32,
    pub size: f32,
    pub color: Color,
    pub anchor: Anchor,
    pub angle: f32,
    pub bold: bool,
}

impl<'a> Text<'a> {
    pub fn new(s: &'a str, x: f32, y: f32, size: f32) -> Text<'a> {
        Text { s, x, y, size, color: INK, anchor: Anchor::Start, angle: 0.0, bold: false }
    }

    pub fn color(self, color: Color) -> Self {
        Text { color, ..self }
    }

    pub fn anchor(self, anchor: Anchor) -> Self {
        Text { anchor, ..self }
    }

    pub fn angle(self, angle: f32) -> Self {
        Text { angle, ..self }
    }

    pub fn bold(self) -> Self {
        Text { bold: true, ..self }
    }
}

pub trait Canvas {
    /// An open or closed (`closed`) line through `points`.
    fn path(&mut self, points: &[(f32, f32)], closed: bool, paint: Paint);
    fn circle(&mut self, cx: f32, cy: f32, r: f32, paint: Paint);
    /// A rectangle with corners rounded by `radius`.
    fn rect(&mut self, x: f32, y: f32, w: f32, h: f32, radius: f32, paint: Paint);
    fn text(&mut self, t: Text<'_>);
    /// Starts a group: a link target and a tooltip where the format has them (SVG), nothing
    /// on a raster.
    fn begin_group(&mut self, _link: Option<&str>, _title: Option<&str>) {}
    fn end_group(&mut self) {}

    fn line(&mut self, x1: f32, y1: f32, x2: f32, y2: f32, paint: Paint) {
        self.path(&[(x1, y1), (x2, y2)], false, paint);
    }
}
