//! Serde types for the signed metadata: the bundle manifest, the signature
//! file and the trust root. Kept apart from the code that trusts them.
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{CanonicalError, UnknownKind};

/// What a bundle carries; decides which root role must sign it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleKind {
    Precheck,
    Selector,
    Core,
    Runtime,
    Upgrade,
}

impl BundleKind {
    pub const ALL: [BundleKind; 5] = [
        BundleKind::Precheck,
        BundleKind::Selector,
        BundleKind::Core,
        BundleKind::Runtime,
        BundleKind::Upgrade,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BundleKind::Precheck => "precheck",
            BundleKind::Selector => "selector",
            BundleKind::Core => "core",
            BundleKind::Runtime => "runtime",
            BundleKind::Upgrade => "upgrade",
        }
    }

    /// Checks (wasm) and packages (native code) are signed by different roles.
    pub fn role(self) -> Role {
        match self {
            BundleKind::Precheck | BundleKind::Selector => Role::Checks,
            BundleKind::Core | BundleKind::Runtime | BundleKind::Upgrade => Role::Packages,
        }
    }
}

impl fmt::Display for BundleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BundleKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BundleKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// Roles of the trust root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Root,
    Checks,
    Packages,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Checks => "checks",
            Role::Packages => "packages",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub os: String,
    pub arch: String,
}

impl Target {
    pub fn universal() -> Self {
        Target {
            os: "universal".into(),
            arch: "universal".into(),
        }
    }
}

/// One payload file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    pub path: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the uncompressed content.
    pub sha256: String,
    /// Unix permission bits (0..=0o777; no setuid/setgid/sticky).
    pub mode: u32,
}

/// Resource limits a wasm component asks for (the sandbox caps them further).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// A wasm component in the payload: the WIT world it implements and what it requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub path: String,
    pub world: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub preopens: Vec<String>,
    #[serde(default)]
    pub limits: ComponentLimits,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// `molt/manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub kind: BundleKind,
    pub name: String,
    pub buildstamp: String,
    pub target: Target,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    /// Monotonic per `name`: a verifier with state refuses a lower one, except
    /// a control-plane assignment at or above the root's `rollback_floor`.
    pub sequence: u64,
    pub entries: Vec<ManifestEntry>,
    #[serde(default)]
    pub components: Vec<Component>,
}

/// What changed between two manifests (for the upgrade log and `molt bundle inspect`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ManifestDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Manifest {
    pub fn entry(&self, path: &str) -> Option<&ManifestEntry> {
        self.entries.iter().find(|e| e.path == path)
    }

    /// Files added, removed or changed (content, mode or size) from `older` to
    /// `self`: [`ManifestDiff::between`] their entry lists.
    pub fn diff_from(&self, older: &Manifest) -> ManifestDiff {
        fn key(e: &ManifestEntry) -> (&str, (&str, u32, u64)) {
            (e.path.as_str(), (e.sha256.as_str(), e.mode, e.size))
        }
        ManifestDiff::between(older.entries.iter().map(key), self.entries.iter().map(key))
    }
}

impl ManifestDiff {
    /// The one diff of two file lists, each item `(path, (sha256, mode, size))`;
    /// a path is changed when any of the three differs. The agent's changed
    /// files (what a new version directory must receive, and what a delta
    /// download fetches) are `added` and `changed` of its installed files
    /// against the new packages'.
    pub fn between<'a>(
        older: impl IntoIterator<Item = (&'a str, (&'a str, u32, u64))>,
        newer: impl IntoIterator<Item = (&'a str, (&'a str, u32, u64))>,
    ) -> ManifestDiff {
        let old: BTreeMap<&str, (&str, u32, u64)> = older.into_iter().collect();
        let new: BTreeMap<&str, (&str, u32, u64)> = newer.into_iter().collect();
        let mut d = ManifestDiff::default();
        for (p, e) in &new {
            match old.get(p) {
                None => d.added.push(p.to_string()),
                Some(o) if o != e => d.changed.push(p.to_string()),
                Some(_) => {}
            }
        }
        for p in old.keys() {
            if !new.contains_key(p) {
                d.removed.push(p.to_string());
            }
        }
        d
    }
}

/// One signature over the bundle digest (or the root's canonical JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub keyid: String,
    /// Lowercase hex of the 64-byte Ed25519 signature.
    pub sig: String,
}

/// `molt/signatures.json` (padded with spaces to a fixed size in the zip).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub format: u32,
    pub signatures: Vec<Signature>,
}

/// `molt/signatures.json` of bundle format 2: the whole-file signatures and
/// signatures over the manifest's bytes alone, so a reader that fetched only the
/// manifest (HTTP Range, [`crate::remote`]) can trust its per-entry digests.
/// Format 1 files parse into this type with `manifest_signatures` empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFileV2 {
    pub format: u32,
    pub signatures: Vec<Signature>,
    pub manifest_signatures: Vec<Signature>,
}

/// A public key in the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootKey {
    /// Always `ed25519`.
    pub scheme: String,
    /// Lowercase hex of the 32-byte raw public key.
    pub public: String,
    /// Optional end of validity of this key (signatures by it are refused after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u32,
}

