//! SQLite implementation of [`Store`]: one connection in WAL mode behind a
//! mutex (callers are blocking threads), with versioned migrations.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::common::{
    self, AGENT_COLS, ATTEMPT_BRIEF_COLS, ATTEMPT_COLS, BLOCKLIST_SELECT, COMMAND_SELECT,
    FLEET_OVERRIDE, FLEET_VERSION, GROUP_COLS, IDENTS_COLS, ISSUE_SELECT, LOG_SELECT,
    ROLLOUT_AGENT_SELECT, ROLLOUT_COLS, ReadRow, SLOT_LIMIT, SLOT_SELECT, STAGE_SELECT, corrupt,
};
use super::{AgentQuery, AgentSort, IssueFilter, Store, StoreError, StoreEvent, TokenHash};
use crate::clock::to_ms;
use crate::model::{
    Agent, AgentStatus, Attempt, AttemptResult, Command, CommandKind, CommandState, Finding,
    FleetState, Heartbeat, HeartbeatOutcome, Issue, IssueReportOutcome, IssueState, LogUpload,
    SlotHolder, SlotOutcome, Stage, StageState,
};
use crate::model::{
    AttemptBrief, BlockedVersion, Labels, RolloutAgentRecord, RolloutRecord, RolloutState,
};

/// Migrations in order; index + 1 is the schema version. Never edit one that
/// has shipped: append a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE agents (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash BLOB NOT NULL UNIQUE,
    host TEXT, pid INTEGER, version TEXT,
    status TEXT NOT NULL DEFAULT 'Down',
    last_seen INTEGER,
    ident TEXT, prev_ident TEXT, prev_seen INTEGER,
    duplicate INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE upgrade_slots (
    agent_id INTEGER PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
    to_version TEXT NOT NULL,
    acquired_at INTEGER NOT NULL,
    renewed_at INTEGER NOT NULL
);
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY,
    agent_id INTEGER NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    from_version TEXT NOT NULL, to_version TEXT NOT NULL,
    started_at INTEGER NOT NULL, finished_at INTEGER,
    result TEXT, message TEXT
);
CREATE INDEX attempts_agent ON attempts(agent_id, id);
CREATE TABLE attempt_stages (
    attempt_id INTEGER NOT NULL REFERENCES attempts(id) ON DELETE CASCADE,
    stage TEXT NOT NULL, state TEXT NOT NULL, message TEXT NOT NULL,
    started_at INTEGER, updated_at INTEGER NOT NULL, finished_at INTEGER,
    PRIMARY KEY (attempt_id, stage)
);
CREATE TABLE issues (
    id INTEGER PRIMARY KEY,
    agent_id INTEGER NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    source TEXT NOT NULL, code TEXT NOT NULL, severity TEXT NOT NULL,
    description TEXT NOT NULL, remediation TEXT,
    state TEXT NOT NULL, count INTEGER NOT NULL,
    first_detected INTEGER NOT NULL, last_detected INTEGER NOT NULL, resolved_at INTEGER
);
CREATE INDEX issues_by_source ON issues(agent_id, source, code);
CREATE TABLE commands (
    id INTEGER PRIMARY KEY,
    agent_id INTEGER NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    kind TEXT NOT NULL, args TEXT NOT NULL, state TEXT NOT NULL,
    created_at INTEGER NOT NULL, delivered_at INTEGER, done_at INTEGER, message TEXT
);
CREATE INDEX commands_pending ON commands(agent_id, state);
CREATE TABLE log_uploads (
    id INTEGER PRIMARY KEY,
    agent_id INTEGER NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    path TEXT NOT NULL, size INTEGER NOT NULL, uploaded_at INTEGER NOT NULL
);
"#,
    r#"
ALTER TABLE agents ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE agents ADD COLUMN label_overrides TEXT NOT NULL DEFAULT '{}';
CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY,
    version TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    paused_at INTEGER, resumed_at INTEGER, halted_at INTEGER, aborted_at INTEGER, completed_at INTEGER
);
CREATE TABLE rollout_groups (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, started_at INTEGER, completed_at INTEGER,
    PRIMARY KEY (rollout_id, idx)
);
CREATE TABLE rollout_agents (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    agent_id INTEGER NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    group_idx INTEGER NOT NULL, admitted_at INTEGER NOT NULL, command_id INTEGER,
    result TEXT, done_at INTEGER,
    PRIMARY KEY (rollout_id, agent_id)
);
CREATE TABLE blocklist (
    version TEXT PRIMARY KEY, reason TEXT NOT NULL, rollout_id INTEGER, added_at INTEGER NOT NULL
);
CREATE INDEX attempts_to ON attempts(to_version, started_at);
"#,
    // The control plane's per-agent pin (`PUT /api/v1/admin/agents/{name}/pin`).
    r#"
ALTER TABLE agents ADD COLUMN cp_pin TEXT;
"#,
];

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database(Box::new(e))
    }
}

