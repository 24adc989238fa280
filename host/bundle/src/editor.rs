//! Writing side: pack a directory into a bundle, add signatures, create and
//! sign roots. Kept apart from the verifier (the agent only needs `verify`).
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, SubsecRound, Utc};

use crate::buildstamp::Buildstamp;
pub use crate::container::signature_slot;
use crate::container::{
    self, FLAG_UTF8, Limits, MANIFEST_PATH, METHOD_DEFLATED, METHOD_STORED, SIGNATURES_PATH,
    check_entry_path,
};
use crate::error::BundleError;
use crate::keys::{MANIFEST_SIG_CONTEXT_V2, ROOT_SIG_CONTEXT, SigningKey};
use crate::schema::{
    BundleKind, Component, Manifest, ManifestEntry, RoleKeys, RootKey, RootSigned, Signature,
    SignatureFileV2, SignedRoot, Target,
};

fn pack_err(reason: impl Into<String>) -> BundleError {
    BundleError::Pack {
        reason: reason.into(),
    }
}

/// DOS date 1980-01-01 00:00: zip timestamps are fixed so packing is reproducible
/// (the manifest carries the real `created`).
const DOS_DATE: u16 = 0x0021;
const DOS_TIME: u16 = 0;

struct CdRecord {
    name: String,
    method: u16,
    crc: u32,
    csize: u32,
    usize: u32,
    unix_mode: u32,
    local_off: u32,
}

/// A minimal zip writer producing exactly the subset the verifier accepts
/// (and, for tests, a few things it must refuse). Entries are written in order.
pub struct ZipWriter {
    out: BufWriter<File>,
    pos: u64,
    records: Vec<CdRecord>,
    path: PathBuf,
}

fn u32_field(v: u64, what: &str) -> Result<u32, BundleError> {
    u32::try_from(v)
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| pack_err(format!("{what} exceeds 4 GiB (zip64 is not supported)")))
}

impl ZipWriter {
    pub fn create(path: &Path) -> Result<ZipWriter, BundleError> {
        let f = File::create(path).map_err(|e| BundleError::io(path, e))?;
        Ok(ZipWriter {
            out: BufWriter::with_capacity(1 << 20, f),
            pos: 0,
            records: Vec::new(),
            path: path.to_path_buf(),
        })
    }

    fn io(&self, e: std::io::Error) -> BundleError {
        BundleError::io(&self.path, e)
    }

