//! Rendering from sample databases: empty, one row, a realistic run and a huge tree.

use std::io::Read;

use serde_json::json;

use super::*;
use crate::db::{Db, Finish, Status};

/// A search-like run of `n` nodes (deterministic): children of the best so far, some
/// elsewhere; keeps, discards, crashes, a rejection, a pruned branch, planned ideas, lessons.
pub fn sample(n: usize) -> (tempfile::TempDir, Vec<Node>) {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("tree.db")).unwrap();
    if n == 0 {
        return (dir, vec![]);
    }
    let mut seed: u64 = 7;
    let mut rnd = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) as f64 / (1u64 << 31) as f64
    };
    let params = ["matrix_lr", "embedding_lr", "warmdown_ratio", "depth", "weight_decay", "window_pattern"];
    let root = db.insert_node(None, "", "baseline", None, "baseline", "cpu").unwrap();
    let m0 = 1.0;
    let summary = |m: f64, runs: Option<Vec<f64>>| {
        let mut s = json!({"val_bpb": m, "training_seconds": 60.0, "total_seconds": 90.0, "peak_vram_mb": 700.0});
        if let Some(r) = runs {
            s["runs"] = json!(r);
        }
        s
    };
    let fin = |db: &mut Db, id: i64, status: Status, metric: Option<f64>, metrics: Option<serde_json::Value>, insight: &str| {
        db.set_running(id).unwrap();
        db.set_text(id, "commit_id", &format!("{:040x}", id)).unwrap();
        let f = Finish { status, metric, metrics: metrics.as_ref(), memory_mb: Some(700.0), insight, result_row: None, jsonl: None };
        db.finish(id, &f).unwrap();
    };
    fin(&mut db, root, Status::Keep, Some(m0), Some(summary(m0, Some(vec![m0, m0 + 0.01]))), "2 runs: [1.0, 1.01]; sigma 0.007; keep bar 0.014");
    let (mut best, mut best_m) = (root, m0);
    let mut metric_of = std::collections::HashMap::from([(root, m0)]);
    for i in 1..n {
        let parent = if rnd() < 0.8 { best } else { *metric_of.keys().min_by_key(|k| (**k * 7919) % (i as i64 + 3)).unwrap() };
        let p = params[(rnd() * params.len() as f64) as usize % params.len()];
        let desc = format!("{p} = {:.3} (was {:.3})", rnd(), rnd());
        let id = db.insert_node(Some(parent), "a hypothesis", &desc, Some(&json!({"param": p, "value": "x"})), "search", "cpu").unwrap();
        let roll = rnd();
        let pm = metric_of[&parent];
        if roll < 0.05 {
            fin(&mut db, id, Status::Crash, None, None, "timeout: killed at the hard timeout");
        } else if roll < 0.07 {
            fin(&mut db, id, Status::Rejected, None, None, "causality violation (harness exit 4)");
        } else {
            let m = if roll > 0.995 { 7.5 } else { pm + (rnd() - 0.3) * 0.02 };
            let keep = parent == best && m < best_m - 0.002;
            let lesson = if i % 9 == 0 { format!("gain {:.6} does not clear the bar 0.002\n{p} seems saturated", pm - m) } else { String::new() };
            let status = if keep { Status::Keep } else { Status::Discard };
            let runs = keep.then(|| vec![m, m + 0.001]);
            fin(&mut db, id, status, Some(m), Some(summary(m, runs)), &lesson);
            metric_of.insert(id, m);
            if keep {
                (best, best_m) = (id, m);
            }
        }
    }
    // A pruned branch and two ideas not run yet.
    let nodes = db.nodes().unwrap();
    let path: Vec<i64> = crate::tree::best_path(&nodes).iter().map(|n| n.id).collect();
    if let Some(leaf) = nodes.iter().rev().find(|n| n.status == Status::Discard && !path.contains(&n.id)) {
        db.set_status(leaf.id, Status::Pruned).unwrap();
    }
    if n > 3 {
        db.insert_node(Some(best), "longer warmup helps short budgets", "warmup_ratio = 0.05", None, crate::tree::IDEA_PROPOSER, "").unwrap();
        db.insert_node(Some(root), "", "try rotary base 50000", None, crate::tree::IDEA_PROPOSER, "").unwrap();
    }
    let nodes = db.nodes().unwrap();
    (dir, nodes)
}

