//! The tokenizer's behaviour, and its identity with the reference (rustbpe + tiktoken) on the
//! committed test data (`testdata/tokenizer`, written once by `make_expected.py`).

use super::*;
use crate::source::{Origin, write_parquet_shard};

fn corpus() -> Vec<String> {
    let base = "The quick brown fox jumps over the lazy dog. naïve café — 日本語 🚀 \
                Numbers 12345 and 2024, it's, we'll, they've. ";
    (0..200)
        .map(|i| format!("{base} paragraph {i}\n\n"))
        .collect()
}

fn testdata(name: &str) -> String {
    let path = format!("{}/testdata/tokenizer/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn mixed_docs() -> Vec<String> {
    testdata("mixed.jsonl")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The learned tokens (ids 256 and up) of a tokenizer.
fn learned_tokens(tok: &BpeTokenizer) -> Vec<Vec<u8>> {
    (256..tok.bos_id())
        .map(|id| tok.token(id).unwrap().to_vec())
        .collect()
}

/// Merges that spell `tokens` (ids 256 and up, in order): any split into two earlier tokens
/// makes the same tokens, and encoding depends only on the tokens.
fn merges_spelling(tokens: &[Vec<u8>]) -> Vec<Pair> {
    let mut ids: std::collections::HashMap<Vec<u8>, u32> =
        (0..=255u8).map(|b| (vec![b], u32::from(b))).collect();
    tokens
        .iter()
        .enumerate()
        .map(|(k, t)| {
            let pair = (1..t.len())
                .find_map(|cut| Some((*ids.get(&t[..cut])?, *ids.get(&t[cut..])?)))
                .unwrap_or_else(|| panic!("token {} has no split into earlier tokens", 256 + k));
            ids.insert(t.clone(), 256 + k as u32);
            pair
        })
        .collect()
}

fn expected_cases() -> Vec<serde_json::Value> {
    let expected: serde_json::Value = serde_json::from_str(&testdata("expected.json")).unwrap();
    expected["cases"].as_array().unwrap().clone()
}

fn expected_ids(case: &serde_json::Value) -> Vec<Vec<u32>> {
    serde_json::from_value(case["ids"].clone()).unwrap()
}

#[test]
fn training_and_encoding_match_the_reference_on_mixed_text() {
    let docs = mixed_docs();
    let cases: Vec<_> = expected_cases()
        .into_iter()
        .filter(|c| c["trained_on"] == "mixed.jsonl")
        .collect();
    assert_eq!(cases.len(), 2);
    for case in cases {
        let vocab_size = case["vocab_size"].as_u64().unwrap() as usize;
        let want: Vec<Vec<u8>> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| hex_bytes(h.as_str().unwrap()))
            .collect();
        let tok = BpeTokenizer::train(&docs, vocab_size).unwrap();
        let ours = learned_tokens(&tok);
        if let Some(k) = (0..want.len().max(ours.len())).find(|&k| want.get(k) != ours.get(k)) {
            panic!(
                "vocab {vocab_size}: token {} is {:?} here, {:?} in the reference",
                256 + k,
                ours.get(k).map(|t| String::from_utf8_lossy(t)),
                want.get(k).map(|t| String::from_utf8_lossy(t))
            );
        }
        // The 8192 case runs out of pairs: the vocabulary shrinks, the specials follow it.
        assert_eq!(tok.vocab_size(), 256 + want.len() + 4);
        let expected = expected_ids(&case);
        for (doc, want) in docs.iter().zip(&expected) {
            assert_eq!(
                &tok.encode(doc),
                want,
                "vocab {vocab_size}, document {doc:?}"
            );
        }
        assert_eq!(tok.encode_batch(&docs), expected);
    }
}

#[test]
fn encoding_matches_the_reference_with_the_classics_vocabulary() {
    let tokens: Vec<Vec<u8>> = testdata("classics_tokens.txt")
        .lines()
        .map(hex_bytes)
        .collect();
    assert_eq!(tokens.len(), 8192 - 256 - 4);
    let tok =
        BpeTokenizer::from_json(file::to_json(&merges_spelling(&tokens)), "classics").unwrap();
    assert_eq!((tok.vocab_size(), tok.bos_id()), (8192, 8188));
    let case = expected_cases()
        .into_iter()
        .find(|c| c["trained_on"] == "classics")
        .unwrap();
    let docs = mixed_docs();
    for (doc, want) in docs.iter().zip(expected_ids(&case)) {
        let ids = tok.encode(doc);
        assert_eq!(ids, want, "document {doc:?}");
        assert_eq!(tok.decode(&ids).unwrap(), *doc);
    }
}

/// The full-size check: rustbpe's merges on the classics train shards, when they are around
/// (`../shared/data/classics`, outside the repository; a fresh clone skips this test).
#[test]
fn training_on_the_classics_shards_matches_the_reference() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/classics");
    let parts: Vec<Part> = ["shard_00000", "shard_00001"]
        .iter()
        .map(|name| Part {
            name: name.to_string(),
            origin: Origin::Parquet(dir.join(format!("{name}.parquet"))),
        })
        .collect();
    if !parts
        .iter()
        .all(|p| matches!(&p.origin, Origin::Parquet(path) if path.exists()))
    {
        eprintln!("skipped: no classics shards at {}", dir.display());
        return;
    }
    let (tok, stats) = train_on_parts(&parts, 8192, 1_000_000_000, 10_000, false).unwrap();
    assert_eq!(stats.documents, 3537);
    let want: Vec<Vec<u8>> = testdata("classics_tokens.txt")
        .lines()
        .map(hex_bytes)
        .collect();
    assert!(
        learned_tokens(&tok) == want,
        "the classics merges differ from rustbpe's"
    );
}

