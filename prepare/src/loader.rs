//! Packed data loader, as the reference `make_dataloader`.
//!
//! BOS before every document; rows of `seq_len + 1` tokens filled by best-fit packing from a
//! buffer of at least [`crate::constants::PACKING_BUFFER_DOCS`] documents; no padding.
//!
//! - Before every placement the buffer is topped up, [`REFILL_DOCS`] documents at a time, until
//!   it holds at least `PACKING_BUFFER_DOCS`.
//! - The largest buffered document that fits the room left in the row is placed whole (the
//!   first one among equals); when none fits, the shortest (the first among equals) is cropped
//!   to fill the row exactly and its remainder is discarded.
//! - Validation reads the validation token file in file order, so with climbmix's row groups of
//!   1024 documents it sees exactly the reference's documents in the reference's order; a fresh
//!   loader repeats the same batches. Train reads every train document once per epoch, in an
//!   order shuffled by a splitmix64 generator seeded from `seed` and the epoch.
//! - Both loop forever; `Batch::epoch` counts completed passes.

use std::sync::Arc;

use crate::constants::PACKING_BUFFER_DOCS;
use crate::data::PreparedData;
use crate::token_file::TokenFile;

/// Documents added to the buffer per refill (the reference's tokenizer batch).
pub const REFILL_DOCS: usize = 128;

/// One batch of packed rows, on the host (the type lives on the trainer's side of the contract,
/// which cuts training steps into the same shape).
pub use experiment::Batch;

/// A document waiting in the packing buffer; `len` counts its BOS.
#[derive(Debug, Clone, Copy)]
struct Buffered {
    file: u32,
    doc: u32,
    len: usize,
}

/// splitmix64: a small, well-mixed generator; enough to shuffle document order.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (n > 0), by rejection so that it has no bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Best-fit packing loader over token files.
pub struct PackedLoader {
    files: Vec<Arc<TokenFile>>,
    bos: u32,
    batch_size: usize,
    seq_len: usize,
    /// `Some(seed)` on the train side: the order is reshuffled every epoch.
    seed: Option<u64>,
    /// `(file, doc)` of every document, in this epoch's order.
    order: Vec<(u32, u32)>,
    cursor: usize,
    epoch: u64,
    buffer: Vec<Buffered>,
    row: Vec<u32>,
    /// `(file, doc)` of every document placed (whole or cropped) into a row so far.
    placed: std::collections::BTreeSet<(u32, u32)>,
    /// Read the documents once, never starting a second pass ([`PackedLoader::over_docs`]).
    single_pass: bool,
}

impl PackedLoader {
    /// Endless loader over the train shards, deterministic for a given `seed`.
    pub fn train(
        data: &PreparedData,
        batch_size: usize,
        seq_len: usize,
        seed: u64,
    ) -> anyhow::Result<Self> {
        Self::new(data.train_files().to_vec(), data.bos_id(), batch_size, seq_len, Some(seed))
    }

    /// Loader over the pinned validation shard; a fresh one yields the same tokens every time.
    pub fn validation(data: &PreparedData, batch_size: usize, seq_len: usize) -> anyhow::Result<Self> {
        Self::new(vec![data.val_file().clone()], data.bos_id(), batch_size, seq_len, None)
    }

    /// A loader over `files`; `seed: None` keeps file order.
    pub fn new(
        files: Vec<Arc<TokenFile>>,
        bos: u32,
        batch_size: usize,
        seq_len: usize,
        seed: Option<u64>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(batch_size > 0 && seq_len > 0, "batch size and sequence length must be positive");
        let order: Vec<(u32, u32)> = files
            .iter()
            .enumerate()
            .flat_map(|(f, file)| (0..file.num_docs() as u32).map(move |d| (f as u32, d)))
            .collect();
        Self::with_order(files, order, bos, batch_size, seq_len, seed)
    }

    /// A loader over some documents of `files` only, `(file, doc)` in the order given (no
    /// shuffle), each read once: the held-out documents of the validation shard. Its
    /// `next_batch` fails once they cannot fill another batch.
    pub fn over_docs(files: Vec<Arc<TokenFile>>, docs: Vec<(u32, u32)>, bos: u32, batch_size: usize, seq_len: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(
            docs.iter().all(|&(f, d)| files.get(f as usize).is_some_and(|file| (d as usize) < file.num_docs())),
            "a document outside the token files"
        );
        let mut this = Self::with_order(files, docs, bos, batch_size, seq_len, None)?;
        this.single_pass = true;
        Ok(this)
    }

