//! `molt`: a thin binary over the library crates. It parses arguments, sets up
//! logging and hands each subcommand to its module in `cmd/`.

mod cmd;
mod logging;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Molt: a self-upgrading agent host with signed, sandboxed pre-upgrade checks.
#[derive(Parser)]
#[command(name = "molt", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `molt=debug`.
    #[arg(
        long = "log-level",
        global = true,
        env = "MOLT_LOG",
        default_value = "info"
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a complete demo upgrade of a real local install, offline.
    Demo(cmd::demo::DemoArgs),
    /// Generate an Ed25519 signing key (PKCS#8) and print its key id.
    Keygen(cmd::bundle::KeygenArgs),
    /// Create, sign and rotate the trust root (root.json).
    #[command(subcommand)]
    Root(cmd::bundle::RootCmd),
    /// Pack, sign, verify and inspect signed bundles.
    #[command(subcommand)]
    Bundle(cmd::bundle::BundleCmd),
    /// Parse package names (buildstamps) and print their fields or their order.
    Buildstamp(cmd::bundle::BuildstampArgs),
    /// Author and run pre-upgrade checks locally.
    #[command(subcommand)]
    Check(cmd::check::CheckCmd),
    /// Run the control plane.
    Serve(cmd::serve::ServeArgs),
    /// Operate the fleet through the control plane's admin API: rollouts, blocklist, status.
    Fleet(cmd::fleet::FleetArgs),
    /// Run the agent service.
    Agent(cmd::agent::AgentArgs),
    /// Ask the local agent to check for an upgrade now.
    #[command(subcommand)]
    Upgrade(cmd::agent::UpgradeCmd),
    /// The deploy runner (started by the agent at hand-over).
    Deploy(cmd::deploy::DeployArgs),
    /// Built-in supervisor: keep the agent running and own its pidfile.
    Run(cmd::deploy::RunArgs),
    /// Show installed and assigned versions, status, the last upgrade and open issues.
    Status(cmd::ops::StatusArgs),
    /// Match logs, journal and history against known failure signatures.
    Diagnose(cmd::ops::DiagnoseArgs),
    /// Rebuild a broken install from a full signed package (dry run by default).
    Repair(cmd::ops::RepairArgs),
    /// Verify and place packages for an offline upgrade.
    Import(cmd::ops::ImportArgs),
    /// Install an agent: verify packages, create the home and account, install and start the service.
    Install(cmd::install::InstallArgs),
    /// Stop and remove an agent's service and its install directory.
    Uninstall(cmd::install::UninstallArgs),
}

fn main() -> ExitCode {
    logging::end_quietly_on_broken_pipe();
    let cli = Cli::parse();
    logging::init(&cli.log);
    let result = match cli.command {
        Command::Demo(a) => cmd::demo::run(a),
        Command::Keygen(a) => cmd::bundle::keygen(a),
        Command::Root(c) => cmd::bundle::root(c),
        Command::Bundle(c) => cmd::bundle::bundle(c),
        Command::Buildstamp(a) => cmd::bundle::buildstamp(a),
        Command::Check(c) => cmd::check::run(c),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Fleet(a) => cmd::fleet::run(a),
        Command::Agent(a) => cmd::agent::run(a),
        Command::Upgrade(c) => cmd::agent::upgrade(c),
        Command::Deploy(a) => cmd::deploy::deploy(a),
        Command::Run(a) => cmd::deploy::run(a),
        Command::Status(a) => cmd::ops::status(a),
        Command::Diagnose(a) => cmd::ops::diagnose(a),
        Command::Repair(a) => cmd::ops::repair(a),
        Command::Import(a) => cmd::ops::import(a),
        Command::Install(a) => cmd::install::install(a),
        Command::Uninstall(a) => cmd::install::uninstall(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks over every subcommand (duplicate option
    /// names, bad defaults): the same asserts that otherwise panic at run time.
    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
