//! Where documents come from: parquet shards (downloaded or in a local directory) and local
//! plain-text or JSONL files.
//!
//! Every source becomes a [`Corpus`]: a list of train [`Part`]s and one validation part; each
//! part becomes one token file.
//!
//! - **Parquet shards** (`shard_NNNNN.parquet`, a UTF-8 `text` column): the validation part is
//!   always `shard_06542`; the others are train parts, in index order.
//! - **Plain text** (`--text`): one document per paragraph. A paragraph is a run of lines ended
//!   by one or more blank (whitespace-only) lines; its lines are joined with `\n`. A file with no
//!   blank line is one document. The files must be valid UTF-8.
//! - **JSONL** (`--jsonl`): one JSON object per line with a string field `text`; blank lines are
//!   skipped.
//! - **Validation for text and JSONL**: the documents of the `--val-file` files when given
//!   (format by extension: `.jsonl`/`.json` is JSONL, anything else plain text); otherwise the
//!   last `val_percent` % of the documents, in input order (at least one document, and at least
//!   one is left for training).

use std::fs::File;
use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::basic::{ConvertedType, Type as PhysicalType};
use parquet::column::reader::ColumnReader;
use parquet::data_type::ByteArray;
use parquet::file::reader::{FileReader, SerializedFileReader};
use sha2::{Digest, Sha256};

use crate::constants::{VAL_SHARD, shard_name};
use crate::token_file::Digest32;

/// Why documents cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path} is not a readable parquet file ({reason}); delete it (re-download) or point `prepare` at a valid shard")]
    NotParquet { path: PathBuf, reason: String },
    #[error("{path} has no `text` column of UTF-8 strings (columns: {columns}); shards need one")]
    NoTextColumn { path: PathBuf, columns: String },
    #[error("{path}: {what} is not valid UTF-8 (at byte {at}); convert the file to UTF-8")]
    InvalidUtf8 {
        path: PathBuf,
        what: String,
        at: usize,
    },
    #[error("{path}:{line}: {reason}; every JSONL line must be an object with a string field \"text\"")]
    BadJsonl {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{0}")]
    Layout(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |cause| SourceError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// How plain-text files are cut into documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DocSplit {
    /// One document per blank-line-separated paragraph (the default).
    #[default]
    Paragraph,
    /// One document per file.
    File,
}

/// Where a part's documents are.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A parquet shard with a `text` column, read lazily row group by row group.
    Parquet(PathBuf),
    /// Documents already in memory (from text or JSONL files).
    Docs(Arc<Vec<String>>),
}

/// One unit of the corpus; becomes one token file named `<name>.tok`.
#[derive(Debug, Clone)]
pub struct Part {
    /// Stem of the token file, e.g. `shard_00000` or `text_train`.
    pub name: String,
    /// Where the documents are.
    pub origin: Origin,
}

impl Part {
    /// Calls `f` with consecutive chunks of documents (a parquet row group, or up to 1024
    /// in-memory documents) until the part is exhausted or `f` breaks.
    pub fn for_each_chunk(
        &self,
        mut f: impl FnMut(&[String]) -> ControlFlow<()>,
    ) -> Result<(), SourceError> {
        match &self.origin {
            Origin::Parquet(path) => read_parquet(path, |docs| f(docs)),
            Origin::Docs(docs) => {
                for chunk in docs.chunks(1024) {
                    if f(chunk).is_break() {
                        break;
                    }
                }
                Ok(())
            }
        }
    }

