//! `molt run`: the built-in supervisor. It keeps `<home>/current/bin/molt agent`
//! running, owns `conf/agent.pid`, forwards SIGTERM, does not start the agent
//! while `conf/deploy.hold` says a runner is deploying, and notices a runner that
//! died (its deploy lock is free but the journal is still there) and starts a
//! resume runner to finish or undo it.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use molt_layout::Home;

use crate::error::{DeployError, io_err};
use crate::fsutil::{self, FileLock};
use crate::journal::Journal;
use crate::service;

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_sig: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

/// Supervisor settings.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    /// How long the agent has to exit after SIGTERM before it is killed.
    pub stop_timeout: Duration,
    /// The `molt` binary used to start a resume runner (default: our own).
    pub exe: PathBuf,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        Self {
            stop_timeout: Duration::from_secs(60),
            exe: crate::runner::self_exe(),
        }
    }
}

fn install_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
    }
}

fn spawn_agent(home: &Home) -> Result<Child, DeployError> {
    let exe = home.current_exe();
    let log = home.agent_console_log();
    std::fs::create_dir_all(home.logs_dir()).map_err(io_err(&home.logs_dir()))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io_err(&log))?;
    let err = out.try_clone().map_err(io_err(&log))?;
    Command::new(&exe)
        .args(["agent", "--home", &home.root().to_string_lossy()])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| DeployError::Spawn {
            what: format!("{} agent", exe.display()),
            source,
        })
}

/// Run the supervisor until SIGTERM/SIGINT.
pub fn run(home: &Home, opts: &SupervisorOptions) -> Result<(), DeployError> {
    let others = service::detect_services(home)?;
    let Some(_lock) = FileLock::try_acquire(&service::supervisor_lock(home))? else {
        return Err(DeployError::DuplicateService(format!(
            "a supervisor already serves {}: {}",
            home.root().display(),
            others.join(", ")
        )));
    };
    if !others.is_empty() {
        return Err(DeployError::DuplicateService(format!(
            "{} is already served by {}",
            home.root().display(),
            others.join(", ")
        )));
    }
    std::fs::create_dir_all(home.conf_dir()).map_err(io_err(&home.conf_dir()))?;
    molt_layout::write_atomic(
        &home.supervisor_pid_file(),
        format!("{}\n", std::process::id()).as_bytes(),
    )?;
    install_handlers();
    tracing::info!(home = %home.root().display(), pid = std::process::id(), "supervisor started");

    let mut child: Option<Child> = None;
    let mut last_spawn: Option<Instant> = None;
    let mut backoff = Duration::from_millis(200);
    let mut last_resume: Option<Instant> = None;
    let mut last_prune = Instant::now();
    let lock_path = Journal::lock_path(home);
    loop {
        if TERM.load(Ordering::SeqCst) {
            if let Some(mut c) = child.take() {
                tracing::info!(
                    pid = c.id(),
                    "supervisor stopping: forwarding SIGTERM to the agent"
                );
                crate::proc::signal(c.id(), libc::SIGTERM);
                let start = Instant::now();
                loop {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    if start.elapsed() >= opts.stop_timeout {
                        tracing::warn!(pid = c.id(), "agent did not stop in time; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = fsutil::remove_file_opt(&home.agent_pid_file());
            let _ = fsutil::remove_file_opt(&home.supervisor_pid_file());
            tracing::info!("supervisor stopped");
            return Ok(());
        }
        if let Some(c) = child.as_mut()
            && let Ok(Some(status)) = c.try_wait()
        {
            tracing::info!(pid = c.id(), %status, "agent exited");
            child = None;
            let _ = fsutil::remove_file_opt(&home.agent_pid_file());
            // Quick exits back off (a crashing version must not spin).
            if last_spawn.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
                backoff = (backoff * 2).min(Duration::from_secs(5));
            } else {
                backoff = Duration::from_millis(200);
            }
        }
        let deploying = FileLock::is_held(&lock_path).unwrap_or(true);
        let journal = home.journal_file().exists();
        if journal && !deploying {
            // A runner died half-way. Start one that resumes its journal.
            if last_resume.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                tracing::warn!(
                    "found an unfinished deploy journal with no runner; starting a resume runner"
                );
                let log = home.deploy_resume_log();
                match service::spawn_detached(
                    &opts.exe,
                    &[
                        "deploy",
                        "--home",
                        &home.root().to_string_lossy(),
                        "--resume",
                    ],
                    &log,
                ) {
                    Ok(pid) => tracing::info!(pid, "resume runner started"),
                    Err(e) => tracing::error!(error = %e, "cannot start the resume runner"),
                }
                last_resume = Some(Instant::now());
            }
        } else if home.hold_marker().exists() {
            if !deploying && !journal {
                tracing::warn!("removing a stale deploy hold (no runner holds the deploy lock)");
                let _ = fsutil::remove_file_opt(&home.hold_marker());
            }
        } else if child.is_none() && last_spawn.is_none_or(|t| t.elapsed() >= backoff) {
            match spawn_agent(home) {
                Ok(c) => {
                    tracing::info!(pid = c.id(), version = ?home.current_version().ok().flatten(), "agent started");
                    let _ = molt_layout::write_atomic(
                        &home.agent_pid_file(),
                        format!("{}\n", c.id()).as_bytes(),
                    );
                    child = Some(c);
                }
                Err(e) => tracing::error!(error = %e, "cannot start the agent"),
            }
            last_spawn = Some(Instant::now());
        }
        if last_prune.elapsed() > Duration::from_secs(10) {
            last_prune = Instant::now();
            if let Err(e) = crate::prune::retry_pending(home) {
                tracing::warn!(error = %e, "pruning retry failed");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
