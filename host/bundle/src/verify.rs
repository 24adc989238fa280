//! Offline bundle verification against a trust root. The fast path reads the
//! central directory and the manifest, checks every entry against the manifest,
//! hashes the file once as a stream and checks the signatures; it never inflates
//! payload. `deep` additionally inflates every entry and checks size and SHA-256.
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::buildstamp::Buildstamp;
use crate::container::{
    self, Layout, Limits, METHOD_DEFLATED, RawEntry, SIGNATURES_SIZE, check_entry_path,
};
use crate::error::BundleError;
use crate::keys::{BUNDLE_SIG_CONTEXT, BUNDLE_SIG_CONTEXT_V2, MANIFEST_SIG_CONTEXT_V2};
use crate::schema::{Manifest, Role, Signature, SignatureFileV2, SignedRoot};

/// How to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Clock for expiry checks (`None` = now).
    pub now: Option<DateTime<Utc>>,
    /// Also inflate every entry and check its size, CRC-32 and SHA-256.
    pub deep: bool,
    pub limits: Limits,
}

/// Where one payload entry's data lies in the bundle file (for extraction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryLocation {
    pub path: String,
    pub data_offset: u64,
    pub compressed_size: u64,
    pub size: u64,
    pub method: u16,
    pub crc32: u32,
    pub sha256: String,
    pub mode: u32,
}

/// A bundle that passed verification. Only `verify_bundle` makes one.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedBundle {
    pub path: PathBuf,
    /// Bundle format (1, or 2 with manifest signatures).
    pub format: u32,
    pub manifest: Manifest,
    #[serde(skip)]
    pub buildstamp: Buildstamp,
    /// Hex SHA-256 of the file with the signature slot zeroed (what was signed).
    pub digest: String,
    pub role: &'static str,
    /// Key ids whose signatures counted.
    pub signers: Vec<String>,
    pub threshold: u32,
    pub root_version: u64,
    pub file_len: u64,
    #[serde(skip)]
    pub entries: Vec<EntryLocation>,
}

