//! Trust root rules: structure, thresholds, rotation. Read-only: creating and
//! signing roots is in `editor`.
use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::error::{BundleError, short_id};
use crate::keys::{ROOT_SIG_CONTEXT, key_id, verify_sig};
use crate::schema::{Role, RootSigned, Signature, SignedRoot, canonical_json};

/// Roles every root must define.
pub const REQUIRED_ROLES: [Role; 3] = [Role::Root, Role::Checks, Role::Packages];

fn root_err(reason: impl Into<String>) -> BundleError {
    BundleError::Root {
        reason: reason.into(),
    }
}

/// A bundle name in `rollback_floor`: the `<product>-<kind>` of a manifest.
/// Checked so a typo or a stray character cannot hide in a signed root.
pub fn check_floor_name(name: &str) -> Result<(), BundleError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(root_err(format!(
            "rollback_floor: `{}` is not a bundle name (`<product>-<kind>`, e.g. `mid-core`)",
            crate::text::sanitize(name, 200)
        )))
    }
}

/// One rollback floor changed by a root rotation (`None`: no floor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloorChange {
    pub name: String,
    pub from: Option<u64>,
    pub to: Option<u64>,
}

impl FloorChange {
    /// The new root accepts older bundles of `name` than the old one did.
    pub fn lowers(&self) -> bool {
        match (self.from, self.to) {
            (Some(f), Some(t)) => t < f,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

impl std::fmt::Display for FloorChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: Option<u64>| v.map_or_else(|| "none".to_string(), |v| v.to_string());
        write!(
            f,
            "rollback floor of `{}`: {} -> {}",
            self.name,
            show(self.from),
            show(self.to)
        )?;
        if self.lowers() {
            f.write_str(
                " (LOWERED: older signed bundles of it become acceptable as an assigned downgrade)",
            )?;
        }
        Ok(())
    }
}

impl RootSigned {
    /// The bytes root signatures are made over.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, BundleError> {
        let v = serde_json::to_value(self).map_err(|e| root_err(e.to_string()))?;
        canonical_json(&v).map_err(|e| root_err(e.to_string()))
    }

    /// Structural rules that do not need signatures.
    pub fn validate(&self) -> Result<(), BundleError> {
        let v = self.version;
        if self.type_ != "root" {
            return Err(root_err(format!(
                "version {v}: type is `{}`, expected `root`",
                self.type_
            )));
        }
        if v == 0 {
            return Err(root_err("version must be at least 1"));
        }
        for (id, k) in &self.keys {
            if k.scheme != "ed25519" {
                return Err(root_err(format!(
                    "version {v}: key {}: unknown scheme `{}` (only ed25519)",
                    short_id(id),
                    k.scheme
                )));
            }
            let public = hex::decode(&k.public).map_err(|_| {
                root_err(format!(
                    "version {v}: key {}: public key is not hex",
                    short_id(id)
                ))
            })?;
            if public.len() != 32 {
                return Err(root_err(format!(
                    "version {v}: key {}: public key has {} bytes, expected 32",
                    short_id(id),
                    public.len()
                )));
            }
            if key_id(&public) != *id {
                return Err(root_err(format!(
                    "version {v}: key {}: key id is not the SHA-256 of its public key",
                    short_id(id)
                )));
            }
        }
        for name in self.rollback_floor.keys() {
            check_floor_name(name).map_err(|e| match e {
                BundleError::Root { reason } => root_err(format!("version {v}: {reason}")),
                other => other,
            })?;
        }
        for role in REQUIRED_ROLES {
            if !self.roles.contains_key(role.as_str()) {
                return Err(root_err(format!("version {v}: role `{role}` is missing")));
            }
        }
        for (name, r) in &self.roles {
            if r.threshold == 0 {
                return Err(root_err(format!(
                    "version {v}: role `{name}`: threshold must be at least 1"
                )));
            }
            let distinct: BTreeSet<&String> = r.keyids.iter().collect();
            if distinct.len() != r.keyids.len() {
                return Err(root_err(format!(
                    "version {v}: role `{name}`: duplicate key ids"
                )));
            }
            for id in &r.keyids {
                if !self.keys.contains_key(id) {
                    return Err(root_err(format!(
                        "version {v}: role `{name}`: key {} is not in `keys`",
                        short_id(id)
                    )));
                }
            }
            let usable = r
                .keyids
                .iter()
                .filter(|id| !self.revoked.contains(id))
                .count();
            if usable < r.threshold as usize {
                return Err(root_err(format!(
                    "version {v}: role `{name}`: threshold {} but only {usable} usable (non-revoked) keys",
                    r.threshold
                )));
            }
        }
        Ok(())
    }

