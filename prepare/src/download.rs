//! Downloading the climbmix shards over HTTP.
//!
//! Each shard goes to `<name>.part` and is renamed once complete, so a finished name is always
//! a whole file. An existing `.part` is resumed with `Range: bytes=N-`; a server that answers
//! `200` instead of `206` (or a `206` for another range) restarts the file. A `404` fails at once
//! naming the URL; other 4xx fail at once too; 5xx and network errors are retried up to
//! [`DownloadConfig::attempts`] times, waiting `backoff_base * 2^attempt` after attempt
//! `attempt` (1-based), as the reference. Local write errors (a full disk) are not retried: the
//! `.part` is removed and the error names it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::constants::{BASE_URL, DOWNLOAD_ATTEMPTS, DOWNLOAD_WORKERS, shard_name};

/// How to download.
#[derive(Debug, Clone)]
pub struct DownloadConfig {
    /// URL of the directory holding `shard_NNNNN.parquet`.
    pub base_url: String,
    /// Tries per shard.
    pub attempts: u32,
    /// Back-off unit: attempt `n` (1-based) waits `backoff_base * 2^n` before the next try.
    pub backoff_base: Duration,
    /// Parallel downloads.
    pub workers: usize,
    /// Show a progress bar (indicatif hides it anyway when stderr is not a terminal).
    pub progress: bool,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            base_url: BASE_URL.to_string(),
            attempts: DOWNLOAD_ATTEMPTS,
            backoff_base: Duration::from_secs(1),
            workers: DOWNLOAD_WORKERS,
            progress: true,
        }
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{url} does not exist (HTTP 404); check --base-url and --num-shards")]
    NotFound { url: String },
    #[error("{url} answered HTTP {status}; not retried")]
    Refused { url: String, status: u16 },
    #[error("{url}: {last} (gave up after {attempts} attempts; re-run `prepare` to resume)")]
    GaveUp {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("cannot write {path}: {cause} (is the disk full?)")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{url} did not return a parquet file (no PAR1 magic); check --base-url")]
    NotParquet { url: String },
    #[error("{} of {} downloads failed:\n  {}", .failed.len(), .total, .failed.join("\n  "))]
    Several { failed: Vec<String>, total: usize },
}

/// One failed try: retry or stop.
enum Attempt {
    Retry(String),
    Fatal(DownloadError),
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// Downloads `url` to `dest` (skipped when `dest` exists). Returns the bytes now in `dest`.
pub fn download_file(url: &str, dest: &Path, cfg: &DownloadConfig) -> Result<u64, DownloadError> {
    if let Ok(meta) = std::fs::metadata(dest) {
        return Ok(meta.len());
    }
    let part = part_path(dest);
    let agent = agent();
    let mut last = String::new();
    for attempt in 1..=cfg.attempts.max(1) {
        match try_once(&agent, url, &part) {
            Ok(()) => {
                check_parquet_magic(&part).map_err(|e| {
                    let _ = std::fs::remove_file(&part);
                    match e {
                        Some(err) => err,
                        None => DownloadError::NotParquet {
                            url: url.to_string(),
                        },
                    }
                })?;
                std::fs::rename(&part, dest).map_err(|cause| DownloadError::Write {
                    path: dest.to_path_buf(),
                    cause,
                })?;
                return Ok(std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0));
            }
            Err(Attempt::Fatal(e)) => {
                if matches!(e, DownloadError::Write { .. }) {
                    let _ = std::fs::remove_file(&part);
                }
                return Err(e);
            }
            Err(Attempt::Retry(why)) => {
                last = why;
                if attempt < cfg.attempts {
                    std::thread::sleep(cfg.backoff_base * 2u32.pow(attempt));
                }
            }
        }
    }
    Err(DownloadError::GaveUp {
        url: url.to_string(),
        attempts: cfg.attempts,
        last,
    })
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// `Err(None)`: not parquet; `Err(Some(_))`: cannot read it.
fn check_parquet_magic(path: &Path) -> Result<(), Option<DownloadError>> {
    use std::io::{Seek, SeekFrom};
    let read = || -> std::io::Result<bool> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        if len < 8 {
            return Ok(false);
        }
        let mut head = [0u8; 4];
        let mut tail = [0u8; 4];
        f.read_exact(&mut head)?;
        f.seek(SeekFrom::Start(len - 4))?;
        f.read_exact(&mut tail)?;
        Ok(&head == b"PAR1" && &tail == b"PAR1")
    };
    match read() {
        Ok(true) => Ok(()),
        Ok(false) => Err(None),
        Err(cause) => Err(Some(DownloadError::Write {
            path: path.to_path_buf(),
            cause,
        })),
    }
}

