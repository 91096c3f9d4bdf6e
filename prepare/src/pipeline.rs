//! The whole preparation, as the `prepare` binary runs it: get the text, train (or reuse) the
//! tokenizer, tokenize every part once, write the manifest last.
//!
//! Re-running skips finished work: the tokenizer is kept when it was trained on the same text
//! with the same settings (`tokenizer/trained_on`), and a token file is kept when it verifies
//! (checksum), was made by the current tokenizer and from the same text (its source digest).
//! Anything else is rebuilt. The manifest is removed before anything in the cache changes and
//! written again only at the end, so an interrupted run never leaves a cache that opens.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::constants::{
    SPLIT_PATTERN, TOKENIZER_DOC_MAX_CHARS, TOKENIZER_MAX_CHARS, VAL_SHARD, VOCAB_SIZE,
};
use crate::data::{CacheLayout, Manifest, PreparedData};
use crate::download::{DownloadConfig, download_shards};
use crate::progress::Progress;
use crate::source::{
    Corpus, DocSplit, Part, for_each_chunk_prefetched, shard_corpus, shard_dir_corpus, text_corpus,
};
use crate::token_file::{self, Digest32, TokenFile, TokenizedDocs, hex};
use crate::tokenizer::{BpeTokenizer, train_on_parts, write_atomic};

/// Where the text comes from.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// Download train shards `0..num_shards` plus the validation shard into `<cache>/data`.
    Download {
        num_shards: usize,
        config: DownloadConfig,
    },
    /// Read shards in place from a directory in the climbmix layout.
    Dir {
        dir: PathBuf,
        num_shards: Option<usize>,
    },
    /// Plain-text and JSONL files (see [`crate::source`] for documents and validation).
    Files {
        /// Plain-text files.
        text: Vec<PathBuf>,
        /// JSONL files (field `text`).
        jsonl: Vec<PathBuf>,
        /// Validation files; empty: the last `val_percent` % of the documents.
        val: Vec<PathBuf>,
        split: DocSplit,
        val_percent: f64,
    },
}

/// Everything a preparation needs.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// The cache root.
    pub cache_dir: PathBuf,
    /// The text.
    pub source: SourceSpec,
    /// Ids in all, specials included.
    pub vocab_size: usize,
    /// At most this many characters train the tokenizer.
    pub tokenizer_max_chars: usize,
    /// Each document is cut to this many characters for tokenizer training.
    pub tokenizer_doc_max_chars: usize,
    /// Train the tokenizer even when a matching one exists.
    pub retrain_tokenizer: bool,
    /// Draw progress bars on stderr (indicatif draws nothing when it is not a terminal).
    pub progress: bool,
}

impl PrepareOptions {
    /// The reference settings for `source` under `cache_dir`.
    pub fn new(cache_dir: PathBuf, source: SourceSpec) -> Self {
        Self {
            cache_dir,
            source,
            vocab_size: VOCAB_SIZE,
            tokenizer_max_chars: TOKENIZER_MAX_CHARS,
            tokenizer_doc_max_chars: TOKENIZER_DOC_MAX_CHARS,
            retrain_tokenizer: false,
            progress: true,
        }
    }
}

/// What a preparation did.
#[derive(Debug, Clone, Default)]
pub struct PrepareReport {
    /// Where the text came from.
    pub source: String,
    /// Train parts (shards or the text-file train part).
    pub train_parts: usize,
    /// Whether the tokenizer was trained in this run (false: reused).
    pub tokenizer_trained: bool,
    /// Seconds spent training the tokenizer (reading the text included).
    pub tokenizer_secs: f64,
    /// Documents and characters fed to the tokenizer trainer.
    pub tokenizer_docs: u64,
    pub tokenizer_chars: u64,
    /// Vocabulary size, specials included.
    pub vocab_size: usize,
    /// Parts tokenized in this run, and parts whose token file was kept.
    pub parts_tokenized: usize,
    pub parts_kept: usize,
    /// Documents, characters and UTF-8 bytes tokenized in this run.
    pub tokenized_docs: u64,
    pub tokenized_chars: u64,
    pub tokenized_bytes: u64,
    /// Seconds spent tokenizing (reading the text included).
    pub tokenize_secs: f64,
    /// Documents and tokens (BOS excluded) in the prepared train and validation files.
    pub train_docs: u64,
    pub train_tokens: u64,
    pub val_docs: u64,
    pub val_tokens: u64,
}

impl PrepareReport {
    /// Tokenization throughput in MB/s of UTF-8 text (0 when nothing was tokenized).
    pub fn tokenize_mb_per_s(&self) -> f64 {
        if self.tokenize_secs > 0.0 {
            self.tokenized_bytes as f64 / 1e6 / self.tokenize_secs
        } else {
            0.0
        }
    }
}

fn create_dir(path: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))
}

