//! What the two backends share beyond the trait: rows mapped to structs (each
//! backend only reads a column through [`ReadRow`]; column order, parsing of
//! the text columns and corrupt values are decided here once), the column
//! lists those mappers expect, setting keys, and the checks and decisions
//! that do not depend on the SQL dialect.

use chrono::{DateTime, Utc};

use molt_protocol::FindingSeverity;

use super::StoreError;
use crate::clock::from_ms;
use crate::model::{
    Agent, AgentStatus, Attempt, AttemptBrief, AttemptResult, BlockedVersion, Command, CommandKind,
    CommandState, Issue, IssueState, LogUpload, RolloutAgentRecord, RolloutGroupRecord,
    RolloutRecord, RolloutState, SlotHolder, Stage, StageRecord, StageState, effective_labels,
};

pub(super) const FLEET_VERSION: &str = "fleet.version";
pub(super) const FLEET_OVERRIDE: &str = "fleet.version.override";
pub(super) const SLOT_LIMIT: &str = "semaphore.limit";

/// One result row, whichever backend returned it.
pub(super) trait ReadRow {
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    /// A boolean column (SQLite keeps 0 or 1).
    fn flag(&self, i: usize) -> Result<bool, StoreError>;

    /// A time stored as milliseconds since the epoch.
    fn time(&self, i: usize) -> Result<DateTime<Utc>, StoreError> {
        Ok(from_ms(self.int(i)?))
    }

    fn opt_time(&self, i: usize) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.opt_int(i)?.map(from_ms))
    }
}

pub(super) fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}

/// A word column parsed into its enum; anything else is corrupt.
fn word<T>(what: &str, v: &str, parse: impl FnOnce(&str) -> Option<T>) -> Result<T, StoreError> {
    parse(v).ok_or_else(|| corrupt(what, v))
}

fn json<T: serde::de::DeserializeOwned>(what: &str, v: &str) -> Result<T, StoreError> {
    serde_json::from_str(v).map_err(|_| corrupt(what, v))
}

/// An attempt's result column (None: still running).
pub(super) fn attempt_result(v: Option<String>) -> Result<Option<AttemptResult>, StoreError> {
    v.map(|r| word("attempt result", &r, AttemptResult::parse))
        .transpose()
}

pub(super) const AGENT_COLS: &str = "id, name, host, pid, version, status, last_seen, duplicate, created_at, labels, label_overrides, cp_pin";

/// An agent from [`AGENT_COLS`].
pub(super) fn agent(r: &dyn ReadRow) -> Result<Agent, StoreError> {
    let reported_labels = json("labels", &r.text(9)?)?;
    let label_overrides = json("label overrides", &r.text(10)?)?;
    Ok(Agent {
        id: r.int(0)?,
        name: r.text(1)?,
        host: r.opt_text(2)?,
        pid: r.opt_int(3)?,
        version: r.opt_text(4)?,
        status: word("agent status", &r.text(5)?, AgentStatus::parse)?,
        last_seen: r.opt_time(6)?,
        duplicate: r.flag(7)?,
        created_at: r.time(8)?,
        labels: effective_labels(&reported_labels, &label_overrides),
        reported_labels,
        label_overrides,
        cp_pin: r.opt_text(11)?,
    })
}

pub(super) const ISSUE_SELECT: &str = "SELECT i.id, a.name, i.source, i.code, i.severity, i.description, i.remediation, \
     i.state, i.count, i.first_detected, i.last_detected, i.resolved_at FROM issues i JOIN agents a ON a.id = i.agent_id";

/// An issue from [`ISSUE_SELECT`].
pub(super) fn issue(r: &dyn ReadRow) -> Result<Issue, StoreError> {
    Ok(Issue {
        id: r.int(0)?,
        agent: r.text(1)?,
        source: r.text(2)?,
        code: r.text(3)?,
        severity: word("finding severity", &r.text(4)?, FindingSeverity::parse)?,
        description: r.text(5)?,
        remediation: r.opt_text(6)?,
        state: word("issue state", &r.text(7)?, IssueState::parse)?,
        count: r.int(8)?,
        first_detected: r.time(9)?,
        last_detected: r.time(10)?,
        resolved_at: r.opt_time(11)?,
    })
}

