//! Ranged reads of a format-2 bundle: verify the manifest from a few HTTP
//! Range requests, then fetch and check only the entries wanted. Sync and
//! I/O-free: the caller (the agent) does the HTTP; this module only says which
//! bytes to fetch and checks what came back. Nothing the server or the central
//! directory says is trusted: a lie makes a step fail, never yields wrong bytes.
//!
//! Protocol (one package):
//! 1. Fetch the last `min(TAIL_GUESS, len)` bytes (`Range: bytes=-N`, or from
//!    `len - N`) and call [`parse_tail`]`(source, file_len, tail_offset, &tail, &limits)`.
//!    [`Tail::NeedFrom`]`(off)`: fetch again from `off` to the end and call again
//!    (only for a central directory larger than the guess). [`Tail::Ready`] gives
//!    a [`RemoteLayout`]: the end record, the central directory (checked as
//!    strictly as the whole-file reader: tiling without gaps or overlaps, names,
//!    types, limits, ratios) and the signature slot, already parsed.
//! 2. Fetch [`RemoteLayout::manifest_range`] (starts at 0; may already be in the
//!    tail: [`RemoteLayout::bytes_in_tail`]) and call [`verify_remote`] (stateless) or
//!    `TrustStore::verify_remote_as` (also the sequence/floor rule, as for whole
//!    files). A format-1 bundle fails with [`BundleError::NoManifestSignature`]:
//!    download it whole. The [`RemoteIndex`] holds the trusted manifest and every
//!    payload entry's location with the manifest's SHA-256 and size.
//! 3. Choose the entries to fetch (those whose digest is not held locally) and
//!    call [`plan_ranges`]`(&index, &paths, max_requests)`: at most `max_requests`
//!    byte ranges (half-open), nearest neighbours merged first. One multi-range
//!    request or several single ranges, as the server allows.
//! 4. For each wanted entry, [`read_entry`]`(&index, range_start, &bytes, entry)`
//!    (in memory) or [`read_entry_from`]`(&index, entry, reader, out)` (streaming: the
//!    reader starts at the entry's local header, [`local_span`]`(entry).start`):
//!    checks the local header against the central directory, inflates with the
//!    signed size as the bound and checks SHA-256 (and CRC-32).
//!
//! Bytes of metadata a delta costs: [`RemoteLayout::metadata_len`].
use std::collections::HashMap;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::buildstamp::Buildstamp;
use crate::container::{self, Eocd, LOCAL_LEN, Limits, RawEntry, SIGNATURES_PATH, SIGNATURES_SIZE};
use crate::error::BundleError;
use crate::schema::{Manifest, SignatureFileV2, SignedRoot};
use crate::verify::{EntryLocation, VerifyOptions};

/// Bytes to read from the end of a bundle first: the end record, the
/// signature entry (8 KiB) and the central directory of a bundle of ~2,500
/// entries with 60-byte names fit in it.
pub const TAIL_GUESS: u64 = 256 << 10;

/// The signature entry's local header plus data: it is the last entry, stored,
/// with a fixed name and size, so it ends exactly where the central directory starts.
const SIG_SPAN: u64 = LOCAL_LEN + SIGNATURES_PATH.len() as u64 + SIGNATURES_SIZE;

/// Result of [`parse_tail`].
#[derive(Debug)]
pub enum Tail {
    /// The tail does not reach back far enough: read from this offset to the end.
    NeedFrom(u64),
    Ready(Box<RemoteLayout>),
}

/// The structure of a remote bundle from its tail: checked, not yet trusted.
#[derive(Debug)]
pub struct RemoteLayout {
    /// Name used in errors (the URL or the package name).
    pub source: PathBuf,
    pub file_len: u64,
    pub cd_off: u64,
    pub format: u32,
    entries: Vec<RawEntry>,
    cd: Vec<u8>,
    signatures: SignatureFileV2,
    tail_offset: u64,
    tail: Vec<u8>,
    limits: Limits,
}

fn remote_err(source: &Path, reason: impl Into<String>) -> BundleError {
    BundleError::Remote {
        bundle: source.to_path_buf(),
        reason: reason.into(),
    }
}

/// Parse the last bytes of a `file_len`-byte bundle: `tail` holds the bytes
/// from `tail_offset` to the end. See the module doc.
pub fn parse_tail(
    source: &Path,
    file_len: u64,
    tail_offset: u64,
    tail: &[u8],
    limits: &Limits,
) -> Result<Tail, BundleError> {
    if tail_offset.checked_add(tail.len() as u64) != Some(file_len) {
        return Err(remote_err(
            source,
            format!(
                "{} bytes at offset {tail_offset} do not end at the file's end ({file_len} bytes)",
                tail.len()
            ),
        ));
    }
    if tail.len() < container::EOCD_LEN as usize {
        return Err(remote_err(
            source,
            "tail shorter than the end-of-central-directory record",
        ));
    }
    let eocd_bytes = &tail[tail.len() - container::EOCD_LEN as usize..];
    let eocd: Eocd = container::parse_eocd(source, file_len, eocd_bytes, limits)?;
    let need = eocd.cd_off.saturating_sub(SIG_SPAN);
    if need < tail_offset {
        return Ok(Tail::NeedFrom(need));
    }
    let at = |off: u64| (off - tail_offset) as usize;
    let cd = tail[at(eocd.cd_off)..at(eocd.cd_off + eocd.cd_size)].to_vec();
    let entries = container::parse_central_directory(source, &eocd, &cd, limits)?;
    let Some(sig) = entries.last() else {
        return Err(remote_err(source, "no entries"));
    };
    // parse_central_directory proved the signature entry is last, stored, 8 KiB
    // and tiles up to the central directory, so it starts at `need`.
    let lh = &tail[at(sig.local_off)..at(sig.data_off)];
    let rec = &cd[(sig.cd_rec_off - eocd.cd_off) as usize..];
    container::check_local_header(source, sig, lh, rec)?;
    let slot = &tail[at(sig.data_off)..at(sig.data_off + sig.csize)];
    let signatures = container::parse_signature_slot(source, slot)?;
    let format = signatures.format;
    Ok(Tail::Ready(Box::new(RemoteLayout {
        source: source.to_path_buf(),
        file_len,
        cd_off: eocd.cd_off,
        format,
        entries,
        cd,
        signatures,
        tail_offset,
        tail: tail.to_vec(),
        limits: limits.clone(),
    })))
}

