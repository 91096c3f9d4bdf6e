//! Token files: one tokenized shard, written once, checked on every open, read by `mmap`.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `b"ARTOKEN\0"` |
//! | 4 | format version ([`FORMAT_VERSION`]) |
//! | 4 | reserved (0) |
//! | 32 | vocabulary fingerprint: sha256 of the `tokenizer.json` that made the ids |
//! | 32 | source digest: identifies the text the file was made from (see `source`) |
//! | 8 | document count `n` |
//! | 8 | token count `m` |
//! | 8 (n+1) | body: document offsets into the token array, `0 = off[0] <= ... <= off[n] = m` |
//! | 2 m | body: token ids as `u16` (the vocabulary has at most 65,536 ids) |
//! | 32 | sha256 of the header and the body |
//!
//! Documents are stored **without** BOS; the loader prepends it. Files are written under a
//! temporary name, synced, then renamed, so a crash never leaves a file that looks finished; the
//! checksum catches truncation and bit flips afterwards.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use sha2::{Digest, Sha256};

/// Identifies a token file.
pub const MAGIC: [u8; 8] = *b"ARTOKEN\0";
/// Bumped whenever the layout changes; older files are rebuilt.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the offsets.
pub const HEADER_LEN: usize = 8 + 4 + 4 + 32 + 32 + 8 + 8;
const CHECKSUM_LEN: usize = 32;

/// A 32-byte sha256 digest.
pub type Digest32 = [u8; 32];

/// Lower-case hex of a digest, for messages and manifests.
pub fn hex(digest: &Digest32) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a token file cannot be written or trusted.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot {action} token file {path}: {cause}")]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "token file {path} is damaged ({reason}); delete it and re-run `prepare` to rebuild it"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "token file {path} was made with another tokenizer (fingerprint {found}, tokenizer is {expected}); re-run `prepare` to rebuild it"
    )]
    Stale {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("token id {id} does not fit in 16 bits (token file {path})")]
    IdTooLarge { path: PathBuf, id: u32 },
}

/// The fixed-size header of a token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fingerprint: Digest32,
    pub source_digest: Digest32,
    pub documents: u64,
    pub tokens: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..48].copy_from_slice(&self.fingerprint);
        out[48..80].copy_from_slice(&self.source_digest);
        out[80..88].copy_from_slice(&self.documents.to_le_bytes());
        out[88..96].copy_from_slice(&self.tokens.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!("only {} bytes, shorter than the header", bytes.len()));
        }
        if bytes[0..8] != MAGIC {
            return Err("not a token file (bad magic)".into());
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this build reads version {FORMAT_VERSION}"
            ));
        }
        Ok(Self {
            fingerprint: bytes[16..48].try_into().unwrap(),
            source_digest: bytes[48..80].try_into().unwrap(),
            documents: u64::from_le_bytes(bytes[80..88].try_into().unwrap()),
            tokens: u64::from_le_bytes(bytes[88..96].try_into().unwrap()),
        })
    }

    fn expected_len(&self) -> Option<u64> {
        let offsets = self.documents.checked_add(1)?.checked_mul(8)?;
        let tokens = self.tokens.checked_mul(2)?;
        (HEADER_LEN as u64)
            .checked_add(offsets)?
            .checked_add(tokens)?
            .checked_add(CHECKSUM_LEN as u64)
    }
}

/// Documents in memory, ready to be written: concatenated ids plus offsets (no BOS).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizedDocs {
    /// `offsets[i]..offsets[i + 1]` are the ids of document `i`; starts with 0.
    pub offsets: Vec<u64>,
    /// All ids, document after document.
    pub ids: Vec<u16>,
}

impl TokenizedDocs {
    /// An empty collection.
    pub fn new() -> Self {
        Self {
            offsets: vec![0],
            ids: Vec::new(),
        }
    }

    /// Appends one document.
    pub fn push(&mut self, doc: &[u32], path: &Path) -> Result<(), TokenFileError> {
        for &id in doc {
            let id16 = u16::try_from(id).map_err(|_| TokenFileError::IdTooLarge {
                path: path.to_path_buf(),
                id,
            })?;
            self.ids.push(id16);
        }
        self.offsets.push(self.ids.len() as u64);
        Ok(())
    }

