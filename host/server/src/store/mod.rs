//! Storage behind the control plane.
//!
//! [`Store`] is the narrow, synchronous repository the HTTP layer uses (always
//! from a blocking thread). [`sqlite::SqliteStore`] is the embedded default;
//! [`postgres::PgStore`] carries fleets that outgrow one machine (several
//! replicas on one database), with the same migrations in its dialect.
//! [`open`] picks one from `--db`. Both pass the contract tests in
//! `host/server/tests/store_contract.rs`.

mod common;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::model::{
    Agent, Attempt, AttemptBrief, AttemptResult, BlockedVersion, Command, CommandKind, Finding,
    FleetState, Heartbeat, HeartbeatOutcome, Issue, IssueReportOutcome, IssueState, Labels,
    LogUpload, RolloutAgentRecord, RolloutRecord, RolloutState, SlotHolder, SlotOutcome, Stage,
    StageState,
};

/// The PostgreSQL channel replicas NOTIFY and LISTEN on.
pub const EVENTS_CHANNEL: &str = "molt_events";

/// SHA-256 of a bearer token; only this is stored.
pub type TokenHash = [u8; 32];

/// A backend's error, kept as the cause of [`StoreError::Database`] and
/// [`StoreError::Migration`] (so no backend's type leaks into the public API).
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store call failed. Backend-neutral: SQLite and PostgreSQL errors are
/// kept as the boxed cause; what callers branch on stays typed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[source] BackendError),
    /// The database cannot be reached now (no connection within the pool's
    /// timeout, connection refused): a replica answers 503 rather than guess.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database migration {version} failed: {source}")]
    Migration {
        version: i64,
        #[source]
        source: BackendError,
    },
    #[error(
        "database {path} was written by a newer molt (schema {found}, this build knows {known})"
    )]
    SchemaTooNew {
        path: String,
        found: i64,
        known: i64,
    },
    /// The schema is older than this build's (another replica is migrating, or
    /// the migration failed): reported by [`Store::readiness`].
    #[error("database schema {found} is not current (this build knows {known})")]
    SchemaBehind { found: i64, known: i64 },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("stored value is corrupt: {0}")]
    Corrupt(String),
}

/// How a replica uses its PostgreSQL database (`molt serve --db-pool-size`,
/// `--db-timeout`). A SQLite file has one connection and ignores both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbOptions {
    /// Connections in the replica's pool: enough for the blocking threads
    /// that hit the database at once. PostgreSQL's default `max_connections`
    /// (100) allows a few replicas at the default.
    pub pool_size: u32,
    /// How long a call waits for a pooled connection (and a new connection
    /// for its handshake) before the database counts as unavailable (503).
    pub timeout: std::time::Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            pool_size: 16,
            timeout: std::time::Duration::from_secs(3),
        }
    }
}

/// Opens the control plane's database: a `postgres://` or `postgresql://` URL
/// opens PostgreSQL (several replicas may share it), anything else is the path
/// of an embedded SQLite file. Both are migrated to this build's schema.
pub fn open(db: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(db, &DbOptions::default())
}

/// [`open`] with explicit pool settings.
pub fn open_with(db: &str, options: &DbOptions) -> Result<Arc<dyn Store>, StoreError> {
    if is_postgres_url(db) {
        Ok(Arc::new(postgres::PgStore::open_with(db, options)?))
    } else {
        Ok(Arc::new(sqlite::SqliteStore::open(std::path::Path::new(
            db,
        ))?))
    }
}

/// Whether `db` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// A change one replica made that the others must see (their caches and held
/// long polls). Published by the replica that made it, after its commit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StoreEvent {
    /// Commands were queued for this agent: wake its long poll.
    Wake(i64),
    /// Commands were queued for every agent (or an unknown set).
    WakeAll,
    /// Agents or their tokens were added, changed or removed.
    AgentsChanged,
    /// The fleet version or override changed.
    FleetChanged,
    /// A rollout was created or changed state.
    RolloutChanged,
}