pub(super) const COMMAND_SELECT: &str = "SELECT c.id, a.name, c.kind, c.args, c.state, c.created_at, c.delivered_at, c.done_at, c.message \
     FROM commands c JOIN agents a ON a.id = c.agent_id";

/// A command from [`COMMAND_SELECT`].
pub(super) fn command(r: &dyn ReadRow) -> Result<Command, StoreError> {
    Ok(Command {
        id: r.int(0)?,
        agent: r.text(1)?,
        kind: word("command kind", &r.text(2)?, CommandKind::parse)?,
        args: json("command args", &r.text(3)?)?,
        state: word("command state", &r.text(4)?, CommandState::parse)?,
        created_at: r.time(5)?,
        delivered_at: r.opt_time(6)?,
        done_at: r.opt_time(7)?,
        message: r.opt_text(8)?,
    })
}

pub(super) const LOG_SELECT: &str = "SELECT l.id, a.name, l.path, l.size, l.uploaded_at FROM log_uploads l JOIN agents a ON a.id = l.agent_id";

/// A log upload from [`LOG_SELECT`].
pub(super) fn log_upload(r: &dyn ReadRow) -> Result<LogUpload, StoreError> {
    Ok(LogUpload {
        id: r.int(0)?,
        agent: r.text(1)?,
        path: r.text(2)?,
        size: r.int(3)?,
        uploaded_at: r.time(4)?,
    })
}

/// The upgrade slots' holders, oldest first.
pub(super) const SLOT_SELECT: &str = "SELECT a.name, s.to_version, s.acquired_at, s.renewed_at FROM upgrade_slots s \
     JOIN agents a ON a.id = s.agent_id ORDER BY s.acquired_at, a.name";

/// A slot holder from [`SLOT_SELECT`].
pub(super) fn slot_holder(r: &dyn ReadRow) -> Result<SlotHolder, StoreError> {
    Ok(SlotHolder {
        agent: r.text(0)?,
        to_version: r.text(1)?,
        acquired_at: r.time(2)?,
        renewed_at: r.time(3)?,
    })
}

pub(super) const ATTEMPT_COLS: &str =
    "id, from_version, to_version, started_at, finished_at, result, message";

/// An attempt of `agent` from [`ATTEMPT_COLS`], its stages still to add
/// (see [`in_pipeline_order`]).
pub(super) fn attempt(r: &dyn ReadRow, agent: &str) -> Result<Attempt, StoreError> {
    Ok(Attempt {
        id: r.int(0)?,
        agent: agent.to_string(),
        from_version: r.text(1)?,
        to_version: r.text(2)?,
        started_at: r.time(3)?,
        finished_at: r.opt_time(4)?,
        result: attempt_result(r.opt_text(5)?)?,
        message: r.opt_text(6)?,
        stages: Vec::new(),
    })
}

pub(super) const STAGE_SELECT: &str =
    "SELECT stage, state, message, started_at, updated_at, finished_at FROM attempt_stages";

/// A stage row from [`STAGE_SELECT`].
pub(super) fn stage(r: &dyn ReadRow) -> Result<StageRecord, StoreError> {
    Ok(StageRecord {
        stage: word("stage", &r.text(0)?, Stage::parse)?,
        state: word("stage state", &r.text(1)?, StageState::parse)?,
        message: r.text(2)?,
        started_at: r.opt_time(3)?,
        updated_at: r.time(4)?,
        finished_at: r.opt_time(5)?,
    })
}

