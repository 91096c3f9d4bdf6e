//! The scanner against fixed expectations and against the regex engine the reference uses.

use super::pieces;
use crate::constants::SPLIT_PATTERN;

fn split(text: &str) -> Vec<&str> {
    pieces(text).collect()
}

/// The pieces fancy-regex (rustbpe's and tiktoken's engine) finds.
fn regex_split(text: &str) -> Vec<&str> {
    static REGEX: std::sync::OnceLock<fancy_regex::Regex> = std::sync::OnceLock::new();
    let re = REGEX.get_or_init(|| fancy_regex::Regex::new(SPLIT_PATTERN).unwrap());
    re.find_iter(text).map(|m| m.unwrap().as_str()).collect()
}

/// Asserts that the scanner and the regex agree on `text`, naming the first difference.
fn assert_same_as_regex(text: &str) {
    let (ours, theirs) = (split(text), regex_split(text));
    if ours != theirs {
        let i = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
        let around = |v: &[&str]| format!("{:?}", &v[i.saturating_sub(1)..(i + 2).min(v.len())]);
        panic!(
            "piece {i} differs in {text:?}: scanner {} regex {}",
            around(&ours),
            around(&theirs)
        );
    }
}

#[test]
fn tricky_cases_split_as_the_reference() {
    let cases: &[(&str, &[&str])] = &[
        // Contractions, any case; `ſ` folds to `s`; only the ASCII apostrophe.
        ("it's", &["it", "'s"]),
        ("I'M", &["I", "'M"]),
        ("we'll've", &["we", "'ll", "'ve"]),
        ("they're", &["they", "'re"]),
        ("'ſ", &["'ſ"]),
        ("’s", &["’s"]),
        ("' ll", &["'", " ll"]),
        ("''s", &["''", "s"]),
        ("'x", &["'x"]),
        // Numbers in runs of at most two; a space before a number stands alone.
        ("12345", &["12", "34", "5"]),
        ("a1b", &["a", "1", "b"]),
        (" 42", &[" ", "42"]),
        ("½²", &["½²"]),
        ("٣٤٥", &["٣٤", "٥"]),
        // Whitespace: up to the last line break; before a word the last space goes with it.
        ("a  \nb", &["a", "  \n", "b"]),
        ("x \t \n\n y", &["x", " \t \n\n", " y"]),
        ("a   b", &["a", "  ", " b"]),
        ("end   ", &["end", "   "]),
        ("  \n  ", &["  \n", "  "]),
        ("\n\n\n", &["\n\n\n"]),
        ("\tword", &["\tword"]),
        ("\t\tword", &["\t", "\tword"]),
        // \r\n.
        ("a\r\nb", &["a", "\r\n", "b"]),
        ("a.\r\n", &["a", ".\r\n"]),
        (" \r\n\r\n x", &[" \r\n\r\n", " x"]),
        // Punctuation takes one leading space and trailing line breaks.
        ("((hello", &["((", "hello"]),
        ("(hello", &["(hello"]),
        (" !!\n\nx", &[" !!\n\n", "x"]),
        (" \u{a0}!", &[" ", "\u{a0}", "!"]),
        // Unicode letters and marks (marks are not letters).
        ("naïve café", &["naïve", " café"]),
        ("e\u{301}", &["e", "\u{301}"]),
        ("e\u{301}t", &["e", "\u{301}t"]),
        ("Привет мир", &["Привет", " мир"]),
        ("日本語のテキスト", &["日本語のテキスト"]),
        ("a\u{a0}b", &["a", "\u{a0}b"]),
        // Emoji are neither letters nor numbers.
        ("👍🏽 ok", &["👍🏽", " ok"]),
        (" 🚀launch", &[" 🚀", "launch"]),
        ("🚀launch", &["🚀launch"]),
        ("𝔘𝔫𝔦", &["𝔘𝔫𝔦"]),
        ("", &[]),
    ];
    for &(text, want) in cases {
        assert_eq!(split(text), want, "scanner on {text:?}");
        assert_eq!(regex_split(text), want, "regex on {text:?}");
    }
}

#[test]
fn random_strings_of_tricky_characters_split_as_the_regex() {
    let alphabet: Vec<char> =
        "aZéßΩж日'sSlLvVeErRdmtſ \t\n\r\u{a0}\u{3000}\u{85}\u{2028}19½٣.!-(\u{301}\u{200b}👍🏽𝔘"
            .chars()
            .collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        // xorshift64*: deterministic, so a failure reproduces.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for _ in 0..20_000 {
        let len = (next() % 24) as usize;
        let text: String = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        assert_same_as_regex(&text);
    }
}

#[test]
fn every_code_point_splits_as_the_regex() {
    // Each character in a few contexts: doubled, after a space, between letters, after an
    // apostrophe, before a line break; so every class and every transition is seen.
    let mut text = String::new();
    for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
        for part in [
            &c.to_string(),
            " ",
            "a",
            &c.to_string(),
            &c.to_string(),
            "'",
            &c.to_string(),
            "\n",
        ] {
            text.push_str(part);
        }
    }
    assert_same_as_regex(&text);
}

#[test]
fn pieces_cover_the_text_in_order() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/tokenizer/mixed.jsonl"
    ))
    .unwrap();
    assert_eq!(split(&text).concat(), text);
    assert_same_as_regex(&text);
    for line in text.lines() {
        let doc: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_same_as_regex(doc["text"].as_str().unwrap());
    }
}