    fn write_all(&mut self, b: &[u8]) -> Result<(), BundleError> {
        self.out
            .write_all(b)
            .map_err(|e| BundleError::io(&self.path, e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn local_header(name: &str, method: u16, crc: u32, csize: u32, usize: u32) -> Vec<u8> {
        let mut h = Vec::with_capacity(30 + name.len());
        h.extend_from_slice(&container::LOCAL_SIG.to_le_bytes());
        h.extend_from_slice(
            &(if method == METHOD_DEFLATED {
                20u16
            } else {
                10u16
            })
            .to_le_bytes(),
        );
        h.extend_from_slice(&FLAG_UTF8.to_le_bytes());
        h.extend_from_slice(&method.to_le_bytes());
        h.extend_from_slice(&DOS_TIME.to_le_bytes());
        h.extend_from_slice(&DOS_DATE.to_le_bytes());
        h.extend_from_slice(&crc.to_le_bytes());
        h.extend_from_slice(&csize.to_le_bytes());
        h.extend_from_slice(&usize.to_le_bytes());
        h.extend_from_slice(&(name.len() as u16).to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(name.as_bytes());
        h
    }

    /// Add an in-memory entry. `unix_mode` is the full `st_mode` (type + permissions).
    pub fn add_bytes(
        &mut self,
        name: &str,
        data: &[u8],
        deflate: bool,
        unix_mode: u32,
    ) -> Result<(), BundleError> {
        let crc = crc32fast::hash(data);
        let (method, payload) = if deflate {
            let mut enc =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(data).map_err(|e| self.io(e))?;
            (METHOD_DEFLATED, enc.finish().map_err(|e| self.io(e))?)
        } else {
            (METHOD_STORED, data.to_vec())
        };
        let usize = u32_field(data.len() as u64, name)?;
        self.add_raw(name, method, crc, &payload, usize, unix_mode)
    }

    /// Add an entry with caller-supplied header fields (sizes and CRC are not
    /// checked): what [`ZipWriter::add_bytes`] writes through, and, called
    /// directly, how tests of the verifier build hostile bundles.
    #[doc(hidden)]
    pub fn add_raw(
        &mut self,
        name: &str,
        method: u16,
        crc: u32,
        data: &[u8],
        usize: u32,
        unix_mode: u32,
    ) -> Result<(), BundleError> {
        let local_off = u32_field(self.pos, "archive")?;
        let csize = u32_field(data.len() as u64, name)?;
        let h = Self::local_header(name, method, crc, csize, usize);
        self.write_all(&h)?;
        self.write_all(data)?;
        self.records.push(CdRecord {
            name: name.to_string(),
            method,
            crc,
            csize,
            usize,
            unix_mode,
            local_off,
        });
        Ok(())
    }

    /// Add a file from disk, streaming. Returns (size, hex SHA-256) of what was read.
    pub fn add_file(
        &mut self,
        name: &str,
        src: &Path,
        mode: u32,
    ) -> Result<(u64, String), BundleError> {
        let deflate = looks_compressible(src)?;
        let local_off = self.pos;
        let placeholder = Self::local_header(
            name,
            if deflate {
                METHOD_DEFLATED
            } else {
                METHOD_STORED
            },
            0,
            0,
            0,
        );
        self.write_all(&placeholder)?;
        let (size, sha, crc, csize) = self.copy_data(src, deflate)?;
        let (method, csize) = if deflate && csize >= size {
            // Did not compress: rewrite the data stored.
            self.out.flush().map_err(|e| self.io(e))?;
            let f = self.out.get_mut();
            f.set_len(local_off)
                .map_err(|e| BundleError::io(&self.path, e))?;
            f.seek(SeekFrom::Start(local_off))
                .map_err(|e| BundleError::io(&self.path, e))?;
            self.pos = local_off;
            let placeholder = Self::local_header(name, METHOD_STORED, 0, 0, 0);
            self.write_all(&placeholder)?;
            let (size2, sha2, _, csize2) = self.copy_data(src, false)?;
            if size2 != size || sha2 != sha {
                return Err(pack_err(format!(
                    "{}: file changed while packing",
                    src.display()
                )));
            }
            (METHOD_STORED, csize2)
        } else {
            (
                if deflate {
                    METHOD_DEFLATED
                } else {
                    METHOD_STORED
                },
                csize,
            )
        };
        let csize32 = u32_field(csize, name)?;
        let usize32 = u32_field(size, name)?;
        let h = Self::local_header(name, method, crc, csize32, usize32);
        self.out.flush().map_err(|e| self.io(e))?;
        self.out
            .get_ref()
            .write_all_at(&h, local_off)
            .map_err(|e| BundleError::io(&self.path, e))?;
        self.records.push(CdRecord {
            name: name.to_string(),
            method,
            crc,
            csize: csize32,
            usize: usize32,
            unix_mode: 0o100000 | mode,
            local_off: u32_field(local_off, "archive")?,
        });
        Ok((size, sha))
    }

    fn copy_data(
        &mut self,
        src: &Path,
        deflate: bool,
    ) -> Result<(u64, String, u32, u64), BundleError> {
        struct Count<'a> {
            w: &'a mut BufWriter<File>,
            n: u64,
        }
        impl Write for Count<'_> {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let n = self.w.write(b)?;
                self.n += n as u64;
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.w.flush()
            }
        }
        let mut f = File::open(src).map_err(|e| BundleError::io(src, e))?;
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut crc = crc32fast::Hasher::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        let path = self.path.clone();
        let mut count = Count {
            w: &mut self.out,
            n: 0,
        };
        let wio = |e: std::io::Error| BundleError::io(&path, e);
        // Read `src` to its end, hashing it and writing it to `w`.
        let mut copy = |w: &mut dyn Write| -> Result<(), BundleError> {
            loop {
                let n = f.read(&mut buf).map_err(|e| BundleError::io(src, e))?;
                if n == 0 {
                    return Ok(());
                }
                sha.update(&buf[..n]);
                crc.update(&buf[..n]);
                size += n as u64;
                w.write_all(&buf[..n]).map_err(wio)?;
            }
        };
        if deflate {
            let mut enc =
                flate2::write::DeflateEncoder::new(&mut count, flate2::Compression::default());
            copy(&mut enc)?;
            enc.finish().map_err(wio)?;
        } else {
            copy(&mut count)?;
        }
        let csize = count.n;
        self.pos += csize;
        Ok((
            size,
            hex::encode(sha.finish().as_ref()),
            crc.finalize(),
            csize,
        ))
    }

    /// Write the central directory and end record.
    pub fn finish(mut self) -> Result<(), BundleError> {
        let cd_off = u32_field(self.pos, "archive")?;
        let records = std::mem::take(&mut self.records);
        let count = u16::try_from(records.len())
            .ok()
            .filter(|c| *c != u16::MAX)
            .ok_or_else(|| pack_err("more than 65534 entries (zip64 is not supported)"))?;
        for r in &records {
            let mut h = Vec::with_capacity(46 + r.name.len());
            h.extend_from_slice(&container::CD_SIG.to_le_bytes());
            h.extend_from_slice(&((3u16 << 8) | 20).to_le_bytes());
            h.extend_from_slice(
                &(if r.method == METHOD_DEFLATED {
                    20u16
                } else {
                    10u16
                })
                .to_le_bytes(),
            );
            h.extend_from_slice(&FLAG_UTF8.to_le_bytes());
            h.extend_from_slice(&r.method.to_le_bytes());
            h.extend_from_slice(&DOS_TIME.to_le_bytes());
            h.extend_from_slice(&DOS_DATE.to_le_bytes());
            h.extend_from_slice(&r.crc.to_le_bytes());
            h.extend_from_slice(&r.csize.to_le_bytes());
            h.extend_from_slice(&r.usize.to_le_bytes());
            h.extend_from_slice(&(r.name.len() as u16).to_le_bytes());
            h.extend_from_slice(&[0u8; 8]); // extra len, comment len, disk, internal attrs
            h.extend_from_slice(&(r.unix_mode << 16).to_le_bytes());
            h.extend_from_slice(&r.local_off.to_le_bytes());
            h.extend_from_slice(r.name.as_bytes());
            self.write_all(&h)?;
        }
        let cd_size = u32_field(self.pos - u64::from(cd_off), "central directory")?;
        let mut e = Vec::with_capacity(22);
        e.extend_from_slice(&container::EOCD_SIG.to_le_bytes());
        e.extend_from_slice(&[0u8; 4]);
        e.extend_from_slice(&count.to_le_bytes());
        e.extend_from_slice(&count.to_le_bytes());
        e.extend_from_slice(&cd_size.to_le_bytes());
        e.extend_from_slice(&cd_off.to_le_bytes());
        e.extend_from_slice(&0u16.to_le_bytes());
        self.write_all(&e)?;
        self.out
            .flush()
            .map_err(|e| BundleError::io(&self.path, e))?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| BundleError::io(&self.path, e))?;
        Ok(())
    }
}

