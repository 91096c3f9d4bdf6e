//! Encoding with tiktoken's rules, which is how the reference encodes with rustbpe's merges.
//!
//! tiktoken works on bytes: a piece that is a whole token is that token; otherwise it starts
//! from single bytes and repeatedly joins the two adjacent parts whose concatenation is the
//! token of lowest id, the leftmost on a tie. We keep the parts as ids and precompute, for
//! every pair of tokens whose concatenation is a token, that token (a superset of the merge
//! rules), so each step is a lookup on two ids instead of hashing bytes; the result is the
//! same by construction. Most pieces recur, so each thread remembers the ids of the pieces it
//! had to merge.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;
use thread_local::ThreadLocal;

use super::split::pieces;
use super::train::Pair;

/// Pieces at most this long merge by rescanning (fast for short ones); longer pieces use a
/// heap so that a pathological run (a megabyte of `=`) costs `n log n`, not `n^2`.
const RESCAN_MAX_LEN: usize = 64;

/// Merged pieces one thread remembers before it starts afresh (about 10 MB at most).
const CACHE_MAX_PIECES: usize = 1 << 17;

/// No pair: a rank above every id.
const NO_RANK: u32 = u32::MAX;

pub struct Encoder {
    /// Bytes of every learned token, by id.
    token_bytes: Vec<Box<[u8]>>,
    /// Token bytes -> id (tiktoken's mergeable ranks).
    ids: FxHashMap<Box<[u8]>, u32>,
    /// (left, right) -> the token spelled by their concatenation.
    joins: FxHashMap<Pair, u32>,
    /// Per thread: ids of the pieces that needed merging.
    cache: ThreadLocal<RefCell<FxHashMap<Box<[u8]>, Box<[u32]>>>>,
}

impl Encoder {
    /// The encoder of the 256 byte tokens plus `merges` (merge `k` makes id `256 + k`; each
    /// merge names only earlier ids, which the caller checked).
    pub fn new(merges: &[Pair]) -> Self {
        let mut token_bytes: Vec<Box<[u8]>> =
            (0..=255u8).map(|b| vec![b].into_boxed_slice()).collect();
        for &(left, right) in merges {
            let joined = [&*token_bytes[left as usize], &*token_bytes[right as usize]].concat();
            token_bytes.push(joined.into());
        }
        // As the reference's Python dict: were two merges to spell the same bytes, the later
        // id would win.
        let mut ids = FxHashMap::default();
        for (id, bytes) in token_bytes.iter().enumerate() {
            ids.insert(bytes.clone(), id as u32);
        }
        let mut joins = FxHashMap::default();
        for (bytes, &id) in &ids {
            for cut in 1..bytes.len() {
                if let (Some(&l), Some(&r)) = (ids.get(&bytes[..cut]), ids.get(&bytes[cut..])) {
                    joins.insert((l, r), id);
                }
            }
        }
        Self {
            token_bytes,
            ids,
            joins,
            cache: ThreadLocal::new(),
        }
    }

    /// Learned tokens, the 256 bytes included.
    pub fn num_learned(&self) -> usize {
        self.token_bytes.len()
    }

    /// The bytes of learned token `id`, `None` past the learned ids.
    pub fn bytes_of(&self, id: u32) -> Option<&[u8]> {
        self.token_bytes.get(id as usize).map(|b| &**b)
    }

