//! The standard checks, one function each. Each returns its findings; an empty
//! list means the check passed.
use crate::{Facts, Finding, Holder, Probe, ServiceState, Severity, Stage, param, parse_bytes};

/// Default minimum free space (the seeds: "At least 1 GB of free disk space").
pub const DEFAULT_MIN_FREE: u64 = 1 << 30;

/// `disk-space`: the install and temp volumes each have at least `min_free`
/// (param, default 1 GiB) free; below `warn_free` (default 2 × min) is a warning.
pub fn disk_space(facts: &Facts, params: &[(String, String)]) -> Vec<Finding> {
    let mut out = Vec::new();
    let min = match param(params, "min_free") {
        None => DEFAULT_MIN_FREE,
        Some(s) => match parse_bytes(s) {
            Some(n) => n,
            None => {
                out.push(Finding::new(
                    Severity::Warning,
                    "check.params",
                    format!("min_free `{s}` is not a byte count; using the default of 1 GiB"),
                    "Fix the check's `min_free` parameter in the bundle manifest.",
                ));
                DEFAULT_MIN_FREE
            }
        },
    };
    let warn = param(params, "warn_free")
        .and_then(parse_bytes)
        .unwrap_or(min.saturating_mul(2));
    for (what, free) in [
        ("install", facts.install_free_bytes),
        ("temp", facts.temp_free_bytes),
    ] {
        if free < min {
            out.push(Finding::new(
                Severity::Blocking,
                "disk.insufficient",
                format!(
                    "Not enough free disk space on the {what} volume. The system reports {free} bytes free (need at least {min})"
                ),
                "Free disk space on that volume, then let the agent retry the upgrade.",
            ));
        } else if free < warn {
            out.push(Finding::new(
                Severity::Warning,
                "disk.low",
                format!("Free disk space on the {what} volume is low: {free} bytes (warning below {warn})"),
                "Free disk space soon; the next upgrade may be blocked.",
            ));
        }
    }
    out
}

/// `download-access`: the download site answers over TLS. `url` param picks the
/// URL; default is the first allow-listed URL.
pub fn download_access(target: Option<&str>, probe: Result<Probe, String>) -> Vec<Finding> {
    let url = target.unwrap_or("<none>");
    let p = match probe {
        Err(why) => {
            return vec![Finding::new(
                Severity::Blocking,
                "download.not-allowed",
                format!("Cannot probe the download site {url}: {why}"),
                "Add the download URL to the agent's network allow-list (the control plane and download URLs).",
            )];
        }
        Ok(p) => p,
    };
    if !p.ok {
        return match p.failed_stage {
            Some(Stage::Http) | None => vec![Finding::new(
                Severity::Warning,
                "download.http-status",
                format!(
                    "The download site {} answers, but with HTTP status {}: {}",
                    p.url,
                    p.http_status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "?".into()),
                    p.detail
                ),
                "Check the proxy and the download URL; downloads may fail.",
            )],
            Some(stage) => vec![Finding::new(
                Severity::Blocking,
                "download.unreachable",
                format!(
                    "The download site {} is not reachable: {} failed: {}",
                    p.url,
                    stage.as_str(),
                    p.detail
                ),
                "Allow the agent host to reach the download site (firewall, proxy, DNS), or import the packages manually.",
            )],
        };
    }
    if !p.url.starts_with("https://") {
        return vec![Finding::new(
            Severity::Warning,
            "download.not-tls",
            format!("The download site {} answers, but not over TLS", p.url),
            "Serve packages over https:// (bundles are signed, but TLS hides what is fetched).",
        )];
    }
    Vec::new()
}

