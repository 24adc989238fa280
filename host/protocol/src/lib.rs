//! The vocabulary that crosses Molt's crates and the wire: agent statuses,
//! Upgrade History stages and their states, attempt results, command kinds with
//! their typed arguments, finding severities, command states, and the records
//! that carry them (heartbeat, stage report, finish report, queued report).
//!
//! Every word is the seeds' spelling; serde, [`std::fmt::Display`] and
//! [`std::str::FromStr`] all use it, so a value written by one crate reads back
//! the same in another. No network, no async: plain data only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A word that is not one of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{word}`")]
pub struct UnknownWord {
    /// The vocabulary (`agent status`, `stage`, ...).
    pub what: &'static str,
    /// The word as given.
    pub word: String,
}

/// Declares a closed vocabulary: a `Copy` enum whose serde, `Display`,
/// `FromStr` and `as_str` spellings are the given literals.
macro_rules! words {
    ($(#[$m:meta])* $name:ident ($what:literal) { $($(#[$vm:meta])* $var:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name { $($(#[$vm])* #[serde(rename = $text)] $var),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The wire, log and storage spelling.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$var => $text),+ }
            }

            /// Parses the wire spelling.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$var),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, UnknownWord> {
                Self::parse(s).ok_or_else(|| UnknownWord { what: $what, word: s.to_string() })
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.as_str()
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }
    };
}

words!(
    /// The agent's status as the seeds' ecc_agent.status shows it (heartbeats,
    /// the status file, the control plane's record).
    AgentStatus ("agent status") {
        Up = "Up",
        Upgrading = "Upgrading",
        Paused = "Paused",
        /// Not seen for a while (the control plane's verdict) or stopping.
        Down = "Down",
        UpgradeFailed = "Upgrade Failed",
    }
);

words!(
    /// Upgrade History stages: the agent's (Pre Upgrade Check, Download,
    /// Extract) then the runner's (MigrateTrustStore .. Health Check).
    Stage ("stage") {
        PreUpgradeCheck = "Pre Upgrade Check",
        Download = "Download Upgrade Packages",
        Extract = "Extract Upgrade Packages",
        MigrateTrustStore = "MigrateTrustStore",
        DeployBinaryFiles = "Deploy Binary Files",
        ReinstallService = "Reinstall Service",
        Restart = "Restart",
        HealthCheck = "Health Check",
    }
);

words!(
    /// State of one stage of one attempt.
    StageState ("stage state") {
        InProgress = "In Progress",
        Complete = "Complete",
        Failed = "Failed",
        Skipped = "Skipped",
    }
);

words!(
    /// How an upgrade attempt ended (the agent's, the runner's, the journal's
    /// last deploy and the control plane's Upgrade History).
    AttemptResult ("attempt result") {
        /// The new version is current and Up.
        Complete = "Complete",
        /// Failed before the switch, or the rollback failed too.
        Failed = "Failed",
        /// Something failed after the switch; the old version is Up again.
        RolledBack = "Rolled Back",
    }
);

words!(
    /// An agent's readiness for a version: its latest `runPrecheck` of that
    /// version found no blocking finding (Ready), found one (Not Ready), is
    /// queued or running (Pending), or was never run (Not Checked).
    Readiness ("readiness") {
        Ready = "Ready",
        NotReady = "Not Ready",
        Pending = "Pending",
        NotChecked = "Not Checked",
    }
);

words!(
    /// Issue state (ecc_agent_issue.state).
    IssueState ("issue state") { New = "New", Acknowledged = "Acknowledged", Resolved = "Resolved" }
);

words!(
    /// Commands an agent can be sent (`kind` of a command).
    CommandKind ("command kind") {
        AutoUpgrade = "autoUpgrade",
        Upgrade = "upgrade",
        Restart = "restart",
        GrabLogs = "grabLogs",
        RunPrecheck = "runPrecheck",
    }
);

words!(
    /// Lifecycle of a queued command on the control plane.
    CommandState ("command state") { Queued = "Queued", Delivered = "Delivered", Done = "Done", Failed = "Failed" }
);

words!(
    /// Severity of a finding reported to `POST /api/v1/agent/issues`.
    FindingSeverity ("finding severity") {
        Error = "error",
        Blocking = "blocking",
        Warning = "warning",
        Info = "info",
    }
);