/// The embedded store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn, path)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions
        // roll back on drop), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Inserts agent `name` (see [`common::on_name_taken`] for a taken name).
    fn insert_agent(
        &self,
        name: &str,
        token: &TokenHash,
        at: DateTime<Utc>,
        replace: bool,
    ) -> Result<i64, StoreError> {
        let sql = format!(
            "INSERT INTO agents (name, token_hash, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT(name) DO {} RETURNING id",
            common::on_name_taken(replace)
        );
        self.tx(|tx| {
            first(tx, &sql, params![name, &token[..], to_ms(at)], |r| r.int(0))?
                .ok_or_else(|| common::name_taken(name))
        })
    }

    /// Sets one operator-owned column of an agent and returns the row
    /// (`NotFound` for an unknown name): label overrides and the pin share it.
    fn set_agent_column(
        &self,
        name: &str,
        column: &'static str,
        value: &dyn rusqlite::ToSql,
    ) -> Result<Agent, StoreError> {
        self.tx(|tx| {
            let n = tx.execute(
                &format!("UPDATE agents SET {column} = ?2 WHERE name = ?1"),
                params![name, value],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("agent {name:?}")));
            }
            first(
                tx,
                &format!("SELECT {AGENT_COLS} FROM agents WHERE name = ?1"),
                [name],
                common::agent,
            )?
            .ok_or_else(|| StoreError::NotFound(format!("agent {name:?}")))
        })
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::SchemaTooNew {
            path: path.display().to_string(),
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        let tx = conn.transaction()?;
        tx.execute_batch(sql).map_err(|e| StoreError::Migration {
            version,
            source: Box::new(e),
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, Utc::now().timestamp_millis()],
        )?;
        tx.commit()?;
        tracing::info!(version, "database migration applied");
    }
    Ok(())
}

impl ReadRow for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.get(i)?)
    }

    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.get(i)?)
    }

    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.get(i)?)
    }

    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(i)?)
    }

    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.get::<_, i64>(i)? != 0)
    }
}

/// Every row of `sql`, each mapped by `f` (one of [`common`]'s mappers).
fn all<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl Fn(&dyn ReadRow) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut st = c.prepare(sql)?;
    let mut rows = st.query(p)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(f(r)?);
    }
    Ok(out)
}

/// The first row of `sql`, if any, mapped by `f`.
fn first<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    f: impl Fn(&dyn ReadRow) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    Ok(all(c, sql, p, f)?.into_iter().next())
}

