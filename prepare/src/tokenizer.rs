//! The byte-level BPE tokenizer: trained once on the train text, saved as `tokenizer.json`.
//!
//! It reproduces the reference's tokenizer exactly: rustbpe's training (the same merges in
//! the same order) and tiktoken's encoding (the same ids), on the same split pattern. Ids
//! 0..=255 are the bytes, merge `k` is id `256 + k`, and the four [`SPECIAL_TOKENS`] come
//! right after the learned ids, so BOS is the first id past them. Special-token strings that
//! occur in documents are encoded as ordinary text, as the reference's `encode_ordinary`.
//!
//! - [`split`]: the split pattern as a hand-written scanner;
//! - `train`: counting pieces and learning merges;
//! - `encode`: turning pieces into ids;
//! - `file`: the `tokenizer.json` format.

pub mod split;

mod encode;
mod file;
mod train;

use std::ops::ControlFlow;
use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::constants::SPECIAL_TOKENS;
use crate::progress::Progress;
use crate::source::{Part, SourceError, for_each_chunk_prefetched};
use crate::token_file::Digest32;
use encode::Encoder;
pub use train::{Pair, PieceCounts};

/// Why a tokenizer cannot be trained, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "a vocabulary of {0} ids is out of range: it needs 261..=65536 (256 bytes, at least one merge, 4 specials; ids are 16 bits)"
    )]
    VocabSize(usize),
    #[error("cannot {action} {path}: {cause}")]
    Io {
        action: &'static str,
        path: String,
        cause: std::io::Error,
    },
    #[error("{path} is not a tokenizer made by `prepare` ({reason}); re-run `prepare`")]
    Foreign { path: String, reason: String },
    #[error("token id {id} is not in the vocabulary of {vocab} ids")]
    UnknownId { id: u32, vocab: usize },
    #[error("the train text is empty: nothing to train the tokenizer on")]
    NoText,
    #[error(transparent)]
    Source(#[from] SourceError),
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
    merges: Vec<Pair>,
    encoder: Encoder,
    json: String,
    fingerprint: Digest32,
}

impl BpeTokenizer {
    /// Trains on `docs` (already cut to size) with `vocab_size` ids in all, specials included.
    ///
    /// A corpus too small to learn every merge gives a smaller vocabulary; the specials still
    /// come right after the learned tokens.
    pub fn train<S: AsRef<str> + Sync>(
        docs: &[S],
        vocab_size: usize,
    ) -> Result<Self, TokenizerError> {
        let counts = PieceCounts::default();
        counts.add_docs(docs);
        Self::from_counts(counts, vocab_size, false)
    }

    /// Learns the merges from counted pieces; `show_progress` draws a bar of merges.
    pub fn from_counts(
        counts: PieceCounts,
        vocab_size: usize,
        show_progress: bool,
    ) -> Result<Self, TokenizerError> {
        let max_merges = merges_for(vocab_size)?;
        let bar = Progress::new(
            show_progress,
            "learning merges",
            Some(max_merges as u64),
            "merges",
        );
        let merges = train::learn_merges(counts, max_merges, |done| bar.set_position(done as u64));
        Self::from_json(file::to_json(&merges), "<trained>")
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
        let merges = file::from_json(&json).map_err(|reason| TokenizerError::Foreign {
            path: origin.to_string(),
            reason,
        })?;
        let fingerprint = Sha256::digest(json.as_bytes()).into();
        Ok(Self {
            encoder: Encoder::new(&merges),
            merges,
            json,
            fingerprint,
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

    /// The learned merges in order; merge `k` made id `256 + k`.
    pub fn merges(&self) -> &[Pair] {
        &self.merges
    }

    /// Ids in all, specials included.
    pub fn vocab_size(&self) -> usize {
        self.encoder.num_learned() + SPECIAL_TOKENS.len()
    }

    /// Id of `<|reserved_0|>`.
    pub fn bos_id(&self) -> u32 {
        self.encoder.num_learned() as u32
    }

    /// Ids of `text`, without BOS.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        self.encoder.encode(text, &mut ids);
        ids
    }

    /// Ids of many documents, in parallel on every core.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, docs: &[S]) -> Vec<Vec<u32>> {
        docs.par_iter().map(|d| self.encode(d.as_ref())).collect()
    }

    /// Text of `ids`; specials are kept, invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token(id)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The bytes of token `id` (a special's are its text).
    pub fn token(&self, id: u32) -> Result<&[u8], TokenizerError> {
        if let Some(bytes) = self.encoder.bytes_of(id) {
            return Ok(bytes);
        }
        SPECIAL_TOKENS
            .get((id - self.bos_id()) as usize)
            .map(|s| s.as_bytes())
            .ok_or(TokenizerError::UnknownId {
                id,
                vocab: self.vocab_size(),
            })
    }

    /// UTF-8 byte length of each token's decoded text, 0 for the specials.
    ///
    /// As the reference, a token holding part of a multi-byte character decodes to U+FFFD
    /// (3 bytes) per invalid sequence.
    pub fn token_bytes(&self) -> Vec<u32> {
        (0..self.encoder.num_learned() as u32)
            .map(|id| {
                let bytes = self.encoder.bytes_of(id).expect("a learned id");
                String::from_utf8_lossy(bytes).len() as u32
            })
            .chain(SPECIAL_TOKENS.iter().map(|_| 0))
            .collect()
    }
}

/// Merges to learn for `vocab_size` ids in all.
fn merges_for(vocab_size: usize) -> Result<usize, TokenizerError> {
    if (256 + 1 + SPECIAL_TOKENS.len()..=1 << 16).contains(&vocab_size) {
        Ok(vocab_size - 256 - SPECIAL_TOKENS.len())
    } else {
        Err(TokenizerError::VocabSize(vocab_size))
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
/// characters, documents taken in order until `max_chars` characters are reached (the one that
/// reaches it is kept whole). Documents stream in chunks from a reader thread and are counted
/// on every core, so the whole text is never held at once.
pub fn train_on_parts(
    parts: &[Part],
    vocab_size: usize,
    max_chars: usize,
    doc_max_chars: usize,
    show_progress: bool,
) -> Result<(BpeTokenizer, TrainStats), TokenizerError> {
    // Fail before reading any text.
    merges_for(vocab_size)?;
    let counts = PieceCounts::default();
    let mut stats = TrainStats::default();
    let mut bar = Progress::new(show_progress, "counting pieces", None, "documents");
    for part in parts {
        if stats.chars as usize >= max_chars {
            break;
        }
        for_each_chunk_prefetched(part, |chunk| {
            let mut cut = Vec::with_capacity(chunk.len());
            let mut bytes = 0;
            for doc in &chunk {
                let doc = cut_chars(doc, doc_max_chars);
                stats.chars += doc.chars().count() as u64;
                bytes += doc.len() as u64;
                cut.push(doc);
                if stats.chars as usize >= max_chars {
                    break;
                }
            }
            counts.add_docs(&cut);
            stats.documents += cut.len() as u64;
            bar.advance(cut.len() as u64, bytes);
            if stats.chars as usize >= max_chars {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
    }
    drop(bar);
    if stats.chars == 0 {
        return Err(TokenizerError::NoText);
    }
    Ok((
        BpeTokenizer::from_counts(counts, vocab_size, show_progress)?,
        stats,
    ))
}

#[cfg(test)]
mod tests;