impl RemoteLayout {
    /// Local header + data of `molt/manifest.json` (always starts at 0).
    pub fn manifest_range(&self) -> Range<u64> {
        let m = &self.entries[0];
        m.local_off..m.data_off + m.csize
    }

    /// The bytes of `range` if the tail already holds them (a small bundle).
    pub fn bytes_in_tail(&self, range: Range<u64>) -> Option<&[u8]> {
        if range.start < self.tail_offset || range.end > self.file_len || range.start > range.end {
            return None;
        }
        let s = (range.start - self.tail_offset) as usize;
        let e = (range.end - self.tail_offset) as usize;
        self.tail.get(s..e)
    }

    /// The manifest's bytes from its span (local header checked against the
    /// central directory, inflated within the size limit, CRC-32 checked).
    /// Not verified: [`verify_remote`] checks its signatures.
    pub fn manifest_bytes(
        &self,
        manifest_span: &[u8],
        limits: &Limits,
    ) -> Result<Vec<u8>, BundleError> {
        let src = &self.source;
        let m = &self.entries[0];
        let want = self.manifest_range();
        if manifest_span.len() as u64 != want.end - want.start {
            return Err(remote_err(
                src,
                format!(
                    "manifest span is {} bytes, expected {}",
                    manifest_span.len(),
                    want.end - want.start
                ),
            ));
        }
        let max = self.limits.max_manifest_size.min(limits.max_manifest_size);
        container::check_small(src, m, max)?;
        let hlen = (m.data_off - m.local_off) as usize;
        container::check_local_header(src, m, &manifest_span[..hlen], self.cd_record(m))?;
        container::small_entry_data(src, m, &manifest_span[hlen..], true)
    }

    /// A lower bound of the payload bytes a delta must fetch when the content
    /// `held` (by SHA-256, lowercase hex) is on this host: every payload
    /// entry's compressed size, less the largest one for each `"sha256"` of
    /// `manifest` that is held. The manifest is NOT verified here, so this is
    /// only for giving a delta up before the verification: a lie can only cost
    /// a full download, which is verified whole.
    pub fn unverified_fetch_bound(&self, manifest: &[u8], held: impl Fn(&str) -> bool) -> u64 {
        let payload = self.payload();
        let total: u64 = payload.iter().map(|e| e.csize).sum();
        let largest = payload.iter().map(|e| e.csize).max().unwrap_or(0);
        // Not UTF-8 (so not the JSON it must be): no bound, the verification decides.
        let Ok(text) = std::str::from_utf8(manifest) else {
            return 0;
        };
        let mut held_count = 0u64;
        for (at, key) in text.match_indices("\"sha256\"") {
            let rest = text[at + key.len()..].trim_start_matches([' ', '\t', '\n', '\r', ':']);
            if let Some(hex) = rest.strip_prefix('"').and_then(|r| r.get(..64))
                && held(hex)
            {
                held_count += 1;
            }
        }
        total.saturating_sub(held_count.saturating_mul(largest))
    }

    /// The payload entries: all but the manifest (first) and the signatures (last).
    fn payload(&self) -> &[RawEntry] {
        self.entries
            .get(1..self.entries.len().saturating_sub(1))
            .unwrap_or(&[])
    }

    /// Bytes a ranged reader needs before any payload: the manifest entry plus
    /// the signature entry, central directory and end record.
    pub fn metadata_len(&self) -> u64 {
        let m = self.manifest_range();
        (m.end - m.start) + (self.file_len - (self.cd_off - SIG_SPAN))
    }

    /// Number of payload entries (everything but the two `molt/` files).
    pub fn payload_len(&self) -> usize {
        self.entries.len() - 2
    }

    fn cd_record(&self, e: &RawEntry) -> &[u8] {
        &self.cd[(e.cd_rec_off - self.cd_off) as usize..]
    }
}

/// A format-2 bundle whose manifest verified: every payload entry's location
/// (from the central directory, untrusted) with its size and SHA-256 (from
/// the signed manifest, trusted).
#[derive(Debug, Clone)]
pub struct RemoteIndex {
    pub source: PathBuf,
    pub manifest: Manifest,
    pub buildstamp: Buildstamp,
    /// Hex SHA-256 of the manifest's bytes (what the manifest signatures sign).
    pub manifest_sha256: String,
    pub role: &'static str,
    /// Key ids whose manifest signatures counted.
    pub signers: Vec<String>,
    pub threshold: u32,
    pub root_version: u64,
    pub file_len: u64,
    /// Payload entries in file order. `data_offset`, `compressed_size`,
    /// `method` and `crc32` come from the central directory; `size`, `sha256`
    /// and `mode` are the manifest's.
    pub entries: Vec<EntryLocation>,
    /// Bytes of metadata read (see [`RemoteLayout::metadata_len`]).
    pub metadata_len: u64,
    raw: Vec<RawEntry>,
    cd: Vec<u8>,
    cd_off: u64,
    /// Position in `entries` (and `raw`, same order) by path: a delta looks up
    /// every entry it plans, and a scan per lookup was quadratic (2,000
    /// entries: 2 million comparisons before the decision).
    by_path: HashMap<String, usize>,
}