fn try_once(agent: &ureq::Agent, url: &str, part: &Path) -> Result<(), Attempt> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut request = agent.get(url).header("Accept-Encoding", "identity");
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let mut response = request
        .call()
        .map_err(|e| Attempt::Retry(format!("request failed: {e}")))?;
    let status = response.status().as_u16();
    let append = match status {
        200 => false,
        206 => {
            // Only append when the server resumed exactly where the file stops.
            let start = response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok());
            if start != Some(have) {
                let _ = std::fs::remove_file(part);
                return Err(Attempt::Retry(format!(
                    "asked for bytes {have}- but the server sent {start:?}; restarting"
                )));
            }
            true
        }
        416 if have > 0 => {
            // The range is past the end: the .part cannot be trusted, start over.
            let _ = std::fs::remove_file(part);
            return Err(Attempt::Retry("HTTP 416 on resume; restarting".into()));
        }
        404 => {
            return Err(Attempt::Fatal(DownloadError::NotFound {
                url: url.to_string(),
            }));
        }
        s if s >= 500 || s == 429 || s == 408 => {
            return Err(Attempt::Retry(format!("HTTP {s}")));
        }
        s => {
            return Err(Attempt::Fatal(DownloadError::Refused {
                url: url.to_string(),
                status: s,
            }));
        }
    };
    let write_err = |cause| {
        Attempt::Fatal(DownloadError::Write {
            path: part.to_path_buf(),
            cause,
        })
    };
    let mut file = if append {
        OpenOptions::new().append(true).open(part).map_err(write_err)?
    } else {
        File::create(part).map_err(write_err)?
    };
    let mut body = response.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Keep what arrived: the next try resumes from it.
                let _ = file.sync_all();
                return Err(Attempt::Retry(format!("transfer interrupted: {e}")));
            }
        };
        file.write_all(&buf[..n]).map_err(write_err)?;
    }
    file.sync_all().map_err(write_err)?;
    Ok(())
}

/// Downloads shards `indices` into `dir` with `cfg.workers` threads; reports every failure.
pub fn download_shards(
    indices: &[usize],
    dir: &Path,
    cfg: &DownloadConfig,
) -> Result<Vec<PathBuf>, DownloadError> {
    std::fs::create_dir_all(dir).map_err(|cause| DownloadError::Write {
        path: dir.to_path_buf(),
        cause,
    })?;
    let bar = if cfg.progress {
        indicatif::ProgressBar::new(indices.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "downloading shards {bar:30} {pos}/{len} [{elapsed_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let url_of = |i: usize| format!("{}/{}", cfg.base_url.trim_end_matches('/'), shard_name(i));
    std::thread::scope(|s| {
        for _ in 0..cfg.workers.clamp(1, indices.len().max(1)) {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = indices.get(k) else { break };
                    let dest = dir.join(shard_name(i));
                    match download_file(&url_of(i), &dest, cfg) {
                        Ok(_) => bar.set_message(shard_name(i)),
                        Err(e) => failures.lock().unwrap().push((i, e)),
                    }
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|(i, _)| *i);
    match failures.len() {
        0 => Ok(indices.iter().map(|&i| dir.join(shard_name(i))).collect()),
        1 => Err(failures.pop().unwrap().1),
        _ => Err(DownloadError::Several {
            failed: failures.iter().map(|(_, e)| e.to_string()).collect(),
            total: indices.len(),
        }),
    }
}

#[cfg(test)]
mod tests;
