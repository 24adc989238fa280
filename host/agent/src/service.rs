//! The long-running agent: status, heartbeats, triggers (start, hourly, commands,
//! `molt upgrade now`), one upgrade at a time, and the report queue's flusher.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use molt_layout::{AgentStatus, Home};
use molt_protocol::{AgentCommand, CommandError, CommandKind};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::client::{Client, ClientError};
use crate::config::{AgentConfig, ConfigError};
use crate::deps::InvalidVersion;
use crate::reporter::Reporter;
use crate::stages::{Mode, UpgradeOutcome};

/// Agent status: the control plane's words (Up, Upgrading, Paused, Down,
/// Upgrade Failed), shared through molt-protocol.
pub use molt_protocol::AgentStatus as Status;

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("another agent is already running on {home} (lock {lock} is held)")]
    AlreadyRunning { home: PathBuf, lock: PathBuf },
    #[error("start-up recovery failed: {0}")]
    Recovery(#[source] molt_deploy::DeployError),
    #[error("start-up recovery failed: {0}")]
    RecoveryTask(#[source] tokio::task::JoinError),
}

/// Why `run` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The deploy runner has the upgrade; the process must exit now.
    HandedOver { to_version: String },
    /// A restart command; the supervisor starts the agent again.
    Restart,
    /// SIGTERM / Ctrl-C.
    Stopped,
}

/// What started an upgrade check.
#[derive(Debug)]
pub enum Trigger {
    Startup,
    Hourly,
    Command {
        id: serde_json::Value,
        kind: CommandKind,
        /// `args.version`: the version to check or upgrade to (else the assignment).
        version: Option<String>,
        /// This command holds the "a check is queued" flag (see `claim`).
        claimed: bool,
        /// When the command was received (to tell whether a check ran since).
        at: std::time::Instant,
    },
    Local {
        reply: oneshot::Sender<String>,
    },
}

/// The running agent.
pub struct Agent {
    pub home: Home,
    pub cfg: AgentConfig,
    pub client: Client,
    pub reporter: Reporter,
    pub(crate) status: Mutex<Status>,
    pub(crate) version: String,
    pub(crate) host: String,
    /// The version the control plane assigned at the last version check.
    pub(crate) last_assigned: std::sync::Mutex<Option<String>>,
    /// The next check was asked for by an operator (`upgrade` command, `molt
    /// upgrade now`): it ends a hold after rollback.
    pub(crate) retry_requested: std::sync::atomic::AtomicBool,
    /// The running check answers a command (see `AssignedQuery::fresh`).
    pub(crate) on_command: std::sync::atomic::AtomicBool,
}

