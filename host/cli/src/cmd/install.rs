//! `molt install` / `molt uninstall`: thin over `molt_ops::install`.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use molt_ops::install::{InstallOptions, ServiceChoice};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ServiceArg {
    Systemd,
    Supervisor,
}

impl From<ServiceArg> for ServiceChoice {
    fn from(s: ServiceArg) -> Self {
        match s {
            ServiceArg::Systemd => ServiceChoice::Systemd,
            ServiceArg::Supervisor => ServiceChoice::Supervisor,
        }
    }
}

/// Install an agent: verify the packages, create the home (and the account),
/// write config.toml, install and start the service.
#[derive(clap::Args)]
pub struct InstallArgs {
    /// The install directory (must not exist, or be empty).
    #[arg(long)]
    pub home: PathBuf,
    /// A signed package: the core package, and optionally a runtime package.
    #[arg(long = "package", required = true)]
    pub packages: Vec<PathBuf>,
    /// The trust root (root.json) the packages are verified against.
    #[arg(long)]
    pub root: PathBuf,
    /// The control plane's base URL.
    #[arg(long)]
    pub control_plane: String,
    /// The agent's name on the control plane.
    #[arg(long)]
    pub agent_name: String,
    /// The agent's token (or MOLT_AGENT_TOKEN, which keeps it off the command line).
    #[arg(long, env = "MOLT_AGENT_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The service manager that keeps the agent running.
    #[arg(long, value_enum)]
    pub service: ServiceArg,
    /// Run the agent as this account (created when missing); default root.
    #[arg(long)]
    pub user: Option<String>,
    /// The systemd unit's name.
    #[arg(long, default_value = "molt-agent")]
    pub unit: String,
    /// A file whose lines are appended to config.toml (settings from docs/agent.md).
    #[arg(long)]
    pub config_extra: Option<PathBuf>,
    /// PEM bundle of a private CA to trust besides the web PKI (a self-hosted
    /// control plane or package site); copied into the install as `ca_bundle`.
    #[arg(long, value_name = "PEM")]
    pub ca_bundle: Option<PathBuf>,
    /// Install and enable, but do not start the service.
    #[arg(long)]
    pub no_start: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Stop and remove an agent's service and its install directory.
#[derive(clap::Args)]
pub struct UninstallArgs {
    #[arg(long)]
    pub home: PathBuf,
    #[arg(long, value_enum)]
    pub service: ServiceArg,
    #[arg(long, default_value = "molt-agent")]
    pub unit: String,
    #[arg(long)]
    pub json: bool,
}

pub fn install(a: InstallArgs) -> anyhow::Result<ExitCode> {
    let extra_config = match &a.config_extra {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
        None => String::new(),
    };
    let r = molt_ops::install::install(&InstallOptions {
        home: a.home.clone(),
        packages: a.packages,
        root: a.root,
        control_plane: a.control_plane,
        agent_name: a.agent_name,
        token: a.token,
        service: a.service.into(),
        user: a.user,
        unit: a.unit,
        extra_config,
        ca_bundle: a.ca_bundle,
        start: !a.no_start,
    })
    .with_context(|| format!("install into {}", a.home.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "Installed version {} into {} ({}), service {} as {}{}",
            r.version,
            r.home.display(),
            r.packages.join(", "),
            r.service,
            r.user,
            if r.started {
                ", started"
            } else {
                ", not started"
            }
        );
        for f in &r.files {
            println!("  wrote {}", f.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn uninstall(a: UninstallArgs) -> anyhow::Result<ExitCode> {
    let r = molt_ops::install::uninstall(&a.home, a.service.into(), &a.unit)
        .with_context(|| format!("uninstall {}", a.home.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for f in &r.removed {
            println!("removed {}", f.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