fn agent_id_by_name(tx: &Connection, name: &str) -> Result<i64, StoreError> {
    tx.query_row("SELECT id FROM agents WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .optional()?
    .ok_or_else(|| StoreError::NotFound(format!("agent {name:?}")))
}

fn get_setting(c: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(
        c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?,
    )
}

/// The semaphore's limit a rollout stored (see [`Store::slot_limit`]).
fn stored_slot_limit(c: &Connection) -> Result<Option<u32>, StoreError> {
    get_setting(c, SLOT_LIMIT)?
        .map(|v| v.parse().map_err(|_| corrupt("semaphore limit", &v)))
        .transpose()
}

/// Checks that `attempt_id` exists and belongs to `agent_id`.
fn own_attempt(tx: &Connection, agent_id: i64, attempt_id: i64) -> Result<(), StoreError> {
    let owner: Option<i64> = tx
        .query_row(
            "SELECT agent_id FROM attempts WHERE id = ?1",
            [attempt_id],
            |r| r.get(0),
        )
        .optional()?;
    common::owned_by(&format!("attempt {attempt_id}"), owner, agent_id)
}

impl Store for SqliteStore {
    fn readiness(&self) -> Result<(), StoreError> {
        let conn = self.conn();
        let found: i64 = conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?;
        let known = MIGRATIONS.len() as i64;
        if found != known {
            return Err(StoreError::SchemaBehind { found, known });
        }
        Ok(())
    }

    fn publish(&self, _ev: &StoreEvent) -> Result<(), StoreError> {
        Ok(())
    }

    fn subscribe(&self) -> Option<tokio::sync::mpsc::Receiver<StoreEvent>> {
        None
    }

    fn try_lead(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    fn resign(&self) {}

    fn agent_by_token(&self, hash: &TokenHash) -> Result<Option<(i64, String)>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT id, name FROM agents WHERE token_hash = ?1",
                [&hash[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    fn agent_tokens(&self) -> Result<Vec<(i64, String, TokenHash)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT id, name, token_hash FROM agents")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, hash) = row?;
            let hash: TokenHash = hash
                .try_into()
                .map_err(|_| corrupt("token hash of agent", &name))?;
            out.push((id, name, hash));
        }
        Ok(out)
    }

    fn create_agent(
        &self,
        name: &str,
        token: &TokenHash,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        self.insert_agent(name, token, now, false)
    }

    fn upsert_agent_token(
        &self,
        name: &str,
        token: &TokenHash,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        self.insert_agent(name, token, now, true)
    }

    fn delete_agent(&self, name: &str) -> Result<(), StoreError> {
        self.tx(|tx| {
            let n = tx.execute("DELETE FROM agents WHERE name = ?1", [name])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("agent {name:?}")));
            }
            Ok(())
        })
    }

    fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        all(
            &self.conn(),
            &format!("SELECT {AGENT_COLS} FROM agents ORDER BY name"),
            [],
            common::agent,
        )
    }

    fn agent_by_name(&self, name: &str) -> Result<Option<Agent>, StoreError> {
        first(
            &self.conn(),
            &format!("SELECT {AGENT_COLS} FROM agents WHERE name = ?1"),
            [name],
            common::agent,
        )
    }

    fn record_heartbeat(
        &self,
        agent_id: i64,
        hb: &Heartbeat,
        now: DateTime<Utc>,
        window: chrono::Duration,
    ) -> Result<HeartbeatOutcome, StoreError> {
        let ident = format!("{}#{}", hb.host, hb.pid);
        let now_ms = to_ms(now);
        let window_ms = window.num_milliseconds();
        let labels = serde_json::to_string(&hb.labels).unwrap_or_else(|_| "{}".into());
        self.tx(|tx| {
            let stored = first(
                tx,
                &format!("SELECT {IDENTS_COLS} FROM agents WHERE id = ?1"),
                [agent_id],
                common::idents,
            )?
            .ok_or_else(|| StoreError::NotFound(format!("agent id {agent_id}")))?;
            let was_duplicate = stored.duplicate;
            let (new_prev, new_prev_seen, duplicate) =
                common::next_idents(stored, &ident, now_ms, window_ms);
            tx.execute(
                "UPDATE agents SET host = ?2, pid = ?3, version = ?4, status = ?5, last_seen = ?6, \
                 ident = ?7, prev_ident = ?8, prev_seen = ?9, duplicate = ?10, labels = ?11 WHERE id = ?1",
                params![
                    agent_id,
                    hb.host,
                    hb.pid,
                    hb.version,
                    hb.status.as_str(),
                    now_ms,
                    ident,
                    new_prev,
                    new_prev_seen,
                    duplicate as i64,
                    labels
                ],
            )?;
            // Reporting is what keeps an upgrade lease alive.
            tx.execute("UPDATE upgrade_slots SET renewed_at = ?2 WHERE agent_id = ?1", params![agent_id, now_ms])?;
            Ok(HeartbeatOutcome { duplicate, was_duplicate })
        })
    }

    fn fleet(&self) -> Result<FleetState, StoreError> {
        let conn = self.conn();
        Ok(FleetState {
            version: get_setting(&conn, FLEET_VERSION)?,
            override_version: get_setting(&conn, FLEET_OVERRIDE)?,
        })
    }

    fn set_fleet_version(&self, version: &str, now: DateTime<Utc>) -> Result<Vec<i64>, StoreError> {
        self.tx(|tx| {
            let old = get_setting(tx, FLEET_VERSION)?;
            if old.as_deref() == Some(version) {
                return Ok(Vec::new());
            }
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![FLEET_VERSION, version],
            )?;
            // A new fleet buildstamp ends any override (seeds: mid.version.override).
            tx.execute("DELETE FROM settings WHERE key = ?1", [FLEET_OVERRIDE])?;
            // One pending autoUpgrade per agent: a newer one replaces the older.
            let (auto, queued) = (CommandKind::AutoUpgrade.as_str(), CommandState::Queued.as_str());
            tx.execute(
                "DELETE FROM commands WHERE kind = ?1 AND state = ?2",
                params![auto, queued],
            )?;
            let args = serde_json::json!({ "version": version }).to_string();
            tx.execute(
                "INSERT INTO commands (agent_id, kind, args, state, created_at) \
                 SELECT id, ?3, ?1, ?4, ?2 FROM agents",
                params![args, to_ms(now), auto, queued],
            )?;
            let mut st = tx.prepare("SELECT id FROM agents")?;
            let ids = st.query_map([], |r| r.get(0))?.collect::<Result<Vec<i64>, _>>()?;
            Ok(ids)
        })
    }

    fn set_fleet_override(&self, version: Option<&str>) -> Result<(), StoreError> {
        self.tx(|tx| {
            match version {
                Some(v) => tx.execute(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![FLEET_OVERRIDE, v],
                )?,
                None => tx.execute("DELETE FROM settings WHERE key = ?1", [FLEET_OVERRIDE])?,
            };
            Ok(())
        })
    }

    fn acquire_slot(
        &self,
        agent_id: i64,
        to_version: &str,
        now: DateTime<Utc>,
        max: u32,
        lease: chrono::Duration,
    ) -> Result<SlotOutcome, StoreError> {
        let now_ms = to_ms(now);
        self.tx(|tx| {
            expire_slots(tx, now_ms, lease)?;
            let held = tx.execute(
                "UPDATE upgrade_slots SET renewed_at = ?2, to_version = ?3 WHERE agent_id = ?1",
                params![agent_id, now_ms, to_version],
            )?;
            if held > 0 {
                return Ok(SlotOutcome::Granted);
            }
            let count: i64 = tx.query_row("SELECT COUNT(*) FROM upgrade_slots", [], |r| r.get(0))?;
            let max = stored_slot_limit(tx)?.unwrap_or(max);
            if count < i64::from(max) {
                tx.execute(
                    "INSERT INTO upgrade_slots (agent_id, to_version, acquired_at, renewed_at) VALUES (?1, ?2, ?3, ?3)",
                    params![agent_id, to_version, now_ms],
                )?;
                return Ok(SlotOutcome::Granted);
            }
            let holders = all(tx, SLOT_SELECT, [], common::slot_holder)?;
            Ok(SlotOutcome::Busy {
                holders: holders.into_iter().map(|h| h.agent).collect(),
            })
        })
    }

    fn release_slot(&self, agent_id: i64) -> Result<bool, StoreError> {
        self.tx(|tx| {
            Ok(tx.execute("DELETE FROM upgrade_slots WHERE agent_id = ?1", [agent_id])? > 0)
        })
    }

    fn renew_slot(&self, agent_id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.tx(|tx| {
            tx.execute(
                "UPDATE upgrade_slots SET renewed_at = ?2 WHERE agent_id = ?1",
                params![agent_id, to_ms(now)],
            )?;
            Ok(())
        })
    }

    fn slot_holders(
        &self,
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> Result<Vec<SlotHolder>, StoreError> {
        self.tx(|tx| {
            expire_slots(tx, to_ms(now), lease)?;
            all(tx, SLOT_SELECT, [], common::slot_holder)
        })
    }

    fn create_attempt(
        &self,
        agent_id: i64,
        from: &str,
        to: &str,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO attempts (agent_id, from_version, to_version, started_at) VALUES (?1, ?2, ?3, ?4)",
                params![agent_id, from, to, to_ms(now)],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute("UPDATE upgrade_slots SET renewed_at = ?2 WHERE agent_id = ?1", params![agent_id, to_ms(now)])?;
            Ok(id)
        })
    }

    fn record_stage(
        &self,
        agent_id: i64,
        attempt_id: i64,
        stage: Stage,
        state: StageState,
        message: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let at_ms = to_ms(at);
        let finished = (state != StageState::InProgress).then_some(at_ms);
        self.tx(|tx| {
            own_attempt(tx, agent_id, attempt_id)?;
            tx.execute(
                "INSERT INTO attempt_stages (attempt_id, stage, state, message, started_at, updated_at, finished_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6) \
                 ON CONFLICT(attempt_id, stage) DO UPDATE SET state = excluded.state, message = excluded.message, \
                 updated_at = excluded.updated_at, finished_at = excluded.finished_at, \
                 started_at = COALESCE(attempt_stages.started_at, excluded.started_at)",
                params![attempt_id, stage.as_str(), state.as_str(), message, at_ms, finished],
            )?;
            tx.execute("UPDATE upgrade_slots SET renewed_at = ?2 WHERE agent_id = ?1", params![agent_id, at_ms.max(0)])?;
            Ok(())
        })
    }

    fn finish_attempt(
        &self,
        agent_id: i64,
        attempt_id: i64,
        result: AttemptResult,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.tx(|tx| {
            own_attempt(tx, agent_id, attempt_id)?;
            tx.execute(
                "UPDATE attempts SET finished_at = ?2, result = ?3, message = ?4 WHERE id = ?1",
                params![attempt_id, to_ms(now), result.as_str(), message],
            )?;
            // A finished attempt no longer needs its upgrade slot.
            tx.execute("DELETE FROM upgrade_slots WHERE agent_id = ?1", [agent_id])?;
            Ok(())
        })
    }

    fn list_attempts(&self, agent: &str, limit: usize) -> Result<Vec<Attempt>, StoreError> {
        let conn = self.conn();
        let agent_id = agent_id_by_name(&conn, agent)?;
        let mut out = all(
            &conn,
            &format!(
                "SELECT {ATTEMPT_COLS} FROM attempts WHERE agent_id = ?1 ORDER BY id DESC LIMIT ?2"
            ),
            params![agent_id, limit as i64],
            |r| common::attempt(r, agent),
        )?;
        let stages_sql = format!("{STAGE_SELECT} WHERE attempt_id = ?1");
        for a in &mut out {
            a.stages = common::in_pipeline_order(all(&conn, &stages_sql, [a.id], common::stage)?);
        }
        Ok(out)
    }

    fn report_issues(
        &self,
        agent_id: i64,
        source: &str,
        findings: &[Finding],
        now: DateTime<Utc>,
    ) -> Result<IssueReportOutcome, StoreError> {
        let now_ms = to_ms(now);
        self.tx(|tx| {
            let mut out = IssueReportOutcome::default();
            let mut seen: Vec<&str> = Vec::new();
            for f in findings {
                if seen.contains(&f.code.as_str()) {
                    continue; // one run counts a code once
                }
                seen.push(&f.code);
                let open: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM issues WHERE agent_id = ?1 AND source = ?2 AND code = ?3 AND state != ?4",
                        params![agent_id, source, f.code, IssueState::Resolved.as_str()],
                        |r| r.get(0),
                    )
                    .optional()?;
                match open {
                    Some(id) => {
                        tx.execute(
                            "UPDATE issues SET count = count + 1, last_detected = ?2, severity = ?3, description = ?4, \
                             remediation = ?5 WHERE id = ?1",
                            params![id, now_ms, f.severity.as_str(), f.description, f.remediation],
                        )?;
                        out.incremented += 1;
                    }
                    None => {
                        tx.execute(
                            "INSERT INTO issues (agent_id, source, code, severity, description, remediation, state, count, \
                             first_detected, last_detected) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?8, 1, ?7, ?7)",
                            params![agent_id, source, f.code, f.severity.as_str(), f.description, f.remediation, now_ms,
                                    IssueState::New.as_str()],
                        )?;
                        out.created += 1;
                    }
                }
            }
            // Whatever this run of the source no longer reports is resolved.
            let mut st = tx.prepare(
                "SELECT id, code FROM issues WHERE agent_id = ?1 AND source = ?2 AND state != ?3",
            )?;
            let open = st
                .query_map(params![agent_id, source, IssueState::Resolved.as_str()], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            for (id, code) in open {
                if !seen.contains(&code.as_str()) {
                    tx.execute(
                        "UPDATE issues SET state = ?3, resolved_at = ?2 WHERE id = ?1",
                        params![id, now_ms, IssueState::Resolved.as_str()],
                    )?;
                    out.auto_resolved += 1;
                }
            }
            Ok(out)
        })
    }

    fn list_issues(&self, filter: &IssueFilter) -> Result<Vec<Issue>, StoreError> {
        let conn = self.conn();
        let mut sql = format!("{ISSUE_SELECT} WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        if let Some(a) = &filter.agent {
            args.push(a.clone());
            sql.push_str(&format!(" AND a.name = ?{}", args.len()));
        }
        if let Some(s) = filter.state {
            args.push(s.as_str().to_string());
            sql.push_str(&format!(" AND i.state = ?{}", args.len()));
        }
        if filter.open_only {
            args.push(IssueState::Resolved.as_str().to_string());
            sql.push_str(&format!(" AND i.state != ?{}", args.len()));
        }
        sql.push_str(" ORDER BY i.last_detected DESC, i.id DESC");
        all(
            &conn,
            &sql,
            rusqlite::params_from_iter(args.iter()),
            common::issue,
        )
    }

    fn set_issue_state(
        &self,
        id: i64,
        state: IssueState,
        now: DateTime<Utc>,
    ) -> Result<Issue, StoreError> {
        self.tx(|tx| {
            let resolved_at = (state == IssueState::Resolved).then_some(to_ms(now));
            let n = tx.execute(
                "UPDATE issues SET state = ?2, resolved_at = ?3 WHERE id = ?1",
                params![id, state.as_str(), resolved_at],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("issue {id}")));
            }
            first(
                tx,
                &format!("{ISSUE_SELECT} WHERE i.id = ?1"),
                [id],
                common::issue,
            )?
            .ok_or_else(|| StoreError::NotFound(format!("issue {id}")))
        })
    }

    fn purge_stale_issues(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        self.tx(|tx| {
            Ok(tx.execute(
                "DELETE FROM issues WHERE last_detected < ?1",
                [to_ms(cutoff)],
            )?)
        })
    }

    fn queue_command(
        &self,
        agent_id: i64,
        kind: CommandKind,
        args: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO commands (agent_id, kind, args, state, created_at) VALUES (?1, ?2, ?3, ?5, ?4)",
                params![agent_id, kind.as_str(), args.to_string(), to_ms(now), CommandState::Queued.as_str()],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    fn take_commands(&self, agent_id: i64, now: DateTime<Utc>) -> Result<Vec<Command>, StoreError> {
        self.tx(|tx| {
            let queued = all(
                tx,
                &format!("{COMMAND_SELECT} WHERE c.agent_id = ?1 AND c.state = ?2 ORDER BY c.id"),
                params![agent_id, CommandState::Queued.as_str()],
                common::command,
            )?;
            let mut out = Vec::new();
            for mut c in queued {
                tx.execute(
                    "UPDATE commands SET state = ?3, delivered_at = ?2 WHERE id = ?1",
                    params![c.id, to_ms(now), CommandState::Delivered.as_str()],
                )?;
                c.state = CommandState::Delivered;
                c.delivered_at = Some(now);
                out.push(c);
            }
            Ok(out)
        })
    }

    fn complete_command(
        &self,
        agent_id: i64,
        command_id: i64,
        ok: bool,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.tx(|tx| {
            let owner: Option<i64> = tx
                .query_row(
                    "SELECT agent_id FROM commands WHERE id = ?1",
                    [command_id],
                    |r| r.get(0),
                )
                .optional()?;
            common::owned_by(&format!("command {command_id}"), owner, agent_id)?;
            let state = if ok {
                CommandState::Done
            } else {
                CommandState::Failed
            };
            tx.execute(
                "UPDATE commands SET state = ?2, done_at = ?3, message = ?4 WHERE id = ?1",
                params![command_id, state.as_str(), to_ms(now), message],
            )?;
            Ok(())
        })
    }

    fn list_commands(&self, agent: Option<&str>, limit: usize) -> Result<Vec<Command>, StoreError> {
        let conn = self.conn();
        let limit = limit as i64;
        match agent {
            Some(a) => all(
                &conn,
                &format!("{COMMAND_SELECT} WHERE a.name = ?1 ORDER BY c.id DESC LIMIT ?2"),
                params![a, limit],
                common::command,
            ),
            None => all(
                &conn,
                &format!("{COMMAND_SELECT} ORDER BY c.id DESC LIMIT ?1"),
                [limit],
                common::command,
            ),
        }
    }

    fn record_log_upload(
        &self,
        agent_id: i64,
        path: &str,
        size: i64,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO log_uploads (agent_id, path, size, uploaded_at) VALUES (?1, ?2, ?3, ?4)",
                params![agent_id, path, size, to_ms(now)],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    fn list_log_uploads(&self, agent: &str) -> Result<Vec<LogUpload>, StoreError> {
        all(
            &self.conn(),
            &format!("{LOG_SELECT} WHERE a.name = ?1 ORDER BY l.id DESC"),
            [agent],
            common::log_upload,
        )
    }

    fn log_upload(&self, id: i64) -> Result<Option<LogUpload>, StoreError> {
        first(
            &self.conn(),
            &format!("{LOG_SELECT} WHERE l.id = ?1"),
            [id],
            common::log_upload,
        )
    }

    fn agents_page(&self, q: &AgentQuery) -> Result<(Vec<Agent>, usize), StoreError> {
        self.agents_sorted_page(q, AgentSort::Name, false)
    }

    fn agents_sorted_page(
        &self,
        q: &AgentQuery,
        sort: AgentSort,
        descending: bool,
    ) -> Result<(Vec<Agent>, usize), StoreError> {
        use rusqlite::types::Value as Sql;
        let mut conds: Vec<String> = Vec::new();
        let mut args: Vec<Sql> = Vec::new();
        for (k, v) in &q.labels {
            // Label names are letters, digits, '-', '_' and '.': safe inside a quoted JSON path.
            if !crate::rollout::label_ok(k, 63) {
                return Ok((Vec::new(), 0));
            }
            let path = format!("'$.\"{k}\"'");
            conds.push(format!(
                "(CASE WHEN json_type(label_overrides, {path}) IS NOT NULL THEN json_extract(label_overrides, {path}) \
                 ELSE json_extract(labels, {path}) END) = ?"
            ));
            args.push(Sql::Text(v.clone()));
        }
        if let Some(v) = &q.version {
            conds.push("version = ?".into());
            args.push(Sql::Text(v.clone()));
        }
        let cutoff = to_ms(q.seen_after);
        match q.status {
            Some(AgentStatus::Down) => {
                conds.push("(last_seen IS NULL OR last_seen < ?)".into());
                args.push(Sql::Integer(cutoff));
            }
            Some(st) => {
                conds.push("(status = ? AND last_seen >= ?)".into());
                args.push(Sql::Text(st.as_str().to_string()));
                args.push(Sql::Integer(cutoff));
            }
            None => {}
        }
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        let conn = self.conn();
        let total: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM agents{filter}"),
            rusqlite::params_from_iter(args.iter()),
            |r| r.get(0),
        )?;
        let per = q.per_page.clamp(1, 1000);
        let offset = q.page.max(1).saturating_sub(1).saturating_mul(per);
        let mut page_args = args.clone();
        page_args.push(Sql::Integer(per as i64));
        page_args.push(Sql::Integer(offset as i64));
        // The column comes from AgentSort's fixed names, never from the request.
        let sql = format!(
            "SELECT {AGENT_COLS} FROM agents{filter} ORDER BY {} {}, name LIMIT ? OFFSET ?",
            sort.as_str(),
            if descending { "DESC" } else { "ASC" }
        );
        let agents = all(
            &conn,
            &sql,
            rusqlite::params_from_iter(page_args.iter()),
            common::agent,
        )?;
        Ok((agents, total as usize))
    }

    fn set_label_overrides(&self, name: &str, labels: &Labels) -> Result<Agent, StoreError> {
        let json = serde_json::to_string(labels).unwrap_or_else(|_| "{}".into());
        self.set_agent_column(name, "label_overrides", &json)
    }

    fn set_agent_pin(&self, name: &str, version: Option<&str>) -> Result<Agent, StoreError> {
        self.set_agent_column(name, "cp_pin", &version)
    }

    fn agent_pins(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT id, cp_pin FROM agents WHERE cp_pin IS NOT NULL")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn create_rollout(
        &self,
        version: &str,
        spec: &serde_json::Value,
        groups: usize,
        now: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let now_ms = to_ms(now);
        self.tx(|tx| {
            if let Some((id, v, st)) = tx
                .query_row(
                    "SELECT id, version, state FROM rollouts WHERE state IN (?1, ?2, ?3) ORDER BY id DESC LIMIT 1",
                    params![
                        RolloutState::Running.as_str(),
                        RolloutState::Paused.as_str(),
                        RolloutState::Halted.as_str()
                    ],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
                )
                .optional()?
            {
                return Err(common::rollout_open(id, &v, &st));
            }
            if let Some(reason) = blocked_reason(tx, version)? {
                return Err(common::blocklisted(version, &reason, "first"));
            }
            tx.execute(
                "INSERT INTO rollouts (version, spec, state, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                params![version, spec.to_string(), RolloutState::Running.as_str(), now_ms],
            )?;
            let id = tx.last_insert_rowid();
            for g in 0..groups {
                tx.execute(
                    "INSERT INTO rollout_groups (rollout_id, idx) VALUES (?1, ?2)",
                    params![id, g as i64],
                )?;
            }
            Ok(id)
        })
    }

    fn latest_rollout(&self) -> Result<Option<RolloutRecord>, StoreError> {
        let conn = self.conn();
        let id: Option<i64> = conn
            .query_row("SELECT MAX(id) FROM rollouts", [], |r| r.get(0))
            .optional()?
            .flatten();
        match id {
            Some(id) => rollout_by_id(&conn, id),
            None => Ok(None),
        }
    }

    fn rollout(&self, id: i64) -> Result<Option<RolloutRecord>, StoreError> {
        rollout_by_id(&self.conn(), id)
    }

    fn rollout_agents(&self, id: i64) -> Result<Vec<RolloutAgentRecord>, StoreError> {
        all(
            &self.conn(),
            &format!(
                "{ROLLOUT_AGENT_SELECT} WHERE r.rollout_id = ?1 ORDER BY r.group_idx, r.admitted_at, a.name"
            ),
            [id],
            common::rollout_agent,
        )
    }

    fn attempts_to(
        &self,
        version: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<AttemptBrief>, StoreError> {
        all(
            &self.conn(),
            &format!(
                "SELECT {ATTEMPT_BRIEF_COLS} FROM attempts WHERE to_version = ?1 AND started_at >= ?2 ORDER BY id"
            ),
            params![version, to_ms(since)],
            common::attempt_brief,
        )
    }

    fn version_counts(&self) -> Result<Vec<(Option<String>, usize)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT version, COUNT(*) FROM agents GROUP BY version ORDER BY COUNT(*) DESC, version",
        )?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, Option<String>>(0)?, r.get::<_, i64>(1)? as usize))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn slot_limit(&self) -> Result<Option<u32>, StoreError> {
        stored_slot_limit(&self.conn())
    }

    fn set_slot_limit(&self, limit: Option<u32>) -> Result<(), StoreError> {
        self.tx(|tx| {
            match limit {
                Some(n) => tx.execute(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![SLOT_LIMIT, n.to_string()],
                )?,
                None => tx.execute("DELETE FROM settings WHERE key = ?1", [SLOT_LIMIT])?,
            };
            Ok(())
        })
    }

    fn health_check_failures(
        &self,
        version: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<i64>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT a.id FROM attempts a JOIN attempt_stages s ON s.attempt_id = a.id \
             WHERE a.to_version = ?1 AND a.started_at >= ?2 AND s.stage = ?3 AND s.state = ?4 ORDER BY a.id",
        )?;
        let rows = st.query_map(
            params![
                version,
                to_ms(since),
                Stage::HealthCheck.as_str(),
                StageState::Failed.as_str()
            ],
            |r| r.get::<_, i64>(0),
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn apply_rollout_plan(
        &self,
        id: i64,
        version: &str,
        plan: &crate::rollout::Plan,
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>, StoreError> {
        let now_ms = to_ms(now);
        self.tx(|tx| {
            let state: String =
                tx.query_row("SELECT state FROM rollouts WHERE id = ?1", [id], |r| r.get(0))?;
            if state != RolloutState::Running.as_str() {
                // Paused or aborted since the snapshot: apply nothing.
                return Ok(Vec::new());
            }
            for (agent, result, at) in &plan.finished {
                tx.execute(
                    "UPDATE rollout_agents SET result = ?3, done_at = ?4 WHERE rollout_id = ?1 AND agent_id = ?2",
                    params![id, agent, result.as_str(), to_ms(*at)],
                )?;
            }
            for g in &plan.group_started {
                tx.execute(
                    "UPDATE rollout_groups SET started_at = COALESCE(started_at, ?3) WHERE rollout_id = ?1 AND idx = ?2",
                    params![id, *g as i64, now_ms],
                )?;
            }
            let mut woken = Vec::new();
            if plan.halt.is_none() {
                let args = serde_json::json!({ "version": version, "rollout": id }).to_string();
                for a in &plan.admit {
                    let (command_id, result, done) = if a.already {
                        (None, Some(AttemptResult::Complete.as_str()), Some(now_ms))
                    } else {
                        // One pending autoUpgrade per agent, as for a fleet change.
                        tx.execute(
                            "DELETE FROM commands WHERE agent_id = ?1 AND kind = ?2 AND state = ?3",
                            params![a.agent_id, CommandKind::AutoUpgrade.as_str(), CommandState::Queued.as_str()],
                        )?;
                        // An agent that already failed this version holds it
                        // (its back-off): admitted again after a resume, it is
                        // sent the operator's `upgrade {version}`, which retries.
                        let failed_before: bool = tx.query_row(
                            "SELECT EXISTS(SELECT 1 FROM attempts WHERE agent_id = ?1 AND to_version = ?2 AND result IN (?3, ?4))",
                            params![a.agent_id, version, AttemptResult::Failed.as_str(), AttemptResult::RolledBack.as_str()],
                            |r| r.get(0),
                        )?;
                        let kind = if failed_before { CommandKind::Upgrade } else { CommandKind::AutoUpgrade };
                        tx.execute(
                            "INSERT INTO commands (agent_id, kind, args, state, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![a.agent_id, kind.as_str(), args, CommandState::Queued.as_str(), now_ms],
                        )?;
                        woken.push(a.agent_id);
                        (Some(tx.last_insert_rowid()), None, None)
                    };
                    tx.execute(
                        "INSERT INTO rollout_agents (rollout_id, agent_id, group_idx, admitted_at, command_id, result, done_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(rollout_id, agent_id) DO NOTHING",
                        params![id, a.agent_id, a.group as i64, now_ms, command_id, result, done],
                    )?;
                }
                for (g, at) in &plan.group_completed {
                    tx.execute(
                        "UPDATE rollout_groups SET completed_at = ?3, started_at = COALESCE(started_at, ?4) \
                         WHERE rollout_id = ?1 AND idx = ?2",
                        params![id, *g as i64, to_ms(*at), now_ms],
                    )?;
                }
            }
            if let Some(reason) = &plan.halt {
                tx.execute(
                    "UPDATE rollouts SET state = ?2, reason = ?3, halted_at = ?4, updated_at = ?4 WHERE id = ?1",
                    params![id, RolloutState::Halted.as_str(), reason, now_ms],
                )?;
                block(tx, version, reason, id, now_ms)?;
            } else if plan.complete {
                tx.execute(
                    "UPDATE rollouts SET state = ?2, completed_at = ?3, updated_at = ?3 WHERE id = ?1",
                    params![id, RolloutState::Completed.as_str(), now_ms],
                )?;
                let spec: String =
                    tx.query_row("SELECT spec FROM rollouts WHERE id = ?1", [id], |r| r.get(0))?;
                let covers_all = serde_json::from_str::<crate::rollout::RolloutSpec>(&spec)
                    .map(|s| s.covers_all())
                    .unwrap_or(false);
                if covers_all {
                    // Every agent is on it (or was Down): the version is the
                    // fleet's now, without a command.
                    tx.execute(
                        "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        params![FLEET_VERSION, version],
                    )?;
                }
            } else {
                tx.execute("UPDATE rollouts SET updated_at = ?2 WHERE id = ?1", params![id, now_ms])?;
            }
            Ok(woken)
        })
    }

    fn set_rollout_state(
        &self,
        id: i64,
        to: RolloutState,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<RolloutRecord, StoreError> {
        let now_ms = to_ms(now);
        self.tx(|tx| {
            let (version, st): (String, String) = tx
                .query_row("SELECT version, state FROM rollouts WHERE id = ?1", [id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("rollout {id}")))?;
            let from = RolloutState::parse(&st).ok_or_else(|| corrupt("rollout state", &st))?;
            common::check_transition(id, from, to)?;
            match to {
                RolloutState::Paused => {
                    tx.execute(
                        "UPDATE rollouts SET state = ?2, paused_at = ?3, updated_at = ?3 WHERE id = ?1",
                        params![id, to.as_str(), now_ms],
                    )?;
                }
                RolloutState::Running => {
                    if let Some(r) = blocked_reason(tx, &version)? {
                        return Err(common::blocklisted(&version, &r, "before resuming"));
                    }
                    if from == RolloutState::Halted {
                        // The failed agents get another attempt; the halt rule counts afresh.
                        tx.execute(
                            "DELETE FROM rollout_agents WHERE rollout_id = ?1 AND result IN (?2, ?3)",
                            params![id, AttemptResult::Failed.as_str(), AttemptResult::RolledBack.as_str()],
                        )?;
                    }
                    tx.execute(
                        "UPDATE rollouts SET state = ?2, resumed_at = ?3, updated_at = ?3 WHERE id = ?1",
                        params![id, to.as_str(), now_ms],
                    )?;
                }
                RolloutState::Aborted => {
                    let why = reason.unwrap_or("aborted by an operator");
                    tx.execute(
                        "UPDATE rollouts SET state = ?2, aborted_at = ?3, updated_at = ?3, \
                         reason = COALESCE(reason || '; ', '') || ?4 WHERE id = ?1",
                        params![id, to.as_str(), now_ms, why],
                    )?;
                    block(tx, &version, why, id, now_ms)?;
                    // Nothing left to do for its admitted agents.
                    tx.execute(
                        "DELETE FROM commands WHERE kind = ?1 AND state = ?2 AND agent_id IN \
                         (SELECT agent_id FROM rollout_agents WHERE rollout_id = ?3 AND result IS NULL)",
                        params![CommandKind::AutoUpgrade.as_str(), CommandState::Queued.as_str(), id],
                    )?;
                }
                // Refused by check_transition: the scheduler's alone.
                RolloutState::Halted | RolloutState::Completed => {}
            }
            rollout_by_id(tx, id)?.ok_or_else(|| StoreError::NotFound(format!("rollout {id}")))
        })
    }

    fn blocklist(&self) -> Result<Vec<BlockedVersion>, StoreError> {
        all(&self.conn(), BLOCKLIST_SELECT, [], common::blocked)
    }

    fn clear_blocked(&self, version: &str) -> Result<(), StoreError> {
        self.tx(|tx| {
            if tx.execute("DELETE FROM blocklist WHERE version = ?1", [version])? == 0 {
                return Err(StoreError::NotFound(format!(
                    "version {version:?} on the blocklist"
                )));
            }
            Ok(())
        })
    }
}

fn blocked_reason(tx: &Connection, version: &str) -> Result<Option<String>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT reason FROM blocklist WHERE version = ?1",
            [version],
            |r| r.get(0),
        )
        .optional()?)
}