    fn with_order(files: Vec<Arc<TokenFile>>, order: Vec<(u32, u32)>, bos: u32, batch_size: usize, seq_len: usize, seed: Option<u64>) -> anyhow::Result<Self> {
        anyhow::ensure!(batch_size > 0 && seq_len > 0, "batch size and sequence length must be positive");
        anyhow::ensure!(!order.is_empty(), "the token files hold no document; re-run `prepare`");
        let mut this = Self {
            files,
            bos,
            batch_size,
            seq_len,
            seed,
            order,
            cursor: 0,
            epoch: 0,
            buffer: Vec::with_capacity(PACKING_BUFFER_DOCS + REFILL_DOCS),
            row: Vec::with_capacity(seq_len + 1),
            placed: std::collections::BTreeSet::new(),
            single_pass: false,
        };
        this.shuffle_for_epoch();
        Ok(this)
    }

    fn shuffle_for_epoch(&mut self) {
        if let Some(seed) = self.seed {
            let mut rng = SplitMix64::new(seed ^ self.epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
            self.order.sort_unstable();
            rng.shuffle(&mut self.order);
        }
    }

    fn refill(&mut self) {
        for _ in 0..REFILL_DOCS {
            if self.cursor == self.order.len() {
                if self.single_pass {
                    return;
                }
                self.epoch += 1;
                self.cursor = 0;
                self.shuffle_for_epoch();
                if self.seed.is_none() {
                    // A pass ends a refill chunk, as the reference's per-file row groups do.
                    return;
                }
            }
            let (file, doc) = self.order[self.cursor];
            self.cursor += 1;
            let len = self.files[file as usize].doc_len(doc as usize) + 1;
            self.buffer.push(Buffered { file, doc, len });
        }
    }

    fn place(&mut self, doc: Buffered, take: usize) {
        self.placed.insert((doc.file, doc.doc));
        self.row.push(self.bos);
        if take > 1 {
            self.files[doc.file as usize].extend_doc(doc.doc as usize, take - 1, &mut self.row);
        }
    }

    /// Fills one row of `seq_len + 1` tokens; false when a single pass has run out of
    /// documents first.
    fn fill_row(&mut self) -> bool {
        let capacity = self.seq_len + 1;
        self.row.clear();
        while self.row.len() < capacity {
            while self.buffer.len() < PACKING_BUFFER_DOCS {
                if self.single_pass && self.cursor == self.order.len() {
                    break;
                }
                self.refill();
            }
            if self.buffer.is_empty() {
                return false;
            }
            let room = capacity - self.row.len();
            let mut best: Option<usize> = None;
            let mut best_len = 0;
            for (i, d) in self.buffer.iter().enumerate() {
                if d.len <= room && d.len > best_len {
                    best = Some(i);
                    best_len = d.len;
                }
            }
            match best {
                Some(i) => {
                    let doc = self.buffer.remove(i);
                    self.place(doc, doc.len);
                }
                None => {
                    let mut shortest = 0;
                    for (i, d) in self.buffer.iter().enumerate() {
                        if d.len < self.buffer[shortest].len {
                            shortest = i;
                        }
                    }
                    let doc = self.buffer.remove(shortest);
                    self.place(doc, room);
                }
            }
        }
        debug_assert_eq!(self.row.len(), capacity);
        true
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> anyhow::Result<Batch> {
        let (b, t) = (self.batch_size, self.seq_len);
        let mut inputs = Vec::with_capacity(b * t);
        let mut targets = Vec::with_capacity(b * t);
        for _ in 0..b {
            anyhow::ensure!(self.fill_row(), "the documents ran out: a single pass over {} of them fills no more rows", self.order.len());
            inputs.extend_from_slice(&self.row[..t]);
            targets.extend_from_slice(&self.row[1..]);
        }
        Ok(Batch {
            batch_size: b,
            seq_len: t,
            inputs,
            targets,
            epoch: self.epoch,
        })
    }

    /// The next `rows` packed rows of `seq_len + 1` tokens each, row-major, as the wire
    /// protocol carries them (ids fit 16 bits: token files store them so). The same row stream
    /// as [`PackedLoader::next_batch`], whatever the counts asked for.
    pub fn next_rows(&mut self, rows: usize) -> Vec<u16> {
        let mut out = Vec::with_capacity(rows * (self.seq_len + 1));
        for _ in 0..rows {
            let filled = self.fill_row();
            debug_assert!(filled, "training loaders never run out");
            out.extend(self.row.iter().map(|&id| id as u16));
        }
        out
    }

    /// Every `(file, doc)` placed into a row so far, whole or cropped.
    pub fn placed(&self) -> &std::collections::BTreeSet<(u32, u32)> {
        &self.placed
    }

    /// Tokens (a BOS each included) of the documents in this loader's order.
    pub fn order_tokens(&self) -> u64 {
        self.order.iter().map(|&(f, d)| self.files[f as usize].doc_len(d as usize) as u64 + 1).sum()
    }

    /// Completed passes over the documents so far.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

#[cfg(test)]
mod tests;
