//! Opening prepared data (TO BE IMPLEMENTED — interface fixed).

use std::path::Path;

/// A prepared cache directory: the tokenizer, its `token_bytes` table, and the token files of
/// the train shards and of the validation shard.
pub struct PreparedData {
    token_bytes: Vec<u32>,
}

impl PreparedData {
    /// Opens the prepared data under `cache_dir`, checking that the token files match the
    /// tokenizer and their checksums. The error says to run `prepare` when something is missing.
    pub fn open(cache_dir: &Path) -> anyhow::Result<Self> {
        let _ = cache_dir;
        todo!()
    }

    /// UTF-8 byte length of every token, 0 for the specials; indexed by token id.
    pub fn token_bytes(&self) -> &[u32] {
        &self.token_bytes
    }

    /// Vocabulary size, specials included.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Id of the BOS token.
    pub fn bos_id(&self) -> u32 {
        todo!()
    }
}