impl StoreEvent {
    /// The small NOTIFY payload: `wake:<id>`, `wake-all`, `agents`, `fleet`, `rollout`.
    pub fn to_payload(&self) -> String {
        match self {
            StoreEvent::Wake(id) => format!("wake:{id}"),
            StoreEvent::WakeAll => "wake-all".into(),
            StoreEvent::AgentsChanged => "agents".into(),
            StoreEvent::FleetChanged => "fleet".into(),
            StoreEvent::RolloutChanged => "rollout".into(),
        }
    }

    /// Parses [`StoreEvent::to_payload`]; `None` for anything else.
    pub fn from_payload(p: &str) -> Option<Self> {
        match p {
            "wake-all" => Some(StoreEvent::WakeAll),
            "agents" => Some(StoreEvent::AgentsChanged),
            "fleet" => Some(StoreEvent::FleetChanged),
            "rollout" => Some(StoreEvent::RolloutChanged),
            _ => p
                .strip_prefix("wake:")
                .and_then(|id| id.parse().ok())
                .map(StoreEvent::Wake),
        }
    }
}

/// Filter for [`Store::list_issues`].
#[derive(Clone, Debug, Default)]
pub struct IssueFilter {
    pub agent: Option<String>,
    /// Only issues that are not Resolved.
    pub open_only: bool,
    pub state: Option<IssueState>,
}

/// Filter and page of [`Store::agents_page`].
#[derive(Clone, Debug, Default)]
pub struct AgentQuery {
    /// Effective labels the agent must all carry.
    pub labels: Labels,
    /// Effective status (Down: not seen since `seen_after`).
    pub status: Option<crate::model::AgentStatus>,
    pub version: Option<String>,
    /// Liveness cut-off: agents not seen since are Down.
    pub seen_after: DateTime<Utc>,
    /// 1-based.
    pub page: usize,
    pub per_page: usize,
}

/// Column [`Store::agents_sorted_page`] orders by (status: the reported one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AgentSort {
    #[default]
    Name,
    Version,
    Status,
    LastSeen,
}

impl AgentSort {
    /// From a query parameter (`name`, `version`, `status`, `last_seen`).
    pub fn parse(s: &str) -> Option<AgentSort> {
        match s {
            "name" => Some(AgentSort::Name),
            "version" => Some(AgentSort::Version),
            "status" => Some(AgentSort::Status),
            "last_seen" => Some(AgentSort::LastSeen),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AgentSort::Name => "name",
            AgentSort::Version => "version",
            AgentSort::Status => "status",
            AgentSort::LastSeen => "last_seen",
        }
    }
}

