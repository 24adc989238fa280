//! The host's trust state: the trusted root and the highest accepted sequence
//! per bundle name, in a state directory, written atomically. This is what
//! refuses a replayed older bundle or an older root, and the one place that
//! decides when an older bundle is a legitimate downgrade ([`check_sequence`]).
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::error::{BundleError, ReplayRule};
use crate::schema::SignedRoot;
use crate::verify::{VerifiedBundle, VerifyOptions, verify_bundle};

pub const ROOT_FILE: &str = "root.json";
pub const SEQUENCES_FILE: &str = "sequences.json";

/// Why a bundle is being verified: decides whether a sequence lower than the
/// highest accepted for its name may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accept {
    /// Offline verification, anything not assigned: never lower than the
    /// highest accepted (a replay).
    #[default]
    Newer,
    /// A package of the version the control plane assigned (or a command
    /// named; also `molt import`, whose files the agent re-verifies as
    /// assigned, and `molt repair` of the installed version): lower than the highest is a downgrade, accepted down to the
    /// trusted root's `rollback_floor` for the name, never below it, and never
    /// when the root sets no floor for the name.
    Assigned,
}

/// What [`check_sequence`] decided for an accepted bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceDecision {
    /// At or above the highest accepted (or the first of its name): recorded.
    Current,
    /// An assigned downgrade at or above the floor. The highest accepted stays
    /// as it was, so the next upgrade needs a sequence at least that high and
    /// an unassigned replay of anything below it is still refused.
    Downgrade,
}

/// The rollback policy, in one place. `highest` is the highest sequence this
/// host accepted for the name, `floor` the trusted root's floor for it.
/// 1. Below the floor: refused, whoever asks (a signed minimum).
/// 2. At or above the highest: accepted (today's rule).
/// 3. Lower than the highest: accepted only for [`Accept::Assigned`] and only
///    when the root sets a floor for the name (at or below the sequence, by 1).
///    No floor means no downgrade: the safe default of roots that predate it.
pub fn check_sequence(
    sequence: u64,
    highest: Option<u64>,
    floor: Option<u64>,
    accept: Accept,
) -> Result<SequenceDecision, ReplayRule> {
    if let Some(f) = floor
        && sequence < f
    {
        return Err(ReplayRule::BelowFloor { floor: f, highest });
    }
    match highest {
        Some(h) if sequence < h => match (accept, floor) {
            (Accept::Newer, _) => Err(ReplayRule::NotAssigned { highest: h, floor }),
            (Accept::Assigned, None) => Err(ReplayRule::NoFloor { highest: h }),
            (Accept::Assigned, Some(_)) => Ok(SequenceDecision::Downgrade),
        },
        _ => Ok(SequenceDecision::Current),
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Sequences {
    format: u32,
    sequences: BTreeMap<String, u64>,
}

/// Trusted root + rollback state, backed by a directory.
#[derive(Debug)]
pub struct TrustStore {
    dir: PathBuf,
    root: SignedRoot,
    sequences: BTreeMap<String, u64>,
}

fn state_err(dir: &Path, reason: impl Into<String>) -> BundleError {
    BundleError::State {
        dir: dir.to_path_buf(),
        reason: reason.into(),
    }
}

/// Write `bytes` to `dir/name` via a temporary file, fsync and rename.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let target = dir.join(name);
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        File::open(dir)?.sync_all()
    })();
    res.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        BundleError::io(&target, e)
    })
}

impl TrustStore {
    /// Open an initialised state directory.
    pub fn open(dir: &Path) -> Result<TrustStore, BundleError> {
        let rp = dir.join(ROOT_FILE);
        if !rp.exists() {
            return Err(state_err(
                dir,
                "no trusted root.json (initialise it with a root file first)",
            ));
        }
        let root = SignedRoot::load(&rp)?;
        let sp = dir.join(SEQUENCES_FILE);
        let sequences = if sp.exists() {
            let b = std::fs::read(&sp).map_err(|e| BundleError::io(&sp, e))?;
            let s: Sequences = serde_json::from_slice(&b)
                .map_err(|e| state_err(dir, format!("{SEQUENCES_FILE} is not valid: {e}")))?;
            s.sequences
        } else {
            BTreeMap::new()
        };
        Ok(TrustStore {
            dir: dir.to_path_buf(),
            root,
            sequences,
        })
    }

