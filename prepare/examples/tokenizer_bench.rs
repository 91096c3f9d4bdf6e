//! Times our tokenizer on a shard directory the way `bench/tokenizer_vs_reference.py` times
//! rustbpe and tiktoken: training on the train shards (documents cut to 10,000 characters)
//! and encoding every shard, the text already in memory. Prints one JSON line.
//!
//!     cargo run --release --example tokenizer_bench -- DIR [--threads N]

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use prepare::constants::{TOKENIZER_DOC_MAX_CHARS, VAL_SHARD, VOCAB_SIZE, shard_name};
use prepare::source::read_parquet;
use prepare::tokenizer::{BpeTokenizer, cut_chars};
use sha2::{Digest, Sha256};

fn hex(h: Sha256) -> String {
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: tokenizer_bench DIR [--threads N]"))?,
    );
    let threads = match (args.next().as_deref(), args.next()) {
        (Some("--threads"), Some(n)) => n.parse()?,
        (None, _) => std::thread::available_parallelism()?.get(),
        _ => anyhow::bail!("usage: tokenizer_bench DIR [--threads N]"),
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    let mut shards: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    shards.sort();
    let mut train = Vec::new();
    let mut all = Vec::new();
    for path in &shards {
        read_parquet(path, |docs| {
            all.extend_from_slice(docs);
            ControlFlow::Continue(())
        })?;
        if path
            .file_name()
            .is_some_and(|n| *n != *shard_name(VAL_SHARD))
        {
            read_parquet(path, |docs| {
                train.extend(
                    docs.iter()
                        .map(|d| cut_chars(d, TOKENIZER_DOC_MAX_CHARS).to_string()),
                );
                ControlFlow::Continue(())
            })?;
        }
    }

    let t0 = Instant::now();
    let tok = BpeTokenizer::train(&train, VOCAB_SIZE)?;
    let train_s = t0.elapsed().as_secs_f64();

    let t0 = Instant::now();
    let ids = tok.encode_batch(&all);
    let encode_s = t0.elapsed().as_secs_f64();

    let train_mb = train.iter().map(|d| d.len()).sum::<usize>() as f64 / 1e6;
    let encode_mb = all.iter().map(|d| d.len()).sum::<usize>() as f64 / 1e6;
    let tokens: usize = ids.iter().map(|d| d.len()).sum();
    // Digests the reference side computes the same way, so one run also checks identity.
    let mut vocab = Sha256::new();
    for id in 0..tok.bos_id() {
        let bytes = tok.token(id)?;
        vocab.update((bytes.len() as u32).to_le_bytes());
        vocab.update(bytes);
    }
    let mut all_ids = Sha256::new();
    for doc in &ids {
        all_ids.update((doc.len() as u32).to_le_bytes());
        doc.iter().for_each(|id| all_ids.update(id.to_le_bytes()));
    }
    println!(
        "{}",
        serde_json::json!({
            "threads": threads,
            "train_docs": train.len(), "train_mb": train_mb, "train_s": train_s,
            "vocab_size": tok.vocab_size(),
            "encode_docs": all.len(), "encode_mb": encode_mb, "encode_s": encode_s, "tokens": tokens,
            "vocab_sha256": hex(vocab), "ids_sha256": hex(all_ids),
        })
    );
    Ok(())
}