    /// The rollback floor this root sets for bundle `name`, if any.
    pub fn floor(&self, name: &str) -> Option<u64> {
        self.rollback_floor.get(name).copied()
    }

    /// Floors that differ between `self` and `newer`, by name. A lowered or
    /// removed floor widens what a host accepts, so it is logged and printed.
    pub fn floor_changes(&self, newer: &RootSigned) -> Vec<FloorChange> {
        let names: BTreeSet<&String> = self
            .rollback_floor
            .keys()
            .chain(newer.rollback_floor.keys())
            .collect();
        names
            .into_iter()
            .filter_map(|n| {
                let (from, to) = (self.floor(n), newer.floor(n));
                (from != to).then(|| FloorChange {
                    name: n.clone(),
                    from,
                    to,
                })
            })
            .collect()
    }

    pub fn threshold(&self, role: Role) -> u32 {
        self.roles
            .get(role.as_str())
            .map(|r| r.threshold)
            .unwrap_or(u32::MAX)
    }

    /// Why `keyid` may not sign for `role` at `now`, if it may not.
    pub fn key_problem(&self, keyid: &str, role: Role, now: DateTime<Utc>) -> Option<String> {
        let v = self.version;
        let Some(key) = self.keys.get(keyid) else {
            return Some(format!("unknown key (not in root version {v})"));
        };
        if self.revoked.iter().any(|r| r == keyid) {
            return Some(format!("key revoked in root version {v}"));
        }
        if let Some(exp) = key.expires
            && exp < now
        {
            return Some(format!("key expired at {}", exp.to_rfc3339()));
        }
        let in_role = self
            .roles
            .get(role.as_str())
            .is_some_and(|r| r.keyids.iter().any(|k| k == keyid));
        if !in_role {
            return Some(format!("not a key of role `{role}` in root version {v}"));
        }
        None
    }

    /// Count distinct valid signatures by keys of `role` over `context || message`.
    /// Returns the valid key ids and, for every other signature, why it did not count.
    pub fn check_signatures(
        &self,
        role: Role,
        context: &[u8],
        message: &[u8],
        sigs: &[Signature],
        now: DateTime<Utc>,
    ) -> (Vec<String>, Vec<(String, String)>) {
        let mut valid: Vec<String> = Vec::new();
        let mut rejected = Vec::new();
        for s in sigs {
            if valid.contains(&s.keyid) {
                rejected.push((
                    s.keyid.clone(),
                    "duplicate signature by the same key".into(),
                ));
                continue;
            }
            if let Some(p) = self.key_problem(&s.keyid, role, now) {
                rejected.push((s.keyid.clone(), p));
                continue;
            }
            let Some(public) = self
                .keys
                .get(&s.keyid)
                .and_then(|k| hex::decode(&k.public).ok())
            else {
                rejected.push((s.keyid.clone(), "public key is not hex".into()));
                continue;
            };
            let ok = hex::decode(&s.sig)
                .map(|sig| verify_sig(&public, context, message, &sig))
                .unwrap_or(false);
            if ok {
                valid.push(s.keyid.clone());
            } else {
                rejected.push((
                    s.keyid.clone(),
                    "bad signature (content does not match what was signed)".into(),
                ));
            }
        }
        (valid, rejected)
    }
}

