//! `molt agent`, `molt upgrade now` (owner: agent work).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct AgentArgs {}
#[derive(clap::Subcommand)]
pub enum UpgradeCmd {}

pub fn run(_a: AgentArgs) -> anyhow::Result<ExitCode> { anyhow::bail!("not yet implemented") }
pub fn upgrade(c: UpgradeCmd) -> anyhow::Result<ExitCode> { match c {} }
