//! Building the router, binding the listener (plain or TLS) and running.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::error::{ApiError, ServerError};
use crate::metrics::Metrics;
use crate::packages::PackageIndex;
use crate::state::{AgentRef, AppState, Inner, Watched, hash_token, new_token};
use crate::store::{Store, StoreEvent};
use crate::{api_admin, api_agent, api_rollout, dashboard, files, metrics};

/// Largest JSON body accepted.
pub const MAX_BODY: usize = 1024 * 1024;
/// Largest log upload accepted.
pub const MAX_LOG_UPLOAD: usize = 32 * 1024 * 1024;

/// The HTTP routes of the control plane.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/agent/heartbeat", post(api_agent::heartbeat))
        .route("/api/v1/agent/self", get(api_agent::get_self))
        .route("/api/v1/agent/assigned", get(api_agent::assigned))
        .route(
            "/api/v1/agent/upgrade-slot",
            post(api_agent::acquire_slot).delete(api_agent::release_slot),
        )
        .route("/api/v1/agent/attempts", post(api_agent::create_attempt))
        .route(
            "/api/v1/agent/attempts/{id}/stages",
            post(api_agent::record_stage),
        )
        .route(
            "/api/v1/agent/attempts/{id}/finish",
            post(api_agent::finish_attempt),
        )
        .route("/api/v1/agent/issues", post(api_agent::report_issues))
        .route("/api/v1/agent/commands", get(api_agent::poll_commands))
        .route(
            "/api/v1/agent/commands/{id}/done",
            post(api_agent::command_done),
        )
        .route(
            "/api/v1/agent/logs",
            post(api_agent::upload_logs).layer(DefaultBodyLimit::max(MAX_LOG_UPLOAD)),
        )
        .route("/packages/{file}", get(files::get_package))
        .route(
            "/api/v1/admin/agents",
            post(api_admin::create_agent).get(api_admin::list_agents),
        )
        .route(
            "/api/v1/admin/agents/{name}",
            axum::routing::delete(api_admin::delete_agent),
        )
        .route(
            "/api/v1/admin/agents/{name}/commands",
            post(api_admin::post_command),
        )
        .route(
            "/api/v1/admin/agents/{name}/attempts",
            get(api_admin::list_attempts),
        )
        .route(
            "/api/v1/admin/agents/{name}/logs",
            get(api_admin::list_logs),
        )
        .route("/api/v1/admin/logs/{id}", get(api_admin::get_log))
        .route(
            "/api/v1/admin/fleet",
            get(api_admin::get_fleet).put(api_admin::put_fleet),
        )
        .route(
            "/api/v1/admin/fleet/override",
            put(api_admin::put_override).delete(api_admin::delete_override),
        )
        .route("/api/v1/admin/commands", get(api_admin::list_commands))
        .route("/api/v1/admin/issues", get(api_admin::list_issues))
        .route(
            "/api/v1/admin/issues/{id}/acknowledge",
            post(api_admin::acknowledge_issue),
        )
        .route(
            "/api/v1/admin/issues/{id}/resolve",
            post(api_admin::resolve_issue),
        )
        .route("/api/v1/admin/upgrade-slots", get(api_admin::upgrade_slots))
        .route(
            "/api/v1/admin/readiness",
            post(api_admin::post_readiness).get(api_admin::get_readiness),
        )
        .route("/api/v1/admin/purge", post(api_admin::post_purge))
        .route("/api/v1/admin/packages", get(api_admin::list_packages))
        .route("/api/v1/admin/agents/{name}/pin", put(api_admin::put_pin))
        .route(
            "/api/v1/admin/agents/{name}/labels",
            put(api_rollout::put_labels),
        )
        .route(
            "/api/v1/admin/rollouts",
            post(api_rollout::create).get(api_rollout::current),
        )
        .route("/api/v1/admin/rollouts/{id}", get(api_rollout::status))
        .route(
            "/api/v1/admin/rollouts/{id}/pause",
            post(api_rollout::pause),
        )
        .route(
            "/api/v1/admin/rollouts/{id}/resume",
            post(api_rollout::resume),
        )
        .route(
            "/api/v1/admin/rollouts/{id}/abort",
            post(api_rollout::abort),
        )
        .route("/api/v1/admin/blocklist", get(api_rollout::blocklist))
        .route("/api/v1/admin/fleet/agents", get(api_rollout::agents_page))
        .route(
            "/api/v1/admin/blocklist/{version}",
            axum::routing::delete(api_rollout::clear_blocked),
        )
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/dashboard") }),
        )
        .route(
            "/login",
            get(dashboard::get_login).post(dashboard::post_login),
        )
        .route("/logout", post(dashboard::post_logout))
        .route("/dashboard", get(dashboard::index))
        .route("/dashboard/fleet", post(dashboard::action_fleet))
        .route("/dashboard/readiness", post(dashboard::action_readiness))
        .route("/dashboard/agents/{name}", get(dashboard::agent_page))
        .route(
            "/dashboard/agents/{name}/upgrade",
            post(dashboard::action_upgrade),
        )
        .route(
            "/dashboard/agents/{name}/grab-logs",
            post(dashboard::action_grab_logs),
        )
        .route(
            "/dashboard/agents/{name}/restart",
            post(dashboard::action_restart),
        )
        .route(
            "/dashboard/issues/{id}/acknowledge",
            post(dashboard::action_ack),
        )
        .route(
            "/dashboard/issues/{id}/resolve",
            post(dashboard::action_resolve),
        )
        .route("/dashboard/logs/{id}", get(dashboard::log_page))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), db_gate))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// `GET /healthz`: the process is alive and serving HTTP (no auth, no
