//! Bundle formats v1 and v2, trust root, rollback state and buildstamps
//! (docs/bundle-format.md). No wasmtime, no network.
//!
//! API summary:
//! - Verify (what the agent links):
//!   - [`verify_bundle`]`(path, &SignedRoot, &VerifyOptions) -> Result<VerifiedBundle>`: stateless.
//!   - [`TrustStore`]: `open(dir)`, `open_or_init(dir, &SignedRoot)`, `update_root(SignedRoot)`,
//!     `verify_bundle(path, &VerifyOptions)` (also refuses and records `sequence`),
//!     `verify_bundle_as(path, &VerifyOptions, Accept)` (an assigned downgrade down to the
//!     root's `rollback_floor`; the policy is [`store::check_sequence`]), `highest_sequence(name)`.
//!   - [`extract`]`(&VerifiedBundle, bundle_path, dest_dir, &Limits) -> Result<ExtractReport>`.
//!   - [`SignedRoot::load`]`(path)`, [`SignedRoot::from_slice`]`(bytes)`.
//! - Ranged reads ([`remote`], format 2): `parse_tail`, `verify_remote` (or
//!   `TrustStore::verify_remote_as`), `plan_ranges`, `read_entry`/`read_entry_from`.
//! - Write ([`editor`]): [`PackSpec`] (+ `PackSpec::from_buildstamp(name, sequence)`),
//!   [`pack_dir`]`(src_dir, &PackSpec, out) -> Result<Manifest>`,
//!   [`sign_bundle`]`(path, &[&SigningKey]) -> Result<String /*digest*/>`,
//!   [`editor::new_root`], [`editor::sign_root`], [`editor::add_key`],
//!   [`editor::set_floor`], [`editor::clear_floor`] (rollback floors).
//! - Keys: [`SigningKey::generate`], [`SigningKey::load`]`(pk8 path)`, `key_id()`, `public_hex()`.
//! - Buildstamps: [`Buildstamp`] and [`Version`] (`FromStr`, `Display`, `Ord`), [`FamilyTable`].
//! - Untrusted text: [`sanitize`]`(text, max_bytes)` escapes control characters and bounds length.
//! - Errors: one enum, [`BundleError`], each variant naming the bundle/entry/key and the reason.

/// Re-exported so callers (the CLI) use the same chrono types as the manifest.
pub use chrono;

pub mod buildstamp;
pub mod container;
pub mod editor;
pub mod error;
pub mod extract;
pub mod keys;
pub mod remote;
pub mod root;
pub mod rotation;
pub mod schema;
pub mod store;
pub mod text;
pub mod verify;

pub use buildstamp::{Buildstamp, BuildstampError, FamilyTable, Hotfix, Product, Version};
pub use container::{Limits, MANIFEST_PATH, SIGNATURES_PATH};
pub use editor::{PackSpec, pack_dir, sign_bundle};
pub use error::{BundleError, ReplayRule};
pub use extract::{ExtractReport, extract, extract_scratch};
pub use keys::{SigningKey, key_id};
pub use remote::{RemoteIndex, RemoteLayout, TAIL_GUESS, Tail};
pub use root::FloorChange;
pub use schema::{
    BundleKind, Component, ComponentLimits, Manifest, ManifestDiff, ManifestEntry, Role,
    RootSigned, SignedRoot, Target,
};
pub use store::{Accept, SequenceDecision, TrustStore, check_sequence};
pub use text::sanitize;
pub use verify::{EntryLocation, VerifiedBundle, VerifyOptions, verify_bundle};

/// Test support that other crates' tests (the agent's, the e2e suite's)
/// share instead of each carrying a copy. Not for production use.
#[doc(hidden)]
pub mod testing {
    /// `n` incompressible bytes from `seed` (xorshift64; `seed | 1`, so any
    /// seed works): a different seed, different bytes.
    pub fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
