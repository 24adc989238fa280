//! `molt status`, `molt diagnose`, `molt repair`, `molt import` (owner: operator-tools work).
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct StatusArgs {}
#[derive(clap::Args)]
pub struct DiagnoseArgs {}
#[derive(clap::Args)]
pub struct RepairArgs {}
#[derive(clap::Args)]
pub struct ImportArgs {}

pub fn status(_a: StatusArgs) -> anyhow::Result<ExitCode> { anyhow::bail!("not yet implemented") }
pub fn diagnose(_a: DiagnoseArgs) -> anyhow::Result<ExitCode> { anyhow::bail!("not yet implemented") }
pub fn repair(_a: RepairArgs) -> anyhow::Result<ExitCode> { anyhow::bail!("not yet implemented") }
pub fn import(_a: ImportArgs) -> anyhow::Result<ExitCode> { anyhow::bail!("not yet implemented") }