fn fmt_rejected(r: &[(String, String)]) -> String {
    r.iter()
        .map(|(k, why)| format!("key {}: {why}", short_id(k)))
        .collect::<Vec<_>>()
        .join("; ")
}

impl SignedRoot {
    /// Parse root.json and check its structure and its own root-role threshold.
    /// Expiry is checked where the root is used, so an expired root can still be rotated.
    pub fn from_slice(bytes: &[u8]) -> Result<SignedRoot, BundleError> {
        if bytes.len() > 1 << 20 {
            return Err(root_err("larger than 1 MiB"));
        }
        let root: SignedRoot = serde_json::from_slice(bytes)
            .map_err(|e| root_err(format!("not valid root JSON: {e}")))?;
        root.signed.validate()?;
        root.check_self_signed()?;
        Ok(root)
    }

    pub fn load(path: &std::path::Path) -> Result<SignedRoot, BundleError> {
        let bytes = std::fs::read(path).map_err(|e| BundleError::io(path, e))?;
        SignedRoot::from_slice(&bytes).map_err(|e| match e {
            BundleError::Root { reason } => root_err(format!("{}: {reason}", path.display())),
            other => other,
        })
    }

    pub fn to_json_pretty(&self) -> Result<Vec<u8>, BundleError> {
        let mut v = serde_json::to_vec_pretty(self).map_err(|e| root_err(e.to_string()))?;
        v.push(b'\n');
        Ok(v)
    }

    /// The root role of this root signed it (threshold met). Key expiry is not
    /// applied to root signatures: a root's own `expires` governs it.
    pub fn check_self_signed(&self) -> Result<(), BundleError> {
        let msg = self.signed.canonical_bytes()?;
        let (valid, rejected) = self.signed.check_signatures(
            Role::Root,
            ROOT_SIG_CONTEXT,
            &msg,
            &self.signatures,
            DateTime::<Utc>::MIN_UTC,
        );
        let t = self.signed.threshold(Role::Root);
        if valid.len() < t as usize {
            return Err(root_err(format!(
                "version {}: signed by {} of {t} required keys of its own root role{}{}",
                self.signed.version,
                valid.len(),
                if rejected.is_empty() { "" } else { "; " },
                fmt_rejected(&rejected)
            )));
        }
        Ok(())
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.signed.expires < now
    }

    /// Check that `new` may replace `self` (TUF root rotation): version exactly
    /// N+1, signed by a threshold of this root's root keys and of its own, not expired.
    pub fn check_rotation(&self, new: &SignedRoot, now: DateTime<Utc>) -> Result<(), BundleError> {
        let (from, to) = (self.signed.version, new.signed.version);
        let rot = |reason: String| BundleError::Rotation { from, to, reason };
        if to <= from {
            return Err(rot(format!(
                "version {to} is not newer than the trusted version {from} (older or replayed root)"
            )));
        }
        if to != from + 1 {
            return Err(rot(format!(
                "versions must be applied one at a time: expected {}",
                from + 1
            )));
        }
        new.signed.validate()?;
        let msg = new.signed.canonical_bytes()?;
        let (valid, rejected) = self.signed.check_signatures(
            Role::Root,
            ROOT_SIG_CONTEXT,
            &msg,
            &new.signatures,
            DateTime::<Utc>::MIN_UTC,
        );
        let t = self.signed.threshold(Role::Root);
        if valid.len() < t as usize {
            return Err(rot(format!(
                "signed by {} of {t} required root keys of the trusted version {from}{}{}",
                valid.len(),
                if rejected.is_empty() { "" } else { "; " },
                fmt_rejected(&rejected)
            )));
        }
        new.check_self_signed().map_err(|e| rot(e.to_string()))?;
        if new.is_expired(now) {
            return Err(rot(format!(
                "the new root expired at {}",
                new.signed.expires.to_rfc3339()
            )));
        }
        Ok(())
    }
}