    /// Documents held.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// True when no document is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes a temporary file unless it was renamed into place.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Writes `docs` to `path` atomically (temporary name, fsync, rename, directory fsync).
pub fn write(
    path: &Path,
    docs: &TokenizedDocs,
    fingerprint: Digest32,
    source_digest: Digest32,
) -> Result<(), TokenFileError> {
    let io = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |cause| TokenFileError::Io {
            action,
            path: p,
            cause,
        }
    };
    let header = Header {
        fingerprint,
        source_digest,
        documents: docs.len() as u64,
        tokens: docs.ids.len() as u64,
    };
    let tmp = path.with_extension(format!("tok.tmp.{}", std::process::id()));
    let guard = TempGuard(Some(tmp.clone()));
    let file = File::create(&tmp).map_err(io("create", &tmp))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Sha256::new();
    let mut put = |bytes: &[u8], out: &mut BufWriter<File>| -> std::io::Result<()> {
        hasher.update(bytes);
        out.write_all(bytes)
    };
    put(&header.encode(), &mut out).map_err(io("write", &tmp))?;
    let mut chunk = Vec::with_capacity(1 << 16);
    for block in docs.offsets.chunks(8192) {
        chunk.clear();
        block.iter().for_each(|o| chunk.extend_from_slice(&o.to_le_bytes()));
        put(&chunk, &mut out).map_err(io("write", &tmp))?;
    }
    for block in docs.ids.chunks(32768) {
        chunk.clear();
        block.iter().for_each(|t| chunk.extend_from_slice(&t.to_le_bytes()));
        put(&chunk, &mut out).map_err(io("write", &tmp))?;
    }
    let checksum: Digest32 = hasher.finalize().into();
    out.write_all(&checksum).map_err(io("write", &tmp))?;
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("rename into place", path))?;
    std::mem::forget(guard);
    if let Some(dir) = path.parent() {
        // Makes the rename durable; not every platform lets a directory be opened, so best effort.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Reads only the header, cheaply: decides whether an existing file can be kept.
pub fn read_header(path: &Path) -> Result<Header, TokenFileError> {
    use std::io::Read;
    let mut bytes = [0u8; HEADER_LEN];
    let mut f = File::open(path).map_err(|cause| TokenFileError::Io {
        action: "open",
        path: path.to_path_buf(),
        cause,
    })?;
    f.read_exact(&mut bytes).map_err(|_| TokenFileError::Corrupt {
        path: path.to_path_buf(),
        reason: "shorter than the header".into(),
    })?;
    Header::decode(&bytes).map_err(|reason| TokenFileError::Corrupt {
        path: path.to_path_buf(),
        reason,
    })
}

/// An opened, verified token file.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    header: Header,
    map: Mmap,
}

impl TokenFile {
    /// Opens `path`, checks its structure, its checksum, and that its ids come from the
    /// tokenizer with `fingerprint`.
    pub fn open(path: &Path, fingerprint: &Digest32) -> Result<Self, TokenFileError> {
        let file = File::open(path).map_err(|cause| TokenFileError::Io {
            action: "open",
            path: path.to_path_buf(),
            cause,
        })?;
        // SAFETY: token files are written once under a temporary name and renamed into place;
        // nothing writes to them afterwards. A concurrent truncation by another process would
        // fault, which is the documented risk of memory maps.
        let map = unsafe { Mmap::map(&file) }.map_err(|cause| TokenFileError::Io {
            action: "map",
            path: path.to_path_buf(),
            cause,
        })?;
        let corrupt = |reason: String| TokenFileError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let header = Header::decode(&map).map_err(corrupt)?;
        let expected = header
            .expected_len()
            .ok_or_else(|| corrupt("counts overflow".into()))?;
        if map.len() as u64 != expected {
            return Err(corrupt(format!(
                "{} bytes, the header promises {expected} (truncated or padded)",
                map.len()
            )));
        }
        let body_end = map.len() - CHECKSUM_LEN;
        let actual: Digest32 = Sha256::digest(&map[..body_end]).into();
        if actual[..] != map[body_end..] {
            return Err(corrupt("checksum mismatch".into()));
        }
        if &header.fingerprint != fingerprint {
            return Err(TokenFileError::Stale {
                path: path.to_path_buf(),
                found: hex(&header.fingerprint),
                expected: hex(fingerprint),
            });
        }
        let this = Self {
            path: path.to_path_buf(),
            header,
            map,
        };
        let n = this.num_docs();
        let mut prev = 0;
        for i in 0..=n {
            let off = this.offset(i);
            if off < prev || off > header.tokens || (i == 0 && off != 0) {
                return Err(corrupt(format!("document offset {i} is out of order")));
            }
            prev = off;
        }
        if prev != header.tokens {
            return Err(corrupt("last offset differs from the token count".into()));
        }
        Ok(this)
    }

