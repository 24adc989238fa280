//! Writing a root's successor: the editing half of the rotation policy whose
//! accepting half is [`SignedRoot::check_rotation`]. The two live side by side
//! so that what `molt root rotate` produces is what a host accepts: one version
//! up, roles whose thresholds their keys can meet, revoked keys out of every
//! role, floors through [`crate::editor::set_floor`]'s name check. The CLI only
//! parses its arguments and prints.
use chrono::{DateTime, Utc};

use crate::editor;
use crate::error::BundleError;
use crate::keys::SigningKey;
use crate::schema::{RoleKeys, RootSigned, SignedRoot};

fn err(reason: String) -> BundleError {
    BundleError::Root { reason }
}

/// A root being edited: the first version (`init`) or the successor of a
/// trusted one (`rotate`). `finish` validates and signs it.
#[derive(Debug, Clone)]
pub struct RootEditor {
    next: RootSigned,
    /// The trusted version this one rotates from (`None` for an initial root).
    from: Option<u64>,
}

impl RootEditor {
    /// An initial root (version 1) with no keys or roles yet.
    pub fn init(expires: DateTime<Utc>) -> Result<RootEditor, BundleError> {
        Ok(RootEditor {
            next: editor::new_root(&Default::default(), expires)?,
            from: None,
        })
    }

    /// The successor of `old`: its keys, roles, revocations and floors, one
    /// version up, expiring at `expires` (as `check_rotation` requires: one at a time).
    pub fn rotate(old: &SignedRoot, expires: DateTime<Utc>) -> RootEditor {
        let mut next = old.signed.clone();
        next.version = old.signed.version + 1;
        next.expires = expires;
        RootEditor {
            next,
            from: Some(old.signed.version),
        }
    }

    /// The version being written.
    pub fn version(&self) -> u64 {
        self.next.version
    }

    /// Declare `role` with `threshold` and these public keys (hex), replacing
    /// any earlier declaration (for an initial root).
    pub fn set_role(
        &mut self,
        role: &str,
        public_hex: &[String],
        threshold: u32,
    ) -> Result<(), BundleError> {
        let mut keyids = Vec::new();
        for p in public_hex {
            keyids.push(editor::add_key(&mut self.next, p)?);
        }
        self.next
            .roles
            .insert(role.to_string(), RoleKeys { keyids, threshold });
        Ok(())
    }

    fn role_mut(&mut self, role: &str) -> Result<&mut RoleKeys, BundleError> {
        self.next
            .roles
            .get_mut(role)
            .ok_or_else(|| err(format!("unknown role `{role}`")))
    }

    /// Add a public key (hex) to an existing role; returns its key id.
    pub fn add_key(&mut self, role: &str, public_hex: &str) -> Result<String, BundleError> {
        self.role_mut(role)?;
        let id = editor::add_key(&mut self.next, public_hex)?;
        let r = self.role_mut(role)?;
        if !r.keyids.contains(&id) {
            r.keyids.push(id.clone());
        }
        Ok(id)
    }

    /// Remove the key whose id starts with `id_prefix` from `role`.
    pub fn remove_key(&mut self, role: &str, id_prefix: &str) -> Result<(), BundleError> {
        let r = self.role_mut(role)?;
        let before = r.keyids.len();
        r.keyids.retain(|k| !k.starts_with(id_prefix));
        if r.keyids.len() == before {
            return Err(err(format!("no key {id_prefix} in role `{role}`")));
        }
        Ok(())
    }

    /// Revoke the one key whose id starts with `id_prefix`: out of every role,
    /// kept in the key table and the `revoked` list for the record. Returns its id.
    pub fn revoke(&mut self, id_prefix: &str) -> Result<String, BundleError> {
        let full: Vec<String> = self
            .next
            .keys
            .keys()
            .filter(|k| k.starts_with(id_prefix))
            .cloned()
            .collect();
        let [full] = full.as_slice() else {
            return Err(err(format!(
                "revoke: `{id_prefix}` matches {} keys of the root",
                full.len()
            )));
        };
        if !self.next.revoked.contains(full) {
            self.next.revoked.push(full.clone());
        }
        for r in self.next.roles.values_mut() {
            r.keyids.retain(|k| k != full);
        }
        Ok(full.clone())
    }

    /// Set how many of `role`'s keys must sign.
    pub fn set_threshold(&mut self, role: &str, threshold: u32) -> Result<(), BundleError> {
        self.role_mut(role)?.threshold = threshold;
        Ok(())
    }

    /// Set the rollback floor of bundle `name`; returns the floor it replaces.
    pub fn set_floor(&mut self, name: &str, sequence: u64) -> Result<Option<u64>, BundleError> {
        editor::set_floor(&mut self.next, name, sequence)
    }

