//! One error enum for the whole crate: every variant names the thing (bundle,
//! entry, key, role, root version) and the reason, because the operator reads it.
use std::path::PathBuf;

use crate::buildstamp::BuildstampError;

/// Why a bundle, a root or a key was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The zip container breaks a structural rule of bundle format v1.
    #[error("bundle {bundle}: invalid container: {reason}")]
    Container { bundle: PathBuf, reason: String },

    /// One zip entry is unsafe or inconsistent (path, type, size, ratio...).
    #[error("bundle {bundle}: entry `{entry}`: {reason}")]
    Entry {
        bundle: PathBuf,
        entry: String,
        reason: String,
    },

    #[error("bundle {bundle}: entry `{entry}` is in the zip but not listed in the manifest")]
    NotInManifest { bundle: PathBuf, entry: String },

    #[error("bundle {bundle}: manifest entry `{entry}` is missing from the zip")]
    MissingFromZip { bundle: PathBuf, entry: String },

    #[error("bundle {bundle}: duplicate entry name `{entry}`")]
    Duplicate { bundle: PathBuf, entry: String },

    /// A file that is also a directory of another entry: no extraction can lay out both.
    #[error(
        "bundle {bundle}: entry `{file}` is a file but entry `{nested}` needs it to be a directory; no extraction can lay out both"
    )]
    PathConflict {
        bundle: PathBuf,
        file: String,
        nested: String,
    },

    #[error("bundle {bundle}: too many entries: {count} (limit {limit})")]
    TooManyEntries {
        bundle: PathBuf,
        count: u64,
        limit: u64,
    },

    #[error(
        "bundle {bundle}: total uncompressed size {total} bytes is above the limit of {limit} bytes"
    )]
    TotalTooLarge {
        bundle: PathBuf,
        total: u64,
        limit: u64,
    },

    #[error(
        "bundle {bundle}: entry `{entry}`: compression ratio {ratio}:1 is above the limit of {limit}:1 (zip bomb?)"
    )]
    Ratio {
        bundle: PathBuf,
        entry: String,
        ratio: u64,
        limit: u64,
    },

    #[error(
        "bundle {bundle}: entry `{entry}`: size mismatch: declared {declared} bytes, {actual_what} {actual} bytes"
    )]
    SizeMismatch {
        bundle: PathBuf,
        entry: String,
        declared: u64,
        actual_what: &'static str,
        actual: u64,
    },

    #[error(
        "bundle {bundle}: entry `{entry}`: SHA-256 mismatch: manifest {expected}, content {actual}"
    )]
    DigestMismatch {
        bundle: PathBuf,
        entry: String,
        expected: String,
        actual: String,
    },

    #[error("bundle {bundle}: invalid manifest: {reason}")]
    Manifest { bundle: PathBuf, reason: String },

    /// The manifest or the signature slot names a bundle format above
    /// [`crate::container::FORMATS`]: a newer molt packed it. The one message
    /// for it, whole-file or ranged, says what the operator can do.
    #[error(
        "bundle {bundle}: bundle format {format} is newer than this molt understands ({}): upgrade molt (agents before the control plane's packages), or pack with --format 1",
        known_formats()
    )]
    FormatTooNew { bundle: PathBuf, format: u64 },

    #[error("bundle {bundle}: invalid molt/signatures.json: {reason}")]
    SignatureFile { bundle: PathBuf, reason: String },

    /// Fewer good signatures than the role's threshold; lists why each other one did not count.
    #[error("bundle {bundle}: signatures below the threshold of role `{role}`: {valid} valid of {threshold} required{}", fmt_rejected(.rejected))]
    Threshold {
        bundle: PathBuf,
        role: String,
        valid: usize,
        threshold: u32,
        rejected: Vec<(String, String)>,
    },

    /// Format 2: fewer good manifest signatures than the role's threshold.
    #[error("bundle {bundle}: manifest signatures below the threshold of role `{role}`: {valid} valid of {threshold} required{}", fmt_rejected(.rejected))]
    ManifestThreshold {
        bundle: PathBuf,
        role: String,
        valid: usize,
        threshold: u32,
        rejected: Vec<(String, String)>,
    },

    /// A format 1 bundle: its manifest cannot be trusted without the whole
    /// file, so a ranged reader must download it in full.
    #[error(
        "bundle {bundle}: format {format} has no manifest signature; the whole file must be downloaded to verify it"
    )]
    NoManifestSignature { bundle: PathBuf, format: u32 },

    /// A ranged read (HTTP Range) needs bytes it was not given.
    #[error("bundle {bundle}: ranged read: {reason}")]
    Remote { bundle: PathBuf, reason: String },

    #[error("bundle {bundle}: bundle `{name}` expired at {expires}")]
    BundleExpired {
        bundle: PathBuf,
        name: String,
        expires: String,
    },

    /// Refused by rollback protection; `rule` says which rule and what to do.
    #[error(
        "bundle {bundle}: replayed or older bundle refused: `{name}` sequence {sequence} {}",
        replay_detail(.name, *.sequence, *.root_version, .rule)
    )]
    Replay {
        bundle: PathBuf,
        name: String,
        sequence: u64,
        /// Version of the trusted root whose floor (or lack of one) applied.
        root_version: u64,
        rule: ReplayRule,
    },

    #[error(
        "trusted root version {version} expired at {expires}; install a newer root (molt root rotate)"
    )]
    RootExpired { version: u64, expires: String },

    #[error("root.json: {reason}")]
    Root { reason: String },

    #[error("root rotation from version {from} to {to} refused: {reason}")]
    Rotation { from: u64, to: u64, reason: String },

    #[error("key: {reason}")]
    Key { reason: String },

    #[error("state directory {dir}: {reason}")]
    State { dir: PathBuf, reason: String },

    #[error("pack: {reason}")]
    Pack { reason: String },

    #[error("extract to {dest}: entry `{entry}`: {reason}")]
    Extract {
        dest: PathBuf,
        entry: String,
        reason: String,
    },

    #[error(transparent)]
    Buildstamp(#[from] BuildstampError),
}

