//! The `prepare` executable on text files. Because this package has an integration test, `cargo
//! test --workspace` builds `target/release/prepare`, which the runner's sealed-loop tests run.

use std::process::Command;

fn prepare() -> Command {
    Command::new(env!("CARGO_BIN_EXE_prepare"))
}

/// Text in, a cache out: the manifest names the tokenizer and the train and validation files,
/// and a second run keeps what the first made.
#[test]
fn text_files_become_a_cache_and_a_second_run_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = prepare::fixtures::synthetic_documents(60, "cli").join("\n\n");
    std::fs::write(dir.path().join("train.txt"), &text).unwrap();
    std::fs::write(dir.path().join("val.txt"), prepare::fixtures::synthetic_documents(10, "val").join("\n\n")).unwrap();
    let cache = dir.path().join("cache");
    let run = || {
        prepare()
            .args(["--vocab-size", "300", "--text"])
            .arg(dir.path().join("train.txt"))
            .arg("--val-file")
            .arg(dir.path().join("val.txt"))
            .arg("--cache-dir")
            .arg(&cache)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let manifest = std::fs::read_to_string(cache.join("prepared.toml")).unwrap();
    assert!(manifest.contains("train = [\"text_train\"]") && manifest.contains("val = \"text_val\""), "{manifest}");
    assert!(cache.join("tokens/text_val.tok").is_file() && cache.join("tokenizer/tokenizer.json").is_file());
    let second = run();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("kept tokenizer"), "the second run retrained:\n{stderr}");
    assert_eq!(std::fs::read_to_string(cache.join("prepared.toml")).unwrap(), manifest);
}

/// A text file that is not there is an error naming it, and no manifest is written.
#[test]
fn a_missing_text_file_is_named_and_nothing_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt");
    let out = prepare().args(["--vocab-size", "300", "--text"]).arg(&missing).arg("--cache-dir").arg(dir.path().join("cache")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(!dir.path().join("cache/prepared.toml").exists());
}