    /// Appends the ids of `text` to `out`.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut cache = self.cache.get_or_default().borrow_mut();
        let mut ranks = Vec::new();
        for piece in pieces(text).map(str::as_bytes) {
            if let Some(&id) = self.ids.get(piece) {
                out.push(id);
            } else if let Some(ids) = cache.get(piece) {
                out.extend_from_slice(ids);
            } else {
                let at = out.len();
                out.extend(piece.iter().map(|&b| u32::from(b)));
                let merged = if piece.len() <= RESCAN_MAX_LEN {
                    self.merge_rescanning(&mut out[at..], &mut ranks)
                } else {
                    self.merge_with_heap(&mut out[at..])
                };
                out.truncate(at + merged);
                if cache.len() >= CACHE_MAX_PIECES {
                    cache.clear();
                }
                cache.insert(piece.into(), out[at..].into());
            }
        }
    }

    #[inline]
    fn rank(&self, left: u32, right: u32) -> u32 {
        self.joins.get(&(left, right)).copied().unwrap_or(NO_RANK)
    }

    /// tiktoken's loop, in place on `ids`: returns how many ids are left at the front.
    /// `ranks[i]` is the rank of joining `ids[i]` and `ids[i + 1]`.
    fn merge_rescanning(&self, ids: &mut [u32], ranks: &mut Vec<u32>) -> usize {
        let mut len = ids.len();
        ranks.clear();
        ranks.extend(ids.windows(2).map(|w| self.rank(w[0], w[1])));
        loop {
            let (mut best, mut at) = (NO_RANK, 0);
            for (i, &r) in ranks.iter().enumerate() {
                if r < best {
                    (best, at) = (r, i);
                }
            }
            if best == NO_RANK {
                return len;
            }
            ids[at] = best;
            ids.copy_within(at + 2..len, at + 1);
            len -= 1;
            ranks.remove(at);
            if at > 0 {
                ranks[at - 1] = self.rank(ids[at - 1], ids[at]);
            }
            if at + 1 < len {
                ranks[at] = self.rank(ids[at], ids[at + 1]);
            }
        }
    }

    /// The same joins in the same order: a heap of (rank, position), lowest first, so equal
    /// ranks go left to right, over a linked list of parts; an entry whose pair has changed
    /// since it was queued is skipped.
    fn merge_with_heap(&self, ids: &mut [u32]) -> usize {
        const END: usize = usize::MAX;
        let n = ids.len();
        let mut next: Vec<usize> = (1..=n).collect();
        next[n - 1] = END;
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            let r = self.rank(ids[i], ids[i + 1]);
            if r != NO_RANK {
                heap.push(Reverse((r, i)));
            }
        }
        while let Some(Reverse((rank, i))) = heap.pop() {
            if !alive[i] || next[i] == END || self.rank(ids[i], ids[next[i]]) != rank {
                continue;
            }
            let gone = next[i];
            ids[i] = rank;
            alive[gone] = false;
            next[i] = next[gone];
            if next[i] != END {
                prev[next[i]] = i;
                let r = self.rank(ids[i], ids[next[i]]);
                if r != NO_RANK {
                    heap.push(Reverse((r, i)));
                }
            }
            if i > 0 {
                let p = prev[i];
                let r = self.rank(ids[p], ids[i]);
                if r != NO_RANK {
                    heap.push(Reverse((r, p)));
                }
            }
        }
        let mut kept = 0;
        for i in 0..n {
            if alive[i] {
                ids[kept] = ids[i];
                kept += 1;
            }
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Merges that make many tokens reachable by more than one pair, and long pieces.
    fn merges() -> Vec<Pair> {
        let (a, b, c) = (u32::from(b'a'), u32::from(b'b'), u32::from(b'c'));
        // 256 "ab", 257 "bc", 258 "abc" (= ab + c, also a + bc), 259 "aa", 260 "aaaa", 261 "ca"
        vec![(a, b), (b, c), (256, c), (a, a), (259, 259), (c, a)]
    }

    #[test]
    fn a_join_by_bytes_counts_even_when_it_is_not_the_merge_rule() {
        let enc = Encoder::new(&merges());
        // "a" + "bc" spells "abc" (258), whose rule is "ab" + "c": tiktoken joins them.
        let mut ids = vec![u32::from(b'a'), 257];
        assert_eq!(enc.merge_rescanning(&mut ids, &mut Vec::new()), 1);
        assert_eq!(ids[0], 258);
    }

    #[test]
    fn both_merge_loops_agree_on_every_short_string() {
        let enc = Encoder::new(&merges());
        // Every string of length 1..=7 over {a, b, c, d}.
        let mut ranks = Vec::new();
        for len in 1..=7u32 {
            for code in 0..4usize.pow(len) {
                let mut bytes = Vec::new();
                let mut k = code;
                for _ in 0..len {
                    bytes.push(b"abcd"[k % 4]);
                    k /= 4;
                }
                let mut x: Vec<u32> = bytes.iter().map(|&b| u32::from(b)).collect();
                let mut y = x.clone();
                let nx = enc.merge_rescanning(&mut x, &mut ranks);
                let ny = enc.merge_with_heap(&mut y);
                assert_eq!(&x[..nx], &y[..ny], "{}", String::from_utf8_lossy(&bytes));
            }
        }
    }

    #[test]
    fn a_long_run_merges_as_a_short_one_would() {
        let enc = Encoder::new(&merges());
        let text = "a".repeat(RESCAN_MAX_LEN * 3 + 2);
        let mut out = Vec::new();
        enc.encode(&text, &mut out);
        // Pairs of "a" first (leftmost), then pairs of "aa": 4-byte tokens, then the rest.
        let fours = text.len() / 4;
        assert_eq!(out.len(), fours + 1);
        assert!(out[..fours].iter().all(|&id| id == 260));
        assert_eq!(out[fours], 259);
    }
}