impl RemoteIndex {
    pub fn entry(&self, path: &str) -> Option<&EntryLocation> {
        self.by_path.get(path).map(|&i| &self.entries[i])
    }

    fn raw_of(&self, e: &EntryLocation) -> Option<&RawEntry> {
        self.by_path
            .get(e.path.as_str())
            .and_then(|&i| self.raw.get(i))
            .filter(|r| r.name == e.path && r.data_off == e.data_offset)
    }
}

/// Local header + data of an entry: what to fetch to read it.
pub fn local_span(e: &EntryLocation) -> Range<u64> {
    let local = e.data_offset - LOCAL_LEN - e.path.len() as u64;
    local..e.data_offset + e.compressed_size
}

/// Verify the manifest of a remote bundle: `manifest_span` is the bytes of
/// [`RemoteLayout::manifest_range`]. Checks, in order: the root has not
/// expired, the bundle is format 2 (else [`BundleError::NoManifestSignature`]),
/// the local header agrees with the central directory, the manifest inflates
/// within its limit and CRC, a threshold of the kind's role signed SHA-256 of
/// its bytes (same key rules as the whole-file signatures), then it parses,
/// is format 2, has not expired and agrees with the central directory entry
/// for entry (names, sizes, modes). Stateless: no sequence check (see
/// `TrustStore::verify_remote_as`).
pub fn verify_remote(
    layout: &RemoteLayout,
    manifest_span: &[u8],
    root: &SignedRoot,
    opts: &VerifyOptions,
) -> Result<RemoteIndex, BundleError> {
    check_root_and_format(layout, root, opts)?;
    let bytes = layout.manifest_bytes(manifest_span, &opts.limits)?;
    verify_manifest(layout, &bytes, root, opts)
}

/// [`verify_remote`] for a caller that already holds the manifest's bytes
/// ([`RemoteLayout::manifest_bytes`], e.g. to decide on a delta first): the
/// same checks but the inflating.
pub fn verify_remote_manifest(
    layout: &RemoteLayout,
    manifest: &[u8],
    root: &SignedRoot,
    opts: &VerifyOptions,
) -> Result<RemoteIndex, BundleError> {
    check_root_and_format(layout, root, opts)?;
    verify_manifest(layout, manifest, root, opts)
}

/// The root has not expired and the bundle is format 2.
fn check_root_and_format(
    layout: &RemoteLayout,
    root: &SignedRoot,
    opts: &VerifyOptions,
) -> Result<(), BundleError> {
    let now = opts.now.unwrap_or_else(Utc::now);
    if root.is_expired(now) {
        return Err(BundleError::RootExpired {
            version: root.signed.version,
            expires: root.signed.expires.to_rfc3339(),
        });
    }
    if layout.format < 2 {
        return Err(BundleError::NoManifestSignature {
            bundle: layout.source.clone(),
            format: layout.format,
        });
    }
    Ok(())
}

/// Signatures, then the strict parse and the agreement with the central
/// directory, of the manifest's (inflated) bytes.
fn verify_manifest(
    layout: &RemoteLayout,
    bytes: &[u8],
    root: &SignedRoot,
    opts: &VerifyOptions,
) -> Result<RemoteIndex, BundleError> {
    let src = &layout.source;
    let now = opts.now.unwrap_or_else(Utc::now);
    // Signatures before parsing: nothing unsigned reaches the JSON parser.
    // The role comes from the manifest's `kind`; read it leniently first, then
    // parse strictly once the signature holds (a wrong kind means a wrong role,
    // whose threshold the signatures then do not meet, or a kind the
    // buildstamp check refuses).
    #[derive(serde::Deserialize)]
    struct KindOnly {
        kind: crate::schema::BundleKind,
    }
    let kind: KindOnly = serde_json::from_slice(bytes).map_err(|e| BundleError::Manifest {
        bundle: src.clone(),
        reason: format!("not valid manifest JSON: {e}"),
    })?;
    let role = kind.kind.role();
    let signers = crate::verify::check_manifest_signatures(
        src,
        root,
        role,
        bytes,
        &layout.signatures.manifest_signatures,
        now,
    )?;
    let manifest = crate::verify::parse_manifest(src, bytes)?;
    crate::verify::check_formats(src, &manifest, &layout.signatures)?;
    if manifest.expires < now {
        return Err(BundleError::BundleExpired {
            bundle: src.clone(),
            name: manifest.name.clone(),
            expires: manifest.expires.to_rfc3339(),
        });
    }
    let payload = layout.payload();
    let (buildstamp, entries) = crate::verify::check_manifest(src, &manifest, payload)?;
    let digest = hex::encode(crate::verify::manifest_digest(bytes));
    tracing::info!(
        bundle = %src.display(),
        name = %manifest.name,
        buildstamp = %manifest.buildstamp,
        sequence = manifest.sequence,
        "Bundle manifest verified (ranged)"
    );
    let mut by_path = HashMap::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        by_path.entry(e.path.clone()).or_insert(i);
    }
    Ok(RemoteIndex {
        by_path,
        source: src.clone(),
        buildstamp,
        manifest_sha256: digest,
        role: role.as_str(),
        signers,
        threshold: root.signed.threshold(role),
        root_version: root.signed.version,
        file_len: layout.file_len,
        entries,
        metadata_len: layout.metadata_len(),
        raw: payload.to_vec(),
        cd: layout.cd.clone(),
        cd_off: layout.cd_off,
        manifest,
    })
}

