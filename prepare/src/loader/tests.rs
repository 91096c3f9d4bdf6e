//! Packing: no padding, BOS at every document start, full rows, crops, determinism, and an
//! oracle that follows the reference's Python line by line.

use std::path::Path;

use super::*;
use crate::token_file::{self, TokenizedDocs};

const BOS: u32 = 9999;

/// Document `d` of length `len`: ids `d * 16 + pos % 16`, so a segment tells where it came from.
fn doc(d: usize, len: usize) -> Vec<u32> {
    (0..len).map(|p| (d * 16 + p % 16) as u32 % 9000).collect()
}

fn file_of(dir: &Path, name: &str, docs: &[Vec<u32>]) -> Arc<TokenFile> {
    let mut t = TokenizedDocs::new();
    let path = dir.join(name);
    for d in docs {
        t.push(d, &path).unwrap();
    }
    token_file::write(&path, &t, [7; 32], [0; 32]).unwrap();
    Arc::new(TokenFile::open(&path, &[7; 32]).unwrap())
}

fn rows(batch: &Batch) -> Vec<Vec<u32>> {
    (0..batch.batch_size)
        .map(|r| {
            let t = batch.seq_len;
            let mut row = batch.inputs[r * t..(r + 1) * t].to_vec();
            assert_eq!(&row[1..], &batch.targets[r * t..(r + 1) * t - 1], "targets are inputs shifted by one");
            row.push(batch.targets[(r + 1) * t - 1]);
            row
        })
        .collect()
}

/// Varied lengths, from empty to longer than a row.
fn varied_docs(n: usize) -> Vec<Vec<u32>> {
    (0..n).map(|d| doc(d, (d * 37 + 11) % 90)).collect()
}

#[test]
fn rows_are_full_start_with_bos_and_hold_whole_documents_but_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let docs = varied_docs(1500);
    let f = file_of(dir.path(), "a.tok", &docs);
    let mut loader = PackedLoader::new(vec![f], BOS, 4, 64, Some(3)).unwrap();
    for _ in 0..50 {
        let batch = loader.next_batch().unwrap();
        assert_eq!(batch.inputs.len(), 4 * 64);
        assert_eq!(batch.targets.len(), 4 * 64);
        for row in rows(&batch) {
            assert_eq!(row.len(), 65);
            assert_eq!(row[0], BOS, "every row starts at a document");
            let segments: Vec<&[u32]> = row.split(|&t| t == BOS).skip(1).collect();
            for (k, seg) in segments.iter().enumerate() {
                // Identify the document by its first id (or accept an empty document).
                if seg.is_empty() {
                    continue;
                }
                let d = docs
                    .iter()
                    .find(|dd| dd.len() >= seg.len() && dd[..seg.len()] == **seg)
                    .expect("every segment is the start of a document");
                if k + 1 < segments.len() {
                    assert_eq!(d.len(), seg.len(), "only the last segment of a row may be cropped");
                }
            }
        }
    }
}

#[test]
fn same_seed_same_batches_other_seed_other_batches() {
    let dir = tempfile::tempdir().unwrap();
    let f = file_of(dir.path(), "a.tok", &varied_docs(3000));
    let take = |seed| {
        let mut l = PackedLoader::new(vec![f.clone()], BOS, 2, 32, Some(seed)).unwrap();
        (0..20).map(|_| l.next_batch().unwrap().inputs).collect::<Vec<_>>()
    };
    assert_eq!(take(1), take(1));
    assert_ne!(take(1), take(2));
}

#[test]
fn validation_loader_repeats_exactly_and_follows_file_order() {
    let dir = tempfile::tempdir().unwrap();
    // All documents longer than a row: every row is a crop of the next document in file order.
    let docs: Vec<Vec<u32>> = (0..1200).map(|d| doc(d, 40)).collect();
    let f = file_of(dir.path(), "v.tok", &docs);
    let mut a = PackedLoader::new(vec![f.clone()], BOS, 3, 16, None).unwrap();
    let mut b = PackedLoader::new(vec![f], BOS, 3, 16, None).unwrap();
    for i in 0..10 {
        let (x, y) = (a.next_batch().unwrap(), b.next_batch().unwrap());
        assert_eq!(x.inputs, y.inputs);
        for (r, row) in rows(&x).iter().enumerate() {
            let d = i * 3 + r;
            assert_eq!(row[0], BOS);
            assert_eq!(&row[1..], &docs[d][..16], "row {d} is the crop of document {d}");
        }
    }
}