/// Deflate a 256 KiB sample: random or already-compressed data is stored.
fn looks_compressible(src: &Path) -> Result<bool, BundleError> {
    let mut f = File::open(src).map_err(|e| BundleError::io(src, e))?;
    let mut sample = Vec::new();
    (&mut f)
        .take(256 << 10)
        .read_to_end(&mut sample)
        .map_err(|e| BundleError::io(src, e))?;
    if sample.len() < 64 {
        return Ok(false);
    }
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&sample)
        .map_err(|e| BundleError::io(src, e))?;
    let c = enc.finish().map_err(|e| BundleError::io(src, e))?;
    Ok((c.len() as u64) * 100 < (sample.len() as u64) * 95)
}

/// What to pack.
#[derive(Debug, Clone)]
pub struct PackSpec {
    pub kind: BundleKind,
    /// `<product>-<kind>`, e.g. `molt-precheck`; must match the buildstamp.
    pub name: String,
    /// Full package name, e.g. `molt-precheck.<version>.universal.universal.zip`.
    pub buildstamp: String,
    pub target: Target,
    pub sequence: u64,
    pub expires: DateTime<Utc>,
    pub components: Vec<Component>,
}

impl PackSpec {
    /// A spec derived from a package name: kind, name and target from the
    /// buildstamp; expires in 365 days.
    pub fn from_buildstamp(buildstamp: &str, sequence: u64) -> Result<PackSpec, BundleError> {
        let b: Buildstamp = buildstamp.parse()?;
        Ok(PackSpec {
            kind: b.kind,
            name: b.package(),
            buildstamp: buildstamp.to_string(),
            target: Target {
                os: b.os.clone(),
                arch: b.arch.clone(),
            },
            sequence,
            expires: Utc::now().trunc_subsecs(0) + Duration::days(365),
            components: Vec::new(),
        })
    }
}