fn research(nodes: &[Node]) -> Research {
    let mut cfg = ResearchConfig { tag: "sample".into(), ..Default::default() };
    cfg.finalize().unwrap();
    Research::from_nodes(&cfg, nodes, None)
}

/// A PNG decoder for what `png::encode_rgb` writes (8-bit RGB), strict about the format:
/// signature, chunk CRCs, the zlib stream, row filters and the exact pixel count.
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "signature");
    let (mut pos, mut size, mut idat) = (8, (0, 0), Vec::new());
    loop {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = &bytes[pos + 8..pos + 8 + len];
        let crc = u32::from_be_bytes(bytes[pos + 8 + len..pos + 12 + len].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(&bytes[pos + 4..pos + 8 + len]), "CRC of {}", String::from_utf8_lossy(kind));
        match kind {
            b"IHDR" => {
                size = (u32::from_be_bytes(data[0..4].try_into().unwrap()), u32::from_be_bytes(data[4..8].try_into().unwrap()));
                assert_eq!(&data[8..], &[8, 2, 0, 0, 0]);
            }
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            other => panic!("unexpected chunk {other:?}"),
        }
        pos += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..]).read_to_end(&mut raw).unwrap();
    let stride = size.0 as usize * 3;
    assert_eq!(raw.len(), size.1 as usize * (stride + 1), "pixel data length");
    let mut px = Vec::with_capacity(stride * size.1 as usize);
    for row in raw.chunks(stride + 1) {
        assert_eq!(row[0], 1, "filter type");
        let start = px.len();
        for (i, b) in row[1..].iter().enumerate() {
            let left = if i >= 3 { px[start + i - 3] } else { 0 };
            px.push(b.wrapping_add(left));
        }
    }
    (size.0, size.1, px)
}

/// Writes the pictures to $AUTORESEARCH_REPORT_PREVIEW, when set, to look at them.
fn preview(name: &str, r: &Research) {
    if let Ok(dir) = std::env::var("AUTORESEARCH_REPORT_PREVIEW") {
        let d = Path::new(&dir);
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join(format!("{name}-progress.png")), chart_png(r).unwrap().0).unwrap();
        std::fs::write(d.join(format!("{name}-tree.png")), tree_png(r).unwrap().0).unwrap();
        std::fs::write(d.join(format!("{name}-tree.svg")), tree_svg(r, &|_| None)).unwrap();
        std::fs::write(d.join(format!("{name}-summary.md")), summary::markdown(r)).unwrap();
    }
}

#[test]
fn report_renders_empty_one_row_typical_and_huge_trees() {
    for n in [0, 1, 2, 60, 200, 500] {
        let (_dir, nodes) = sample(n);
        let r = research(&nodes);
        preview(&format!("n{n}"), &r);

        let (png, size) = chart_png(&r).unwrap();
        assert_eq!(size, (chart::WIDTH as u32, chart::HEIGHT as u32));
        let (w, h, px) = decode_png(&png);
        assert_eq!((w, h), size);
        // Something besides the white background was drawn (axes at least).
        assert!(px.iter().any(|b| *b < 128), "n={n}: the chart is blank");

        let (tpng, tsize) = tree_png(&r).unwrap();
        assert_eq!(decode_png(&tpng).0, tsize.0);
        assert!(tsize.0 as f32 <= TREE_PNG_MAX && tsize.1 as f32 <= TREE_PNG_MAX);

        let svg = tree_svg(&r, &|n| Some(format!("#diff-n{}", n.id)));
        for node in &nodes {
            assert!(svg.contains(&format!(">{} · ", node.name())), "n={n}: tree.svg lacks {}", node.name());
            assert!(svg.contains(&format!("href=\"#diff-n{}\"", node.id)), "n={n}: no link for {}", node.name());
        }
        assert!(chart_svg(&r).ends_with("</svg>\n"));
        let page = html::page(&r, &summary::markdown(&r), &chart_svg(&r), &svg, &HashMap::new());
        for node in &nodes {
            assert!(page.contains(&format!("id=\"diff-n{}\"", node.id)));
        }
    }
}

