use super::*;

#[test]
fn iso_dates() {
    assert_eq!(iso8601(0.0), "1970-01-01T00:00:00Z");
    assert_eq!(iso8601(1_764_073_800.0), "2025-11-25T12:30:00Z");
}

#[test]
fn finish_is_sequenced() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("t.db")).unwrap();
    let a = db.insert_node(None, "", "baseline", None, "search", "cpu").unwrap();
    let b = db.insert_node(Some(a), "h", "d", None, "search", "cpu").unwrap();
    let f = Finish { status: Status::Keep, metric: Some(1.0), metrics: None, memory_mb: None, insight: "", result_row: Some("r"), jsonl: None };
    assert_eq!(db.finish(b, &f).unwrap(), 1);
    assert_eq!(db.finish(a, &f).unwrap(), 2);
    assert!(db.delete_node(a).is_err());
    db.delete_node(b).unwrap();
    assert_eq!(db.nodes().unwrap().len(), 1);
}

/// A run of the best that a candidate's test asked for is recorded under the best, and is
/// the candidate's in flight: `--resume` follows, kills or forgets it with the candidate.
#[test]
fn the_runs_of_the_best_a_candidate_asked_for_are_its_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("t.db")).unwrap();
    let a = db.insert_node(None, "", "baseline", None, "search", "cpu").unwrap();
    let b = db.insert_node(Some(a), "h", "d", None, "search", "cpu").unwrap();
    let job = |node, attempt: &str| Job { node, attempt: attempt.into(), seed: 1, batch_scale: 1.0, handle: "local:1".into(), started_at: 0.0 };
    db.set_job(&job(a, "0")).unwrap();
    db.set_job(&job(a, &crate::layout::attempt::again(&node_name(b), 1))).unwrap();
    db.set_job(&job(a, &crate::layout::attempt::again(&node_name(b + 10), 1))).unwrap();
    let attempts = |n| db.jobs(Some(n)).unwrap().into_iter().map(|j| (j.node, j.attempt)).collect::<Vec<_>>();
    assert_eq!(attempts(b), [(a, format!("again-{}-1", node_name(b)))], "n{b}1 and n{b}0 are not n{b}'s");
    assert_eq!(attempts(a).len(), 3, "all three are recorded under the best");
    db.clear_jobs(b).unwrap();
    assert!(attempts(b).is_empty());
    assert_eq!(attempts(a).len(), 2, "the best's own jobs and another candidate's stay");
    for (node, attempt, outcome) in [(a, format!("again-{}-2", node_name(b)), "interrupted"), (a, "1".to_string(), "interrupted"), (a, format!("again-{}-1", node_name(b)), "ok")] {
        let run = Run { node, attempt, seed: 1, batch_scale: Some(1.0), exit_code: None, outcome: outcome.into(), metric: Some(2.0), seconds: 1.0, log: String::new() };
        db.insert_run(&run).unwrap();
    }
    db.forget_interrupted_runs(b).unwrap();
    let left: Vec<String> = db.runs(a).unwrap().into_iter().map(|r| r.attempt).collect();
    assert_eq!(left, ["1".to_string(), format!("again-{}-1", node_name(b))], "only b's interrupted run of the best is forgotten");
}

/// What a live view redraws on: each change of the tree moves the fingerprint, and a
/// read-only connection sees the runner's commits.
#[test]
fn the_fingerprint_moves_with_every_change_a_view_shows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let mut db = Db::open(&path).unwrap();
    let reader = Db::open_read_only(&path).unwrap();
    let mut seen = vec![reader.fingerprint().unwrap()];
    let mut moved = |what: &str| {
        let f = reader.fingerprint().unwrap();
        assert!(!seen.contains(&f), "{what}: {f} seen before");
        seen.push(f);
    };
    let a = db.insert_node(None, "", "baseline", None, "baseline", "cpu").unwrap();
    moved("a node");
    db.set_running(a).unwrap();
    moved("running");
    db.set_job(&Job { node: a, attempt: "0".into(), seed: 1, batch_scale: 1.0, handle: "local:1".into(), started_at: 1.0 }).unwrap();
    moved("a run started");
    db.insert_run(&Run { node: a, attempt: "0".into(), seed: 1, batch_scale: Some(1.0), exit_code: Some(0), outcome: "ok".into(), metric: Some(2.0), seconds: 1.0, log: String::new() }).unwrap();
    moved("a run ended");
    db.finish(a, &Finish { status: Status::Keep, metric: Some(2.0), metrics: None, memory_mb: None, insight: "", result_row: None, jsonl: None }).unwrap();
    moved("finished");
    db.set_insight(a, "a lesson").unwrap();
    moved("an insight");
    db.set_heldout(a, &[2.5]).unwrap();
    moved("held-out scores");
    assert!(reader.set_meta("x", "y").is_err(), "the reader writes nothing");
}

#[test]
fn insight_is_set_and_kept_by_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("t.db")).unwrap();
    let a = db.insert_node(None, "", "baseline", None, "search", "cpu").unwrap();
    db.set_insight(a, "lr 0.04 is the sweet spot").unwrap();
    assert_eq!(db.require_node(a).unwrap().insight, "lr 0.04 is the sweet spot");
    let f = Finish { status: Status::Keep, metric: Some(1.0), metrics: None, memory_mb: None, insight: "recorded; gain 0.1", result_row: None, jsonl: None };
    db.finish(a, &f).unwrap();
    assert_eq!(db.require_node(a).unwrap().insight, "lr 0.04 is the sweet spot\nrecorded; gain 0.1");
    let err = db.set_insight(99, "x").unwrap_err();
    assert!(err.to_string().contains("n99"), "{err}");
    assert_eq!(crate::errors::exit_code_of(&err), crate::errors::code::USAGE);
    db.set_recorded(a, &serde_json::json!({"metric": 1.0}), Some("second lesson")).unwrap();
    let n = db.require_node(a).unwrap();
    assert_eq!(n.insight, "second lesson");
    assert_eq!(n.recorded.unwrap()["metric"], 1.0);
    assert!(db.set_recorded(99, &serde_json::json!({}), None).is_err());
}