/// An attempt's stages as the pipeline runs them (rows come in any order).
pub(super) fn in_pipeline_order(mut stages: Vec<StageRecord>) -> Vec<StageRecord> {
    stages.sort_by_key(|s| Stage::ALL.iter().position(|x| *x == s.stage));
    stages
}

pub(super) const ROLLOUT_AGENT_SELECT: &str = "SELECT r.agent_id, a.name, r.group_idx, r.admitted_at, r.command_id, r.result, r.done_at \
     FROM rollout_agents r JOIN agents a ON a.id = r.agent_id";

/// A rollout's admitted agent from [`ROLLOUT_AGENT_SELECT`].
pub(super) fn rollout_agent(r: &dyn ReadRow) -> Result<RolloutAgentRecord, StoreError> {
    Ok(RolloutAgentRecord {
        agent_id: r.int(0)?,
        agent: r.text(1)?,
        group: r.int(2)? as usize,
        admitted_at: r.time(3)?,
        command_id: r.opt_int(4)?,
        result: attempt_result(r.opt_text(5)?)?,
        done_at: r.opt_time(6)?,
    })
}

pub(super) const ATTEMPT_BRIEF_COLS: &str = "id, agent_id, started_at, finished_at, result";

/// An attempt in brief from [`ATTEMPT_BRIEF_COLS`].
pub(super) fn attempt_brief(r: &dyn ReadRow) -> Result<AttemptBrief, StoreError> {
    Ok(AttemptBrief {
        id: r.int(0)?,
        agent_id: r.int(1)?,
        started_at: r.time(2)?,
        finished_at: r.opt_time(3)?,
        result: attempt_result(r.opt_text(4)?)?,
    })
}

pub(super) const BLOCKLIST_SELECT: &str =
    "SELECT version, reason, rollout_id, added_at FROM blocklist ORDER BY added_at, version";

/// A blocklisted version from [`BLOCKLIST_SELECT`].
pub(super) fn blocked(r: &dyn ReadRow) -> Result<BlockedVersion, StoreError> {
    Ok(BlockedVersion {
        version: r.text(0)?,
        reason: r.text(1)?,
        rollout_id: r.opt_int(2)?,
        added_at: r.time(3)?,
    })
}

pub(super) const ROLLOUT_COLS: &str = "version, spec, state, reason, created_at, updated_at, paused_at, resumed_at, halted_at, aborted_at, completed_at";

/// Rollout `id` from [`ROLLOUT_COLS`], its groups still to add ([`GROUP_COLS`]).
pub(super) fn rollout(id: i64, r: &dyn ReadRow) -> Result<RolloutRecord, StoreError> {
    Ok(RolloutRecord {
        id,
        version: r.text(0)?,
        spec: json("rollout spec", &r.text(1)?)?,
        state: word("rollout state", &r.text(2)?, RolloutState::parse)?,
        reason: r.opt_text(3)?,
        created_at: r.time(4)?,
        updated_at: r.time(5)?,
        paused_at: r.opt_time(6)?,
        resumed_at: r.opt_time(7)?,
        halted_at: r.opt_time(8)?,
        aborted_at: r.opt_time(9)?,
        completed_at: r.opt_time(10)?,
        groups: Vec::new(),
    })
}

pub(super) const GROUP_COLS: &str = "idx, started_at, completed_at";

/// A rollout group from [`GROUP_COLS`].
pub(super) fn group(r: &dyn ReadRow) -> Result<RolloutGroupRecord, StoreError> {
    Ok(RolloutGroupRecord {
        idx: r.int(0)? as usize,
        started_at: r.opt_time(1)?,
        completed_at: r.opt_time(2)?,
    })
}

/// What inserting agent `name` does when the name is taken: registering
/// (`replace` false) leaves the row alone and reports [`name_taken`]; the
/// start-up bootstrap (`replace` true) gives the agent the new token.
pub(super) fn on_name_taken(replace: bool) -> &'static str {
    if replace {
        "UPDATE SET token_hash = excluded.token_hash"
    } else {
        "NOTHING"
    }
}