/// Why an entry path may not be created under a destination directory
/// ([`crate::container::check_entry_path`]); callers wrap it with the bundle
/// and entry it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path longer than {max} bytes")]
    TooLong { max: usize },
    #[error("absolute path")]
    Absolute,
    #[error("backslash in path (Windows separator)")]
    Backslash,
    #[error("control character in path")]
    Control,
    #[error("directory entry (bundles hold files only)")]
    Directory,
    #[error("drive-letter path")]
    DriveLetter,
    #[error("`..` component in path")]
    DotDot,
    #[error("`.` component in path")]
    Dot,
    #[error("empty component (`//`) in path")]
    EmptyComponent,
}

/// Why a JSON value has no canonical form ([`crate::schema::canonical_json`]).
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    #[error("floating-point number {0} is not allowed in canonical JSON")]
    Float(serde_json::Number),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// An unknown bundle kind word ([`crate::schema::BundleKind`]'s `FromStr`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown bundle kind `{0}` (known: precheck, selector, core, runtime, upgrade)")]
pub struct UnknownKind(pub String);

/// Which rollback rule refused a bundle (`TrustStore::verify_bundle_as`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayRule {
    /// Below the trusted root's `rollback_floor` for the name: refused whoever asks.
    BelowFloor { floor: u64, highest: Option<u64> },
    /// Lower than the highest accepted and not the version the control plane
    /// assigned (an import, an offline check): only an assignment may go back.
    NotAssigned { highest: u64, floor: Option<u64> },
    /// The control plane assigned it, but the trusted root sets no floor for
    /// the name, so no downgrade below the highest accepted is allowed.
    NoFloor { highest: u64 },
}

fn replay_detail(name: &str, sequence: u64, root_version: u64, rule: &ReplayRule) -> String {
    let how = format!(
        "sign a root with rollback_floor `{name}` <= {sequence} (molt root rotate --floor {name}={sequence}) and install it on the host"
    );
    match *rule {
        ReplayRule::BelowFloor { floor, highest } => format!(
            "is below the rollback floor {floor} that trusted root version {root_version} sets for `{name}`{}; to allow it, {how}",
            highest
                .map(|h| format!(" ({h} already accepted)"))
                .unwrap_or_default()
        ),
        ReplayRule::NotAssigned { highest, floor } => format!(
            "is lower than {highest} already accepted; only the version the control plane assigns may go back, down to the rollback floor of trusted root version {root_version} ({})",
            floor.map_or_else(
                || format!("it sets none for `{name}`"),
                |f| format!("{f} for `{name}`")
            )
        ),
        ReplayRule::NoFloor { highest } => format!(
            "is lower than {highest} already accepted, and trusted root version {root_version} sets no rollback_floor for `{name}`, so no downgrade is allowed; to allow this one, {how}"
        ),
    }
}

/// `1 or 2`: the formats this build reads, for messages.
pub(crate) fn known_formats() -> String {
    let f: Vec<String> = crate::container::FORMATS
        .iter()
        .map(u32::to_string)
        .collect();
    f.join(" or ")
}

fn fmt_rejected(rejected: &[(String, String)]) -> String {
    if rejected.is_empty() {
        return " (no signatures)".to_string();
    }
    let parts: Vec<String> = rejected
        .iter()
        .map(|(k, why)| format!("key {}: {why}", short_id(k)))
        .collect();
    format!("; {}", parts.join("; "))
}

/// First 16 hex digits of a key id: enough to tell keys apart in a message.
pub fn short_id(keyid: &str) -> &str {
    keyid.get(..16).unwrap_or(keyid)
}

impl BundleError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BundleError::Io {
            path: path.into(),
            source,
        }
    }
}
