//! The coding agents the `agent` proposer runs by name (`--agent claude`, `[agents.*]` in the
//! research config): whether one is installed and how to install it, its command line with the
//! run's scope filled in, what its exit code means, what it cost, and the files it leaves for
//! itself in the worktree.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::{AgentPreset, ProposerKind, ResearchConfig, path_has_prefix};
use crate::errors::usage;
use crate::process::shell_quote;

/// The first file named `binary` on PATH (or `binary` itself when it is a path).
pub fn which(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        let p = PathBuf::from(binary);
        return is_executable(&p).then_some(p);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(binary)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// One preset as `detect` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Installed {
    /// The preset's key (`--agent` takes it).
    pub preset: String,
    pub name: String,
    pub binary: String,
    /// Where it is; None when it is not installed.
    pub path: Option<String>,
    pub install: String,
}

/// Every preset of the config, found on PATH or not.
pub fn installed(cfg: &ResearchConfig) -> Vec<Installed> {
    cfg.agents
        .iter()
        .map(|(key, p)| Installed {
            preset: key.clone(),
            name: p.name.clone(),
            binary: p.binary.clone(),
            path: which(&p.binary).map(|w| w.display().to_string()),
            install: p.install.clone(),
        })
        .collect()
}

/// Before a run with the agent proposer on a preset: its agent must be installed, else a usage
/// error that says how to install it and which presets are installed here.
pub fn require_installed(cfg: &ResearchConfig) -> Result<()> {
    if cfg.proposer != ProposerKind::Agent || !cfg.agent.command.trim().is_empty() {
        return Ok(());
    }
    let (key, preset) = cfg.agent_preset()?;
    if which(&preset.binary).is_some() {
        return Ok(());
    }
    let here: Vec<String> = installed(cfg).into_iter().filter(|i| i.path.is_some()).map(|i| i.preset).collect();
    Err(usage(format!(
        "--agent {key}: {} is not installed here (no `{}` on PATH). Install it: {}. Or pick another with --agent ({}), or give a command line with --agent-command",
        preset.name,
        preset.binary,
        preset.install,
        if here.is_empty() { "none of the presets is installed here".to_string() } else { format!("installed here: {}", here.join(", ")) }
    )))
}

/// Each scope path as a glob: a folder of the worktree as `folder/**`, a file as itself.
pub fn scope_globs(worktree: &Path, scope: &[String]) -> Vec<String> {
    scope
        .iter()
        .map(|s| {
            let s = s.trim_end_matches('/');
            if worktree.join(s).is_dir() { format!("{s}/**") } else { s.to_string() }
        })
        .collect()
}

/// The files git tracks in the worktree under the scope, sorted.
pub fn scope_files(worktree: &Path, scope: &[String]) -> Result<Vec<String>> {
    let repo = git2::Repository::open(worktree).with_context(|| format!("opening worktree {}", worktree.display()))?;
    let index = repo.index()?;
    let mut files: Vec<String> = index
        .iter()
        .filter_map(|e| String::from_utf8(e.path).ok())
        .filter(|p| scope.iter().any(|s| path_has_prefix(p, s)))
        .collect();
    files.sort();
    Ok(files)
}

/// What a command line is filled in with.
pub struct Fill<'a> {
    pub prompt: &'a str,
    pub prompt_file: &'a Path,
    pub worktree: &'a Path,
    pub scope: &'a [String],
}

/// The agent's command line: its placeholders filled, each value quoted for `sh` but
/// `{scope_rules:FORMAT}`, which goes in as it is (inside the template's own quotes), so the
/// scope's paths must hold no character the shell or a JSON string would read.
pub fn command_line(template: &str, fill: &Fill<'_>) -> Result<String> {
    const RULES: &str = "{scope_rules:";
    let globs = scope_globs(fill.worktree, fill.scope);
    let mut out = String::new();
    let mut rest = template;
    while let Some(at) = rest.find(RULES) {
        out.push_str(&rest[..at]);
        let after = &rest[at + RULES.len()..];
        let end = after.find('}').ok_or_else(|| usage(format!("agent command: `{RULES}` without its closing `}}` in `{template}`")))?;
        let format = &after[..end];
        if !format.contains('%') {
            return Err(usage(format!("agent command: {RULES}{format}}} has no `%` where each scope path goes")));
        }
        if let Some(bad) = globs.iter().find(|g| !g.chars().all(|c| c.is_ascii_alphanumeric() || "._/-*".contains(c))) {
            return Err(usage(format!("scope path `{bad}` has characters {RULES}...}} cannot pass through unquoted: use letters, digits, `.`, `_`, `-` and `/` in scope paths")));
        }
        out.push_str(&globs.iter().map(|g| format.replace('%', g)).collect::<Vec<_>>().join(","));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    let files = if out.contains("{scope_files}") { scope_files(fill.worktree, fill.scope)?.iter().map(|f| shell_quote(f)).collect::<Vec<_>>().join(" ") } else { String::new() };
    Ok(out
        .replace("{scope_files}", &files)
        .replace("{prompt_file}", &shell_quote(&fill.prompt_file.display().to_string()))
        .replace("{worktree}", &shell_quote(&fill.worktree.display().to_string()))
        .replace("{scope}", &shell_quote(&fill.scope.join(" ")))
        // Last: the prompt's own text may hold anything, placeholders included.
        .replace("{prompt}", &shell_quote(fill.prompt)))
}

/// What an agent's exit code says.
#[derive(Debug, Clone, PartialEq)]
pub enum Exit {
    Done,
    /// It did not do its work (the preset's `failure_codes`): its change is dropped.
    Failed(String),
    /// It stopped at a limit (`stop_codes`): what it edited counts.
    Stopped(String),
    /// A code the preset does not name (or no preset): the diff decides.
    Unknown,
}

pub fn exit(preset: Option<&AgentPreset>, code: Option<i32>) -> Exit {
    let Some(code) = code else { return Exit::Unknown };
    if code == 0 {
        return Exit::Done;
    }
    let Some(p) = preset else { return Exit::Unknown };
    let named = |m: &std::collections::BTreeMap<String, String>| m.iter().find(|(k, _)| k.parse::<i32>().ok() == Some(code)).map(|(_, v)| v.clone());
    if let Some(why) = named(&p.failure_codes) {
        Exit::Failed(why)
    } else if let Some(why) = named(&p.stop_codes) {
        Exit::Stopped(why)
    } else {
        Exit::Unknown
    }
}

/// The cost the agent reported in its output: the last number after `"<key>":`.
pub fn reported_cost(output: &str, key: &str) -> Option<f64> {
    if key.is_empty() {
        return None;
    }
    let needle = format!("\"{key}\"");
    let at = output.rfind(&needle)?;
    let rest = output[at + needle.len()..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c))).unwrap_or(rest.len());
    rest[..end].parse::<f64>().ok().filter(|c| c.is_finite() && *c >= 0.0)
}