    /// Initialise `dir` with `root` if it holds no root yet; otherwise open it
    /// and, if `root` is newer, apply it as a rotation (never go back).
    pub fn open_or_init(dir: &Path, root: &SignedRoot) -> Result<TrustStore, BundleError> {
        std::fs::create_dir_all(dir).map_err(|e| BundleError::io(dir, e))?;
        if dir.join(ROOT_FILE).exists() {
            let mut s = TrustStore::open(dir)?;
            if root.signed.version > s.root.signed.version {
                s.update_root(root.clone())?;
            }
            return Ok(s);
        }
        write_atomic(dir, ROOT_FILE, &root.to_json_pretty()?)?;
        tracing::info!(dir = %dir.display(), version = root.signed.version, "Trusted root initialised");
        Ok(TrustStore {
            dir: dir.to_path_buf(),
            root: root.clone(),
            sequences: BTreeMap::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn root(&self) -> &SignedRoot {
        &self.root
    }

    pub fn highest_sequence(&self, name: &str) -> Option<u64> {
        self.sequences.get(name).copied()
    }

    /// Rotate to `new` (TUF rules; see `SignedRoot::check_rotation`).
    /// A lowered or removed rollback floor is allowed (it is how a downgrade
    /// below the old floor is authorised) but logged as a warning.
    pub fn update_root(&mut self, new: SignedRoot) -> Result<(), BundleError> {
        self.root.check_rotation(&new, Utc::now())?;
        write_atomic(&self.dir, ROOT_FILE, &new.to_json_pretty()?)?;
        tracing::info!(
            from = self.root.signed.version,
            to = new.signed.version,
            "Trusted root rotated"
        );
        for c in self.root.signed.floor_changes(&new.signed) {
            if c.lowers() {
                tracing::warn!(root_version = new.signed.version, "Trusted root: {c}");
            } else {
                tracing::info!(root_version = new.signed.version, "Trusted root: {c}");
            }
        }
        self.root = new;
        Ok(())
    }

    /// Verify a bundle against the trusted root, refuse a sequence lower than
    /// the highest accepted for its name (or below the root's floor), and
    /// record the new highest. The strict rule: [`Accept::Newer`].
    pub fn verify_bundle(
        &mut self,
        path: &Path,
        opts: &VerifyOptions,
    ) -> Result<VerifiedBundle, BundleError> {
        self.verify_bundle_as(path, opts, Accept::Newer)
    }

    /// [`TrustStore::verify_bundle`] for a caller that says why it verifies:
    /// with [`Accept::Assigned`] a downgrade within the root's rollback floor
    /// passes (see [`check_sequence`]) and leaves the recorded highest as is.
    pub fn verify_bundle_as(
        &mut self,
        path: &Path,
        opts: &VerifyOptions,
        accept: Accept,
    ) -> Result<VerifiedBundle, BundleError> {
        let v = verify_bundle(path, &self.root, opts)?;
        self.accept_sequence(path, &v.manifest.name, v.manifest.sequence, accept)?;
        Ok(v)
    }

    /// The ranged counterpart of [`TrustStore::verify_bundle_as`]: verify a
    /// format-2 manifest fetched with HTTP Range ([`crate::remote`]) and apply
    /// the same sequence rule, recording the new highest.
    pub fn verify_remote_as(
        &mut self,
        layout: &crate::remote::RemoteLayout,
        manifest_span: &[u8],
        opts: &VerifyOptions,
        accept: Accept,
    ) -> Result<crate::remote::RemoteIndex, BundleError> {
        let v = crate::remote::verify_remote(layout, manifest_span, &self.root, opts)?;
        self.accept_remote(&v, accept)?;
        Ok(v)
    }

    /// The sequence rule of [`TrustStore::verify_remote_as`] alone, for an
    /// index [`crate::remote::verify_remote`] gave: a ranged reader can decide
    /// whether it uses the index at all before a new highest is written (that
    /// write is synced to disk, and a delta given up must not cost it).
    pub fn accept_remote(
        &mut self,
        index: &crate::remote::RemoteIndex,
        accept: Accept,
    ) -> Result<(), BundleError> {
        self.accept_sequence(
            &index.source,
            &index.manifest.name,
            index.manifest.sequence,
            accept,
        )
    }

    /// Refuse or accept `sequence` for `name` (see [`check_sequence`]) and
    /// record a new highest.
    fn accept_sequence(
        &mut self,
        path: &Path,
        name: &str,
        seq: u64,
        accept: Accept,
    ) -> Result<(), BundleError> {
        let name = name.to_string();
        // Re-read: another process may have accepted a newer one meanwhile.
        let on_disk = TrustStore::open(&self.dir)
            .map(|s| s.sequences)
            .unwrap_or_default();
        for (k, n) in on_disk {
            let e = self.sequences.entry(k).or_insert(n);
            *e = (*e).max(n);
        }
        let highest = self.sequences.get(&name).copied();
        let floor = self.root.signed.floor(&name);
        match check_sequence(seq, highest, floor, accept) {
            Err(rule) => {
                return Err(BundleError::Replay {
                    bundle: path.to_path_buf(),
                    name,
                    sequence: seq,
                    root_version: self.root.signed.version,
                    rule,
                });
            }
            Ok(SequenceDecision::Downgrade) => {
                tracing::warn!(
                    bundle = %path.display(),
                    name = %name,
                    sequence = seq,
                    highest = highest.unwrap_or_default(),
                    floor = floor.unwrap_or_default(),
                    root_version = self.root.signed.version,
                    "Downgrade accepted: the control plane assigned an older bundle within the trusted root's rollback floor"
                );
                return Ok(());
            }
            Ok(SequenceDecision::Current) => {}
        }
        if highest != Some(seq) {
            self.sequences.insert(name, seq);
            let s = Sequences {
                format: 1,
                sequences: self.sequences.clone(),
            };
            let mut b =
                serde_json::to_vec_pretty(&s).map_err(|e| state_err(&self.dir, e.to_string()))?;
            b.push(b'\n');
            write_atomic(&self.dir, SEQUENCES_FILE, &b)?;
        }
        Ok(())
    }
}