/// database): a load balancer's liveness probe.
async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "ok": true }))
}

/// `GET /readyz`: the database was reachable and its schema current at the
/// last checks (every 500 ms): 503 with the reason otherwise, so a load
/// balancer stops sending traffic to a replica that lost its database.
async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.db_health.is_ok() {
        axum::Json(serde_json::json!({ "ok": true })).into_response()
    } else {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", state.db_health.reason()),
        );
        e.retry_after = Some(5);
        e.into_response()
    }
}

/// While the database is down every endpoint but `/healthz` and `/readyz`
/// answers 503: cached fleet or rollout state may be stale, and an agent told
/// "unavailable" retries where one told an old version would act on it.
async fn db_gate(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.db_health.is_ok() || matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("database unavailable: {}", state.db_health.reason()),
    );
    e.retry_after = Some(5);
    e.into_response()
}

/// A control plane bound to its address, not yet serving.
pub struct BoundServer {
    state: AppState,
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    admin_token: String,
    /// Changes to publish to other replicas (drained once serving).
    outbox: tokio::sync::mpsc::UnboundedReceiver<crate::store::StoreEvent>,
}

impl BoundServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://addr` or `https://addr`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// The admin token in force (configured, read from the file, or generated).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The shared state (for embedding and tests).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until the process ends.
    pub async fn run(self) -> Result<(), ServerError> {
        self.run_until(std::future::pending()).await
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let url = self.url();
        tracing::info!(url = %url, "control plane listening on {url}");
        let app = router(self.state.clone());
        let purge_state = self.state.clone();
        let purger = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                if let Err(e) = api_admin::purge_now(&purge_state).await {
                    tracing::error!(error = %e.message, "issue purge failed");
                }
            }
        });
        let scheduler = tokio::spawn(schedule_while_leader(
            self.state.clone(),
            self.state.config.rollout_tick,
            replica_id(self.local_addr),
        ));
        let replica = crate::state::spawn_replica_tasks(&self.state, self.outbox);
        let result = match self.tls {
            None => {
                use axum::serve::ListenerExt;
                let l = self.listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(l, app).with_graceful_shutdown(shutdown).await
            }
            Some(acceptor) => {
                let l = crate::tls::TlsListener::spawn(self.listener, acceptor, self.local_addr);
                axum::serve(l, app).with_graceful_shutdown(shutdown).await
            }
        };
        purger.abort();
        scheduler.abort();
        // Hand the scheduler's lease over now rather than when the session times out.
        let store = self.state.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.resign()).await;
        for t in replica {
            t.abort();
        }
        result.map_err(ServerError::Serve)
    }
}

/// This replica in the scheduler's log lines: host, listening port and pid.
fn replica_id(addr: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("{host}:{} pid {}", addr.port(), std::process::id())
}