/// Removes what the agent left in the worktree for itself: the top-level entries matching a
/// pattern (`name`, or `prefix*`). Returns what it removed.
pub fn remove_leftovers(worktree: &Path, patterns: &[String]) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    if patterns.is_empty() {
        return Ok(removed);
    }
    for entry in std::fs::read_dir(worktree).with_context(|| format!("listing {}", worktree.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let matches = patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *p,
        });
        if !matches || name == ".git" {
            continue;
        }
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) }.with_context(|| format!("removing {}", path.display()))?;
        removed.push(name);
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_rules_take_each_scope_path_as_a_glob() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("trainer/src")).unwrap();
        std::fs::write(dir.path().join("trainer/hparams.toml"), "").unwrap();
        let scope = vec!["trainer/src".to_string(), "trainer/hparams.toml".to_string()];
        let fill = Fill { prompt: "it's {worktree}", prompt_file: Path::new("/s/p.md"), worktree: dir.path(), scope: &scope };
        let line = command_line("a 'Read,{scope_rules:Edit(%)}' {prompt} {prompt_file}", &fill).unwrap();
        assert_eq!(line, "a 'Read,Edit(trainer/src/**),Edit(trainer/hparams.toml)' 'it'\\''s {worktree}' /s/p.md");
        let json = command_line("X='{\"edit\":{\"*\":\"deny\",{scope_rules:\"%\":\"allow\"}}}'", &fill).unwrap();
        assert_eq!(json, "X='{\"edit\":{\"*\":\"deny\",\"trainer/src/**\":\"allow\",\"trainer/hparams.toml\":\"allow\"}}'");
        assert!(command_line("{scope_rules:Edit()}", &fill).unwrap_err().to_string().contains("no `%`"));
        let odd = vec!["trainer/my src".to_string()];
        let fill = Fill { scope: &odd, ..fill };
        assert!(command_line("{scope_rules:%}", &fill).unwrap_err().to_string().contains("trainer/my src"));
    }

    #[test]
    fn exit_codes_and_costs() {
        let p = crate::config::builtin_agents()["gemini"].clone();
        assert_eq!(exit(Some(&p), Some(0)), Exit::Done);
        assert!(matches!(exit(Some(&p), Some(42)), Exit::Failed(w) if w.contains("input error")));
        assert!(matches!(exit(Some(&p), Some(53)), Exit::Stopped(w) if w.contains("turn limit")));
        assert_eq!(exit(Some(&p), Some(7)), Exit::Unknown);
        assert_eq!(exit(None, Some(42)), Exit::Unknown);
        assert_eq!(reported_cost(r#"{"type":"result","total_cost_usd": 0.0421,"x":1}"#, "total_cost_usd"), Some(0.0421));
        assert_eq!(reported_cost("no cost here", "total_cost_usd"), None);
        assert_eq!(reported_cost(r#"{"c": 1.5}"#, ""), None);
    }

    #[test]
    fn leftovers_are_the_top_level_entries_named() {
        let dir = tempfile::tempdir().unwrap();
        for f in [".aider.chat.history.md", ".aider.tags.cache.v4/x", "keep.txt", "sub/.aider.x"] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        assert_eq!(remove_leftovers(dir.path(), &[".aider*".into()]).unwrap(), [".aider.chat.history.md", ".aider.tags.cache.v4"]);
        assert!(dir.path().join("keep.txt").exists() && dir.path().join("sub/.aider.x").exists());
    }
}
