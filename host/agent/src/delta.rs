//! Delta downloads (issue 17): read a format-2 package's end record, central
//! directory, signature slot and manifest with HTTP Range, verify the manifest
//! against the trust root, then fetch only the entries whose content the agent
//! does not already hold (any installed version directory, or an entry of a
//! package in the package cache whose signed manifest verified), in at most
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
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use molt_bundle::{RemoteIndex, RemoteLayout};
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
    /// Files read from a verified package in the package cache instead of fetched.
    pub cached: usize,
}

/// Where content with a given SHA-256 is held on this host.
#[derive(Debug, Clone)]
pub enum Held {
    /// A file of an installed version directory (hashed again while copied).
    Installed(PathBuf),
    /// Entry `entry` of a package in the package cache whose signed manifest
    /// verified (inflated and checked against that SHA-256 when read).
    Cached {
        package: Arc<CachedPackage>,
        entry: usize,
    },
}

/// A package of the package cache (`package/incoming`) whose manifest
/// verified against the trust root: its entries are a source of content.
#[derive(Debug)]
pub struct CachedPackage {
    pub path: PathBuf,
    pub index: RemoteIndex,
}

/// Content held locally, by SHA-256 (lowercase hex): a delta does not fetch it.
#[derive(Debug, Default)]
pub struct LocalContents {
    by_sha: HashMap<String, Held>,
}

impl LocalContents {
    pub fn is_empty(&self) -> bool {
        self.by_sha.is_empty()
    }

    pub fn get(&self, sha256: &str) -> Option<&Held> {
        // Keys are lowercase; so is every digest a verified manifest holds.
        self.by_sha
            .get(sha256)
            .or_else(|| self.by_sha.get(&sha256.to_ascii_lowercase()))
    }

    /// Add the entries of the package file at `path` if its manifest (bundle
    /// format 2) verifies against the trust root; content already held stays
    /// with its first source. Gives the number of entries added.
    pub fn add_cached(&mut self, path: &Path, trust: &Trust) -> Result<usize, DeltaError> {
        let index = cached_index(path, trust)?;
        let package = Arc::new(CachedPackage {
            path: path.to_path_buf(),
            index,
        });
        let mut added = 0;
        for (entry, e) in package.index.entries.iter().enumerate() {
            let held = Held::Cached {
                package: package.clone(),
                entry,
            };
            if let std::collections::hash_map::Entry::Vacant(v) =
                self.by_sha.entry(e.sha256.to_ascii_lowercase())
            {
                v.insert(held);
                added += 1;
            }
        }
        Ok(added)
    }

    /// [`Self::add_cached`], saying in the log whether the file is a source.
    pub fn add_source(&mut self, path: &Path, trust: &Trust) {
        match self.add_cached(path, trust) {
            Ok(added) => {
                tracing::info!(file = %path.display(), added, "Cached package is a delta source")
            }
            Err(e) => {
                tracing::info!(file = %path.display(), reason = %e, "Cached package is not a delta source")
            }
        }
    }
}

/// Local content: the files of every installed version directory, then the
/// entries of every package in the package cache whose manifest verifies
/// (another package of the same version, a download kept from an earlier
/// attempt, an imported file). A cached file that does not verify (format 1,
/// another signer, damaged) is skipped: nothing unverified is a source.
pub fn local_contents(home: &Home, trust: &Trust) -> LocalContents {
    let mut out = LocalContents::default();
    if let Ok(rd) = std::fs::read_dir(home.versions_dir()) {
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
                    out.by_sha
                        .entry(m.sha256.to_ascii_lowercase())
                        .or_insert_with(|| Held::Installed(dir.join(rel)));
                }
            }
        }
    }
    let Ok(rd) = std::fs::read_dir(home.incoming_dir()) else {
        return out;
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            !name.starts_with('.') && !name.ends_with(".part")
        })
        .collect();
    files.sort();
    for path in files {
        out.add_source(&path, trust);
    }
    out
}

