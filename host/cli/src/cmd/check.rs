//! `molt check new|run` (owner: sandbox work).
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum CheckCmd {}

pub fn run(c: CheckCmd) -> anyhow::Result<ExitCode> { match c {} }
