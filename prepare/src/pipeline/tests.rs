//! End to end: small shards and text files in temp dirs -> a cache that opens; re-runs, stale
//! and damaged files; the uniform-model check of val_bpb.

use std::path::Path;

use burn::prelude::*;

use super::*;
use crate::eval::evaluate_bpb;
use experiment::LogitsModel;
use crate::loader::PackedLoader;
use crate::profile::PlatformProfile;
use crate::source::write_parquet_shard;

fn texts(n: usize, salt: &str) -> Vec<String> {
    let words = ["the", "quick", "brown", "fox", "naïve", "café", "日本語", "🚀", "over", "lazy", "dog"];
    (0..n)
        .map(|i| {
            let len = 5 + (i * 13) % 60;
            let body: Vec<&str> = (0..len).map(|k| words[(i * 7 + k * 3) % words.len()]).collect();
            format!("{salt} {i}: {}.", body.join(" "))
        })
        .collect()
}

fn shard_dir(dir: &Path) {
    for (i, n) in [(0usize, 400usize), (1, 300), (6542, 120)] {
        let t = texts(n, &format!("s{i}"));
        let refs: Vec<&str> = t.iter().map(|s| s.as_str()).collect();
        write_parquet_shard(&dir.join(crate::constants::shard_name(i)), &refs, 64).unwrap();
    }
}

fn opts(cache: &Path, source: SourceSpec) -> PrepareOptions {
    let mut o = PrepareOptions::new(cache.to_path_buf(), source);
    o.vocab_size = 320;
    o
}

fn quiet(_: &str) {}

#[test]
fn shard_directory_prepares_reruns_and_detects_damage() {
    let src = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    shard_dir(src.path());
    let o = opts(cache.path(), SourceSpec::Dir { dir: src.path().to_path_buf(), num_shards: None });

    let first = prepare(&o, &quiet).unwrap();
    assert!(first.tokenizer_trained);
    assert_eq!((first.parts_tokenized, first.parts_kept), (3, 0));
    assert_eq!((first.train_docs, first.val_docs), (700, 120));
    let data = PreparedData::open(cache.path()).unwrap();
    assert_eq!(data.vocab_size(), 320);
    assert_eq!(data.bos_id(), 316);
    assert_eq!(data.train_files().len(), 2);

    // A re-run keeps everything.
    let again = prepare(&o, &quiet).unwrap();
    assert!(!again.tokenizer_trained);
    assert_eq!((again.parts_tokenized, again.parts_kept), (0, 3));

    // A flipped byte: open refuses, naming the file; prepare rebuilds it.
    let tok = cache.path().join("tokens/shard_00001.tok");
    let mut bytes = std::fs::read(&tok).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&tok, &bytes).unwrap();
    let err = format!("{:#}", PreparedData::open(cache.path()).err().unwrap());
    assert!(err.contains("shard_00001.tok") && err.contains("damaged"), "{err}");
    let fixed = prepare(&o, &quiet).unwrap();
    assert_eq!((fixed.parts_tokenized, fixed.parts_kept), (1, 2));

    // Truncation too.
    let bytes = std::fs::read(&tok).unwrap();
    std::fs::write(&tok, &bytes[..bytes.len() - 3]).unwrap();
    let err = format!("{:#}", PreparedData::open(cache.path()).err().unwrap());
    assert!(err.contains("truncated"), "{err}");

    // Another tokenizer makes every token file stale; prepare rebuilds all of them.
    let mut o2 = o.clone();
    o2.vocab_size = 330;
    let rebuilt = prepare(&o2, &quiet).unwrap();
    assert!(rebuilt.tokenizer_trained);
    assert_eq!(rebuilt.parts_tokenized, 3);
    assert_eq!(PreparedData::open(cache.path()).unwrap().vocab_size(), 330);
}

#[test]
fn a_swapped_tokenizer_is_refused_with_advice() {
    let src = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    shard_dir(src.path());
    prepare(&opts(cache.path(), SourceSpec::Dir { dir: src.path().to_path_buf(), num_shards: None }), &quiet).unwrap();
    let mut o = opts(other.path(), SourceSpec::Dir { dir: src.path().to_path_buf(), num_shards: None });
    o.vocab_size = 300;
    prepare(&o, &quiet).unwrap();
    std::fs::copy(other.path().join("tokenizer/tokenizer.json"), cache.path().join("tokenizer/tokenizer.json")).unwrap();
    let err = format!("{:#}", PreparedData::open(cache.path()).err().unwrap());
    assert!(err.contains("re-run `prepare`"), "{err}");
}

