//! `molt import <package-or-dir>...`: offline upgrades (seeds 4.1, 4.8,
//! PRB1484957). Each package is verified against the install's trusted root
//! (signatures, expiry, every entry's digest, and the rollback policy the agent
//! applies to an assigned package: see [`IMPORT_ACCEPT`]), then placed in
//! `package/incoming/` under its package name with a temp file and one rename.
//! The agent's Download Upgrade Packages stage finds it there with the assigned
//! size and SHA-256 and uses it as already downloaded, so an agent that cannot
//! reach the download site upgrades from it.
use std::path::{Path, PathBuf};

use molt_bundle::{
    Accept, BundleError, SequenceDecision, SignedRoot, TrustStore, VerifiedBundle, VerifyOptions,
    check_sequence,
};
use molt_layout::{FileMeta, Home, InstalledPackage};
use serde::Serialize;

use crate::{OpsError, io_err};

/// One placed package.
#[derive(Debug, Clone, Serialize)]
pub struct Imported {
    pub source: PathBuf,
    pub dest: PathBuf,
    pub name: String,
    pub kind: String,
    pub version: String,
    pub sha256: String,
    pub size: u64,
    /// Already in `incoming/` with the same content: nothing was written.
    pub already_present: bool,
    pub signers: Vec<String>,
}

/// The trusted root this install verifies with: `trust_root` from config.toml,
/// else `<home>/state/root.json`.
pub fn trusted_root_path(home: &Home) -> PathBuf {
    match crate::cp::ConfigView::load(home.root()) {
        Ok(c) => c.trust_root(home.root()),
        Err(_) => home.trusted_root_file(),
    }
}

pub fn load_root(path: &Path) -> Result<SignedRoot, OpsError> {
    SignedRoot::load(path).map_err(|e| OpsError::Invalid {
        path: path.to_path_buf(),
        reason: format!("cannot use the trusted root: {e}"),
    })
}

/// How `molt import` judges sequences: [`Accept::Assigned`], the agent's rule.
/// An import only places files in `package/incoming/`; nothing there is
/// installed unless the control plane assigns that version, and the agent then
/// verifies it again itself, as assigned. So an import accepts exactly what the
/// agent would accept if assigned: an offline host whose control plane rolled
/// back can be given the older version's packages (down to the root's floor),
/// while the strict rule would refuse the very packages the agent needs. Below
/// the floor, or lower than the highest with no floor for the name, stays
/// refused with the agent's message, and an import records no sequence.
pub const IMPORT_ACCEPT: Accept = Accept::Assigned;

/// Verify deeply (every entry inflated and hashed) against `root`, then apply
/// the rollback policy as `accept` ([`check_rollback`]). Records nothing.
pub fn verify_readonly(
    path: &Path,
    root: &SignedRoot,
    state_dir: &Path,
    accept: Accept,
) -> Result<VerifiedBundle, OpsError> {
    let v = verify_deep(path, root)?;
    check_rollback(&v, root, state_dir, accept)?;
    Ok(v)
}

fn refused(path: &Path, e: BundleError) -> OpsError {
    OpsError::Package {
        path: path.to_path_buf(),
        reason: format!("refused: {e}"),
    }
}

/// Signatures, expiry, manifest and every entry's digest against `root`; no
/// sequence rule (a caller that must first know what the package is).
pub fn verify_deep(path: &Path, root: &SignedRoot) -> Result<VerifiedBundle, OpsError> {
    molt_bundle::verify_bundle(
        path,
        root,
        &VerifyOptions {
            deep: true,
            ..VerifyOptions::default()
        },
    )
    .map_err(|e| refused(path, e))
}

/// The rollback policy ([`check_sequence`], the agent's) for `v` as `accept`:
/// `root`'s floor and the highest sequence `state_dir` accepted. A host with
/// no trust state yet has no history, but the floor still applies. The
/// refusal is the agent's `BundleError::Replay` message. Records nothing.
pub fn check_rollback(
    v: &VerifiedBundle,
    root: &SignedRoot,
    state_dir: &Path,
    accept: Accept,
) -> Result<SequenceDecision, OpsError> {
    let m = &v.manifest;
    let highest = TrustStore::open(state_dir)
        .ok()
        .and_then(|s| s.highest_sequence(&m.name));
    check_sequence(m.sequence, highest, root.signed.floor(&m.name), accept).map_err(|rule| {
        refused(
            &v.path,
            BundleError::Replay {
                bundle: v.path.clone(),
                name: m.name.clone(),
                sequence: m.sequence,
                root_version: root.signed.version,
                rule,
            },
        )
    })
}

/// The installed-meta form of a verified package.
pub fn installed_package(v: &VerifiedBundle) -> InstalledPackage {
    InstalledPackage {
        kind: v.manifest.kind.as_str().to_string(),
        name: v.buildstamp.to_string(),
        version: v.buildstamp.version.to_string(),
        files: FileMeta::of_manifest(&v.manifest),
    }
}

