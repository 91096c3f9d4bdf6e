//! BPE training: count the pieces of the text, then learn merges in rustbpe's order.
//!
//! rustbpe (the reference's trainer) merges, at each step, the pair of adjacent ids with the
//! highest count over all pieces weighted by how often each piece occurs, ties going to the
//! smallest pair `(left, right)`; merge `k` makes id `256 + k`; it stops early when no pair is
//! left. Only the result is pinned, so the data structures here are our own: a flat arena of
//! pieces, pair counts in a hash map, a max-heap with lazy refresh (a count only goes down
//! once a pair is queued, so a popped entry whose count is stale goes back with its current
//! count, and the first fresh entry popped is the true maximum).

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rayon::prelude::*;
use rustc_hash::FxHashMap;
use thread_local::ThreadLocal;

use super::split::pieces;

/// Two adjacent ids.
pub type Pair = (u32, u32);

/// How often each piece occurs in the training text, counted on every core.
///
/// Each thread counts into its own map for the whole run, so adding text never waits on a
/// lock; [`PieceCounts::into_counts`] merges the maps once at the end.
#[derive(Default)]
pub struct PieceCounts {
    per_thread: ThreadLocal<RefCell<FxHashMap<Box<str>, u64>>>,
}

impl PieceCounts {
    /// Counts the pieces of every document, in parallel.
    pub fn add_docs<S: AsRef<str> + Sync>(&self, docs: &[S]) {
        docs.par_iter().for_each(|doc| self.add_doc(doc.as_ref()));
    }

    /// Counts the pieces of one document on the calling thread.
    pub fn add_doc(&self, doc: &str) {
        let mut counts = self.per_thread.get_or_default().borrow_mut();
        for piece in pieces(doc) {
            // Look up by reference first: most pieces are already there, so no allocation.
            match counts.get_mut(piece) {
                Some(n) => *n += 1,
                None => {
                    counts.insert(piece.into(), 1);
                }
            }
        }
    }

    /// The counts of all threads together.
    fn into_counts(self) -> FxHashMap<Box<str>, u64> {
        let mut maps: Vec<_> = self
            .per_thread
            .into_iter()
            .map(RefCell::into_inner)
            .collect();
        maps.sort_by_key(|m| Reverse(m.len()));
        let mut maps = maps.into_iter();
        let mut all = maps.next().unwrap_or_default();
        for map in maps {
            for (piece, n) in map {
                *all.entry(piece).or_default() += n;
            }
        }
        all
    }
}

/// Every distinct piece of two or more bytes as ids, with its count.
struct Words {
    /// The ids of all words, one after another; a merge shortens a word in place.
    ids: Vec<u32>,
    /// Word `w` is `ids[start[w]..start[w] + len[w]]`.
    start: Vec<usize>,
    len: Vec<u32>,
    count: Vec<u64>,
}

impl Words {
    fn new(counts: FxHashMap<Box<str>, u64>) -> Self {
        let mut words = Self {
            ids: Vec::new(),
            start: Vec::new(),
            len: Vec::new(),
            count: Vec::new(),
        };
        // One-byte pieces hold no pair: they cannot change any merge.
        for (piece, n) in counts.into_iter().filter(|(p, _)| p.len() >= 2) {
            words.start.push(words.ids.len());
            words.len.push(piece.len() as u32);
            words.count.push(n);
            words.ids.extend(piece.bytes().map(u32::from));
        }
        words
    }

    fn word(&self, w: usize) -> &[u32] {
        &self.ids[self.start[w]..self.start[w] + self.len[w] as usize]
    }
}

/// Pair counts plus, for every pair, the words it may occur in.
#[derive(Default)]
struct PairIndex {
    counts: FxHashMap<Pair, i64>,
    /// Word indices, ascending, no duplicates; may name words where the pair is gone.
    words: FxHashMap<Pair, Vec<u32>>,
}

impl PairIndex {
    fn add(&mut self, pair: Pair, delta: i64) {
        *self.counts.entry(pair).or_default() += delta;
    }

    fn count(&self, pair: Pair) -> i64 {
        self.counts.get(&pair).copied().unwrap_or(0)
    }
}

/// Records that `pair` occurs in word `w`; words arrive in ascending order.
fn note_word(index: &mut FxHashMap<Pair, Vec<u32>>, pair: Pair, w: usize) {
    let words = index.entry(pair).or_default();
    if words.last() != Some(&(w as u32)) {
        words.push(w as u32);
    }
}

/// Learns at most `max_merges` merges from the piece counts; merge `k` makes id `256 + k`.
pub fn learn_merges(
    counts: PieceCounts,
    max_merges: usize,
    mut progress: impl FnMut(usize),
) -> Vec<Pair> {
    let mut words = Words::new(counts.into_counts());
    let mut index = PairIndex::default();
    for w in 0..words.count.len() {
        let n = words.count[w] as i64;
        for p in words.word(w).windows(2) {
            index.add((p[0], p[1]), n);
            note_word(&mut index.words, (p[0], p[1]), w);
        }
    }
    // Max count first; on equal counts, the smallest pair (Reverse).
    let mut heap: BinaryHeap<(i64, Reverse<Pair>)> = index
        .counts
        .iter()
        .filter(|&(_, &n)| n > 0)
        .map(|(&p, &n)| (n, Reverse(p)))
        .collect();
    let mut merges = Vec::with_capacity(max_merges);
    let mut created: FxHashMap<Pair, Vec<u32>> = FxHashMap::default();
    while merges.len() < max_merges {
        let Some((queued, Reverse(pair))) = heap.pop() else {
            break;
        };
        let current = index.count(pair);
        if current <= 0 {
            continue;
        }
        if queued != current {
            heap.push((current, Reverse(pair)));
            continue;
        }
        let new_id = 256 + merges.len() as u32;
        merges.push(pair);
        for w in index.words.remove(&pair).unwrap_or_default() {
            merge_in_word(
                &mut words,
                w as usize,
                pair,
                new_id,
                &mut index,
                &mut created,
            );
        }
        index.counts.remove(&pair);
        // Every pair a merge creates holds the new id, so it was never queued before.
        for (p, ws) in created.drain() {
            let n = index.count(p);
            if n > 0 {
                heap.push((n, Reverse(p)));
                index.words.insert(p, ws);
            }
        }
        progress(merges.len());
    }
    merges
}

/// Replaces every non-overlapping `pair` in word `w` (left to right) by `new_id`, updating the
/// pair counts by the word's count and noting the new pairs in `created`.
fn merge_in_word(
    words: &mut Words,
    w: usize,
    (a, b): Pair,
    new_id: u32,
    index: &mut PairIndex,
    created: &mut FxHashMap<Pair, Vec<u32>>,
) {
    let n = words.count[w] as i64;
    let len = words.len[w] as usize;
    let start = words.start[w];
    let ids = &mut words.ids[start..start + len];
    // `out` trails `i`, so the ids still to read are never overwritten.
    let (mut out, mut i) = (0, 0);
    while i < len {
        if i + 1 < len && ids[i] == a && ids[i + 1] == b {
            if out > 0 {
                let left = ids[out - 1];
                index.add((left, a), -n);
                index.add((left, new_id), n);
                note_word(created, (left, new_id), w);
            }
            if i + 2 < len {
                let right = ids[i + 2];
                index.add((b, right), -n);
                index.add((new_id, right), n);
                note_word(created, (new_id, right), w);
            }
            ids[out] = new_id;
            i += 2;
        } else {
            ids[out] = ids[i];
            i += 1;
        }
        out += 1;
    }
    words.len[w] = out as u32;
}
