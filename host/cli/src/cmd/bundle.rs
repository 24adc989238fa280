//! `molt keygen`, `molt root`, `molt bundle`, `molt buildstamp` (owner: bundle work).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct KeygenArgs {}
#[derive(clap::Subcommand)]
pub enum RootCmd {}
#[derive(clap::Subcommand)]
pub enum BundleCmd {}
#[derive(clap::Args)]
pub struct BuildstampArgs {}

pub fn keygen(_a: KeygenArgs) -> anyhow::Result<ExitCode> { anyhow::bail!("not yet implemented") }
pub fn root(c: RootCmd) -> anyhow::Result<ExitCode> { match c {} }
pub fn bundle(c: BundleCmd) -> anyhow::Result<ExitCode> { match c {} }
pub fn buildstamp(_a: BuildstampArgs) -> anyhow::Result<ExitCode> { anyhow::bail!("not yet implemented") }
