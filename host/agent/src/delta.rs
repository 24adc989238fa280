//! Delta downloads (issue 17): read a format-2 package's end record, central
//! directory, signature slot and manifest with HTTP Range, verify the manifest
//! against the trust root, then fetch only the entries whose content the agent
//! does not already hold (any installed version directory), in at most
//! [`MAX_REQUESTS`] requests, each entry inflated with the signed size as the
//! bound and checked against the signed SHA-256 before it is written.
//!
//! The result is a staging directory holding exactly the files the deploy build
//! must receive (the same contract as a full extraction: files unchanged from
//! the current version are hard-linked by the deploy, not staged). Any surprise
//! (Range ignored, an answer that does not match, format 1, a delta not smaller
//! than the package) is a [`DeltaError`]: the caller downloads the whole package.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use molt_layout::{FileMeta, Home, InstalledPackage};

use crate::deps::{self, Trust};
use crate::ranges::{ByteRange, RangeError, get_ranges};

/// Requests for the entries of one package, at most.
pub const MAX_REQUESTS: usize = 8;

/// Packages smaller than this are fetched whole (two tail guesses: the metadata
/// read alone would cost about as much as the file).
pub const MIN_SIZE: u64 = 2 * molt_bundle::TAIL_GUESS;

/// The fetched entries are held in memory until checked: a larger delta is
/// fetched as the whole file instead (streamed to disk).
const MAX_DELTA_BYTES: u64 = 256 << 20;

/// A delta is used only when it costs less than this share of the package (in
/// tenths): close to the whole file, one plain stream is as cheap and simpler.
const MAX_SHARE_TENTHS: u64 = 9;

/// Why a delta was not used (the full download follows; the text says why).
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("{0}")]
    Range(#[from] RangeError),
    #[error("bundle format 1 has no manifest signature to verify alone")]
    FormatOne,
    #[error("metadata refused: {0}")]
    Metadata(String),
    #[error("delta not smaller: {need} of {size} bytes")]
    NotSmaller { need: u64, size: u64 },
    #[error("delta of {need} bytes is more than the {MAX_DELTA_BYTES} held in memory")]
    TooLarge { need: u64 },
    #[error("entry refused: {0}")]
    Entry(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("delta task failed: {0}")]
    Task(String),
}

/// Where the package is and what it must be.
pub struct DeltaSource<'a> {
    pub http: &'a reqwest::Client,
    pub url: &'a reqwest::Url,
    pub bearer: Option<&'a str>,
    pub name: &'a str,
    /// The file size the control plane announced (checked against every `Content-Range`).
    pub size: u64,
}

/// A package fetched by delta: its files (from the signed manifest) and the
/// staging directory holding the files the deploy must receive.
#[derive(Debug, Clone)]
pub struct Staged {
    pub package: InstalledPackage,
    pub dir: PathBuf,
    /// Files in `dir` (relative paths).
    pub staged: Vec<String>,
    /// Body bytes received (metadata + entries).
    pub fetched: u64,
    /// Entry requests made (metadata requests not counted).
    pub requests: usize,
    /// Files copied from an installed version instead of fetched.
    pub reused: usize,
}

/// Local files by content: SHA-256 → a path holding it (any installed version).
pub fn local_contents(home: &Home) -> HashMap<String, PathBuf> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir(home.versions_dir()) else {
        return out;
    };
    for ent in rd.flatten() {
        let Some(v) = ent.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let Ok(pkgs) = molt_layout::read_meta_dir(&home.meta_dir_of(&v)) else {
            continue;
        };
        let dir = home.version_dir(&v);
        for p in pkgs {
            for (rel, m) in p.files {
                out.entry(m.sha256.to_ascii_lowercase())
                    .or_insert_with(|| dir.join(rel));
            }
        }
    }
    out
}