/// Extract verified packages under `work` (each entry re-checked while
/// written), lay them out as a fresh install of `home` (the real
/// `fresh_install`), and remove `work`. Returns the installed version.
/// `molt install`, `molt repair` and the demo all install this way.
pub fn install_verified(
    home: &Home,
    work: &Path,
    verified: &[VerifiedBundle],
) -> Result<String, OpsError> {
    let mut pkgs = Vec::new();
    for v in verified {
        let dest = work.join(v.manifest.kind.as_str());
        molt_bundle::extract(v, &v.path, &dest, &molt_bundle::Limits::default()).map_err(|e| {
            OpsError::Package {
                path: v.path.clone(),
                reason: e.to_string(),
            }
        })?;
        pkgs.push((installed_package(v), dest));
    }
    let version = molt_deploy::install::fresh_install(home, &pkgs)?;
    molt_deploy::fsutil::remove_tree(work)?;
    Ok(version)
}

/// Refuse a package built for another OS or architecture than this host.
pub fn check_platform(v: &VerifiedBundle) -> Result<(), OpsError> {
    let (os, arch) = (crate::cp::host_os(), crate::cp::host_arch());
    let t = &v.manifest.target;
    let ok = |want: &str, have: &str| want == "universal" || want == have;
    if ok(&t.os, os) && ok(&t.arch, &arch) {
        Ok(())
    } else {
        Err(OpsError::Package {
            path: v.path.clone(),
            reason: format!(
                "built for {}/{}, but this host is {os}/{arch}",
                t.os, t.arch
            ),
        })
    }
}

/// Expand directories into the `*.zip` files they hold (sorted).
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, OpsError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut zips: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(io_err(p))?
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "zip"))
                .collect();
            if zips.is_empty() {
                return Err(OpsError::Package {
                    path: p.clone(),
                    reason: "directory holds no *.zip package".into(),
                });
            }
            zips.sort();
            out.extend(zips);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(OpsError::Package {
                path: p.clone(),
                reason: "no such file or directory".into(),
            });
        }
    }
    Ok(out)
}

/// Verify every package first; place them only when all are good, so a bad
/// file in a set changes nothing.
pub fn import(home: &Home, paths: &[PathBuf]) -> Result<Vec<Imported>, OpsError> {
    let root_path = trusted_root_path(home);
    let root = load_root(&root_path)?;
    let files = expand(paths)?;
    let mut verified = Vec::new();
    for f in &files {
        let v = verify_readonly(f, &root, &home.state_dir(), IMPORT_ACCEPT)?;
        check_platform(&v)?;
        verified.push(v);
    }
    let incoming = home.incoming_dir();
    std::fs::create_dir_all(&incoming).map_err(io_err(&incoming))?;
    let mut out = Vec::new();
    for v in verified {
        out.push(place(home, &v)?);
    }
    Ok(out)
}

fn place(home: &Home, v: &VerifiedBundle) -> Result<Imported, OpsError> {
    let name = v.buildstamp.to_string();
    let incoming = home.incoming_dir();
    let dest = incoming.join(&name);
    let (sha, size) = sha256_len(&v.path)?;
    let mut already_present = false;
    if dest.is_file() {
        let (dsha, dsize) = sha256_len(&dest)?;
        already_present = dsha == sha && dsize == size;
    }
    if !already_present {
        let tmp = incoming.join(format!(".{name}.import-{}", std::process::id()));
        std::fs::copy(&v.path, &tmp).map_err(io_err(&tmp))?;
        let copied = sha256_len(&tmp).and_then(|(s, n)| {
            if s == sha && n == size {
                Ok(())
            } else {
                Err(OpsError::Package {
                    path: tmp.clone(),
                    reason: "the copy does not match the verified file (changed while importing?)"
                        .into(),
                })
            }
        });
        let synced = copied.and_then(|_| {
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&tmp))
        });
        if let Err(e) = synced.and_then(|_| std::fs::rename(&tmp, &dest).map_err(io_err(&dest))) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let _ = molt_deploy::fsutil::sync_dir(&incoming);
    }
    tracing::info!(package = %name, dest = %dest.display(), already_present, "Package imported for an offline upgrade");
    Ok(Imported {
        source: v.path.clone(),
        dest,
        name,
        kind: v.manifest.kind.as_str().to_string(),
        version: v.buildstamp.version.to_string(),
        sha256: sha,
        size,
        already_present,
        signers: v.signers.clone(),
    })
}

