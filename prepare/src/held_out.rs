//! The held-out split: the validation shard's documents that a profile's evaluation never
//! reaches. No keep decision and no proposer sees its scores; it measures how much the
//! selection of many noisy experiments on the same validation rows overstates the best's gain.
//!
//! The evaluation packs rows from the validation shard's start ([`PackedLoader::validation`]);
//! every document it places into a row, whole or cropped, belongs to validation. The rest, in
//! file order and packed the same way, is the held-out split, scored for at most as many
//! batches as the evaluation.

use std::collections::BTreeSet;

use crate::data::PreparedData;
use crate::loader::PackedLoader;

/// `(file, doc)`: a document of a loader's token files.
pub type Doc = (u32, u32);

/// The held-out documents of one evaluation shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldOutSplit {
    /// `(0, doc)` of the validation shard, in file order.
    pub docs: Vec<Doc>,
    /// Their tokens, a BOS each included.
    pub tokens: u64,
    /// Batches of `batch_rows x seq_len` that one pass over them fills, at most the
    /// evaluation's: no held-out document is scored twice.
    pub steps: usize,
}

/// The documents that `steps` validation batches of `batch_rows x seq_len` hold.
pub fn validation_docs(data: &PreparedData, batch_rows: usize, seq_len: usize, steps: usize) -> anyhow::Result<BTreeSet<Doc>> {
    let mut loader = PackedLoader::validation(data, batch_rows, seq_len)?;
    for _ in 0..steps {
        loader.next_batch()?;
    }
    Ok(loader.placed().clone())
}

/// The held-out split left when the validation rows hold `exclude`; None when its documents
/// fill no batch.
pub fn split(data: &PreparedData, exclude: &BTreeSet<Doc>, batch_rows: usize, seq_len: usize, max_steps: usize) -> Option<HeldOutSplit> {
    let val = data.val_file();
    let docs: Vec<Doc> = (0..val.num_docs() as u32).map(|d| (0, d)).filter(|d| !exclude.contains(d)).collect();
    let tokens: u64 = docs.iter().map(|&(_, d)| val.doc_len(d as usize) as u64 + 1).sum();
    let mut split = HeldOutSplit { docs, tokens, steps: 0 };
    // Pack them once, as the evaluation will, to count the batches they fill.
    let mut dry = loader(data, &split, batch_rows, seq_len).ok()?;
    while split.steps < max_steps && dry.next_batch().is_ok() {
        split.steps += 1;
    }
    (split.steps > 0).then_some(split)
}

/// A loader over the held-out documents, packed as the evaluation packs, each read once.
pub fn loader(data: &PreparedData, split: &HeldOutSplit, batch_rows: usize, seq_len: usize) -> anyhow::Result<PackedLoader> {
    PackedLoader::over_docs(vec![data.val_file().clone()], split.docs.clone(), data.bos_id(), batch_rows, seq_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Token ranges: every held-out row's tokens come from documents no validation row holds.
    #[test]
    fn the_split_shares_no_document_with_the_validation_rows() {
        let dir = tempfile::tempdir().unwrap();
        crate::fixtures::prepare_tiny_cache(dir.path()).unwrap();
        let data = PreparedData::open(dir.path()).unwrap();
        let (b, t, steps) = (4, 32, 4);
        let val = validation_docs(&data, b, t, steps).unwrap();
        let s = split(&data, &val, b, t, steps).expect("the tiny cache has documents past 4 batches");
        assert!(s.docs.iter().all(|d| !val.contains(d)));
        assert_eq!(s.docs.len() + val.len(), data.val_file().num_docs());
        let mut l = loader(&data, &s, b, t).unwrap();
        for _ in 0..s.steps {
            l.next_batch().unwrap();
        }
        assert!(l.placed().is_disjoint(&val) && l.epoch() == 0, "held-out batches reuse no document");
        // One pass: the batches run out instead of repeating a document.
        if s.steps < steps {
            assert!(l.next_batch().is_err());
        }
        // An evaluation as long as the shard leaves nothing.
        let all = validation_docs(&data, b, t, 10_000).unwrap();
        assert!(split(&data, &all, b, t, steps).is_none());
    }
}
