//! The vocabulary of the control plane (the seeds' words), shared by the API,
//! the store and the dashboard.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use molt_protocol::{
    AgentStatus, AttemptResult, CommandKind, CommandState, Heartbeat, IssueState, Labels,
    RolloutState, Stage, StageState,
};

/// A registered agent as stored (status is the last reported one; see
/// [`Agent::effective_status`] for Down).
#[derive(Clone, Debug, Serialize)]
pub struct Agent {
    pub id: i64,
    pub name: String,
    pub host: Option<String>,
    pub pid: Option<i64>,
    pub version: Option<String>,
    pub status: AgentStatus,
    pub last_seen: Option<DateTime<Utc>>,
    /// Two live processes report under this name (see `AgentRegistry` issues).
    pub duplicate: bool,
    pub created_at: DateTime<Utc>,
    /// Effective labels: the reported ones with the admin's overrides applied.
    pub labels: Labels,
    /// As the agent's last heartbeat sent them.
    pub reported_labels: Labels,
    /// Set through the admin API; a value wins over the reported one, an empty
    /// value removes the label.
    pub label_overrides: Labels,
    /// The control plane's pin (admin API): the version this agent runs
    /// unless its own config pins one.
    pub cp_pin: Option<String>,
}

/// Reported labels with the overrides applied (an empty override value removes).
pub fn effective_labels(reported: &Labels, overrides: &Labels) -> Labels {
    let mut out = reported.clone();
    for (k, v) in overrides {
        if v.is_empty() {
            out.remove(k);
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

impl Agent {
    /// Down when never seen or not seen for `down_after`; otherwise as reported.
    pub fn effective_status(
        &self,
        now: DateTime<Utc>,
        down_after: chrono::Duration,
    ) -> AgentStatus {
        match self.last_seen {
            Some(t) if now - t <= down_after => self.status,
            _ => AgentStatus::Down,
        }
    }
}

/// What a heartbeat changed about duplicate detection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    /// Heartbeats alternate between two processes: flagged now.
    pub duplicate: bool,
    /// The flag was set before this heartbeat and is still set.
    pub was_duplicate: bool,
}

/// One finding of one run of an issue source.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    pub code: String,
    pub severity: molt_protocol::FindingSeverity,
    pub description: String,
    #[serde(default)]
    pub remediation: Option<String>,
}

/// An issue (the seeds' ecc_agent_issue).
#[derive(Clone, Debug, Serialize)]
pub struct Issue {
    pub id: i64,
    pub agent: String,
    pub source: String,
    pub code: String,
    pub severity: molt_protocol::FindingSeverity,
    pub description: String,
    pub remediation: Option<String>,
    pub state: IssueState,
    pub count: i64,
    pub first_detected: DateTime<Utc>,
    pub last_detected: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Counts from applying one source's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IssueReportOutcome {
    pub created: usize,
    pub incremented: usize,
    pub auto_resolved: usize,
}

/// One stage row of an attempt's timeline.
#[derive(Clone, Debug, Serialize)]
pub struct StageRecord {
    pub stage: Stage,
    pub state: StageState,
    pub message: String,
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One upgrade attempt of one agent (Upgrade History).
#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub id: i64,
    pub agent: String,
    pub from_version: String,
    pub to_version: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<AttemptResult>,
    pub message: Option<String>,
    pub stages: Vec<StageRecord>,
}

/// A command queued for an agent.
#[derive(Clone, Debug, Serialize)]
pub struct Command {
    pub id: i64,
    pub agent: String,
    pub kind: CommandKind,
    pub args: serde_json::Value,
    pub state: CommandState,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub done_at: Option<DateTime<Utc>>,
    pub message: Option<String>,
}

/// A holder of an upgrade slot.
#[derive(Clone, Debug, Serialize)]
pub struct SlotHolder {
    pub agent: String,
    pub to_version: String,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
}

/// Result of asking for an upgrade slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotOutcome {
    Granted,
    Busy { holders: Vec<String> },
}

/// A stored log upload.
#[derive(Clone, Debug, Serialize)]
pub struct LogUpload {
    pub id: i64,
    pub agent: String,
    pub path: String,
    pub size: i64,
    pub uploaded_at: DateTime<Utc>,
}

/// Fleet version settings.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FleetState {
    /// The fleet buildstamp (seeds' mid.buildstamp).
    pub version: Option<String>,
    /// Pins every agent until cleared (seeds' mid.version.override).
    pub override_version: Option<String>,
}

/// A rollout as stored.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutRecord {
    pub id: i64,
    pub version: String,
    /// The spec as created (`crate::rollout::RolloutSpec`).
    pub spec: serde_json::Value,
    pub state: RolloutState,
    /// Why it halted (the agents named), or who aborted.
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub paused_at: Option<DateTime<Utc>>,
    pub resumed_at: Option<DateTime<Utc>>,
    pub halted_at: Option<DateTime<Utc>>,
    pub aborted_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub groups: Vec<RolloutGroupRecord>,
}

/// A group's recorded progress.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutGroupRecord {
    pub idx: usize,
    pub started_at: Option<DateTime<Utc>>,
    /// The group's last completion (the soak counts from here).
    pub completed_at: Option<DateTime<Utc>>,
}

/// One agent admitted into a rollout.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutAgentRecord {
    pub agent_id: i64,
    pub agent: String,
    pub group: usize,
    pub admitted_at: DateTime<Utc>,
    /// The autoUpgrade queued for it (none when it already ran the version).
    pub command_id: Option<i64>,
    pub result: Option<AttemptResult>,
    pub done_at: Option<DateTime<Utc>>,
}

/// The scheduler's view of one attempt.
#[derive(Clone, Debug)]
pub struct AttemptBrief {
    pub id: i64,
    pub agent_id: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<AttemptResult>,
}

/// A version offered to no agent until an operator clears it.
#[derive(Clone, Debug, Serialize)]
pub struct BlockedVersion {
    pub version: String,
    pub reason: String,
    pub rollout_id: Option<i64>,
    pub added_at: DateTime<Utc>,
}