#[test]
fn best_fit_takes_the_largest_document_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    // Lengths with BOS: 3, 6, 4, 5, repeated. Rows of 10: 6 + 4 twice in a row.
    let lens = [2, 5, 3, 4];
    let docs: Vec<Vec<u32>> = (0..1200).map(|d| doc(d, lens[d % 4])).collect();
    let f = file_of(dir.path(), "v.tok", &docs);
    let mut l = PackedLoader::new(vec![f], BOS, 2, 9, None).unwrap();
    let batch = l.next_batch().unwrap();
    let r = rows(&batch);
    let expect = |a: usize, b: usize| {
        let mut v = vec![BOS];
        v.extend(&docs[a]);
        v.push(BOS);
        v.extend(&docs[b]);
        v
    };
    assert_eq!(r[0], expect(1, 2));
    assert_eq!(r[1], expect(5, 6));
}

#[test]
fn train_side_counts_epochs_and_loops_forever() {
    let dir = tempfile::tempdir().unwrap();
    let f1 = file_of(dir.path(), "a.tok", &varied_docs(700));
    let f2 = file_of(dir.path(), "b.tok", &varied_docs(700));
    let mut l = PackedLoader::new(vec![f1, f2], BOS, 4, 128, Some(0)).unwrap();
    let first = l.next_batch().unwrap();
    assert_eq!(first.epoch, 0);
    let mut last = 0;
    for _ in 0..400 {
        let b = l.next_batch().unwrap();
        assert!(b.epoch >= last);
        last = b.epoch;
    }
    assert!(last >= 2, "epochs advance: {last}");
}

#[test]
fn an_empty_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = file_of(dir.path(), "e.tok", &[]);
    let err = PackedLoader::new(vec![f], BOS, 1, 8, None).err().unwrap().to_string();
    assert!(err.contains("no document"), "{err}");
}

#[test]
fn shuffle_is_a_permutation() {
    let mut v: Vec<u32> = (0..1000).collect();
    SplitMix64::new(5).shuffle(&mut v);
    assert_ne!(v, (0..1000).collect::<Vec<_>>());
    v.sort();
    assert_eq!(v, (0..1000).collect::<Vec<_>>());
}

/// The reference's `make_dataloader`, transcribed literally (lists, `pop`, refills of 128
/// documents from a generator that restarts the file at its end).
fn oracle(docs: &[Vec<u32>], b: usize, t: usize, batches: usize) -> Vec<Vec<u32>> {
    let mut stream = docs.iter().cycle();
    let n = docs.len();
    let mut pulled_in_pass = 0;
    let mut buffer: Vec<Vec<u32>> = Vec::new();
    let mut out = Vec::new();
    for _ in 0..batches {
        let mut batch = Vec::new();
        for _ in 0..b {
            let mut row: Vec<u32> = Vec::new();
            while row.len() < t + 1 {
                while buffer.len() < 1000 {
                    // One refill: up to 128 documents, never across the end of the file.
                    let k = 128.min(n - pulled_in_pass);
                    for _ in 0..k {
                        let mut d = vec![BOS];
                        d.extend(stream.next().unwrap());
                        buffer.push(d);
                    }
                    pulled_in_pass = (pulled_in_pass + k) % n;
                }
                let remaining = t + 1 - row.len();
                let mut best_idx = None;
                let mut best_len = 0;
                for (i, d) in buffer.iter().enumerate() {
                    if d.len() <= remaining && d.len() > best_len {
                        best_idx = Some(i);
                        best_len = d.len();
                    }
                }
                if let Some(i) = best_idx {
                    row.extend(buffer.remove(i));
                } else {
                    let s = (0..buffer.len()).min_by_key(|&i| buffer[i].len()).unwrap();
                    let d = buffer.remove(s);
                    row.extend(&d[..remaining]);
                }
            }
            batch.extend(&row[..t]);
        }
        out.push(batch);
    }
    out
}

#[test]
fn validation_matches_a_literal_transcription_of_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    for n in [300, 1300] {
        let docs = varied_docs(n);
        let f = file_of(dir.path(), &format!("v{n}.tok"), &docs);
        let mut l = PackedLoader::new(vec![f], BOS, 3, 50, None).unwrap();
        for (i, want) in oracle(&docs, 3, 50, 40).into_iter().enumerate() {
            assert_eq!(l.next_batch().unwrap().inputs, want, "n {n}, batch {i}");
        }
    }
}

#[test]
fn next_rows_gives_the_same_row_stream_as_next_batch_whatever_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let files = vec![file_of(dir.path(), "a.tok", &varied_docs(3000))];
    let mut batches = PackedLoader::new(files.clone(), BOS, 4, 32, Some(5)).unwrap();
    let want: Vec<Vec<u32>> = (0..6).flat_map(|_| rows(&batches.next_batch().unwrap())).collect();
    let mut loader = PackedLoader::new(files, BOS, 4, 32, Some(5)).unwrap();
    let mut got: Vec<Vec<u32>> = Vec::new();
    for n in [1, 7, 3, 13] {
        let flat = loader.next_rows(n);
        assert_eq!(flat.len(), n * 33);
        got.extend(flat.chunks(33).map(|r| r.iter().map(|&x| x as u32).collect::<Vec<u32>>()));
    }
    assert_eq!(got, want);
}
