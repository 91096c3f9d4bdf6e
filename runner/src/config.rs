//! The research configuration: `configs/research.toml` plus command-line overrides.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use contract::budget::Budget;
use serde::{Deserialize, Serialize};

use crate::errors::usage;

/// Where `run` looks for the config when `--config` is not given (relative to the repository).
pub const DEFAULT_CONFIG: &str = "configs/research.toml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Lower,
    Higher,
}

impl Direction {
    /// How much `candidate` improves on `best` (positive = better), whatever the direction.
    pub fn gain(self, best: f64, candidate: f64) -> f64 {
        match self {
            Direction::Lower => best - candidate,
            Direction::Higher => candidate - best,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProposerKind {
    Search,
    Agent,
    Manual,
    Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    /// `slots` experiments at once on this machine.
    Local,
    /// One `sbatch` job per experiment run, on a Slurm cluster sharing this filesystem.
    Slurm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
/// The keep rule the config names: parsed here, at the edge; the rules themselves are `keep`'s.
pub enum KeepRuleKind {
    Strict,
    NoiseAware,
    Significant,
}

macro_rules! display_via_serde {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned));
                f.write_str(&s.unwrap_or_default())
            }
        }
    )*};
}
display_via_serde!(Direction, ProposerKind, ExecutorKind, KeepRuleKind);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The preset of `[agents.<name>]` to run (`--agent NAME`): its command, install hint and
    /// exit codes. Used when `command` is empty.
    pub preset: String,
    /// Shell command line of a headless coding agent, instead of a preset's. Placeholders:
    /// {prompt} (shell-quoted prompt text), {prompt_file}, {worktree}, {scope},
    /// {scope_rules:FORMAT}, {scope_files}.
    pub command: String,
    pub timeout_seconds: u64,
    /// The agent's standing instructions, prepended to every prompt.
    pub program: String,
    /// How many recent results rows go into the prompt.
    pub recent_results: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig { preset: "claude".into(), command: String::new(), timeout_seconds: 1200, program: "configs/program.md".into(), recent_results: 20 }
    }
}

/// One coding agent the `agent` proposer can run by name (`[agents.<name>]`, `--agent NAME`):
/// how it is started headless, how it is kept to the scope, and what its exit codes mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPreset {
    /// What the agent is called (`Claude Code`).
    pub name: String,
    /// The executable that must be on PATH.
    pub binary: String,
    /// How to install it, said when it is missing.
    pub install: String,
    /// The command line, with the placeholders of `[agent] command`.
    pub command: String,
    /// Exit codes after which the agent did not do its work: the change is dropped, with the
    /// meaning in the log (`"42" = "input error"`).
    #[serde(default)]
    pub failure_codes: BTreeMap<String, String>,
    /// Exit codes of an agent stopped at one of its limits: what it edited so far counts.
    #[serde(default)]
    pub stop_codes: BTreeMap<String, String>,
    /// Files the agent leaves in the worktree for itself (`.aider*`): removed before the
    /// change is committed, so they are not taken for part of it.
    #[serde(default)]
    pub leftovers: Vec<String>,
    /// A key of the agent's JSON output holding what the call cost in US dollars
    /// (`total_cost_usd`), summed for `max_cost`; empty when it reports none.
    #[serde(default)]
    pub cost_key: String,
}

/// The shipped configs/research.toml's `read_only`: the one place the read-only paths are
/// written (a config without the key gets them).
pub fn builtin_read_only() -> Vec<String> {
    let shipped: toml::Table = toml::from_str(include_str!("../../configs/research.toml")).unwrap_or_default();
    shipped.get("read_only").cloned().and_then(|r| r.try_into().ok()).unwrap_or_default()
}

/// The `[agents.*]` of the shipped configs/research.toml: the presets every config has, a
/// config's own `[agents.<name>]` tables going over them key by key.
pub fn builtin_agents() -> BTreeMap<String, AgentPreset> {
    let shipped: toml::Table = toml::from_str(include_str!("../../configs/research.toml")).unwrap_or_default();
    shipped.get("agents").cloned().and_then(|a| a.try_into().ok()).unwrap_or_default()
}

/// A config file's `[agents.<name>]` table: every key optional, over the preset of that name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentPatch {
    name: Option<String>,
    binary: Option<String>,
    install: Option<String>,
    command: Option<String>,
    failure_codes: Option<BTreeMap<String, String>>,
    stop_codes: Option<BTreeMap<String, String>>,
    leftovers: Option<Vec<String>>,
    cost_key: Option<String>,
}