/// Walk `dir` in sorted order; regular files only.
fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf, u32)>) -> Result<(), BundleError> {
    let mut items: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| BundleError::io(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| BundleError::io(dir, e))?;
    items.sort_by_key(|e| e.file_name());
    for it in items {
        let name = it
            .file_name()
            .into_string()
            .map_err(|n| pack_err(format!("{}: file name is not UTF-8", dir.join(n).display())))?;
        let p = it.path();
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let md = std::fs::symlink_metadata(&p).map_err(|e| BundleError::io(&p, e))?;
        let ft = md.file_type();
        if ft.is_symlink() {
            return Err(pack_err(format!(
                "{}: symlinks cannot be packed",
                p.display()
            )));
        } else if ft.is_dir() {
            walk(&p, &r, out)?;
        } else if ft.is_file() {
            check_entry_path(&r).map_err(|why| pack_err(format!("{}: {why}", p.display())))?;
            if r.starts_with("molt/") {
                return Err(pack_err(format!(
                    "{}: `molt/` is reserved for the manifest and signatures",
                    p.display()
                )));
            }
            out.push((r, p, md.permissions().mode() & 0o777));
        } else {
            return Err(pack_err(format!(
                "{}: special files cannot be packed",
                p.display()
            )));
        }
    }
    Ok(())
}

/// The bundle format `pack_dir` writes: the newest this build reads (2:
/// manifest signatures for ranged reads).
pub const PACK_FORMAT: u32 = container::FORMATS[container::FORMATS.len() - 1];

/// Pack every regular file under `src_dir` into an unsigned bundle at `out`
/// (format [`PACK_FORMAT`]). Returns the manifest written.
pub fn pack_dir(src_dir: &Path, spec: &PackSpec, out: &Path) -> Result<Manifest, BundleError> {
    pack_dir_format(src_dir, spec, out, PACK_FORMAT)
}