/// Runs a whole preparation; `log` receives one line per step.
pub fn prepare(opts: &PrepareOptions, log: &dyn Fn(&str)) -> anyhow::Result<PrepareReport> {
    let layout = CacheLayout::new(&opts.cache_dir);
    create_dir(&opts.cache_dir)?;
    let corpus = build_corpus(opts, &layout, log)?;
    let mut report = PrepareReport {
        source: corpus.description.clone(),
        train_parts: corpus.train.len(),
        ..Default::default()
    };

    let train_digests = corpus
        .train
        .iter()
        .map(|p| p.digest())
        .collect::<Result<Vec<_>, _>>()?;
    let val_digest = corpus.val.digest()?;
    // From here on the cache changes: it must not open until the manifest is written again.
    match std::fs::remove_file(layout.manifest()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", layout.manifest().display()));
        }
        _ => {}
    }

    let tokenizer = tokenizer_for(opts, &layout, &corpus, &train_digests, &mut report, log)?;
    let fingerprint = tokenizer.fingerprint();
    report.vocab_size = tokenizer.vocab_size();

    create_dir(&layout.tokens_dir())?;
    let started = Instant::now();
    let parts = corpus.train.iter().zip(&train_digests).chain(std::iter::once((&corpus.val, &val_digest)));
    for (part, digest) in parts {
        let path = layout.token_file(&part.name);
        if let Ok(existing) = TokenFile::open(&path, &fingerprint)
            && existing.header().source_digest == *digest
        {
            report.parts_kept += 1;
            log(&format!("kept {} ({} documents, {} tokens)", path.display(), existing.num_docs(), existing.num_tokens()));
            continue;
        }
        let t0 = Instant::now();
        let (docs, chars, bytes) = tokenize_part(&tokenizer, part, &path, opts.progress)?;
        token_file::write(&path, &docs, fingerprint, *digest)?;
        report.parts_tokenized += 1;
        report.tokenized_docs += docs.len() as u64;
        report.tokenized_chars += chars;
        report.tokenized_bytes += bytes;
        let secs = t0.elapsed().as_secs_f64();
        log(&format!(
            "tokenized {} -> {}: {} documents, {} tokens, {:.1} MB in {:.2} s ({:.1} MB/s)",
            part.name,
            path.display(),
            docs.len(),
            docs.ids.len(),
            bytes as f64 / 1e6,
            secs,
            bytes as f64 / 1e6 / secs.max(1e-9)
        ));
    }
    if report.parts_tokenized > 0 {
        report.tokenize_secs = started.elapsed().as_secs_f64();
    }

    let manifest = Manifest {
        format: 1,
        source: corpus.description.clone(),
        tokenizer_fingerprint: hex(&fingerprint),
        vocab_size: tokenizer.vocab_size(),
        train: corpus.train.iter().map(|p| p.name.clone()).collect(),
        val: corpus.val.name.clone(),
    };
    let text = toml::to_string(&manifest).context("cannot serialise the manifest")?;
    write_atomic(&layout.manifest(), text.as_bytes())
        .with_context(|| format!("cannot write {}", layout.manifest().display()))?;

    // Prove that the result opens, exactly as the trainer will open it.
    let data = PreparedData::open(&opts.cache_dir)?;
    report.train_docs = data.train_files().iter().map(|f| f.num_docs() as u64).sum();
    report.train_tokens = data.train_tokens();
    report.val_docs = data.val_file().num_docs() as u64;
    report.val_tokens = data.val_file().num_tokens();
    Ok(report)
}

fn build_corpus(opts: &PrepareOptions, layout: &CacheLayout, log: &dyn Fn(&str)) -> anyhow::Result<Corpus> {
    Ok(match &opts.source {
        SourceSpec::Download { num_shards, config } => {
            anyhow::ensure!(*num_shards > 0, "--num-shards must be at least 1");
            anyhow::ensure!(
                *num_shards <= VAL_SHARD,
                "--num-shards must be at most {VAL_SHARD} (shard {VAL_SHARD} is validation)"
            );
            let mut indices: Vec<usize> = (0..*num_shards).collect();
            indices.push(VAL_SHARD);
            let dir = layout.data_dir();
            log(&format!(
                "downloading {} train shards + validation shard from {} into {}",
                num_shards,
                config.base_url,
                dir.display()
            ));
            let t0 = Instant::now();
            download_shards(&indices, &dir, config)?;
            log(&format!("shards ready in {:.1} s", t0.elapsed().as_secs_f64()));
            let train: Vec<usize> = (0..*num_shards).collect();
            shard_corpus(&dir, &train, format!("climbmix shards 0..{num_shards} from {}", config.base_url))
        }
        SourceSpec::Dir { dir, num_shards } => shard_dir_corpus(dir, *num_shards)?,
        SourceSpec::Files {
            text,
            jsonl,
            val,
            split,
            val_percent,
        } => text_corpus(text, jsonl, val, *split, *val_percent)?,
    })
}