impl CommandKind {
    /// The command as a person names it (dashboard buttons and notices).
    pub const fn title(self) -> &'static str {
        match self {
            CommandKind::AutoUpgrade => "Auto upgrade",
            CommandKind::Upgrade => "Upgrade",
            CommandKind::Restart => "Restart",
            CommandKind::GrabLogs => "Grab logs",
            CommandKind::RunPrecheck => "Run precheck",
        }
    }

    /// Whether the command takes an optional `args.version`.
    pub const fn takes_version(self) -> bool {
        matches!(self, CommandKind::Upgrade | CommandKind::RunPrecheck)
    }
}

/// Why a command as received cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A `kind` this agent does not know.
    #[error("unknown command kind `{0}`")]
    UnknownKind(String),
    /// Arguments of the wrong shape.
    #[error("{0}")]
    Args(String),
}

/// A command with typed arguments. On the wire a command is
/// `{id, kind, args}`; [`AgentCommand::from_wire`] and [`AgentCommand::args`]
/// convert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCommand {
    /// Check the assignment now. Its arguments only say why it came (the
    /// control plane's fleet change): the assignment decides, so they are ignored.
    AutoUpgrade,
    /// Upgrade now; `version` names the target (absent: the assignment), and an
    /// operator's upgrade retries a version held after a rollback.
    Upgrade { version: Option<String> },
    /// Restart the agent (deferred while it upgrades).
    Restart,
    /// Upload the tail of the agent log.
    GrabLogs,
    /// Run the Pre Upgrade Check of `version` only (readiness).
    RunPrecheck { version: Option<String> },
}

impl AgentCommand {
    /// The command's kind.
    pub fn kind(&self) -> CommandKind {
        match self {
            AgentCommand::AutoUpgrade => CommandKind::AutoUpgrade,
            AgentCommand::Upgrade { .. } => CommandKind::Upgrade,
            AgentCommand::Restart => CommandKind::Restart,
            AgentCommand::GrabLogs => CommandKind::GrabLogs,
            AgentCommand::RunPrecheck { .. } => CommandKind::RunPrecheck,
        }
    }

    /// The target version, for the kinds that take one.
    pub fn version(&self) -> Option<&str> {
        match self {
            AgentCommand::Upgrade { version } | AgentCommand::RunPrecheck { version } => {
                version.as_deref()
            }
            _ => None,
        }
    }

    /// The command from its wire `kind` and `args`. `args.version` absent or
    /// null is the assignment (the seeds' commands carry none); otherwise it
    /// must be a string (whether it is a valid buildstamp is the receiver's
    /// check). The kinds without arguments ignore `args`.
    pub fn from_wire(kind: &str, args: &Value) -> Result<Self, CommandError> {
        let kind =
            CommandKind::parse(kind).ok_or_else(|| CommandError::UnknownKind(kind.to_string()))?;
        Ok(match kind {
            CommandKind::AutoUpgrade => AgentCommand::AutoUpgrade,
            CommandKind::Restart => AgentCommand::Restart,
            CommandKind::GrabLogs => AgentCommand::GrabLogs,
            CommandKind::Upgrade => AgentCommand::Upgrade {
                version: version_arg(args)?,
            },
            CommandKind::RunPrecheck => AgentCommand::RunPrecheck {
                version: version_arg(args)?,
            },
        })
    }

    /// The wire `args` object.
    pub fn args(&self) -> Value {
        let mut m = serde_json::Map::new();
        if let Some(v) = self.version() {
            m.insert("version".into(), Value::String(v.to_string()));
        }
        Value::Object(m)
    }
}

fn version_arg(args: &Value) -> Result<Option<String>, CommandError> {
    match args {
        Value::Null => Ok(None),
        Value::Object(m) => match m.get("version") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(v)) => Ok(Some(v.clone())),
            Some(other) => Err(CommandError::Args(format!(
                "args.version must be a string, not {other}"
            ))),
        },
        other => Err(CommandError::Args(format!(
            "args must be an object, not {other}"
        ))),
    }
}

/// One command as the agent receives it (`GET /api/v1/agent/commands`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandMessage<Id = i64, Kind = CommandKind> {
    pub id: Id,
    pub kind: Kind,
    #[serde(default)]
    pub args: Value,
}

/// One heartbeat (`POST /api/v1/agent/heartbeat`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub host: String,
    pub version: String,
    pub status: AgentStatus,
    pub pid: i64,
    /// The agent's labels (`labels = { site = "lon" }` in config.toml). Absent
    /// when empty, so an agent without labels speaks to an older control plane.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// Agent labels: name to value, ordered.