/// Does `s` look like an account name the OS would report?
/// Accepts `name`, `uid=N(name)`, `DOMAIN\name`, `name@domain`.
pub fn parse_account(s: &str) -> Option<String> {
    let s = s.trim();
    let ok_name = |n: &str| {
        !n.is_empty()
            && n.len() <= 256
            && n.chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '$' | ' '))
            && !n.starts_with(' ')
            && !n.ends_with(' ')
    };
    if let Some(rest) = s.strip_prefix("uid=") {
        let open = rest.find('(')?;
        let close = rest.rfind(')')?;
        if close + 1 != rest.len() || close <= open {
            return None;
        }
        rest[..open].parse::<u32>().ok()?;
        let n = &rest[open + 1..close];
        return ok_name(n).then(|| n.to_string());
    }
    if let Some((dom, n)) = s.split_once('\\') {
        return (ok_name(dom) && ok_name(n)).then(|| s.to_string());
    }
    if let Some((n, dom)) = s.split_once('@') {
        return (ok_name(n) && ok_name(dom)).then(|| s.to_string());
    }
    ok_name(s).then(|| s.to_string())
}

/// `service-account`: the service account may stop, start and reinstall the service.
/// An account the check cannot parse is a warning (as in the seeds).
pub fn service_account(facts: &Facts) -> Vec<Finding> {
    let Some(name) = parse_account(&facts.service_account) else {
        return vec![Finding::new(
            Severity::Warning,
            "account.unparsable",
            format!(
                "Could not parse the service account `{}`; its privileges were not verified",
                facts.service_account
            ),
            "Check that the service runs as an account allowed to stop, start and reinstall it.",
        )];
    };
    if !facts.privileged {
        return vec![Finding::new(
            Severity::Blocking,
            "account.unprivileged",
            format!(
                "The service account `{name}` is not authorized to stop, start and reinstall the service (only root/admin has that privilege)"
            ),
            "Run the agent service as a privileged account, or grant it service-control rights.",
        )];
    }
    Vec::new()
}

/// Compare dotted version strings numerically (`2.17` < `2.31`).
pub fn version_lt(a: &str, b: &str) -> Option<bool> {
    let parse = |s: &str| -> Option<Vec<u64>> {
        s.trim().split('.').map(|p| p.parse::<u64>().ok()).collect()
    };
    Some(parse(a)? < parse(b)?)
}

/// Why a runtime upgrade would be skipped on this host (the seeds' rules:
/// a 32-bit host, or Linux with glibc older than 2.17), or `None`.
pub fn runtime_skip_reason(os: &str, is_64bit: bool, libc_version: Option<&str>) -> Option<String> {
    if !is_64bit {
        return Some("runtime upgrade skipped: the host is 32-bit".into());
    }
    if os == "linux" {
        match libc_version {
            None => {
                return Some(
                    "runtime upgrade skipped: glibc version unknown (not a glibc host)".into(),
                );
            }
            Some(v) => match version_lt(v, "2.17") {
                Some(true) => {
                    return Some(format!("runtime upgrade skipped: glibc {v} < 2.17"));
                }
                Some(false) => {}
                None => {
                    return Some(format!(
                        "runtime upgrade skipped: cannot read glibc version `{v}`"
                    ));
                }
            },
        }
    }
    None
}

/// `runtime-compat`: the host can take a runtime upgrade (64-bit, glibc >= 2.17).
/// Params: `runtime_upgrade` (`true` when the plan upgrades the runtime, default
/// `true`), `runtime_required` (`true` when the new version cannot run on the old
/// runtime: a skip then blocks; default `false`).
pub fn runtime_compat(facts: &Facts, params: &[(String, String)]) -> Vec<Finding> {
    let upgrade = param(params, "runtime_upgrade") != Some("false");
    let required = param(params, "runtime_required") == Some("true");
    if !upgrade {
        return Vec::new();
    }
    match runtime_skip_reason(&facts.os, facts.is_64bit, facts.libc_version.as_deref()) {
        None => Vec::new(),
        Some(why) if required => vec![Finding::new(
            Severity::Blocking,
            "runtime.incompatible",
            format!("The new version needs the new runtime, but {why}"),
            "Move the agent to a 64-bit host with glibc 2.17 or newer, or pin the current version.",
        )],
        Some(why) => vec![Finding::new(
            Severity::Warning,
            "runtime.skipped",
            format!(
                "{why}; the agent keeps runtime {}",
                facts.runtime_version.as_deref().unwrap_or("(none)")
            ),
            "Plan a move to a 64-bit host with glibc 2.17 or newer.",
        )],
    }
}

