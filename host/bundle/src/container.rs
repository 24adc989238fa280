//! The zip container of bundle formats v1 and v2 (the same zip subset): a strict reader of the subset Molt
//! writes (no zip64, no data descriptors, no extra fields, no comments, no
//! gaps), and the streaming whole-file digest with the signature slot zeroed.
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{BundleError, PathError};
use crate::schema::{SignatureFile, SignatureFileV2};

pub const LOCAL_SIG: u32 = 0x0403_4b50;
pub const CD_SIG: u32 = 0x0201_4b50;
pub const EOCD_SIG: u32 = 0x0605_4b50;
pub const LOCAL_LEN: u64 = 30;
pub const CD_LEN: usize = 46;
pub const EOCD_LEN: u64 = 22;

pub const MANIFEST_PATH: &str = "molt/manifest.json";
pub const SIGNATURES_PATH: &str = "molt/signatures.json";
/// The signature slot: a stored entry of exactly this many bytes (JSON padded with spaces).
pub const SIGNATURES_SIZE: u64 = 8192;
/// Longest entry name accepted.
pub const MAX_NAME: usize = 1024;

/// Bundle formats this build reads, oldest first; the last is the newest
/// (`editor::PACK_FORMAT` writes it).
pub const FORMATS: [u32; 2] = [1, 2];

/// The one check of a bundle's format number (manifest or signature slot,
/// whole-file or ranged): a known one is returned; a newer one is
/// [`BundleError::FormatTooNew`], which tells the operator what to do; any
/// other is `invalid("format N (expected 1 or 2)")`.
pub fn check_format(
    path: &Path,
    format: u64,
    invalid: impl FnOnce(String) -> BundleError,
) -> Result<u32, BundleError> {
    match FORMATS.iter().find(|f| u64::from(**f) == format) {
        Some(f) => Ok(*f),
        None if format > u64::from(FORMATS[FORMATS.len() - 1]) => Err(BundleError::FormatTooNew {
            bundle: path.to_path_buf(),
            format,
        }),
        None => Err(invalid(format!(
            "format {format} (expected {})",
            crate::error::known_formats()
        ))),
    }
}

/// Read the `format` field of a JSON document (manifest or signature slot)
/// leniently and [`check_format`] it before anything else, so a newer molt's
/// document is reported as newer, not as an unknown field. `doc` names the
/// document in a JSON error (`not valid {doc}: ...`).
pub fn read_format(
    path: &Path,
    json: &[u8],
    doc: &str,
    invalid: impl Fn(String) -> BundleError,
) -> Result<u32, BundleError> {
    #[derive(serde::Deserialize)]
    struct FormatOnly {
        format: u64,
    }
    let f: FormatOnly =
        serde_json::from_slice(json).map_err(|e| invalid(format!("not valid {doc}: {e}")))?;
    check_format(path, f.format, invalid)
}

pub const METHOD_STORED: u16 = 0;
pub const METHOD_DEFLATED: u16 = 8;
pub const FLAG_UTF8: u16 = 0x0800;

/// Limits that make verification safe on hostile input. The defaults fit the
/// largest real package comfortably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Entries in the zip, including the two `molt/` files.
    pub max_entries: u64,
    /// Sum of the uncompressed sizes.
    pub max_total_size: u64,
    /// Uncompressed/compressed ratio above which an entry is refused...
    pub max_ratio: u64,
    /// ...unless it is smaller than this (tiny, highly compressible files are normal).
    pub ratio_exempt_below: u64,
    /// Largest `molt/manifest.json`, compressed or not.
    pub max_manifest_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 50_000,
            max_total_size: 4 << 30,
            max_ratio: 200,
            ratio_exempt_below: 1 << 20,
            max_manifest_size: 16 << 20,
        }
    }
}

/// One entry as the central directory and its local header (which must agree) describe it.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: String,
    pub method: u16,
    pub crc: u32,
    pub csize: u64,
    pub usize: u64,
    /// Unix `st_mode` from the external attributes (0 when not a unix entry).
    pub unix_mode: u32,
    pub local_off: u64,
    pub data_off: u64,
    /// Offset of this entry's central directory record in the file.
    pub cd_rec_off: u64,
}