/// Byte ranges (half-open) covering the local header and data of every entry
/// in `wanted`, at most `max_requests` of them (at least 1): touching spans
/// are joined, then the smallest gaps are filled first (fetching a few unwanted
/// bytes) until few enough remain. Empty `wanted`: no ranges.
pub fn plan_ranges(
    index: &RemoteIndex,
    wanted: &[&str],
    max_requests: usize,
) -> Result<Vec<Range<u64>>, BundleError> {
    let mut spans = Vec::with_capacity(wanted.len());
    for p in wanted {
        let Some(e) = index.entry(p) else {
            return Err(remote_err(
                &index.source,
                format!("entry `{p}` is not in the manifest"),
            ));
        };
        spans.push(local_span(e));
    }
    Ok(coalesce(spans, max_requests))
}

/// Join sorted spans into at most `max` ranges, filling the smallest gaps first.
fn coalesce(mut spans: Vec<Range<u64>>, max: usize) -> Vec<Range<u64>> {
    spans.sort_by_key(|r| (r.start, r.end));
    let mut joined: Vec<Range<u64>> = Vec::with_capacity(spans.len());
    for s in spans {
        match joined.last_mut() {
            Some(l) if s.start <= l.end => l.end = l.end.max(s.end),
            _ => joined.push(s),
        }
    }
    let max = max.max(1);
    if joined.len() <= max {
        return joined;
    }
    // Keep the (max - 1) largest gaps as splits; fill every other gap.
    let mut gaps: Vec<(u64, usize)> = joined
        .windows(2)
        .enumerate()
        .map(|(i, w)| (w[1].start - w[0].end, i))
        .collect();
    gaps.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut split = vec![false; joined.len()];
    for (_, i) in gaps.iter().take(max - 1) {
        split[*i] = true;
    }
    let mut out: Vec<Range<u64>> = Vec::with_capacity(max);
    let mut cur = joined[0].clone();
    for (i, r) in joined.iter().enumerate().skip(1) {
        if split[i - 1] {
            out.push(cur);
            cur = r.clone();
        } else {
            cur.end = r.end;
        }
    }
    out.push(cur);
    out
}

/// Read one entry from fetched bytes: `bytes` were fetched from `range_start`
/// and must cover [`local_span`]`(entry)`. Returns the content, checked.
pub fn read_entry(
    index: &RemoteIndex,
    range_start: u64,
    bytes: &[u8],
    entry: &EntryLocation,
) -> Result<Vec<u8>, BundleError> {
    let span = local_span(entry);
    let end = range_start.saturating_add(bytes.len() as u64);
    if span.start < range_start || span.end > end {
        return Err(remote_err(
            &index.source,
            format!(
                "entry `{}` ({}..{}) is not inside the fetched bytes {range_start}..{end}",
                entry.path, span.start, span.end
            ),
        ));
    }
    let s = (span.start - range_start) as usize;
    let e = (span.end - range_start) as usize;
    let mut out = Vec::with_capacity(entry.size.min(64 << 20) as usize);
    read_entry_from(index, entry, &bytes[s..e], &mut out)?;
    Ok(out)
}

