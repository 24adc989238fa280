//! The host's trust state: the trusted root and the highest accepted sequence
//! per bundle name, in a state directory, written atomically. This is what
//! refuses a replayed older bundle or an older root.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::{Deserialize, Serialize};

use crate::error::BundleError;
use crate::schema::SignedRoot;
use crate::verify::{VerifiedBundle, VerifyOptions, verify_bundle};

pub const ROOT_FILE: &str = "root.json";
pub const SEQUENCES_FILE: &str = "sequences.json";

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
    pub fn update_root(&mut self, new: SignedRoot) -> Result<(), BundleError> {
        self.root.check_rotation(&new, Utc::now())?;
        write_atomic(&self.dir, ROOT_FILE, &new.to_json_pretty()?)?;
        tracing::info!(
            from = self.root.signed.version,
            to = new.signed.version,
            "Trusted root rotated"
        );
        self.root = new;
        Ok(())
    }

    /// Verify a bundle against the trusted root, refuse a sequence lower than
    /// the highest accepted for its name, and record the new highest.
    pub fn verify_bundle(
        &mut self,
        path: &Path,
        opts: &VerifyOptions,
    ) -> Result<VerifiedBundle, BundleError> {
        let v = verify_bundle(path, &self.root, opts)?;
        let name = v.manifest.name.clone();
        let seq = v.manifest.sequence;
        // Re-read: another process may have accepted a newer one meanwhile.
        let on_disk = TrustStore::open(&self.dir)
            .map(|s| s.sequences)
            .unwrap_or_default();
        for (k, n) in on_disk {
            let e = self.sequences.entry(k).or_insert(n);
            *e = (*e).max(n);
        }
        if let Some(&highest) = self.sequences.get(&name)
            && seq < highest
        {
            return Err(BundleError::Replay {
                bundle: path.to_path_buf(),
                name,
                sequence: seq,
                highest,
            });
        }
        if self.sequences.get(&name) != Some(&seq) {
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
        Ok(v)
    }
}
