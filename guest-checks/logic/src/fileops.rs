//! `file-ops`: the seeds' permission probe. Extract a zip into scratch, copy the
//! files into a staging dir inside the install, read a text file back, delete
//! everything. Uses only `std::fs`, so it runs natively and inside WASI preopens.
use std::fs;
use std::path::Path;

use crate::{Finding, Severity};

const TEXT: &[u8] = b"molt pre-upgrade file-ops probe\n";

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// A small stored (uncompressed) zip with the given files.
pub fn make_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let off = out.len() as u32;
        let crc = crc32(data);
        let n = name.len() as u16;
        let len = data.len() as u32;
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&len.to_le_bytes());
        central.extend_from_slice(&len.to_le_bytes());
        central.extend_from_slice(&n.to_le_bytes());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&off.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_off = out.len() as u32;
    let count = files.len() as u16;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_off.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

/// Why a probe zip could not be read back. The text is what the
/// `fileops.extract` finding quotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZipError {
    /// The bytes end inside a local header, a name or an entry's data.
    Truncated(&'static str),
    /// Entry number `entry` is compressed (only stored entries are written).
    Compressed { entry: usize, method: u16 },
    /// A name is not UTF-8.
    NameNotUtf8,
    /// A name has a path separator or a leading dot.
    NotPlainName(String),
    /// An entry's data does not match its CRC-32.
    Crc(String),
}

impl std::fmt::Display for ZipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZipError::Truncated(what) => write!(f, "truncated {what}"),
            ZipError::Compressed { entry, method } => {
                write!(f, "entry {entry} uses compression method {method}")
            }
            ZipError::NameNotUtf8 => write!(f, "name is not UTF-8"),
            ZipError::NotPlainName(n) => write!(f, "entry name `{n}` is not a plain file name"),
            ZipError::Crc(n) => write!(f, "entry `{n}`: CRC mismatch"),
        }
    }
}

impl std::error::Error for ZipError {}

/// Read the local entries of a stored zip (names are plain file names).
pub fn read_zip(b: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ZipError> {
    let mut i = 0;
    let mut out = Vec::new();
    let header = ZipError::Truncated("header");
    while u32_at(b, i) == Some(0x0403_4b50) {
        let method = u16_at(b, i + 8).ok_or(header.clone())?;
        let crc = u32_at(b, i + 14).ok_or(header.clone())?;
        let csize = u32_at(b, i + 18).ok_or(header.clone())? as usize;
        let n = u16_at(b, i + 26).ok_or(header.clone())? as usize;
        let x = u16_at(b, i + 28).ok_or(header.clone())? as usize;
        if method != 0 {
            return Err(ZipError::Compressed {
                entry: out.len(),
                method,
            });
        }
        let name_at = i + 30;
        let name = b
            .get(name_at..name_at + n)
            .ok_or(ZipError::Truncated("name"))?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| ZipError::NameNotUtf8)?;
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(ZipError::NotPlainName(name));
        }
        let data_at = name_at + n + x;
        let data = b
            .get(data_at..data_at + csize)
            .ok_or(ZipError::Truncated("data"))?;
        if crc32(data) != crc {
            return Err(ZipError::Crc(name));
        }
        out.push((name, data.to_vec()));
        i = data_at + csize;
    }
    Ok(out)
}

fn block(code: &str, message: String, remediation: &str) -> Vec<Finding> {
    vec![Finding::new(Severity::Blocking, code, message, remediation)]
}