/// Runs the rollout scheduler every `every`, but only while this replica
/// holds the leader lease in the store: replicas on one database would
/// otherwise plan the same step at once. A replica that stands by asks again
/// every tick, so it takes over within a tick or two of the leader's death.
/// Logs `rollout scheduler: leader` / `standing by` once per change.
async fn schedule_while_leader(state: AppState, every: Duration, replica: String) {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = None;
    loop {
        t.tick().await;
        let lead = match state.db(|s| s.try_lead()).await {
            Ok(lead) => lead,
            Err(e) => {
                if leading != Some(false) {
                    tracing::warn!(error = %e.message, "rollout scheduler lease check failed");
                }
                false
            }
        };
        if leading != Some(lead) {
            if lead {
                tracing::info!(replica = %replica, "rollout scheduler: leader (replica {replica})");
            } else {
                tracing::info!(replica = %replica, "rollout scheduler: standing by (replica {replica})");
            }
            leading = Some(lead);
        }
        if !lead {
            continue;
        }
        let Err(e) = crate::rollout::tick(&state).await else {
            continue;
        };
        tracing::error!(error = %e.message, "rollout scheduler step failed");
        // Admissions are cached before they are stored: forget any not stored.
        if let Err(e) = crate::rollout::reload(&state).await {
            tracing::error!(error = %e.message, "rollout cache reload failed");
        }
    }
}

/// Opens the database and packages directory, applies start-up settings and
/// binds the listener.
pub async fn bind(config: Config) -> Result<BoundServer, ServerError> {
    let db_path = config.db_path.clone();
    let store: Arc<dyn Store> = {
        let db = db_path
            .to_str()
            .ok_or_else(|| ServerError::Config(format!("--db {db_path:?} is not UTF-8")))?
            .to_string();
        let options = config.db_options;
        tokio::task::spawn_blocking(move || crate::store::open_with(&db, &options))
            .await
            .map_err(|e| ServerError::Config(format!("database task failed: {e}")))?
            .map_err(|source| ServerError::Database {
                // A URL's password stays out of the message.
                path: crate::store::postgres::redact_url(&db_path.display().to_string()),
                source,
            })?
    };
    let admin_token = resolve_admin_token(&config)?;
    if config.db_is_url() && config.logs_dir.is_none() {
        return Err(ServerError::Config(
            "with a PostgreSQL --db uploaded agent logs need a directory every replica shares: pass --logs-dir".into(),
        ));
    }
    let now = config.clock.now();
    for (name, token) in &config.bootstrap_agents {
        api_admin::check_agent_name(name)
            .map_err(|e| ServerError::Config(format!("bootstrap agent {name:?}: {}", e.message)))?;
        if token.len() < 16 {
            return Err(ServerError::Config(format!(
                "bootstrap agent {name:?}: token must be at least 16 characters"
            )));
        }
    }
    {
        let store = store.clone();
        let agents = config.bootstrap_agents.clone();
        tokio::task::spawn_blocking(move || {
            agents
                .iter()
                .try_for_each(|(n, t)| store.upsert_agent_token(n, &hash_token(t), now).map(|_| ()))
        })
        .await
        .map_err(|e| ServerError::Config(format!("bootstrap task failed: {e}")))?
        .map_err(ServerError::Startup)?;
        if !config.bootstrap_agents.is_empty() {
            tracing::info!(
                agents = config.bootstrap_agents.len(),
                "bootstrap agents registered"
            );
        }
    }
    let tokens: crate::state::TokenMap = store
        .agent_tokens()
        .map_err(ServerError::Startup)?
        .into_iter()
        .map(|(id, name, hash)| {
            (
                hash,
                AgentRef {
                    id,
                    name: name.into(),
                },
            )
        })
        .collect();
    let fleet = store.fleet().map_err(ServerError::Startup)?;
    let packages_dir = config.packages_dir.clone();
    let packages = tokio::task::spawn_blocking(move || PackageIndex::open(&packages_dir))
        .await
        .map_err(|e| ServerError::Config(format!("packages task failed: {e}")))?
        .map_err(|source| ServerError::Packages {
            path: config.packages_dir.display().to_string(),
            source,
        })?;
    let tls = match &config.tls {
        Some(files) => Some(crate::tls::acceptor(files)?),
        None => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen.to_string(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen.to_string(),
        source,
    })?;
    let session = hex::encode(hash_token(&format!("molt-dashboard-session:{admin_token}")));
    let fleet_version = config.fleet_version.clone();
    let (events, outbox) = tokio::sync::mpsc::unbounded_channel();
    let bootstrapped = !config.bootstrap_agents.is_empty();
    let state = AppState(Arc::new(Inner {
        admin_hash: hash_token(&admin_token),
        session,
        store,
        tokens: RwLock::new(tokens),
        packages,
        fleet: RwLock::new(fleet),
        notifies: Mutex::new(HashMap::new()),
        metrics: Metrics::default(),
        rollout: Watched::new(None, StoreEvent::RolloutChanged, events.clone()),
        blocked: Watched::new(
            Default::default(),
            StoreEvent::RolloutChanged,
            events.clone(),
        ),
        answers: RwLock::new(Default::default()),
        pins: RwLock::new(Default::default()),
        tokens_gen: Default::default(),
        db_health: Default::default(),
        events,
        config,
    }));
    if bootstrapped {
        // Tokens reset here must stop working on the other replicas.
        state.publish(StoreEvent::AgentsChanged);
    }
    state
        .reload_pins()
        .await
        .map_err(|e| ServerError::Config(format!("agent pins: {}", e.message)))?;
    crate::rollout::reload(&state)
        .await
        .map_err(|e| ServerError::Config(format!("rollouts: {}", e.message)))?;
    if let Some(v) = fleet_version {
        api_admin::apply_fleet_version(&state, &v)
            .await
            .map_err(|e| ServerError::Config(format!("--fleet-version: {}", e.message)))?;
    }
    tracing::info!(packages = state.packages.current().0.files.len(), dir = %state.packages.dir().display(), "packages directory indexed");
    Ok(BoundServer {
        state,
        listener,
        local_addr,
        tls,
        admin_token,
        outbox,
    })
}

