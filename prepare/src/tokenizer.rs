//! The byte-level BPE tokenizer: trained once on the train text, saved as `tokenizer.json`.
//!
//! Built on the `tokenizers` crate: a `Split` pre-tokenizer with the GPT-4 style
//! [`SPLIT_PATTERN`] (isolated matches), then `ByteLevel` without its own regex, a BPE model
//! with `vocab_size - 4` learned tokens (the 256 byte tokens included), and the four
//! [`SPECIAL_TOKENS`] appended after them, so BOS is the first id past the learned ones.
//! Special-token strings that occur in documents are encoded as ordinary text, as the
//! reference's `encode_ordinary` does.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::mpsc;

use sha2::{Digest, Sha256};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::constants::{BOS_TOKEN, SPECIAL_TOKENS, SPLIT_PATTERN};
use crate::source::{Part, SourceError};
use crate::token_file::Digest32;

/// Why a tokenizer cannot be trained, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer {action} failed: {message}")]
    Library {
        action: &'static str,
        message: String,
    },
    #[error("cannot {action} {path}: {cause}")]
    Io {
        action: &'static str,
        path: String,
        cause: std::io::Error,
    },
    #[error("{path} is not a tokenizer made by `prepare` ({reason}); re-run `prepare`")]
    Foreign { path: String, reason: String },
    #[error("the train text is empty: nothing to train the tokenizer on")]
    NoText,
    #[error(transparent)]
    Source(#[from] SourceError),
}

fn lib(action: &'static str) -> impl FnOnce(tokenizers::Error) -> TokenizerError {
    move |e| TokenizerError::Library {
        action,
        message: e.to_string(),
    }
}

/// What tokenizer training read.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrainStats {
    /// Documents fed to the trainer.
    pub documents: u64,
    /// Characters fed to the trainer (after cutting each document).
    pub chars: u64,
}

/// A trained byte-level BPE tokenizer plus what the pipeline derives from it.
pub struct BpeTokenizer {
    inner: Tokenizer,
    json: String,
    fingerprint: Digest32,
    bos_id: u32,
}

