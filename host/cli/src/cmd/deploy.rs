//! `molt deploy` (the runner, started by the agent at hand-over) and `molt run`
//! (the built-in supervisor). Thin: all logic lives in `molt-deploy`.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use molt_deploy::runner::DeployResult;
use molt_layout::Home;

/// The deploy runner. Exit codes: 0 Complete, 2 Rolled Back (old version Up),
/// 3 Failed (rollback failed too), 1 error before anything was touched.
#[derive(clap::Args)]
pub struct DeployArgs {
    /// The install directory.
    #[arg(long)]
    pub home: PathBuf,
    /// `plan.json` in the hand-over directory (`work/upgrade_temp/<n>-0/plan.json`).
    #[arg(long, conflicts_with_all = ["resume", "request"], required_unless_present_any = ["resume", "request"])]
    pub plan: Option<PathBuf>,
    /// Finish or undo an interrupted deploy from `work/deploy.journal`.
    #[arg(long, conflicts_with = "request")]
    pub resume: bool,
    /// Run what the agent asked for in `work/upgrade.request` (the companion unit
    /// of an unprivileged agent: started as root, it acts as the home's owner and
    /// uses root only to control the unit given by --service).
    #[arg(long, requires = "service")]
    pub request: bool,
    /// The one service this runner controls, `systemd:<unit>` or `supervisor`.
    #[arg(long)]
    pub service: Option<String>,
}

/// The built-in supervisor: keeps `<home>/current/bin/molt agent` running.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The install directory.
    #[arg(long)]
    pub home: PathBuf,
    /// Seconds the agent has to exit after SIGTERM before it is killed.
    #[arg(long, default_value_t = 60)]
    pub stop_timeout: u64,
}

pub fn deploy(a: DeployArgs) -> anyhow::Result<ExitCode> {
    let home = Home::new(&a.home);
    let result = if a.request {
        let service = molt_deploy::service::ServiceKind::parse(a.service.as_deref().unwrap_or(""))
            .context("--service")?;
        match molt_deploy::runner::run_requested(&home, &service)
            .context("run the requested upgrade")?
        {
            Some(r) => r,
            None => {
                println!(
                    "no upgrade request and no unfinished deploy in {}",
                    a.home.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
    } else if a.resume {
        match molt_deploy::runner::resume(&home).context("resume an interrupted deploy")? {
            Some(r) => r,
            None => {
                println!("no unfinished deploy in {}", a.home.display());
                return Ok(ExitCode::SUCCESS);
            }
        }
    } else {
        let plan = a.plan.context("--plan is required")?;
        molt_deploy::runner::run(&home, &plan)
            .with_context(|| format!("deploy {}", plan.display()))?
    };
    Ok(match result {
        DeployResult::Complete { version } => {
            println!("Upgrade Complete: version {version} is Up");
            ExitCode::SUCCESS
        }
        DeployResult::RolledBack { version, reason } => {
            println!("Upgrade Rolled Back: version {version} is Up again ({reason})");
            ExitCode::from(2)
        }
        DeployResult::Failed { reason } => {
            eprintln!("Upgrade Failed: {reason}");
            ExitCode::from(3)
        }
    })
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    let home = Home::new(&a.home);
    let opts = molt_deploy::supervisor::SupervisorOptions {
        stop_timeout: std::time::Duration::from_secs(a.stop_timeout),
        ..Default::default()
    };
    molt_deploy::supervisor::run(&home, &opts)
        .with_context(|| format!("supervise {}", a.home.display()))?;
    Ok(ExitCode::SUCCESS)
}
