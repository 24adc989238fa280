//! `molt install` / `molt uninstall`: the operators' installer (the seeds'
//! installer scripts), done so that a failure leaves nothing half-installed.
//!
//! Install verifies every package against the trust root first, builds the
//! whole home in a hidden sibling directory and renames it into place, then
//! creates the service; if the service cannot be created and started, the
//! home and every unit file written are removed again.
//!
//! Under systemd with `--user`, three units are written (docs/deploy.md):
//! the agent unit (runs as the account), and a root-run companion pair
//! `<unit>-upgrade.path` + `<unit>-upgrade.service` that runs the deploy
//! runner when the agent writes `work/upgrade.request`. The companion runs a
//! root-owned copy of the runner outside the home, so root never executes a
//! file the account could have changed.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use molt_bundle::{SignedRoot, VerifyOptions};
use molt_layout::Home;
use serde::Serialize;

use crate::{OpsError, io_err};

/// The unit file the project ships, used when the core package carries none.
pub const AGENT_UNIT_TEMPLATE: &str = include_str!("../../../dist/systemd/molt-agent.service");
/// Where unit files are written.
pub const UNIT_DIR: &str = "/etc/systemd/system";
/// Where the companion's root-owned runner copies live (one per agent unit).
pub const RUNNER_DIR: &str = "/usr/local/libexec/molt";

/// Which service manager the install uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceChoice {
    Systemd,
    Supervisor,
}

/// What `molt install` was asked to do.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub home: PathBuf,
    pub packages: Vec<PathBuf>,
    pub root: PathBuf,
    pub control_plane: String,
    pub agent_name: String,
    pub token: String,
    pub service: ServiceChoice,
    /// The account the agent runs as (created when missing); `None`: root.
    pub user: Option<String>,
    /// The agent's unit name (systemd), `molt-agent` by default.
    pub unit: String,
    /// Extra config.toml lines (settings such as deadlines).
    pub extra_config: String,
    /// A private CA's PEM bundle, copied to `state/ca-bundle.pem` and named
    /// as `ca_bundle` (self-hosted TLS for the control plane or package site).
    pub ca_bundle: Option<PathBuf>,
    /// Start the service at the end.
    pub start: bool,
}

/// What `molt install` did, for `--json` and the printed summary.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub home: PathBuf,
    pub version: String,
    pub packages: Vec<String>,
    pub service: String,
    pub user: String,
    pub files: Vec<PathBuf>,
    pub started: bool,
}