impl BpeTokenizer {
    /// Trains on `texts` (already cut to size) with `vocab_size` ids in all, specials included.
    ///
    /// A corpus too small to learn every merge gives a smaller vocabulary; the specials still
    /// come right after the learned tokens.
    pub fn train<I>(texts: I, vocab_size: usize) -> Result<Self, TokenizerError>
    where
        I: Iterator<Item = String> + Send,
    {
        assert!(
            vocab_size > 256 + SPECIAL_TOKENS.len() && vocab_size <= 1 << 16,
            "vocab_size must be in 261..=65536"
        );
        let split = Split::new(
            SplitPattern::Regex(SPLIT_PATTERN.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(lib("regex compilation"))?;
        let mut tok = Tokenizer::new(BPE::default());
        tok.with_pre_tokenizer(Some(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size - SPECIAL_TOKENS.len())
            .min_frequency(0)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut trainer = TrainerWrapper::from(trainer);
        tok.train(&mut trainer, texts).map_err(lib("training"))?;
        let specials: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect();
        tok.add_special_tokens(&specials);
        let json = tok.to_string(false).map_err(lib("serialisation"))?;
        Self::from_json(json, "<trained>")
    }

    /// Loads a `tokenizer.json` written by [`BpeTokenizer::save`].
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let json = std::fs::read_to_string(path).map_err(|cause| TokenizerError::Io {
            action: "read",
            path: path.display().to_string(),
            cause,
        })?;
        Self::from_json(json, &path.display().to_string())
    }

    fn from_json(json: String, origin: &str) -> Result<Self, TokenizerError> {
        let foreign = |reason: String| TokenizerError::Foreign {
            path: origin.to_string(),
            reason,
        };
        let mut inner: Tokenizer = json
            .parse()
            .map_err(|e: tokenizers::Error| foreign(e.to_string()))?;
        inner.set_encode_special_tokens(true);
        let bos_id = inner
            .token_to_id(BOS_TOKEN)
            .ok_or_else(|| foreign(format!("no {BOS_TOKEN} token")))?;
        let vocab = inner.get_vocab_size(true);
        if vocab > 1 << 16 || bos_id as usize + SPECIAL_TOKENS.len() != vocab {
            return Err(foreign(format!(
                "vocabulary of {vocab} with BOS at {bos_id}: the specials must be the last ids"
            )));
        }
        let fingerprint = Sha256::digest(json.as_bytes()).into();
        Ok(Self {
            inner,
            json,
            fingerprint,
            bos_id,
        })
    }

    /// Writes `tokenizer.json` atomically; its sha256 is [`BpeTokenizer::fingerprint`].
    pub fn save(&self, path: &Path) -> Result<(), TokenizerError> {
        write_atomic(path, self.json.as_bytes()).map_err(|cause| TokenizerError::Io {
            action: "write",
            path: path.display().to_string(),
            cause,
        })
    }

    /// sha256 of the saved `tokenizer.json`: token files record it.
    pub fn fingerprint(&self) -> Digest32 {
        self.fingerprint
    }

    /// Ids in all, specials included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of `<|reserved_0|>`.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// Ids of `text`, without BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode_fast(text, false).map_err(lib("encoding"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids of many documents, in parallel (rayon).
    pub fn encode_batch(&self, docs: &[String]) -> Result<Vec<Vec<u32>>, TokenizerError> {
        let inputs: Vec<&str> = docs.iter().map(|d| d.as_str()).collect();
        let encs = self
            .inner
            .encode_batch_fast(inputs, false)
            .map_err(lib("encoding"))?;
        Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Text of `ids`; specials are kept, invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, false).map_err(lib("decoding"))
    }

    /// UTF-8 byte length of each token's decoded text, 0 for the specials.
    ///
    /// As the reference, a token holding part of a multi-byte character decodes to U+FFFD
    /// (3 bytes) per invalid sequence.
    pub fn token_bytes(&self) -> Result<Vec<u32>, TokenizerError> {
        (0..self.vocab_size() as u32)
            .map(|id| {
                if id >= self.bos_id {
                    Ok(0)
                } else {
                    Ok(self.decode(&[id])?.len() as u32)
                }
            })
            .collect()
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename; removes the temporary
/// file on error.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Cuts `text` to at most `max_chars` characters.
pub fn cut_chars(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// Trains on the train parts as the reference does: each document cut to `doc_max_chars`
/// characters, at most `max_chars` characters in all. The documents stream from a reader
/// thread, so the whole text is never held at once.
pub fn train_on_parts(
    parts: &[Part],
    vocab_size: usize,
    max_chars: usize,
    doc_max_chars: usize,
) -> Result<(BpeTokenizer, TrainStats), TokenizerError> {
    let (tx, rx) = mpsc::sync_channel::<String>(4096);
    let parts = parts.to_vec();
    let reader = std::thread::spawn(move || -> Result<TrainStats, SourceError> {
        let mut stats = TrainStats::default();
        for part in &parts {
            let mut stop = false;
            part.for_each_chunk(|docs| {
                for doc in docs {
                    let left = max_chars.saturating_sub(stats.chars as usize);
                    if left == 0 {
                        stop = true;
                        return ControlFlow::Break(());
                    }
                    let cut = cut_chars(doc, doc_max_chars.min(left));
                    stats.chars += cut.chars().count() as u64;
                    stats.documents += 1;
                    if tx.send(cut.to_string()).is_err() {
                        stop = true;
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            })?;
            if stop {
                break;
            }
        }
        Ok(stats)
    });
    let trained = BpeTokenizer::train(rx.into_iter(), vocab_size);
    let stats = reader.join().expect("the reader thread does not panic")?;
    if stats.chars == 0 {
        return Err(TokenizerError::NoText);
    }
    Ok((trained?, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        let base = "The quick brown fox jumps over the lazy dog. naïve café — 日本語 🚀 \
                    Numbers 12345 and 2024, it's, we'll, they've. ";
        (0..200).map(|i| format!("{base} paragraph {i}\n\n")).collect()
    }

    #[test]
    fn round_trip_on_non_ascii_text() {
        let tok = BpeTokenizer::train(corpus().into_iter(), 400).unwrap();
        for text in ["naïve café — 日本語 🚀", "unseen: Ωμέγα ĳ 𝄞\r\n\ttabs", ""] {
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
    }

    #[test]
    fn specials_come_last_and_have_zero_bytes() {
        let tok = BpeTokenizer::train(corpus().into_iter(), 300).unwrap();
        let v = tok.vocab_size();
        assert_eq!(v, 300);
        assert_eq!(tok.bos_id() as usize, v - 4);
        let bytes = tok.token_bytes().unwrap();
        assert_eq!(&bytes[v - 4..], &[0, 0, 0, 0]);
        assert!(bytes[..v - 4].iter().all(|&b| b > 0));
        // A special-token string inside a document is ordinary text, never BOS.
        let ids = tok.encode("a <|reserved_0|> b").unwrap();
        assert!(!ids.contains(&tok.bos_id()));
        // token_bytes of an ASCII text sums to its length.
        let ids = tok.encode("The quick brown fox").unwrap();
        let sum: u32 = ids.iter().map(|&i| bytes[i as usize]).sum();
        assert_eq!(sum as usize, "The quick brown fox".len());
    }

    #[test]
    fn saved_tokenizer_reloads_with_the_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let tok = BpeTokenizer::train(corpus().into_iter(), 300).unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let again = BpeTokenizer::load(&path).unwrap();
        assert_eq!(again.fingerprint(), tok.fingerprint());
        let on_disk: Digest32 = Sha256::digest(std::fs::read(&path).unwrap()).into();
        assert_eq!(on_disk, tok.fingerprint());
        std::fs::write(&path, "{}").unwrap();
        let err = BpeTokenizer::load(&path).err().unwrap().to_string();
        assert!(err.contains("tokenizer.json"), "{err}");
    }

    #[test]
    fn cut_chars_respects_char_boundaries() {
        assert_eq!(cut_chars("日本語", 2), "日本");
        assert_eq!(cut_chars("ab", 5), "ab");
    }
}