/// The control plane's repository. Every method is one transaction.
pub trait Store: Send + Sync + 'static {
    // Replicas.
    /// Database reachable and its schema current. A load balancer's `/readyz`
    /// asks this: a replica that lost its database (or runs against a schema
    /// another build is still migrating) must stop taking traffic rather than
    /// serve stale cached state.
    fn readiness(&self) -> Result<(), StoreError>;
    /// Sends `ev` to every replica on the same database. PostgreSQL: a NOTIFY
    /// on [`EVENTS_CHANNEL`], so a command queued through one replica wakes a
    /// long poll held by another and caches reload. SQLite: nothing to do, one
    /// process owns the file and already knows.
    fn publish(&self, ev: &StoreEvent) -> Result<(), StoreError>;
    /// The events other replicas (and this one) publish, for as long as the
    /// receiver lives. PostgreSQL: a dedicated LISTEN connection that
    /// reconnects with back-off and, after a reconnect, sends `WakeAll`,
    /// `AgentsChanged` and `FleetChanged` because notifications may have been
    /// missed meanwhile. SQLite: `None` (one process, no other writer).
    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<StoreEvent>>;
    /// Whether this process leads the rollout scheduler, taking the lease
    /// when it is free (only the leader runs scheduler steps; the others stand
    /// by). PostgreSQL: a session-level advisory lock held on a dedicated
    /// connection, which the server frees when that session ends, so a killed
    /// leader's lease passes at another replica's next call. SQLite: always
    /// true (one process owns the file).
    fn try_lead(&self) -> Result<bool, StoreError>;
    /// Gives the lease up (a replica shutting down), so another takes over at
    /// its next call of [`Store::try_lead`].
    fn resign(&self);

    // Agents and tokens.
    /// The agent holding this token, straight from the database, so a replica
    /// authenticates an agent registered (or re-tokened) through another one
    /// without waiting for its cache to reload.
    fn agent_by_token(&self, hash: &TokenHash) -> Result<Option<(i64, String)>, StoreError>;
    /// Every agent's token hash, to fill the in-memory authentication map.
    fn agent_tokens(&self) -> Result<Vec<(i64, String, TokenHash)>, StoreError>;
    /// Registers a new agent; `Conflict` when the name is taken.
    fn create_agent(
        &self,
        name: &str,
        token: &TokenHash,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError>;
    /// Creates the agent or replaces its token (start-up bootstrap).
    fn upsert_agent_token(
        &self,
        name: &str,
        token: &TokenHash,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError>;
    /// Removes an agent and everything recorded about it.
    fn delete_agent(&self, name: &str) -> Result<(), StoreError>;
    fn list_agents(&self) -> Result<Vec<Agent>, StoreError>;
    fn agent_by_name(&self, name: &str) -> Result<Option<Agent>, StoreError>;
    /// Records a heartbeat; `window` is the liveness window for duplicate detection.
    fn record_heartbeat(
        &self,
        agent_id: i64,
        hb: &Heartbeat,
        now: DateTime<Utc>,
        window: chrono::Duration,
    ) -> Result<HeartbeatOutcome, StoreError>;

    // Fleet versions.
    fn fleet(&self) -> Result<FleetState, StoreError>;
    /// Sets the fleet buildstamp. When it changes: clears the override and
    /// queues `autoUpgrade` for every agent; returns the agents to wake.
    fn set_fleet_version(&self, version: &str, now: DateTime<Utc>) -> Result<Vec<i64>, StoreError>;
    fn set_fleet_override(&self, version: Option<&str>) -> Result<(), StoreError>;

    // Upgrade semaphore.
    /// Grants a slot while fewer than the limit are held: the stored
    /// [`Store::slot_limit`] when a rollout set one, else `max`.
    fn acquire_slot(
        &self,
        agent_id: i64,
        to_version: &str,
        now: DateTime<Utc>,
        max: u32,
        lease: chrono::Duration,
    ) -> Result<SlotOutcome, StoreError>;
    /// Returns whether the agent held a slot.
    fn release_slot(&self, agent_id: i64) -> Result<bool, StoreError>;
    /// Extends the agent's lease if it holds a slot.
    fn renew_slot(&self, agent_id: i64, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// Current holders (expired leases dropped first).
    fn slot_holders(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<Vec<SlotHolder>, StoreError>;

    // Upgrade history.
    fn create_attempt(
        &self,
        agent_id: i64,
        from: &str,
        to: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError>;
    fn record_stage(
        &self,
        agent_id: i64,
        attempt_id: i64,
        stage: Stage,
        state: StageState,
        message: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    fn finish_attempt(
        &self,
        agent_id: i64,
        attempt_id: i64,
        result: AttemptResult,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    fn list_attempts(&self, agent: &str, limit: usize) -> Result<Vec<Attempt>, StoreError>;

    // Issues.
    /// Applies the whole report of one run of `source`.
    fn report_issues(
        &self,
        agent_id: i64,
        source: &str,
        findings: &[Finding],
        now: DateTime<Utc>,
    ) -> Result<IssueReportOutcome, StoreError>;
    fn list_issues(&self, filter: &IssueFilter) -> Result<Vec<Issue>, StoreError>;
    fn set_issue_state(
        &self,
        id: i64,
        state: IssueState,
        now: DateTime<Utc>,
    ) -> Result<Issue, StoreError>;
    /// Deletes issues last detected before `cutoff`, whatever their state (the
    /// seeds: an issue nobody has seen for 30 days is stale, even if still open);
    /// returns how many.
    fn purge_stale_issues(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError>;

    // Commands.
    fn queue_command(
        &self,
        agent_id: i64,
        kind: CommandKind,
        args: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError>;
    /// Hands out queued commands (marks them Delivered).
    fn take_commands(&self, agent_id: i64, now: DateTime<Utc>) -> Result<Vec<Command>, StoreError>;
    fn complete_command(
        &self,
        agent_id: i64,
        command_id: i64,
        ok: bool,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;
    fn list_commands(&self, agent: Option<&str>, limit: usize) -> Result<Vec<Command>, StoreError>;

    // Logs.
    fn record_log_upload(
        &self,
        agent_id: i64,
        path: &str,
        size: i64,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError>;
    fn list_log_uploads(&self, agent: &str) -> Result<Vec<LogUpload>, StoreError>;
    fn log_upload(&self, id: i64) -> Result<Option<LogUpload>, StoreError>;

    /// One page of agents by name matching the query, and how many match.
    fn agents_page(&self, q: &AgentQuery) -> Result<(Vec<Agent>, usize), StoreError>;

    // Labels.
    /// Replaces the admin's label overrides of an agent.
    fn set_label_overrides(&self, name: &str, labels: &Labels) -> Result<Agent, StoreError>;
    /// Sets (or with `None` clears) the control plane's pin of an agent;
    /// `NotFound` for an unknown agent.
    fn set_agent_pin(&self, name: &str, version: Option<&str>) -> Result<Agent, StoreError>;
    /// Every control-plane pin: (agent id, version), for the replica's cache.
    fn agent_pins(&self) -> Result<Vec<(i64, String)>, StoreError>;

    // Rollouts.
    /// Creates a Running rollout; `Conflict` while another is open (Running,
    /// Paused or Halted) or when the version is blocklisted.
    fn create_rollout(
        &self,
        version: &str,
        spec: &serde_json::Value,
        groups: usize,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError>;
    /// The newest rollout.
    fn latest_rollout(&self) -> Result<Option<RolloutRecord>, StoreError>;
    fn rollout(&self, id: i64) -> Result<Option<RolloutRecord>, StoreError>;
    fn rollout_agents(&self, id: i64) -> Result<Vec<RolloutAgentRecord>, StoreError>;
    /// Attempts to `version` started at or after `since`.
    fn attempts_to(
        &self,
        version: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<AttemptBrief>, StoreError>;
    /// The upgrade semaphore's limit an open rollout set (its max in flight),
    /// which `acquire_slot` uses instead of its `max` (the
    /// `--max-concurrent-upgrades` default); None: no rollout holds it.
    fn slot_limit(&self) -> Result<Option<u32>, StoreError>;
    fn set_slot_limit(&self, limit: Option<u32>) -> Result<(), StoreError>;
    /// [`Store::agents_page`] ordered by `sort` (then by name), for the dashboard.
    /// The default orders by name only (a backend that has not implemented it yet).
    fn agents_sorted_page(
        &self,
        q: &AgentQuery,
        sort: AgentSort,
        descending: bool,
    ) -> Result<(Vec<Agent>, usize), StoreError> {
        let _ = (sort, descending);
        self.agents_page(q)
    }
    /// How many agents run each version (None: never reported), most first.
    /// The default counts the whole agent list (a backend should GROUP BY).
    fn version_counts(&self) -> Result<Vec<(Option<String>, usize)>, StoreError> {
        let mut m = std::collections::BTreeMap::<Option<String>, usize>::new();
        for a in self.list_agents()? {
            *m.entry(a.version).or_default() += 1;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(v)
    }
    /// Ids of the attempts to `version` started at or after `since` whose
    /// Health Check stage is Failed (the halt rule counts them).
    fn health_check_failures(
        &self,
        version: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<i64>, StoreError>;
    /// Applies one scheduler step in one transaction: results seen, group
    /// starts and completions, admissions (an autoUpgrade queued for each that
    /// is not on the version yet), then halt (state Halted, version
    /// blocklisted) or completion (with a catch-all group the fleet buildstamp
    /// becomes the version, no command queued). Returns the agents to wake.
    fn apply_rollout_plan(
        &self,
        id: i64,
        version: &str,
        plan: &crate::rollout::Plan,
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>, StoreError>;
    /// An operator's pause, resume or abort. Resume of a Halted rollout is
    /// refused while its version is blocklisted and forgets the failed
    /// admissions (those agents are admitted again); abort blocklists.
    fn set_rollout_state(
        &self,
        id: i64,
        to: RolloutState,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<RolloutRecord, StoreError>;

    // Blocklist.
    fn blocklist(&self) -> Result<Vec<BlockedVersion>, StoreError>;
    /// `NotFound` when the version is not blocklisted.
    fn clear_blocked(&self, version: &str) -> Result<(), StoreError>;
}