/// The signed part of root.json, modelled on TUF's root role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootSigned {
    /// Always `root`.
    #[serde(rename = "type")]
    pub type_: String,
    pub version: u64,
    pub expires: DateTime<Utc>,
    pub keys: BTreeMap<String, RootKey>,
    pub roles: BTreeMap<String, RoleKeys>,
    #[serde(default)]
    pub revoked: Vec<String>,
    /// Per bundle name, the lowest manifest `sequence` a host may accept: a
    /// bundle below it is refused whatever the control plane says, and a
    /// downgrade the control plane assigns may go down to it, not further
    /// (docs/bundle-format.md, "Rollback floor"). Omitted when empty, so a root
    /// without floors keeps the canonical bytes (and signatures) it always had.
    /// An agent older than this field refuses a root that carries it (unknown
    /// field): upgrade the agents before signing a root with a floor.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rollback_floor: BTreeMap<String, u64>,
}

/// root.json: `signed` plus signatures over its canonical JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRoot {
    pub signed: RootSigned,
    pub signatures: Vec<Signature>,
}

/// Canonical JSON: object keys sorted by bytes, no insignificant whitespace,
/// serde_json's string escaping, integers only. Signatures over roots are made
/// over these bytes, so they do not depend on how a file was formatted.
pub fn canonical_json(v: &serde_json::Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    write_canonical(v, &mut out)?;
    Ok(out)
}

fn write_canonical(v: &serde_json::Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    use serde_json::Value;
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if n.is_f64() {
                return Err(CanonicalError::Float(n.clone()));
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => {
            let q = serde_json::to_string(s)?;
            out.extend_from_slice(q.as_bytes());
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out)?;
            }
            out.push(b']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let q = serde_json::to_string(k)?;
                out.extend_from_slice(q.as_bytes());
                out.push(b':');
                if let Some(x) = m.get(*k) {
                    write_canonical(x, out)?;
                }
            }
            out.push(b'}');
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{ "b": 1, "a": {"z": [1, "x\n"], "y": null}, "A": true }"#)
                .unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&v).unwrap()).unwrap(),
            r#"{"A":true,"a":{"y":null,"z":[1,"x\n"]},"b":1}"#
        );
        let f: serde_json::Value = serde_json::from_str(r#"{"a":1.5}"#).unwrap();
        assert!(canonical_json(&f).is_err());
    }

    #[test]
    fn manifest_diff_lists_added_removed_changed() {
        let e = |p: &str, h: &str| ManifestEntry {
            path: p.into(),
            size: 1,
            sha256: h.into(),
            mode: 0o644,
        };
        let mk = |entries| Manifest {
            format: 1,
            kind: BundleKind::Core,
            name: "molt-core".into(),
            buildstamp: "x".into(),
            target: Target::universal(),
            created: Utc::now(),
            expires: Utc::now(),
            sequence: 1,
            entries,
            components: vec![],
        };
        let old = mk(vec![e("a", "1"), e("b", "1"), e("c", "1")]);
        let new = mk(vec![e("a", "1"), e("b", "2"), e("d", "1")]);
        let d = new.diff_from(&old);
        assert_eq!(d.added, vec!["d"]);
        assert_eq!(d.removed, vec!["c"]);
        assert_eq!(d.changed, vec!["b"]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Arbitrary bytes never panic the manifest and root parsers.
        #[test]
        fn manifest_and_root_parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = serde_json::from_slice::<Manifest>(&bytes);
            let _ = serde_json::from_slice::<SignedRoot>(&bytes);
            let _ = SignedRoot::from_slice(&bytes);
            let _ = serde_json::from_slice::<SignatureFile>(&bytes);
        }

        /// Root-shaped JSON with arbitrary versions, thresholds and key material
        /// never panics the root validator and is never accepted unsigned.
        #[test]
        fn root_like_json_is_refused_without_signatures(
            version in proptest::prelude::any::<i64>(),
            threshold in proptest::prelude::any::<i64>(),
            keyid in "[0-9a-f]{0,64}",
            public in "[0-9a-f]{0,66}",
            role in "(root|checks|packages|other)",
        ) {
            let s = format!(
                r#"{{"signed":{{"type":"root","version":{version},"expires":"2030-01-01T00:00:00Z","keys":{{"{keyid}":{{"scheme":"ed25519","public":"{public}"}}}},"roles":{{"{role}":{{"keyids":["{keyid}"],"threshold":{threshold}}}}},"revoked":[]}},"signatures":[]}}"#
            );
            proptest::prop_assert!(SignedRoot::from_slice(s.as_bytes()).is_err());
        }

        /// JSON-shaped input built from the manifest's own field names.
        #[test]
        fn manifest_like_json_never_panics(
            kind in "(precheck|core|bogus)",
            seq in proptest::prelude::any::<i64>(),
            size in proptest::prelude::any::<i64>(),
            mode in proptest::prelude::any::<i64>(),
            path in "\\PC{0,20}",
            date in "(2030-01-01T00:00:00Z|not-a-date|)",
        ) {
            let s = format!(
                r#"{{"format":1,"kind":"{kind}","name":"n","buildstamp":"b","target":{{"os":"universal","arch":"universal"}},"created":"{date}","expires":"{date}","sequence":{seq},"entries":[{{"path":{p},"size":{size},"sha256":"00","mode":{mode}}}]}}"#,
                p = serde_json::to_string(&path).unwrap()
            );
            if let Ok(m) = serde_json::from_str::<Manifest>(&s) {
                proptest::prop_assert!(seq >= 0 && size >= 0 && mode >= 0);
                proptest::prop_assert_eq!(m.entries[0].path.clone(), path);
            }
        }
    }
}
