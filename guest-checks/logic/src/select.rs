//! Version selection (the seeds' "Current packages" step).
use std::fmt;

use crate::buildstamp::{Buildstamp, BuildstampError, Kind, Version};
use crate::checks::runtime_skip_reason;

/// Why no plan could be made. The text names the offending package or
/// version; the selector guest hands it on as its WIT `result`'s string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelectError {
    /// An installed or assigned package name is not a buildstamp.
    Package(BuildstampError),
    /// The assigned version does not parse.
    AssignedVersion(BuildstampError),
    /// The pinned version does not parse.
    PinnedVersion(BuildstampError),
    /// An assigned package is of another version than the target (and not
    /// the runtime, which keeps its own).
    OtherVersion { package: String, target: String },
    /// The assignment for the target has no core package.
    NoCore { target: String },
}

impl fmt::Display for SelectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectError::Package(e) | SelectError::AssignedVersion(e) => write!(f, "{e}"),
            SelectError::PinnedVersion(e) => write!(f, "pinned version: {e}"),
            SelectError::OtherVersion { package, target } => write!(
                f,
                "assigned package {package} does not match the assigned version {target}"
            ),
            SelectError::NoCore { target } => {
                write!(f, "the assignment for {target} has no core package")
            }
        }
    }
}

impl std::error::Error for SelectError {}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SelectorInput {
    pub installed: Vec<String>,
    pub assigned_version: String,
    pub assigned: Vec<String>,
    pub downloaded: Vec<String>,
    pub pinned: Option<String>,
    pub os: String,
    pub arch: String,
    pub is_64bit: bool,
    pub libc_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Upgrade,
    Downgrade,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeDecision {
    Upgrade,
    Skip,
    Current,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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

/// The seeds' log lines: `Current packages:` then ` Installed: [a, b]` and so on.
pub fn current_packages_lines(
    installed: &[String],
    assigned: &[String],
    missing: &[String],
    downloaded: &[String],
) -> Vec<String> {
    vec![
        "Current packages:".to_string(),
        format!(" Installed: [{}]", installed.join(", ")),
        format!(" Assigned: [{}]", assigned.join(", ")),
        format!(" Missing: [{}]", missing.join(", ")),
        format!(" Downloaded: [{}]", downloaded.join(", ")),
    ]
}

impl Plan {
    pub fn current_packages_lines(&self) -> Vec<String> {
        current_packages_lines(
            &self.installed,
            &self.assigned,
            &self.missing,
            &self.downloaded,
        )
    }
}

fn package(name: &str) -> Result<Buildstamp, SelectError> {
    name.parse().map_err(SelectError::Package)
}

/// Decide what to install. Errors name the offending package or version.
pub fn select(input: &SelectorInput) -> Result<Plan, SelectError> {
    let mut notes = Vec::new();
    let installed: Vec<Buildstamp> = input
        .installed
        .iter()
        .map(|n| package(n))
        .collect::<Result<_, _>>()?;
    let assigned_version: Version = input
        .assigned_version
        .parse()
        .map_err(SelectError::AssignedVersion)?;
    let (target, target_version) = match &input.pinned {
        Some(p) if !p.is_empty() => {
            let v: Version = p.parse().map_err(SelectError::PinnedVersion)?;
            if *p != input.assigned_version {
                notes.push(format!(
                    "pinned version {p} overrides the assigned version {}",
                    input.assigned_version
                ));
            }
            (p.clone(), v)
        }
        _ => (input.assigned_version.clone(), assigned_version),
    };
    let mut assigned: Vec<Buildstamp> = Vec::new();
    for n in &input.assigned {
        let p = package(n)?;
        if p.version == target_version {
            assigned.push(p);
        } else if p.is_runtime() {
            // The runtime keeps its own buildstamp (it is upgraded per family).
            assigned.push(p);
        } else if input.pinned.as_deref() == Some(target.as_str()) {
            assigned.push(p.with_version(&target_version));
        } else {
            return Err(SelectError::OtherVersion {
                package: n.clone(),
                target,
            });
        }
    }
    let core = assigned
        .iter()
        .find(|p| p.kind == Kind::Core)
        .ok_or_else(|| SelectError::NoCore {
            target: target.clone(),
        })?
        .clone();
    let inst_core = installed.iter().find(|p| p.kind == Kind::Core);
    let mut action = match inst_core {
        None => {
            notes.push("no core package installed: installing the assigned version".into());
            Action::Upgrade
        }
        Some(ic) => match core.version.cmp(&ic.version) {
            std::cmp::Ordering::Greater => Action::Upgrade,
            std::cmp::Ordering::Less => {
                notes.push(format!(
                    "assigned version {target} is older than the installed {}: downgrading (the older version may lack APIs the running agent expects)",
                    ic.version
                ));
                Action::Downgrade
            }
            std::cmp::Ordering::Equal => Action::None,
        },
    };
    let crosses_family = inst_core.is_some_and(|ic| ic.version.family != core.version.family);
    let (runtime, runtime_reason) = match assigned.iter().position(Buildstamp::is_runtime) {
        None => (
            RuntimeDecision::Current,
            "no runtime assigned: the installed runtime matches the assignment".to_string(),
        ),
        Some(i) => {
            let rt = assigned[i].clone();
            if let Some(why) =
                runtime_skip_reason(&input.os, input.is_64bit, input.libc_version.as_deref())
            {
                assigned.remove(i);
                (RuntimeDecision::Skip, format!("{why} ({rt} not installed)"))
            } else if installed.contains(&rt) {
                (
                    RuntimeDecision::Current,
                    format!("runtime {rt} is already installed"),
                )
            } else {
                let from = installed
                    .iter()
                    .find(|p| p.is_runtime())
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "(none)".into());
                (
                    RuntimeDecision::Upgrade,
                    format!("runtime {rt} replaces {from}"),
                )
            }
        }
    };
    if action == Action::None && runtime == RuntimeDecision::Upgrade {
        notes.push("core is current; upgrading the runtime only".into());
        action = Action::Upgrade;
    }
    let assigned: Vec<String> = assigned.iter().map(Buildstamp::to_string).collect();
    let missing: Vec<String> = if action == Action::None {
        Vec::new()
    } else {
        assigned
            .iter()
            .filter(|a| !input.installed.contains(a))
            .cloned()
            .collect()
    };
    let downloaded = missing
        .iter()
        .filter(|m| input.downloaded.contains(m))
        .cloned()
        .collect();
    Ok(Plan {
        action,
        target_version: target,
        installed: input.installed.clone(),
        assigned,
        missing,
        downloaded,
        crosses_family,
        runtime,
        runtime_reason,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn madrid_seed_example() {
        let up = "mid-upgrade.madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650.universal.universal.zip";
        let core =
            "mid-core.madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650.universal.universal.zip";
        let input = SelectorInput {
            installed: vec![
                "mid-core.madrid-12-18-2018__patch1-hotfix2-03-14-2019_03-20-2019_1304.universal.universal.zip".into(),
                "mid-jre.madrid-12-18-2018__patch1-02-13-2019_02-25-2019_1807.windows.x86-64.zip".into(),
            ],
            assigned_version: "madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650".into(),
            assigned: vec![up.into(), core.into()],
            os: "windows".into(),
            arch: "x86-64".into(),
            is_64bit: true,
            ..Default::default()
        };
        let p = select(&input).unwrap();
        assert_eq!(p.action, Action::Upgrade);
        assert_eq!(p.missing, vec![up.to_string(), core.to_string()]);
        assert_eq!(p.current_packages_lines()[4], " Downloaded: []");
        assert!(!p.crosses_family);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let core =
            "mid-core.madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650.universal.universal.zip";
        let v = "madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650";
        let base = SelectorInput {
            assigned_version: v.into(),
            assigned: vec![core.into()],
            ..Default::default()
        };
        let e = select(&SelectorInput {
            assigned: vec![
                "mid-jre.madrid-12-18-2018__patch1-02-13-2019_02-25-2019_1807.windows.x86-64.zip"
                    .into(),
            ],
            ..base.clone()
        })
        .unwrap_err();
        assert_eq!(e, SelectError::NoCore { target: v.into() });
        assert_eq!(
            e.to_string(),
            format!("the assignment for {v} has no core package")
        );
        let e = select(&SelectorInput {
            pinned: Some("nope".into()),
            ..base.clone()
        })
        .unwrap_err();
        assert!(matches!(e, SelectError::PinnedVersion(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("pinned version: Not a valid package buildstamp: nope"),
            "{e}"
        );
        let e = select(&SelectorInput {
            installed: vec!["junk.zip".into()],
            ..base
        })
        .unwrap_err();
        assert!(matches!(e, SelectError::Package(_)), "{e:?}");
    }
}
