//! The table of known failure signatures, kept as data
//! (`host/ops/signatures/signatures.json`, one entry per signature with its
//! source in the seed articles) so adding a signature is a reviewable edit of
//! one JSON object, not code.
use molt_protocol::FindingSeverity;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::OpsError;

/// The embedded table.
pub const TABLE_JSON: &str = include_str!("../signatures/signatures.json");

/// Which evidence a signature looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// Agent, console, supervisor and resume logs, outside upgrade-log sections.
    AgentLog,
    /// `<< UPGRADE LOG BEGIN >>` sections and live runner logs.
    UpgradeLog,
    /// Both of the above.
    AnyLog,
    /// Upgrade history: stage reports and deploy outcomes.
    History,
    /// Only a named condition on the install's state.
    State,
}

/// Named checks of the install's state that a regex cannot express.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    JournalUnfinishedNoRunner,
    InstallIncomplete,
    TruststoreCertsLost,
    StatusStuck,
    VersionFlapping,
}

/// Extra evidence gathered once a signature matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    /// Processes holding files of version directories other than the current one.
    VersionDirUsers,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    pub input: Input,
    /// At least one of these regexes matches a line.
    #[serde(default)]
    pub any: Vec<String>,
    /// Every one of these matches some line.
    #[serde(default)]
    pub all: Vec<String>,
    #[serde(default)]
    pub condition: Option<Condition>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// A signature's severities are the protocol's finding severities but `blocking`.
impl From<Severity> for FindingSeverity {
    fn from(s: Severity) -> FindingSeverity {
        match s {
            Severity::Info => FindingSeverity::Info,
            Severity::Warning => FindingSeverity::Warning,
            Severity::Error => FindingSeverity::Error,
        }
    }
}

/// One known failure: how to recognise it, its cause, its remediation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub id: String,
    pub title: String,
    pub severity: Severity,
    /// Where the seeds describe it (KB / PRB numbers, article and step).
    pub source: String,
    /// Rows of notes/failure-modes.md it answers.
    #[serde(default)]
    pub failure_modes: Vec<String>,
    #[serde(rename = "match")]
    pub matcher: MatchSpec,
    /// A more specific signature hides these when both match.
    #[serde(default)]
    pub supersedes: Vec<String>,
    #[serde(default)]
    pub probe: Option<Probe>,
    pub cause: String,
    pub remediation: String,
}

/// A signature with its regexes compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub sig: Signature,
    pub any: Vec<Regex>,
    pub all: Vec<Regex>,
}

/// Parse and compile a table; every problem names the signature.
pub fn compile(json: &str) -> Result<Vec<Compiled>, OpsError> {
    let sigs: Vec<Signature> =
        serde_json::from_str(json).map_err(|e| OpsError::Table(format!("not valid: {e}")))?;
    let mut out: Vec<Compiled> = Vec::with_capacity(sigs.len());
    for s in sigs {
        if out.iter().any(|c| c.sig.id == s.id) {
            return Err(OpsError::Table(format!(
                "signature `{}` is listed twice",
                s.id
            )));
        }
        let re = |p: &String| {
            Regex::new(p)
                .map_err(|e| OpsError::Table(format!("signature `{}`: regex `{p}`: {e}", s.id)))
        };
        let any = s
            .matcher
            .any
            .iter()
            .map(re)
            .collect::<Result<Vec<_>, _>>()?;
        let all = s
            .matcher
            .all
            .iter()
            .map(re)
            .collect::<Result<Vec<_>, _>>()?;
        let has_condition = s.matcher.condition.is_some();
        if any.is_empty() && all.is_empty() && !has_condition {
            return Err(OpsError::Table(format!(
                "signature `{}` matches nothing (no `any`, `all` or `condition`)",
                s.id
            )));
        }
        if s.matcher.input == Input::State && !has_condition {
            return Err(OpsError::Table(format!(
                "signature `{}`: input `state` needs a `condition`",
                s.id
            )));
        }
        if s.source.trim().is_empty()
            || s.cause.trim().is_empty()
            || s.remediation.trim().is_empty()
        {
            return Err(OpsError::Table(format!(
                "signature `{}`: source, cause and remediation must be filled in",
                s.id
            )));
        }
        out.push(Compiled { sig: s, any, all });
    }
    for c in &out {
        for id in &c.sig.supersedes {
            if !out.iter().any(|o| &o.sig.id == id) {
                return Err(OpsError::Table(format!(
                    "signature `{}` supersedes unknown `{id}`",
                    c.sig.id
                )));
            }
        }
    }
    Ok(out)
}

/// The embedded table, compiled.
pub fn builtin() -> Result<Vec<Compiled>, OpsError> {
    compile(TABLE_JSON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_table_compiles_and_every_entry_names_its_source() {
        let t = builtin().unwrap();
        assert!(t.len() >= 30, "{}", t.len());
        for c in &t {
            assert!(
                !c.sig.failure_modes.is_empty(),
                "{} lists no failure-mode row",
                c.sig.id
            );
        }
    }

    #[test]
    fn a_bad_regex_is_reported_with_its_signature() {
        let j = r#"[{"id":"x","title":"t","severity":"error","source":"s","match":{"input":"any_log","any":["("]},"cause":"c","remediation":"r"}]"#;
        let e = compile(j).unwrap_err().to_string();
        assert!(e.contains("`x`") && e.contains("regex"), "{e}");
    }

    #[test]
    fn a_state_signature_without_condition_is_refused() {
        let j = r#"[{"id":"y","title":"t","severity":"error","source":"s","match":{"input":"state","any":["a"]},"cause":"c","remediation":"r"}]"#;
        assert!(
            compile(j)
                .unwrap_err()
                .to_string()
                .contains("needs a `condition`")
        );
    }

    /// Every row of notes/failure-modes.md whose answer includes `diagnose`, or
    /// that the troubleshooting flow names, has a signature.
    #[test]
    fn the_failure_modes_marked_diagnose_are_covered() {
        let t = builtin().unwrap();
        let covered: Vec<&str> = t
            .iter()
            .flat_map(|c| c.sig.failure_modes.iter().map(String::as_str))
            .collect();
        for row in [
            "7.1",
            "7.2",
            "7.12",
            "8.12",
            "troubleshooting",
            "7.8",
            "8.1",
            "7.3",
            "6.7",
            "6.2",
            "4.1",
            "4.4",
            "4.2",
            "7.7",
            "2.2",
            "3.1",
            "manual-restore",
            "PRB1516216",
        ] {
            assert!(
                covered.contains(&row),
                "failure-modes row {row} has no signature"
            );
        }
    }
}
