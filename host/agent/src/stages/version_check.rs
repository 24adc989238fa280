//! Version check: what the control plane assigns, what is installed, what is
//! missing, and (when the control plane names one) the version selector's
//! decision of the target.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use molt_layout::InstalledPackage;

use super::control::AssignedQuery;
use super::download::SideBundleError;
use super::{ControlPlane, Pipeline, host_arch, host_os, random_dir_name};
use crate::client::{Assigned, ClientError};
use crate::deps;
use crate::service::Agent;

/// Errors that end an upgrade check before any stage.
#[derive(Debug, thiserror::Error)]
pub enum VersionCheckError {
    #[error("Failed to query control plane for agent buildstamp: {0}")]
    Query(#[source] ClientError),
    #[error("Not a valid package buildstamp: `{version}`: {reason}")]
    Buildstamp { version: String, reason: String },
    #[error("no installed version: {0}")]
    Layout(#[source] molt_layout::LayoutError),
    #[error("no installed version: {} does not exist", link.display())]
    NoCurrent { link: PathBuf },
}

/// Errors of the version selector (the check then ends without upgrading).
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error(transparent)]
    Fetch(#[from] SideBundleError),
    #[error("facts_override {}: {source}", path.display())]
    Facts {
        path: PathBuf,
        #[source]
        source: molt_sandbox::SandboxError,
    },
    #[error("selector task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Run(#[from] deps::DepError),
}

/// The seeds' "Current packages:" block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackagePlan {
    pub installed: Vec<String>,
    pub assigned: Vec<String>,
    pub missing: Vec<String>,
    pub downloaded: Vec<String>,
}

impl PackagePlan {
    pub fn render(&self) -> String {
        format!(
            "Current packages:\n  Installed: [{}]\n  Assigned: [{}]\n  Missing: [{}]\n  Downloaded: [{}]",
            self.installed.join(", "),
            self.assigned.join(", "),
            self.missing.join(", "),
            self.downloaded.join(", ")
        )
    }
}

/// Compare installed package names with assigned ones.
pub fn plan_packages(
    installed: &[InstalledPackage],
    assigned: &Assigned,
    incoming: &Path,
) -> PackagePlan {
    let inst: BTreeSet<&str> = installed.iter().map(|p| p.name.as_str()).collect();
    let assigned_names: Vec<String> = assigned.packages.iter().map(|p| p.name.clone()).collect();
    let missing: Vec<String> = assigned
        .packages
        .iter()
        .filter(|p| !inst.contains(p.name.as_str()))
        .map(|p| p.name.clone())
        .collect();
    let downloaded = assigned
        .packages
        .iter()
        .filter(|p| missing.contains(&p.name))
        .filter(|p| {
            std::fs::metadata(incoming.join(&p.name))
                .map(|m| m.len() == p.size)
                .unwrap_or(false)
        })
        .map(|p| p.name.clone())
        .collect();
    PackagePlan {
        installed: installed.iter().map(|p| p.name.clone()).collect(),
        assigned: assigned_names,
        missing,
        downloaded,
    }
}

/// What the version check found.
pub struct Checked {
    /// The installed current version.
    pub current: String,
    pub installed: Vec<InstalledPackage>,
    pub assigned: Assigned,
    pub plan: PackagePlan,
}

/// What the check decided: the packages to fetch and the version to go to.
pub struct Decision {
    pub plan: PackagePlan,
    pub target: String,
    /// The target is of another release family than the current version.
    pub family_change: bool,
}

impl Agent {
    /// The installed packages and what the control plane assigns to them now.
    /// With `requested`, the packages of that version (a command's argument).
    pub(crate) async fn query_assigned(
        &self,
        requested: Option<&str>,
    ) -> Result<(Vec<InstalledPackage>, Assigned), VersionCheckError> {
        self.pipeline().query_assigned(requested).await
    }
}