fn manifest_err(path: &Path, reason: impl Into<String>) -> BundleError {
    BundleError::Manifest {
        bundle: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Parse a manifest's bytes: its format first ([`container::read_format`]:
/// a newer molt's manifest is [`BundleError::FormatTooNew`]), then strictly.
pub(crate) fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, BundleError> {
    let invalid = |r: String| manifest_err(path, r);
    container::read_format(path, bytes, "manifest JSON", invalid)?;
    serde_json::from_slice(bytes)
        .map_err(|e| manifest_err(path, format!("not valid manifest JSON: {e}")))
}

/// Structure, manifest and signature-slot parsing shared by the verifier and
/// the signer. Does not check signatures or expiry.
pub(crate) struct Parsed {
    pub layout: Layout,
    pub manifest_bytes: Vec<u8>,
    pub signatures: SignatureFileV2,
}

pub(crate) fn parse_bundle(
    file: &File,
    path: &Path,
    limits: &Limits,
) -> Result<Parsed, BundleError> {
    let mut layout = container::read_layout(file, path, limits)?;
    let manifest_bytes =
        container::read_small_entry(file, path, &mut layout, 0, limits.max_manifest_size, true)?;
    let last = layout.entries.len() - 1;
    // The slot and its CRC are zeroed in the signed digest, so the CRC proves
    // nothing. Instead the slot must be byte-for-byte the canonical form of the
    // signatures it holds, so no byte of it can change unseen, and a damaged
    // signature is reported as a bad signature (what the operator needs to
    // know) rather than as a checksum error.
    let sig_bytes =
        container::read_small_entry(file, path, &mut layout, last, SIGNATURES_SIZE, false)?;
    let signatures = container::parse_signature_slot(path, &sig_bytes)?;
    Ok(Parsed {
        layout,
        manifest_bytes,
        signatures,
    })
}

/// Check the manifest against the zip and itself; returns entry locations.
pub(crate) fn check_manifest(
    path: &Path,
    manifest: &Manifest,
    payload: &[RawEntry],
) -> Result<(Buildstamp, Vec<EntryLocation>), BundleError> {
    container::check_format(path, u64::from(manifest.format), |r| manifest_err(path, r))?;
    let bs: Buildstamp = manifest
        .buildstamp
        .parse()
        .map_err(|e: crate::buildstamp::BuildstampError| manifest_err(path, e.to_string()))?;
    if bs.kind != manifest.kind {
        return Err(manifest_err(
            path,
            format!(
                "kind `{}` but buildstamp `{}` is a {} package",
                manifest.kind, manifest.buildstamp, bs.kind
            ),
        ));
    }
    if bs.package() != manifest.name {
        return Err(manifest_err(
            path,
            format!(
                "name `{}` does not match buildstamp `{}`",
                manifest.name, manifest.buildstamp
            ),
        ));
    }
    if bs.os != manifest.target.os || bs.arch != manifest.target.arch {
        return Err(manifest_err(
            path,
            format!(
                "target {}/{} does not match buildstamp `{}`",
                manifest.target.os, manifest.target.arch, manifest.buildstamp
            ),
        ));
    }
    if manifest.created > manifest.expires {
        return Err(manifest_err(path, "created after it expires"));
    }
    let mut by_path: BTreeMap<&str, &crate::schema::ManifestEntry> = BTreeMap::new();
    for e in &manifest.entries {
        check_entry_path(&e.path)
            .map_err(|r| manifest_err(path, format!("entry `{}`: {r}", e.path)))?;
        if e.path.starts_with("molt/") {
            return Err(manifest_err(
                path,
                format!("entry `{}`: the `molt/` directory is reserved", e.path),
            ));
        }
        if e.sha256.len() != 64
            || !e
                .sha256
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return Err(manifest_err(
                path,
                format!("entry `{}`: sha256 is not 64 lowercase hex digits", e.path),
            ));
        }
        if e.mode & !0o777 != 0 {
            return Err(manifest_err(
                path,
                format!(
                    "entry `{}`: mode {:#o} has bits other than rwx permissions (setuid, setgid, sticky or file type)",
                    e.path, e.mode
                ),
            ));
        }
        if by_path.insert(e.path.as_str(), e).is_some() {
            return Err(manifest_err(
                path,
                format!("entry `{}` is listed twice", e.path),
            ));
        }
    }
    check_path_conflicts(path, by_path.keys().copied())?;
    let zip_names: BTreeSet<&str> = payload.iter().map(|e| e.name.as_str()).collect();
    for e in &manifest.entries {
        if !zip_names.contains(e.path.as_str()) {
            return Err(BundleError::MissingFromZip {
                bundle: path.to_path_buf(),
                entry: e.path.clone(),
            });
        }
    }
    let mut locs = Vec::with_capacity(payload.len());
    for z in payload {
        let Some(m) = by_path.get(z.name.as_str()) else {
            return Err(BundleError::NotInManifest {
                bundle: path.to_path_buf(),
                entry: z.name.clone(),
            });
        };
        if m.size != z.usize {
            return Err(BundleError::SizeMismatch {
                bundle: path.to_path_buf(),
                entry: z.name.clone(),
                declared: m.size,
                actual_what: "the zip header says",
                actual: z.usize,
            });
        }
        if z.unix_mode != 0 && z.unix_mode & 0o7777 != m.mode {
            return Err(BundleError::Entry {
                bundle: path.to_path_buf(),
                entry: z.name.clone(),
                reason: format!(
                    "zip mode {:#o} differs from the manifest's {:#o}",
                    z.unix_mode & 0o7777,
                    m.mode
                ),
            });
        }
        locs.push(EntryLocation {
            path: z.name.clone(),
            data_offset: z.data_off,
            compressed_size: z.csize,
            size: z.usize,
            method: z.method,
            crc32: z.crc,
            sha256: m.sha256.clone(),
            mode: m.mode,
        });
    }
    for c in &manifest.components {
        if !by_path.contains_key(c.path.as_str()) {
            return Err(manifest_err(
                path,
                format!("component `{}` is not a payload entry", c.path),
            ));
        }
        if c.world.is_empty() {
            return Err(manifest_err(
                path,
                format!("component `{}` names no WIT world", c.path),
            ));
        }
    }
    Ok((bs, locs))
}

/// Refuse a file that is also a directory prefix of another entry (`lib/a.dat`
/// beside `lib/a.dat/b.dat`): no extraction can lay out both, so a bundle that
/// passed verification would fail on every agent.
fn check_path_conflicts<'a>(
    bundle: &Path,
    paths: impl Iterator<Item = &'a str> + Clone,
) -> Result<(), BundleError> {
    let files: BTreeSet<&str> = paths.clone().collect();
    for p in paths {
        for (i, _) in p.match_indices('/') {
            let dir = &p[..i];
            if files.contains(dir) {
                return Err(BundleError::PathConflict {
                    bundle: bundle.to_path_buf(),
                    file: dir.to_string(),
                    nested: p.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Refuse a verified bundle below the rollback floor `root` sets for its name.
/// The floor is part of the signed root, not of a host's state, so even a
/// stateless check (`molt bundle verify --root`) applies it, with the same
/// message as the agent's ([`crate::store::check_sequence`] with no history).
pub fn check_floor(v: &VerifiedBundle, root: &SignedRoot) -> Result<(), BundleError> {
    let m = &v.manifest;
    crate::store::check_sequence(
        m.sequence,
        None,
        root.signed.floor(&m.name),
        crate::store::Accept::Newer,
    )
    .map(|_| ())
    .map_err(|rule| BundleError::Replay {
        bundle: v.path.clone(),
        name: m.name.clone(),
        sequence: m.sequence,
        root_version: root.signed.version,
        rule,
    })
}

/// Verify a bundle file against `root` (stateless: no sequence history and no
/// floor; see [`check_floor`] for the root's floor and
/// `TrustStore::verify_bundle` for both).
pub fn verify_bundle(
    path: &Path,
    root: &SignedRoot,
    opts: &VerifyOptions,
) -> Result<VerifiedBundle, BundleError> {
    let now = opts.now.unwrap_or_else(Utc::now);
    if root.is_expired(now) {
        return Err(BundleError::RootExpired {
            version: root.signed.version,
            expires: root.signed.expires.to_rfc3339(),
        });
    }
    let file = container::open(path)?;
    let parsed = parse_bundle(&file, path, &opts.limits)?;
    let manifest = parse_manifest(path, &parsed.manifest_bytes)?;
    if manifest.expires < now {
        return Err(BundleError::BundleExpired {
            bundle: path.to_path_buf(),
            name: manifest.name.clone(),
            expires: manifest.expires.to_rfc3339(),
        });
    }
    let (buildstamp, entries) = check_manifest(path, &manifest, parsed.layout.payload())?;
    check_formats(path, &manifest, &parsed.signatures)?;
    let role = manifest.kind.role();
    let digest = container::signed_digest(&file, path, &parsed.layout)?;
    let signers = check_threshold(
        path,
        root,
        role,
        Signed::File(manifest.format),
        &digest,
        &parsed.signatures.signatures,
        now,
    )?;
    let threshold = root.signed.threshold(role);
    // v2: the manifest signatures too (the rule the ranged reader applies), so
    // a file that verifies whole also verifies by its manifest alone.
    if manifest.format >= 2 {
        check_manifest_signatures(
            path,
            root,
            role,
            &parsed.manifest_bytes,
            &parsed.signatures.manifest_signatures,
            now,
        )?;
    }
    let verified = VerifiedBundle {
        path: path.to_path_buf(),
        format: manifest.format,
        buildstamp,
        digest: hex::encode(digest),
        role: role_str(role),
        signers,
        threshold,
        root_version: root.signed.version,
        file_len: parsed.layout.file_len,
        entries,
        manifest,
    };
    if opts.deep {
        deep_check(&file, &verified)?;
    }
    tracing::info!(
        bundle = %path.display(),
        name = %verified.manifest.name,
        buildstamp = %verified.manifest.buildstamp,
        sequence = verified.manifest.sequence,
        deep = opts.deep,
        "Bundle verified"
    );
    Ok(verified)
}

/// The context the whole-file digest is signed under, per bundle format.
pub(crate) fn file_context(format: u32) -> &'static [u8] {
    if format >= 2 {
        BUNDLE_SIG_CONTEXT_V2
    } else {
        BUNDLE_SIG_CONTEXT
    }
}

/// The manifest's format and the signature file's must be the same: a v2
/// manifest (which the whole-file digest covers) cannot be served with a v1
/// slot, nor a v1 manifest with v2 signatures.
pub(crate) fn check_formats(
    path: &Path,
    manifest: &Manifest,
    sigs: &SignatureFileV2,
) -> Result<(), BundleError> {
    if manifest.format != sigs.format {
        return Err(BundleError::SignatureFile {
            bundle: path.to_path_buf(),
            reason: format!(
                "format {} but the manifest is format {} (downgraded or mixed formats)",
                sigs.format, manifest.format
            ),
        });
    }
    Ok(())
}

/// Hex-free SHA-256 of the manifest's bytes: what a v2 manifest signature signs.
pub fn manifest_digest(manifest_bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, manifest_bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A threshold of `role` must have signed SHA-256 of the manifest bytes
/// (format 2), under the same key, revocation, expiry and threshold rules as
/// the whole-file signatures. Returns the key ids that counted.
pub(crate) fn check_manifest_signatures(
    path: &Path,
    root: &SignedRoot,
    role: Role,
    manifest_bytes: &[u8],
    sigs: &[Signature],
    now: DateTime<Utc>,
) -> Result<Vec<String>, BundleError> {
    let m = manifest_digest(manifest_bytes);
    check_threshold(path, root, role, Signed::Manifest, &m, sigs, now)
}

/// What a list of signatures signs: the whole file (of this format) or the
/// manifest's bytes (format 2).
#[derive(Debug, Clone, Copy)]
enum Signed {
    File(u32),
    Manifest,
}

/// A threshold of `role` must have signed `digest` (the whole file's or the
/// manifest's) under its context: the one rule for both kinds of signature.
/// Returns the key ids that counted.
fn check_threshold(
    path: &Path,
    root: &SignedRoot,
    role: Role,
    what: Signed,
    digest: &[u8; 32],
    sigs: &[Signature],
    now: DateTime<Utc>,
) -> Result<Vec<String>, BundleError> {
    let context = match what {
        Signed::File(format) => file_context(format),
        Signed::Manifest => MANIFEST_SIG_CONTEXT_V2,
    };
    let (signers, rejected) = root
        .signed
        .check_signatures(role, context, digest, sigs, now);
    let threshold = root.signed.threshold(role);
    if signers.len() >= threshold as usize {
        return Ok(signers);
    }
    let (bundle, role, valid) = (path.to_path_buf(), role.as_str().to_string(), signers.len());
    Err(match what {
        Signed::File(_) => BundleError::Threshold {
            bundle,
            role,
            valid,
            threshold,
            rejected,
        },
        Signed::Manifest => BundleError::ManifestThreshold {
            bundle,
            role,
            valid,
            threshold,
            rejected,
        },
    })
}

fn role_str(r: Role) -> &'static str {
    r.as_str()
}

/// Inflate every entry (streaming, nothing written) and check it.
fn deep_check(file: &File, v: &VerifiedBundle) -> Result<(), BundleError> {
    for loc in &v.entries {
        stream_entry(file, &v.path, loc, &mut std::io::sink())?;
    }
    Ok(())
}

/// A writer that counts, hashes and CRCs what passes through, and refuses to
/// take more than the declared size (a zip bomb stops here, not at the disk).
struct Checked<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
    limit: u64,
    sha: ring::digest::Context,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Checked<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            return Err(std::io::Error::other("OVERSIZE"));
        }
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.crc.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Copy one entry's content into `out`, checking size, CRC-32 and SHA-256
/// against the (authenticated) manifest. Memory use is constant.
pub(crate) fn stream_entry<W: Write>(
    file: &File,
    bundle: &Path,
    loc: &EntryLocation,
    out: &mut W,
) -> Result<(), BundleError> {
    use std::os::unix::fs::FileExt;
    struct At<'a> {
        f: &'a File,
        pos: u64,
        end: u64,
    }
    impl Read for At<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let left = self.end - self.pos;
            let n = (buf.len() as u64).min(left) as usize;
            if n == 0 {
                return Ok(0);
            }
            let got = self.f.read_at(&mut buf[..n], self.pos)?;
            self.pos += got as u64;
            Ok(got)
        }
    }
    let raw = std::io::BufReader::with_capacity(
        256 << 10,
        At {
            f: file,
            pos: loc.data_offset,
            end: loc.data_offset + loc.compressed_size,
        },
    );
    copy_checked(raw, bundle, loc, out)
}

/// Inflate (or copy) an entry's raw data from `raw` (at most its compressed
/// size is read) into `out`, checking size (the bound: more is refused before
/// it is written), SHA-256 and CRC-32 against `loc`.
pub(crate) fn copy_checked<R: Read, W: Write>(
    raw: R,
    bundle: &Path,
    loc: &EntryLocation,
    out: &mut W,
) -> Result<(), BundleError> {
    let raw = raw.take(loc.compressed_size);
    let mut checked = Checked {
        inner: out,
        written: 0,
        limit: loc.size,
        sha: ring::digest::Context::new(&ring::digest::SHA256),
        crc: crc32fast::Hasher::new(),
    };
    let res = if loc.method == METHOD_DEFLATED {
        std::io::copy(&mut flate2::read::DeflateDecoder::new(raw), &mut checked)
    } else {
        let mut raw = raw;
        std::io::copy(&mut raw, &mut checked)
    };
    let entry = || loc.path.clone();
    match res {
        Ok(_) => {}
        Err(e) if e.to_string() == "OVERSIZE" => {
            return Err(BundleError::SizeMismatch {
                bundle: bundle.to_path_buf(),
                entry: entry(),
                declared: loc.size,
                actual_what: "content is more than",
                actual: loc.size,
            });
        }
        Err(e) => {
            return Err(BundleError::Entry {
                bundle: bundle.to_path_buf(),
                entry: entry(),
                reason: format!("cannot read or inflate: {e}"),
            });
        }
    }
    if checked.written != loc.size {
        return Err(BundleError::SizeMismatch {
            bundle: bundle.to_path_buf(),
            entry: entry(),
            declared: loc.size,
            actual_what: "content is",
            actual: checked.written,
        });
    }
    let sha = hex::encode(checked.sha.finish().as_ref());
    if sha != loc.sha256 {
        return Err(BundleError::DigestMismatch {
            bundle: bundle.to_path_buf(),
            entry: entry(),
            expected: loc.sha256.clone(),
            actual: sha,
        });
    }
    if checked.crc.finalize() != loc.crc32 {
        return Err(BundleError::Entry {
            bundle: bundle.to_path_buf(),
            entry: entry(),
            reason: "CRC-32 does not match the content".into(),
        });
    }
    Ok(())
}

/// An unverified view of a bundle (for `molt bundle inspect`): structure is
/// checked, signatures and expiry are not.
#[derive(Debug, Clone, Serialize)]
pub struct InspectInfo {
    pub manifest: Manifest,
    pub signatures: Vec<crate::schema::Signature>,
    /// Format 2: signatures over the manifest's bytes alone.
    pub manifest_signatures: Vec<crate::schema::Signature>,
    /// Hex SHA-256 of the file with the signature slot zeroed.
    pub digest: String,
    pub file_len: u64,
}

pub fn inspect(path: &Path) -> Result<InspectInfo, BundleError> {
    let file = container::open(path)?;
    let parsed = parse_bundle(&file, path, &Limits::default())?;
    let manifest = parse_manifest(path, &parsed.manifest_bytes)?;
    let digest = container::signed_digest(&file, path, &parsed.layout)?;
    Ok(InspectInfo {
        manifest,
        signatures: parsed.signatures.signatures,
        manifest_signatures: parsed.signatures.manifest_signatures,
        digest: hex::encode(digest),
        file_len: parsed.layout.file_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::editor::{self, PackSpec};
    use crate::keys::SigningKey;

    const CORE: &str =
        "molt-core.vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815.universal.universal.zip";

    #[test]
    fn check_floor_refuses_below_the_roots_floor_and_names_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let key = SigningKey::generate().unwrap().0;
        let expires = Utc::now() + chrono::Duration::days(30);
        let mut root = editor::single_key_root(&key, expires).unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f.txt"), b"x").unwrap();
        let pack = |seq: u64| {
            let out = dir.path().join(format!("core-{seq}.zip"));
            let spec = PackSpec::from_buildstamp(CORE, seq).unwrap();
            editor::pack_dir(&src, &spec, &out).unwrap();
            editor::sign_bundle(&out, &[&key]).unwrap();
            out
        };
        let (b1, b2) = (pack(1), pack(2));
        let v1 = verify_bundle(&b1, &root, &VerifyOptions::default()).unwrap();
        // No floor in the root: nothing to refuse.
        check_floor(&v1, &root).unwrap();
        editor::set_floor(&mut root.signed, "molt-core", 2).unwrap();
        root.signed.version = 2;
        editor::sign_root(&mut root, &[&key]).unwrap();
        let v1 = verify_bundle(&b1, &root, &VerifyOptions::default()).unwrap();
        let e = check_floor(&v1, &root).unwrap_err().to_string();
        assert!(
            e.contains("replayed or older bundle refused: `molt-core` sequence 1 is below the rollback floor 2 that trusted root version 2 sets for `molt-core`; to allow it"),
            "{e}"
        );
        let v2 = verify_bundle(&b2, &root, &VerifyOptions::default()).unwrap();
        check_floor(&v2, &root).unwrap();
    }
}
