//! Tiny prepared caches for tests and smoke runs of the other crates.
//!
//! The tests of the workspace must pass on a fresh clone with no data around, so they build
//! their own: a few hundred synthetic documents, a 320-token BPE vocabulary, the ordinary
//! [`crate::pipeline::prepare`] path.

use std::path::Path;

use crate::pipeline::{PrepareOptions, PrepareReport, SourceSpec, prepare};
use crate::source::DocSplit;

/// Vocabulary of the tiny caches: enough merges for the synthetic text, fast to train.
pub const TINY_VOCAB: usize = 320;

/// `n` synthetic documents with a learnable structure (repeated phrases) and non-ASCII text.
pub fn synthetic_documents(n: usize, salt: &str) -> Vec<String> {
    let words = [
        "the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "naïve", "café",
        "日本語", "and", "then", "it", "rests",
    ];
    (0..n)
        .map(|i| {
            let len = 20 + (i * 13) % 80;
            let body: Vec<&str> = (0..len).map(|k| words[(i + k) % words.len()]).collect();
            format!("{salt} story {i}: {}.", body.join(" "))
        })
        .collect()
}

/// Prepares a tiny cache under `cache_dir` from synthetic text written into `cache_dir/text`.
pub fn prepare_tiny_cache(cache_dir: &Path) -> anyhow::Result<PrepareReport> {
    let text_dir = cache_dir.join("text");
    std::fs::create_dir_all(&text_dir)?;
    let train = text_dir.join("train.txt");
    let val = text_dir.join("val.txt");
    std::fs::write(&train, synthetic_documents(600, "train").join("\n\n"))?;
    std::fs::write(&val, synthetic_documents(120, "val").join("\n\n"))?;
    let mut opts = PrepareOptions::new(
        cache_dir.to_path_buf(),
        SourceSpec::Files {
            text: vec![train],
            jsonl: Vec::new(),
            val: vec![val],
            split: DocSplit::Paragraph,
            val_percent: 10.0,
        },
    );
    opts.vocab_size = TINY_VOCAB;
    prepare(&opts, &|_| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::PreparedData;

    #[test]
    fn tiny_cache_opens_with_the_tiny_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        prepare_tiny_cache(dir.path()).unwrap();
        let data = PreparedData::open(dir.path()).unwrap();
        assert_eq!(data.vocab_size(), TINY_VOCAB);
        assert!(data.train_tokens() > 10_000, "{} train tokens", data.train_tokens());
    }
}
