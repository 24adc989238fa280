//! `molt demo`: the README's main-job command.
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct DemoArgs {}

pub fn run(_a: DemoArgs) -> anyhow::Result<ExitCode> { anyhow::bail!("not yet implemented") }
