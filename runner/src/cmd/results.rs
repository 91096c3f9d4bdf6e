//! `autoresearch results`: a run's results.tsv as a table, or as JSON with each row's
//! held-out score.

use std::path::Path;

use anyhow::Result;

use crate::config::ResearchConfig;
use crate::errors::{code, usage};
use crate::git::Git;
use crate::layout::Paths;

/// Prints the results of the run `cfg` names (or of `file`).
pub fn run(git: &Git, cfg: &ResearchConfig, file: Option<&Path>, json: bool) -> Result<i32> {
    let path = match file {
        Some(f) => crate::config::resolve(&std::env::current_dir()?, f),
        None => Paths::new(&git.root, cfg).results,
    };
    if !path.exists() {
        return Err(usage(format!(
            "{}: no results for tag {} yet (run `autoresearch run`, pass --tag for another run, or --file)",
            path.display(),
            cfg.tag
        )));
    }
    let rows = crate::results::read_rows(&path)?;
    if json {
        // Beside each row, the held-out score of its node when the run has one.
        let db = Paths::new(&git.root, cfg).db;
        let heldout: Vec<(String, Vec<f64>)> = if db.exists() {
            let db = crate::db::Db::open(&db)?;
            let scores = db.heldout()?;
            db.nodes()?.into_iter().filter_map(|n| Some((n.commit.clone()?, scores.get(&n.id)?.clone()))).collect()
        } else {
            Vec::new()
        };
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                let h = heldout.iter().find(|(c, _)| !r.commit.is_empty() && c.starts_with(&r.commit)).map(|(_, s)| crate::keep::mean_std(s).0);
                v["heldout"] = serde_json::json!(h);
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_results(&rows);
    }
    Ok(code::OK)
}

fn print_results(rows: &[crate::results::Row]) {
    println!("{:>3}  {:<8} {:>10} {:>9}  {:<9} description", "#", "commit", "val_bpb", "memory_gb", "status");
    let mut best: Option<f64> = None;
    for (i, r) in rows.iter().enumerate() {
        let mark = if r.status == "keep" && best.is_none_or(|b| r.val_bpb < b) {
            best = Some(r.val_bpb);
            "*"
        } else {
            " "
        };
        println!("{:>3}{mark} {:<8} {:>10.6} {:>9.1}  {:<9} {}", i + 1, r.commit, r.val_bpb, r.memory_gb, r.status, r.description);
    }
    let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
    println!(
        "{} rows: {} keep, {} discard, {} crash, {} rejected; best {}",
        rows.len(),
        count("keep"),
        count("discard"),
        count("crash"),
        count("rejected"),
        best.map(|b| format!("{b:.6}")).unwrap_or_else(|| "-".into())
    );
}