#[test]
fn missing_cache_says_to_run_prepare() {
    let cache = tempfile::tempdir().unwrap();
    let err = format!("{:#}", PreparedData::open(cache.path()).err().unwrap());
    assert!(err.contains("no prepared data") && err.contains("prepare"), "{err}");
}

#[test]
fn text_and_jsonl_files_prepare_with_a_validation_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let txt = dir.path().join("a.txt");
    std::fs::write(&txt, texts(200, "t").join("\n\n")).unwrap();
    let jsonl = dir.path().join("b.jsonl");
    let lines: Vec<String> = texts(100, "j")
        .iter()
        .map(|t| serde_json::json!({ "text": t, "id": 1 }).to_string())
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let val = dir.path().join("v.txt");
    std::fs::write(&val, texts(30, "v").join("\n\n")).unwrap();
    let o = opts(
        &cache,
        SourceSpec::Files { text: vec![txt], jsonl: vec![jsonl], val: vec![val], split: DocSplit::Paragraph, val_percent: 10.0 },
    );
    let r = prepare(&o, &quiet).unwrap();
    assert_eq!((r.train_docs, r.val_docs), (300, 30));
    let data = PreparedData::open(&cache).unwrap();
    let tok = BpeTokenizer::load(&data.tokenizer_path()).unwrap();
    // Token files hold documents without BOS, decoding back to the text.
    let first = data.val_file().doc(0);
    assert!(!first.contains(&data.bos_id()));
    assert_eq!(tok.decode(&first).unwrap(), texts(30, "v")[0]);
}

#[test]
fn bad_sources_fail_before_touching_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = prepare(&opts(&cache, SourceSpec::Dir { dir: empty.clone(), num_shards: None }), &quiet)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shard_06542"), "{err}");
    std::fs::write(empty.join("shard_00000.parquet"), "not parquet at all").unwrap();
    std::fs::write(empty.join("shard_06542.parquet"), "not parquet either").unwrap();
    let err = format!("{:#}", prepare(&opts(&cache, SourceSpec::Dir { dir: empty, num_shards: None }), &quiet).unwrap_err());
    assert!(err.contains("not a readable parquet"), "{err}");
    assert!(!cache.join("prepared.toml").exists());
    assert!(!cache.join("tokenizer/tokenizer.json").exists(), "no tokenizer from bad input");
}

/// Returns all-zero logits: every target costs exactly ln V nats.
struct Uniform {
    vocab: usize,
}

impl LogitsModel for Uniform {
    fn logits(&self, inputs: Tensor<2, Int>) -> Tensor<3> {
        let [b, t] = inputs.dims();
        Tensor::zeros([b, t, self.vocab], &inputs.device())
    }
}

#[test]
fn uniform_model_scores_ln_v_per_counted_token() {
    let src = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    shard_dir(src.path());
    prepare(&opts(cache.path(), SourceSpec::Dir { dir: src.path().to_path_buf(), num_shards: None }), &quiet).unwrap();
    let data = PreparedData::open(cache.path()).unwrap();
    let profile = PlatformProfile {
        seq_len: 256,
        eval_batch_size: 4,
        eval_tokens: 256 * 4 * 5,
        ..PlatformProfile::default()
    };
    let device = Device::flex();
    let sums = evaluate_bpb(&Uniform { vocab: data.vocab_size() }, &data, &profile, &device).unwrap();

    // N and bytes, counted straight from the batches.
    let mut loader = PackedLoader::validation(&data, 4, 256).unwrap();
    let (mut n, mut bytes) = (0u64, 0u64);
    for _ in 0..5 {
        for &t in &loader.next_batch().unwrap().targets {
            let b = data.token_bytes()[t as usize];
            if b > 0 {
                n += 1;
                bytes += b as u64;
            }
        }
    }
    assert!(n > 0 && n < 5 * 4 * 256, "specials (BOS targets) are masked");
    assert_eq!((sums.tokens, sums.bytes), (n, bytes));
    let v = data.vocab_size() as f64;
    let want = n as f64 * v.ln() / (std::f64::consts::LN_2 * bytes as f64);
    assert!((sums.bpb() - want).abs() < 1e-6 * want, "bpb {} vs {want}", sums.bpb());
}