    /// Remove the rollback floor of `name`; an error when there is none.
    pub fn clear_floor(&mut self, name: &str) -> Result<u64, BundleError> {
        editor::clear_floor(&mut self.next, name).ok_or_else(|| {
            err(format!(
                "root version {} sets no rollback floor for `{name}`",
                self.from.unwrap_or(self.next.version)
            ))
        })
    }

    /// Drop keys no role uses (revoked ones stay, for the record), validate,
    /// and sign with `keys`. The result may still need more signatures before
    /// `check_rotation` accepts it (`molt root sign` adds them).
    pub fn finish(mut self, keys: &[&SigningKey]) -> Result<SignedRoot, BundleError> {
        let used: std::collections::BTreeSet<String> = self
            .next
            .roles
            .values()
            .flat_map(|r| r.keyids.iter().cloned())
            .collect();
        let revoked = self.next.revoked.clone();
        self.next
            .keys
            .retain(|id, _| used.contains(id) || revoked.contains(id));
        self.next.validate()?;
        let mut root = SignedRoot {
            signed: self.next,
            signatures: vec![],
        };
        editor::sign_root(&mut root, keys)?;
        Ok(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn later() -> DateTime<Utc> {
        Utc::now() + Duration::days(30)
    }

    fn key() -> SigningKey {
        SigningKey::generate().expect("keygen").0
    }

    fn initial(root_key: &SigningKey, other: &SigningKey) -> SignedRoot {
        let mut e = RootEditor::init(later()).expect("init");
        e.set_role("root", &[root_key.public_hex()], 1)
            .expect("root");
        for r in ["checks", "packages"] {
            e.set_role(r, &[other.public_hex()], 1).expect("role");
        }
        let root = e.finish(&[root_key]).expect("finish");
        root.check_self_signed().expect("self-signed");
        root
    }

    #[test]
    fn a_rotation_signed_by_old_and_new_root_keys_is_accepted() {
        let (old_key, new_key, other) = (key(), key(), key());
        let v1 = initial(&old_key, &other);
        let mut e = RootEditor::rotate(&v1, later());
        assert_eq!(e.version(), 2);
        e.add_key("root", &new_key.public_hex()).expect("add");
        e.remove_key("root", old_key.key_id()).expect("remove");
        let v2 = e.finish(&[&old_key, &new_key]).expect("finish");
        v1.check_rotation(&v2, Utc::now()).expect("accepted");
        // The old root key is no role's any more, so it left the key table.
        assert!(!v2.signed.keys.contains_key(old_key.key_id()));
    }

    #[test]
    fn a_rotation_signed_by_the_new_keys_only_is_refused() {
        let (old_key, new_key, other) = (key(), key(), key());
        let v1 = initial(&old_key, &other);
        let mut e = RootEditor::rotate(&v1, later());
        e.add_key("root", &new_key.public_hex()).expect("add");
        e.remove_key("root", old_key.key_id()).expect("remove");
        let v2 = e.finish(&[&new_key]).expect("finish");
        assert!(matches!(
            v1.check_rotation(&v2, Utc::now()),
            Err(BundleError::Rotation { from: 1, to: 2, .. })
        ));
    }

    #[test]
    fn revoking_removes_the_key_from_every_role() {
        let (root_key, other, spare) = (key(), key(), key());
        let v1 = initial(&root_key, &other);
        let mut e = RootEditor::rotate(&v1, later());
        e.add_key("checks", &spare.public_hex()).expect("add");
        e.add_key("packages", &spare.public_hex()).expect("add");
        let id = e.revoke(&other.key_id()[..12]).expect("revoke");
        assert_eq!(id, other.key_id());
        let v2 = e.finish(&[&root_key]).expect("finish");
        assert!(v2.signed.revoked.contains(&id));
        assert!(v2.signed.keys.contains_key(&id), "kept for the record");
        assert!(v2.signed.roles.values().all(|r| !r.keyids.contains(&id)));
        v1.check_rotation(&v2, Utc::now()).expect("accepted");
    }

    #[test]
    fn unknown_roles_missing_keys_and_absent_floors_are_errors() {
        let (root_key, other) = (key(), key());
        let v1 = initial(&root_key, &other);
        let mut e = RootEditor::rotate(&v1, later());
        assert!(e.add_key("nope", &other.public_hex()).is_err());
        assert!(e.set_threshold("nope", 1).is_err());
        assert!(e.remove_key("checks", "ffff").is_err());
        assert!(e.clear_floor("molt-core").is_err());
        assert_eq!(e.set_floor("molt-core", 7).expect("floor"), None);
        assert_eq!(e.clear_floor("molt-core").expect("clear"), 7);
        // A threshold its keys cannot meet does not validate.
        e.set_threshold("root", 3).expect("threshold");
        assert!(e.finish(&[&root_key]).is_err());
    }
}