/// [`pack_dir`] in a chosen format: 1 (whole-file signatures only, what agents
/// older than format 2 accept) or 2.
pub fn pack_dir_format(
    src_dir: &Path,
    spec: &PackSpec,
    out: &Path,
    format: u32,
) -> Result<Manifest, BundleError> {
    if !container::FORMATS.contains(&format) {
        return Err(pack_err(format!(
            "bundle format {format} (known: {})",
            crate::error::known_formats()
        )));
    }
    let b: Buildstamp = spec.buildstamp.parse()?;
    if b.kind != spec.kind
        || b.package() != spec.name
        || b.os != spec.target.os
        || b.arch != spec.target.arch
    {
        return Err(pack_err(format!(
            "kind `{}`, name `{}` and target {}/{} must match buildstamp `{}` (expected {}, {}, {}/{})",
            spec.kind,
            spec.name,
            spec.target.os,
            spec.target.arch,
            spec.buildstamp,
            b.kind,
            b.package(),
            b.os,
            b.arch
        )));
    }
    let mut files = Vec::new();
    walk(src_dir, "", &mut files)?;
    // Pass 1: hash, so the manifest (first entry) can list every digest.
    let mut entries = Vec::with_capacity(files.len());
    for (rel, p, mode) in &files {
        let (size, sha) = hash_file(p)?;
        entries.push(ManifestEntry {
            path: rel.clone(),
            size,
            sha256: sha,
            mode: *mode,
        });
    }
    for c in &spec.components {
        if !entries.iter().any(|e| e.path == c.path) {
            return Err(pack_err(format!(
                "component `{}` is not a file under {}",
                c.path,
                src_dir.display()
            )));
        }
    }
    let now = Utc::now().trunc_subsecs(0);
    let manifest = Manifest {
        format,
        kind: spec.kind,
        name: spec.name.clone(),
        buildstamp: spec.buildstamp.clone(),
        target: spec.target.clone(),
        created: now,
        expires: spec.expires,
        sequence: spec.sequence,
        entries,
        components: spec.components.clone(),
    };
    let mjson = serde_json::to_vec_pretty(&manifest).map_err(|e| pack_err(e.to_string()))?;
    write_bundle(out, &mjson, format, |w| {
        // Pass 2: stream each file; it must not have changed since pass 1.
        for ((rel, p, mode), e) in files.iter().zip(&manifest.entries) {
            let (size, sha) = w.add_file(rel, p, *mode)?;
            if size != e.size || sha != e.sha256 {
                return Err(pack_err(format!(
                    "{}: file changed while packing",
                    p.display()
                )));
            }
        }
        Ok(())
    })?;
    tracing::info!(bundle = %out.display(), name = %manifest.name, entries = manifest.entries.len(), format, "Bundle packed");
    Ok(manifest)
}

/// Write an unsigned bundle: `manifest_json` (deflated) first, then the
/// payload entries `add` writes, then an empty signature slot of
/// `slot_format`, then the central directory. Checks nothing itself:
/// [`pack_dir`] writes through it, and tests of the verifier use it to build
/// bundles it must refuse.
pub fn write_bundle(
    out: &Path,
    manifest_json: &[u8],
    slot_format: u32,
    add: impl FnOnce(&mut ZipWriter) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let mut w = ZipWriter::create(out)?;
    w.add_bytes(MANIFEST_PATH, manifest_json, true, 0o100644)?;
    add(&mut w)?;
    let slot = container::signature_slot_any(&SignatureFileV2 {
        format: slot_format,
        signatures: vec![],
        manifest_signatures: vec![],
    })?;
    w.add_bytes(SIGNATURES_PATH, &slot, false, 0o100644)?;
    w.finish()
}

fn hash_file(p: &Path) -> Result<(u64, String), BundleError> {
    let mut f = File::open(p).map_err(|e| BundleError::io(p, e))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 << 10];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| BundleError::io(p, e))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((n_total, hex::encode(ctx.finish().as_ref())))
}

/// Add (or replace) signatures by `keys` in the bundle's signature slot. No
/// other byte of the file moves, so signers can sign one after another.
/// Returns the hex digest that was signed.
pub fn sign_bundle(path: &Path, keys: &[&SigningKey]) -> Result<String, BundleError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| BundleError::io(path, e))?;
    let parsed = crate::verify::parse_bundle(&file, path, &Limits::default())?;
    let digest = container::signed_digest(&file, path, &parsed.layout)?;
    let mut sigs = parsed.signatures;
    let context = crate::verify::file_context(sigs.format);
    let mdigest = crate::verify::manifest_digest(&parsed.manifest_bytes);
    for k in keys {
        let sig = hex::encode(k.sign(context, &digest));
        sigs.signatures.retain(|s| s.keyid != k.key_id());
        sigs.signatures.push(Signature {
            keyid: k.key_id().to_string(),
            sig,
        });
        if sigs.format >= 2 {
            sigs.manifest_signatures.retain(|s| s.keyid != k.key_id());
            sigs.manifest_signatures.push(Signature {
                keyid: k.key_id().to_string(),
                sig: hex::encode(k.sign(MANIFEST_SIG_CONTEXT_V2, &mdigest)),
            });
        }
    }
    let slot = container::signature_slot_any(&sigs)?;
    let crc = crc32fast::hash(&slot).to_le_bytes();
    let s = parsed.layout.signatures();
    let io = |e| BundleError::io(path, e);
    file.write_all_at(&slot, s.data_off).map_err(io)?;
    file.write_all_at(&crc, s.local_off + 14).map_err(io)?;
    file.write_all_at(&crc, s.cd_rec_off + 16).map_err(io)?;
    file.sync_all().map_err(io)?;
    tracing::info!(bundle = %path.display(), signers = keys.len(), "Bundle signed");
    Ok(hex::encode(digest))
}