/// One step of reading a package's tail: the layout, or where to read from.
enum TailStep {
    Ready(Box<RemoteLayout>),
    From(u64),
}

/// Parse the tail `bytes` (from offset `from` to the end of a `size`-byte
/// package). Only format 2 can be verified by its manifest alone. A read from
/// where the end record says (`again`) must be enough: a second request for
/// more means the answers disagree, and the reads stop.
fn tail_step(
    source: &Path,
    size: u64,
    from: u64,
    bytes: &[u8],
    again: bool,
) -> Result<TailStep, DeltaError> {
    let limits = molt_bundle::Limits::default();
    match molt_bundle::remote::parse_tail(source, size, from, bytes, &limits) {
        Ok(molt_bundle::Tail::Ready(l)) if l.format < 2 => Err(DeltaError::FormatOne),
        Ok(molt_bundle::Tail::Ready(l)) => Ok(TailStep::Ready(l)),
        Ok(molt_bundle::Tail::NeedFrom(off)) if off < from && !again => Ok(TailStep::From(off)),
        Ok(molt_bundle::Tail::NeedFrom(off)) => Err(DeltaError::Metadata(format!(
            "the tail parser asked for bytes from {off} again"
        ))),
        Err(e) => Err(metadata_err(e)),
    }
}

/// The verified index of a package file in the package cache: its tail and
/// manifest read in place, the manifest verified without the sequence rule.
fn cached_index(path: &Path, trust: &Trust) -> Result<RemoteIndex, DeltaError> {
    let f = std::fs::File::open(path).map_err(io(path))?;
    let size = f.metadata().map_err(io(path))?.len();
    let read = |start: u64, end: u64| {
        let mut b = vec![0u8; end.saturating_sub(start) as usize];
        f.read_exact_at(&mut b, start).map(|()| b).map_err(io(path))
    };
    let (mut from, mut again) = (size - molt_bundle::TAIL_GUESS.min(size), false);
    let layout = loop {
        match tail_step(path, size, from, &read(from, size)?, again)? {
            TailStep::Ready(l) => break l,
            TailStep::From(off) => (from, again) = (off, true),
        }
    };
    let mr = layout.manifest_range();
    let span = match layout.bytes_in_tail(mr.clone()) {
        Some(b) => b.to_vec(),
        None => read(mr.start, mr.end)?,
    };
    let manifest = layout
        .manifest_bytes(&span, &molt_bundle::Limits::default())
        .map_err(metadata_err)?;
    deps::verify_remote_package(trust, &layout, &manifest)
        .map_err(|e| DeltaError::Metadata(e.to_string()))
}