impl Agent {
    pub fn new(home: Home, cfg: AgentConfig) -> Result<Self, AgentError> {
        let client = Client::new(&cfg)?;
        let version = home.current_version().ok().flatten().unwrap_or_default();
        let reporter = Reporter::new(client.clone(), home.report_queue_file());
        Ok(Self {
            home,
            cfg,
            client,
            reporter,
            status: Mutex::new(Status::Up),
            version,
            host: hostname(),
            last_assigned: std::sync::Mutex::new(None),
            retry_requested: std::sync::atomic::AtomicBool::new(false),
            on_command: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Set and publish the status: the status file first (the deploy runner's
    /// health check reads it), then a heartbeat.
    pub async fn set_status(&self, s: Status) {
        {
            let mut g = self.status.lock().await;
            *g = s;
        }
        tracing::info!(
            status = s.as_str(),
            "Setting agent status to {}",
            s.as_str()
        );
        self.write_status(s);
        self.heartbeat().await;
    }

    fn write_status(&self, s: Status) {
        let st = AgentStatus {
            pid: std::process::id(),
            version: self.version.clone(),
            status: s,
            since: chrono::Utc::now(),
        };
        if let Err(e) = self.home.write_status(&st) {
            tracing::error!(error = %e, "Cannot write the agent status file");
        }
    }

    pub async fn status(&self) -> Status {
        *self.status.lock().await
    }

    async fn heartbeat(&self) {
        let s = self.status().await;
        match self
            .client
            .heartbeat(&self.host, &self.version, s, std::process::id())
            .await
        {
            Ok(()) => {
                // The control plane is back: deliver what was queued.
                if let Err(e) = self.reporter.flush().await {
                    tracing::error!(error = %e, "Cannot read the report queue");
                }
            }
            Err(e) => tracing::warn!(error = %e, "Heartbeat failed"),
        }
    }
}

/// Run the agent on `home` until it hands over, restarts or is stopped.
pub async fn run(home: Home) -> Result<Exit, AgentError> {
    let cfg = AgentConfig::load(home.root())?;
    for d in [
        home.work_dir(),
        home.logs_dir(),
        home.incoming_dir(),
        home.upgrade_temp_dir(),
        home.conf_dir(),
    ] {
        std::fs::create_dir_all(&d).map_err(|e| AgentError::Io {
            path: d.clone(),
            message: e.to_string(),
        })?;
    }
    let _lock = lock_home(&home)?;
    // Finish or undo an interrupted deploy before anything else.
    let h2 = home.clone();
    let service = cfg.service.clone();
    let s2 = service.clone();
    let in_progress =
        match tokio::task::spawn_blocking(move || molt_deploy::recover::recover_as(&h2, &s2)).await
        {
            Ok(Ok(outcome)) => {
                tracing::info!(outcome = ?outcome, "Start-up recovery");
                outcome == molt_deploy::RecoveryOutcome::DeployInProgress
            }
            Ok(Err(e)) => return Err(AgentError::Recovery(e)),
            Err(e) => return Err(AgentError::RecoveryTask(e)),
        };
    // While a runner is health-checking this process (the new version, or the
    // old one after a rollback), no upgrade check starts: it would report
    // Upgrading instead of Up and hand over a second time under the runner.
    let (deploy_done, mut deploy_done_rx) = tokio::sync::watch::channel(!in_progress);
    if in_progress {
        // Once the runner is done, clean what it left (the upgrade dir with its
        // runner copy and logs, which the agent log already holds).
        tokio::spawn(clean_after_deploy(home.clone(), deploy_done));
    }
    let agent = Arc::new(Agent::new(home, cfg)?);
    tracing::info!(version = %agent.version, home = %agent.home.root().display(), control_plane = %agent.client.base(), "Agent starting");
    cleanup_stale_temp(&agent.home);
    agent.set_status(Status::Up).await;

    let (tx, mut rx) = mpsc::channel::<Trigger>(16);
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let restart_pending = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // An upgrade check is queued or running: triggers that arrive meanwhile
    // (the start check, the fleet's autoUpgrade, the hourly timer) coalesce
    // into it instead of starting a second attempt right after it.
    let queued = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (exit_tx, mut exit_rx) = mpsc::channel::<Exit>(1);

    claim(&queued);
    let _ = tx.send(Trigger::Startup).await;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(heartbeat_loop(agent.clone()));
    tasks.spawn(hourly_loop(tx.clone(), queued.clone()));
    tasks.spawn(command_loop(
        agent.clone(),
        tx.clone(),
        busy.clone(),
        queued.clone(),
        restart_pending.clone(),
        exit_tx.clone(),
    ));
    let sock = agent.home.work_dir().join("agent.sock");
    match tokio::net::UnixListener::bind(replace_socket(&sock)) {
        Ok(l) => {
            tasks.spawn(socket_loop(l, tx.clone(), queued.clone()));
        }
        Err(e) => {
            tracing::warn!(socket = %sock.display(), error = %e, "Cannot listen for `molt upgrade now`")
        }
    }

    // The upgrade worker: one check at a time.
    let worker = {
        let agent = agent.clone();
        let busy = busy.clone();
        let restart_pending = restart_pending.clone();
        let queued = queued.clone();
        let exit_tx = exit_tx.clone();
        tokio::spawn(async move {
            // When the last upgrade check finished.
            let mut last_finished: Option<std::time::Instant> = None;
            if !*deploy_done_rx.borrow() {
                tracing::info!("Upgrade checks wait until the running deploy has finished");
                let _ = deploy_done_rx.wait_for(|done| *done).await;
            }
            while let Some(t) = rx.recv().await {
                busy.store(true, std::sync::atomic::Ordering::SeqCst);
                let (mode, cmd, reply, version, claimed) = match t {
                    Trigger::Startup | Trigger::Hourly => (Mode::Upgrade, None, None, None, true),
                    Trigger::Command {
                        id,
                        kind,
                        version,
                        claimed,
                        at,
                    } => {
                        if kind == CommandKind::AutoUpgrade
                            && last_finished.is_some_and(|f| f > at)
                            && assignment_unchanged(&agent).await
                        {
                            // It arrived while a check ran against this same
                            // assignment: that check already answered it.
                            queued.store(false, std::sync::atomic::Ordering::SeqCst);
                            busy.store(false, std::sync::atomic::Ordering::SeqCst);
                            tracing::info!(
                                "autoUpgrade already answered by the check that just ran"
                            );
                            command_done(
                                &agent,
                                &id,
                                true,
                                "already checked against this assignment",
                            )
                            .await;
                            continue;
                        }
                        if kind == CommandKind::Upgrade {
                            agent
                                .retry_requested
                                .store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        let m = if kind == CommandKind::RunPrecheck {
                            Mode::PrecheckOnly
                        } else {
                            Mode::Upgrade
                        };
                        (m, Some(id), None, version, claimed)
                    }
                    Trigger::Local { reply } => {
                        agent
                            .retry_requested
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                        (Mode::Upgrade, None, Some(reply), None, true)
                    }
                };
                if mode == Mode::Upgrade && claimed {
                    // From now on a new trigger queues a new check (the
                    // assignment may change while this one runs).
                    queued.store(false, std::sync::atomic::Ordering::SeqCst);
                }
                if let Some(r) = reply {
                    let _ = r.send("upgrade check started".into());
                }
                agent
                    .on_command
                    .store(cmd.is_some(), std::sync::atomic::Ordering::SeqCst);
                let outcome = agent.check_and_upgrade(mode, version.as_deref()).await;
                tracing::info!(outcome = ?outcome, "Upgrade check finished");
                if let Some(id) = cmd {
                    let (ok, msg) = match &outcome {
                        UpgradeOutcome::UpToDate => {
                            (true, "up to date / checks passed".to_string())
                        }
                        UpgradeOutcome::HandedOver { to_version } => {
                            (true, format!("handed over to deploy for {to_version}"))
                        }
                        UpgradeOutcome::Prepared { to_version, .. } => {
                            (true, format!("prepared {to_version}"))
                        }
                        UpgradeOutcome::Blocked { message, .. } => (false, message.clone()),
                        UpgradeOutcome::Ready { message } => (true, message.clone()),
                        UpgradeOutcome::Refused { message } => (false, message.clone()),
                        UpgradeOutcome::Failed { stage, message } => {
                            (false, format!("{stage}: {message}"))
                        }
                        UpgradeOutcome::CheckFailed { message } => (false, message.clone()),
                        UpgradeOutcome::HeldAfterRollback { message } => (false, message.clone()),
                    };
                    command_done(&agent, &id, ok, &msg).await;
                }
                busy.store(false, std::sync::atomic::Ordering::SeqCst);
                if mode == Mode::Upgrade {
                    last_finished = Some(std::time::Instant::now());
                }
                if let UpgradeOutcome::HandedOver { to_version } = outcome {
                    let _ = exit_tx.send(Exit::HandedOver { to_version }).await;
                    return;
                }
                if restart_pending.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    tracing::info!("Performing the restart deferred during the upgrade");
                    let _ = exit_tx.send(Exit::Restart).await;
                    return;
                }
            }
        })
    };

    let exit = tokio::select! {
        e = exit_rx.recv() => e.unwrap_or(Exit::Stopped),
        _ = shutdown_signal() => Exit::Stopped,
    };
    tasks.abort_all();
    worker.abort();
    let _ = std::fs::remove_file(&sock);
    match &exit {
        Exit::HandedOver { to_version } => {
            tracing::info!(to_version = %to_version, "Agent stopped for the upgrade");
            // The seeds: the agent is Down from the hand-over until the new
            // version reports Up (the runner's stages say why).
            say_down(&agent).await;
        }
        Exit::Restart => tracing::info!("Agent stopping for restart"),
        Exit::Stopped => {
            tracing::info!("Agent stopping");
            // Say so to the control plane unless the runner is taking over.
            say_down(&agent).await;
        }
    }
    Ok(exit)
}

/// One heartbeat saying Down, given at most 3 s (the agent is stopping).
async fn say_down(agent: &Agent) {
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        agent.client.heartbeat(
            &agent.host,
            &agent.version,
            Status::Down,
            std::process::id(),
        ),
    )
    .await;
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn heartbeat_loop(agent: Arc<Agent>) {
    loop {
        tokio::time::sleep(Duration::from_secs(agent.cfg.heartbeat_secs)).await;
        let s = agent.status().await;
        agent.write_status(s);
        agent.heartbeat().await;
    }
}

/// Every hour, jittered by up to 5 minutes so a fleet does not stampede. Cannot be disabled.
async fn hourly_loop(tx: mpsc::Sender<Trigger>, queued: Arc<std::sync::atomic::AtomicBool>) {
    use rand::Rng;
    loop {
        let jitter = rand::thread_rng().gen_range(0..300u64);
        tokio::time::sleep(Duration::from_secs(3600 + jitter)).await;
        tracing::info!("Hourly upgrade check");
        if !claim(&queued) {
            tracing::info!("Hourly upgrade check skipped: a check is already queued or running");
        } else if tx.try_send(Trigger::Hourly).is_err() {
            queued.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Whether the control plane still assigns what the last check saw (an
/// unreachable control plane counts as changed: the check then reports it).
async fn assignment_unchanged(agent: &Agent) -> bool {
    let seen = agent.last_assigned.lock().ok().and_then(|l| l.clone());
    // Asked because of a command: a fresh read (see `AssignedQuery::fresh`).
    agent
        .on_command
        .store(true, std::sync::atomic::Ordering::SeqCst);
    match (seen, agent.query_assigned(None).await) {
        (Some(seen), Ok((_, now))) => seen == now.version,
        _ => false,
    }
}

/// Take the "an upgrade check is queued" flag; false if one is queued already.
fn claim(queued: &std::sync::atomic::AtomicBool) -> bool {
    use std::sync::atomic::Ordering::SeqCst;
    queued.compare_exchange(false, true, SeqCst, SeqCst).is_ok()
}

async fn command_done(agent: &Agent, id: &serde_json::Value, ok: bool, message: &str) {
    let id = id
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| id.to_string());
    let body = serde_json::json!({"ok": ok, "message": message});
    if let Err(e) = agent
        .reporter
        .send("POST", &format!("/api/v1/agent/commands/{id}/done"), body)
        .await
    {
        tracing::error!(error = %e, "Cannot queue command result");
    }
}

async fn command_loop(
    agent: Arc<Agent>,
    tx: mpsc::Sender<Trigger>,
    busy: Arc<std::sync::atomic::AtomicBool>,
    queued: Arc<std::sync::atomic::AtomicBool>,
    restart_pending: Arc<std::sync::atomic::AtomicBool>,
    exit_tx: mpsc::Sender<Exit>,
) {
    let mut backoff = 1u64;
    loop {
        let cmds = match agent.client.commands(20).await {
            Ok(c) => {
                backoff = 1;
                c
            }
            Err(e) => {
                tracing::debug!(error = %e, "Command poll failed");
                tokio::time::sleep(Duration::from_secs(backoff)).await;
                backoff = (backoff * 2).min(30);
                continue;
            }
        };
        for c in cmds {
            tracing::info!(id = %c.id, kind = %c.kind, "Received command {}", c.kind);
            let upgrading = busy.load(std::sync::atomic::Ordering::SeqCst);
            let cmd = match AgentCommand::from_wire(&c.kind, &c.args) {
                Ok(cmd) => cmd,
                Err(CommandError::UnknownKind(other)) => {
                    command_done(
                        &agent,
                        &c.id,
                        false,
                        &format!("unknown command kind `{other}`"),
                    )
                    .await;
                    continue;
                }
                Err(CommandError::Args(m)) => {
                    tracing::warn!(id = %c.id, kind = %c.kind, "Command refused: {m}");
                    command_done(&agent, &c.id, false, &m).await;
                    continue;
                }
            };
            match cmd.kind() {
                kind @ (CommandKind::AutoUpgrade
                | CommandKind::Upgrade
                | CommandKind::RunPrecheck) => {
                    // autoUpgrade's version only says why it came: the
                    // assignment (with the agent's pin) decides (it has none).
                    let version = match command_version(cmd.version()) {
                        Ok(v) => v,
                        Err(m) => {
                            tracing::warn!(id = %c.id, kind = %c.kind, "Command refused: {m}");
                            command_done(&agent, &c.id, false, &m.to_string()).await;
                            continue;
                        }
                    };
                    let is_upgrade = kind != CommandKind::RunPrecheck;
                    // An operator's `upgrade {version}` names its own target:
                    // it never coalesces into a fleet check already queued.
                    let explicit = kind == CommandKind::Upgrade && version.is_some();
                    let claimed = is_upgrade && claim(&queued);
                    if is_upgrade && !claimed && !explicit {
                        command_done(&agent, &c.id, true, "an upgrade check is already queued")
                            .await;
                    } else if tx
                        .send(Trigger::Command {
                            id: c.id.clone(),
                            kind,
                            version,
                            claimed,
                            at: std::time::Instant::now(),
                        })
                        .await
                        .is_err()
                    {
                        if claimed {
                            queued.store(false, std::sync::atomic::Ordering::SeqCst);
                        }
                        command_done(&agent, &c.id, false, "agent is stopping").await;
                    }
                }
                CommandKind::Restart => {
                    if upgrading {
                        // Failure mode 1.1: a restart must not interrupt an upgrade.
                        restart_pending.store(true, std::sync::atomic::Ordering::SeqCst);
                        command_done(
                            &agent,
                            &c.id,
                            true,
                            "restart deferred until the upgrade ends",
                        )
                        .await;
                        tracing::info!("Restart deferred: agent is Upgrading");
                    } else {
                        command_done(&agent, &c.id, true, "restarting").await;
                        let _ = exit_tx.send(Exit::Restart).await;
                    }
                }
                CommandKind::GrabLogs => {
                    let log = agent.home.agent_log();
                    let bytes = tail(&log, 4 << 20);
                    let r = agent.client.post_logs(bytes).await;
                    command_done(
                        &agent,
                        &c.id,
                        r.is_ok(),
                        &r.err().map(|e| e.to_string()).unwrap_or_default(),
                    )
                    .await;
                }
            }
        }
    }
}

/// A command's `args.version` that is not a buildstamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("args.version `{shown}` is not a valid buildstamp: {reason}")]
pub struct BadVersionArg {
    /// The version as given, bounded.
    shown: String,
    #[source]
    reason: InvalidVersion,
}

/// A command's `args.version` (its shape already checked by
/// [`AgentCommand::from_wire`]): absent is the assignment; else a buildstamp.
fn command_version(version: Option<&str>) -> Result<Option<String>, BadVersionArg> {
    let Some(v) = version else { return Ok(None) };
    crate::deps::validate_version(v)
        .map(|()| Some(v.to_string()))
        .map_err(|reason| BadVersionArg {
            shown: crate::stages::bounded(v.to_string(), 200),
            reason,
        })
}

fn tail(path: &Path, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut v = Vec::new();
    let _ = f.read_to_end(&mut v);
    v
}

/// `molt upgrade now` connects to `<home>/work/agent.sock` and writes `upgrade-now`.
async fn socket_loop(
    l: tokio::net::UnixListener,
    tx: mpsc::Sender<Trigger>,
    queued: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    loop {
        let Ok((stream, _)) = l.accept().await else {
            continue;
        };
        let tx = tx.clone();
        let queued = queued.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                BufReader::new(r).read_line(&mut line),
            )
            .await;
            let answer = match line.trim() {
                "upgrade-now" if !claim(&queued) => {
                    "busy: an upgrade check is already queued".to_string()
                }
                "upgrade-now" => {
                    tracing::info!("Upgrade check requested locally (molt upgrade now)");
                    let (rtx, rrx) = oneshot::channel();
                    match tx.try_send(Trigger::Local { reply: rtx }) {
                        Ok(()) => rrx.await.unwrap_or_else(|_| "agent is stopping".into()),
                        Err(_) => {
                            queued.store(false, std::sync::atomic::Ordering::SeqCst);
                            "busy: an upgrade check is already queued".into()
                        }
                    }
                }
                other => format!("error: unknown request `{other}`"),
            };
            let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
        });
    }
}

/// Ask the agent on `home` to check for an upgrade now; returns its answer.
pub async fn request_upgrade_now(home: &Home) -> Result<String, AgentError> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let sock = home.work_dir().join("agent.sock");
    let io = |e: std::io::Error| AgentError::Io {
        path: sock.clone(),
        message: format!(
            "cannot reach the agent ({e}); is `molt agent --home {}` running?",
            home.root().display()
        ),
    };
    let mut s = tokio::net::UnixStream::connect(&sock).await.map_err(io)?;
    s.write_all(b"upgrade-now\n").await.map_err(io)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await.map_err(io)?;
    Ok(line.trim().to_string())
}

fn replace_socket(p: &Path) -> &Path {
    let _ = std::fs::remove_file(p);
    p
}

/// Exclusive lock on `<home>/work/agent.lock`: one agent per install (failure mode 7.3).
fn lock_home(home: &Home) -> Result<std::fs::File, AgentError> {
    use std::os::fd::AsRawFd;
    let path = home.work_dir().join("agent.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AgentError::Io {
            path: path.clone(),
            message: e.to_string(),
        })?;
    // SAFETY: flock on a valid open descriptor has no memory effects.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(AgentError::AlreadyRunning {
            home: home.root().into(),
            lock: path,
        });
    }
    Ok(f)
}

