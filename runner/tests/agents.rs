//! The coding-agent presets (`--agent NAME`): each runs its agent with its pinned headless flags
//! and its way of keeping to the scope, against a stand-in executable of the same name on PATH
//! that refuses any other arguments (as a CLI refuses a flag it does not know) and edits the
//! worktree; `detect` says which are installed, and a missing one says how to install it.

mod common;
use common::*;
use std::path::Path;

const HPARAMS: &str = "[gpu]\nmatrix_lr = 0.5\nmode = \"ok\"\n";

/// A stand-in agent: writes its arguments one a line to $TOOLS/<name>.args (an argument of
/// several lines, the prompt, as `<PROMPT>` when it holds the program's text), with
/// OPENCODE_CONFIG_CONTENT first when set; exits 64 when they differ from $TOOLS/<name>.expected.
/// Else it runs $TOOLS/<name>.edit in the worktree, prints $TOOLS/<name>.say and exits with
/// $TOOLS/<name>.exit (default 0).
const STAND_IN: &str = r#"#!/bin/sh
name=$(basename "$0")
out="$TOOLS/$name.args"
: > "$out"
[ -n "$OPENCODE_CONFIG_CONTENT" ] && printf 'env OPENCODE_CONFIG_CONTENT=%s\n' "$OPENCODE_CONFIG_CONTENT" >> "$out"
for a in "$@"; do
  case "$a" in
    *"instructions for the agent"*) echo "<PROMPT>" >> "$out" ;;
    *) printf '%s\n' "$a" >> "$out" ;;
  esac
done
if ! cmp -s "$out" "$TOOLS/$name.expected"; then
  echo "$name: unexpected arguments:" >&2; diff "$TOOLS/$name.expected" "$out" >&2; exit 64
fi
[ -f "$TOOLS/$name.edit" ] && . "$TOOLS/$name.edit"
[ -f "$TOOLS/$name.say" ] && cat "$TOOLS/$name.say"
exit "$(cat "$TOOLS/$name.exit" 2>/dev/null || echo 0)"
"#;

