//! Unpredictable choices for the harness: which rows are the witnesses, evaluated a second time
//! apart from their group. They come from the kernel's generator (`getrandom`), never from the
//! run's seed, so that a trainer cannot compute them from anything it knows.

/// A source of kernel randomness, read in blocks.
pub struct Unpredictable {
    buf: [u8; 256],
    at: usize,
}

impl Default for Unpredictable {
    fn default() -> Self {
        Self::new()
    }
}

impl Unpredictable {
    pub fn new() -> Self {
        Unpredictable { buf: [0; 256], at: 256 }
    }

    fn refill(&mut self) {
        let mut filled = 0;
        while filled < self.buf.len() {
            match getrandom(&mut self.buf[filled..]) {
                Ok(n) => filled += n,
                // The kernel generator cannot fail once booted; if it does, stopping beats
                // choosing witnesses the trainer could predict.
                Err(e) => panic!("the kernel random generator failed: {e}"),
            }
        }
        self.at = 0;
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        if self.at + 8 > self.buf.len() {
            self.refill();
        }
        let x = u64::from_le_bytes(self.buf[self.at..self.at + 8].try_into().expect("8 bytes"));
        self.at += 8;
        x
    }

    /// Uniform in `0..n` (`n > 0`), without bias.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below((hi - lo + 1) as u64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// `k` distinct values of `0..n`, in random order (`k <= n`).
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample {k} of {n}");
        let mut chosen = std::collections::BTreeSet::new();
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let x = self.below(n as u64) as usize;
            if chosen.insert(x) {
                out.push(x);
            }
        }
        out
    }
}

#[cfg(target_os = "linux")]
fn getrandom(buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

#[cfg(not(target_os = "linux"))]
fn getrandom(buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_in_range_distinct_and_not_repeated_between_sources() {
        let mut r = Unpredictable::new();
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
            let x = r.between(3, 5);
            assert!((3..=5).contains(&x));
        }
        let s = r.sample(10, 10);
        let mut sorted = s.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        // Two sources never agree on 64 draws of 64 bits (a seeded generator would).
        let a: Vec<u64> = (0..64).map(|_| Unpredictable::new().next_u64()).collect();
        let b: Vec<u64> = (0..64).map(|_| Unpredictable::new().next_u64()).collect();
        assert_ne!(a, b);
    }
}