    /// Documents in the part (for parquet, rows from the footer, nulls included), without
    /// reading the text: the length of a progress bar.
    pub fn num_docs(&self) -> Result<u64, SourceError> {
        match &self.origin {
            Origin::Parquet(path) => {
                let file = File::open(path).map_err(io_err(path))?;
                let reader = SerializedFileReader::new(file).map_err(|e| SourceError::NotParquet {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
                Ok(reader.metadata().file_metadata().num_rows().max(0) as u64)
            }
            Origin::Docs(docs) => Ok(docs.len() as u64),
        }
    }

    /// Identifies the text of the part, so that a finished token file can be kept.
    ///
    /// Parquet: file name, size and the last 64 KiB (the footer, which holds the metadata and
    /// page offsets). In-memory documents: their full text.
    pub fn digest(&self) -> Result<Digest32, SourceError> {
        let mut h = Sha256::new();
        match &self.origin {
            Origin::Parquet(path) => {
                use std::io::{Seek, SeekFrom};
                let mut f = File::open(path).map_err(io_err(path))?;
                let len = f.metadata().map_err(io_err(path))?.len();
                let tail = len.min(64 * 1024);
                f.seek(SeekFrom::Start(len - tail)).map_err(io_err(path))?;
                let mut buf = vec![0u8; tail as usize];
                f.read_exact(&mut buf).map_err(io_err(path))?;
                h.update(b"parquet\0");
                h.update(path.file_name().unwrap_or_default().as_encoded_bytes());
                h.update(len.to_le_bytes());
                h.update(&buf);
            }
            Origin::Docs(docs) => {
                h.update(b"docs\0");
                for d in docs.iter() {
                    h.update((d.len() as u64).to_le_bytes());
                    h.update(d.as_bytes());
                }
            }
        }
        Ok(h.finalize().into())
    }
}

/// Chunks a reader thread may hold ready: enough to keep the cores busy while the next row
/// group decompresses, few enough that memory stays bounded by a few row groups.
const PREFETCH_CHUNKS: usize = 2;

/// As [`Part::for_each_chunk`], but the chunks are read on another thread, up to
/// [`PREFETCH_CHUNKS`] ahead, so reading (parquet decompression, UTF-8 checks) overlaps what
/// `f` does with them.
pub fn for_each_chunk_prefetched(
    part: &Part,
    mut f: impl FnMut(Vec<String>) -> ControlFlow<()>,
) -> Result<(), SourceError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<String>>(PREFETCH_CHUNKS);
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            part.for_each_chunk(|docs| match tx.send(docs.to_vec()) {
                Ok(()) => ControlFlow::Continue(()),
                // The consumer stopped early.
                Err(_) => ControlFlow::Break(()),
            })
        });
        for chunk in rx.iter() {
            if f(chunk).is_break() {
                break;
            }
        }
        // Unblocks a reader waiting to send, so that it stops.
        drop(rx);
        reader.join().expect("the reader thread does not panic")
    })
}

/// Train parts plus the validation part.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// One line saying where the corpus came from.
    pub description: String,
    /// Train parts, in order.
    pub train: Vec<Part>,
    /// The validation part.
    pub val: Part,
}

/// Shards in `dir`: every `shard_NNNNN.parquet`; `shard_06542` is validation; the train shards
/// are the others in index order, the first `num_train` of them when given.
pub fn shard_dir_corpus(dir: &Path, num_train: Option<usize>) -> Result<Corpus, SourceError> {
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    let mut indices = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(i) = name
            .strip_prefix("shard_")
            .and_then(|r| r.strip_suffix(".parquet"))
            .and_then(|n| n.parse::<usize>().ok())
        {
            indices.push(i);
        }
    }
    indices.sort_unstable();
    if !indices.contains(&VAL_SHARD) {
        return Err(SourceError::Layout(format!(
            "{} has no validation shard {}; a shard directory needs it plus at least one train shard",
            dir.display(),
            shard_name(VAL_SHARD)
        )));
    }
    let mut train: Vec<usize> = indices.into_iter().filter(|&i| i != VAL_SHARD).collect();
    if let Some(n) = num_train {
        train.truncate(n);
    }
    if train.is_empty() {
        return Err(SourceError::Layout(format!(
            "{} has no train shard (shard_NNNNN.parquet other than {})",
            dir.display(),
            shard_name(VAL_SHARD)
        )));
    }
    Ok(shard_corpus(dir, &train, format!("shard directory {}", dir.display())))
}

/// The corpus of shards `train` plus the validation shard, all in `dir`.
pub fn shard_corpus(dir: &Path, train: &[usize], description: String) -> Corpus {
    let part = |i: usize| Part {
        name: format!("shard_{i:05}"),
        origin: Origin::Parquet(dir.join(shard_name(i))),
    };
    Corpus {
        description,
        train: train.iter().map(|&i| part(i)).collect(),
        val: part(VAL_SHARD),
    }
}

