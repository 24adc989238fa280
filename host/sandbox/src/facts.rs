//! The `facts` interface: host facts probed from this Linux host, or
//! simulated from a `facts.toml` (any field given in the file replaces the
//! probed one). `HostFacts` also carries what `services` reports and
//! simulated `net` outcomes, so one file simulates a whole host.
use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};

use molt_layout::Home;
use serde::{Deserialize, Serialize};

use crate::bindings::precheck as pb;
use crate::engine::HostState;
use crate::error::SandboxError;
use crate::services::{FileHolder, ServiceState, file_holders, replaced_dir};
pub use molt_check_logic::Facts;

/// A simulated outcome of `net.probe` for one URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeOutcome {
    pub ok: bool,
    /// `dns`, `tcp`, `tls` or `http`.
    #[serde(default)]
    pub failed_stage: Option<String>,
    #[serde(default)]
    pub http_status: Option<u16>,
    #[serde(default)]
    pub detail: String,
}

/// Everything the `facts` and `services` imports report (and simulated `net` outcomes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// What the `facts` import reports, as the check logic's own type: the
    /// guests and the native benchmark read the very same fields.
    pub facts: Facts,
    /// The agent's own service (excluded from `sharing_install_dir`).
    pub service_name: Option<String>,
    pub service_state: ServiceState,
    pub file_holders: Vec<FileHolder>,
    pub sharing_install_dir: Vec<String>,
    /// Simulated probe outcomes by URL; other allow-listed URLs are probed for real.
    pub net: BTreeMap<String, ProbeOutcome>,
}

/// `facts.toml`: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FactsFile {
    os: Option<String>,
    arch: Option<String>,
    is_64bit: Option<bool>,
    libc_version: Option<String>,
    install_free_bytes: Option<u64>,
    temp_free_bytes: Option<u64>,
    service_account: Option<String>,
    privileged: Option<bool>,
    runtime_version: Option<String>,
    agent_pid: Option<u32>,
    service_name: Option<String>,
    service_state: Option<ServiceState>,
    file_holders: Option<Vec<FileHolder>>,
    sharing_install_dir: Option<Vec<String>>,
    #[serde(default)]
    net: BTreeMap<String, ProbeOutcome>,
}

fn os_name() -> &'static str {
    match std::env::consts::OS {
        "macos" => "macos",
        other => other,
    }
}

fn arch_name() -> String {
    std::env::consts::ARCH.replace('_', "-")
}

/// Free bytes available to unprivileged users on the volume holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64, SandboxError> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        SandboxError::io(
            "statvfs",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"),
        )
    })?;
    // SAFETY: statvfs writes into the zeroed struct; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(SandboxError::io(
            "statvfs",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// This process's glibc version, asked of glibc itself (`gnu_get_libc_version`),
/// never parsed from command output; `None` elsewhere (musl, other systems).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn glibc_version() -> Option<String> {
    unsafe extern "C" {
        fn gnu_get_libc_version() -> *const libc::c_char;
    }
    // SAFETY: glibc returns a static NUL-terminated string.
    let p = unsafe { gnu_get_libc_version() };
    if p.is_null() {
        return None;
    }
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    s.to_str().ok().map(str::to_string)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn glibc_version() -> Option<String> {
    None
}

/// `uid=N(name)` for the effective user, from /etc/passwd.
fn account() -> String {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let name = std::fs::read_to_string("/etc/passwd").ok().and_then(|s| {
        s.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
        })
    });
    match name {
        Some(n) => format!("uid={uid}({n})"),
        None => format!("uid={uid}"),
    }
}

/// What the service account lacks to carry out an upgrade (logged; the
/// `privileged` fact is then false).
#[derive(Debug, thiserror::Error)]
enum RightsError {
    #[error("{} is not a valid path", .0.display())]
    BadPath(PathBuf),
    #[error("cannot write {}", .0.display())]
    CannotWrite(PathBuf),
    #[error(transparent)]
    Companion(#[from] molt_layout::systemd::CompanionError),
}

/// May this agent carry out an upgrade of `install_dir`: write its home, and
/// have its own service stopped and started? (The `privileged` fact; not
/// `uid == 0`: an unprivileged account under systemd upgrades through the
/// companion unit, and `molt run` restarts whatever account runs it.)
/// `Err` says what is missing.
fn upgrade_rights(install_dir: &Path, own_unit: Option<&str>) -> Result<(), RightsError> {
    let work = Home::new(install_dir).work_dir();
    let probe = if work.is_dir() {
        work
    } else {
        install_dir.to_path_buf()
    };
    let c = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes())
        .map_err(|_| RightsError::BadPath(probe.clone()))?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } != 0 {
        return Err(RightsError::CannotWrite(probe));
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    match own_unit {
        None => Ok(()),
        Some(unit) => Ok(molt_layout::systemd::companion_enabled(unit, install_dir)?),
    }
}