/// A new, unsigned version-1 root. `roles` maps role name to (key, threshold).
pub fn new_root(
    roles: &BTreeMap<String, (Vec<&SigningKey>, u32)>,
    expires: DateTime<Utc>,
) -> Result<RootSigned, BundleError> {
    let mut keys = BTreeMap::new();
    let mut role_map = BTreeMap::new();
    for (name, (ks, threshold)) in roles {
        let mut ids = Vec::new();
        for k in ks {
            keys.insert(
                k.key_id().to_string(),
                RootKey {
                    scheme: "ed25519".into(),
                    public: k.public_hex(),
                    expires: None,
                },
            );
            ids.push(k.key_id().to_string());
        }
        role_map.insert(
            name.clone(),
            RoleKeys {
                keyids: ids,
                threshold: *threshold,
            },
        );
    }
    let r = RootSigned {
        type_: "root".into(),
        version: 1,
        expires,
        keys,
        roles: role_map,
        revoked: vec![],
        rollback_floor: BTreeMap::new(),
    };
    Ok(r)
}

/// Set the rollback floor of bundle `name` to `sequence` in a root being
/// edited (the root must then be signed and rotated as usual). Returns the
/// floor it replaces. Lowering a floor is allowed: it is how an operator
/// authorises a downgrade below the old floor; the caller says so.
pub fn set_floor(
    root: &mut RootSigned,
    name: &str,
    sequence: u64,
) -> Result<Option<u64>, BundleError> {
    crate::root::check_floor_name(name)?;
    Ok(root.rollback_floor.insert(name.to_string(), sequence))
}

/// Remove the rollback floor of `name` (no floor: no downgrade below the
/// highest accepted sequence at all). Returns the floor removed, if any.
pub fn clear_floor(root: &mut RootSigned, name: &str) -> Option<u64> {
    root.rollback_floor.remove(name)
}

/// Sign the root's canonical JSON with `keys` (replacing their older signatures).
pub fn sign_root(root: &mut SignedRoot, keys: &[&SigningKey]) -> Result<(), BundleError> {
    let msg = root.signed.canonical_bytes()?;
    for k in keys {
        root.signatures.retain(|s| s.keyid != k.key_id());
        root.signatures.push(Signature {
            keyid: k.key_id().to_string(),
            sig: hex::encode(k.sign(ROOT_SIG_CONTEXT, &msg)),
        });
    }
    Ok(())
}

/// Add a public key to the root's key table (no role membership).
pub fn add_key(root: &mut RootSigned, key_public_hex: &str) -> Result<String, BundleError> {
    let public = hex::decode(key_public_hex).map_err(|_| BundleError::Key {
        reason: format!("public key `{key_public_hex}` is not hex"),
    })?;
    if public.len() != 32 {
        return Err(BundleError::Key {
            reason: format!("public key has {} bytes, expected 32", public.len()),
        });
    }
    let id = crate::keys::key_id(&public);
    root.keys.insert(
        id.clone(),
        RootKey {
            scheme: "ed25519".into(),
            public: key_public_hex.to_lowercase(),
            expires: None,
        },
    );
    Ok(id)
}

/// A version-1 root in which `key` holds every role with threshold 1, signed by
/// it. For tests and demos: real deployments separate the roles.
pub fn single_key_root(
    key: &SigningKey,
    expires: DateTime<Utc>,
) -> Result<SignedRoot, BundleError> {
    let mut roles = BTreeMap::new();
    for r in ["root", "checks", "packages"] {
        roles.insert(r.to_string(), (vec![key], 1));
    }
    let mut root = SignedRoot {
        signed: new_root(&roles, expires)?,
        signatures: vec![],
    };
    sign_root(&mut root, &[key])?;
    Ok(root)
}
