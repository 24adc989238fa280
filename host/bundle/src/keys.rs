//! Ed25519 keys (ring). A key id is the hex SHA-256 of the raw 32-byte public
//! key, so it can be recomputed from root.json and never lies about the key.
use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::error::BundleError;

/// Domain separation: a bundle signature can never be replayed as a root signature.
pub const BUNDLE_SIG_CONTEXT: &[u8] = b"molt-bundle-v1\0";
/// Bundle format 2 signs the whole-file digest under its own context, so the
/// format version is part of what is signed.
pub const BUNDLE_SIG_CONTEXT_V2: &[u8] = b"molt-bundle-v2\0";
/// Bundle format 2: the signature over SHA-256 of the manifest's bytes alone.
pub const MANIFEST_SIG_CONTEXT_V2: &[u8] = b"molt-bundle-manifest-v2\0";
pub const ROOT_SIG_CONTEXT: &[u8] = b"molt-root-v1\0";

/// Hex SHA-256 of a raw public key.
pub fn key_id(public: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, public).as_ref())
}

/// A private signing key, loaded from a PKCS#8 v2 file made by `molt keygen`.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.id)
    }
}

impl SigningKey {
    /// A new random key; returns it and its PKCS#8 bytes (to write to a file).
    pub fn generate() -> Result<(SigningKey, Vec<u8>), BundleError> {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| BundleError::Key {
            reason: "the system random generator failed".into(),
        })?;
        let bytes = doc.as_ref().to_vec();
        let key = SigningKey::from_pkcs8(&bytes)?;
        Ok((key, bytes))
    }

    pub fn from_pkcs8(bytes: &[u8]) -> Result<SigningKey, BundleError> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes))
            .map_err(|e| BundleError::Key {
                reason: format!("not an Ed25519 PKCS#8 key: {e}"),
            })?;
        let id = key_id(pair.public_key().as_ref());
        Ok(SigningKey { pair, id })
    }

    pub fn load(path: &Path) -> Result<SigningKey, BundleError> {
        let bytes = std::fs::read(path).map_err(|e| BundleError::io(path, e))?;
        SigningKey::from_pkcs8(&bytes).map_err(|e| BundleError::Key {
            reason: format!("{}: {e}", path.display()),
        })
    }

    pub fn key_id(&self) -> &str {
        &self.id
    }

    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.public_key())
    }

    /// Sign `context || message`.
    pub fn sign(&self, context: &[u8], message: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(context.len() + message.len());
        m.extend_from_slice(context);
        m.extend_from_slice(message);
        self.pair.sign(&m).as_ref().to_vec()
    }
}

/// Check one signature made by [`SigningKey::sign`].
pub fn verify_sig(public: &[u8], context: &[u8], message: &[u8], sig: &[u8]) -> bool {
    let mut m = Vec::with_capacity(context.len() + message.len());
    m.extend_from_slice(context);
    m.extend_from_slice(message);
    UnparsedPublicKey::new(&ED25519, public)
        .verify(&m, sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_with_domain_separation() {
        let (k, pk8) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8(&pk8).unwrap();
        assert_eq!(k.key_id(), again.key_id());
        assert_eq!(k.key_id(), key_id(k.public_key()));
        let s = k.sign(BUNDLE_SIG_CONTEXT, b"digest");
        assert!(verify_sig(
            k.public_key(),
            BUNDLE_SIG_CONTEXT,
            b"digest",
            &s
        ));
        assert!(!verify_sig(k.public_key(), ROOT_SIG_CONTEXT, b"digest", &s));
        assert!(!verify_sig(
            k.public_key(),
            BUNDLE_SIG_CONTEXT,
            b"digesT",
            &s
        ));
        assert!(SigningKey::from_pkcs8(b"not a key").is_err());
    }
}