/// Text files (`text`, split by `split`) and JSONL files (`jsonl`) as a corpus: see the module
/// documentation for the validation split.
pub fn text_corpus(
    text: &[PathBuf],
    jsonl: &[PathBuf],
    val_files: &[PathBuf],
    split: DocSplit,
    val_percent: f64,
) -> Result<Corpus, SourceError> {
    if text.is_empty() && jsonl.is_empty() {
        return Err(SourceError::Layout(
            "no input: give --source-dir DIR, --text FILE or --jsonl FILE (or nothing, to download)".into(),
        ));
    }
    let train_files: Vec<&PathBuf> = text.iter().chain(jsonl).collect();
    let mut train = Vec::new();
    for (k, f) in train_files.iter().enumerate() {
        let docs = if k < text.len() { read_text(f, split)? } else { read_jsonl(f)? };
        if docs.is_empty() {
            return Err(SourceError::Layout(format!(
                "{} holds no document; remove it or fill it",
                f.display()
            )));
        }
        train.extend(docs);
    }
    let val = if val_files.is_empty() {
        if !(val_percent > 0.0 && val_percent < 100.0) {
            return Err(SourceError::Layout(format!(
                "--val-percent must be in (0, 100), got {val_percent}"
            )));
        }
        if train.len() < 2 {
            return Err(SourceError::Layout(format!(
                "the input holds {} document(s); at least 2 are needed to split off validation (or give --val-file)",
                train.len()
            )));
        }
        let n_val = ((train.len() as f64 * val_percent / 100.0).round() as usize)
            .clamp(1, train.len() - 1);
        train.split_off(train.len() - n_val)
    } else {
        let mut val = Vec::new();
        for f in val_files {
            val.extend(read_docs_by_extension(f, split)?);
        }
        if val.is_empty() {
            return Err(SourceError::Layout(
                "the --val-file files hold no document".into(),
            ));
        }
        val
    };
    let names: Vec<String> = train_files.iter().map(|p| p.display().to_string()).collect();
    Ok(Corpus {
        description: format!("text files {}", names.join(", ")),
        train: vec![Part {
            name: "text_train".into(),
            origin: Origin::Docs(Arc::new(train)),
        }],
        val: Part {
            name: "text_val".into(),
            origin: Origin::Docs(Arc::new(val)),
        },
    })
}

fn read_docs_by_extension(path: &Path, split: DocSplit) -> Result<Vec<String>, SourceError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl" | "json") => read_jsonl(path),
        _ => read_text(path, split),
    }
}

fn read_utf8(path: &Path) -> Result<String, SourceError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    String::from_utf8(bytes).map_err(|e| SourceError::InvalidUtf8 {
        path: path.to_path_buf(),
        what: "the file".into(),
        at: e.utf8_error().valid_up_to(),
    })
}

/// Documents of a plain-text file.
pub fn read_text(path: &Path, split: DocSplit) -> Result<Vec<String>, SourceError> {
    let text = read_utf8(path)?;
    Ok(match split {
        DocSplit::File if text.trim().is_empty() => Vec::new(),
        DocSplit::File => vec![text],
        DocSplit::Paragraph => paragraphs(&text),
    })
}

/// Blank-line-separated paragraphs, lines joined with `\n`.
pub fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(cur.join("\n"));
                cur.clear();
            }
        } else {
            cur.push(line);
        }
    }
    if !cur.is_empty() {
        out.push(cur.join("\n"));
    }
    out
}