/// Fetch package `src` by delta into `staging` (replaced). `installed` is the
/// current version's packages: a file equal to one of them (digest, mode and
/// size) is not staged, as the deploy hard-links it; the runner package
/// (`upgrade`) is not part of the version directory, so all its files are staged.
pub async fn fetch(
    src: &DeltaSource<'_>,
    trust: &Arc<Trust>,
    installed: &[InstalledPackage],
    local: &LocalContents,
    staging: &Path,
) -> Result<Staged, DeltaError> {
    let mut fetched = 0u64;
    // 1. The tail: end record, central directory, signature slot.
    let source = PathBuf::from(src.name);
    let (mut from, mut again) = (src.size - molt_bundle::TAIL_GUESS.min(src.size), false);
    let layout = loop {
        let tail = get_one(src, from..src.size, &mut fetched).await?;
        match tail_step(&source, src.size, from, &tail, again)? {
            TailStep::Ready(l) => break l,
            TailStep::From(off) => (from, again) = (off, true),
        }
    };
    // 2. The manifest, verified against the trust root. The sequence rule
    // (whose new highest is written to disk) waits for the decision below:
    // a delta given up costs no write.
    let mr = layout.manifest_range();
    let span = match layout.bytes_in_tail(mr.clone()) {
        Some(b) => b.to_vec(),
        None => get_one(src, mr, &mut fetched).await?,
    };
    // Give up before verifying when even the most this host could supply
    // leaves the delta not smaller (the bound reads the manifest unverified: a
    // lie can only cost the full download, which is verified whole).
    let manifest = layout
        .manifest_bytes(&span, &molt_bundle::Limits::default())
        .map_err(metadata_err)?;
    let need = layout.metadata_len()
        + layout.unverified_fetch_bound(&manifest, |sha| local.get(sha).is_some());
    if not_smaller(need, src.size) {
        return Err(DeltaError::NotSmaller {
            need,
            size: src.size,
        });
    }
    let index = {
        let trust = trust.clone();
        tokio::task::spawn_blocking(move || deps::verify_remote_package(&trust, &layout, &manifest))
            .await
            .map_err(|e| DeltaError::Task(e.to_string()))?
            .map_err(|e| DeltaError::Metadata(e.to_string()))?
    };
    // 3. What must be staged, and where its bytes come from.
    let package = InstalledPackage {
        kind: index.manifest.kind.as_str().to_string(),
        name: src.name.to_string(),
        version: index.buildstamp.version.to_string(),
        files: FileMeta::of_manifest(&index.manifest),
    };
    let staged: Vec<String> = if package.kind == molt_bundle::BundleKind::Upgrade.as_str() {
        package.files.keys().cloned().collect()
    } else {
        crate::stages::changed_files(installed, std::slice::from_ref(&package))
    };
    let mut reuse: Vec<(String, Held, FileMeta)> = Vec::new();
    let mut wanted: Vec<&str> = Vec::new();
    for rel in &staged {
        let m = &package.files[rel];
        match local.get(&m.sha256) {
            Some(h) => reuse.push((rel.clone(), h.clone(), m.clone())),
            None => wanted.push(rel),
        }
    }
    let plan =
        molt_bundle::remote::plan_ranges(&index, &wanted, MAX_REQUESTS).map_err(metadata_err)?;
    let need = index.metadata_len + plan.iter().map(|r| r.end - r.start).sum::<u64>();
    if not_smaller(need, src.size) {
        return Err(DeltaError::NotSmaller {
            need,
            size: src.size,
        });
    }
    if need > MAX_DELTA_BYTES {
        return Err(DeltaError::TooLarge { need });
    }
    // The delta is used: now the sequence rule, as for a whole file (a replay
    // is refused here, and again by the full download that follows).
    let index = {
        let trust = trust.clone();
        tokio::task::spawn_blocking(move || {
            deps::accept_remote_package(&trust, &index).map(|()| index)
        })
        .await
        .map_err(|e| DeltaError::Task(e.to_string()))?
        .map_err(|e| DeltaError::Metadata(e.to_string()))?
    };
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
            bodies.push(get_one(src, r.start..r.end + 1, &mut fetched).await?);
        }
    }
    // 5. Check every entry against the signed manifest, then write it.
    let staging = staging.to_path_buf();
    let wanted: Vec<String> = wanted.into_iter().map(str::to_string).collect();
    let cached = reuse
        .iter()
        .filter(|(_, h, _)| matches!(h, Held::Cached { .. }))
        .count();
    let reused = reuse.len() - cached;
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
        cached,
    })
}

/// Whether fetching `need` bytes of a `size`-byte package is too close to the
/// whole file to be worth a delta.
fn not_smaller(need: u64, size: u64) -> bool {
    need.saturating_mul(10) >= size.saturating_mul(MAX_SHARE_TENTHS)
}

