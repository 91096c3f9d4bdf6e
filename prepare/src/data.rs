//! Opening prepared data: the cache that the `prepare` binary fills.
//!
//! Cache layout (see [`CacheLayout`]):
//!
//! ```text
//! <cache>/data/shard_NNNNN.parquet     downloaded shards (local sources are read in place)
//! <cache>/tokenizer/tokenizer.json     the BPE tokenizer; its sha256 is the vocabulary fingerprint
//! <cache>/tokenizer/token_bytes        u32 little-endian per id: UTF-8 bytes of the token, 0 for specials
//! <cache>/tokenizer/trained_on         hex digest of the text the tokenizer was trained on
//! <cache>/tokens/<part>.tok            one token file per shard (see `token_file`)
//! <cache>/prepared.toml                manifest: which token files are train and validation
//! ```
//!
//! The manifest is written last, so a cache without it (or with a stale one) was never finished.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::token_file::{TokenFile, hex};
use crate::tokenizer::BpeTokenizer;

/// Paths inside a cache directory.
#[derive(Debug, Clone)]
pub struct CacheLayout {
    /// The cache root.
    pub root: PathBuf,
}

impl CacheLayout {
    /// The layout under `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    /// Downloaded shards.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }
    /// Tokenizer files.
    pub fn tokenizer_dir(&self) -> PathBuf {
        self.root.join("tokenizer")
    }
    /// `tokenizer.json`.
    pub fn tokenizer_json(&self) -> PathBuf {
        self.tokenizer_dir().join("tokenizer.json")
    }
    /// `token_bytes` (u32 LE per id).
    pub fn token_bytes(&self) -> PathBuf {
        self.tokenizer_dir().join("token_bytes")
    }
    /// Digest of the tokenizer's training text.
    pub fn trained_on(&self) -> PathBuf {
        self.tokenizer_dir().join("trained_on")
    }
    /// Token files.
    pub fn tokens_dir(&self) -> PathBuf {
        self.root.join("tokens")
    }
    /// The token file of part `name`.
    pub fn token_file(&self, name: &str) -> PathBuf {
        self.tokens_dir().join(format!("{name}.tok"))
    }
    /// The manifest.
    pub fn manifest(&self) -> PathBuf {
        self.root.join("prepared.toml")
    }
}

/// What `prepared.toml` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format, 1.
    pub format: u32,
    /// Where the text came from.
    pub source: String,
    /// sha256 (hex) of `tokenizer.json`.
    pub tokenizer_fingerprint: String,
    /// Ids in the vocabulary, specials included.
    pub vocab_size: usize,
    /// Train token files (part names, without `.tok`), in order.
    pub train: Vec<String>,
    /// The validation token file (part name).
    pub val: String,
}

/// A prepared cache directory: the tokenizer, its `token_bytes` table, and the token files of
/// the train shards and of the validation shard.
pub struct PreparedData {
    token_bytes: Vec<u32>,
    bos_id: u32,
    root: PathBuf,
    source: String,
    train: Vec<Arc<TokenFile>>,
    val: Arc<TokenFile>,
}

impl PreparedData {
    /// Opens the prepared data under `cache_dir`, checking that the token files match the
    /// tokenizer and their checksums. The error says to run `prepare` when something is missing.
    pub fn open(cache_dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let layout = CacheLayout::new(cache_dir);
        let rerun = "run `cargo run --release -p prepare -- --help` to see how to prepare data";
        let manifest_path = layout.manifest();
        let text = std::fs::read_to_string(&manifest_path).with_context(|| {
            format!(
                "no prepared data in {} (cannot read {}); {rerun}",
                cache_dir.display(),
                manifest_path.display()
            )
        })?;
        let manifest: Manifest = toml::from_str(&text).with_context(|| {
            format!("{} is not a valid manifest; re-run `prepare`", manifest_path.display())
        })?;
        anyhow::ensure!(
            manifest.format == 1,
            "{} has format {}, this build reads 1; re-run `prepare`",
            manifest_path.display(),
            manifest.format
        );
        let tokenizer = BpeTokenizer::load(&layout.tokenizer_json())
            .with_context(|| format!("the cache {} has no usable tokenizer; {rerun}", cache_dir.display()))?;
        let fingerprint = tokenizer.fingerprint();
        anyhow::ensure!(
            hex(&fingerprint) == manifest.tokenizer_fingerprint,
            "{} changed since the token files were made (manifest says {}, file is {}); re-run `prepare`",
            layout.tokenizer_json().display(),
            manifest.tokenizer_fingerprint,
            hex(&fingerprint)
        );
        let token_bytes = tokenizer.token_bytes();
        let stored = std::fs::read(layout.token_bytes())
            .with_context(|| format!("cannot read {}; re-run `prepare`", layout.token_bytes().display()))?;
        let stored: Vec<u32> = stored
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        anyhow::ensure!(
            stored == token_bytes,
            "{} does not match {}; re-run `prepare`",
            layout.token_bytes().display(),
            layout.tokenizer_json().display()
        );
        anyhow::ensure!(!manifest.train.is_empty(), "{} lists no train token file; re-run `prepare`", manifest_path.display());
        // Checksums cost a pass over every file: check them in parallel.
        let names: Vec<&String> = manifest.train.iter().chain(std::iter::once(&manifest.val)).collect();
        let mut files: Vec<Arc<TokenFile>> = std::thread::scope(|s| {
            let handles: Vec<_> = names
                .iter()
                .map(|name| {
                    let path = layout.token_file(name);
                    s.spawn(move || TokenFile::open(&path, &fingerprint))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("token file check does not panic").map(Arc::new))
                .collect::<Result<_, _>>()
        })?;
        let val = files.pop().expect("the validation file is last");
        anyhow::ensure!(val.num_docs() > 0, "validation token file {} holds no document; re-run `prepare` with more validation text", val.path().display());
        anyhow::ensure!(files.iter().any(|f| f.num_docs() > 0), "the train token files hold no document; re-run `prepare` with more text");
        Ok(Self {
            token_bytes,
            bos_id: tokenizer.bos_id(),
            root: cache_dir.to_path_buf(),
            source: manifest.source,
            train: files,
            val,
        })
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
        self.bos_id
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.root
    }

    /// `tokenizer.json`, for decoding samples.
    pub fn tokenizer_path(&self) -> PathBuf {
        CacheLayout::new(&self.root).tokenizer_json()
    }

    /// Where the text came from (one line).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Train token files, in order.
    pub fn train_files(&self) -> &[Arc<TokenFile>] {
        &self.train
    }

    /// The validation token file.
    pub fn val_file(&self) -> &Arc<TokenFile> {
        &self.val
    }

    /// Train tokens, BOS not counted.
    pub fn train_tokens(&self) -> u64 {
        self.train.iter().map(|f| f.num_tokens()).sum()
    }
}