/// Documents of a JSONL file (field `text`).
pub fn read_jsonl(path: &Path) -> Result<Vec<String>, SourceError> {
    let text = read_utf8(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| SourceError::BadJsonl {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON ({e})")))?;
        match value.get("text") {
            Some(serde_json::Value::String(s)) => out.push(s.clone()),
            Some(_) => return Err(bad("field \"text\" is not a string".into())),
            None => return Err(bad("no field \"text\"".into())),
        }
    }
    Ok(out)
}

/// Reads the `text` column of a parquet shard, one row group at a time. Null values are
/// skipped; invalid UTF-8 is an error.
pub fn read_parquet(
    path: &Path,
    mut f: impl FnMut(&[String]) -> ControlFlow<()>,
) -> Result<(), SourceError> {
    let not_parquet = |e: parquet::errors::ParquetError| SourceError::NotParquet {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = File::open(path).map_err(io_err(path))?;
    let reader = SerializedFileReader::new(file).map_err(not_parquet)?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let column = (0..schema.num_columns()).find(|&i| {
        let c = schema.column(i);
        c.path().string() == "text"
            && c.physical_type() == PhysicalType::BYTE_ARRAY
            && c.max_rep_level() == 0
            && matches!(c.converted_type(), ConvertedType::UTF8 | ConvertedType::NONE)
    });
    let Some(column) = column else {
        let columns: Vec<String> = (0..schema.num_columns())
            .map(|i| schema.column(i).path().string())
            .collect();
        return Err(SourceError::NoTextColumn {
            path: path.to_path_buf(),
            columns: columns.join(", "),
        });
    };
    let mut values: Vec<ByteArray> = Vec::new();
    let mut defs: Vec<i16> = Vec::new();
    let mut docs: Vec<String> = Vec::new();
    for g in 0..reader.num_row_groups() {
        let group = reader.get_row_group(g).map_err(not_parquet)?;
        let rows = group.metadata().num_rows() as usize;
        let ColumnReader::ByteArrayColumnReader(mut col) =
            group.get_column_reader(column).map_err(not_parquet)?
        else {
            unreachable!("the column was checked to be BYTE_ARRAY");
        };
        values.clear();
        defs.clear();
        let mut read = 0;
        while read < rows {
            let (records, _, _) = col
                .read_records(rows - read, Some(&mut defs), None, &mut values)
                .map_err(not_parquet)?;
            if records == 0 {
                break;
            }
            read += records;
        }
        docs.clear();
        for (k, v) in values.drain(..).enumerate() {
            let s = String::from_utf8(v.data().to_vec()).map_err(|e| SourceError::InvalidUtf8 {
                path: path.to_path_buf(),
                what: format!("row group {g}, value {k}"),
                at: e.utf8_error().valid_up_to(),
            })?;
            docs.push(s);
        }
        if f(&docs).is_break() {
            break;
        }
    }
    Ok(())
}

/// Writes `docs` as a shard in the climbmix layout (one UTF-8 `text` column, row groups of
/// `row_group` rows, uncompressed). For tests and small fixtures.
pub fn write_parquet_shard(path: &Path, docs: &[&str], row_group: usize) -> anyhow::Result<()> {
    use parquet::data_type::ByteArrayType;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = Arc::new(parquet::schema::parser::parse_message_type(
        "message schema { REQUIRED BYTE_ARRAY text (UTF8); }",
    )?);
    let props = Arc::new(WriterProperties::builder().build());
    let file = File::create(path)?;
    let mut writer = SerializedFileWriter::new(file, schema, props)?;
    for chunk in docs.chunks(row_group.max(1)) {
        let mut group = writer.next_row_group()?;
        let mut col = group.next_column()?.expect("one column");
        let values: Vec<ByteArray> = chunk.iter().map(|d| ByteArray::from(*d)).collect();
        col.typed::<ByteArrayType>().write_batch(&values, None, None)?;
        col.close()?;
        group.close()?;
    }
    writer.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_docs(part: &Part) -> Vec<String> {
        let mut out = Vec::new();
        part.for_each_chunk(|c| {
            out.extend_from_slice(c);
            ControlFlow::Continue(())
        })
        .unwrap();
        out
    }

    #[test]
    fn parquet_shards_round_trip_across_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let docs: Vec<String> = (0..10).map(|i| format!("doc {i} ünïcode")).collect();
        let refs: Vec<&str> = docs.iter().map(|s| s.as_str()).collect();
        write_parquet_shard(&dir.path().join("shard_00000.parquet"), &refs, 3).unwrap();
        write_parquet_shard(&dir.path().join("shard_06542.parquet"), &refs[..2], 3).unwrap();
        let corpus = shard_dir_corpus(dir.path(), None).unwrap();
        assert_eq!(corpus.train.len(), 1);
        assert_eq!(all_docs(&corpus.train[0]), docs);
        assert_eq!(all_docs(&corpus.val), docs[..2].to_vec());
    }

    #[test]
    fn prefetched_chunks_come_in_order_stop_early_and_carry_errors() {
        let dir = tempfile::tempdir().unwrap();
        let docs: Vec<String> = (0..50).map(|i| format!("doc {i}")).collect();
        let refs: Vec<&str> = docs.iter().map(|s| s.as_str()).collect();
        let path = dir.path().join("shard_00000.parquet");
        write_parquet_shard(&path, &refs, 3).unwrap();
        let part = Part { name: "x".into(), origin: Origin::Parquet(path) };
        assert_eq!(part.num_docs().unwrap(), 50);
        let mut seen = Vec::new();
        for_each_chunk_prefetched(&part, |chunk| {
            seen.extend(chunk);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(seen, docs);
        // Stopping after the first chunk returns at once, though the reader is ahead.
        let mut chunks = 0;
        for_each_chunk_prefetched(&part, |_| {
            chunks += 1;
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(chunks, 1);
        let bad = dir.path().join("bad.parquet");
        std::fs::write(&bad, "not parquet").unwrap();
        let part = Part { name: "bad".into(), origin: Origin::Parquet(bad) };
        let err = for_each_chunk_prefetched(&part, |_| ControlFlow::Continue(())).unwrap_err();
        assert!(err.to_string().contains("not a readable parquet"), "{err}");
        assert!(part.num_docs().is_err());
    }

    #[test]
    fn shard_dir_without_validation_or_train_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = shard_dir_corpus(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("shard_06542"), "{err}");
        write_parquet_shard(&dir.path().join("shard_06542.parquet"), &["x"], 3).unwrap();
        let err = shard_dir_corpus(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("no train shard"), "{err}");
    }

    #[test]
    fn non_parquet_and_missing_text_column_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("shard_00000.parquet");
        std::fs::write(&bad, "<html>not found</html>").unwrap();
        let part = Part { name: "x".into(), origin: Origin::Parquet(bad.clone()) };
        let err = part.for_each_chunk(|_| ControlFlow::Continue(())).unwrap_err().to_string();
        assert!(err.contains("not a readable parquet") && err.contains("shard_00000"), "{err}");

        let other = dir.path().join("other.parquet");
        let schema = Arc::new(
            parquet::schema::parser::parse_message_type("message s { REQUIRED BYTE_ARRAY body (UTF8); }")
                .unwrap(),
        );
        let mut w = parquet::file::writer::SerializedFileWriter::new(
            File::create(&other).unwrap(),
            schema,
            Default::default(),
        )
        .unwrap();
        let mut g = w.next_row_group().unwrap();
        let mut c = g.next_column().unwrap().unwrap();
        c.typed::<parquet::data_type::ByteArrayType>()
            .write_batch(&[ByteArray::from("hi")], None, None)
            .unwrap();
        c.close().unwrap();
        g.close().unwrap();
        w.close().unwrap();
        let part = Part { name: "x".into(), origin: Origin::Parquet(other) };
        let err = part.for_each_chunk(|_| ControlFlow::Continue(())).unwrap_err().to_string();
        assert!(err.contains("no `text` column") && err.contains("body"), "{err}");
    }

    #[test]
    fn text_files_split_into_paragraphs_and_validation_is_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        std::fs::write(&a, "one\nline two\n\n\n  \nthree\r\n\r\nfour\n\nfive").unwrap();
        assert_eq!(read_text(&a, DocSplit::Paragraph).unwrap(), ["one\nline two", "three", "four", "five"]);
        let corpus = text_corpus(&[a.clone()], &[], &[], DocSplit::Paragraph, 25.0).unwrap();
        let Origin::Docs(val) = &corpus.val.origin else { panic!() };
        assert_eq!(val.as_slice(), ["five"]);
        let Origin::Docs(train) = &corpus.train[0].origin else { panic!() };
        assert_eq!(train.len(), 3);
    }

    #[test]
    fn bad_text_inputs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("b.txt");
        std::fs::write(&bin, b"ok\xff\xfe").unwrap();
        let err = text_corpus(&[bin], &[], &[], DocSplit::Paragraph, 10.0).unwrap_err().to_string();
        assert!(err.contains("b.txt") && err.contains("UTF-8"), "{err}");
        let empty = dir.path().join("e.txt");
        std::fs::write(&empty, "\n\n").unwrap();
        let err = text_corpus(&[empty], &[], &[], DocSplit::Paragraph, 10.0).unwrap_err().to_string();
        assert!(err.contains("e.txt") && err.contains("no document"), "{err}");
        let j = dir.path().join("c.jsonl");
        std::fs::write(&j, "{\"text\": \"a\"}\n\n{\"txt\": 1}\n").unwrap();
        let err = text_corpus(&[], &[j], &[], DocSplit::Paragraph, 10.0).unwrap_err().to_string();
        assert!(err.contains("c.jsonl:3"), "{err}");
        let missing = dir.path().join("nope.txt");
        let err = text_corpus(&[missing], &[], &[], DocSplit::Paragraph, 10.0).unwrap_err().to_string();
        assert!(err.contains("nope.txt"), "{err}");
    }
}
