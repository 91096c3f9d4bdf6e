//! `prepare`: downloads or reads the text, trains the tokenizer, tokenizes every shard once.

use std::path::{Path, PathBuf};

use anyhow::Context;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use prepare::data::PreparedData;
use prepare::held_out;
use prepare::profile::PlatformProfile;
use prepare::constants::{self, BASE_URL, DEFAULT_TRAIN_SHARDS, DOWNLOAD_WORKERS, VAL_SHARD};
use prepare::download::DownloadConfig;
use prepare::pipeline::{PrepareOptions, SourceSpec, prepare};
use prepare::source::DocSplit;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Split {
    /// One document per blank-line-separated paragraph.
    Paragraph,
    /// One document per file.
    File,
}

/// Prepare the data for autoresearch: text -> BPE tokenizer -> token files -> a cache that
/// the trainer and the harness open.
///
/// With no source flag, downloads the climbmix shards 0..N (N = --num-shards, default 10) plus
/// the pinned validation shard 06542, as the reference prepare.py.
///
/// Examples:
///   prepare --num-shards 10                            # download, then prepare
///   prepare --source-dir /work/shared/data/classics    # shards already on disk
///   prepare --text book1.txt book2.txt --val-file held_out.txt
///   prepare --jsonl corpus.jsonl --val-percent 5
///
/// Cache (default $AUTORESEARCH_CACHE or ~/.cache/autoresearch):
///   data/shard_NNNNN.parquet   downloaded shards
///   tokenizer/tokenizer.json   BPE tokenizer (+ token_bytes, trained_on)
///   tokens/<part>.tok          one checksummed token file per shard
///   prepared.toml              manifest, written last
///
/// Re-running skips finished work: the tokenizer is kept when trained on the same text, a token
/// file when it verifies and matches the tokenizer and its text. A new tokenizer rebuilds them.
#[derive(Debug, Parser)]
#[command(name = "prepare", version, verbatim_doc_comment)]
struct Args {
    /// Cache directory [default: $AUTORESEARCH_CACHE, else ~/.cache/autoresearch].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Train shards: download shards 0..N; with --source-dir, use the first N train shards.
    #[arg(long, value_name = "N")]
    num_shards: Option<usize>,

    /// Read shards from DIR (shard_NNNNN.parquet with a `text` column, validation shard_06542).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["text", "jsonl", "base_url"])]
    source_dir: Option<PathBuf>,