    /// Where the file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Documents in the file.
    pub fn num_docs(&self) -> usize {
        self.header.documents as usize
    }

    /// Tokens in the file (BOS not counted).
    pub fn num_tokens(&self) -> u64 {
        self.header.tokens
    }

    fn offset(&self, i: usize) -> u64 {
        let at = HEADER_LEN + 8 * i;
        u64::from_le_bytes(self.map[at..at + 8].try_into().unwrap())
    }

    /// Token count of document `i` (without BOS).
    pub fn doc_len(&self, i: usize) -> usize {
        (self.offset(i + 1) - self.offset(i)) as usize
    }

    /// Appends the first `take` ids of document `i` to `out`.
    pub fn extend_doc(&self, i: usize, take: usize, out: &mut Vec<u32>) {
        let start = self.offset(i) as usize;
        let take = take.min(self.doc_len(i));
        let base = HEADER_LEN + 8 * (self.num_docs() + 1) + 2 * start;
        let bytes = &self.map[base..base + 2 * take];
        out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32),
        );
    }

    /// The ids of document `i` (without BOS).
    pub fn doc(&self, i: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.doc_len(i));
        self.extend_doc(i, usize::MAX, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TokenizedDocs {
        let mut docs = TokenizedDocs::new();
        let p = Path::new("x");
        docs.push(&[1, 2, 3], p).unwrap();
        docs.push(&[], p).unwrap();
        docs.push(&[8191, 7], p).unwrap();
        docs
    }

    #[test]
    fn round_trip_keeps_documents_and_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tok");
        write(&path, &sample(), [1; 32], [2; 32]).unwrap();
        let f = TokenFile::open(&path, &[1; 32]).unwrap();
        assert_eq!(f.num_docs(), 3);
        assert_eq!(f.num_tokens(), 5);
        assert_eq!(f.doc(0), vec![1, 2, 3]);
        assert_eq!(f.doc(1), Vec::<u32>::new());
        assert_eq!(f.doc(2), vec![8191, 7]);
        assert_eq!(read_header(&path).unwrap().source_digest, [2; 32]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn flipped_byte_and_truncation_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tok");
        write(&path, &sample(), [1; 32], [2; 32]).unwrap();
        let good = std::fs::read(&path).unwrap();
        for at in [HEADER_LEN + 3, good.len() - 40, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let err = TokenFile::open(&path, &[1; 32]).unwrap_err().to_string();
            assert!(err.contains("damaged") && err.contains("a.tok"), "{err}");
        }
        std::fs::write(&path, &good[..good.len() - 5]).unwrap();
        let err = TokenFile::open(&path, &[1; 32]).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        std::fs::write(&path, &good[..10]).unwrap();
        assert!(TokenFile::open(&path, &[1; 32]).is_err());
    }

    #[test]
    fn another_tokenizer_is_reported_as_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.tok");
        write(&path, &sample(), [1; 32], [2; 32]).unwrap();
        let err = TokenFile::open(&path, &[9; 32]).unwrap_err();
        assert!(matches!(err, TokenFileError::Stale { .. }), "{err}");
        assert!(err.to_string().contains("re-run `prepare`"));
    }

    #[test]
    fn write_into_missing_directory_names_the_path_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("a.tok");
        let err = write(&path, &sample(), [1; 32], [2; 32]).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
