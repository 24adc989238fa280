//! What systemd says about an install, read from unit files on disk (an
//! unprivileged agent cannot ask systemd over D-Bus): which units serve a home,
//! and the names of the companion units that run the upgrade as root.
//!
//! One definition shared by the deploy runner (which refuses a second service),
//! the host facts (the `install.shared` check) and the operator tools.
use std::path::Path;

/// Where unit files live, highest precedence first.
pub const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];

/// The companion path unit of an agent unit: `molt-agent.service` ->
/// `molt-agent-upgrade.path`. It watches the home's upgrade request file and
/// starts [`companion_service`], which runs the deploy runner as root.
pub fn companion_path(unit: &str) -> String {
    format!("{}-upgrade.path", unit_base(unit))
}

/// The companion service: `molt-agent.service` -> `molt-agent-upgrade.service`.
pub fn companion_service(unit: &str) -> String {
    format!("{}-upgrade.service", unit_base(unit))
}

fn unit_base(unit: &str) -> &str {
    unit.strip_suffix(".service").unwrap_or(unit)
}

/// Why the companion unit cannot run an upgrade for this home.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompanionError {
    #[error(
        "the companion unit {name} is not installed (install it with `molt install`, see docs/deploy.md)"
    )]
    NotInstalled { name: String },
    #[error("{} does not watch {} (expected the line `{needle}`)", file.display(), request.display())]
    WrongRequest {
        file: std::path::PathBuf,
        request: std::path::PathBuf,
        needle: String,
    },
    #[error(
        "the companion unit {name} is installed but not enabled (systemctl enable --now {name})"
    )]
    NotEnabled { name: String },
}

/// Is the companion path unit of `unit` installed and enabled for `root`
/// (its file watches this home's request file and it is wanted by a target)?
/// Read from disk: the agent that asks usually has no right to ask systemd.
pub fn companion_enabled(unit: &str, root: &Path) -> Result<(), CompanionError> {
    let name = companion_path(unit);
    let request = crate::Home::new(root).upgrade_request_file();
    let needle = format!("PathExists={}", request.display());
    let Some((dir, text)) = UNIT_DIRS.iter().find_map(|d| {
        std::fs::read_to_string(Path::new(d).join(&name))
            .ok()
            .map(|t| (*d, t))
    }) else {
        return Err(CompanionError::NotInstalled { name });
    };
    if !text.lines().any(|l| l.trim() == needle) {
        return Err(CompanionError::WrongRequest {
            file: Path::new(dir).join(&name),
            request,
            needle,
        });
    }
    let wanted = UNIT_DIRS.iter().any(|d| {
        std::fs::read_dir(d).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                e.file_name().to_string_lossy().ends_with(".wants") && e.path().join(&name).exists()
            })
        })
    });
    if !wanted {
        return Err(CompanionError::NotEnabled { name });
    }
    Ok(())
}

/// Units in [`UNIT_DIRS`] that run the agent or the supervisor for exactly
/// `root`, except `own` (the unit this agent runs in serves the install, it
/// does not share it). More than one service on a home is the seeds' 7.3 failure.
pub fn units_serving(root: &Path, own: Option<&str>) -> Vec<String> {
    let dirs: Vec<&Path> = UNIT_DIRS.iter().map(Path::new).collect();
    units_serving_in(&dirs, root, own)
}

/// [`units_serving`] over the given directories (tests use temp dirs). A unit
/// name found in several directories counts once (the first one wins, as in systemd).
pub fn units_serving_in(dirs: &[&Path], root: &Path, own: Option<&str>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<_> = rd.flatten().collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".service") || !seen.insert(name.clone()) {
                continue;
            }
            if own == Some(name.as_str()) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            if text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("ExecStart="))
                .any(|cmd| serves(cmd, root))
            {
                found.push(name);
            }
        }
    }
    found
}

/// Does one `ExecStart=` command line run `molt agent` or `molt run` with
/// `--home <root>` (exactly that directory, not one that starts with it)?
/// The companion's `molt deploy` is not a service of the install.
fn serves(cmd: &str, root: &Path) -> bool {
    let root = root.to_string_lossy();
    let root = root.trim_end_matches('/');
    let words: Vec<&str> = cmd
        .trim_start_matches(['-', '@', ':', '+', '!'])
        .split_whitespace()
        .collect();
    let home = words.iter().enumerate().any(|(i, w)| {
        let value = match w.strip_prefix("--home=") {
            Some(v) => Some(v),
            None if *w == "--home" => words.get(i + 1).copied(),
            None => None,
        };
        value.is_some_and(|v| v.trim_end_matches('/') == root)
    });
    home && words.iter().skip(1).any(|w| *w == "agent" || *w == "run")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_serves_a_home_when_it_runs_the_agent_or_supervisor_for_exactly_that_home() {
        let root = Path::new("/opt/molt");
        assert!(serves(
            "/opt/molt/current/bin/molt agent --home /opt/molt",
            root
        ));
        assert!(serves("-/usr/bin/molt run --home=/opt/molt/", root));
        // The companion runs the deploy runner: not a second service.
        assert!(!serves(
            "/opt/molt/current/bin/molt deploy --home /opt/molt --request",
            root
        ));
        // Another home that merely starts with the same text.
        assert!(!serves(
            "/opt/molt2/current/bin/molt agent --home /opt/molt2",
            root
        ));
        assert!(!serves("/usr/bin/molt agent", root));
    }

    #[test]
    fn the_agents_own_unit_and_its_companion_are_not_other_services() {
        let units = tempfile::tempdir().unwrap();
        let unit = |name: &str, cmd: &str| {
            std::fs::write(
                units.path().join(name),
                format!("[Service]\nExecStart={cmd}\n"),
            )
            .unwrap()
        };
        unit(
            "molt-agent.service",
            "/opt/molt/current/bin/molt agent --home /opt/molt",
        );
        unit(
            "other-agent.service",
            "/opt/molt/current/bin/molt agent --home /opt/molt",
        );
        unit(
            "molt-agent-upgrade.service",
            "/opt/molt/current/bin/molt deploy --home /opt/molt --request",
        );
        unit(
            "elsewhere.service",
            "/srv/m/current/bin/molt agent --home /srv/m",
        );
        let dirs = [units.path()];
        let root = Path::new("/opt/molt");
        assert_eq!(
            units_serving_in(&dirs, root, Some("molt-agent.service")),
            ["other-agent.service"]
        );
        // Seen from outside any unit (e.g. `molt run` started by hand) both count.
        assert_eq!(units_serving_in(&dirs, root, None).len(), 2);
    }

    #[test]
    fn companion_names_follow_the_agent_unit() {
        assert_eq!(
            companion_path("molt-agent.service"),
            "molt-agent-upgrade.path"
        );
        assert_eq!(companion_service("edge-1"), "edge-1-upgrade.service");
    }
}
