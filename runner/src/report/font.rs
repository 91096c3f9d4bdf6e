//! The bundled font (DejaVu Sans, licence in runner/assets/DejaVuSans-LICENSE.txt): pictures
//! look the same on a machine without any font installed, and text widths can be measured for
//! layout.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, GlyphId};

static BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// The parsed font; `None` only if the bundled file were damaged, in which case text is
/// measured by estimate and left out of PNGs rather than panicking.
pub fn font() -> Option<&'static FontRef<'static>> {
    static FONT: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(BYTES).ok()).as_ref()
}

/// Font units to pixels at em size `size`.
pub fn scale(f: &FontRef<'_>, size: f32) -> f32 {
    size / f.units_per_em().unwrap_or(2048.0)
}

/// The glyphs of `s` with their x offsets (pixels, from the text's start) at em size `size`,
/// and the total advance width.
pub fn layout(s: &str, size: f32) -> (Vec<(GlyphId, f32)>, f32) {
    let Some(f) = font() else {
        return (Vec::new(), s.chars().count() as f32 * size * 0.6);
    };
    let k = scale(f, size);
    let mut x = 0.0;
    let mut prev: Option<GlyphId> = None;
    let mut out = Vec::with_capacity(s.len());
    for c in s.chars() {
        let id = f.glyph_id(c);
        if let Some(p) = prev {
            x += f.kern_unscaled(p, id) * k;
        }
        out.push((id, x));
        x += f.h_advance_unscaled(id) * k;
        prev = Some(id);
    }
    (out, x)
}

/// The advance width of `s` in pixels at em size `size`.
pub fn width(s: &str, size: f32) -> f32 {
    layout(s, size).1
}

/// `s` cut (with an ellipsis) to fit `max` pixels at em size `size`.
pub fn fit(s: &str, size: f32, max: f32) -> String {
    let (glyphs, total) = layout(s, size);
    if total <= max {
        return s.to_string();
    }
    let room = max - width("…", size);
    // Glyph i starts at its x offset; keep the characters whose glyph ends within the room.
    let ends: Vec<f32> = glyphs.iter().skip(1).map(|g| g.1).chain(std::iter::once(total)).collect();
    let keep = if glyphs.is_empty() {
        // No font: the estimate is per character.
        (room / (size * 0.6)).max(0.0) as usize
    } else {
        ends.iter().take_while(|e| **e <= room).count()
    };
    let cut: String = s.chars().take(keep).collect();
    format!("{}…", cut.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_font_parses_and_measures() {
        assert!(font().is_some());
        let w = width("val_bpb", 12.0);
        assert!(w > 30.0 && w < 70.0, "{w}");
        assert_eq!(width("", 12.0), 0.0);
        let cut = fit("a rather long description of a change to the trainer", 12.0, 100.0);
        assert!(cut.ends_with('…') && width(&cut, 12.0) <= 100.0, "{cut}");
        assert_eq!(fit("short", 12.0, 100.0), "short");
    }
}