#[test]
fn summary_numbers_match_the_data() {
    let (_dir, mut nodes) = sample(60);
    // An experiment every 100 s, each 90 s long.
    let t0 = 1_764_000_000.0;
    for n in nodes.iter_mut() {
        if let Some(k) = n.finish_seq {
            n.started_at = Some(t0 + 100.0 * (k - 1) as f64);
            n.finished_at = Some(t0 + 100.0 * (k - 1) as f64 + 90.0);
        }
    }
    let r = research(&nodes);
    let md = summary::markdown(&r);
    let exps: Vec<&Node> = nodes.iter().filter(|n| n.parent.is_some() && n.finish_seq.is_some()).collect();
    let count = |s: Status| exps.iter().filter(|n| n.status == s).count();
    assert!(count(Status::Keep) >= 2 && count(Status::Crash) >= 1 && count(Status::Pruned) == 1, "the sample covers the cases");
    let line = format!(
        "- experiments: {} ({} keep, {} discard, {} crash, {} rejected, {} unverified, {} pruned)",
        exps.len(),
        count(Status::Keep),
        count(Status::Discard),
        count(Status::Crash),
        count(Status::Rejected),
        count(Status::Unverified),
        count(Status::Pruned)
    );
    assert!(md.contains(&line), "{line}\n{md}");
    let best = crate::tree::best(&nodes).unwrap();
    let bm = best.metric.unwrap();
    assert!(md.contains(&format!("- baseline: 1.000000 (n1, commit `{}`)", &format!("{:040x}", 1)[..7])), "{md}");
    assert!(md.contains(&format!("- best: {bm:.6} ({}", best.name())), "{md}");
    assert!(md.contains(&format!("- improvement: {:.6} ({:.2} %)", 1.0 - bm, 100.0 * (1.0 - bm))), "{md}");
    // Training: 60 s per run; the baseline and each keep ran twice.
    let runs: usize = nodes.iter().filter(|n| n.metrics.is_some()).map(|n| if n.status == Status::Keep { 2 } else { 1 }).sum();
    let finished = nodes.iter().filter(|n| n.finish_seq.is_some()).count();
    let wall = 100.0 * (finished - 1) as f64 + 90.0;
    assert!(md.contains(&format!("- time: {:.2} h, {:.1} experiments per hour", wall / 3600.0, exps.len() as f64 / (wall / 3600.0))), "{md}");
    let share = 100.0 * runs as f64 * 60.0 / wall;
    assert!(md.contains(&format!("- training: {:.2} h, {share:.0} % of the time", runs as f64 * 60.0 / 3600.0)), "{md}");
    // Every category that failed appears, and the planned ideas and lessons are suggested.
    for n in exps.iter().filter(|n| matches!(n.status, Status::Discard | Status::Crash | Status::Rejected)) {
        assert!(md.contains(&format!("| {} |", data::category(n))), "{md}");
    }
    assert!(md.contains("planned idea") && md.contains("seems saturated"), "{md}");
    assert!(!md.contains("does not clear the bar"), "runner notes are not lessons:\n{md}");
}

#[test]
fn summary_of_an_empty_run_says_so() {
    let md = summary::markdown(&research(&[]));
    assert!(md.contains("no baseline yet") && md.contains("- experiments: 0 ("), "{md}");
}

#[test]
fn a_long_chain_of_keeps_renders() {
    // 400 keeps in a row: a tree 400 columns wide and one row high.
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("tree.db")).unwrap();
    let mut parent = None;
    for i in 0..400 {
        let id = db.insert_node(parent, "", &format!("step {i}"), None, "search", "cpu").unwrap();
        db.set_running(id).unwrap();
        let f = Finish { status: Status::Keep, metric: Some(2.0 - i as f64 * 1e-3), metrics: None, memory_mb: None, insight: "", result_row: None, jsonl: None };
        db.finish(id, &f).unwrap();
        parent = Some(id);
    }
    let r = research(&db.nodes().unwrap());
    let (png, (w, h)) = tree_png(&r).unwrap();
    assert_eq!(decode_png(&png).0, w);
    assert!(w as f32 <= TREE_PNG_MAX && h >= 1);
    assert_eq!(chart_png(&r).unwrap().1, (chart::WIDTH as u32, chart::HEIGHT as u32));
    assert!(summary::markdown(&r).contains("through 399 kept change(s)"));
}
