//! Every fixed number of the data pipeline and the metric, in one place.
//!
//! These mirror the reference `prepare.py` (see `../shared/docs/REFERENCE.md` §1). A platform
//! profile may shrink the sequence length and the evaluation tokens for small machines; nothing
//! the trainer does can change them.

use std::path::PathBuf;

/// Context length of the reference model and of the reference evaluation.
pub const MAX_SEQ_LEN: usize = 2048;
/// Seconds of counted training time in the reference.
pub const TIME_BUDGET_SECS: f64 = 300.0;
/// Validation tokens scored by the reference evaluation (40 * 2^19).
pub const EVAL_TOKENS: usize = 40 * 524_288;
/// Vocabulary size including the special tokens.
pub const VOCAB_SIZE: usize = 8192;
/// Special tokens appended after the learned ones; the first is BOS.
pub const SPECIAL_TOKENS: [&str; 4] = [
    "<|reserved_0|>",
    "<|reserved_1|>",
    "<|reserved_2|>",
    "<|reserved_3|>",
];
/// The token put before every document.
pub const BOS_TOKEN: &str = SPECIAL_TOKENS[0];
/// GPT-4 style split pattern, with digits grouped in runs of one or two.
pub const SPLIT_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
/// At most this many characters of training text feed the tokenizer trainer.
pub const TOKENIZER_MAX_CHARS: usize = 1_000_000_000;
/// Each document is cut to this many characters for tokenizer training.
pub const TOKENIZER_DOC_MAX_CHARS: usize = 10_000;

/// Base URL of the climbmix shards; a shard is `{BASE_URL}/shard_{i:05}.parquet`.
pub const BASE_URL: &str =
    "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main";
/// The last shard index; the validation shard is pinned to it.
pub const MAX_SHARD: usize = 6542;
/// The validation shard, pinned so that every run scores the same text.
pub const VAL_SHARD: usize = MAX_SHARD;
/// Train shards downloaded by default (0..10).
pub const DEFAULT_TRAIN_SHARDS: usize = 10;
/// Download attempts per shard; attempt `n` waits `2^n` seconds before retrying.
pub const DOWNLOAD_ATTEMPTS: u32 = 5;
/// Parallel downloads.
pub const DOWNLOAD_WORKERS: usize = 8;
/// Documents held in the packing buffer before a row is filled.
pub const PACKING_BUFFER_DOCS: usize = 1000;

/// Environment variable that overrides the cache directory.
pub const CACHE_ENV: &str = "AUTORESEARCH_CACHE";

/// File name of a shard with index `index`.
pub fn shard_name(index: usize) -> String {
    format!("shard_{index:05}.parquet")
}

/// The cache root: `$AUTORESEARCH_CACHE`, else `~/.cache/autoresearch`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("autoresearch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_are_zero_padded_to_five_digits() {
        assert_eq!(shard_name(0), "shard_00000.parquet");
        assert_eq!(shard_name(VAL_SHARD), "shard_06542.parquet");
    }

    #[test]
    fn eval_tokens_match_the_reference() {
        assert_eq!(EVAL_TOKENS, 20_971_520);
    }
}
