//! Writing the end-of-run summary JSON (the record is `contract::summary::RunSummary`, which
//! also prints the reference's block).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Writes `value` as pretty JSON to `path` atomically: a temporary file in the same folder,
/// flushed to disk, then renamed over `path`. On any error the temporary file is removed and
/// `path` is left as it was (absent if it was absent).
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    let tmp = temp_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("cannot write summary JSON {}: {e}", path.display());
    }
    Ok(())
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "summary.json".into());
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use contract::summary::RunSummary;

    /// The block of REFERENCE.md §1 "End-of-run summary (exact format)".
    const REFERENCE_BLOCK: &str = "---
val_bpb:          0.997900
training_seconds: 300.1
total_seconds:    325.9
peak_vram_mb:     45060.2
mfu_percent:      39.80
total_tokens_M:   499.6
num_steps:        953
num_params_M:     50.3
depth:            8
";

    fn reference() -> RunSummary {
        RunSummary {
            status: "ok".into(),
            val_bpb: Some(0.9979),
            training_seconds: Some(300.1234),
            total_seconds: Some(325.93),
            peak_vram_mb: Some(45060.2),
            mfu_percent: Some(39.8),
            total_tokens_m: Some(953.0 * 524288.0 / 1e6),
            num_steps: Some(953),
            num_params_m: Some(50_331_648.0 / 1e6),
            depth: Some(8),
            ..Default::default()
        }
    }

    #[test]
    fn summary_matches_the_reference_block_byte_for_byte() {
        assert_eq!(reference().block(), REFERENCE_BLOCK);
    }

    #[test]
    fn json_uses_the_reference_field_names() {
        let v = serde_json::to_value(reference()).unwrap();
        assert_eq!(v["total_tokens_M"].as_f64().unwrap(), 953.0 * 524288.0 / 1e6);
        assert_eq!(v["num_steps"], 953);
        assert!(v.get("num_params_M").is_some());
    }

    fn scratch_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("harness-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn json_is_written_whole_and_leaves_no_temporary() {
        let dir = scratch_dir("ok");
        let path = dir.join("summary.json");
        write_json_atomic(&path, &reference()).unwrap();
        let back: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back["depth"], 8);
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("summary.json")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_json_write_leaves_no_file() {
        let dir = scratch_dir("fail");
        // The parent folder does not exist: nothing may appear anywhere.
        let missing = dir.join("no-such-dir").join("summary.json");
        assert!(write_json_atomic(&missing, &reference()).is_err());
        assert!(!missing.exists());
        // The target is a folder: the rename fails and the temporary must be gone.
        let target = dir.join("taken");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), "x").unwrap();
        let err = write_json_atomic(&target, &reference()).unwrap_err().to_string();
        assert!(err.contains("taken"), "{err}");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("taken")], "temporary left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