/// GET one byte range (`range` half-open), counting the body bytes received.
async fn get_one(
    src: &DeltaSource<'_>,
    range: std::ops::Range<u64>,
    fetched: &mut u64,
) -> Result<Vec<u8>, DeltaError> {
    let r = ByteRange {
        start: range.start,
        end: range.end.saturating_sub(1),
    };
    let got = get_ranges(src.http, src.url, src.bearer, &[r], Some(src.size)).await?;
    *fetched += got.received;
    Ok(got.parts.into_iter().next().unwrap_or_default())
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

/// Write the staging directory: fetched entries (checked by `read_entry`),
/// installed copies (hashed while copied) and cached entries (checked by
/// `read_entry_from` against their package's signed manifest). On error the
/// directory is removed.
fn write_staging(
    index: &RemoteIndex,
    ranges: &[ByteRange],
    bodies: &[Vec<u8>],
    wanted: &[String],
    reuse: &[(String, Held, FileMeta)],
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
            let (mut f, dest) = create_file(dir, rel)?;
            f.write_all(&bytes).map_err(io(&dest))?;
        }
        for (rel, held, meta) in reuse {
            copy_held(dir, rel, held, meta)?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = remove_tree(dir);
    }
    r
}

/// Write `rel` into `dir` from local content, checked against `meta`.
fn copy_held(dir: &Path, rel: &str, held: &Held, meta: &FileMeta) -> Result<(), DeltaError> {
    match held {
        Held::Installed(from) => {
            let bytes = std::fs::read(from).map_err(io(from))?;
            let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
            if bytes.len() as u64 != meta.size || !sha.eq_ignore_ascii_case(&meta.sha256) {
                return Err(DeltaError::Entry(format!(
                    "{rel}: the installed copy {} no longer has the manifest's digest",
                    from.display()
                )));
            }
            let (mut f, dest) = create_file(dir, rel)?;
            f.write_all(&bytes).map_err(io(&dest))
        }
        Held::Cached { package, entry } => {
            let (index, path) = (&package.index, &package.path);
            let e = index
                .entries
                .get(*entry)
                .filter(|e| e.size == meta.size && e.sha256.eq_ignore_ascii_case(&meta.sha256))
                .ok_or_else(|| {
                    DeltaError::Entry(format!("{rel}: not the entry held in {}", path.display()))
                })?;
            let span = molt_bundle::remote::local_span(e);
            let file = std::fs::File::open(path).map_err(io(path))?;
            let reader = std::io::BufReader::new(PositionedReader {
                file: &file,
                at: span.start,
                end: span.end,
            });
            let (f, dest) = create_file(dir, rel)?;
            let mut out = std::io::BufWriter::new(f);
            molt_bundle::remote::read_entry_from(index, e, reader, &mut out).map_err(|err| {
                DeltaError::Entry(format!(
                    "{rel}: the cached package {} no longer holds it: {err}",
                    path.display()
                ))
            })?;
            out.flush().map_err(io(&dest))
        }
    }
}

/// Reads `file` from `at` up to `end` (positioned reads: the file's own
/// offset is not used).
struct PositionedReader<'a> {
    file: &'a std::fs::File,
    at: u64,
    end: u64,
}

impl std::io::Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_sub(self.at);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.at)?;
        self.at += got as u64;
        Ok(got)
    }
}