impl HostFacts {
    /// Real facts of this host for an install in `install_dir` and temp files in `temp_dir`.
    pub fn probe(install_dir: &Path, temp_dir: &Path) -> Result<HostFacts, SandboxError> {
        let service_account = account();
        // The service manager, not a guess: under systemd the agent's own unit
        // (it is running, or this code would not be).
        let own_unit = molt_layout::own_systemd_unit();
        let privileged = match upgrade_rights(install_dir, own_unit.as_deref()) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(account = %service_account, unit = ?own_unit, "The service account cannot carry out an upgrade: {why}");
                false
            }
        };
        let service_state = if own_unit.is_some() {
            ServiceState::Running
        } else {
            ServiceState::NotInstalled
        };
        Ok(HostFacts {
            facts: Facts {
                os: os_name().to_string(),
                arch: arch_name(),
                is_64bit: cfg!(target_pointer_width = "64"),
                libc_version: glibc_version(),
                install_free_bytes: free_bytes(install_dir)?,
                temp_free_bytes: free_bytes(temp_dir)?,
                service_account,
                privileged,
                runtime_version: std::fs::read_to_string(
                    Home::new(install_dir).current_runtime_version_file(),
                )
                .ok()
                .map(|s| s.trim().to_string()),
                agent_pid: std::process::id(),
            },
            sharing_install_dir: molt_layout::systemd::units_serving(
                install_dir,
                own_unit.as_deref(),
            ),
            service_name: own_unit,
            service_state,
            file_holders: file_holders(&replaced_dir(install_dir)),
            net: BTreeMap::new(),
        })
    }

    /// Facts for tests and `molt check run` when nothing is probed: a healthy
    /// 64-bit glibc Linux host with 10 GiB free, run as root.
    pub fn healthy() -> HostFacts {
        HostFacts {
            facts: Facts {
                os: "linux".into(),
                arch: "x86-64".into(),
                is_64bit: true,
                libc_version: Some("2.36".into()),
                install_free_bytes: 10 << 30,
                temp_free_bytes: 10 << 30,
                service_account: "uid=0(root)".into(),
                privileged: true,
                runtime_version: Some("21.0.2".into()),
                agent_pid: std::process::id(),
            },
            service_name: Some("molt-agent.service".into()),
            service_state: ServiceState::Running,
            file_holders: Vec::new(),
            sharing_install_dir: Vec::new(),
            net: BTreeMap::new(),
        }
    }

    /// Replace every field the TOML text gives.
    pub fn with_overrides_str(
        mut self,
        text: &str,
        origin: &Path,
    ) -> Result<HostFacts, SandboxError> {
        let f: FactsFile = toml::from_str(text).map_err(|e| SandboxError::Facts {
            path: origin.to_path_buf(),
            reason: e.to_string(),
        })?;
        macro_rules! set {
            ($to:expr; $($field:ident),*) => { $( if let Some(v) = f.$field { $to.$field = v; } )* };
        }
        set!(self.facts; os, arch, is_64bit, install_free_bytes, temp_free_bytes, service_account, privileged, agent_pid);
        set!(self; service_state, file_holders, sharing_install_dir);
        if let Some(v) = f.libc_version {
            self.facts.libc_version = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = f.runtime_version {
            self.facts.runtime_version = (!v.is_empty()).then_some(v);
        }
        if let Some(v) = f.service_name {
            self.service_name = (!v.is_empty()).then_some(v);
        }
        for (url, o) in f.net {
            if let Some(s) = &o.failed_stage
                && !matches!(s.as_str(), "dns" | "tcp" | "tls" | "http")
            {
                return Err(SandboxError::Facts {
                    path: origin.to_path_buf(),
                    reason: format!(
                        "net.\"{url}\".failed_stage `{s}` is not dns, tcp, tls or http"
                    ),
                });
            }
            self.net.insert(url, o);
        }
        Ok(self)
    }

    /// Replace every field `facts.toml` at `path` gives.
    pub fn with_overrides(self, path: &Path) -> Result<HostFacts, SandboxError> {
        let text = std::fs::read_to_string(path).map_err(|e| SandboxError::io("read", path, e))?;
        self.with_overrides_str(&text, path)
    }

    /// Sharing list without the agent's own service.
    pub(crate) fn others_sharing(&self) -> Vec<String> {
        self.sharing_install_dir
            .iter()
            .filter(|s| Some(s.as_str()) != self.service_name.as_deref())
            .cloned()
            .collect()
    }
}

impl pb::molt::check::facts::Host for HostState {
    fn get(&mut self) -> pb::molt::check::facts::HostFacts {
        let f = &self.facts.facts;
        pb::molt::check::facts::HostFacts {
            os: f.os.clone(),
            arch: f.arch.clone(),
            is_64bit: f.is_64bit,
            libc_version: f.libc_version.clone(),
            install_free_bytes: f.install_free_bytes,
            temp_free_bytes: f.temp_free_bytes,
            service_account: f.service_account.clone(),
            privileged: f.privileged,
            runtime_version: f.runtime_version.clone(),
            agent_pid: f.agent_pid,
        }
    }
}

/// Temp dir for `HostFacts::probe` callers that have no better idea.
pub fn default_temp_dir() -> PathBuf {
    std::env::temp_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_this_host() {
        let d = tempfile::tempdir().unwrap();
        let f = HostFacts::probe(d.path(), d.path()).unwrap();
        assert_eq!(f.facts.os, "linux");
        assert!(f.facts.install_free_bytes > 0);
        assert!(f.facts.service_account.starts_with("uid="));
        assert_eq!(f.facts.agent_pid, std::process::id());
    }

    #[test]
    fn overrides_replace_given_fields_only() {
        let f = HostFacts::healthy()
            .with_overrides_str(
                "install_free_bytes = 5\nlibc_version = \"2.12\"\n[net.\"https://x/\"]\nok = false\nfailed_stage = \"tls\"\n",
                Path::new("facts.toml"),
            )
            .unwrap();
        assert_eq!(f.facts.install_free_bytes, 5);
        assert_eq!(f.facts.libc_version.as_deref(), Some("2.12"));
        assert_eq!(f.facts.temp_free_bytes, 10 << 30);
        assert_eq!(f.net.len(), 1);
        let e = HostFacts::healthy()
            .with_overrides_str("disk = 1", Path::new("facts.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("facts.toml"), "{e}");
    }
}