/// Binds and serves until Ctrl-C or SIGTERM.
pub async fn serve(config: Config) -> Result<(), ServerError> {
    let server = bind(config).await?;
    server.run_until(shutdown_signal()).await
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("control plane shutting down");
}

/// The admin token: configured (flag or `MOLT_ADMIN_TOKEN`), else read from
/// `--admin-token-file`, else (SQLite only) the one in `<db>.admin-token` or a
/// new one written there (mode 0600). Replicas on one PostgreSQL must agree,
/// so a URL needs the token or its file: a file next to a URL means nothing.
fn resolve_admin_token(config: &Config) -> Result<String, ServerError> {
    if let Some(t) = &config.admin_token {
        if t.len() < 16 {
            return Err(ServerError::Config(
                "admin token must be at least 16 characters".into(),
            ));
        }
        return Ok(t.clone());
    }
    if let Some(path) = &config.admin_token_file {
        let t = std::fs::read_to_string(path).map_err(|source| ServerError::AdminToken {
            path: path.display().to_string(),
            source,
        })?;
        let t = t.trim();
        if t.len() < 16 {
            return Err(ServerError::AdminToken {
                path: path.display().to_string(),
                source: std::io::Error::other("holds no token of at least 16 characters"),
            });
        }
        tracing::info!(path = %path.display(), "admin token read from --admin-token-file");
        return Ok(t.to_string());
    }
    if config.db_is_url() {
        return Err(ServerError::Config(
            "with a PostgreSQL --db every replica needs the same admin token: pass --admin-token-file or set MOLT_ADMIN_TOKEN".into(),
        ));
    }
    let path = config.sqlite_admin_token_file();
    let err = |source| ServerError::AdminToken {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 16 => {
            tracing::info!(path = %path.display(), "admin token read from file");
            return Ok(t.trim().to_string());
        }
        Ok(_) => {
            return Err(err(std::io::Error::other(
                "file exists but holds no token of at least 16 characters",
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let token = new_token();
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&path).map_err(err)?;
        writeln!(f, "{token}").map_err(err)?;
    }
    tracing::info!(path = %path.display(), "admin token generated and written to file");
    Ok(token)
}
