//! The selector's input and output as host types.
use serde::{Deserialize, Serialize};

/// What the version selector is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectorInput {
    /// Installed package names (core, runtime).
    pub installed: Vec<String>,
    /// The control plane's assigned `<version>`.
    pub assigned_version: String,
    /// Assigned package names, in the control plane's order (upgrade, core, runtime if any).
    pub assigned: Vec<String>,
    /// Names already in package/incoming.
    pub downloaded: Vec<String>,
    pub pinned: Option<String>,
    pub os: String,
    pub arch: String,
    pub is_64bit: bool,
    pub libc_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Upgrade,
    Downgrade,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeDecision {
    Upgrade,
    Skip,
    Current,
}

/// The selector's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub action: Action,
    pub target_version: String,
    pub installed: Vec<String>,
    pub assigned: Vec<String>,
    pub missing: Vec<String>,
    pub downloaded: Vec<String>,
    pub crosses_family: bool,
    pub runtime: RuntimeDecision,
    pub runtime_reason: String,
    pub notes: Vec<String>,
}

impl Plan {
    /// The seeds' log lines, e.g. `Current packages:` / ` Installed: [a, b]` /
    /// ` Assigned: [...]` / ` Missing: [...]` / ` Downloaded: []`.
    pub fn current_packages_lines(&self) -> Vec<String> {
        molt_check_logic::select::current_packages_lines(
            &self.installed,
            &self.assigned,
            &self.missing,
            &self.downloaded,
        )
    }
}

impl SelectorInput {
    pub fn to_logic(&self) -> molt_check_logic::select::SelectorInput {
        molt_check_logic::select::SelectorInput {
            installed: self.installed.clone(),
            assigned_version: self.assigned_version.clone(),
            assigned: self.assigned.clone(),
            downloaded: self.downloaded.clone(),
            pinned: self.pinned.clone(),
            os: self.os.clone(),
            arch: self.arch.clone(),
            is_64bit: self.is_64bit,
            libc_version: self.libc_version.clone(),
        }
    }
}

impl From<molt_check_logic::select::Plan> for Plan {
    /// The same decision computed natively (benchmark, cross-checks in tests).
    fn from(p: molt_check_logic::select::Plan) -> Plan {
        use molt_check_logic::select as s;
        Plan {
            action: match p.action {
                s::Action::Upgrade => Action::Upgrade,
                s::Action::Downgrade => Action::Downgrade,
                s::Action::None => Action::None,
            },
            target_version: p.target_version,
            installed: p.installed,
            assigned: p.assigned,
            missing: p.missing,
            downloaded: p.downloaded,
            crosses_family: p.crosses_family,
            runtime: match p.runtime {
                s::RuntimeDecision::Upgrade => RuntimeDecision::Upgrade,
                s::RuntimeDecision::Skip => RuntimeDecision::Skip,
                s::RuntimeDecision::Current => RuntimeDecision::Current,
            },
            runtime_reason: p.runtime_reason,
            notes: p.notes,
        }
    }
}