fn sha256_len(p: &Path) -> Result<(String, u64), OpsError> {
    let sha = molt_deploy::fsutil::sha256_file(p)?;
    let len = std::fs::metadata(p).map_err(io_err(p))?.len();
    Ok((sha, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    #[test]
    fn a_verified_package_is_placed_in_incoming_under_its_name() {
        let k = Kit::new();
        let h = k.install(&k.dir.path().join("home"), V1);
        let p = k.core(V2, 2);
        let r = import(&h, std::slice::from_ref(&p)).unwrap();
        assert_eq!(r[0].name, format!("molt-core.{V2}.universal.universal.zip"));
        assert!(!r[0].already_present);
        assert_eq!(
            std::fs::read(&r[0].dest).unwrap(),
            std::fs::read(&p).unwrap()
        );
        // No temp files are left beside it.
        let names: Vec<String> = std::fs::read_dir(h.incoming_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [r[0].name.clone()]);
        assert!(import(&h, &[p]).unwrap()[0].already_present);
    }

    #[test]
    fn a_directory_is_imported_whole_and_a_bad_file_places_nothing() {
        let k = Kit::new();
        let h = k.install(&k.dir.path().join("home"), V1);
        let set = k.dir.path().join("set");
        std::fs::create_dir_all(&set).unwrap();
        std::fs::copy(k.core(V2, 2), set.join("a.zip")).unwrap();
        let mut bytes = std::fs::read(k.runtime(V2, 2)).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0xff; // corrupt the payload
        std::fs::write(set.join("b.zip"), &bytes).unwrap();
        let e = import(&h, std::slice::from_ref(&set))
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.zip") && e.contains("refused"), "{e}");
        assert!(
            std::fs::read_dir(h.incoming_dir())
                .map(|d| d.count())
                .unwrap_or(0)
                == 0
        );
        std::fs::remove_file(set.join("b.zip")).unwrap();
        assert_eq!(import(&h, &[set]).unwrap().len(), 1);
    }

    #[test]
    fn a_package_signed_by_an_unknown_key_is_refused() {
        let k = Kit::new();
        let h = k.install(&k.dir.path().join("home"), V1);
        let other = Kit::new();
        let e = import(&h, &[other.core(V2, 2)]).unwrap_err().to_string();
        assert!(
            e.contains("signatures below the threshold") && e.contains("unknown key"),
            "{e}"
        );
    }

    #[test]
    fn an_older_sequence_than_accepted_is_refused_as_a_replay() {
        let k = Kit::new();
        let h = k.install(&k.dir.path().join("home"), V1);
        let newer = k.core(V2, 5);
        TrustStore::open(&h.state_dir())
            .unwrap()
            .verify_bundle(&newer, &VerifyOptions::default())
            .unwrap();
        let e = import(&h, &[k.core(V2, 4)]).unwrap_err().to_string();
        // Even as the agent's rule: the root sets no floor, so no downgrade.
        assert!(
            e.contains("replayed or older bundle refused: `molt-core` sequence 4 is lower than 5 already accepted, and trusted root version 1 sets no rollback_floor"),
            "{e}"
        );
    }

    /// Root version 2 of the kit's root with `floor` for molt-core, trusted by `h`.
    fn trust_floor(k: &Kit, h: &Home, floor: u64) {
        let mut r = k.root.clone();
        r.signed.version = 2;
        molt_bundle::editor::set_floor(&mut r.signed, "molt-core", floor).unwrap();
        molt_bundle::editor::sign_root(&mut r, &[&k.key]).unwrap();
        TrustStore::open(&h.state_dir())
            .unwrap()
            .update_root(r)
            .unwrap();
    }

    #[test]
    fn under_a_floor_an_older_package_is_imported_as_the_agent_would_accept_it() {
        let k = Kit::new();
        let h = k.install(&k.dir.path().join("home"), V1);
        TrustStore::open(&h.state_dir())
            .unwrap()
            .verify_bundle(&k.core(V2, 5), &VerifyOptions::default())
            .unwrap();
        trust_floor(&k, &h, 3);
        // At the floor, below the highest: the control plane may assign it, so
        // it may be imported for an offline host; nothing is recorded.
        let r = import(&h, &[k.core(V1, 3)]).unwrap();
        assert!(r[0].dest.is_file());
        let st = TrustStore::open(&h.state_dir()).unwrap();
        assert_eq!(st.highest_sequence("molt-core"), Some(5));
    }

    #[test]
    fn below_the_floor_an_import_is_refused_with_the_agents_message_and_places_nothing() {
        let k = Kit::new();
        let h = k.install(&k.dir.path().join("home"), V1);
        trust_floor(&k, &h, 3);
        let sequences = h.state_dir().join(molt_bundle::store::SEQUENCES_FILE);
        let before = std::fs::read(&sequences).ok();
        let e = import(&h, &[k.core(V2, 2)]).unwrap_err().to_string();
        assert!(
            e.contains("replayed or older bundle refused: `molt-core` sequence 2 is below the rollback floor 3 that trusted root version 2 sets for `molt-core`; to allow it, sign a root with rollback_floor `molt-core` <= 2"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_dir(h.incoming_dir())
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );
        assert_eq!(std::fs::read(&sequences).ok(), before);
    }
}