pub(super) fn name_taken(name: &str) -> StoreError {
    StoreError::Conflict(format!("an agent named {name:?} is already registered"))
}

/// `what` (`attempt 7`, `command 9`) exists and belongs to `agent_id`.
pub(super) fn owned_by(what: &str, owner: Option<i64>, agent_id: i64) -> Result<(), StoreError> {
    match owner {
        None => Err(StoreError::NotFound(what.to_string())),
        Some(o) if o != agent_id => Err(StoreError::Forbidden(format!(
            "{what} belongs to another agent"
        ))),
        Some(_) => Ok(()),
    }
}

/// The agent's process tracking as stored (`ident` is `host#pid`).
pub(super) struct Idents {
    pub cur: Option<String>,
    pub prev: Option<String>,
    pub prev_seen: Option<i64>,
    pub duplicate: bool,
    pub last_seen: Option<i64>,
}

pub(super) const IDENTS_COLS: &str = "ident, prev_ident, prev_seen, duplicate, last_seen";

/// [`Idents`] from [`IDENTS_COLS`].
pub(super) fn idents(r: &dyn ReadRow) -> Result<Idents, StoreError> {
    Ok(Idents {
        cur: r.opt_text(0)?,
        prev: r.opt_text(1)?,
        prev_seen: r.opt_int(2)?,
        duplicate: r.flag(3)?,
        last_seen: r.opt_int(4)?,
    })
}

/// What a heartbeat from `ident` at `now_ms` makes of [`Idents`]: the new
/// previous ident, when it was last seen, and whether two processes report
/// under one name (they alternate within `window_ms`; a restart does not).
pub(super) fn next_idents(
    stored: Idents,
    ident: &str,
    now_ms: i64,
    window_ms: i64,
) -> (Option<String>, Option<i64>, bool) {
    let within = |t: Option<i64>| t.is_some_and(|t| now_ms - t <= window_ms);
    match stored.cur.as_deref() {
        Some(c) if c != ident => {
            // Another process spoke last. If this process was the one
            // before it, and that was recent, two are alive at once.
            let alternating = stored.prev.as_deref() == Some(ident) && within(stored.prev_seen);
            (
                Some(c.to_string()),
                stored.last_seen,
                stored.duplicate || alternating,
            )
        }
        _ => {
            let still = stored.duplicate && within(stored.prev_seen);
            (stored.prev, stored.prev_seen, still)
        }
    }
}

/// An operator's rollout state change is allowed from `from` (Halted and
/// Completed are the scheduler's alone).
pub(super) fn check_transition(
    id: i64,
    from: RolloutState,
    to: RolloutState,
) -> Result<(), StoreError> {
    let refused = |what: &str| {
        Err(StoreError::Conflict(format!(
            "rollout {id} is {from}: it cannot be {what}"
        )))
    };
    match to {
        RolloutState::Paused if from != RolloutState::Running => refused("paused"),
        RolloutState::Running if !matches!(from, RolloutState::Paused | RolloutState::Halted) => {
            refused("resumed")
        }
        RolloutState::Aborted if !from.is_open() => refused("aborted"),
        RolloutState::Halted | RolloutState::Completed => Err(StoreError::Conflict(format!(
            "only the scheduler sets a rollout {to}"
        ))),
        _ => Ok(()),
    }
}

/// Why a rollout of `version` cannot be created or resumed: it is blocklisted.
pub(super) fn blocklisted(version: &str, reason: &str, doing: &str) -> StoreError {
    StoreError::Conflict(format!(
        "version {version} is blocklisted ({reason}): clear it {doing} (DELETE /api/v1/admin/blocklist/{version})"
    ))
}

/// Another rollout is open: one at a time.
pub(super) fn rollout_open(id: i64, version: &str, state: &str) -> StoreError {
    StoreError::Conflict(format!(
        "rollout {id} of {version} is {state}: complete or abort it before creating another"
    ))
}