/// Fetch package `src` by delta into `staging` (replaced). `installed` is the
/// current version's packages: a file equal to one of them (digest, mode and
/// size) is not staged, as the deploy hard-links it; the runner package
/// (`upgrade`) is not part of the version directory, so all its files are staged.
pub async fn fetch(
    src: &DeltaSource<'_>,
    trust: &std::sync::Arc<Trust>,
    installed: &[InstalledPackage],
    local: &HashMap<String, PathBuf>,
    staging: &Path,
) -> Result<Staged, DeltaError> {
    let mut fetched = 0u64;
    // 1. The tail: end record, central directory, signature slot.
    let guess = molt_bundle::TAIL_GUESS.min(src.size);
    let mut from = src.size - guess;
    let source = PathBuf::from(src.name);
    let limits = molt_bundle::Limits::default();
    let mut layout = None;
    for _ in 0..2 {
        let r = get_ranges(
            src.http,
            src.url,
            src.bearer,
            &[ByteRange {
                start: from,
                end: src.size - 1,
            }],
            Some(src.size),
        )
        .await?;
        fetched += r.received;
        let tail = r.parts.into_iter().next().unwrap_or_default();
        match molt_bundle::remote::parse_tail(&source, src.size, from, &tail, &limits) {
            Ok(molt_bundle::Tail::Ready(l)) => {
                layout = Some(l);
                break;
            }
            Ok(molt_bundle::Tail::NeedFrom(off)) if off < from => from = off,
            Ok(molt_bundle::Tail::NeedFrom(off)) => {
                return Err(DeltaError::Metadata(format!(
                    "the tail parser asked for bytes from {off} again"
                )));
            }
            Err(e) => return Err(metadata_err(e)),
        }
    }
    let layout =
        layout.ok_or_else(|| DeltaError::Metadata("central directory not found".into()))?;
    if layout.format < 2 {
        return Err(DeltaError::FormatOne);
    }
    // 2. The manifest, verified against the trust root.
    let mr = layout.manifest_range();
    let span = match layout.bytes_in_tail(mr.clone()) {
        Some(b) => b.to_vec(),
        None => {
            let r = get_ranges(
                src.http,
                src.url,
                src.bearer,
                &[ByteRange {
                    start: mr.start,
                    end: mr.end - 1,
                }],
                Some(src.size),
            )
            .await?;
            fetched += r.received;
            r.parts.into_iter().next().unwrap_or_default()
        }
    };
    let index = {
        let trust = trust.clone();
        tokio::task::spawn_blocking(move || {
            deps::verify_remote_package(&trust, &layout, &span).map(|i| (i, layout))
        })
        .await
        .map_err(|e| DeltaError::Task(e.to_string()))?
        .map_err(|e| DeltaError::Metadata(e.to_string()))?
        .0
    };
    // 3. What must be staged, and where its bytes come from.
    let package = InstalledPackage {
        kind: index.manifest.kind.as_str().to_string(),
        name: src.name.to_string(),
        version: index.buildstamp.version.to_string(),
        files: index
            .manifest
            .entries
            .iter()
            .map(|e| {
                (
                    e.path.clone(),
                    FileMeta {
                        size: e.size,
                        sha256: e.sha256.clone(),
                        mode: e.mode,
                    },
                )
            })
            .collect(),
    };
    let staged: Vec<String> = if package.kind == molt_bundle::BundleKind::Upgrade.as_str() {
        package.files.keys().cloned().collect()
    } else {
        crate::stages::changed_files(installed, std::slice::from_ref(&package))
    };
    let mut reuse: Vec<(&str, &PathBuf)> = Vec::new();
    let mut wanted: Vec<&str> = Vec::new();
    for rel in &staged {
        let m = &package.files[rel];
        match local.get(&m.sha256.to_ascii_lowercase()) {
            Some(p) => reuse.push((rel, p)),
            None => wanted.push(rel),
        }
    }
    let plan =
        molt_bundle::remote::plan_ranges(&index, &wanted, MAX_REQUESTS).map_err(metadata_err)?;
    let need = index.metadata_len + plan.iter().map(|r| r.end - r.start).sum::<u64>();
    if need.saturating_mul(10) >= src.size.saturating_mul(MAX_SHARE_TENTHS) {
        return Err(DeltaError::NotSmaller {
            need,
            size: src.size,
        });
    }
    if need > MAX_DELTA_BYTES {
        return Err(DeltaError::TooLarge { need });
    }
    // 4. Fetch the ranges: one multi-range request, or single ranges when the
    // server does not answer that one.
    let ranges: Vec<ByteRange> = plan
        .iter()
        .filter(|r| r.end > r.start)
        .map(|r| ByteRange {
            start: r.start,
            end: r.end - 1,
        })
        .collect();
    let mut requests = 0usize;
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    if ranges.len() > 1 {
        requests += 1;
        match get_ranges(src.http, src.url, src.bearer, &ranges, Some(src.size)).await {
            Ok(r) => {
                fetched += r.received;
                bodies = r.parts;
            }
            Err(e) => {
                tracing::info!(package = %src.name, error = %e, "Multi-range request not answered; fetching the ranges one by one");
            }
        }
    }
    if bodies.len() != ranges.len() {
        bodies.clear();
        for r in &ranges {
            requests += 1;
            let got = get_ranges(src.http, src.url, src.bearer, &[*r], Some(src.size)).await?;
            fetched += got.received;
            bodies.extend(got.parts);
        }
    }
    // 5. Check every entry against the signed manifest, then write it.
    let staging = staging.to_path_buf();
    let reuse: Vec<(String, PathBuf, FileMeta)> = reuse
        .into_iter()
        .map(|(rel, p)| (rel.to_string(), p.clone(), package.files[rel].clone()))
        .collect();
    let wanted: Vec<String> = wanted.into_iter().map(str::to_string).collect();
    let reused = reuse.len();
    let dir = staging.clone();
    tokio::task::spawn_blocking(move || {
        write_staging(&index, &ranges, &bodies, &wanted, &reuse, &dir)
    })
    .await
    .map_err(|e| DeltaError::Task(e.to_string()))??;
    Ok(Staged {
        package,
        dir: staging,
        staged,
        fetched,
        requests,
        reused,
    })
}