/// `duplicate-install`: no other service uses the same install dir.
pub fn duplicate_install(state: ServiceState, sharing: &[String]) -> Vec<Finding> {
    let mut out = Vec::new();
    if !sharing.is_empty() {
        out.push(Finding::new(
            Severity::Blocking,
            "install.shared",
            format!(
                "Other services use the same install dir: {}; copies during the upgrade would fail on their file locks",
                sharing.join(", ")
            ),
            "Give each service its own install dir (remove or reinstall the duplicate service).",
        ));
    }
    if matches!(state, ServiceState::NotInstalled | ServiceState::Unknown) {
        out.push(Finding::new(
            Severity::Warning,
            "service.not-installed",
            "The agent does not run as an installed service; other services sharing its install dir may be missed".into(),
            "Install the agent as a service before upgrading.",
        ));
    }
    out
}

/// Default names of processes that hold files only momentarily (indexers, scanners).
pub const DEFAULT_TRANSIENT: &str = "updatedb,clamscan,clamd,mlocate";

/// `file-locks`: no process other than the agent holds files that will be replaced.
/// Holders named in `transient` (param, comma-separated) are warnings only.
pub fn file_locks(agent_pid: u32, holders: &[Holder], params: &[(String, String)]) -> Vec<Finding> {
    let transient: Vec<&str> = param(params, "transient")
        .unwrap_or(DEFAULT_TRANSIENT)
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let others: Vec<&Holder> = holders.iter().filter(|h| h.pid != agent_pid).collect();
    let (soft, hard): (Vec<&Holder>, Vec<&Holder>) = others
        .into_iter()
        .partition(|h| transient.contains(&h.name.as_str()));
    let list = |hs: &[&Holder]| {
        hs.iter()
            .map(|h| format!("{} (pid {}) holds {}", h.name, h.pid, h.path))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut out = Vec::new();
    if !hard.is_empty() {
        out.push(Finding::new(
            Severity::Blocking,
            "files.locked",
            format!(
                "Processes other than the agent hold files that the upgrade replaces: {}",
                list(&hard)
            ),
            "Stop those processes (or exclude the install dir from scanners) before upgrading.",
        ));
    }
    if !soft.is_empty() {
        out.push(Finding::new(
            Severity::Warning,
            "files.transient-lock",
            format!("Scanners hold files under the install dir: {}", list(&soft)),
            "Exclude the install dir from indexers and anti-virus scans.",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            os: "linux".into(),
            arch: "x86-64".into(),
            is_64bit: true,
            libc_version: Some("2.31".into()),
            install_free_bytes: 10 << 30,
            temp_free_bytes: 10 << 30,
            service_account: "root".into(),
            privileged: true,
            runtime_version: Some("17".into()),
            agent_pid: 42,
        }
    }

    #[test]
    fn disk_space_outcomes() {
        let mut f = facts();
        assert!(disk_space(&f, &[]).is_empty());
        f.install_free_bytes = (1 << 30) + 5;
        assert_eq!(disk_space(&f, &[])[0].code, "disk.low");
        f.install_free_bytes = 5;
        assert_eq!(disk_space(&f, &[])[0].severity, Severity::Blocking);
        f.install_free_bytes = 5000;
        let p = vec![("min_free".to_string(), "1KiB".to_string())];
        assert!(
            disk_space(&f, &p)
                .iter()
                .all(|x| x.severity != Severity::Blocking)
        );
    }

    #[test]
    fn accounts_parse() {
        assert_eq!(parse_account("uid=998(molt)").as_deref(), Some("molt"));
        assert!(parse_account("NT AUTHORITY\\SYSTEM").is_some());
        assert!(parse_account("uid=x(").is_none());
        assert!(parse_account("").is_none());
        assert!(parse_account("a;rm -rf").is_none());
    }

    #[test]
    fn glibc_rule() {
        assert!(runtime_skip_reason("linux", true, Some("2.16")).is_some());
        assert!(runtime_skip_reason("linux", true, Some("2.17")).is_none());
        assert!(runtime_skip_reason("linux", false, Some("2.31")).is_some());
        assert!(runtime_skip_reason("windows", true, None).is_none());
    }
}