fn bad(home: &Path, reason: impl Into<String>) -> OpsError {
    OpsError::Repair {
        home: home.to_path_buf(),
        reason: reason.into(),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Run a command; its stderr becomes the error.
fn run(home: &Path, cmd: &mut Command) -> Result<(), OpsError> {
    let out = cmd
        .output()
        .map_err(|e| bad(home, format!("cannot run {:?}: {e}", cmd.get_program())))?;
    if !out.status.success() {
        return Err(bad(
            home,
            format!(
                "{:?} {:?} failed ({}): {}",
                cmd.get_program(),
                cmd.get_args().collect::<Vec<_>>(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// uid and gid of `user` from /etc/passwd.
fn lookup_user(user: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Install an agent. See the module doc for what it writes.
pub fn install(o: &InstallOptions) -> Result<InstallReport, OpsError> {
    let home = &o.home;
    let unit = format!("{}.service", o.unit.trim_end_matches(".service"));
    // Refuse before touching anything.
    if o.service == ServiceChoice::Systemd && !is_root() {
        return Err(bad(
            home,
            "--service systemd needs root: it writes unit files under /etc/systemd/system and creates the service account (run it with sudo)",
        ));
    }
    if o.user.is_some() && !is_root() {
        return Err(bad(
            home,
            "--user needs root: only root can create an account and give it the install",
        ));
    }
    if std::fs::read_dir(home).is_ok_and(|mut d| d.next().is_some()) {
        return Err(bad(
            home,
            "the install directory exists and is not empty (uninstall the agent there first, or choose another --home)",
        ));
    }
    if o.service == ServiceChoice::Systemd {
        for name in [
            unit.clone(),
            molt_layout::systemd::companion_path(&unit),
            molt_layout::systemd::companion_service(&unit),
        ] {
            let p = Path::new(UNIT_DIR).join(&name);
            if p.exists() {
                return Err(bad(
                    home,
                    format!(
                        "the unit name {name} is taken ({} exists); pick another --unit",
                        p.display()
                    ),
                ));
            }
        }
    }
    if let Some(ca) = &o.ca_bundle {
        molt_layout::tls::read_ca_bundle(ca).map_err(|e| bad(home, e.to_string()))?;
    }
    if o.packages.is_empty() {
        return Err(bad(home, "no --package given (a core package is required)"));
    }
    let root = SignedRoot::load(&o.root).map_err(|e| OpsError::Invalid {
        path: o.root.clone(),
        reason: e.to_string(),
    })?;
    let mut verified = Vec::new();
    for p in &o.packages {
        // The root's rollback floor too: a fresh host must not start below it.
        let v = molt_bundle::verify_bundle(p, &root, &VerifyOptions::default())
            .and_then(|v| molt_bundle::verify::check_floor(&v, &root).map(|()| v))
            .map_err(|e| OpsError::Package {
                path: p.clone(),
                reason: format!("refused: {e}"),
            })?;
        verified.push(v);
    }
    if !verified.iter().any(|v| v.manifest.kind.as_str() == "core") {
        return Err(bad(home, "no core package among --package"));
    }

    // Build the home beside its final place, then rename it in.
    let parent = home
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let name = home
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| bad(home, "the install directory has no name"))?;
    let staging = parent.join(format!(".{name}.installing-{}", std::process::id()));
    let built = build_home(o, &staging, &verified, &unit);
    let version = match built {
        Ok(v) => v,
        Err(e) => {
            let _ = molt_deploy::fsutil::remove_tree(&staging);
            return Err(e);
        }
    };
    if home.exists() {
        // An empty directory (checked above): replace it.
        std::fs::remove_dir(home).map_err(io_err(home))?;
    }
    std::fs::rename(&staging, home).map_err(io_err(home))?;
    let mut report = InstallReport {
        home: home.clone(),
        version,
        packages: verified.iter().map(|v| v.buildstamp.to_string()).collect(),
        service: match o.service {
            ServiceChoice::Systemd => format!("systemd:{unit}"),
            ServiceChoice::Supervisor => "supervisor".into(),
        },
        user: o.user.clone().unwrap_or_else(|| "root".into()),
        files: vec![home.clone()],
        started: false,
    };
    let service = match o.service {
        ServiceChoice::Systemd => install_systemd(o, &unit, &mut report),
        ServiceChoice::Supervisor => start_supervisor(o, &mut report),
    };
    if let Err(e) = service {
        // Leave nothing half-installed.
        let _ = uninstall_files(home, o.service, &unit);
        return Err(e);
    }
    Ok(report)
}

/// Everything under the home: versions, config, trust root, ownership.
fn build_home(
    o: &InstallOptions,
    staging: &Path,
    verified: &[molt_bundle::VerifiedBundle],
    unit: &str,
) -> Result<String, OpsError> {
    let h = Home::new(staging);
    let version = crate::import::install_verified(&h, &h.work_dir().join("install"), verified)?;
    for d in [
        h.state_dir(),
        h.incoming_dir(),
        h.upgrade_temp_dir(),
        h.logs_dir(),
    ] {
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    let root_dst = h.trusted_root_file();
    std::fs::copy(&o.root, &root_dst).map_err(io_err(&o.root))?;
    let ca_line = match &o.ca_bundle {
        Some(ca) => {
            let dst = h.state_dir().join("ca-bundle.pem");
            std::fs::copy(ca, &dst).map_err(io_err(ca))?;
            "ca_bundle = \"state/ca-bundle.pem\"\n"
        }
        None => "",
    };
    let service = match o.service {
        ServiceChoice::Systemd => format!("systemd:{unit}"),
        ServiceChoice::Supervisor => "supervisor".into(),
    };
    let q = |s: &str| toml_string(s);
    let config = format!(
        "# Written by `molt install`; see docs/agent.md for every key.\n\
         control_plane_url = {}\nagent_name = {}\ntoken = {}\nservice = {}\ntrust_root = \"state/root.json\"\n{}{}",
        q(&o.control_plane),
        q(&o.agent_name),
        q(&o.token),
        q(&service),
        ca_line,
        o.extra_config
    );
    let cfg = h.config_file();
    molt_layout::write_atomic(&cfg, config.as_bytes())?;
    // The token is a secret.
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).map_err(io_err(&cfg))?;
    if let Some(user) = &o.user {
        let (uid, gid) = ensure_user(&o.home, user)?;
        chown_tree(staging, uid, gid)?;
    }
    Ok(version)
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The account, created as a system account without a login shell if missing.
fn ensure_user(home: &Path, user: &str) -> Result<(u32, u32), OpsError> {
    if let Some(ids) = lookup_user(user) {
        return Ok(ids);
    }
    if user.is_empty()
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(bad(home, format!("`{user}` is not a valid account name")));
    }
    run(
        home,
        Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .arg("--home-dir")
            .arg(home)
            .args(["--shell", "/usr/sbin/nologin", user]),
    )?;
    lookup_user(user).ok_or_else(|| bad(home, format!("useradd created no account `{user}`")))
}

/// `chown -R` without following symlinks.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), OpsError> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(io_err(dir))?;
    let md = std::fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if md.is_dir() {
        for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let e = e.map_err(io_err(dir))?;
            chown_tree(&e.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// The agent unit for this install: the core package's own unit file when it
/// ships one, else the project's; home, account and runner path filled in.
fn agent_unit_text(home: &Path, user: Option<&str>) -> String {
    let shipped = std::fs::read_to_string(
        Home::new(home)
            .current_link()
            .join(molt_deploy::runner::UNIT_FILE),
    )
    .unwrap_or_else(|_| AGENT_UNIT_TEMPLATE.to_string());
    molt_deploy::service::render_unit(&shipped, home, user)
}

fn install_systemd(
    o: &InstallOptions,
    unit: &str,
    report: &mut InstallReport,
) -> Result<(), OpsError> {
    let home = &o.home;
    let dir = Path::new(UNIT_DIR);
    let agent_unit = dir.join(unit);
    write_file(
        &agent_unit,
        &agent_unit_text(home, o.user.as_deref()),
        0o644,
    )?;
    report.files.push(agent_unit);
    let mut enable = vec![unit.to_string()];
    if o.user.is_some() {
        let base = unit.trim_end_matches(".service");
        let runner_dir = Path::new(RUNNER_DIR).join(base);
        std::fs::create_dir_all(&runner_dir).map_err(io_err(&runner_dir))?;
        let runner = runner_dir.join("molt");
        let src = Home::new(home).current_link().join("bin/molt");
        let tmp = runner_dir.join(".molt.tmp");
        std::fs::copy(&src, &tmp).map_err(io_err(&src))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &runner).map_err(io_err(&runner))?;
        report.files.push(runner_dir.clone());
        let path_name = molt_layout::systemd::companion_path(unit);
        let svc_name = molt_layout::systemd::companion_service(unit);
        let request = Home::new(home).upgrade_request_file();
        let path_unit = format!(
            "# Written by `molt install`: starts {svc_name} when the agent of {unit}\n\
             # asks for an upgrade (docs/deploy.md).\n\
             [Unit]\nDescription=Molt upgrade requests of {unit}\n\n\
             [Path]\nPathExists={}\nUnit={svc_name}\n\n\
             [Install]\nWantedBy=paths.target\n",
            request.display()
        );
        let svc_unit = format!(
            "# Written by `molt install`: the deploy runner of {unit}. Started as root;\n\
             # it works as the install's owner and uses root only to stop, hold and\n\
             # start {unit}. It runs a root-owned copy of the runner, never a file\n\
             # the service account can change.\n\
             [Unit]\nDescription=Molt upgrade runner of {unit}\n\n\
             [Service]\nType=exec\nExecStart={} deploy --home {} --request --service systemd:{unit}\n\
             # A runner that dies is started again and finishes or undoes the deploy\n\
             # from its journal.\nRestart=on-failure\nRestartSec=2\n",
            runner.display(),
            home.display()
        );
        let p1 = dir.join(&path_name);
        let p2 = dir.join(&svc_name);
        write_file(&p1, &path_unit, 0o644)?;
        write_file(&p2, &svc_unit, 0o644)?;
        report.files.push(p1);
        report.files.push(p2);
        enable.insert(0, path_name);
    }
    run(home, Command::new("systemctl").arg("daemon-reload"))?;
    let mut cmd = Command::new("systemctl");
    cmd.arg("enable");
    if o.start {
        cmd.arg("--now");
    }
    run(home, cmd.args(&enable))?;
    report.started = o.start;
    Ok(())
}

fn start_supervisor(o: &InstallOptions, report: &mut InstallReport) -> Result<(), OpsError> {
    if !o.start {
        return Ok(());
    }
    let exe = Home::new(&o.home).current_link().join("bin/molt");
    let log = Home::new(&o.home).supervisor_log();
    let home_s = o.home.to_string_lossy().into_owned();
    let args = ["run", "--home", home_s.as_str()];
    match &o.user {
        None => {
            molt_deploy::service::spawn_detached(&exe, &args, &log)?;
        }
        Some(u) => {
            let (uid, gid) =
                lookup_user(u).ok_or_else(|| bad(&o.home, format!("no account `{u}`")))?;
            molt_deploy::service::spawn_detached_as(&exe, &args, &log, Some((uid, gid)))?;
        }
    }
    report.started = true;
    Ok(())
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), OpsError> {
    molt_layout::write_atomic(path, text.as_bytes())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// What `molt uninstall` removed.
#[derive(Debug, Clone, Serialize)]
pub struct UninstallReport {
    pub home: PathBuf,
    pub removed: Vec<PathBuf>,
}

/// Stop and remove the service (units, companion, runner copy) and the home.
/// The service account is left: other files may belong to it.
pub fn uninstall(
    home: &Path,
    service: ServiceChoice,
    unit: &str,
) -> Result<UninstallReport, OpsError> {
    if service == ServiceChoice::Systemd && !is_root() {
        return Err(bad(home, "uninstalling a systemd service needs root"));
    }
    let unit = format!("{}.service", unit.trim_end_matches(".service"));
    let removed = uninstall_files(home, service, &unit)?;
    Ok(UninstallReport {
        home: home.to_path_buf(),
        removed,
    })
}

fn uninstall_files(
    home: &Path,
    service: ServiceChoice,
    unit: &str,
) -> Result<Vec<PathBuf>, OpsError> {
    let mut removed = Vec::new();
    if service == ServiceChoice::Systemd {
        let path_name = molt_layout::systemd::companion_path(unit);
        let svc_name = molt_layout::systemd::companion_service(unit);
        // Best effort: a unit that was never enabled or started is fine.
        let _ = Command::new("systemctl")
            .args(["disable", "--now", &path_name, unit])
            .output();
        let _ = Command::new("systemctl").args(["stop", &svc_name]).output();
        for n in [unit, path_name.as_str(), svc_name.as_str()] {
            let p = Path::new(UNIT_DIR).join(n);
            if p.exists() {
                std::fs::remove_file(&p).map_err(io_err(&p))?;
                removed.push(p);
            }
        }
        let runner_dir = Path::new(RUNNER_DIR).join(unit.trim_end_matches(".service"));
        if runner_dir.exists() {
            molt_deploy::fsutil::remove_tree(&runner_dir)?;
            removed.push(runner_dir);
        }
        let _ = Command::new("systemctl").arg("daemon-reload").output();
    } else {
        let h = Home::new(home);
        // The supervisor leaves when its home goes; stop it and its agent first.
        if let Some(pid) = molt_deploy::service::read_pid(&h.supervisor_pid_file()) {
            molt_deploy::proc::signal(pid, libc::SIGTERM);
            let start = std::time::Instant::now();
            while molt_deploy::proc::alive(pid)
                && start.elapsed() < std::time::Duration::from_secs(30)
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
    if home.exists() {
        molt_deploy::fsutil::remove_tree(home)?;
        removed.push(home.to_path_buf());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_unit_names_the_home_and_the_account() {
        let t = agent_unit_text(Path::new("/srv/edge"), Some("edge"));
        assert!(
            t.contains("ExecStart=/srv/edge/current/bin/molt agent --home /srv/edge"),
            "{t}"
        );
        assert!(
            t.contains("\nUser=edge\n") && t.contains("\nGroup=edge\n"),
            "{t}"
        );
        let t = agent_unit_text(Path::new("/srv/edge"), None);
        assert!(
            !t.lines()
                .any(|l| l.starts_with("User=") || l.starts_with("Group=")),
            "{t}"
        );
    }

    #[test]
    fn config_strings_are_quoted() {
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }
}
