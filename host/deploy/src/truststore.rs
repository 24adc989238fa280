//! MigrateTrustStore: certificates an operator added to the old runtime's
//! truststore (present there but not in the stock copy shipped with that runtime)
//! are carried into the new runtime's truststore, with a backup of the old one.
//! PEM-level, so no keystore password is involved (seeds 7.7, 7.13).
use std::path::Path;

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

/// Migrate custom certificates from `old_dir` into the (not yet switched) `new_dir`.
/// The new truststore is written as a new file (never in place: it may be a hard
/// link shared with the old version). Returns `None` when there is nothing to do.
pub fn migrate(
    old_dir: &Path,
    new_dir: &Path,
    backup_dir: &Path,
    from_version: &str,
) -> Result<Option<Migration>, DeployError> {
    let old_store_p = old_dir.join(TRUSTSTORE);
    let new_store_p = new_dir.join(TRUSTSTORE);
    if !old_store_p.is_file() || !new_store_p.is_file() {
        return Ok(None);
    }
    let old_store = std::fs::read_to_string(&old_store_p).map_err(io_err(&old_store_p))?;
    let old_stock = match std::fs::read_to_string(old_dir.join(STOCK)) {
        Ok(s) => s,
        Err(_) => {
            tracing::warn!(path = %old_dir.join(STOCK).display(), "MigrateTrustStore: no stock copy in the old runtime; nothing can be told apart as custom");
            return Ok(None);
        }
    };
    let custom = custom_certs(&old_store, &old_stock);
    if custom.is_empty() {
        return Ok(Some(Migration {
            carried: 0,
            backup: None,
        }));
    }
    std::fs::create_dir_all(backup_dir).map_err(io_err(backup_dir))?;
    let backup = backup_dir.join(format!("{from_version}.cacerts.pem"));
    molt_layout::write_atomic(&backup, old_store.as_bytes())?;
    let new_store = std::fs::read_to_string(&new_store_p).map_err(io_err(&new_store_p))?;
    let merged = merge(&new_store, &custom);
    let mode = crate::fsutil::mode_of(&new_store_p)?;
    // write_atomic renames a new inode over the path: the shared inode is untouched.
    molt_layout::write_atomic(&new_store_p, merged.as_bytes())?;
    crate::fsutil::set_mode(&new_store_p, mode)?;
    tracing::info!(carried = custom.len(), backup = %backup.display(), "MigrateTrustStore: custom certificates carried over");
    Ok(Some(Migration {
        carried: custom.len(),
        backup: Some(backup),
    }))
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
