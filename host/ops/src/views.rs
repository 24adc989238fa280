//! The `--json` documents of `molt bundle verify` and `molt buildstamp`, as
//! `Serialize` types: the field names are an interface scripts read, so they
//! are declared once here rather than assembled in the CLI.
use std::path::{Path, PathBuf};

use molt_bundle::chrono::{DateTime, Utc};
use molt_bundle::schema::{BundleKind, Target};
use molt_bundle::{Buildstamp, VerifiedBundle};
use serde::Serialize;

/// `molt bundle verify --json` for a bundle that verified.
#[derive(Debug, Serialize)]
pub struct VerifiedView<'a> {
    /// Always `true`.
    pub valid: bool,
    pub bundle: &'a Path,
    pub name: &'a str,
    pub kind: BundleKind,
    pub role: &'static str,
    pub buildstamp: &'a str,
    pub target: &'a Target,
    pub sequence: u64,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    /// Number of payload entries.
    pub entries: usize,
    /// Their total uncompressed size in bytes.
    pub size: u64,
    /// Number of check components.
    pub components: usize,
    pub digest: &'a str,
    pub signers: &'a [String],
    pub threshold: u32,
    pub root_version: u64,
    /// Every entry's content was hashed (`--deep`).
    pub deep: bool,
}

impl<'a> VerifiedView<'a> {
    pub fn new(v: &'a VerifiedBundle, deep: bool) -> VerifiedView<'a> {
        let m = &v.manifest;
        VerifiedView {
            valid: true,
            bundle: &v.path,
            name: &m.name,
            kind: m.kind,
            role: v.role,
            buildstamp: &m.buildstamp,
            target: &m.target,
            sequence: m.sequence,
            created: m.created,
            expires: m.expires,
            entries: m.entries.len(),
            size: m.entries.iter().map(|e| e.size).sum(),
            components: m.components.len(),
            digest: &v.digest,
            signers: &v.signers,
            threshold: v.threshold,
            root_version: v.root_version,
            deep,
        }
    }
}

/// `molt bundle verify --json` for a bundle that did not verify.
#[derive(Debug, Serialize)]
pub struct InvalidView {
    /// Always `false`.
    pub valid: bool,
    pub bundle: PathBuf,
    pub error: String,
}

impl InvalidView {
    pub fn new(bundle: &Path, error: impl std::fmt::Display) -> InvalidView {
        InvalidView {
            valid: false,
            bundle: bundle.to_path_buf(),
            error: error.to_string(),
        }
    }
}

/// `molt buildstamp --json`: a parsed buildstamp, field by field.
#[derive(Debug, Serialize)]
pub struct BuildstampView {
    pub name: String,
    pub product: &'static str,
    pub kind: &'static str,
    pub kind_word: &'static str,
    pub version: String,
    pub family: String,
    pub family_date: String,
    pub patch: u32,
    pub patch_suffix: String,
    pub hotfix: Option<u32>,
    pub hotfix_suffix: Option<String>,
    pub patch_date: String,
    /// Build date and time, minute precision (`%Y-%m-%dT%H:%M`).
    pub built: String,
    pub os: String,
    pub arch: String,
}

impl From<&Buildstamp> for BuildstampView {
    fn from(b: &Buildstamp) -> BuildstampView {
        let v = &b.version;
        BuildstampView {
            name: b.to_string(),
            product: b.product.as_str(),
            kind: b.kind.as_str(),
            kind_word: b.kind_word(),
            version: v.to_string(),
            family: v.family.clone(),
            family_date: v.family_date.to_string(),
            patch: v.patch,
            patch_suffix: v.patch_suffix.clone(),
            hotfix: v.hotfix.as_ref().map(|h| h.number),
            hotfix_suffix: v.hotfix.as_ref().map(|h| h.suffix.clone()),
            patch_date: v.patch_date.to_string(),
            built: v.built.format("%Y-%m-%dT%H:%M").to_string(),
            os: b.os.clone(),
            arch: b.arch.clone(),
        }
    }
}
