//! `molt deploy` (the runner) and `molt run` (the supervisor) (owner: deploy work).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct DeployArgs {}
#[derive(clap::Args)]
pub struct RunArgs {}

pub fn deploy(_a: DeployArgs) -> anyhow::Result<ExitCode> { anyhow::bail!("not yet implemented") }
pub fn run(_a: RunArgs) -> anyhow::Result<ExitCode> { anyhow::bail!("not yet implemented") }