fn block(
    tx: &Connection,
    version: &str,
    reason: &str,
    rollout: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO blocklist (version, reason, rollout_id, added_at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT(version) DO NOTHING",
        params![version, reason, rollout, now_ms],
    )?;
    Ok(())
}

fn rollout_by_id(c: &Connection, id: i64) -> Result<Option<RolloutRecord>, StoreError> {
    let sql = format!("SELECT {ROLLOUT_COLS} FROM rollouts WHERE id = ?1");
    let Some(mut r) = first(c, &sql, [id], |r| common::rollout(id, r))? else {
        return Ok(None);
    };
    let sql = format!("SELECT {GROUP_COLS} FROM rollout_groups WHERE rollout_id = ?1 ORDER BY idx");
    r.groups = all(c, &sql, [id], common::group)?;
    Ok(Some(r))
}

fn expire_slots(tx: &Connection, now_ms: i64, lease: chrono::Duration) -> Result<(), StoreError> {
    let cutoff = now_ms.saturating_sub(lease.num_milliseconds());
    let n = tx.execute("DELETE FROM upgrade_slots WHERE renewed_at < ?1", [cutoff])?;
    if n > 0 {
        tracing::warn!(
            expired = n,
            "upgrade slot lease expired: holder stopped reporting"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Behaviour is covered on both backends by tests/store_contract.rs; this
    // is what only a file reopened by one process shows.
    #[test]
    fn reopening_applies_no_migration_twice() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cp.db");
        drop(SqliteStore::open(&p).unwrap());
        let s = SqliteStore::open(&p).unwrap();
        let n: i64 = s
            .conn()
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, MIGRATIONS.len() as i64);
    }
}