pub type Labels = std::collections::BTreeMap<String, String>;

words!(
    /// The state of a staged rollout of a version (`/api/v1/admin/rollouts`).
    RolloutState ("rollout state") {
        /// The scheduler advances it.
        Running = "Running",
        /// An operator paused it: nothing new starts; attempts under way finish.
        Paused = "Paused",
        /// Failures passed a group's threshold: stopped, the version blocklisted.
        Halted = "Halted",
        /// An operator aborted it: stopped for good, the version blocklisted.
        Aborted = "Aborted",
        /// Every group is done.
        Completed = "Completed",
    }
);

impl RolloutState {
    /// Whether the rollout can still change (Running or Paused or Halted).
    pub const fn is_open(self) -> bool {
        matches!(
            self,
            RolloutState::Running | RolloutState::Paused | RolloutState::Halted
        )
    }
}

/// One stage event of one attempt: the body of
/// `POST /api/v1/agent/attempts/{id}/stages`, sent by the agent and the runner
/// (directly or through the report queue).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageReport {
    pub stage: Stage,
    pub state: StageState,
    #[serde(default)]
    pub message: String,
    /// When it happened (absent: when the control plane received it).
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
}

/// What starts the one log line of a stage event, written by the agent and
/// the deploy runner alike so that `molt status` reads both logs with one
/// parser: `Upgrade History stage <stage>: <state>[ (<message>)]`.
pub const STAGE_LINE: &str = "Upgrade History stage ";

/// The log line of a stage event (see [`STAGE_LINE`]).
pub fn stage_line(stage: Stage, state: StageState, message: &str) -> String {
    if message.is_empty() {
        format!("{STAGE_LINE}{stage}: {state}")
    } else {
        format!("{STAGE_LINE}{stage}: {state} ({message})")
    }
}

/// The stage, state and message of a log line holding a [`stage_line`]
/// (anywhere in it: a timestamp and level before it, `key=value` fields after
/// it are allowed); `None` for any other line.
pub fn parse_stage_line(text: &str) -> Option<(Stage, StageState, String)> {
    let rest = &text[text.find(STAGE_LINE)? + STAGE_LINE.len()..];
    let stage = Stage::ALL.iter().copied().find(|s| {
        rest.strip_prefix(s.as_str())
            .is_some_and(|r| r.starts_with(": "))
    })?;
    let rest = &rest[stage.as_str().len() + 2..];
    let state = StageState::ALL
        .iter()
        .copied()
        .find(|s| rest.starts_with(s.as_str()))?;
    let rest = &rest[state.as_str().len()..];
    let message = match rest.strip_prefix(" (") {
        Some(m) => {
            // The message ends before the fields tracing appends, or at the
            // line's last parenthesis.
            let end = match m.rfind(") stage=") {
                Some(i) => i,
                None => m.trim_end().strip_suffix(')')?.len(),
            };
            m[..end].to_string()
        }
        None if rest.is_empty() || rest.starts_with(' ') => String::new(),
        None => return None,
    };
    Some((stage, state, message))
}

impl StageReport {
    /// A report stamped now.
    pub fn now(stage: Stage, state: StageState, message: &str) -> Self {
        Self {
            stage,
            state,
            message: message.to_string(),
            at: Some(Utc::now()),
        }
    }

    /// The JSON body (the queue keeps bodies as JSON values).
    pub fn to_value(&self) -> Value {
        to_value(self)
    }
}

/// The end of an attempt: the body of `POST /api/v1/agent/attempts/{id}/finish`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinishReport {
    pub result: AttemptResult,
    #[serde(default)]
    pub message: String,
}

impl FinishReport {
    /// The JSON body.
    pub fn to_value(&self) -> Value {
        to_value(self)
    }
}

