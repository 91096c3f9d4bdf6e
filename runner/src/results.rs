//! `results.tsv` in the reference format, and the JSONL experiment log.
//!
//! Rows are appended and flushed one at a time (one `write` per line, then fsync). The database
//! keeps every row's exact text, so `run --resume` can put back a row lost to a kill between the
//! database commit and the append, and never writes one twice.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

pub const HEADER: &str = "commit\tval_bpb\tmemory_gb\tstatus\tdescription";

/// One line of results.tsv (no trailing newline). `metric` None: a crash/rejected row.
pub fn format_row(commit: &str, metric: Option<f64>, peak_vram_mb: Option<f64>, status: &str, description: &str) -> String {
    let short: String = commit.chars().take(7).collect();
    let desc: String = description
        .chars()
        .map(|c| if c == '\t' || c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    let (m, gb) = match metric {
        Some(m) => (format!("{m:.6}"), format!("{:.1}", peak_vram_mb.unwrap_or(0.0) / 1024.0)),
        None => ("0.000000".to_string(), "0.0".to_string()),
    };
    format!("{short}\t{m}\t{gb}\t{status}\t{}", desc.trim())
}

/// Appends one line (creating the file, with `header` when given, if needed), flushed to disk.
pub fn append_line(path: &Path, header: Option<&str>, line: &str) -> Result<()> {
    let new = !path.exists() || std::fs::metadata(path).map(|m| m.len() == 0).unwrap_or(true);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {} for appending", path.display()))?;
    let mut buf = String::new();
    if new && let Some(h) = header {
        buf.push_str(h);
        buf.push('\n');
    }
    buf.push_str(line);
    buf.push('\n');
    f.write_all(buf.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    f.sync_data().ok();
    Ok(())
}

/// Makes `path` hold every `expected` line exactly once, in order of first appearance: drops a
/// torn last line (no newline, from a kill mid-write), adds the header if missing and appends
/// lines that are absent. Returns how many lines were appended.
pub fn reconcile(path: &Path, header: Option<&str>, expected: &[String]) -> Result<usize> {
    let mut text = String::new();
    if path.exists() {
        File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("reading {}", path.display()))?;
    }
    if !text.is_empty() && !text.ends_with('\n') {
        let keep = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
        text.truncate(keep);
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(keep as u64)?;
        f.sync_data().ok();
    }
    let present: std::collections::HashSet<&str> = text.lines().collect();
    let mut appended = 0;
    for line in expected {
        if !present.contains(line.as_str()) {
            append_line(path, header, line)?;
            appended += 1;
        }
    }
    Ok(appended)
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub commit: String,
    pub val_bpb: f64,
    pub memory_gb: f64,
    pub status: String,
    pub description: String,
}

/// Parses results.tsv (skips the header and malformed lines).
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (no experiments yet? run `autoresearch run`)", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| *l != HEADER && !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.splitn(5, '\t').collect();
            if f.len() < 4 {
                return None;
            }
            Some(Row {
                commit: f[0].to_string(),
                val_bpb: f[1].parse().ok()?,
                memory_gb: f[2].parse().ok()?,
                status: f[3].to_string(),
                description: f.get(4).unwrap_or(&"").to_string(),
            })
        })
        .collect())
}

/// Writes `data` (text or bytes) to `path` through a uniquely named temporary file in the same
/// directory, synced and then renamed over `path`: a reader sees the old file or the new one,
/// never half of one.
pub fn write_atomic(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(data.as_ref()).and_then(|_| tmp.as_file().sync_all()).with_context(|| format!("writing {}", tmp.path().display()))?;
    // Readable by others like any file the user writes (a temporary file starts as 0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path).with_context(|| format!("renaming a temporary file to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_match_the_reference() {
        assert_eq!(
            format_row("a1b2c3d4e5", Some(0.9979), Some(45060.2), "keep", "baseline"),
            "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline"
        );
        assert_eq!(format_row("d4e5f6g", None, None, "crash", "double\twidth\n"), "d4e5f6g\t0.000000\t0.0\tcrash\tdouble width");
    }

    #[test]
    fn reconcile_repairs_torn_and_missing_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("results.tsv");
        append_line(&p, Some(HEADER), "a\t1.000000\t0.0\tkeep\tx").unwrap();
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(b"b\t0.9").unwrap();
        let rows = vec!["a\t1.000000\t0.0\tkeep\tx".to_string(), "b\t0.900000\t0.0\tkeep\ty".to_string()];
        assert_eq!(reconcile(&p, Some(HEADER), &rows).unwrap(), 1);
        assert_eq!(reconcile(&p, Some(HEADER), &rows).unwrap(), 0);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text, format!("{HEADER}\n{}\n{}\n", rows[0], rows[1]));
        assert_eq!(read_rows(&p).unwrap().len(), 2);
    }
}