/// Streaming [`read_entry`]: `span` yields the entry's bytes from its local
/// header on (at least [`local_span`]`(entry)` long; no more is read). The
/// content goes to `out` as it inflates; on error `out` may hold a prefix, which
/// the caller discards (write to a temporary file, rename on success).
pub fn read_entry_from<R: Read, W: Write>(
    index: &RemoteIndex,
    entry: &EntryLocation,
    mut span: R,
    out: &mut W,
) -> Result<(), BundleError> {
    let Some(raw) = index.raw_of(entry) else {
        return Err(remote_err(
            &index.source,
            format!("entry `{}` is not an entry of this index", entry.path),
        ));
    };
    // The manifest's size and digest are the trusted ones; the location must
    // be the central directory's this index was built from.
    let trusted = index.entry(&entry.path);
    if trusted != Some(entry) {
        return Err(remote_err(
            &index.source,
            format!("entry `{}` differs from the verified index", entry.path),
        ));
    }
    let hlen = (raw.data_off - raw.local_off) as usize;
    let mut lh = vec![0u8; hlen];
    span.read_exact(&mut lh).map_err(|e| {
        remote_err(
            &index.source,
            format!("entry `{}`: local header cut short: {e}", entry.path),
        )
    })?;
    let rec = &index.cd[(raw.cd_rec_off - index.cd_off) as usize..];
    container::check_local_header(&index.source, raw, &lh, rec)?;
    crate::verify::copy_checked(span, &index.source, entry, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::editor::{PackSpec, ZipWriter, pack_dir, pack_dir_format, sign_bundle};
    use crate::keys::SigningKey;
    use crate::schema::{Signature, SignatureFile};
    use crate::verify::verify_bundle;
    use crate::{MANIFEST_PATH, TrustStore};

    const CORE: &str =
        "molt-core.vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815.universal.universal.zip";

    // The crate's own test fixtures: a one-key root, a temp dir, small bundles.
    use crate::testing::noise;
    use crate::tests::{Fx, accepted_flips, fx, set_slot_format, tiny_bundle};

    /// Files of the test tree: stored (noise) and deflated (text) entries.
    fn tree(fx: &Fx, n: usize) -> std::path::PathBuf {
        let src = fx.dir.path().join(format!("src{n}"));
        std::fs::create_dir_all(src.join("lib")).unwrap();
        for i in 0..n {
            std::fs::write(
                src.join(format!("lib/bin-{i:03}.dat")),
                noise(i as u64, 700 + i),
            )
            .unwrap();
            std::fs::write(
                src.join(format!("lib/text-{i:03}.txt")),
                format!("line {i} of a compressible text file\n").repeat(40),
            )
            .unwrap();
        }
        src
    }

    fn bundle(fx: &Fx, n: usize, format: u32, seq: u64) -> Vec<u8> {
        let src = tree(fx, n);
        let out = fx.dir.path().join(format!("b{n}-{format}-{seq}.zip"));
        pack_dir_format(
            &src,
            &PackSpec::from_buildstamp(CORE, seq).unwrap(),
            &out,
            format,
        )
        .unwrap();
        sign_bundle(&out, &[&fx.key]).unwrap();
        std::fs::read(out).unwrap()
    }

    fn src() -> &'static Path {
        Path::new("http://127.0.0.1/packages/core.zip")
    }

    /// Steps 1 and 2 of the protocol over an in-memory file, reading the tail
    /// `guess` bytes at a time as an agent would.
    fn layout_of(file: &[u8], guess: u64) -> Result<RemoteLayout, BundleError> {
        let len = file.len() as u64;
        let mut from = len.saturating_sub(guess);
        loop {
            match parse_tail(src(), len, from, &file[from as usize..], &Limits::default())? {
                Tail::NeedFrom(off) => {
                    assert!(off < from, "NeedFrom must move back");
                    from = off;
                }
                Tail::Ready(l) => return Ok(*l),
            }
        }
    }

    #[test]
    fn the_unverified_fetch_bound_never_exceeds_what_a_delta_fetches() {
        let fx = fx();
        let file = bundle(&fx, 20, 2, 1);
        let l = layout_of(&file, TAIL_GUESS).unwrap();
        let r = l.manifest_range();
        let m = l
            .manifest_bytes(&file[r.start as usize..r.end as usize], &Limits::default())
            .unwrap();
        let idx = index_of(&file, &fx.root).unwrap();
        let total: u64 = idx.entries.iter().map(|e| e.compressed_size).sum();
        // Nothing held: every entry must be fetched.
        assert_eq!(l.unverified_fetch_bound(&m, |_| false), total);
        // Some held: the bound stays at or below what the wanted entries cost.
        let held: Vec<&str> = idx
            .entries
            .iter()
            .step_by(3)
            .map(|e| e.sha256.as_str())
            .collect();
        let wanted: u64 = idx
            .entries
            .iter()
            .filter(|e| !held.contains(&e.sha256.as_str()))
            .map(|e| e.compressed_size)
            .sum();
        let bound = l.unverified_fetch_bound(&m, |h| held.contains(&h));
        assert!(bound <= wanted, "bound {bound} > wanted {wanted}");
        assert!(bound < total);
        // Everything held: nothing to fetch.
        assert_eq!(l.unverified_fetch_bound(&m, |_| true), 0);
        // Not UTF-8: no bound.
        assert_eq!(l.unverified_fetch_bound(&[0xff, 0xfe], |_| false), 0);
    }

    fn index_of(file: &[u8], root: &SignedRoot) -> Result<RemoteIndex, BundleError> {
        let l = layout_of(file, TAIL_GUESS)?;
        let r = l.manifest_range();
        verify_remote(
            &l,
            &file[r.start as usize..r.end as usize],
            root,
            &VerifyOptions::default(),
        )
    }

    fn err<T: std::fmt::Debug>(r: Result<T, BundleError>) -> BundleError {
        match r {
            Ok(v) => panic!("accepted, expected a refusal: {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn v2_round_trip_reads_only_the_wanted_entries_and_checks_them() {
        let fx = fx();
        let file = bundle(&fx, 20, 2, 1);
        // The whole-file verifier accepts it (both signatures).
        let path = fx.dir.path().join("b20-2-1.zip");
        let v = verify_bundle(&path, &fx.root, &VerifyOptions::default()).unwrap();
        assert_eq!(v.format, 2);
        // A small first read forces NeedFrom; the result is the same.
        let small = layout_of(&file, 100).unwrap();
        let l = layout_of(&file, TAIL_GUESS).unwrap();
        assert_eq!(small.entries.len(), l.entries.len());
        assert_eq!(l.format, 2);
        assert_eq!(l.payload_len(), 40);
        assert!(l.metadata_len() < file.len() as u64);
        let idx = index_of(&file, &fx.root).unwrap();
        assert_eq!(idx.entries.len(), 40);
        assert_eq!(idx.signers, vec![fx.key.key_id().to_string()]);
        // Every entry read back from a span equals the file on disk.
        for e in &idx.entries {
            let s = local_span(e);
            let got =
                read_entry(&idx, s.start, &file[s.start as usize..s.end as usize], e).unwrap();
            let want = std::fs::read(fx.dir.path().join("src20").join(&e.path)).unwrap();
            assert_eq!(got, want, "{}", e.path);
        }
        // Three entries far apart, at most 2 requests: the two nearest merge.
        let wanted = ["lib/bin-000.dat", "lib/bin-001.dat", "lib/text-019.txt"];
        let ranges = plan_ranges(&idx, &wanted, 2).unwrap();
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        for p in wanted {
            let e = idx.entry(p).unwrap();
            let r = ranges
                .iter()
                .find(|r| r.start <= local_span(e).start && local_span(e).end <= r.end)
                .expect("covered");
            let got =
                read_entry(&idx, r.start, &file[r.start as usize..r.end as usize], e).unwrap();
            assert_eq!(
                got,
                std::fs::read(fx.dir.path().join("src20").join(p)).unwrap()
            );
        }
        // Streaming variant.
        let e = idx.entry("lib/text-005.txt").unwrap();
        let s = local_span(e);
        let mut out = Vec::new();
        read_entry_from(&idx, e, &file[s.start as usize..], &mut out).unwrap();
        assert_eq!(out.len() as u64, e.size);
        assert!(plan_ranges(&idx, &["nope"], 8).is_err());
        assert!(plan_ranges(&idx, &[], 8).unwrap().is_empty());
    }

    #[test]
    fn coalescing_fills_the_smallest_gaps_first() {
        let r = coalesce(vec![100..110, 0..10, 10..20, 30..40, 111..120, 500..510], 3);
        assert_eq!(r, vec![0..40, 100..120, 500..510]);
        let r = coalesce(vec![0..10, 30..40, 100..110], 1);
        assert_eq!(r, vec![0..110]);
        let r = coalesce(vec![0..10, 30..40], 8);
        assert_eq!(r, vec![0..10, 30..40]);
        // 2,000 scattered spans into 8 requests.
        let many: Vec<Range<u64>> = (0..2000u64).map(|i| i * 100..i * 100 + 50).collect();
        assert_eq!(coalesce(many, 8).len(), 8);
    }

    #[test]
    fn a_v1_bundle_still_verifies_whole_and_says_no_manifest_signature_ranged() {
        let fx = fx();
        let file = bundle(&fx, 3, 1, 1);
        let path = fx.dir.path().join("b3-1-1.zip");
        let v = verify_bundle(&path, &fx.root, &VerifyOptions::default()).unwrap();
        assert_eq!(v.format, 1);
        let e = err(index_of(&file, &fx.root));
        assert!(
            matches!(e, BundleError::NoManifestSignature { format: 1, .. }),
            "{e}"
        );
        // A v1 signature slot carries no `manifest_signatures` key at all (the
        // bytes v1 writers produced).
        assert!(!file.windows(19).any(|w| w == b"manifest_signatures"));
    }

    #[test]
    fn every_flipped_byte_of_a_v1_bundle_is_still_refused() {
        let fx = fx();
        let orig = std::fs::read(tiny_bundle(&fx, 1)).unwrap();
        let accepted = accepted_flips(&fx, &orig);
        assert!(accepted.is_empty(), "accepted: {accepted:?}");
    }

    #[test]
    fn a_newer_format_is_refused_ranged_with_the_whole_file_message() {
        let fx = fx();
        let mut file = bundle(&fx, 3, 2, 1);
        set_slot_format(&mut file, b'3');
        let e = err(layout_of(&file, TAIL_GUESS));
        assert!(
            matches!(e, BundleError::FormatTooNew { format: 3, .. }),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("bundle format 3 is newer than this molt understands (1 or 2)"),
            "{e}"
        );
    }

    /// Rebuild a bundle from `file` with its manifest replaced by `manifest`
    /// (zip-consistent: new CRC, sizes, offsets) and the signature slot copied
    /// verbatim: what a forger without the key can make.
    fn with_manifest(fx: &Fx, file: &[u8], manifest: &[u8], slot: &[u8]) -> Vec<u8> {
        let l = layout_of(file, file.len() as u64).unwrap();
        let out = fx.dir.path().join(format!("forged-{}.zip", manifest.len()));
        let mut w = ZipWriter::create(&out).unwrap();
        w.add_bytes(MANIFEST_PATH, manifest, true, 0o100644)
            .unwrap();
        for e in &l.entries[1..l.entries.len() - 1] {
            let raw = &file[e.data_off as usize..(e.data_off + e.csize) as usize];
            w.add_raw(&e.name, e.method, e.crc, raw, e.usize as u32, e.unix_mode)
                .unwrap();
        }
        w.add_raw(
            SIGNATURES_PATH,
            0,
            crc32fast::hash(slot),
            slot,
            slot.len() as u32,
            0o100644,
        )
        .unwrap();
        w.finish().unwrap();
        std::fs::read(out).unwrap()
    }

    fn manifest_and_slot(file: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let l = layout_of(file, file.len() as u64).unwrap();
        let r = l.manifest_range();
        let m = &l.entries[0];
        let raw = &file[(r.start + (m.data_off - m.local_off)) as usize..r.end as usize];
        let mut json = Vec::new();
        flate2::read::DeflateDecoder::new(raw)
            .read_to_end(&mut json)
            .unwrap();
        let s = l.entries.last().unwrap();
        let slot = file[s.data_off as usize..(s.data_off + s.csize) as usize].to_vec();
        (json, slot)
    }

    #[test]
    fn a_tampered_manifest_is_refused_by_its_signature() {
        let fx = fx();
        let file = bundle(&fx, 3, 2, 1);
        let (json, slot) = manifest_and_slot(&file);
        // The unchanged manifest rebuilt this way passes: the forgery below
        // fails only because of the edit.
        index_of(&with_manifest(&fx, &file, &json, &slot), &fx.root).unwrap();
        let mut m: Manifest = serde_json::from_slice(&json).unwrap();
        m.entries[0].sha256 = "0".repeat(64);
        let forged = with_manifest(&fx, &file, &serde_json::to_vec_pretty(&m).unwrap(), &slot);
        let e = err(index_of(&forged, &fx.root));
        assert!(matches!(e, BundleError::ManifestThreshold { .. }), "{e}");
        assert!(e.to_string().contains("bad signature"), "{e}");
        // A downgraded format field in the manifest: the same refusal.
        let mut m: Manifest = serde_json::from_slice(&json).unwrap();
        m.format = 1;
        let forged = with_manifest(&fx, &file, &serde_json::to_vec_pretty(&m).unwrap(), &slot);
        let e = err(index_of(&forged, &fx.root));
        assert!(matches!(e, BundleError::ManifestThreshold { .. }), "{e}");
    }

    #[test]
    fn a_signature_over_a_different_manifest_is_refused() {
        let fx = fx();
        let a = bundle(&fx, 3, 2, 1);
        let b = bundle(&fx, 3, 2, 2);
        let (json_b, _) = manifest_and_slot(&b);
        let (_, slot_a) = manifest_and_slot(&a);
        let forged = with_manifest(&fx, &b, &json_b, &slot_a);
        let e = err(index_of(&forged, &fx.root));
        assert!(matches!(e, BundleError::ManifestThreshold { .. }), "{e}");
    }

    #[test]
    fn a_downgraded_signature_slot_is_refused_ranged_and_whole() {
        let fx = fx();
        let file = bundle(&fx, 3, 2, 1);
        let (json, slot) = manifest_and_slot(&file);
        let v2 = crate::container::parse_signature_slot(src(), &slot).unwrap();
        let v1_slot = crate::container::signature_slot(&SignatureFile {
            format: 1,
            signatures: v2.signatures.clone(),
        })
        .unwrap();
        let forged = with_manifest(&fx, &file, &json, &v1_slot);
        // Ranged: no manifest signature, so no delta (the agent downloads it whole)...
        let e = err(index_of(&forged, &fx.root));
        assert!(matches!(e, BundleError::NoManifestSignature { .. }), "{e}");
        // ...and whole: the v2 manifest with a v1 slot is refused.
        let p = fx.dir.path().join("downgraded.zip");
        std::fs::write(&p, &forged).unwrap();
        let e = err(verify_bundle(&p, &fx.root, &VerifyOptions::default()));
        assert!(e.to_string().contains("downgraded or mixed formats"), "{e}");
        // Manifest signatures by a key the root does not know do not count.
        let other = SigningKey::generate().unwrap().0;
        let mut bad = v2.clone();
        bad.manifest_signatures = vec![Signature {
            keyid: other.key_id().to_string(),
            sig: hex::encode(other.sign(
                crate::keys::MANIFEST_SIG_CONTEXT_V2,
                &crate::verify::manifest_digest(&json),
            )),
        }];
        let slot = crate::container::signature_slot_any(&bad).unwrap();
        let forged = with_manifest(&fx, &file, &json, &slot);
        let e = err(index_of(&forged, &fx.root));
        assert!(e.to_string().contains("unknown key"), "{e}");
        // Whole: the same file with its own slot verifies (the rebuild is
        // byte-identical outside the slot), with those manifest signatures not.
        let p = fx.dir.path().join("rebuilt.zip");
        std::fs::write(&p, with_manifest(&fx, &file, &json, &slot_of(&v2))).unwrap();
        verify_bundle(&p, &fx.root, &VerifyOptions::default()).unwrap();
        std::fs::write(&p, &forged).unwrap();
        let e = err(verify_bundle(&p, &fx.root, &VerifyOptions::default()));
        assert!(matches!(e, BundleError::ManifestThreshold { .. }), "{e}");
        // A whole-file signature is not a manifest signature (domain separation).
        let mut swapped = v2.clone();
        swapped.manifest_signatures = v2.signatures.clone();
        let slot = crate::container::signature_slot_any(&swapped).unwrap();
        let e = err(index_of(&with_manifest(&fx, &file, &json, &slot), &fx.root));
        assert!(matches!(e, BundleError::ManifestThreshold { .. }), "{e}");
    }

    fn slot_of(s: &SignatureFileV2) -> Vec<u8> {
        crate::container::signature_slot_any(s).unwrap()
    }

    /// Overwrite a little-endian u32 at `at`.
    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn a_lying_central_directory_or_server_never_yields_wrong_bytes() {
        let fx = fx();
        let file = bundle(&fx, 4, 2, 1);
        let idx = index_of(&file, &fx.root).unwrap();
        let l = layout_of(&file, TAIL_GUESS).unwrap();
        // An offset moved in the central directory: the tiling check refuses it.
        let e1 = &l.entries[2];
        let mut m = file.clone();
        put32(
            &mut m,
            (e1.cd_rec_off + 42) as usize,
            (e1.local_off + 1) as u32,
        );
        let e = err(layout_of(&m, TAIL_GUESS));
        assert!(
            e.to_string().contains("unlisted data") || e.to_string().contains("overlaps"),
            "{e}"
        );
        // A size in the central directory: the manifest disagrees.
        let mut m = file.clone();
        put32(&mut m, (e1.cd_rec_off + 24) as usize, (e1.usize + 1) as u32);
        let e = err(index_of(&m, &fx.root));
        assert!(
            matches!(
                e,
                BundleError::SizeMismatch { .. } | BundleError::Container { .. }
            ),
            "{e}"
        );
        // The CRC in both headers changed consistently: the layout and
        // manifest pass, the entry does not.
        let mut m = file.clone();
        let crc = e1.crc ^ 1;
        put32(&mut m, (e1.cd_rec_off + 16) as usize, crc);
        put32(&mut m, (e1.local_off + 14) as usize, crc);
        let lidx = index_of(&m, &fx.root).unwrap();
        let le = lidx.entry(&e1.name).unwrap();
        let s = local_span(le);
        let e = err(read_entry(
            &lidx,
            s.start,
            &m[s.start as usize..s.end as usize],
            le,
        ));
        assert!(e.to_string().contains("CRC-32"), "{e}");
        // Entry data swapped for other bytes of the same length (stored noise).
        let bin = idx.entry("lib/bin-001.dat").unwrap();
        let s = local_span(bin);
        let mut m = file.clone();
        m[bin.data_offset as usize] ^= 0x55;
        let e = err(read_entry(
            &idx,
            s.start,
            &m[s.start as usize..s.end as usize],
            bin,
        ));
        assert!(matches!(e, BundleError::DigestMismatch { .. }), "{e}");
        // A server answering with another range: another entry's header.
        let other = idx.entry("lib/bin-002.dat").unwrap();
        let o = local_span(other);
        let e = err(read_entry(
            &idx,
            s.start,
            &file[o.start as usize..o.end as usize],
            bin,
        ));
        assert!(e.to_string().contains("local header"), "{e}");
        // Shifted by one byte.
        let e = err(read_entry(
            &idx,
            s.start,
            &file[s.start as usize + 1..s.end as usize + 1],
            bin,
        ));
        assert!(e.to_string().contains("local header"), "{e}");
        // Too short.
        let e = err(read_entry(
            &idx,
            s.start,
            &file[s.start as usize..s.end as usize - 1],
            bin,
        ));
        assert!(
            e.to_string().contains("not inside the fetched bytes"),
            "{e}"
        );
        // A deflated entry whose method the server flips to stored in both
        // headers: refused, never written wrongly.
        let txt = l
            .entries
            .iter()
            .find(|e| e.name == "lib/text-001.txt")
            .unwrap();
        assert_eq!(txt.method, container::METHOD_DEFLATED);
        let mut m = file.clone();
        m[(txt.cd_rec_off + 10) as usize] = 0;
        m[(txt.local_off + 8) as usize] = 0;
        let e = err(index_of(&m, &fx.root));
        assert!(matches!(e, BundleError::SizeMismatch { .. }), "{e}");
        // A tail that is not the file's end.
        let e = err(parse_tail(
            src(),
            file.len() as u64,
            10,
            &file[10..20],
            &Limits::default(),
        ));
        assert!(matches!(e, BundleError::Remote { .. }), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// Random byte changes anywhere in the file: the ranged pipeline never
        /// panics, and whatever it yields is the packed content.
        #[test]
        fn random_changes_never_yield_wrong_bytes(
            edits in proptest::collection::vec((0usize..1_000_000, proptest::prelude::any::<u8>()), 1..5)
        ) {
            static FX: std::sync::OnceLock<(Fx, Vec<u8>)> = std::sync::OnceLock::new();
            let (fx, file) = FX.get_or_init(|| {
                let fx = fx();
                let file = bundle(&fx, 3, 2, 1);
                (fx, file)
            });
            let mut m = file.clone();
            for (at, v) in &edits {
                let i = at % m.len();
                m[i] = *v;
            }
            if let Ok(idx) = index_of(&m, &fx.root) {
                for e in &idx.entries {
                    let s = local_span(e);
                    let (a, b) = (s.start as usize, (s.end as usize).min(m.len()));
                    if let Ok(got) = read_entry(&idx, s.start, &m[a..b], e) {
                        let want = std::fs::read(fx.dir.path().join("src3").join(&e.path)).unwrap();
                        proptest::prop_assert_eq!(got, want);
                    }
                }
            }
        }
    }

    #[test]
    fn the_trust_store_applies_the_sequence_rule_to_ranged_reads() {
        let fx = fx();
        let state = fx.dir.path().join("state");
        let mut store = TrustStore::open_or_init(&state, &fx.root).unwrap();
        let two = bundle(&fx, 2, 2, 2);
        let one = bundle(&fx, 2, 2, 1);
        for (file, ok) in [(&two, true), (&one, false)] {
            let l = layout_of(file, TAIL_GUESS).unwrap();
            let r = l.manifest_range();
            let got = store.verify_remote_as(
                &l,
                &file[r.start as usize..r.end as usize],
                &VerifyOptions::default(),
                crate::Accept::Newer,
            );
            assert_eq!(got.is_ok(), ok, "{:?}", got.err());
        }
        assert_eq!(store.highest_sequence("molt-core"), Some(2));
        // pack_dir writes format 2 by default.
        let out = fx.dir.path().join("default.zip");
        let m = pack_dir(
            &tree(&fx, 1),
            &PackSpec::from_buildstamp(CORE, 3).unwrap(),
            &out,
        )
        .unwrap();
        assert_eq!(m.format, 2);
    }
}
