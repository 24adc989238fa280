//! `molt agent` (the agent service) and `molt upgrade now` (ask it to check now).
//! Thin: all logic lives in `molt-agent`.
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use molt_layout::Home;
use tracing_subscriber::layer::SubscriberExt;

/// The agent service. Exit codes: 0 stopped or handed over to deploy, 75 restart
/// requested (the supervisor starts it again), 1 error (e.g. invalid config.toml).
#[derive(clap::Args)]
pub struct AgentArgs {
    /// The install directory (holds config.toml, current/, work/, logs/).
    #[arg(long, env = "MOLT_HOME")]
    pub home: PathBuf,
}

#[derive(clap::Subcommand)]
pub enum UpgradeCmd {
    /// Ask the running agent to run an upgrade check now (via `<home>/work/agent.sock`).
    Now {
        /// The install directory.
        #[arg(long, env = "MOLT_HOME")]
        home: PathBuf,
    },
}

/// Logs go to stderr and to `<home>/logs/agent.log`. The process-wide subscriber
/// (stderr only) is set by main; the agent's runtime threads use this one instead.
fn agent_dispatch(home: &Home) -> anyhow::Result<tracing::Dispatch> {
    let log = home.agent_log();
    std::fs::create_dir_all(home.logs_dir())
        .with_context(|| format!("create {}", home.logs_dir().display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("open {}", log.display()))?;
    let filter = std::env::var("MOLT_LOG").unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sub = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(crate::logging::stderr_colour())
                .with_writer(std::io::stderr),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(false)
                .with_writer(Mutex::new(file)),
        );
    Ok(tracing::Dispatch::new(sub))
}

pub fn run(a: AgentArgs) -> anyhow::Result<ExitCode> {
    let home = Home::new(&a.home);
    let dispatch = agent_dispatch(&home)?;
    let _main = tracing::dispatcher::set_default(&dispatch);
    let d2 = dispatch.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // Runtime threads live as long as the runtime: keep the guard.
            std::mem::forget(tracing::dispatcher::set_default(&d2));
        })
        .build()
        .context("start the async runtime")?;
    let result = rt.block_on(molt_agent::run(home));
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(molt_agent::Exit::Restart) => Ok(ExitCode::from(75)),
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            tracing::error!("Agent cannot start: {e}");
            Err(anyhow::Error::new(e).context(format!("molt agent --home {}", a.home.display())))
        }
    }
}

pub fn upgrade(c: UpgradeCmd) -> anyhow::Result<ExitCode> {
    match c {
        UpgradeCmd::Now { home } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let answer = rt.block_on(molt_agent::request_upgrade_now(&Home::new(&home)))?;
            println!("{answer}");
            Ok(if answer.starts_with("error") {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
