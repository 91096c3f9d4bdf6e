//! `command` proposer: runs a shell command in the worktree to make one change. It is the generic
//! hook for scripts and headless agents; `AUTORESEARCH_PROPOSAL_FILE` takes the description
//! (line 1) and the hypothesis (the rest). An empty diff means no proposal.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::{Applied, Ctx, Plan, Proposer, proposer_env, read_proposal_file};
use crate::config::ProposerKind;
use crate::db::Node;
use crate::process::{self, Output};

pub struct CommandProposer;

impl Proposer for CommandProposer {
    fn kind(&self) -> ProposerKind {
        ProposerKind::Command
    }

    fn plan(&mut self, ctx: &Ctx<'_>) -> Result<Option<Plan>> {
        Ok(Some(Plan {
            parent: ctx.best,
            hypothesis: String::new(),
            description: format!("command proposal {}", ctx.iteration),
            change: None,
            idea: false,
        }))
    }

    fn adopt(&mut self, _ctx: &Ctx<'_>, idea: &Node) -> Result<Option<Plan>> {
        Ok(Plan::from_idea(idea))
    }

    fn apply(&mut self, ctx: &Ctx<'_>, node: &Node, _plan: &Plan, worktree: &Path) -> Result<Applied> {
        let logs = ctx.state_dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let proposal = crate::layout::proposal_file(ctx.state_dir, &node.name());
        std::fs::create_dir_all(proposal.parent().unwrap())?;
        let _ = std::fs::remove_file(&proposal);
        let log = logs.join(format!("{}-propose.log", node.name()));
        let fin = process::run_shell(
            &ctx.cfg.command.command,
            worktree,
            &proposer_env(ctx, node, worktree, &proposal),
            Output::Log(&log),
            Duration::from_secs(ctx.cfg.command.timeout_seconds.max(1)),
            |_| Ok(()),
            |_| {},
        )?;
        if fin.interrupted {
            return Err(crate::errors::CliError::Interrupted.into());
        }
        if fin.timed_out {
            return Ok(Applied::Failed(format!("proposer command timed out after {} s", ctx.cfg.command.timeout_seconds)));
        }
        if fin.code != Some(0) {
            return Ok(Applied::Failed(format!(
                "proposer command exited with {:?}: {}",
                fin.code,
                process::tail(&log, 3).replace('\n', " | ")
            )));
        }
        let (description, hypothesis) = read_proposal_file(&proposal);
        Ok(Applied::Done { description, hypothesis })
    }
}
