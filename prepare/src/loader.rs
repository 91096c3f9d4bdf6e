//! Packed data loader (TO BE IMPLEMENTED — interface fixed).
//!
//! BOS before every document; rows of `seq_len + 1` tokens filled by best-fit packing from a
//! buffer of at least [`crate::constants::PACKING_BUFFER_DOCS`] documents; no padding.

use burn::prelude::*;

use crate::data::PreparedData;

/// One batch of packed rows, on the host.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Rows in the batch.
    pub batch_size: usize,
    /// Positions per row.
    pub seq_len: usize,
    /// `row[..seq_len]` for every row, row-major, `batch_size * seq_len` ids.
    pub inputs: Vec<u32>,
    /// `row[1..]` for every row, row-major, `batch_size * seq_len` ids.
    pub targets: Vec<u32>,
    /// Completed passes over the train shards when this batch was cut (0 in the first pass).
    pub epoch: u64,
}

impl Batch {
    /// Inputs as a `[batch_size, seq_len]` int tensor on `device`.
    pub fn inputs_tensor(&self, device: &Device) -> Tensor<2, Int> {
        ids_tensor(&self.inputs, self.batch_size, self.seq_len, device)
    }

    /// Targets as a `[batch_size, seq_len]` int tensor on `device`.
    pub fn targets_tensor(&self, device: &Device) -> Tensor<2, Int> {
        ids_tensor(&self.targets, self.batch_size, self.seq_len, device)
    }
}

fn ids_tensor(ids: &[u32], rows: usize, cols: usize, device: &Device) -> Tensor<2, Int> {
    let ids: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
    Tensor::<2, Int>::from_data(TensorData::new(ids, [rows, cols]), device)
}

/// Best-fit packing loader over token files.
pub struct PackedLoader {
    // filled in by the implementation
}

impl PackedLoader {
    /// Endless loader over the train shards, deterministic for a given `seed`.
    pub fn train(
        data: &PreparedData,
        batch_size: usize,
        seq_len: usize,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let _ = (data, batch_size, seq_len, seed);
        todo!()
    }

    /// Loader over the pinned validation shard; a fresh one yields the same tokens every time.
    pub fn validation(data: &PreparedData, batch_size: usize, seq_len: usize) -> anyhow::Result<Self> {
        let _ = (data, batch_size, seq_len);
        todo!()
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> anyhow::Result<Batch> {
        todo!()
    }
}