#[test]
fn round_trip_on_non_ascii_text() {
    let tok = BpeTokenizer::train(&corpus(), 400).unwrap();
    for text in ["naïve café — 日本語 🚀", "unseen: Ωμέγα ĳ 𝄞\r\n\ttabs", ""] {
        let ids = tok.encode(text);
        assert_eq!(tok.decode(&ids).unwrap(), text);
    }
}

#[test]
fn specials_come_last_and_have_zero_bytes() {
    let tok = BpeTokenizer::train(&corpus(), 300).unwrap();
    let v = tok.vocab_size();
    assert_eq!(v, 300);
    assert_eq!(tok.bos_id() as usize, v - 4);
    assert_eq!(tok.decode(&[tok.bos_id() + 3]).unwrap(), "<|reserved_3|>");
    let bytes = tok.token_bytes();
    assert_eq!(&bytes[v - 4..], &[0, 0, 0, 0]);
    assert!(bytes[..v - 4].iter().all(|&b| b > 0));
    // A special-token string inside a document is ordinary text, never BOS.
    let ids = tok.encode("a <|reserved_0|> b");
    assert!(!ids.contains(&tok.bos_id()));
    // token_bytes of an ASCII text sums to its length.
    let ids = tok.encode("The quick brown fox");
    let sum: u32 = ids.iter().map(|&i| bytes[i as usize]).sum();
    assert_eq!(sum as usize, "The quick brown fox".len());
}

#[test]
fn a_partial_character_counts_as_one_replacement_character() {
    let tok = BpeTokenizer::train(&corpus(), 300).unwrap();
    let bytes = tok.token_bytes();
    // Byte 0xE6 alone (the start of 日) decodes to U+FFFD: 3 bytes.
    assert_eq!(bytes[0xE6], 3);
    assert_eq!(bytes[usize::from(b'a')], 1);
}

#[test]
fn bad_ids_and_vocabulary_sizes_are_errors() {
    let tok = BpeTokenizer::train(&corpus(), 300).unwrap();
    let err = tok.decode(&[1, 300]).unwrap_err().to_string();
    assert!(
        err.contains("300") && err.contains("vocabulary of 300"),
        "{err}"
    );
    for v in [0, 260, 65537] {
        let err = BpeTokenizer::train(&corpus(), v).err().unwrap().to_string();
        assert!(
            err.contains(&v.to_string()) && err.contains("261..=65536"),
            "{err}"
        );
    }
    assert_eq!(
        BpeTokenizer::train(&corpus(), 261).unwrap().vocab_size(),
        261
    );
}

#[test]
fn saved_tokenizer_reloads_with_the_same_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let tok = BpeTokenizer::train(&corpus(), 300).unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let again = BpeTokenizer::load(&path).unwrap();
    assert_eq!(again.fingerprint(), tok.fingerprint());
    assert_eq!(again.merges(), tok.merges());
    let on_disk: Digest32 = Sha256::digest(std::fs::read(&path).unwrap()).into();
    assert_eq!(on_disk, tok.fingerprint());
    std::fs::write(&path, "{}").unwrap();
    let err = BpeTokenizer::load(&path).err().unwrap().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("re-run `prepare`"),
        "{err}"
    );
}

#[test]
fn another_vocabulary_has_another_fingerprint() {
    let a = BpeTokenizer::train(&corpus(), 300).unwrap();
    let b = BpeTokenizer::train(&corpus(), 301).unwrap();
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert_eq!(
        a.fingerprint(),
        BpeTokenizer::train(&corpus(), 300).unwrap().fingerprint()
    );
}

#[test]
fn training_stops_after_the_document_that_reaches_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard_00000.parquet");
    let docs = ["abcdefghij", "klmnopqrst", "uvwxyz", "never read"];
    write_parquet_shard(&path, &docs, 2).unwrap();
    let part = Part {
        name: "shard_00000".into(),
        origin: Origin::Parquet(path),
    };
    // As the reference: cut each document to 8 characters, stop once 12 are reached; the
    // second document crosses the limit and is kept whole (8 characters).
    let (_, stats) = train_on_parts(std::slice::from_ref(&part), 300, 12, 8, false).unwrap();
    assert_eq!((stats.documents, stats.chars), (2, 16));
    let (_, all) = train_on_parts(std::slice::from_ref(&part), 300, 1000, 8, false).unwrap();
    assert_eq!((all.documents, all.chars), (4, 8 + 8 + 6 + 8));
}

#[test]
fn cut_chars_respects_char_boundaries() {
    assert_eq!(cut_chars("日本語", 2), "日本");
    assert_eq!(cut_chars("ab", 5), "ab");
}
