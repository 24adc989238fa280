//! The `services` interface: the agent's service and the processes around
//! the install dir (probed here, or given in a facts.toml through `HostFacts`).
use std::path::{Path, PathBuf};

use molt_layout::Home;
use serde::{Deserialize, Serialize};

use crate::bindings::precheck as pb;
use crate::engine::HostState;

/// State of the agent's service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    Running,
    Stopped,
    NotInstalled,
    Unknown,
}

/// A process holding a file under the install dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHolder {
    pub pid: u32,
    pub name: String,
    pub path: String,
}

/// Processes (other than none) with an open fd on a file under `dir`.
pub fn file_holders(dir: &Path) -> Vec<FileHolder> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let hit = fds.flatten().find_map(|fd| {
            let t = std::fs::read_link(fd.path()).ok()?;
            t.starts_with(&dir).then_some(t)
        });
        if let Some(t) = hit {
            let name = std::fs::read_to_string(p.path().join("comm"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            out.push(FileHolder {
                pid,
                name,
                path: t.display().to_string(),
            });
        }
    }
    out
}

/// Where the files an upgrade replaces live: `versions/` in a Molt install
/// (conf/, logs/ and work/ are never replaced, and the service's own lock
/// and log files there are not in the way), else the whole dir.
pub(crate) fn replaced_dir(install_dir: &Path) -> PathBuf {
    let v = Home::new(install_dir).versions_dir();
    if v.is_dir() {
        v
    } else {
        install_dir.to_path_buf()
    }
}

impl pb::molt::check::services::Host for HostState {
    fn status(&mut self) -> pb::molt::check::services::ServiceState {
        use pb::molt::check::services::ServiceState as W;
        match self.facts.service_state {
            ServiceState::Running => W::Running,
            ServiceState::Stopped => W::Stopped,
            ServiceState::NotInstalled => W::NotInstalled,
            ServiceState::Unknown => W::Unknown,
        }
    }
    fn file_holders(&mut self) -> Vec<pb::molt::check::services::ProcessInfo> {
        self.facts
            .file_holders
            .iter()
            .map(|h| pb::molt::check::services::ProcessInfo {
                pid: h.pid,
                name: h.name.clone(),
                path: h.path.clone(),
            })
            .collect()
    }
    fn sharing_install_dir(&mut self) -> Vec<String> {
        self.facts.others_sharing()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::HostFacts;

    #[test]
    fn holders_of_version_files_count_but_the_services_own_conf_files_do_not() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("versions/v1/lib")).unwrap();
        std::fs::create_dir_all(d.path().join("conf")).unwrap();
        let lib = d.path().join("versions/v1/lib/held.jar");
        let lock = d.path().join("conf/supervisor.lock");
        std::fs::write(&lib, b"x").unwrap();
        std::fs::write(&lock, b"x").unwrap();
        let _l = std::fs::File::open(&lock).unwrap();
        let tmp = d.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let f = HostFacts::probe(d.path(), &tmp).unwrap();
        assert!(f.file_holders.is_empty(), "{:?}", f.file_holders);
        let _j = std::fs::File::open(&lib).unwrap();
        let f = HostFacts::probe(d.path(), &tmp).unwrap();
        assert!(
            f.file_holders.iter().any(|h| h.path.ends_with("held.jar")),
            "{:?}",
            f.file_holders
        );
    }

    #[test]
    fn holders_found_in_proc() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("held.jar");
        std::fs::write(&p, b"x").unwrap();
        let _f = std::fs::File::open(&p).unwrap();
        let hs = file_holders(d.path());
        assert!(
            hs.iter()
                .any(|h| h.pid == std::process::id() && h.path.ends_with("held.jar")),
            "{hs:?}"
        );
    }
}
