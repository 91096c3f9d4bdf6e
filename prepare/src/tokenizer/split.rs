//! The split pattern ([`SPLIT_PATTERN`]) as a hand-written scanner.
//!
//! The pattern needs possessive quantifiers and a look-ahead, so a regex crate runs it on a
//! backtracking engine (fancy-regex, as rustbpe and tiktoken do) at about 10 MB/s. Every
//! alternative is a run of one character class, so one forward pass with one character of
//! look-ahead gives the same pieces an order of magnitude faster. The alternatives, tried in
//! order at each position (leftmost-first, as the regex engine does):
//!
//! 1. `'(?i:[sdmt]|ll|ve|re)`: an ASCII apostrophe and a contraction suffix, any case;
//! 2. `[^\r\n\p{L}\p{N}]?+\p{L}+`: letters, after at most one character that is neither a
//!    line break, a letter nor a number (possessive: once taken, letters must follow);
//! 3. `\p{N}{1,2}`: one or two numbers;
//! 4. ` ?[^\s\p{L}\p{N}]++[\r\n]*`: "other" characters (not space, letter or number), after
//!    at most one ASCII space, then any line breaks;
//! 5. `\s*[\r\n]`: a run of whitespace up to its last line break;
//! 6. `\s+(?!\S)`: a run of whitespace without its last character, unless the text ends;
//! 7. `\s+`: a lone whitespace character before a non-space.
//!
//! The character classes are read from `regex-syntax`, the parser behind fancy-regex, so
//! `\p{L}`, `\p{N}`, `\s` and the case folding of `(?i:...)` follow the same Unicode tables.
//!
//! [`SPLIT_PATTERN`]: crate::constants::SPLIT_PATTERN

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// What the pattern distinguishes about a character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    /// Neither whitespace, a letter nor a number: punctuation, symbols, marks, emoji.
    Other,
    /// `\p{L}`.
    Letter,
    /// `\p{N}`.
    Number,
    /// `\s` other than `\r` and `\n`.
    Space,
    /// `\r` or `\n`.
    LineBreak,
}

/// Code points `lo..=hi`.
type Ranges = Vec<(u32, u32)>;

struct Tables {
    /// Kind of every code point of the Basic Multilingual Plane (64 KiB, one lookup).
    bmp: Box<[Kind]>,
    /// Kind of the code points above U+FFFF that are not `Other`, sorted, disjoint.
    astral: Vec<(u32, u32, Kind)>,
    /// `(?i:[sdmt])`, `(?i:l)`, `(?i:v)`, `(?i:r)`, `(?i:e)`.
    fold_sdmt: Ranges,
    fold_l: Ranges,
    fold_v: Ranges,
    fold_r: Ranges,
    fold_e: Ranges,
}

/// The ranges of a character class, as regex-syntax parses it.
fn class_ranges(class: &str) -> Ranges {
    let hir = regex_syntax::Parser::new()
        .parse(class)
        .unwrap_or_else(|e| panic!("the class {class} is valid: {e}"));
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| (u32::from(r.start()), u32::from(r.end())))
            .collect(),
        other => panic!("{class} parses to a Unicode class, not {other:?}"),
    }
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut bmp = vec![Kind::Other; 0x1_0000].into_boxed_slice();
        let mut astral = Vec::new();
        // Line breaks last: they are also `\s`.
        let kinds = [
            (r"\p{L}", Kind::Letter),
            (r"\p{N}", Kind::Number),
            (r"\s", Kind::Space),
            (r"[\r\n]", Kind::LineBreak),
        ];
        for (class, kind) in kinds {
            for (lo, hi) in class_ranges(class) {
                for c in lo..=hi.min(0xFFFF) {
                    bmp[c as usize] = kind;
                }
                if hi > 0xFFFF {
                    astral.push((lo.max(0x1_0000), hi, kind));
                }
            }
        }
        astral.sort_unstable_by_key(|&(lo, _, _)| lo);
        Tables {
            bmp,
            astral,
            fold_sdmt: class_ranges("(?i:[sdmt])"),
            fold_l: class_ranges("(?i:l)"),
            fold_v: class_ranges("(?i:v)"),
            fold_r: class_ranges("(?i:r)"),
            fold_e: class_ranges("(?i:e)"),
        }
    })
}

impl Tables {
    fn kind(&self, c: u32) -> Kind {
        if let Some(&k) = self.bmp.get(c as usize) {
            return k;
        }
        let at = self.astral.partition_point(|&(lo, _, _)| lo <= c);
        match at.checked_sub(1).map(|i| self.astral[i]) {
            Some((_, hi, kind)) if c <= hi => kind,
            _ => Kind::Other,
        }
    }
}