fn metadata_err(e: molt_bundle::BundleError) -> DeltaError {
    match e {
        molt_bundle::BundleError::NoManifestSignature { .. } => DeltaError::FormatOne,
        e => DeltaError::Metadata(e.to_string()),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DeltaError + '_ {
    move |source| DeltaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write the staging directory: fetched entries (checked by `read_entry`) and
/// local copies (hashed while copied). On error the directory is removed.
fn write_staging(
    index: &molt_bundle::RemoteIndex,
    ranges: &[ByteRange],
    bodies: &[Vec<u8>],
    wanted: &[String],
    reuse: &[(String, PathBuf, FileMeta)],
    dir: &Path,
) -> Result<(), DeltaError> {
    let r = (|| {
        remove_tree(dir)?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        for rel in wanted {
            let e = index
                .entry(rel)
                .ok_or_else(|| DeltaError::Entry(format!("{rel} is not in the manifest")))?;
            let span = molt_bundle::remote::local_span(e);
            let (r, body) = ranges
                .iter()
                .zip(bodies)
                .find(|(r, _)| r.start <= span.start && span.end <= r.end + 1)
                .ok_or_else(|| DeltaError::Entry(format!("{rel}: not in the fetched ranges")))?;
            let bytes = molt_bundle::remote::read_entry(index, r.start, body, e)
                .map_err(|e| DeltaError::Entry(e.to_string()))?;
            write_file(dir, rel, &bytes)?;
        }
        for (rel, from, meta) in reuse {
            let bytes = std::fs::read(from).map_err(io(from))?;
            let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
            if bytes.len() as u64 != meta.size || !sha.eq_ignore_ascii_case(&meta.sha256) {
                return Err(DeltaError::Entry(format!(
                    "{rel}: the installed copy {} no longer has the manifest's digest",
                    from.display()
                )));
            }
            write_file(dir, rel, &bytes)?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = remove_tree(dir);
    }
    r
}

fn write_file(dir: &Path, rel: &str, bytes: &[u8]) -> Result<(), DeltaError> {
    molt_bundle::container::check_entry_path(rel)
        .map_err(|reason| DeltaError::Entry(format!("{rel}: {reason}")))?;
    let dest = dir.join(rel);
    if let Some(p) = dest.parent() {
        std::fs::create_dir_all(p).map_err(io(p))?;
    }
    let mut f = std::fs::File::create(&dest).map_err(io(&dest))?;
    f.write_all(bytes).map_err(io(&dest))
}

/// Remove a directory tree if present.
pub fn remove_tree(dir: &Path) -> Result<(), DeltaError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Move a staging directory to `dest` (rename, or copy across file systems).
pub fn move_staged(from: &Path, dest: &Path) -> Result<(), DeltaError> {
    if let Some(p) = dest.parent() {
        std::fs::create_dir_all(p).map_err(io(p))?;
    }
    remove_tree(dest)?;
    if std::fs::rename(from, dest).is_ok() {
        return Ok(());
    }
    copy_tree(from, dest)?;
    remove_tree(from)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), DeltaError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for ent in std::fs::read_dir(from).map_err(io(from))? {
        let ent = ent.map_err(io(from))?;
        let (s, d) = (ent.path(), to.join(ent.file_name()));
        if ent.file_type().map_err(io(&s))?.is_dir() {
            copy_tree(&s, &d)?;
        } else {
            std::fs::copy(&s, &d).map_err(io(&d))?;
        }
    }
    Ok(())
}