fn merge_agents<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, AgentPreset>, D::Error> {
    use serde::de::Error;
    let patches: BTreeMap<String, AgentPatch> = BTreeMap::deserialize(d)?;
    let mut out = builtin_agents();
    for (key, p) in patches {
        let base = out.get(&key).cloned();
        let need = |v: Option<String>, field: &str| {
            v.or_else(|| base.as_ref().map(|b| match field {
                "name" => b.name.clone(),
                "binary" => b.binary.clone(),
                "install" => b.install.clone(),
                _ => b.command.clone(),
            }))
            .ok_or_else(|| D::Error::custom(format!("[agents.{key}]: a new preset needs `{field}`")))
        };
        let preset = AgentPreset {
            name: need(p.name, "name")?,
            binary: need(p.binary, "binary")?,
            install: need(p.install, "install")?,
            command: need(p.command, "command")?,
            failure_codes: p.failure_codes.or_else(|| base.as_ref().map(|b| b.failure_codes.clone())).unwrap_or_default(),
            stop_codes: p.stop_codes.or_else(|| base.as_ref().map(|b| b.stop_codes.clone())).unwrap_or_default(),
            leftovers: p.leftovers.or_else(|| base.as_ref().map(|b| b.leftovers.clone())).unwrap_or_default(),
            cost_key: p.cost_key.or_else(|| base.as_ref().map(|b| b.cost_key.clone())).unwrap_or_default(),
        };
        out.insert(key, preset);
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandConfig {
    /// Shell command run in the experiment's worktree to make one change.
    pub command: String,
    pub timeout_seconds: u64,
}

impl Default for CommandConfig {
    fn default() -> Self {
        CommandConfig { command: String::new(), timeout_seconds: 600 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManualConfig {
    /// How often `run` checks the database for `tree record`.
    pub poll_seconds: f64,
}

impl Default for ManualConfig {
    fn default() -> Self {
        ManualConfig { poll_seconds: 2.0 }
    }
}

/// The `[slurm]` table: how each experiment's `sbatch` job is asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    /// `--partition`; empty: the cluster's default.
    pub partition: String,
    /// `--account`; empty: none.
    pub account: String,
    /// `--gres=gpu:N`; 0: no GPU requested.
    pub gpus: u32,
    /// `--cpus-per-task`.
    pub cpus_per_task: u32,
    /// `--mem`, e.g. `32G`; empty: the cluster's default.
    pub mem: String,
    /// Added to the hard timeout for `--time` (queueing is not counted; Slurm's own limit is a
    /// backstop behind the runner's `scancel`).
    pub time_margin_minutes: u64,
    /// More `#SBATCH` lines, verbatim (e.g. "--qos=high", "--constraint=h100").
    pub extra_directives: Vec<String>,
    /// Shell lines run before the build, e.g. "module load cuda/12.4".
    pub setup: Vec<String>,
    /// How often `squeue` is polled.
    pub poll_seconds: f64,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        SlurmConfig {
            partition: String::new(),
            account: String::new(),
            gpus: 1,
            cpus_per_task: 8,
            mem: String::new(),
            time_margin_minutes: 10,
            extra_directives: Vec::new(),
            setup: Vec::new(),
            poll_seconds: 5.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResearchConfig {
    /// Run name: branch `autoresearch/<tag>`. Empty: today's date (e.g. `nov25`).
    pub tag: String,
    /// The trainer crate (the code under research).
    pub trainer: String,
    /// Path prefixes a change may touch. Empty: `<trainer>/src` and `<trainer>/hparams.toml`.
    pub scope: Vec<String>,
    /// Paths whose content is hashed at run start and must not change.
    pub read_only: Vec<String>,
    /// `SECONDS`, `time:SECONDS`, `tokens:N` or `flops:N`, as the harness reads them: parsed
    /// when the file (or `--budget`) is read, so a bad one is refused before anything runs.
    pub budget: Budget,
    /// Key of the harness's JSON summary that is optimised.
    pub metric: String,
    pub direction: Direction,
    /// Experiments after the baseline; 0 = unlimited.
    pub max_experiments: u64,
    /// The run's results.tsv; `{tag}` stands for the tag, so each run has its own.
    pub results_file: String,
    pub proposer: ProposerKind,
    pub executor: ExecutorKind,
    /// Experiments in flight at once; 0 = one per GPU found by `detect` (one on a CPU-only
    /// machine) for `local`, 4 for `slurm`.
    pub slots: usize,
    pub keep_rule: KeepRuleKind,
    /// `significant`: the one-sided level of the test (the chance of keeping a change that
    /// does nothing).
    pub significance: f64,
    /// `significant`: the most runs of one decision: the candidate's, and the best's that its
    /// test asks for.
    pub max_candidate_runs: u32,
    /// Score the held-out split on the baseline's runs and, after each keep, on one more run of
    /// the kept node; the scores go into the report and the logs, never to a proposer.
    pub held_out: bool,
    /// Baseline repetitions (different seeds) for the noise estimate (noise-aware only).
    pub baseline_runs: u32,
    /// Smallest gain that counts when the measured noise is 0 (noise-aware only).
    pub noise_floor: f64,
    /// Kill an experiment after this long; 0 = 2 x time budget + build allowance.
    pub hard_timeout_seconds: u64,
    pub build_allowance_seconds: u64,
    pub seed: u64,
    /// Platform profile; empty = the one `detect` picks.
    pub profile: String,
    /// Harness `--device`; empty = the harness default.
    pub device: String,
    /// Harness `--cache-dir`; empty = the harness default.
    pub cache_dir: String,
    /// Harness `--device-batch-scale`; 0 = the profile's value.
    pub device_batch_scale: f64,
    /// Extra cargo features for the harness build (e.g. `tch`, `wgpu`); empty = the defaults.
    pub features: String,
    /// The scorer: a harness binary to use for the whole run. Empty: the runner builds it once
    /// from the run's base commit into `.autoresearch/<tag>/bin/harness`.
    pub harness: String,
    /// Refuse to run (or build) a trainer without a kernel sandbox. Off only where there is
    /// none (macOS, Windows, old kernels): then every result says `sandbox: none`.
    pub require_sandbox: bool,
    /// Shell command that runs one experiment in the worktree; empty = build and run the
    /// harness. Placeholders: {summary_json} {seed} {budget} {profile} {device}
    /// {device_batch_scale} {cache_dir} {target_dir} {worktree}.
    pub experiment_command: String,
    pub search_space: String,
    /// Search: children tried under the best node before backtracking.
    pub search_patience: u32,
    /// Run in the worktree after a candidate passes the keep rule, in the build sandbox; a
    /// failure (or the timeout) records `checks_failed` with its output and keeps nothing.
    /// Empty: no checks.
    pub checks_command: String,
    pub checks_timeout_seconds: u64,
    /// Stop after this many experiments in a row without a keep; 0: never.
    pub max_without_keep: u64,
    /// Stop starting experiments once the run has been going this many hours (summed over
    /// `--resume`s); 0: no limit.
    pub max_hours: f64,
    /// Stop starting experiments once the run has cost this many dollars: the agents' reported
    /// costs plus `cost_per_hour` for every hour of the run; 0: no limit.
    pub max_cost: f64,
    /// What an hour of this machine costs (dollars), for `max_cost`.
    pub cost_per_hour: f64,
    /// At a time budget, flag a decision whose candidate and best ran at tokens/s further apart
    /// than the runs' spread, and run the best again beside the candidate.
    pub throughput_guard: bool,
    pub agent: AgentConfig,
    /// The coding agents `--agent NAME` picks from: the shipped presets, this file's
    /// `[agents.<name>]` tables over them.
    #[serde(deserialize_with = "merge_agents")]
    pub agents: BTreeMap<String, AgentPreset>,
    pub command: CommandConfig,
    pub manual: ManualConfig,
    pub slurm: SlurmConfig,
}

impl Default for ResearchConfig {
    fn default() -> Self {
        ResearchConfig {
            tag: String::new(),
            trainer: "trainer".into(),
            scope: Vec::new(),
            read_only: builtin_read_only(),
            budget: Budget::Time(300.0),
            metric: "val_bpb".into(),
            direction: Direction::Lower,
            max_experiments: 100,
            results_file: ".autoresearch/{tag}/results.tsv".into(),
            proposer: ProposerKind::Search,
            executor: ExecutorKind::Local,
            slots: 0,
            keep_rule: KeepRuleKind::Significant,
            significance: 0.05,
            max_candidate_runs: 3,
            held_out: true,
            baseline_runs: 4,
            noise_floor: 0.001,
            hard_timeout_seconds: 0,
            build_allowance_seconds: 900,
            seed: 42,
            profile: String::new(),
            device: String::new(),
            cache_dir: String::new(),
            device_batch_scale: 0.0,
            features: String::new(),
            harness: String::new(),
            require_sandbox: true,
            experiment_command: String::new(),
            search_space: "configs/search_space.toml".into(),
            search_patience: 8,
            checks_command: String::new(),
            checks_timeout_seconds: 600,
            max_without_keep: 0,
            max_hours: 0.0,
            max_cost: 0.0,
            cost_per_hour: 0.0,
            throughput_guard: true,
            agent: AgentConfig::default(),
            agents: builtin_agents(),
            command: CommandConfig::default(),
            manual: ManualConfig::default(),
            slurm: SlurmConfig::default(),
        }
    }
}

impl ResearchConfig {
    /// Reads `path` (relative to `repo` when relative). A missing default file gives defaults.
    pub fn load(repo: &Path, path: Option<&Path>) -> Result<ResearchConfig> {
        let (file, explicit) = match path {
            Some(p) => (resolve(repo, p), true),
            None => (repo.join(DEFAULT_CONFIG), false),
        };
        if !file.exists() {
            if explicit {
                return Err(usage(format!("--config {}: no such file", file.display())));
            }
            return Ok(ResearchConfig::default());
        }
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        toml::from_str(&text).map_err(|e| usage(format!("{}: {e}", file.display())))
    }

    /// Fills derived defaults and checks every value; errors name the key.
    pub fn finalize(&mut self) -> Result<()> {
        if self.tag.is_empty() {
            self.tag = today_tag();
        }
        validate_tag(&self.tag)?;
        if self.scope.is_empty() {
            self.scope = vec![format!("{}/src", self.trainer), format!("{}/hparams.toml", self.trainer)];
        }
        if self.metric.is_empty() {
            return Err(usage("metric: must name a key of the summary JSON (e.g. val_bpb)"));
        }
        if self.keep_rule != KeepRuleKind::Strict && self.baseline_runs < 2 {
            return Err(usage(format!("baseline_runs: the {} rule needs at least 2 baseline runs to measure the noise (or use --keep-rule strict)", self.keep_rule)));
        }
        if !(self.significance > 0.0 && self.significance < 0.5) {
            return Err(usage("significance: must be in (0, 0.5), e.g. 0.05"));
        }
        if self.max_candidate_runs < 2 {
            return Err(usage("max_candidate_runs: must be at least 2 (a candidate is kept from its second run on)"));
        }
        if self.baseline_runs == 0 {
            self.baseline_runs = 1;
        }
        if !(self.noise_floor >= 0.0) {
            return Err(usage("noise_floor: must be >= 0"));
        }
        if self.device_batch_scale < 0.0 || self.device_batch_scale > 1.0 {
            return Err(usage("device_batch_scale: must be in (0, 1], or 0 for the profile's value"));
        }
        if !(self.slurm.poll_seconds > 0.0) {
            return Err(usage("slurm.poll_seconds: must be > 0"));
        }
        if self.proposer == ProposerKind::Command && self.command.command.trim().is_empty() {
            return Err(usage("proposer `command` needs [command] command = \"...\" in the config or --proposer-command"));
        }
        if self.proposer == ProposerKind::Agent && self.agent.command.trim().is_empty() {
            self.agent_preset()?;
        }
        for (key, v) in [("max_hours", self.max_hours), ("max_cost", self.max_cost), ("cost_per_hour", self.cost_per_hour)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(usage(format!("{key} (--{}): must be a number >= 0 (0: no limit)", key.replace('_', "-"))));
            }
        }
        for (name, p) in &self.agents {
            for (code, _) in p.failure_codes.iter().chain(&p.stop_codes) {
                if code.parse::<i32>().is_err() {
                    return Err(usage(format!("[agents.{name}]: exit code `{code}` is not a number (write \"42\" = \"what it means\")")));
                }
            }
        }
        Ok(())
    }

    /// The agent preset `[agent] preset` (or `--agent`) names, with its name; a usage error
    /// listing the presets when there is no such one.
    pub fn agent_preset(&self) -> Result<(&str, &AgentPreset)> {
        let name = self.agent.preset.trim();
        match self.agents.get_key_value(name) {
            Some((k, p)) => Ok((k.as_str(), p)),
            None => Err(usage(format!(
                "--agent / [agent] preset: no agent preset `{name}`; the presets are {} ([agents.<name>] in configs/research.toml), or give your own command with --agent-command",
                self.agents.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// The agent proposer's command line: `[agent] command`, else its preset's.
    pub fn agent_command(&self) -> String {
        if !self.agent.command.trim().is_empty() {
            return self.agent.command.clone();
        }
        self.agent_preset().map(|(_, p)| p.command.clone()).unwrap_or_default()
    }

    /// The kill deadline for one experiment (build included).
    pub fn hard_timeout(&self) -> std::time::Duration {
        if self.hard_timeout_seconds > 0 {
            return std::time::Duration::from_secs(self.hard_timeout_seconds);
        }
        let run = match self.budget {
            Budget::Time(s) => 2.0 * s,
            // Token and FLOP budgets have no wall-clock length: allow half an hour.
            _ => 1800.0,
        };
        std::time::Duration::from_secs_f64(run + self.build_allowance_seconds as f64)
    }

    /// Whether a repository-relative path lies in the modification scope.
    pub fn in_scope(&self, path: &str) -> bool {
        self.scope.iter().any(|s| path_has_prefix(path, s))
    }
}

/// `path` equals `prefix` or lies below it (both repository-relative, `/`-separated).
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
}

pub fn resolve(repo: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { repo.join(p) }
}

pub fn validate_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && !tag.starts_with(['.', '-'])
        && !tag.ends_with(".lock")
        && !tag.contains("..")
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(usage(format!("tag `{tag}`: use letters, digits, `-`, `_` and `.` (it becomes branch autoresearch/<tag>)")))
    }
}

/// Today's local date as the reference's tags: `nov25`.
pub fn today_tag() -> String {
    const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    let now = unsafe { libc::time(std::ptr::null_mut()) };
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&now, &mut tm).is_null() };
    if !ok {
        return "run".into();
    }
    format!("{}{}", MONTHS[(tm.tm_mon.clamp(0, 11)) as usize], tm.tm_mday)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_scope() {
        let mut c = ResearchConfig::default();
        c.finalize().unwrap();
        assert!(c.in_scope("trainer/src/model.rs"));
        assert!(c.in_scope("trainer/hparams.toml"));
        assert!(!c.in_scope("trainer/Cargo.toml"));
        assert!(!c.in_scope("trainer/build.rs"));
        assert!(!c.in_scope("trainers/x"));
        assert!(!c.in_scope("harness/src/main.rs"));
        assert_eq!(c.hard_timeout().as_secs(), 600 + 900);
        assert!(validate_tag("nov25").is_ok());
        assert!(validate_tag("a/b").is_err());
    }

    #[test]
    fn shipped_config_parses() {
        let text = include_str!("../../configs/research.toml");
        let mut c: ResearchConfig = toml::from_str(text).unwrap();
        c.finalize().unwrap();
        // The shipped file documents the defaults: the keep rule and the held-out split too.
        let d = ResearchConfig::default();
        assert_eq!((c.keep_rule, c.significance, c.max_candidate_runs, c.baseline_runs, c.held_out), (d.keep_rule, d.significance, d.max_candidate_runs, d.baseline_runs, d.held_out));
        // The read-only paths are written once, there, and every crate the trainer does not
        // own is among them.
        assert_eq!(c.read_only, d.read_only);
        for path in ["contract", "experiment", "prepare", "harness", "trainer/kernels", "trainer/src/main.rs"] {
            assert!(d.read_only.iter().any(|p| p == path), "{path}: {:?}", d.read_only);
        }
    }

    #[test]
    fn the_shipped_agent_presets_are_every_configs_and_a_table_goes_over_one_key_by_key() {
        let shipped = builtin_agents();
        assert_eq!(shipped.keys().map(String::as_str).collect::<Vec<_>>(), ["aider", "claude", "codex", "gemini", "opencode"]);
        assert!(shipped.contains_key(&ResearchConfig::default().agent.preset));
        let c: ResearchConfig = toml::from_str(
            "[agents.codex]\ncommand = \"codex exec --full-auto {prompt}\"\n[agents.mine]\nname = \"Mine\"\nbinary = \"mine\"\ninstall = \"make install\"\ncommand = \"mine {prompt}\"\n",
        )
        .unwrap();
        assert_eq!(c.agents["codex"].command, "codex exec --full-auto {prompt}");
        assert_eq!(c.agents["codex"].install, shipped["codex"].install, "the keys not given stay the preset's");
        assert_eq!((c.agents.len(), c.agents["mine"].binary.as_str()), (6, "mine"));
        let err = toml::from_str::<ResearchConfig>("[agents.new]\ncommand = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("[agents.new]: a new preset needs `name`"), "{err}");
        let mut c: ResearchConfig = toml::from_str("[agents.gemini]\nfailure_codes = { x = \"y\" }\n").unwrap();
        assert!(c.finalize().unwrap_err().to_string().contains("[agents.gemini]: exit code `x` is not a number"));
        // The config a run stores (JSON) reads back with the same presets.
        let back: ResearchConfig = serde_json::from_str(&serde_json::to_string(&ResearchConfig::default()).unwrap()).unwrap();
        assert_eq!(back.agents, shipped);
    }
}