/// The parsed structure of a bundle file, plus copies of the bytes that were
/// parsed so the digest pass can prove it hashed exactly those bytes.
#[derive(Debug)]
pub struct Layout {
    pub file_len: u64,
    pub cd_off: u64,
    /// In file order: manifest first, signatures last.
    pub entries: Vec<RawEntry>,
    /// (offset, bytes) regions already parsed; re-compared during hashing.
    pub parsed: Vec<(u64, Vec<u8>)>,
}

impl Layout {
    pub fn manifest(&self) -> &RawEntry {
        &self.entries[0]
    }
    pub fn signatures(&self) -> &RawEntry {
        &self.entries[self.entries.len() - 1]
    }
    /// Payload entries (everything but the two `molt/` files).
    pub fn payload(&self) -> &[RawEntry] {
        &self.entries[1..self.entries.len() - 1]
    }
    /// Byte ranges replaced by zeros in the signed digest: the signature
    /// entry's data and the two CRC-32 fields that describe it.
    pub fn zeroed_ranges(&self) -> [(u64, u64); 3] {
        let s = self.signatures();
        [
            (s.local_off + 14, 4),
            (s.data_off, SIGNATURES_SIZE),
            (s.cd_rec_off + 16, 4),
        ]
    }
}

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Is this a path we are willing to create under a destination directory?
pub fn check_entry_path(name: &str) -> Result<(), PathError> {
    if name.is_empty() {
        return Err(PathError::Empty);
    }
    if name.len() > MAX_NAME {
        return Err(PathError::TooLong { max: MAX_NAME });
    }
    if name.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if name.contains('\\') {
        return Err(PathError::Backslash);
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(PathError::Control);
    }
    if name.ends_with('/') {
        return Err(PathError::Directory);
    }
    if name.len() >= 2 && name.as_bytes()[1] == b':' {
        return Err(PathError::DriveLetter);
    }
    for comp in name.split('/') {
        match comp {
            ".." => return Err(PathError::DotDot),
            "." => return Err(PathError::Dot),
            "" => return Err(PathError::EmptyComponent),
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn read_at(
    file: &File,
    path: &Path,
    off: u64,
    len: u64,
) -> Result<Vec<u8>, BundleError> {
    let n = usize::try_from(len).map_err(|_| container(path, "region too large"))?;
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, off).map_err(|e| {
        container(
            path,
            format!("cannot read {len} bytes at offset {off}: {e}"),
        )
    })?;
    Ok(buf)
}

fn container(path: &Path, reason: impl Into<String>) -> BundleError {
    BundleError::Container {
        bundle: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn entry_err(path: &Path, entry: &str, reason: impl Into<String>) -> BundleError {
    BundleError::Entry {
        bundle: path.to_path_buf(),
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

/// What the end record says about the central directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eocd {
    pub cd_off: u64,
    pub cd_size: u64,
    pub count: u64,
}

/// Check the 22-byte end record of a `file_len`-byte file (shared by the
/// whole-file reader and the ranged reader in [`crate::remote`]).
pub fn parse_eocd(
    path: &Path,
    file_len: u64,
    eocd: &[u8],
    limits: &Limits,
) -> Result<Eocd, BundleError> {
    if file_len < EOCD_LEN || eocd.len() as u64 != EOCD_LEN {
        return Err(container(
            path,
            format!("file is {file_len} bytes, too short for a zip"),
        ));
    }
    if file_len > u64::from(u32::MAX) {
        return Err(container(
            path,
            "file larger than 4 GiB (zip64 is not supported)",
        ));
    }
    let eocd_off = file_len - EOCD_LEN;
    if u32le(eocd, 0) != EOCD_SIG {
        return Err(container(
            path,
            "no end-of-central-directory record at the end of the file (trailing data or an archive comment?)",
        ));
    }
    if u16le(eocd, 20) != 0 {
        return Err(container(path, "archive comments are not allowed"));
    }
    let (disk, cd_disk, n_disk, n_total) = (
        u16le(eocd, 4),
        u16le(eocd, 6),
        u16le(eocd, 8),
        u16le(eocd, 10),
    );
    if disk != 0 || cd_disk != 0 || n_disk != n_total {
        return Err(container(path, "multi-disk archives are not allowed"));
    }
    let cd_size = u64::from(u32le(eocd, 12));
    let cd_off = u64::from(u32le(eocd, 16));
    if n_total == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_off == 0xFFFF_FFFF {
        return Err(container(path, "zip64 archives are not allowed"));
    }
    let count = u64::from(n_total);
    if count > limits.max_entries {
        return Err(BundleError::TooManyEntries {
            bundle: path.to_path_buf(),
            count,
            limit: limits.max_entries,
        });
    }
    if count < 2 {
        return Err(container(
            path,
            format!(
                "{count} entries; a bundle has at least molt/manifest.json and molt/signatures.json"
            ),
        ));
    }
    if cd_off.checked_add(cd_size) != Some(eocd_off) {
        return Err(container(
            path,
            format!(
                "central directory ({cd_size} bytes at {cd_off}) does not end where the end record starts ({eocd_off}): data between them"
            ),
        ));
    }
    if cd_size > count * (CD_LEN as u64 + MAX_NAME as u64) {
        return Err(container(
            path,
            "central directory larger than its entries can need",
        ));
    }
    Ok(Eocd {
        cd_off,
        cd_size,
        count,
    })
}

/// Parse and check the central directory (`cd`, found at `eocd.cd_off`):
/// every record, name and attribute rule, then that the entries tile the file
/// from offset 0 to the central directory (computed from the records alone:
/// local headers have no extra fields, so a header is `30 + name` bytes),
/// the `molt/` entries first and last, and the size and ratio limits.
/// `data_off` of each entry is where its data must start.
pub fn parse_central_directory(
    path: &Path,
    eocd: &Eocd,
    cd: &[u8],
    limits: &Limits,
) -> Result<Vec<RawEntry>, BundleError> {
    let (cd_off, cd_size, count) = (eocd.cd_off, eocd.cd_size, eocd.count);
    if cd.len() as u64 != cd_size {
        return Err(container(path, "central directory truncated"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut names = BTreeSet::new();
    let mut pos = 0usize;
    for i in 0..count {
        let rec_off = cd_off + pos as u64;
        let Some(h) = cd.get(pos..pos + CD_LEN) else {
            return Err(container(
                path,
                format!("central directory truncated at record {i}"),
            ));
        };
        if u32le(h, 0) != CD_SIG {
            return Err(container(
                path,
                format!("bad central directory record signature at offset {rec_off}"),
            ));
        }
        let ver_made = u16le(h, 4);
        let flags = u16le(h, 8);
        let method = u16le(h, 10);
        let crc = u32le(h, 16);
        let csize = u32le(h, 20);
        let usize_ = u32le(h, 24);
        let name_len = u16le(h, 28) as usize;
        let extra_len = u16le(h, 30);
        let comment_len = u16le(h, 32);
        let disk_start = u16le(h, 34);
        let ext_attr = u32le(h, 38);
        let local_off = u32le(h, 42);
        let Some(name_bytes) = cd.get(pos + CD_LEN..pos + CD_LEN + name_len) else {
            return Err(container(
                path,
                format!("central directory truncated in the name of record {i}"),
            ));
        };
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        if std::str::from_utf8(name_bytes).is_err() {
            return Err(entry_err(path, &name, "name is not valid UTF-8"));
        }
        pos += CD_LEN + name_len;
        if flags & 0x0001 != 0 || flags & 0x0040 != 0 {
            return Err(entry_err(path, &name, "encrypted entries are not allowed"));
        }
        if flags & 0x0008 != 0 {
            return Err(entry_err(path, &name, "data descriptors are not allowed"));
        }
        if flags & !FLAG_UTF8 != 0 {
            return Err(entry_err(
                path,
                &name,
                format!("unsupported general purpose flags {flags:#06x}"),
            ));
        }
        if method != METHOD_STORED && method != METHOD_DEFLATED {
            return Err(entry_err(
                path,
                &name,
                format!("unsupported compression method {method} (only stored and deflate)"),
            ));
        }
        if csize == 0xFFFF_FFFF || usize_ == 0xFFFF_FFFF || local_off == 0xFFFF_FFFF {
            return Err(entry_err(path, &name, "zip64 entries are not allowed"));
        }
        if extra_len != 0 {
            return Err(entry_err(path, &name, "extra fields are not allowed"));
        }
        if comment_len != 0 {
            return Err(entry_err(path, &name, "entry comments are not allowed"));
        }
        if disk_start != 0 {
            return Err(entry_err(path, &name, "multi-disk entries are not allowed"));
        }
        check_entry_path(&name).map_err(|r| entry_err(path, &name, r.to_string()))?;
        let unix_mode = if ver_made >> 8 == 3 {
            ext_attr >> 16
        } else {
            0
        };
        match unix_mode & 0o170000 {
            0 | 0o100000 => {}
            0o120000 => return Err(entry_err(path, &name, "symlinks are not allowed")),
            0o040000 => {
                return Err(entry_err(
                    path,
                    &name,
                    "directory entry (bundles hold files only)",
                ));
            }
            t => {
                return Err(entry_err(
                    path,
                    &name,
                    format!("special file (type {t:#o}) is not allowed"),
                ));
            }
        }
        if ext_attr & 0x10 != 0 {
            return Err(entry_err(
                path,
                &name,
                "directory entry (bundles hold files only)",
            ));
        }
        if !names.insert(name.clone()) {
            return Err(BundleError::Duplicate {
                bundle: path.to_path_buf(),
                entry: name,
            });
        }
        if method == METHOD_STORED && csize != usize_ {
            return Err(BundleError::SizeMismatch {
                bundle: path.to_path_buf(),
                entry: name,
                declared: u64::from(usize_),
                actual_what: "stored data is",
                actual: u64::from(csize),
            });
        }
        entries.push(RawEntry {
            name,
            method,
            crc,
            csize: u64::from(csize),
            usize: u64::from(usize_),
            unix_mode,
            local_off: u64::from(local_off),
            data_off: 0,
            cd_rec_off: rec_off,
        });
    }
    if pos as u64 != cd_size {
        return Err(container(
            path,
            "central directory has bytes after its last record",
        ));
    }

    // Entries must tile the file from offset 0 to the central directory, in
    // central-directory order.
    let mut expected = 0u64;
    for e in entries.iter_mut() {
        if e.local_off != expected {
            return Err(if e.local_off > expected {
                container(
                    path,
                    format!(
                        "{} bytes of unlisted data at offset {expected} (before `{}`)",
                        e.local_off - expected,
                        e.name
                    ),
                )
            } else {
                container(
                    path,
                    format!(
                        "entry `{}` overlaps the previous entry or is out of order",
                        e.name
                    ),
                )
            });
        }
        let hlen = LOCAL_LEN + e.name.len() as u64;
        if e.local_off + hlen > cd_off {
            return Err(entry_err(
                path,
                &e.name,
                "local header runs into the central directory",
            ));
        }
        e.data_off = e.local_off + hlen;
        expected = e.data_off + e.csize;
        if expected > cd_off {
            return Err(entry_err(
                path,
                &e.name,
                "data runs into the central directory",
            ));
        }
    }
    if expected != cd_off {
        return Err(container(
            path,
            format!(
                "{} bytes of unlisted data before the central directory",
                cd_off - expected
            ),
        ));
    }

    let first = &entries[0];
    if first.name != MANIFEST_PATH {
        return Err(container(
            path,
            format!("first entry is `{}`, expected {MANIFEST_PATH}", first.name),
        ));
    }
    let last = &entries[entries.len() - 1];
    if last.name != SIGNATURES_PATH {
        return Err(container(
            path,
            format!("last entry is `{}`, expected {SIGNATURES_PATH}", last.name),
        ));
    }
    if last.method != METHOD_STORED || last.csize != SIGNATURES_SIZE {
        return Err(entry_err(
            path,
            SIGNATURES_PATH,
            format!("must be stored and exactly {SIGNATURES_SIZE} bytes"),
        ));
    }
    for e in &entries[1..entries.len() - 1] {
        if e.name.starts_with("molt/") {
            return Err(entry_err(
                path,
                &e.name,
                "the `molt/` directory is reserved for the manifest and signatures",
            ));
        }
    }
    let mut total = 0u64;
    for e in &entries {
        total = total.saturating_add(e.usize);
        if e.usize >= limits.ratio_exempt_below {
            let ratio = e.usize / e.csize.max(1);
            if ratio > limits.max_ratio {
                return Err(BundleError::Ratio {
                    bundle: path.to_path_buf(),
                    entry: e.name.clone(),
                    ratio,
                    limit: limits.max_ratio,
                });
            }
        }
    }
    if total > limits.max_total_size {
        return Err(BundleError::TotalTooLarge {
            bundle: path.to_path_buf(),
            total,
            limit: limits.max_total_size,
        });
    }
    Ok(entries)
}

/// Check that the local header `lh` (`30 + name` bytes) of entry `e` agrees
/// with its central-directory record `cd_rec` (from its signature on).
pub fn check_local_header(
    path: &Path,
    e: &RawEntry,
    lh: &[u8],
    cd_rec: &[u8],
) -> Result<(), BundleError> {
    let mismatch = |what: &str| {
        entry_err(
            path,
            &e.name,
            format!("local header disagrees with the central directory: {what}"),
        )
    };
    if lh.len() < LOCAL_LEN as usize || u32le(lh, 0) != LOCAL_SIG {
        return Err(entry_err(path, &e.name, "no local header at its offset"));
    }
    if cd_rec.len() < CD_LEN || lh[4..14] != cd_rec[6..16] {
        return Err(mismatch("version, flags, method or time"));
    }
    if u32le(lh, 14) != e.crc {
        return Err(mismatch("CRC-32"));
    }
    if u64::from(u32le(lh, 18)) != e.csize || u64::from(u32le(lh, 22)) != e.usize {
        return Err(mismatch("sizes"));
    }
    if u16le(lh, 26) as usize != e.name.len() || &lh[30..] != e.name.as_bytes() {
        return Err(mismatch("name"));
    }
    if u16le(lh, 28) != 0 {
        return Err(entry_err(path, &e.name, "extra fields are not allowed"));
    }
    Ok(())
}

/// Parse and check the structure of a bundle: reads only the end record, the
/// central directory and the local headers (all bounded by `limits`).
pub fn read_layout(file: &File, path: &Path, limits: &Limits) -> Result<Layout, BundleError> {
    let file_len = file.metadata().map_err(|e| BundleError::io(path, e))?.len();
    if file_len < EOCD_LEN {
        return Err(container(
            path,
            format!("file is {file_len} bytes, too short for a zip"),
        ));
    }
    let eocd_bytes = read_at(file, path, file_len - EOCD_LEN, EOCD_LEN)?;
    let eocd = parse_eocd(path, file_len, &eocd_bytes, limits)?;
    let cd = read_at(file, path, eocd.cd_off, eocd.cd_size)?;
    let entries = parse_central_directory(path, &eocd, &cd, limits)?;
    let cd_off = eocd.cd_off;
    let mut parsed = Vec::with_capacity(entries.len() + 2);
    let mut cd_and_eocd = cd;
    cd_and_eocd.extend_from_slice(&eocd_bytes);
    parsed.push((cd_off, cd_and_eocd));
    for e in &entries {
        let hlen = e.data_off - e.local_off;
        let lh = read_at(file, path, e.local_off, hlen)?;
        let cd_rec = &parsed[0].1[(e.cd_rec_off - cd_off) as usize..];
        check_local_header(path, e, &lh, cd_rec)?;
        parsed.push((e.local_off, lh));
    }
    Ok(Layout {
        file_len,
        cd_off,
        entries,
        parsed,
    })
}

/// Read one entry fully into memory (only for the bounded manifest and
/// signature slot); checks size and, with `check_crc`, CRC-32. Records the
/// parsed bytes.
pub fn read_small_entry(
    file: &File,
    path: &Path,
    layout: &mut Layout,
    index: usize,
    max: u64,
    check_crc: bool,
) -> Result<Vec<u8>, BundleError> {
    let e = layout.entries[index].clone();
    check_small(path, &e, max)?;
    let raw = read_at(file, path, e.data_off, e.csize)?;
    let data = small_entry_data(path, &e, &raw, check_crc)?;
    layout.parsed.push((e.data_off, raw));
    Ok(data)
}

/// Refuse an entry (the manifest, the signature slot) read whole into memory
/// when it is larger than `max` bytes, compressed or not.
pub(crate) fn check_small(path: &Path, e: &RawEntry, max: u64) -> Result<(), BundleError> {
    if e.csize > max || e.usize > max {
        return Err(entry_err(
            path,
            &e.name,
            format!("larger than the limit of {max} bytes"),
        ));
    }
    Ok(())
}

/// The content of a small entry from its `raw` data (whole file or ranged
/// read): inflated with its declared size as the bound, that size checked,
/// and with `check_crc` its CRC-32.
pub(crate) fn small_entry_data(
    path: &Path,
    e: &RawEntry,
    raw: &[u8],
    check_crc: bool,
) -> Result<Vec<u8>, BundleError> {
    let data = if e.method == METHOD_DEFLATED {
        let mut out = Vec::with_capacity(e.usize as usize);
        flate2::read::DeflateDecoder::new(raw)
            .take(e.usize + 1)
            .read_to_end(&mut out)
            .map_err(|err| entry_err(path, &e.name, format!("cannot inflate: {err}")))?;
        out
    } else {
        raw.to_vec()
    };
    if data.len() as u64 != e.usize {
        return Err(BundleError::SizeMismatch {
            bundle: path.to_path_buf(),
            entry: e.name.clone(),
            declared: e.usize,
            actual_what: "inflated to",
            actual: data.len() as u64,
        });
    }
    if check_crc && crc32fast::hash(&data) != e.crc {
        return Err(entry_err(
            path,
            &e.name,
            "CRC-32 does not match the content",
        ));
    }
    Ok(data)
}

/// Read-ahead of [`signed_digest`]: a reader thread fills a few recycled
/// buffers while the caller hashes the ones before, so the kernel's copy and
/// SHA-256 run on two cores at once. One thread doing both with 2 MiB reads
/// was 1.3-1.4x `openssl dgst -sha256` (the copy went out of L2 before the hash
/// read it back); see docs/benchmarks.md (`bundle_verify.sh`).
const READ_CHUNK: usize = 1 << 20;
const READ_CHUNKS: usize = 3;

/// Stream the whole file once through SHA-256 with the signature slot and its
/// CRC fields zeroed. Also proves every region parsed earlier is what was
/// hashed (the file cannot change between parsing and hashing unnoticed).
pub fn signed_digest(file: &File, path: &Path, layout: &Layout) -> Result<[u8; 32], BundleError> {
    use std::sync::mpsc;
    type Chunk = std::io::Result<(Vec<u8>, usize)>;
    let mut parsed: Vec<(u64, &[u8])> = layout
        .parsed
        .iter()
        .map(|(o, b)| (*o, b.as_slice()))
        .collect();
    parsed.sort_by_key(|(o, _)| *o);
    let zero = layout.zeroed_ranges();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<Chunk>(READ_CHUNKS);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 0..READ_CHUNKS {
            let _ = free_tx.send(vec![0u8; READ_CHUNK]);
        }
        // The reader stops at the end of the file, at an error (sent on), or
        // when this side hangs up (an early return drops both channel ends).
        std::thread::Builder::new()
            .name("molt-verify-read".into())
            .spawn_scoped(scope, move || {
                let mut pos = 0u64;
                while let Ok(mut buf) = free_rx.recv() {
                    let read = loop {
                        match file.read_at(&mut buf, pos) {
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            r => break r,
                        }
                    };
                    match read {
                        Ok(0) => break,
                        Ok(n) => {
                            pos += n as u64;
                            if full_tx.send(Ok((buf, n))).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = full_tx.send(Err(e));
                            break;
                        }
                    }
                }
            })
            .map_err(|e| BundleError::io(path, e))?;
        let mut pos = 0u64;
        let mut next_parsed = 0usize;
        while let Ok(read) = full_rx.recv() {
            let (mut buf, n) = read.map_err(|e| BundleError::io(path, e))?;
            let chunk = &mut buf[..n];
            let end = pos + n as u64;
            if end > layout.file_len {
                return Err(container(path, "file grew while it was being verified"));
            }
            // Compare against parsed regions overlapping [pos, end).
            while next_parsed < parsed.len() {
                let (off, bytes) = parsed[next_parsed];
                let rend = off + bytes.len() as u64;
                if off >= end {
                    break;
                }
                let s = off.max(pos);
                let e = rend.min(end);
                if s < e {
                    let a = &chunk[(s - pos) as usize..(e - pos) as usize];
                    let b = &bytes[(s - off) as usize..(e - off) as usize];
                    if a != b {
                        return Err(container(
                            path,
                            format!("file changed while it was being verified (at offset {s})"),
                        ));
                    }
                }
                if rend <= end {
                    next_parsed += 1;
                } else {
                    break;
                }
            }
            for (zs, zl) in zero {
                let s = zs.max(pos);
                let e = (zs + zl).min(end);
                if s < e {
                    chunk[(s - pos) as usize..(e - pos) as usize].fill(0);
                }
            }
            ctx.update(chunk);
            pos = end;
            let _ = free_tx.send(buf);
        }
        if pos != layout.file_len {
            return Err(container(path, "file shrank while it was being verified"));
        }
        Ok(())
    })?;
    let d = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    Ok(out)
}

/// The signature slot content: JSON padded with spaces to exactly SIGNATURES_SIZE.
pub fn signature_slot(sigs: &SignatureFile) -> Result<Vec<u8>, BundleError> {
    padded_slot(sigs, sigs.signatures.len())
}

/// `sigs` (holding `count` signatures, for the message) as compact JSON
/// padded with spaces to exactly SIGNATURES_SIZE.
fn padded_slot(sigs: &impl serde::Serialize, count: usize) -> Result<Vec<u8>, BundleError> {
    let mut v = serde_json::to_vec(sigs).map_err(|e| BundleError::Pack {
        reason: e.to_string(),
    })?;
    if v.len() as u64 > SIGNATURES_SIZE {
        return Err(BundleError::Pack {
            reason: format!(
                "{count} signatures do not fit the {SIGNATURES_SIZE}-byte signature slot"
            ),
        });
    }
    v.resize(SIGNATURES_SIZE as usize, b' ');
    Ok(v)
}

/// The signature slot of either format: a format-1 file serialises without
/// `manifest_signatures` (byte-identical to what v1 writers produced), so the
/// canonical-slot check holds for both.
pub fn signature_slot_any(sigs: &SignatureFileV2) -> Result<Vec<u8>, BundleError> {
    match sigs.format {
        1 if sigs.manifest_signatures.is_empty() => signature_slot(&SignatureFile {
            format: 1,
            signatures: sigs.signatures.clone(),
        }),
        1 => Err(BundleError::Pack {
            reason: "a format 1 signature file has no manifest signatures".into(),
        }),
        _ => padded_slot(sigs, sigs.signatures.len() + sigs.manifest_signatures.len()),
    }
}

/// Parse a signature slot (either format) and insist it is in canonical form,
/// so no byte of it can change unseen (it is zeroed in the signed digest).
pub fn parse_signature_slot(path: &Path, slot: &[u8]) -> Result<SignatureFileV2, BundleError> {
    let sig_err = |reason: String| BundleError::SignatureFile {
        bundle: path.to_path_buf(),
        reason,
    };
    let trimmed_len = slot
        .iter()
        .rposition(|b| *b != b' ')
        .map(|p| p + 1)
        .unwrap_or(0);
    let body = &slot[..trimmed_len];
    let sigs = match read_format(path, body, "JSON", sig_err)? {
        1 => {
            let v1: SignatureFile = serde_json::from_slice(body)
                .map_err(|e| sig_err(format!("not valid JSON: {e}")))?;
            SignatureFileV2 {
                format: 1,
                signatures: v1.signatures,
                manifest_signatures: vec![],
            }
        }
        _ => serde_json::from_slice(body).map_err(|e| sig_err(format!("not valid JSON: {e}")))?,
    };
    if signature_slot_any(&sigs).ok().as_deref() != Some(slot) {
        return Err(sig_err(
            "not in its canonical form (the slot was altered after signing)".into(),
        ));
    }
    Ok(sigs)
}

/// Open a bundle file for reading.
pub fn open(path: &Path) -> Result<File, BundleError> {
    File::open(path).map_err(|e| BundleError::io(PathBuf::from(path), e))
}
