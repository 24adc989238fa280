//! MigrateTrustStore: certificates an operator added to the old runtime's
//! truststore (present there but not in the stock copy shipped with that runtime)
//! are carried into the new runtime's truststore, with a backup of the old one.
//! PEM-level, so no keystore password is involved (seeds 7.7, 7.13).
use std::path::Path;

use molt_layout::FileMeta;

use crate::error::{DeployError, io_err};

/// The truststore a runtime package ships, relative to the version dir.
pub const TRUSTSTORE: &str = "runtime/lib/security/cacerts.pem";
/// The stock copy shipped beside it; never edited by operators.
pub const STOCK: &str = "runtime/lib/security/cacerts.stock.pem";

/// The PEM certificate blocks of a bundle, normalised (trimmed lines).
pub fn pem_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<Vec<&str>> = None;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("-----BEGIN ") {
            cur = Some(vec![l]);
        } else if let Some(c) = cur.as_mut() {
            c.push(l);
            if l.starts_with("-----END ") {
                out.push(c.join("\n"));
                cur = None;
            }
        }
    }
    out
}

/// Certificates in `old_store` that are not in `old_stock`.
pub fn custom_certs(old_store: &str, old_stock: &str) -> Vec<String> {
    let stock = pem_blocks(old_stock);
    pem_blocks(old_store)
        .into_iter()
        .filter(|b| !stock.contains(b))
        .collect()
}

/// The new truststore: the new stock content plus the custom certificates it lacks.
pub fn merge(new_store: &str, custom: &[String]) -> String {
    let have = pem_blocks(new_store);
    let mut out = new_store.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for c in custom {
        if !have.contains(c) {
            out.push_str(c);
            out.push('\n');
        }
    }
    out
}

/// What the migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub carried: usize,
    pub backup: Option<std::path::PathBuf>,
}

/// Build the new version's truststore (MigrateTrustStore).
///
/// The truststore is the one file operators edit in place (keytool, `cat >>`),
/// so it is never hard-linked from the current version nor checked against a
/// digest recorded before the edit (that made every later deploy fail "digest
/// mismatch"). It is written fresh: the runtime package's shipped truststore
/// when it was extracted (`shipped`, checked against the package manifest's
/// `expected` digest), else the new version's stock copy (already verified),
/// plus the certificates of the current truststore that its stock copy lacks.
/// A backup of the current truststore is kept when anything is carried.
pub fn rebuild(
    old_dir: &Path,
    new_dir: &Path,
    shipped: Option<&Path>,
    expected: &FileMeta,
    backup_dir: &Path,
    from_version: &str,
) -> Result<Migration, DeployError> {
    let new_store_p = new_dir.join(TRUSTSTORE);
    let base = match shipped.filter(|p| p.is_file()) {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(io_err(p))?;
            let actual = crate::fsutil::sha256_bytes(&bytes);
            if !actual.eq_ignore_ascii_case(&expected.sha256) {
                return Err(DeployError::Digest {
                    path: p.to_path_buf(),
                    expected: expected.sha256.clone(),
                    actual,
                });
            }
            bytes
        }
        None => {
            let stock = new_dir.join(STOCK);
            std::fs::read(&stock).map_err(io_err(&stock))?
        }
    };
    let base = String::from_utf8(base).map_err(|_| DeployError::Install {
        home: new_dir.to_path_buf(),
        reason: format!("{TRUSTSTORE}: the shipped truststore is not PEM text"),
    })?;
    let old_store_p = old_dir.join(TRUSTSTORE);
    let custom = match (
        std::fs::read_to_string(&old_store_p),
        std::fs::read_to_string(old_dir.join(STOCK)),
    ) {
        (Ok(store), Ok(stock)) => custom_certs(&store, &stock),
        (Ok(_), Err(_)) => {
            tracing::warn!(path = %old_dir.join(STOCK).display(), "MigrateTrustStore: no stock copy in the old runtime; nothing can be told apart as custom");
            Vec::new()
        }
        (Err(_), _) => Vec::new(),
    };
    let mut backup = None;
    if !custom.is_empty() {
        std::fs::create_dir_all(backup_dir).map_err(io_err(backup_dir))?;
        let b = backup_dir.join(format!("{from_version}.cacerts.pem"));
        let old = std::fs::read(&old_store_p).map_err(io_err(&old_store_p))?;
        molt_layout::write_atomic(&b, &old)?;
        backup = Some(b);
    }
    let merged = merge(&base, &custom);
    // A new inode, never a write through a link shared with the old version.
    molt_layout::write_atomic(&new_store_p, merged.as_bytes())?;
    crate::fsutil::set_mode(&new_store_p, expected.mode)?;
    tracing::info!(
        carried = custom.len(),
        backup = backup
            .as_ref()
            .map(|b| b.display().to_string())
            .unwrap_or_default(),
        "MigrateTrustStore: truststore built from the new stock content and the custom certificates"
    );
    Ok(Migration {
        carried: custom.len(),
        backup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    const A: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----";
    const B: &str = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----";
    const C: &str = "-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----";

    #[test]
    fn a_certificate_not_in_the_stock_copy_is_custom() {
        let store = format!("{A}\n{C}\n");
        assert_eq!(custom_certs(&store, &format!("{A}\n")), vec![C.to_string()]);
    }

    #[test]
    fn merging_adds_custom_certificates_once() {
        let merged = merge(&format!("{A}\n{B}\n"), &[C.to_string(), B.to_string()]);
        assert_eq!(
            pem_blocks(&merged),
            vec![A.to_string(), B.to_string(), C.to_string()]
        );
    }
}