/// Remove precheck leftovers of a crashed run (`*-precheck` dirs); extract dirs
/// (`*-0`) belong to deploy and are its to clean.
/// Wait (bounded) for the runner that deployed this version to finish, then
/// remove the upgrade dir it worked from (its runner copy and logs; the agent
/// log already holds the upgrade log).
async fn clean_after_deploy(home: Home, done: tokio::sync::watch::Sender<bool>) {
    // Whatever happens below, upgrade checks may run afterwards.
    let _done = scopeguard(move || {
        let _ = done.send(true);
    });
    for _ in 0..3600 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let h = home.clone();
        match tokio::task::spawn_blocking(move || molt_deploy::recover::clean_handed_over(&h)).await
        {
            Ok(Ok(None)) => continue,
            Ok(Ok(Some(removed))) => {
                tracing::info!(
                    count = removed.len(),
                    "Upgrade directory cleaned after the deploy finished"
                );
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Cannot clean the upgrade directory after the deploy");
                return;
            }
            Err(_) => return,
        }
    }
}

/// Run `f` when the returned guard is dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    Guard(Some(f))
}

fn cleanup_stale_temp(home: &Home) {
    let Ok(rd) = std::fs::read_dir(home.upgrade_temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().ends_with("-precheck") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use molt_protocol::AgentCommand;
    use serde_json::json;

    /// What the command loop makes of an `upgrade` command's arguments.
    fn command_version(
        args: &serde_json::Value,
    ) -> Result<Option<String>, Box<dyn std::error::Error>> {
        let c = AgentCommand::from_wire("upgrade", args)?;
        Ok(super::command_version(c.version())?)
    }

    const V: &str = "quebec-12-09-2020__patch2-04-18-2021_05-01-2021_1130";

    #[test]
    fn a_commands_version_is_its_args_version_and_must_be_a_buildstamp() {
        assert_eq!(command_version(&json!(null)).unwrap(), None);
        assert_eq!(command_version(&json!({})).unwrap(), None);
        assert_eq!(command_version(&json!({"version": null})).unwrap(), None);
        assert_eq!(
            command_version(&json!({"version": V})).unwrap(),
            Some(V.into())
        );
        let e = command_version(&json!({"version": 7}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be a string"), "{e}");
        let e = command_version(&json!({"version": "../../x"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid buildstamp"), "{e}");
        let e = command_version(&json!([V])).unwrap_err().to_string();
        assert!(e.contains("must be an object"), "{e}");
    }
}