/// Create `dir/rel` (a checked entry path) for writing.
fn create_file(dir: &Path, rel: &str) -> Result<(std::fs::File, PathBuf), DeltaError> {
    molt_bundle::container::check_entry_path(rel)
        .map_err(|reason| DeltaError::Entry(format!("{rel}: {reason}")))?;
    let dest = dir.join(rel);
    if let Some(p) = dest.parent() {
        std::fs::create_dir_all(p).map_err(io(p))?;
    }
    let f = std::fs::File::create(&dest).map_err(io(&dest))?;
    Ok((f, dest))
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

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225";
    const V2: &str = "quebec-12-09-2020__patch2-04-18-2021_05-01-2021_1130";
    const V3: &str = "rome-06-10-2021__patch0-06-20-2021_07-01-2021_0900";

    /// `n` random (incompressible) bytes.
    fn noise(n: usize) -> Vec<u8> {
        use ring::rand::SecureRandom;
        let mut b = vec![0u8; n];
        ring::rand::SystemRandom::new().fill(&mut b).unwrap();
        b
    }

    fn sha(b: &[u8]) -> String {
        hex::encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
    }

    /// The core package of `v` holding `lib/x.bin` = `body`, in bundle
    /// `format`, signed by `key`, written into `dir`.
    fn core(dir: &Path, v: &str, body: &[u8], key: &molt_bundle::SigningKey, format: u32) {
        let name = format!("molt-core.{v}.universal.universal.zip");
        let src = dir.join(format!(".src-{v}"));
        std::fs::create_dir_all(src.join("lib")).unwrap();
        std::fs::write(src.join("lib/x.bin"), body).unwrap();
        let spec = molt_bundle::PackSpec::from_buildstamp(&name, 1).unwrap();
        let out = dir.join(&name);
        molt_bundle::editor::pack_dir_format(&src, &spec, &out, format).unwrap();
        molt_bundle::sign_bundle(&out, &[key]).unwrap();
        std::fs::remove_dir_all(src).unwrap();
    }

    #[test]
    fn only_verified_cached_packages_are_sources_and_their_entries_are_checked_when_read() {
        let d = tempfile::tempdir().unwrap();
        let home = Home::new(d.path().join("home"));
        let incoming = home.incoming_dir();
        std::fs::create_dir_all(&incoming).unwrap();
        let key = molt_bundle::SigningKey::generate().unwrap().0;
        let stranger = molt_bundle::SigningKey::generate().unwrap().0;
        let expires = chrono::Utc::now() + chrono::Duration::days(30);
        let root = molt_bundle::editor::single_key_root(&key, expires).unwrap();
        let root_path = d.path().join("root.json");
        std::fs::write(&root_path, root.to_json_pretty().unwrap()).unwrap();
        let trust = deps::load_trust(&root_path, &home.state_dir()).unwrap();
        // Trusted format 2; another signer; format 1 (no manifest signature);
        // a partial download and a staging directory beside them.
        let (good, other, old) = (noise(64 << 10), noise(4096), noise(4096));
        core(&incoming, V1, &good, &key, 2);
        core(&incoming, V2, &other, &stranger, 2);
        core(&incoming, V3, &old, &key, 1);
        std::fs::write(incoming.join("molt-core.x.zip.part"), &good).unwrap();
        std::fs::create_dir_all(incoming.join("molt-core.y.zip.delta")).unwrap();

        let local = local_contents(&home, &trust);
        assert!(local.get(&sha(&other)).is_none());
        assert!(local.get(&sha(&old)).is_none());
        let held = local.get(&sha(&good)).cloned().unwrap();
        assert!(matches!(held, Held::Cached { .. }), "{held:?}");
        let meta = FileMeta {
            size: good.len() as u64,
            sha256: sha(&good).to_ascii_uppercase(),
            mode: 0o644,
        };
        let out = d.path().join("staged");
        copy_held(&out, "lib/y.bin", &held, &meta).unwrap();
        assert_eq!(std::fs::read(out.join("lib/y.bin")).unwrap(), good);

        // Asked for other content, or the cached file damaged after it was
        // indexed: refused, never written as if right.
        let wrong = FileMeta {
            sha256: sha(&other),
            ..meta.clone()
        };
        let e = copy_held(&out, "lib/z.bin", &held, &wrong).unwrap_err();
        assert!(e.to_string().contains("not the entry held in"), "{e}");
        let path = incoming.join(format!("molt-core.{V1}.universal.universal.zip"));
        let mut bytes = std::fs::read(&path).unwrap();
        let needle = &good[good.len() / 2..good.len() / 2 + 32];
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        bytes[at + 16] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let e = copy_held(&out, "lib/y.bin", &held, &meta).unwrap_err();
        assert!(e.to_string().contains("no longer holds it"), "{e}");
    }
}