fn to_value<T: Serialize>(t: &T) -> Value {
    // Plain structs of strings and enums: serialising cannot fail.
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// One queued request of the report queue (one line of
/// `work/report-queue.jsonl`; its locked file I/O is `molt_layout::queue`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedReport {
    pub method: String,
    pub path: String,
    pub body: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_line_reads_back_from_either_log() {
        let cases = [
            (Stage::PreUpgradeCheck, StageState::InProgress, ""),
            (
                Stage::Download,
                StageState::Failed,
                "core (size 3) does not match",
            ),
            (
                Stage::DeployBinaryFiles,
                StageState::Complete,
                "versions/v2: 1 files linked (0 copied)",
            ),
        ];
        for (stage, state, message) in cases {
            let line = stage_line(stage, state, message);
            let want = Some((stage, state, message.to_string()));
            assert_eq!(parse_stage_line(&line), want, "{line}");
            // As the fmt layer writes it: time and level before, fields after.
            let logged = format!(
                "2026-12-03T10:00:00.000Z  INFO {line} stage=\"{stage}\" state=\"{state}\""
            );
            assert_eq!(parse_stage_line(&logged), want, "{logged}");
        }
        assert_eq!(
            parse_stage_line("Upgrade History stage Nowhere: Complete"),
            None
        );
        assert_eq!(
            parse_stage_line("Upgrade History stage Restart: Completed"),
            None
        );
        assert_eq!(
            parse_stage_line("Upgrade runner started (pid 1): a -> b"),
            None
        );
    }

    #[test]
    fn words_round_trip_through_serde_display_and_from_str() {
        fn check<T>(all: &[T])
        where
            T: Copy + std::fmt::Display + std::str::FromStr + PartialEq + std::fmt::Debug,
            T: Serialize + for<'de> Deserialize<'de>,
            <T as std::str::FromStr>::Err: std::fmt::Debug,
        {
            for &w in all {
                let s = w.to_string();
                assert_eq!(serde_json::to_value(w).unwrap(), Value::String(s.clone()));
                assert_eq!(
                    serde_json::from_value::<T>(Value::String(s.clone())).unwrap(),
                    w
                );
                assert_eq!(s.parse::<T>().unwrap(), w);
            }
        }
        check(AgentStatus::ALL);
        check(Stage::ALL);
        check(StageState::ALL);
        check(AttemptResult::ALL);
        check(IssueState::ALL);
        check(CommandKind::ALL);
        check(CommandState::ALL);
        check(FindingSeverity::ALL);
        check(RolloutState::ALL);
        assert_eq!(AgentStatus::UpgradeFailed.as_str(), "Upgrade Failed");
        assert_eq!(Stage::Download.as_str(), "Download Upgrade Packages");
        assert_eq!(StageState::InProgress.as_str(), "In Progress");
        assert_eq!(AttemptResult::RolledBack.as_str(), "Rolled Back");
        assert_eq!(CommandKind::AutoUpgrade.as_str(), "autoUpgrade");
        assert!("Sideways".parse::<AgentStatus>().is_err());
        let up = String::from("Up");
        assert_eq!(up, AgentStatus::Up);
        assert_eq!(AgentStatus::Up, up);
        assert_eq!(AgentStatus::Up, "Up");
    }

    #[test]
    fn commands_parse_with_typed_arguments() {
        let v = serde_json::json!({"version": "v2"});
        assert_eq!(
            AgentCommand::from_wire("upgrade", &v).unwrap(),
            AgentCommand::Upgrade {
                version: Some("v2".into())
            }
        );
        // autoUpgrade ignores its arguments.
        assert_eq!(
            AgentCommand::from_wire("autoUpgrade", &serde_json::json!(3)).unwrap(),
            AgentCommand::AutoUpgrade
        );
        assert_eq!(
            AgentCommand::from_wire("runPrecheck", &Value::Null).unwrap(),
            AgentCommand::RunPrecheck { version: None }
        );
        assert_eq!(
            AgentCommand::from_wire("upgrade", &serde_json::json!({"version": 2}))
                .unwrap_err()
                .to_string(),
            "args.version must be a string, not 2"
        );
        assert_eq!(
            AgentCommand::from_wire("dance", &Value::Null)
                .unwrap_err()
                .to_string(),
            "unknown command kind `dance`"
        );
        assert_eq!(
            AgentCommand::Upgrade {
                version: Some("v2".into())
            }
            .args(),
            v
        );
    }

    #[test]
    fn a_stage_report_has_the_wire_shape() {
        let at: DateTime<Utc> = "2026-01-02T03:04:05Z".parse().unwrap();
        let r = StageReport {
            stage: Stage::PreUpgradeCheck,
            state: StageState::Skipped,
            message: "m".into(),
            at: Some(at),
        };
        assert_eq!(
            r.to_value(),
            serde_json::json!({"stage": "Pre Upgrade Check", "state": "Skipped", "message": "m", "at": at})
        );
        let f = FinishReport {
            result: AttemptResult::RolledBack,
            message: String::new(),
        };
        assert_eq!(
            f.to_value(),
            serde_json::json!({"result": "Rolled Back", "message": ""})
        );
    }
}
