//! `molt status`, `molt diagnose`, `molt repair`, `molt import` (owner: operator
//! tools). Thin: the logic lives in `molt-ops`.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use molt_layout::Home;

/// Installed and assigned versions, status, the last upgrade attempt and open issues.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// The install directory.
    #[arg(long, env = "MOLT_HOME")]
    pub home: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Do not contact the control plane; local state only.
    #[arg(long)]
    pub offline: bool,
    /// Admin token: adds the control plane's open issues and upgrade history.
    #[arg(long, env = "MOLT_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Seconds to wait for the control plane.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

/// Match logs, journal and history against known failure signatures.
/// Exit status: 0 when no failure signature matched, 1 when one did (or on error).
#[derive(clap::Args)]
pub struct DiagnoseArgs {
    /// The install directory.
    #[arg(long, env = "MOLT_HOME")]
    pub home: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Extra log files to read (e.g. logs grabbed from another host).
    #[arg(long = "log")]
    pub logs: Vec<PathBuf>,
}

/// Rebuild an install from full signed packages (dry run unless --apply).
#[derive(clap::Args)]
pub struct RepairArgs {
    /// The install directory.
    #[arg(long, env = "MOLT_HOME")]
    pub home: PathBuf,
    /// A full signed package: molt-core...zip, plus molt-runtime...zip if the install has a runtime.
    #[arg(long = "package", required = true)]
    pub packages: Vec<PathBuf>,
    /// Trusted root.json to verify with (default: the install's).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Do it. Without this only the plan is printed.
    #[arg(long)]
    pub apply: bool,
    /// Start the service (`molt run`) afterwards and wait until the agent is Up.
    #[arg(long)]
    pub start: bool,
    /// Seconds to wait for Up with --start.
    #[arg(long, default_value_t = 120)]
    pub wait: u64,
    /// Proceed even if processes still use files of the old install.
    #[arg(long)]
    pub force: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Verify packages and place them for an agent that cannot reach the download site.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// The install directory.
    #[arg(long, env = "MOLT_HOME")]
    pub home: PathBuf,
    /// Package files, or directories of packages.
    #[arg(required = true)]
    pub packages: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let home = Home::new(&a.home);
    let opts = molt_ops::status::StatusOptions {
        admin_token: a.admin_token,
        timeout: Duration::from_secs(a.timeout.max(1)),
        offline: a.offline,
    };
    let r = molt_ops::status::status(&home, &opts);
    if a.json {
        print_json(&r)?;
    } else {
        print!("{}", r.render_text());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn diagnose(a: DiagnoseArgs) -> anyhow::Result<ExitCode> {
    let home = Home::new(&a.home);
    let r = molt_ops::diagnose::diagnose(&home, &a.logs).context("diagnose")?;
    if a.json {
        print_json(&r)?;
    } else {
        print!("{}", r.render_text());
    }
    Ok(ExitCode::from(r.exit_code()))
}

pub fn repair(a: RepairArgs) -> anyhow::Result<ExitCode> {
    let home = Home::new(&a.home);
    let opts = molt_ops::repair::RepairOptions {
        packages: a.packages,
        root: a.root,
        apply: a.apply,
        start: a.start,
        wait: Duration::from_secs(a.wait),
        molt_exe: molt_deploy::runner::self_exe(),
        force: a.force,
    };
    let out = molt_ops::repair::repair(&home, &opts)
        .with_context(|| format!("repair {}", a.home.display()))?;
    if a.json {
        print_json(&out)?;
    } else {
        print!("{}", out.render_text());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn import(a: ImportArgs) -> anyhow::Result<ExitCode> {
    let home = Home::new(&a.home);
    let out = molt_ops::import::import(&home, &a.packages).context("import")?;
    if a.json {
        print_json(&out)?;
    } else {
        for i in &out {
            println!(
                "{} {} ({} {}) -> {}",
                if i.already_present {
                    "Already present:"
                } else {
                    "Imported:"
                },
                i.name,
                i.kind,
                i.version,
                i.dest.display()
            );
        }
        println!(
            "{} package(s) ready in {}; the agent uses them at its next upgrade check (`molt upgrade now`).",
            out.len(),
            home.incoming_dir().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
