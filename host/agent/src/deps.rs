//! The agent's narrow view of its sibling crates (molt-bundle, molt-sandbox,
//! molt-deploy): every call the agent makes into them goes through here, so the
//! stages read in the agent's own terms.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use molt_layout::{FileMeta, InstalledPackage};

use crate::client::Finding;

/// Why a version is not a package buildstamp `<version>`: molt-bundle's
/// parser error, shown by its reason alone (callers name the version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.reason)]
pub struct InvalidVersion(#[source] pub molt_bundle::BuildstampError);

/// Check that a version is a package buildstamp `<version>` (molt-bundle's parser).
pub fn validate_version(v: &str) -> Result<(), InvalidVersion> {
    v.parse::<molt_bundle::Version>()
        .map(|_| ())
        .map_err(InvalidVersion)
}

/// The release family of a version (`quebec` in `quebec-12-09-2020__patch1-...`).
pub fn release_family(v: &str) -> String {
    match v.parse::<molt_bundle::Version>() {
        Ok(p) => p.family,
        Err(_) => v.split('-').next().unwrap_or(v).to_ascii_lowercase(),
    }
}

/// The trusted root and accepted bundle sequences (`<home>/state`).
pub struct Trust {
    store: std::sync::Mutex<molt_bundle::TrustStore>,
}

/// Errors from verification, extraction, checks and hand-over, with the reason text
/// of the crate that produced them.
#[derive(Debug, thiserror::Error)]
pub enum DepError {
    #[error("{path}: signature verification failed: {source}")]
    Verify {
        path: PathBuf,
        #[source]
        source: Box<molt_bundle::BundleError>,
    },
    #[error("{path}: signature verification failed: trust store lock poisoned")]
    Poisoned { path: PathBuf },
    #[error("{path}: extract failed: {source}")]
    Extract {
        path: PathBuf,
        #[source]
        source: Box<molt_bundle::BundleError>,
    },
    #[error("trust root {path}: {source}")]
    Trust {
        path: PathBuf,
        #[source]
        source: Box<molt_bundle::BundleError>,
    },
    #[error("pre-upgrade checks could not run: {0}")]
    Sandbox(#[source] molt_sandbox::SandboxError),
    #[error("version selector failed: {0}")]
    Selector(#[source] molt_sandbox::SandboxError),
    #[error("hand-over to deploy failed: {0}")]
    Handover(#[source] molt_deploy::DeployError),
    #[error("hand-over task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Load the trust root (`config.trust_root`) into the trust state in `<home>/state`
/// (initialised from it the first time; a newer root is applied as a rotation).
pub fn load_trust(root_path: &Path, state_dir: &Path) -> Result<Trust, DepError> {
    let bad = |source| DepError::Trust {
        path: root_path.into(),
        source: Box::new(source),
    };
    let root = molt_bundle::SignedRoot::load(root_path).map_err(bad)?;
    let store = molt_bundle::TrustStore::open_or_init(state_dir, &root).map_err(bad)?;
    Ok(Trust {
        store: std::sync::Mutex::new(store),
    })
}

/// A package that passed verification.
#[derive(Debug, Clone)]
pub struct VerifiedPackage {
    pub kind: String,
    pub version: String,
    pub files: BTreeMap<String, FileMeta>,
    pub bundle: molt_bundle::VerifiedBundle,
}

impl VerifiedPackage {
    pub fn installed(&self, name: &str) -> InstalledPackage {
        InstalledPackage {
            kind: self.kind.clone(),
            name: name.to_string(),
            version: self.version.clone(),
            files: self.files.clone(),
        }
    }
}

/// Verify a package file's signatures, manifest and sequence against the trust root.
/// Every package the agent verifies is one the control plane named for the
/// version it assigned (or a command requested), so it is verified as
/// `Accept::Assigned`: a downgrade (the control plane rolled back) passes down
/// to the trusted root's rollback floor and no further (molt-bundle's policy).
pub fn verify_package(trust: &Trust, path: &Path) -> Result<VerifiedPackage, DepError> {
    let mut store = trust
        .store
        .lock()
        .map_err(|_| DepError::Poisoned { path: path.into() })?;
    let v = store
        .verify_bundle_as(
            path,
            &molt_bundle::VerifyOptions::default(),
            molt_bundle::Accept::Assigned,
        )
        .map_err(|source| DepError::Verify {
            path: path.into(),
            source: Box::new(source),
        })?;
    Ok(VerifiedPackage {
        kind: v.manifest.kind.as_str().to_string(),
        version: v.buildstamp.version.to_string(),
        files: FileMeta::of_manifest(&v.manifest),
        bundle: v,
    })
}

/// Verify the manifest of a package read by its tail (HTTP Range, or a file
/// of the package cache; its bytes from [`molt_bundle::RemoteLayout::manifest_bytes`])
/// as [`verify_package`] verifies a whole file (same
/// trust root, signatures, expiry and formats) but without the sequence rule:
/// a cached package is only a source of entries whose SHA-256 its signed
/// manifest gives (an older cached version must neither be refused as a replay
/// nor raise the highest accepted), and a package to install gets the rule
/// from [`accept_remote_package`] once the delta is used. Gives the trusted
/// index of its entries.
pub fn verify_remote_package(
    trust: &Trust,
    layout: &molt_bundle::RemoteLayout,
    manifest: &[u8],
) -> Result<molt_bundle::RemoteIndex, DepError> {
    let path = layout.source.clone();
    let store = trust
        .store
        .lock()
        .map_err(|_| DepError::Poisoned { path: path.clone() })?;
    let opts = molt_bundle::VerifyOptions::default();
    molt_bundle::remote::verify_remote_manifest(layout, manifest, store.root(), &opts).map_err(
        |source| DepError::Verify {
            path,
            source: Box::new(source),
        },
    )
}

/// Apply the `Accept::Assigned` sequence rule to a manifest verified by
/// [`verify_remote_package`] (recording a new highest), once the caller has
/// decided to install from it.
pub fn accept_remote_package(
    trust: &Trust,
    index: &molt_bundle::RemoteIndex,
) -> Result<(), DepError> {
    let path = index.source.clone();
    let mut store = trust
        .store
        .lock()
        .map_err(|_| DepError::Poisoned { path: path.clone() })?;
    store
        .accept_remote(index, molt_bundle::Accept::Assigned)
        .map_err(|source| DepError::Verify {
            path,
            source: Box::new(source),
        })
}

/// Extract a verified package into `dest` (streaming, every entry re-checked,
/// never outside `dest`); returns the relative paths written. No fsync per
/// file: `dest` is under work/upgrade_temp, whose side bundles are run once and
/// deleted, and whose packages the deploy digest-checks file by file again
/// while building the version directory, which it then flushes to disk.
pub fn extract_package(pkg: &VerifiedPackage, dest: &Path) -> Result<Vec<String>, DepError> {
    let r = molt_bundle::extract_scratch(
        &pkg.bundle,
        &pkg.bundle.path,
        dest,
        &molt_bundle::Limits::default(),
    )
    .map_err(|source| DepError::Extract {
        path: pkg.bundle.path.clone(),
        source: Box::new(source),
    })?;
    Ok(r.files)
}

/// One finding of a check run, as the agent reports it.
#[derive(Debug, Clone)]
pub struct CheckFinding {
    pub check: String,
    pub finding: Finding,
    pub blocking: bool,
}

/// Inputs of a precheck run.
pub struct PrecheckRun<'a> {
    pub bundle_dir: &'a Path,
    pub install_dir: &'a Path,
    pub scratch_parent: &'a Path,
    pub cache_dir: &'a Path,
    pub facts_override: Option<&'a Path>,
    pub net_allow: Vec<String>,
    /// The operator's private CA bundle, trusted by `net.probe` too.
    pub ca_bundle: Option<&'a Path>,
}

fn sandbox(cache_dir: &Path) -> Result<molt_sandbox::Sandbox, molt_sandbox::SandboxError> {
    molt_sandbox::Sandbox::new(molt_sandbox::SandboxConfig {
        cache_dir: cache_dir.to_path_buf(),
        policy: molt_sandbox::Policy::default(),
    })
}

/// Run the checks of an extracted precheck bundle in the sandbox.
pub fn run_precheck(
    run: &PrecheckRun<'_>,
    pkg: &VerifiedPackage,
) -> Result<Vec<CheckFinding>, DepError> {
    let err = DepError::Sandbox;
    let sb = sandbox(run.cache_dir).map_err(err)?;
    let facts = match run.facts_override {
        Some(f) => molt_sandbox::FactsSource::Given(
            molt_sandbox::HostFacts::probe(run.install_dir, run.scratch_parent)
                .and_then(|h| h.with_overrides(f))
                .map_err(err)?,
        ),
        None => molt_sandbox::FactsSource::Probe,
    };
    let ctx = molt_sandbox::CheckContext {
        install_dir: run.install_dir.to_path_buf(),
        scratch_parent: run.scratch_parent.to_path_buf(),
        facts,
        net_allow: run.net_allow.clone(),
        ca_bundle: run.ca_bundle.map(Path::to_path_buf),
        params: Default::default(),
    };
    let reports = sb
        .run_precheck(run.bundle_dir, &pkg.bundle.manifest, &ctx)
        .map_err(err)?;
    let mut out = Vec::new();
    for r in reports {
        tracing::info!(check = %r.check, version = %r.version, findings = r.findings.len(),
            elapsed_ms = r.elapsed.as_millis() as u64, "Pre-upgrade check ran");
        for f in r.findings {
            out.push(CheckFinding {
                check: r.check.clone(),
                blocking: f.severity == molt_sandbox::Severity::Blocking,
                finding: Finding {
                    code: f.code,
                    severity: f.severity.as_str().to_string(),
                    description: f.message,
                    remediation: f.remediation,
                },
            });
        }
    }
    Ok(out)
}

/// Run the version selector component of an extracted selector bundle.
pub fn select_version(
    bundle_dir: &Path,
    cache_dir: &Path,
    pkg: &VerifiedPackage,
    input: &molt_sandbox::SelectorInput,
) -> Result<molt_sandbox::Plan, DepError> {
    let sb = sandbox(cache_dir).map_err(DepError::Selector)?;
    sb.select_version_in_bundle(bundle_dir, &pkg.bundle.manifest, input)
        .map_err(DepError::Selector)
}

/// Hand the prepared upgrade to the deploy runner and wait for its start signal.
pub fn hand_over(
    home: &molt_layout::Home,
    upgrade_dir: &Path,
    wait_secs: u64,
    service: molt_deploy::service::ServiceKind,
) -> Result<u32, DepError> {
    let opts = molt_deploy::handover::HandoverOptions {
        service,
        poll: std::time::Duration::from_millis(200),
        limit: std::time::Duration::from_secs(wait_secs),
        ..Default::default()
    };
    molt_deploy::handover::hand_over(home, upgrade_dir, &opts)
        .map(|o| o.runner_pid)
        .map_err(DepError::Handover)
}