    /// Plain-text files (UTF-8); documents are paragraphs (see --doc-split).
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "base_url")]
    text: Vec<PathBuf>,

    /// JSONL files, one object with a string field "text" per line.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with = "base_url")]
    jsonl: Vec<PathBuf>,

    /// With --text/--jsonl: validation documents come from these files (.jsonl/.json: JSONL,
    /// else plain text) instead of the tail of the input.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    val_file: Vec<PathBuf>,

    /// With --text/--jsonl and no --val-file: the last P % of the documents are validation.
    #[arg(long, value_name = "P", default_value_t = 10.0)]
    val_percent: f64,

    /// How plain-text files are cut into documents.
    #[arg(long, value_enum, default_value_t = Split::Paragraph)]
    doc_split: Split,

    /// Where to download shards from (a directory URL holding shard_NNNNN.parquet).
    #[arg(long, value_name = "URL", default_value = BASE_URL)]
    base_url: String,

    /// Parallel downloads.
    #[arg(long, value_name = "N", default_value_t = DOWNLOAD_WORKERS)]
    workers: usize,

    /// Vocabulary size, the 4 special tokens included (the reference uses 8192).
    #[arg(long, value_name = "N", default_value_t = constants::VOCAB_SIZE)]
    vocab_size: usize,

    /// Train the tokenizer again even if a matching one exists (rebuilds every token file).
    #[arg(long)]
    retrain_tokenizer: bool,

    /// Report the held-out split that each platform profile (*.toml) in DIR leaves: the
    /// validation documents its evaluation never reaches [default: configs/platforms, when it
    /// exists].
    #[arg(long, value_name = "DIR")]
    profiles: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable chain, no backtrace: the messages say what to do.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        (261..=65536).contains(&args.vocab_size),
        "--vocab-size must be in 261..=65536 (ids are stored as 16 bits), got {}",
        args.vocab_size
    );
    let cache_dir = args.cache_dir.clone().unwrap_or_else(constants::default_cache_dir);
    let split = match args.doc_split {
        Split::Paragraph => DocSplit::Paragraph,
        Split::File => DocSplit::File,
    };
    let source = if let Some(dir) = &args.source_dir {
        SourceSpec::Dir {
            dir: dir.clone(),
            num_shards: args.num_shards,
        }
    } else if !args.text.is_empty() || !args.jsonl.is_empty() {
        anyhow::ensure!(args.num_shards.is_none(), "--num-shards applies to shards, not to --text/--jsonl");
        SourceSpec::Files {
            text: args.text.clone(),
            jsonl: args.jsonl.clone(),
            val: args.val_file.clone(),
            split,
            val_percent: args.val_percent,
        }
    } else {
        SourceSpec::Download {
            num_shards: args.num_shards.unwrap_or(DEFAULT_TRAIN_SHARDS),
            config: DownloadConfig {
                base_url: args.base_url.clone(),
                workers: args.workers.max(1),
                backoff_base: Duration::from_secs(1),
                ..DownloadConfig::default()
            },
        }
    };
    if !args.val_file.is_empty() && !matches!(source, SourceSpec::Files { .. }) {
        anyhow::bail!("--val-file applies to --text/--jsonl; shards use shard_{VAL_SHARD:05} for validation");
    }
    let mut opts = PrepareOptions::new(cache_dir.clone(), source);
    opts.vocab_size = args.vocab_size;
    opts.retrain_tokenizer = args.retrain_tokenizer;

    let t0 = Instant::now();
    let report = prepare(&opts, &|line| eprintln!("{line}"))?;
    let total = t0.elapsed().as_secs_f64();
    println!("source:            {}", report.source);
    println!("cache:             {}", cache_dir.display());
    println!("train parts:       {}", report.train_parts);
    if report.tokenizer_trained {
        println!(
            "tokenizer:         trained in {:.2} s on {} documents, {} chars; {} ids",
            report.tokenizer_secs, report.tokenizer_docs, report.tokenizer_chars, report.vocab_size
        );
    } else {
        println!("tokenizer:         kept ({} ids)", report.vocab_size);
    }
    println!(
        "tokenized:         {} part(s), {} documents, {} chars, {:.1} MB in {:.2} s ({:.2} MB/s); {} part(s) kept",
        report.parts_tokenized,
        report.tokenized_docs,
        report.tokenized_chars,
        report.tokenized_bytes as f64 / 1e6,
        report.tokenize_secs,
        report.tokenize_mb_per_s(),
        report.parts_kept
    );
    println!("train:             {} documents, {} tokens", report.train_docs, report.train_tokens);
    println!("validation:        {} documents, {} tokens", report.val_docs, report.val_tokens);
    let profiles = args.profiles.clone().unwrap_or_else(|| PathBuf::from("configs/platforms"));
    if args.profiles.is_some() || profiles.is_dir() {
        report_held_out(&cache_dir, &profiles)?;
    }
    println!("total time:        {total:.2} s");
    Ok(())
}

/// One line per profile: the held-out split its evaluation leaves, or NONE, loudly.
fn report_held_out(cache_dir: &Path, dir: &Path) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the profiles in {} (--profiles)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let data = PreparedData::open(cache_dir)?;
    for file in files {
        let profile = match PlatformProfile::load(&file) {
            Ok(p) => p,
            Err(e) => {
                println!("held-out split:    {}: not reported: {e}", file.display());
                continue;
            }
        };
        let (b, t, steps) = (profile.eval_batch_size, profile.seq_len, profile.eval_steps());
        let validation = held_out::validation_docs(&data, b, t, steps)?;
        match held_out::split(&data, &validation, b, t, steps) {
            Some(s) => println!(
                "held-out split:    {}: {} documents, {} tokens past the {} documents its evaluation reads; {} batch(es) of {b} x {t} scored",
                profile.name,
                s.docs.len(),
                s.tokens,
                validation.len(),
                s.steps
            ),
            None => println!(
                "held-out split:    {}: NONE: its evaluation ({} tokens) reaches every validation document; prepare more validation text for one",
                profile.name, profile.eval_tokens
            ),
        }
    }
    Ok(())
}