/// A fixture whose trainer has a `src/` folder (the scope's first path) and a stand-in for
/// each of `agents` in $TOOLS/bin.
fn fixture(agents: &[&str], extra: &str) -> Fixture {
    let fx = Fixture::new(
        HPARAMS,
        &format!("keep_rule = \"strict\"\n{}\n[agent]\nprogram = \"program.md\"\ntimeout_seconds = 30\n", if extra.is_empty() { "max_experiments = 1" } else { extra }),
    );
    std::fs::create_dir_all(fx.repo.join("trainer/src")).unwrap();
    std::fs::write(fx.repo.join("trainer/src/lib.rs"), "pub fn lr() -> f64 { 0.5 }\n").unwrap();
    std::fs::write(fx.repo.join("program.md"), "# instructions for the agent\n").unwrap();
    git(&fx.repo, &["-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"]);
    git(&fx.repo, &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a trainer with src/"]);
    let bin = fx.tools.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for a in agents {
        let p = bin.join(a);
        std::fs::write(&p, STAND_IN).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    fx
}

/// The runner with the stand-ins first on PATH and only the system after them.
fn run(fx: &Fixture, args: &[&str]) -> std::process::Output {
    fx.cmd(args).env("PATH", format!("{}:/usr/bin:/bin", fx.tools.join("bin").display())).output().unwrap()
}

fn expect(fx: &Fixture, agent: &str, args: &[String]) {
    std::fs::write(fx.tools.join(format!("{agent}.expected")), args.iter().map(|a| format!("{a}\n")).collect::<String>()).unwrap();
}

fn set_lr(fx: &Fixture, agent: &str, say: &str) {
    std::fs::write(fx.tools.join(format!("{agent}.edit")), "sed -i 's/^matrix_lr = .*/matrix_lr = 0.04/' trainer/hparams.toml\n").unwrap();
    std::fs::write(fx.tools.join(format!("{agent}.say")), say).unwrap();
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

#[test]
fn each_preset_runs_its_agent_with_its_pinned_flags() {
    let wt = |fx: &Fixture| fx.repo.join(".worktrees/t1-n2").display().to_string();
    let cases: Vec<(&str, Box<dyn Fn(&Fixture) -> Vec<String>>, &str)> = vec![
        (
            "claude",
            Box::new(|_| {
                s(&["-p", "<PROMPT>", "--output-format", "json", "--max-turns", "30", "--permission-mode", "dontAsk", "--allowedTools", "Read,Grep,Glob,Edit(trainer/src/**),Edit(trainer/hparams.toml)"])
            }),
            "{\"type\":\"result\",\"result\":\"done\\nDESCRIPTION: claude set matrix_lr 0.04\\nHYPOTHESIS: the reference value\",\"total_cost_usd\":0.25}\n",
        ),
        ("codex", Box::new(move |fx| vec!["exec".into(), "--sandbox".into(), "workspace-write".into(), "-C".into(), wt(fx), "<PROMPT>".into()]), "done\nDESCRIPTION: codex set matrix_lr 0.04\n"),
        (
            "gemini",
            Box::new(|_| s(&["-p", "<PROMPT>", "--output-format", "json", "--approval-mode", "auto_edit"])),
            "{\"response\": \"DESCRIPTION: gemini set matrix_lr 0.04\\nHYPOTHESIS: h\"}\n",
        ),
        (
            "opencode",
            Box::new(|_| {
                s(&[
                    "env OPENCODE_CONFIG_CONTENT={\"permission\":{\"edit\":{\"*\":\"deny\",\"trainer/src/**\":\"allow\",\"trainer/hparams.toml\":\"allow\"},\"bash\":\"deny\",\"webfetch\":\"deny\"}}",
                    "run",
                    "<PROMPT>",
                ])
            }),
            "DESCRIPTION: opencode set matrix_lr 0.04\n",
        ),
        (
            "aider",
            Box::new(|fx| {
                vec![
                    "--message-file".into(),
                    fx.repo.join(".autoresearch/t1/runs/n2-prompt.md").display().to_string(),
                    "--yes-always".into(),
                    "--no-auto-commits".into(),
                    "--no-gitignore".into(),
                    "--no-check-update".into(),
                    "trainer/hparams.toml".into(),
                    "trainer/src/lib.rs".into(),
                ]
            }),
            "DESCRIPTION: aider set matrix_lr 0.04\n",
        ),
    ];
    for (agent, args, say) in cases {
        let fx = fixture(&[agent], "");
        // The canonical path, as the runner sees the repository.
        let fx = Fixture { repo: std::fs::canonicalize(&fx.repo).unwrap(), ..fx };
        expect(&fx, agent, &args(&fx));
        set_lr(&fx, agent, say);
        if agent == "aider" {
            // aider keeps its chat history in the repository: not part of the change.
            std::fs::write(fx.tools.join("aider.edit"), "sed -i 's/^matrix_lr = .*/matrix_lr = 0.04/' trainer/hparams.toml\necho chat > .aider.chat.history.md\n").unwrap();
        }
        let o = run(&fx, &["run", "--yes", "--agent", agent]);
        let log = stdout(&o);
        assert!(o.status.success(), "{agent}: {log}");
        let recorded = std::fs::read_to_string(fx.tools.join(format!("{agent}.args"))).unwrap();
        assert_eq!(recorded, std::fs::read_to_string(fx.tools.join(format!("{agent}.expected"))).unwrap(), "{agent}");
        assert!(log.contains(&format!("agent {agent} (")), "{agent}: the run names its preset:\n{log}");
        let rows = fx.rows();
        assert_eq!(&rows[1][1..5], ["1.000000", "2.0", "keep", &format!("{agent} set matrix_lr 0.04")], "{agent}: {rows:?}\n{log}");
        let files = git(&fx.repo, &["show", "--name-only", "--format=", &fx.branch_tip()]);
        assert_eq!(files, "trainer/hparams.toml", "{agent}: only the agent's edit is committed\n{log}");
    }
}

#[test]
fn a_flag_the_agent_does_not_take_and_its_failure_codes_drop_the_change() {
    let fx = fixture(&["gemini"], "max_experiments = 3");
    // The stand-in expects a flag the preset does not pass: it refuses, as gemini does (42).
    expect(&fx, "gemini", &s(&["-p", "<PROMPT>", "--output-format", "json", "--yolo"]));
    set_lr(&fx, "gemini", "DESCRIPTION: never\n");
    let o = run(&fx, &["run", "--yes", "--agent", "gemini"]);
    let log = stdout(&o);
    assert!(o.status.success(), "{log}");
    assert_eq!(fx.rows().len(), 1, "nothing but the baseline:\n{log}");
    assert!(log.contains("the proposer made no usable change three times in a row"), "{log}");
    // Exit 64 is no code of the preset's: the (empty) diff decided. Now the documented 42.
    let fx = fixture(&["gemini"], "max_experiments = 3");
    expect(&fx, "gemini", &s(&["-p", "<PROMPT>", "--output-format", "json", "--approval-mode", "auto_edit"]));
    set_lr(&fx, "gemini", "DESCRIPTION: half done\n");
    std::fs::write(fx.tools.join("gemini.exit"), "42").unwrap();
    let o = run(&fx, &["run", "--yes", "--agent", "gemini"]);
    let log = stdout(&o);
    assert!(o.status.success(), "{log}");
    assert_eq!(fx.rows().len(), 1, "its edit is dropped:\n{log}");
    assert!(log.contains("Gemini CLI exited with 42: input error"), "{log}");
    // 53, the turn limit: what it edited counts.
    std::fs::write(fx.tools.join("gemini.exit"), "53").unwrap();
    let fx2 = fixture(&["gemini"], "");
    for f in ["expected", "edit", "say", "exit"] {
        std::fs::copy(fx.tools.join(format!("gemini.{f}")), fx2.tools.join(format!("gemini.{f}"))).unwrap();
    }
    let o = run(&fx2, &["run", "--yes", "--agent", "gemini"]);
    let log = stdout(&o);
    assert!(o.status.success() && log.contains("Gemini CLI stopped (turn limit exceeded)"), "{log}");
    assert_eq!(fx2.rows()[1][3], "keep", "{log}");
}

#[test]
fn the_agents_reported_cost_stops_the_run_at_max_cost() {
    let fx = fixture(&["claude"], "max_experiments = 10");
    let args = s(&["-p", "<PROMPT>", "--output-format", "json", "--max-turns", "30", "--permission-mode", "dontAsk", "--allowedTools", "Read,Grep,Glob,Edit(trainer/src/**),Edit(trainer/hparams.toml)"]);
    expect(&fx, "claude", &args);
    // Each call a new null change, and $0.25.
    std::fs::write(fx.tools.join("claude.edit"), "echo \"# call $AUTORESEARCH_ITERATION\" >> trainer/hparams.toml\n").unwrap();
    std::fs::write(fx.tools.join("claude.say"), "{\"result\":\"DESCRIPTION: a comment\",\"total_cost_usd\":0.25}\n").unwrap();
    let o = run(&fx, &["run", "--yes", "--agent", "claude", "--max-cost", "0.6"]);
    let log = stdout(&o);
    assert!(o.status.success(), "{log}");
    assert_eq!(fx.rows().len(), 4, "the baseline and three calls ($0.75 >= $0.60):\n{log}");
    assert!(log.contains("stopping: the run has cost $0.75: $0.75 reported by the agent"), "{log}");
}

#[test]
fn detect_says_which_agents_are_installed_and_a_missing_one_how_to_install_it() {
    let fx = fixture(&["claude", "aider"], "");
    let o = run(&fx, &["detect", "--json"]);
    assert!(o.status.success(), "{}", stdout(&o));
    let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let agents = d["agents"].as_array().unwrap();
    let found = |p: &str| agents.iter().find(|a| a["preset"] == p).unwrap_or_else(|| panic!("{p}: {agents:?}"))["path"].clone();
    assert_eq!(found("claude"), fx.tools.join("bin/claude").display().to_string());
    assert_eq!(found("aider"), fx.tools.join("bin/aider").display().to_string());
    for p in ["codex", "gemini", "opencode"] {
        assert!(found(p).is_null(), "{p}");
    }
    let text = stdout(&run(&fx, &["detect"]));
    assert!(text.contains("codex     Codex CLI: not installed (`codex` is not on PATH); install: npm install -g @openai/codex"), "{text}");

    let o = run(&fx, &["run", "--yes", "--agent", "codex"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--agent codex: Codex CLI is not installed here (no `codex` on PATH). Install it: npm install -g @openai/codex"), "{err}");
    assert!(err.contains("installed here: aider, claude"), "{err}");
    assert!(!Path::new(&fx.repo.join(".autoresearch/t1/tree.db")).exists(), "refused before anything started");

    let o = run(&fx, &["run", "--yes", "--agent", "nosuch"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no agent preset `nosuch`; the presets are aider, claude, codex, gemini, opencode"), "{}", stdout(&o));
}
