//! `molt serve` (owner: control-plane work).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ServeArgs {}

pub fn run(_a: ServeArgs) -> anyhow::Result<ExitCode> { anyhow::bail!("not yet implemented") }