/// Run the probe with `scratch` (fresh, read-write) and `staging` (a dir inside
/// the install, read-write; `None` when the host could not create it).
pub fn file_ops(scratch: &Path, staging: Option<&Path>) -> Vec<Finding> {
    let mut out = Vec::new();
    let zip_path = scratch.join("precheck-probe.zip");
    let zip = make_zip(&[("probe.txt", TEXT), ("probe.bin", &[0u8, 1, 2, 3, 255])]);
    if let Err(e) = fs::write(&zip_path, &zip) {
        return block(
            "fileops.scratch-write",
            format!(
                "Unable to write to the temp folder {}: {e}",
                scratch.display()
            ),
            "Give the service account write access to the temp folder.",
        );
    }
    let extract_dir = scratch.join("extract");
    let extracted = fs::read(&zip_path)
        .map_err(|e| e.to_string())
        .and_then(|b| read_zip(&b).map_err(|e| e.to_string()))
        .and_then(|entries| {
            fs::create_dir_all(&extract_dir).map_err(|e| e.to_string())?;
            for (n, d) in &entries {
                fs::write(extract_dir.join(n), d).map_err(|e| format!("{n}: {e}"))?;
            }
            Ok(entries)
        });
    let entries = match extracted {
        Ok(e) => e,
        Err(e) => {
            return block(
                "fileops.extract",
                format!("Unable to extract contents of pre upgrade check zip: {e}"),
                "Give the service account permission to create and write files in the temp folder.",
            );
        }
    };
    let Some(staging) = staging else {
        return block(
            "fileops.staging-create",
            "Unable to create folder for upgrade check files in the install dir".into(),
            "Give the service account permission to create folders in the install dir.",
        );
    };
    if fs::read_dir(staging)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
    {
        out.push(Finding::new(
            Severity::Warning,
            "fileops.leftovers",
            format!(
                "The staging folder {} held files from an earlier run; they were removed",
                staging.display()
            ),
            "None needed; an earlier check did not clean up (crash or kill).",
        ));
        if let Ok(rd) = fs::read_dir(staging) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }
    for (n, _) in &entries {
        if let Err(e) = fs::copy(extract_dir.join(n), staging.join(n)) {
            return block(
                "fileops.copy",
                format!(
                    "Unable to copy {n} into the install dir {}: {e}",
                    staging.display()
                ),
                "Give the service account write access to the install dir.",
            );
        }
    }
    match fs::read(staging.join("probe.txt")) {
        Ok(b) if b == TEXT => {}
        Ok(_) => out.extend(block(
            "fileops.read",
            "probe.txt read back from the install dir differs from what was written".into(),
            "Check the file system and any software rewriting files in the install dir.",
        )),
        Err(e) => out.extend(block(
            "fileops.read",
            format!("Unable to read probe.txt back from the install dir: {e}"),
            "Give the service account read access to the install dir.",
        )),
    }
    let mut undeleted = Vec::new();
    for (n, _) in &entries {
        if let Err(e) = fs::remove_file(staging.join(n)) {
            undeleted.push(format!("{}: {e}", staging.join(n).display()));
        }
    }
    if let Err(e) = fs::remove_dir_all(&extract_dir).and_then(|_| fs::remove_file(&zip_path)) {
        undeleted.push(format!("{}: {e}", extract_dir.display()));
    }
    if !undeleted.is_empty() {
        out.extend(block(
            "fileops.delete",
            format!("Unable to delete files the upgrade must replace: {}", undeleted.join("; ")),
            "Give the service account delete permission in the install dir; check for anti-virus locks.",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn zip_roundtrip() {
        let z = make_zip(&[("a.txt", b"hello")]);
        assert_eq!(
            read_zip(&z).unwrap(),
            vec![("a.txt".to_string(), b"hello".to_vec())]
        );
    }

    #[test]
    fn a_bad_zip_says_what_is_wrong() {
        let z = make_zip(&[("a.txt", b"hello")]);
        // The data starts after the 30-byte header and the 5-byte name.
        let mut flipped = z.clone();
        flipped[35] ^= 1;
        assert_eq!(read_zip(&flipped), Err(ZipError::Crc("a.txt".into())));
        assert_eq!(
            read_zip(&z[..20]).map_err(|e| e.to_string()),
            Err("truncated header".to_string())
        );
        assert_eq!(read_zip(&z[..37]), Err(ZipError::Truncated("data")));
        let z = make_zip(&[("../x", b"1")]);
        assert_eq!(
            read_zip(&z).map_err(|e| e.to_string()),
            Err("entry name `../x` is not a plain file name".to_string())
        );
    }
}