/// Identifies a tokenizer training: settings plus the train text.
fn training_digest(opts: &PrepareOptions, train_digests: &[Digest32]) -> Digest32 {
    let mut h = Sha256::new();
    // v2: rustbpe's merge order and tiktoken's ids (v1 was the `tokenizers` crate's).
    h.update(b"bpe-v2\0");
    for n in [opts.vocab_size, opts.tokenizer_max_chars, opts.tokenizer_doc_max_chars] {
        h.update((n as u64).to_le_bytes());
    }
    h.update(SPLIT_PATTERN.as_bytes());
    for d in train_digests {
        h.update(d);
    }
    h.finalize().into()
}

fn tokenizer_for(
    opts: &PrepareOptions,
    layout: &CacheLayout,
    corpus: &Corpus,
    train_digests: &[Digest32],
    report: &mut PrepareReport,
    log: &dyn Fn(&str),
) -> anyhow::Result<BpeTokenizer> {
    let wanted = hex(&training_digest(opts, train_digests));
    if !opts.retrain_tokenizer
        && std::fs::read_to_string(layout.trained_on()).is_ok_and(|s| s.trim() == wanted)
        && let Ok(tok) = BpeTokenizer::load(&layout.tokenizer_json())
        && std::fs::read(layout.token_bytes()).is_ok_and(|b| b.len() == 4 * tok.vocab_size())
    {
        log(&format!("kept tokenizer {} ({} ids)", layout.tokenizer_json().display(), tok.vocab_size()));
        return Ok(tok);
    }
    log(&format!(
        "training the tokenizer ({} ids) on at most {} characters of {} train part(s)",
        opts.vocab_size,
        opts.tokenizer_max_chars,
        corpus.train.len()
    ));
    let t0 = Instant::now();
    let (tok, stats) = train_on_parts(
        &corpus.train,
        opts.vocab_size,
        opts.tokenizer_max_chars,
        opts.tokenizer_doc_max_chars,
        opts.progress,
    )?;
    report.tokenizer_trained = true;
    report.tokenizer_secs = t0.elapsed().as_secs_f64();
    report.tokenizer_docs = stats.documents;
    report.tokenizer_chars = stats.chars;
    if tok.vocab_size() < opts.vocab_size {
        log(&format!(
            "warning: the text is too small to learn {} ids; the vocabulary has {}",
            opts.vocab_size,
            tok.vocab_size()
        ));
    }
    create_dir(&layout.tokenizer_dir())?;
    // trained_on goes last: its presence means the other two are complete.
    let _ = std::fs::remove_file(layout.trained_on());
    tok.save(&layout.tokenizer_json())?;
    let bytes: Vec<u8> = tok.token_bytes().iter().flat_map(|b| b.to_le_bytes()).collect();
    write_atomic(&layout.token_bytes(), &bytes)
        .with_context(|| format!("cannot write {}", layout.token_bytes().display()))?;
    write_atomic(&layout.trained_on(), wanted.as_bytes())
        .with_context(|| format!("cannot write {}", layout.trained_on().display()))?;
    log(&format!(
        "trained tokenizer on {} documents, {} characters in {:.2} s -> {}",
        stats.documents,
        stats.chars,
        report.tokenizer_secs,
        layout.tokenizer_json().display()
    ));
    Ok(tok)
}

/// Tokenizes every document of `part`, in parallel across documents while the next chunk is
/// read; returns the documents, characters and bytes read.
fn tokenize_part(
    tokenizer: &BpeTokenizer,
    part: &Part,
    path: &std::path::Path,
    show_progress: bool,
) -> anyhow::Result<(TokenizedDocs, u64, u64)> {
    let mut docs = TokenizedDocs::new();
    let (mut chars, mut bytes) = (0u64, 0u64);
    let mut failure: Option<anyhow::Error> = None;
    let what = format!("tokenizing {}", part.name);
    let mut bar = Progress::new(show_progress, &what, Some(part.num_docs()?), "documents");
    for_each_chunk_prefetched(part, |chunk| {
        let encoded = tokenizer.encode_batch(&chunk);
        let chunk_bytes: u64 = chunk.iter().map(|t| t.len() as u64).sum();
        chars += chunk.iter().map(|t| t.chars().count() as u64).sum::<u64>();
        bytes += chunk_bytes;
        bar.advance(chunk.len() as u64, chunk_bytes);
        for ids in &encoded {
            if let Err(e) = docs.push(ids, path) {
                failure = Some(e.into());
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    anyhow::ensure!(
        !docs.is_empty(),
        "part {} holds no document; a source needs text in every shard",
        part.name
    );
    Ok((docs, chars, bytes))
}

#[cfg(test)]
mod tests;