impl<P: ControlPlane> Pipeline<'_, P> {
    /// The installed packages and what the control plane assigns to them now.
    /// With `requested`, the packages of that version (a command's argument).
    pub async fn query_assigned(
        &self,
        requested: Option<&str>,
    ) -> Result<(Vec<InstalledPackage>, Assigned), VersionCheckError> {
        let installed = self.home.installed().map_err(VersionCheckError::Layout)?;
        let runtime = installed
            .iter()
            .find(|p| p.kind == "runtime")
            .map(|p| p.version.clone())
            .unwrap_or_default();
        let arch = host_arch();
        let assigned = self
            .plane
            .assigned(AssignedQuery {
                os: host_os(),
                arch: &arch,
                runtime: &runtime,
                pinned: self.cfg.pinned_version.as_deref(),
                version: requested,
                fresh: self.on_command.load(std::sync::atomic::Ordering::SeqCst),
            })
            .await
            .map_err(VersionCheckError::Query)?;
        Ok((installed, assigned))
    }

    /// Ask the control plane what is assigned and compare with what is installed.
    pub async fn version_check(
        &self,
        requested: Option<&str>,
    ) -> Result<Checked, VersionCheckError> {
        tracing::info!("Checking to see if agent needs to upgrade");
        let current = self
            .home
            .current_version()
            .map_err(VersionCheckError::Layout)?
            .ok_or_else(|| VersionCheckError::NoCurrent {
                link: self.home.current_link(),
            })?;
        let (installed, assigned) = self.query_assigned(requested).await?;
        if let Some(v) = requested
            && assigned.version != v
        {
            return Err(VersionCheckError::Buildstamp {
                version: assigned.version.clone(),
                reason: format!("the control plane answered for another version than {v}"),
            });
        }
        // A command's version is not the assignment: autoUpgrade coalescing
        // compares against what the fleet assigns.
        if requested.is_none()
            && let Ok(mut l) = self.last_assigned.lock()
        {
            *l = Some(assigned.version.clone());
        }
        deps::validate_version(&assigned.version).map_err(|e| VersionCheckError::Buildstamp {
            version: assigned.version.clone(),
            reason: e.to_string(),
        })?;
        for p in assigned
            .packages
            .iter()
            .chain(assigned.precheck.iter())
            .chain(assigned.selector.iter())
        {
            if p.name.contains('/') || p.name.starts_with('.') || !p.name.ends_with(".zip") {
                return Err(VersionCheckError::Buildstamp {
                    version: p.name.clone(),
                    reason: "not a package file name".into(),
                });
            }
        }
        let plan = plan_packages(&installed, &assigned, &self.home.incoming_dir());
        Ok(Checked {
            current,
            installed,
            assigned,
            plan,
        })
    }

    /// The target and the packages to fetch: the selector's decision when the
    /// control plane names a selector, else the assignment.
    pub async fn decide(&self, c: &Checked) -> Result<Decision, SelectorError> {
        let Some(sel) = self
            .run_selector(&c.installed, &c.assigned, &c.plan)
            .await?
        else {
            return Ok(Decision {
                plan: c.plan.clone(),
                target: c.assigned.version.clone(),
                family_change: deps::release_family(&c.current)
                    != deps::release_family(&c.assigned.version),
            });
        };
        for n in &sel.notes {
            tracing::info!(selector = %n, "Version selector note");
        }
        // Why the runtime is (not) upgraded: a skip (32-bit host, old glibc)
        // leaves the runtime out of Assigned/Missing, and without this line
        // nothing said why.
        if sel.runtime == molt_sandbox::RuntimeDecision::Skip {
            tracing::warn!("Version selector: {}", sel.runtime_reason);
        } else {
            tracing::info!("Version selector: {}", sel.runtime_reason);
        }
        let known: BTreeSet<&str> = c
            .assigned
            .packages
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        let missing: Vec<String> = sel
            .missing
            .iter()
            .filter(|m| known.contains(m.as_str()))
            .cloned()
            .collect();
        let plan = PackagePlan {
            installed: sel.installed.clone(),
            assigned: sel.assigned.clone(),
            downloaded: sel.downloaded.clone(),
            missing: if sel.action == molt_sandbox::Action::None {
                Vec::new()
            } else {
                missing
            },
        };
        Ok(Decision {
            plan,
            target: sel.target_version.clone(),
            family_change: sel.crosses_family,
        })
    }

    /// Run the assigned selector component (if the control plane names one).
    async fn run_selector(
        &self,
        installed: &[InstalledPackage],
        assigned: &Assigned,
        plan: &PackagePlan,
    ) -> Result<Option<molt_sandbox::Plan>, SelectorError> {
        let Some(sel) = &assigned.selector else {
            return Ok(None);
        };
        let dir = self
            .home
            .upgrade_temp_dir()
            .join(format!("{}-selector", &random_dir_name()[..13]));
        let res = async {
            let (bundle_dir, v) = self.fetch_side_bundle(sel, &dir).await?;
            let cache = self.home.work_dir().join("wasm-cache");
            // The host's platform, probed (glibc's own answer: with None every
            // runtime was skipped as "glibc version unknown"); a configured
            // `facts_override` simulates it, as it does for the checks.
            let (mut os, mut arch, mut is_64bit, mut libc_version) = (
                host_os().to_string(),
                host_arch(),
                cfg!(target_pointer_width = "64"),
                molt_sandbox::facts::glibc_version(),
            );
            if let Some(f) = &self.cfg.facts_override {
                let sim = molt_sandbox::HostFacts::probe(self.home.root(), &self.temp_parent())
                    .and_then(|h| h.with_overrides(f))
                    .map_err(|source| SelectorError::Facts {
                        path: f.clone(),
                        source,
                    })?;
                let f = sim.facts;
                (os, arch, is_64bit, libc_version) = (f.os, f.arch, f.is_64bit, f.libc_version);
            }
            let input = molt_sandbox::SelectorInput {
                installed: installed.iter().map(|p| p.name.clone()).collect(),
                assigned_version: assigned.version.clone(),
                assigned: assigned.packages.iter().map(|p| p.name.clone()).collect(),
                downloaded: plan.downloaded.clone(),
                pinned: self.cfg.pinned_version.clone(),
                os,
                arch,
                is_64bit,
                libc_version,
            };
            let plan = tokio::task::spawn_blocking(move || {
                deps::select_version(&bundle_dir, &cache, &v, &input)
            })
            .await
            .map_err(SelectorError::Task)??;
            Ok(plan)
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        res.map(Some)
    }
}