fn contains(ranges: &Ranges, c: u32) -> bool {
    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// The code point starting at byte `i` of valid UTF-8, and its length in bytes.
#[inline]
fn decode(b: &[u8], i: usize) -> (u32, usize) {
    let b0 = u32::from(b[i]);
    let cont = |k: usize| u32::from(b[i + k] & 0x3F);
    if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | cont(1), 2)
    } else if b0 < 0xF0 {
        (((b0 & 0x0F) << 12) | (cont(1) << 6) | cont(2), 3)
    } else {
        (
            ((b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3),
            4,
        )
    }
}

/// The pieces of `text` under the split pattern, in order; they concatenate to `text`.
pub fn pieces(text: &str) -> Pieces<'_> {
    Pieces {
        text,
        pos: 0,
        tables: tables(),
    }
}

/// Iterator returned by [`pieces`].
pub struct Pieces<'a> {
    text: &'a str,
    pos: usize,
    tables: &'static Tables,
}

impl Pieces<'_> {
    fn bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    /// Kind and byte length of the character at byte `i`, `None` at the end.
    #[inline]
    fn at(&self, i: usize) -> Option<(Kind, usize)> {
        let b = *self.bytes().get(i)?;
        if b < 0x80 {
            return Some((self.tables.bmp[b as usize], 1));
        }
        let (c, len) = decode(self.bytes(), i);
        Some((self.tables.kind(c), len))
    }

    fn kind_at(&self, i: usize) -> Option<Kind> {
        self.at(i).map(|(k, _)| k)
    }

    /// End of the run of `kind` starting at `i`.
    #[inline]
    fn run(&self, mut i: usize, kind: Kind) -> usize {
        while let Some((k, len)) = self.at(i) {
            if k != kind {
                break;
            }
            i += len;
        }
        i
    }

    /// Alternative 1 after the apostrophe at `i - 1`: the end of the suffix, if there is one.
    fn contraction(&self, i: usize) -> Option<usize> {
        let t = self.tables;
        let char_at = |i: usize| (i < self.bytes().len()).then(|| decode(self.bytes(), i));
        let (c1, len1) = char_at(i)?;
        if contains(&t.fold_sdmt, c1) {
            return Some(i + len1);
        }
        let second = if contains(&t.fold_l, c1) {
            &t.fold_l
        } else if contains(&t.fold_v, c1) || contains(&t.fold_r, c1) {
            &t.fold_e
        } else {
            return None;
        };
        let (c2, len2) = char_at(i + len1)?;
        contains(second, c2).then_some(i + len1 + len2)
    }

    /// Alternative 4 from `i`, the first "other" character already taken: more of them, then
    /// line breaks.
    fn others_then_line_breaks(&self, i: usize) -> usize {
        let mut end = self.run(i, Kind::Other);
        while matches!(self.bytes().get(end), Some(b'\r' | b'\n')) {
            end += 1;
        }
        end
    }

    /// Alternatives 5-7 on the whitespace run starting at `start`.
    fn whitespace(&self, start: usize) -> usize {
        let mut end = start;
        let mut after_last_break = None;
        let mut last_char = start;
        while let Some((kind, len)) = self.at(end) {
            match kind {
                Kind::LineBreak => after_last_break = Some(end + len),
                Kind::Space => {}
                _ => break,
            }
            last_char = end;
            end += len;
        }
        match after_last_break {
            Some(e) => e,
            // At the end of the text, or a single character: the whole run (6 or 7).
            None if end == self.text.len() || last_char == start => end,
            // Leave the last space to go with what follows (6).
            None => last_char,
        }
    }

    /// End of the piece that starts at `start` (not at the end of the text).
    fn piece_end(&self, start: usize) -> usize {
        let (kind, len) = self.at(start).expect("start is inside the text");
        let next = start + len;
        if self.bytes()[start] == b'\'' {
            if let Some(end) = self.contraction(next) {
                return end;
            }
        }
        match kind {
            Kind::Letter => self.run(next, Kind::Letter),
            Kind::Number => match self.at(next) {
                Some((Kind::Number, len2)) => next + len2,
                _ => next,
            },
            Kind::LineBreak => self.whitespace(start),
            Kind::Other | Kind::Space => {
                let following = self.kind_at(next);
                if following == Some(Kind::Letter) {
                    self.run(next, Kind::Letter)
                } else if kind == Kind::Other
                    || (self.bytes()[start] == b' ' && following == Some(Kind::Other))
                {
                    self.others_then_line_breaks(next)
                } else {
                    self.whitespace(start)
                }
            }
        }
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let start = self.pos;
        if start >= self.text.len() {
            return None;
        }
        let end = self.piece_end(start);
        self.pos = end;
        // Every end is the end of a character, so slicing cannot fail.
        Some(&self.text[start..end])
    }
}

#[cfg(test)]
mod tests;
