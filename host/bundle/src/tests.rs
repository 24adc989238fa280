//! Crate-level tests with real files, real zips and real Ed25519 signatures:
//! round trip, every-byte tampering, one hand-made case per refusal rule, and
//! root rotation.
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use tempfile::TempDir;

use crate::container::{Limits, METHOD_DEFLATED};
use crate::editor::{self, PackSpec, ZipWriter};
use crate::schema::{Manifest, ManifestEntry, SignedRoot, Target};
use crate::testing::noise;
use crate::{
    BundleError, SigningKey, TrustStore, VerifyOptions, extract, pack_dir, sign_bundle,
    verify_bundle,
};

const CORE: &str =
    "molt-core.vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815.universal.universal.zip";
const PRECHECK: &str =
    "molt-precheck.vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815.universal.universal.zip";

fn key() -> SigningKey {
    SigningKey::generate().unwrap().0
}

fn in_days(d: i64) -> DateTime<Utc> {
    Utc::now() + Duration::days(d)
}

/// Roles -> (keys, threshold), signed by `signers`.
fn root_with(
    roles: &[(&str, Vec<&SigningKey>, u32)],
    signers: &[&SigningKey],
    expires: DateTime<Utc>,
) -> SignedRoot {
    let mut m = BTreeMap::new();
    for (r, ks, t) in roles {
        m.insert(r.to_string(), (ks.clone(), *t));
    }
    signed(editor::new_root(&m, expires).unwrap(), signers)
}

/// `signed` with signatures by `signers`.
fn signed(signed: crate::schema::RootSigned, signers: &[&SigningKey]) -> SignedRoot {
    let mut root = SignedRoot {
        signed,
        signatures: vec![],
    };
    editor::sign_root(&mut root, signers).unwrap();
    root
}

pub(crate) struct Fx {
    pub(crate) dir: TempDir,
    pub(crate) key: SigningKey,
    pub(crate) root: SignedRoot,
}

pub(crate) fn fx() -> Fx {
    let key = key();
    let root = editor::single_key_root(&key, in_days(30)).unwrap();
    Fx {
        dir: TempDir::new().unwrap(),
        key,
        root,
    }
}

fn write_payload(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("lib/deep")).unwrap();
    std::fs::write(dir.join("bin/run.sh"), "#!/bin/sh\necho up\n").unwrap();
    std::fs::set_permissions(
        dir.join("bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        dir.join("lib/notes.txt"),
        "Current packages: Installed/Assigned\n".repeat(100),
    )
    .unwrap();
    std::fs::write(dir.join("lib/deep/blob.bin"), noise(7, 3000)).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
}

fn packed(fx: &Fx, name: &str, buildstamp: &str, seq: u64, signers: &[&SigningKey]) -> PathBuf {
    let src = fx.dir.path().join(format!("src-{name}"));
    if !src.exists() {
        write_payload(&src);
    }
    let out = fx.dir.path().join(format!("{name}.zip"));
    let spec = PackSpec::from_buildstamp(buildstamp, seq).unwrap();
    pack_dir(&src, &spec, &out).unwrap();
    sign_bundle(&out, signers).unwrap();
    out
}

fn verify(path: &Path, root: &SignedRoot) -> Result<crate::VerifiedBundle, BundleError> {
    verify_bundle(path, root, &VerifyOptions::default())
}

fn msg<T: std::fmt::Debug>(r: Result<T, BundleError>) -> String {
    match r {
        Ok(v) => panic!("accepted, expected a refusal: {v:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn pack_sign_verify_extract_round_trip() {
    let fx = fx();
    let b = packed(&fx, "core", CORE, 3, &[&fx.key]);
    let v = verify(&b, &fx.root).unwrap();
    assert_eq!(v.manifest.name, "molt-core");
    assert_eq!(v.manifest.sequence, 3);
    assert_eq!(v.signers, vec![fx.key.key_id().to_string()]);
    assert_eq!(v.manifest.entries.len(), 4);
    verify_bundle(&b, &fx.root, &deep()).unwrap();
    let dest = fx.dir.path().join("out");
    let rep = extract(&v, &b, &dest, &Limits::default()).unwrap();
    assert_eq!(rep.files.len(), 4);
    let src = fx.dir.path().join("src-core");
    for f in ["bin/run.sh", "lib/notes.txt", "lib/deep/blob.bin", "empty"] {
        assert_eq!(
            std::fs::read(dest.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f}"
        );
    }
    let mode = std::fs::metadata(dest.join("bin/run.sh"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755);
    // The scratch variant (no fsync per file) writes the same tree.
    let scratch = fx.dir.path().join("scratch");
    let rep2 = crate::extract_scratch(&v, &b, &scratch, &Limits::default()).unwrap();
    assert_eq!(rep2.files, rep.files);
    for f in &rep.files {
        assert_eq!(
            std::fs::read(scratch.join(f)).unwrap(),
            std::fs::read(dest.join(f)).unwrap(),
            "{f}"
        );
    }
    // A second extraction into the same place refuses to overwrite and leaves the first intact.
    let e = extract(&v, &b, &dest, &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot create"), "{e}");
    assert!(dest.join("bin/run.sh").exists());
    // Standard zip tools read it (it is a real zip).
    if let Ok(out) = std::process::Command::new("unzip")
        .arg("-t")
        .arg(&b)
        .output()
    {
        assert!(
            out.status.success(),
            "unzip -t: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn signing_twice_adds_a_signature_without_moving_bytes() {
    let fx = fx();
    let k2 = key();
    let root = root_with(
        &[
            ("root", vec![&fx.key], 1),
            ("checks", vec![&fx.key], 1),
            ("packages", vec![&fx.key, &k2], 2),
        ],
        &[&fx.key],
        in_days(30),
    );
    let b = packed(&fx, "core", CORE, 1, &[&fx.key]);
    let len = std::fs::metadata(&b).unwrap().len();
    let e = msg(verify(&b, &root));
    assert!(
        e.contains("signatures below the threshold of role `packages`: 1 valid of 2 required"),
        "{e}"
    );
    let d1 = sign_bundle(&b, &[&k2]).unwrap();
    let d2 = sign_bundle(&b, &[&k2]).unwrap(); // replacing a signature is idempotent
    assert_eq!(d1, d2);
    assert_eq!(std::fs::metadata(&b).unwrap().len(), len);
    let v = verify(&b, &root).unwrap();
    assert_eq!(v.signers.len(), 2);
}

/// A small signed bundle of `format` (a text and a binary entry): small
/// enough to flip every byte of it.
pub(crate) fn tiny_bundle(fx: &Fx, format: u32) -> PathBuf {
    let src = fx.dir.path().join("tiny");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "hello hello hello hello hello hello\n").unwrap();
    std::fs::write(src.join("b.bin"), noise(3, 200)).unwrap();
    let b = fx.dir.path().join(format!("tiny-{format}.zip"));
    let spec = PackSpec::from_buildstamp(CORE, 1).unwrap();
    editor::pack_dir_format(&src, &spec, &b, format).unwrap();
    sign_bundle(&b, &[&fx.key]).unwrap();
    verify(&b, &fx.root).unwrap();
    b
}

/// The offsets of `orig` whose byte, flipped, still verifies against fx's root.
pub(crate) fn accepted_flips(fx: &Fx, orig: &[u8]) -> Vec<usize> {
    let t = fx.dir.path().join("flipped.zip");
    (0..orig.len())
        .filter(|&i| {
            let mut m = orig.to_vec();
            m[i] ^= 0xFF;
            std::fs::write(&t, &m).unwrap();
            verify(&t, &fx.root).is_ok()
        })
        .collect()
}

#[test]
fn every_flipped_byte_and_every_truncation_is_refused() {
    let fx = fx();
    let orig = std::fs::read(tiny_bundle(&fx, 2)).unwrap();
    let mut accepted = accepted_flips(&fx, &orig);
    let t = fx.dir.path().join("t.zip");
    let mut truncs = 0;
    for cut in (0..orig.len()).step_by(64) {
        std::fs::write(&t, &orig[..cut]).unwrap();
        truncs += 1;
        if verify(&t, &fx.root).is_ok() {
            accepted.push(cut);
        }
    }
    assert!(orig.len() > 8192 && truncs > 100);
    assert!(
        accepted.is_empty(),
        "accepted tampered offsets: {accepted:?}"
    );
}

/// The signature slot is outside the signed digest, so it must be canonical:
/// JSON whitespace swapped into the padding or between tokens, or a hex digit
/// changed, must not pass (a plain 0xFF flip is caught by the JSON parser alone,
/// so it does not prove this).
#[test]
fn every_plausible_substitution_in_the_signature_slot_is_refused() {
    let fx = fx();
    let orig = std::fs::read(tiny_bundle(&fx, 2)).unwrap();
    // The slot is the last entry's data: find it by its JSON prefix.
    let start = orig
        .windows(10)
        .rposition(|w| w == b"{\"format\":")
        .expect("signature slot");
    let t = fx.dir.path().join("t.zip");
    let mut accepted = Vec::new();
    for i in start..start + crate::container::SIGNATURES_SIZE as usize {
        for v in [b'\t', b'\n', b'\r', b'0', b'f'] {
            if orig[i] == v {
                continue;
            }
            let mut m = orig.clone();
            m[i] = v;
            std::fs::write(&t, &m).unwrap();
            if verify(&t, &fx.root).is_ok() {
                accepted.push((i, v));
            }
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:?}");
}

/// A format-1 manifest for `buildstamp` listing `entries`, valid for 10 days.
fn manifest_of(buildstamp: &str, entries: Vec<ManifestEntry>) -> Manifest {
    let b: crate::Buildstamp = buildstamp.parse().unwrap();
    Manifest {
        format: 1,
        kind: b.kind,
        name: b.package(),
        buildstamp: buildstamp.into(),
        target: Target::universal(),
        created: Utc::now(),
        expires: in_days(10),
        sequence: 1,
        entries,
        components: vec![],
    }
}

/// The manifest entry of `data` at `path`.
fn entry_of(path: &str, data: &[u8], mode: u32) -> ManifestEntry {
    ManifestEntry {
        path: path.to_string(),
        size: data.len() as u64,
        sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref()),
        mode,
    }
}

/// Write manifest `m` and the entries `add` writes as a bundle with a
/// format-1 slot, signed with fx's key when structurally possible.
fn crafted(
    fx: &Fx,
    m: &Manifest,
    add: impl FnOnce(&mut ZipWriter) -> Result<(), BundleError>,
) -> PathBuf {
    let out = fx.dir.path().join(format!("crafted-{}.zip", rand_name()));
    editor::write_bundle(&out, &serde_json::to_vec(m).unwrap(), 1, add).unwrap();
    let _ = sign_bundle(&out, &[&fx.key]);
    out
}

/// Build a core bundle by hand: entries (name, data, deflate, st_mode), a
/// manifest derived from them and then edited, signed when structurally possible.
fn craft(
    fx: &Fx,
    files: &[(&str, Vec<u8>, bool, u32)],
    edit: impl FnOnce(&mut Manifest),
) -> PathBuf {
    let entries = files
        .iter()
        .map(|(n, d, _, mode)| entry_of(n, d, mode & 0o777))
        .collect();
    let mut m = manifest_of(CORE, entries);
    edit(&mut m);
    crafted(fx, &m, |w| {
        for (n, d, deflate, mode) in files {
            w.add_bytes(n, d, *deflate, *mode)?;
        }
        Ok(())
    })
}

fn rand_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn f(name: &str, data: &[u8]) -> (&'static str, Vec<u8>, bool, u32) {
    (
        Box::leak(name.to_string().into_boxed_str()),
        data.to_vec(),
        true,
        0o100644,
    )
}

fn deep() -> VerifyOptions {
    VerifyOptions {
        deep: true,
        ..Default::default()
    }
}

/// Extract `v` into `dest`, which must fail and leave nothing behind; returns why.
fn extract_refused(v: &crate::VerifiedBundle, bundle: &Path, dest: &Path) -> String {
    let e = extract(v, bundle, dest, &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(!dest.exists(), "extraction left files behind: {e}");
    e
}

#[test]
fn crafted_good_bundle_is_accepted() {
    let fx = fx();
    let b = craft(&fx, &[f("a", b"aaaa"), f("dir/b", b"bbbb")], |_| {});
    verify_bundle(&b, &fx.root, &deep()).unwrap();
}

type Files = Vec<(&'static str, Vec<u8>, bool, u32)>;
/// Files, manifest edit, verify limits, what the refusal says.
type Refusal = (Files, fn(&mut Manifest), Limits, &'static [&'static str]);

/// One hand-made bundle per rule of the fast check: its files, the edit to
/// its manifest, the limits it is verified under, and what the refusal says.
#[test]
fn crafted_bundles_are_refused_naming_the_rule_they_break() {
    let fx = fx();
    let keep = |_: &mut Manifest| {};
    let lim = |max_entries: u64, max_total_size: u64| Limits {
        max_entries,
        max_total_size,
        ..Limits::default()
    };
    let (n, t) = (
        Limits::default().max_entries,
        Limits::default().max_total_size,
    );
    let cases: [Refusal; 13] = [
        (
            vec![f("a", b"a"), f("extra", b"x")],
            |m| m.entries.retain(|e| e.path != "extra"),
            lim(n, t),
            &["entry `extra` is in the zip but not listed in the manifest"],
        ),
        (
            vec![f("a", b"a")],
            |m| {
                let mut g = m.entries[0].clone();
                g.path = "ghost".into();
                m.entries.push(g)
            },
            lim(n, t),
            &["manifest entry `ghost` is missing from the zip"],
        ),
        (
            vec![f("a", b"12345")],
            |m| m.entries[0].size = 6,
            lim(n, t),
            &["entry `a`: size mismatch: declared 6 bytes, the zip header says 5 bytes"],
        ),
        (
            vec![f("a", b"1"), f("a", b"2")],
            keep,
            lim(n, t),
            &["duplicate entry name `a`"],
        ),
        (
            vec![f("/etc/cron.d/x", b"1")],
            keep,
            lim(n, t),
            &["entry `/etc/cron.d/x`: absolute path"],
        ),
        (
            vec![f("lib/../../escape", b"1")],
            keep,
            lim(n, t),
            &["entry `lib/../../escape`: `..` component in path"],
        ),
        (
            vec![("link", b"/etc/passwd".to_vec(), false, 0o120777)],
            keep,
            lim(n, t),
            &["entry `link`: symlinks are not allowed"],
        ),
        (
            vec![("fifo", vec![], false, 0o010644)],
            keep,
            lim(n, t),
            &["entry `fifo`: special file (type 0o10000) is not allowed"],
        ),
        (
            vec![("suid", b"x".to_vec(), false, 0o104755)],
            |m| m.entries[0].mode = 0o4755,
            lim(n, t),
            &["entry `suid`: mode 0o4755 has bits other than rwx permissions"],
        ),
        (
            (0..5).map(|i| f(&format!("f{i}"), b"x")).collect(),
            keep,
            lim(6, t),
            &["too many entries: 7 (limit 6)"],
        ),
        (
            vec![f("zeros", &vec![0u8; 4 << 20])],
            keep,
            lim(n, t),
            &[
                "entry `zeros`: compression ratio",
                "above the limit of 200:1 (zip bomb?)",
            ],
        ),
        (
            vec![f("a", &[1u8; 600]), f("b", &[2u8; 600])],
            keep,
            lim(n, 1000),
            &["total uncompressed size", "above the limit of 1000 bytes"],
        ),
        // A newer molt's manifest (in a slot this build reads): the one format message.
        (
            vec![f("a", b"a")],
            |m| m.format = 3,
            lim(n, t),
            &[
                "bundle format 3 is newer than this molt understands (1 or 2): upgrade molt (agents before the control plane's packages), or pack with --format 1",
            ],
        ),
    ];
    for (files, edit, limits, says) in cases {
        let b = craft(&fx, &files, edit);
        let opts = VerifyOptions {
            limits,
            ..Default::default()
        };
        let e = msg(verify_bundle(&b, &fx.root, &opts));
        for s in says {
            assert!(e.contains(s), "{s}:\n{e}");
        }
    }
}

#[test]
fn refuses_a_digest_mismatch_on_deep_verify_and_extract_and_cleans_up() {
    let fx = fx();
    let b = craft(&fx, &[f("a", b"first"), f("b", b"second")], |m| {
        m.entries[1].sha256 = m.entries[0].sha256.clone()
    });
    // The signer signed a wrong manifest: the fast check proves who signed it,
    // the content check (deep, extraction) proves it does not match.
    let v = verify(&b, &fx.root).unwrap();
    let e = msg(verify_bundle(&b, &fx.root, &deep()));
    assert!(e.contains("entry `b`: SHA-256 mismatch"), "{e}");
    let e = extract_refused(&v, &b, &fx.dir.path().join("x"));
    assert!(e.contains("entry `b`: SHA-256 mismatch"), "{e}");
}

#[test]
fn refuses_a_file_that_is_also_a_directory_of_another_entry() {
    let fx = fx();
    let b = craft(
        &fx,
        &[f("lib/a.dat", b"file"), f("lib/a.dat/b.dat", b"nested")],
        |_| {},
    );
    // Signed, so only the layout rule can refuse it: fast, deep and stateful alike.
    for opts in [VerifyOptions::default(), deep()] {
        let e = msg(verify_bundle(&b, &fx.root, &opts));
        assert!(
            e.contains(
                "entry `lib/a.dat` is a file but entry `lib/a.dat/b.dat` needs it to be a directory"
            ),
            "{e}"
        );
    }
    let mut store = TrustStore::open_or_init(&fx.dir.path().join("state"), &fx.root).unwrap();
    let e = msg(store.verify_bundle(&b, &VerifyOptions::default()));
    assert!(e.contains("`lib/a.dat/b.dat`"), "{e}");
    // In either order of the entries.
    let b = craft(&fx, &[f("x/y/z", b"nested"), f("x/y", b"file")], |_| {});
    let e = msg(verify(&b, &fx.root));
    assert!(e.contains("entry `x/y` is a file but entry `x/y/z`"), "{e}");
    // Extraction refuses it too, should such a list ever reach it.
    let ok = craft(
        &fx,
        &[f("lib/a.dat", b"file"), f("lib/c/b.dat", b"nested")],
        |_| {},
    );
    let mut v = verify(&ok, &fx.root).unwrap();
    v.entries[1].path = "lib/a.dat/b.dat".into();
    let e = extract_refused(&v, &ok, &fx.dir.path().join("conflict"));
    assert!(e.contains("exists and is not a directory"), "{e}");
}

/// Rewrite the one-digit format of a packed bundle's signature slot (outside
/// the signed digest; only the format check stands in the way).
pub(crate) fn set_slot_format(bundle: &mut [u8], digit: u8) {
    let at = bundle
        .windows(10)
        .rposition(|w| w == b"{\"format\":")
        .expect("signature slot");
    bundle[at + 10] = digit;
}

/// A newer molt's signature slot is refused with the same message as its
/// manifest, whole-file (here) and ranged (remote.rs).
#[test]
fn a_newer_format_says_what_to_do() {
    let fx = fx();
    let b = packed(&fx, "core", CORE, 1, &[&fx.key]);
    let mut bytes = std::fs::read(&b).unwrap();
    set_slot_format(&mut bytes, b'3');
    std::fs::write(&b, &bytes).unwrap();
    let e = verify(&b, &fx.root).unwrap_err();
    assert!(
        matches!(e, BundleError::FormatTooNew { format: 3, .. }),
        "{e}"
    );
    assert!(
        e.to_string().ends_with("core.zip: bundle format 3 is newer than this molt understands (1 or 2): upgrade molt (agents before the control plane's packages), or pack with --format 1"),
        "{e}"
    );
    // Format 0 is not newer: an invalid slot, as before.
    set_slot_format(&mut bytes, b'0');
    std::fs::write(&b, &bytes).unwrap();
    let e = msg(verify(&b, &fx.root));
    assert!(
        e.contains("invalid molt/signatures.json: format 0 (expected 1 or 2)"),
        "{e}"
    );
}

#[test]
fn refuses_content_larger_than_declared() {
    let fx = fx();
    // A deflate stream of 100 000 bytes whose headers and manifest claim 10 bytes.
    let big = vec![b'x'; 100_000];
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, &big).unwrap();
    let deflated = enc.finish().unwrap();
    let claimed = b"xxxxxxxxxx";
    let m = manifest_of(CORE, vec![entry_of("liar", claimed, 0o644)]);
    let out = crafted(&fx, &m, |w| {
        let crc = crc32fast::hash(claimed);
        w.add_raw("liar", METHOD_DEFLATED, crc, &deflated, 10, 0o100644)
    });
    let v = verify(&out, &fx.root).unwrap();
    let e = msg(verify_bundle(&out, &fx.root, &deep()));
    assert!(
        e.contains("entry `liar`: size mismatch: declared 10 bytes, content is more than 10 bytes"),
        "{e}"
    );
    let e = extract_refused(&v, &out, &fx.dir.path().join("liar-out"));
    assert!(e.contains("content is more than 10 bytes"), "{e}");
}

#[test]
fn refuses_unsigned_and_under_threshold_bundles() {
    let fx = fx();
    let src = fx.dir.path().join("s");
    write_payload(&src);
    let b = fx.dir.path().join("unsigned.zip");
    pack_dir(&src, &PackSpec::from_buildstamp(CORE, 1).unwrap(), &b).unwrap();
    let e = msg(verify(&b, &fx.root));
    assert!(e.contains("signatures below the threshold of role `packages`: 0 valid of 1 required (no signatures)"), "{e}");
}

#[test]
fn refuses_unknown_keys_and_wrong_roles() {
    let fx = fx();
    let stranger = key();
    let b = packed(&fx, "core", CORE, 1, &[&stranger]);
    let e = msg(verify(&b, &fx.root));
    assert!(e.contains("unknown key (not in root version 1)"), "{e}");

    let (r, c, p) = (key(), key(), key());
    let root = root_with(
        &[
            ("root", vec![&r], 1),
            ("checks", vec![&c], 1),
            ("packages", vec![&p], 1),
        ],
        &[&r],
        in_days(9),
    );
    let b = packed(&fx, "pre", PRECHECK, 1, &[&p]);
    let e = msg(verify(&b, &root));
    assert!(
        e.contains("role `checks`") && e.contains("not a key of role `checks`"),
        "{e}"
    );
    sign_bundle(&b, &[&c]).unwrap();
    verify(&b, &root).unwrap();
}

#[test]
fn refuses_revoked_and_expired_keys() {
    let fx = fx();
    let (r, p1, p2) = (key(), key(), key());
    let mut root = root_with(
        &[
            ("root", vec![&r], 1),
            ("checks", vec![&r], 1),
            ("packages", vec![&p1, &p2], 1),
        ],
        &[],
        in_days(9),
    );
    root.signed.revoked.push(p2.key_id().to_string());
    root.signed.keys.get_mut(p1.key_id()).unwrap().expires = Some(Utc::now() - Duration::days(1));
    editor::sign_root(&mut root, &[&r]).unwrap();
    let root = SignedRoot::from_slice(&root.to_json_pretty().unwrap()).unwrap();
    let b = packed(&fx, "core", CORE, 1, &[&p2]);
    let e = msg(verify(&b, &root));
    assert!(e.contains("key revoked in root version 1"), "{e}");
    let b = packed(&fx, "core2", CORE, 1, &[&p1]);
    let e = msg(verify(&b, &root));
    assert!(e.contains("key expired at"), "{e}");
}

#[test]
fn refuses_an_expired_bundle() {
    let fx = fx();
    let src = fx.dir.path().join("s");
    write_payload(&src);
    let b = fx.dir.path().join("old.zip");
    let mut spec = PackSpec::from_buildstamp(CORE, 1).unwrap();
    spec.expires = Utc::now() - Duration::hours(1);
    pack_dir(&src, &spec, &b).unwrap();
    sign_bundle(&b, &[&fx.key]).unwrap();
    let e = msg(verify(&b, &fx.root));
    assert!(e.contains("bundle `molt-core` expired at"), "{e}");
}

#[test]
fn refuses_trailing_data_comments_and_gaps() {
    let fx = fx();
    let b = packed(&fx, "core", CORE, 1, &[&fx.key]);
    let orig = std::fs::read(&b).unwrap();
    let t = fx.dir.path().join("t.zip");
    let mut m = orig.clone();
    m.extend_from_slice(b"junk");
    std::fs::write(&t, &m).unwrap();
    assert!(msg(verify(&t, &fx.root)).contains("no end-of-central-directory record at the end"));
    // A real archive comment, as `zip -z` would add.
    let mut m = orig.clone();
    let n = m.len();
    m[n - 2..].copy_from_slice(&3u16.to_le_bytes());
    m.extend_from_slice(b"hey");
    std::fs::write(&t, &m).unwrap();
    assert!(msg(verify(&t, &fx.root)).contains("no end-of-central-directory"));
    // Prepended data (a "self-extracting" stub) shifts everything.
    let mut m = b"MZstub".to_vec();
    m.extend_from_slice(&orig);
    std::fs::write(&t, &m).unwrap();
    let e = msg(verify(&t, &fx.root));
    assert!(e.contains("invalid container"), "{e}");
}

/// A trust store (in fx's `state`) that accepted molt-core sequence 5: the
/// store, its directory, the bundles of sequence 5 and 4.
fn store_at_5(fx: &Fx) -> (TrustStore, PathBuf, PathBuf, PathBuf) {
    let state = fx.dir.path().join("state");
    let mut store = TrustStore::open_or_init(&state, &fx.root).unwrap();
    let b5 = packed(fx, "s5", CORE, 5, &[&fx.key]);
    let b4 = packed(fx, "s4", CORE, 4, &[&fx.key]);
    store.verify_bundle(&b5, &VerifyOptions::default()).unwrap();
    (store, state, b5, b4)
}

#[test]
fn replayed_lower_sequence_is_refused_with_state() {
    let fx = fx();
    let (mut store, state, b5, b4) = store_at_5(&fx);
    store.verify_bundle(&b5, &VerifyOptions::default()).unwrap(); // same sequence again is fine
    let e = msg(store.verify_bundle(&b4, &VerifyOptions::default()));
    assert!(e.contains("replayed or older bundle refused: `molt-core` sequence 4 is lower than 5 already accepted"), "{e}");
    // The state survives a restart, and the stateless check alone would accept it.
    let mut again = TrustStore::open(&state).unwrap();
    assert_eq!(again.highest_sequence("molt-core"), Some(5));
    assert!(msg(again.verify_bundle(&b4, &VerifyOptions::default())).contains("replayed"));
    verify(&b4, &fx.root).unwrap();
    // Another bundle name has its own sequence.
    let p1 = packed(&fx, "p1", PRECHECK, 1, &[&fx.key]);
    again.verify_bundle(&p1, &VerifyOptions::default()).unwrap();
}

struct Rot {
    fx: Fx,
    r1: SigningKey,
    r2: SigningKey,
    p1: SigningKey,
    p2: SigningKey,
    v1: SignedRoot,
}

fn rot() -> Rot {
    let fx = fx();
    let (r1, r2, p1, p2) = (key(), key(), key(), key());
    let v1 = root_with(
        &[
            ("root", vec![&r1], 1),
            ("checks", vec![&r1], 1),
            ("packages", vec![&p1], 1),
        ],
        &[&r1],
        in_days(30),
    );
    Rot {
        fx,
        r1,
        r2,
        p1,
        p2,
        v1,
    }
}

/// Version 2: root key r1 -> r2, packages key p1 -> p2 (p1 revoked if `revoke`).
fn v2(t: &Rot, revoke: bool, signers: &[&SigningKey]) -> SignedRoot {
    let mut s = t.v1.signed.clone();
    s.version = 2;
    let r2 = editor::add_key(&mut s, &t.r2.public_hex()).unwrap();
    let p2 = editor::add_key(&mut s, &t.p2.public_hex()).unwrap();
    s.roles.get_mut("root").unwrap().keyids = vec![r2.clone()];
    s.roles.get_mut("checks").unwrap().keyids = vec![r2];
    s.roles.get_mut("packages").unwrap().keyids = vec![p2];
    s.keys.remove(t.r1.key_id());
    if revoke {
        s.revoked.push(t.p1.key_id().to_string());
    } else {
        s.keys.remove(t.p1.key_id());
    }
    signed(s, signers)
}

#[test]
fn properly_rotated_root_is_accepted_and_persisted() {
    let t = rot();
    let state = t.fx.dir.path().join("state");
    let mut store = TrustStore::open_or_init(&state, &t.v1).unwrap();
    let new = v2(&t, true, &[&t.r1, &t.r2]);
    store.update_root(new.clone()).unwrap();
    assert_eq!(store.root().signed.version, 2);
    let b = packed(&t.fx, "new", CORE, 1, &[&t.p2]);
    store.verify_bundle(&b, &VerifyOptions::default()).unwrap();
    // Reopening, or re-initialising with the old root file, keeps version 2.
    let s2 = TrustStore::open_or_init(&state, &t.v1).unwrap();
    assert_eq!(s2.root().signed.version, 2);
}

#[test]
fn bundle_signed_by_a_rotated_out_key_is_refused() {
    let t = rot();
    let b = packed(&t.fx, "old", CORE, 1, &[&t.p1]);
    verify(&b, &t.v1).unwrap();
    let state = t.fx.dir.path().join("state");
    let mut store = TrustStore::open_or_init(&state, &t.v1).unwrap();
    store.update_root(v2(&t, true, &[&t.r1, &t.r2])).unwrap();
    let e = msg(store.verify_bundle(&b, &VerifyOptions::default()));
    assert!(e.contains("key revoked in root version 2"), "{e}");
    // Removed without revocation: no longer known at all.
    let e = msg(verify(&b, &v2(&t, false, &[&t.r1, &t.r2])));
    assert!(e.contains("unknown key (not in root version 2)"), "{e}");
}

#[test]
fn bundle_under_an_expired_root_is_refused() {
    let t = rot();
    let mut old = t.v1.clone();
    old.signed.expires = Utc::now() - Duration::days(1);
    old.signatures.clear();
    editor::sign_root(&mut old, &[&t.r1]).unwrap();
    let state = t.fx.dir.path().join("state");
    let mut store = TrustStore::open_or_init(&state, &old).unwrap();
    let b = packed(&t.fx, "b", CORE, 1, &[&t.p1]);
    let e = msg(store.verify_bundle(&b, &VerifyOptions::default()));
    assert!(e.contains("trusted root version 1 expired at"), "{e}");
    // An expired root can still be rotated (that is how one recovers).
    store.update_root(v2(&t, true, &[&t.r1, &t.r2])).unwrap();
}

#[test]
fn rotation_rules() {
    let t = rot();
    let now = Utc::now();
    let e =
        t.v1.check_rotation(&v2(&t, true, &[&t.r2]), now)
            .unwrap_err()
            .to_string();
    assert!(
        e.contains("signed by 0 of 1 required root keys of the trusted version 1"),
        "{e}"
    );
    let e =
        t.v1.check_rotation(&v2(&t, true, &[&t.r1]), now)
            .unwrap_err()
            .to_string();
    assert!(e.contains("of its own root role"), "{e}");
    let e = t.v1.check_rotation(&t.v1, now).unwrap_err().to_string();
    assert!(
        e.contains("version 1 is not newer than the trusted version 1"),
        "{e}"
    );
    let mut v3 = v2(&t, true, &[]);
    v3.signed.version = 3;
    editor::sign_root(&mut v3, &[&t.r1, &t.r2]).unwrap();
    let e = t.v1.check_rotation(&v3, now).unwrap_err().to_string();
    assert!(e.contains("one at a time: expected 2"), "{e}");
    let mut exp = v2(&t, true, &[]);
    exp.signed.expires = now - Duration::days(1);
    editor::sign_root(&mut exp, &[&t.r1, &t.r2]).unwrap();
    let e = t.v1.check_rotation(&exp, now).unwrap_err().to_string();
    assert!(e.contains("the new root expired"), "{e}");
    t.v1.check_rotation(&v2(&t, true, &[&t.r1, &t.r2]), now)
        .unwrap();
}

#[test]
fn tampered_root_json_is_refused() {
    let t = rot();
    let mut v = t.v1.clone();
    v.signed.roles.get_mut("packages").unwrap().keyids = vec![t.r1.key_id().to_string()];
    let e = SignedRoot::from_slice(&v.to_json_pretty().unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad signature"), "{e}");
}

#[test]
fn root_signature_does_not_depend_on_formatting() {
    let t = rot();
    let compact = serde_json::to_vec(&t.v1).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&compact).unwrap();
    // Reorder keys by round-tripping through a differently formatted document.
    let pretty = serde_json::to_vec_pretty(&v).unwrap();
    SignedRoot::from_slice(&compact).unwrap();
    SignedRoot::from_slice(&pretty).unwrap();
}

#[test]
fn extraction_never_follows_symlinks_in_dest() {
    let fx = fx();
    let b = packed(&fx, "core", CORE, 1, &[&fx.key]);
    let v = verify(&b, &fx.root).unwrap();
    let dest = fx.dir.path().join("dest");
    let outside = fx.dir.path().join("outside");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("lib")).unwrap();
    let e = extract(&v, &b, &dest, &Limits::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a symlink; refusing to follow it"), "{e}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(
        !dest.join("bin").exists(),
        "partial extraction was not removed"
    );
}

#[test]
fn manifest_diff_lists_changed_files_between_bundles() {
    let fx = fx();
    let a = packed(&fx, "a", CORE, 1, &[&fx.key]);
    std::fs::write(fx.dir.path().join("src-a/lib/notes.txt"), "changed").unwrap();
    std::fs::write(fx.dir.path().join("src-a/new.txt"), "new").unwrap();
    std::fs::remove_file(fx.dir.path().join("src-a/empty")).unwrap();
    let out = fx.dir.path().join("b.zip");
    pack_dir(
        &fx.dir.path().join("src-a"),
        &PackSpec::from_buildstamp(CORE, 2).unwrap(),
        &out,
    )
    .unwrap();
    sign_bundle(&out, &[&fx.key]).unwrap();
    let (va, vb) = (
        verify(&a, &fx.root).unwrap(),
        verify(&out, &fx.root).unwrap(),
    );
    let d = vb.manifest.diff_from(&va.manifest);
    assert_eq!(d.added, vec!["new.txt"]);
    assert_eq!(d.removed, vec!["empty"]);
    assert_eq!(d.changed, vec!["lib/notes.txt"]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// Random bytes and random mutations of a real bundle never panic the
    /// reader and are never accepted.
    #[test]
    fn random_mutations_are_never_accepted(edits in proptest::collection::vec((0usize..20_000, proptest::prelude::any::<u8>()), 1..6)) {
        thread_local! {
            static FIX: (Fx, Vec<u8>) = {
                let fx = fx();
                let b = packed(&fx, "core", CORE, 1, &[&fx.key]);
                let bytes = std::fs::read(&b).unwrap();
                (fx, bytes)
            };
        }
        FIX.with(|(fx, orig)| {
            let mut m = orig.clone();
            let mut changed = false;
            for (i, v) in &edits {
                let i = i % m.len();
                changed |= m[i] != *v;
                m[i] = *v;
            }
            let t = fx.dir.path().join("prop.zip");
            std::fs::write(&t, &m).unwrap();
            let r = verify(&t, &fx.root);
            if changed {
                assert!(r.is_err(), "accepted mutation {edits:?}");
            }
        });
    }
}

// --- Rollback floors: the downgrade policy (store::check_sequence) ---

/// The next root version of `r` with `floors` set (None: cleared), signed by `k`.
fn with_floors(r: &SignedRoot, floors: &[(&str, Option<u64>)], k: &SigningKey) -> SignedRoot {
    let mut s = r.signed.clone();
    s.version += 1;
    for (n, f) in floors {
        match f {
            Some(f) => {
                editor::set_floor(&mut s, n, *f).unwrap();
            }
            None => {
                editor::clear_floor(&mut s, n);
            }
        }
    }
    signed(s, &[k])
}

#[test]
fn sequence_policy_table() {
    use crate::error::ReplayRule::*;
    use crate::store::{Accept, SequenceDecision::*, check_sequence};
    let (n, a) = (Accept::Newer, Accept::Assigned);
    // (sequence, highest, floor, accept) -> decision
    type Want = Result<crate::store::SequenceDecision, crate::error::ReplayRule>;
    type Row = (u64, Option<u64>, Option<u64>, Accept, Want);
    let cases: &[Row] = &[
        (1, None, None, n, Ok(Current)),
        (5, Some(5), None, n, Ok(Current)),
        (6, Some(5), None, n, Ok(Current)),
        (6, Some(5), None, a, Ok(Current)),
        // No floor: no downgrade, assigned or not (today's rule).
        (
            4,
            Some(5),
            None,
            n,
            Err(NotAssigned {
                highest: 5,
                floor: None,
            }),
        ),
        (4, Some(5), None, a, Err(NoFloor { highest: 5 })),
        // A floor: an assigned downgrade down to it, not below; never unassigned.
        (4, Some(5), Some(3), a, Ok(Downgrade)),
        (3, Some(5), Some(3), a, Ok(Downgrade)),
        (
            2,
            Some(5),
            Some(3),
            a,
            Err(BelowFloor {
                floor: 3,
                highest: Some(5),
            }),
        ),
        (
            4,
            Some(5),
            Some(3),
            n,
            Err(NotAssigned {
                highest: 5,
                floor: Some(3),
            }),
        ),
        // The floor is a signed minimum even with nothing accepted yet.
        (
            2,
            None,
            Some(3),
            n,
            Err(BelowFloor {
                floor: 3,
                highest: None,
            }),
        ),
        (
            2,
            None,
            Some(3),
            a,
            Err(BelowFloor {
                floor: 3,
                highest: None,
            }),
        ),
        (3, None, Some(3), n, Ok(Current)),
        // A floor above the highest refuses even the highest again.
        (
            5,
            Some(5),
            Some(6),
            a,
            Err(BelowFloor {
                floor: 6,
                highest: Some(5),
            }),
        ),
    ];
    for (seq, highest, floor, accept, want) in cases {
        assert_eq!(
            &check_sequence(*seq, *highest, *floor, *accept),
            want,
            "sequence {seq}, highest {highest:?}, floor {floor:?}, {accept:?}"
        );
    }
}

#[test]
fn an_assigned_downgrade_needs_a_floor_in_the_trusted_root() {
    use crate::store::Accept;
    let fx = fx();
    let (mut store, _, _, b4) = store_at_5(&fx);
    // Root without a floor: assigned or not, refused, and the message says what to do.
    let e = msg(store.verify_bundle_as(&b4, &VerifyOptions::default(), Accept::Assigned));
    assert!(
        e.contains("replayed or older bundle refused: `molt-core` sequence 4 is lower than 5 already accepted, and trusted root version 1 sets no rollback_floor for `molt-core`"),
        "{e}"
    );
    assert!(e.contains("molt root rotate --floor molt-core=4"), "{e}");
    let e = msg(store.verify_bundle(&b4, &VerifyOptions::default()));
    assert!(
        e.contains("sequence 4 is lower than 5 already accepted; only the version the control plane assigns may go back"),
        "{e}"
    );
    assert_eq!(store.highest_sequence("molt-core"), Some(5));
}

#[test]
fn a_floor_allows_assigned_downgrades_down_to_it_and_no_further() {
    use crate::store::Accept;
    let fx = fx();
    let state = fx.dir.path().join("state");
    let mut store = TrustStore::open_or_init(&state, &fx.root).unwrap();
    let b: Vec<PathBuf> = (0..=6)
        .map(|s| packed(&fx, &format!("s{s}"), CORE, s, &[&fx.key]))
        .collect();
    let o = VerifyOptions::default();
    store.verify_bundle(&b[5], &o).unwrap();
    // The operator signs root version 2 with floor 3 for molt-core; the host applies it.
    let v2 = with_floors(&fx.root, &[("molt-core", Some(3))], &fx.key);
    store.update_root(v2).unwrap();
    // Above the floor: the control plane's assignment passes, an import does not.
    store.verify_bundle_as(&b[4], &o, Accept::Assigned).unwrap();
    assert!(
        msg(store.verify_bundle(&b[4], &o))
            .contains("down to the rollback floor of trusted root version 2 (3 for `molt-core`)")
    );
    // At the floor: passes. Below: refused for everyone, naming the floor and the fix.
    store.verify_bundle_as(&b[3], &o, Accept::Assigned).unwrap();
    let e = msg(store.verify_bundle_as(&b[2], &o, Accept::Assigned));
    assert!(
        e.contains("`molt-core` sequence 2 is below the rollback floor 3 that trusted root version 2 sets for `molt-core` (5 already accepted)"),
        "{e}"
    );
    assert!(
        e.contains("sign a root with rollback_floor `molt-core` <= 2"),
        "{e}"
    );
    assert!(msg(store.verify_bundle(&b[2], &o)).contains("below the rollback floor 3"));
    // A downgrade does not lower the highest: the next upgrade must be at
    // least as high as before, and it works.
    assert_eq!(store.highest_sequence("molt-core"), Some(5));
    let again = TrustStore::open(&state).unwrap();
    assert_eq!(again.highest_sequence("molt-core"), Some(5));
    assert_eq!(again.root().signed.floor("molt-core"), Some(3));
    store.verify_bundle(&b[5], &o).unwrap();
    store.verify_bundle_as(&b[6], &o, Accept::Assigned).unwrap();
    assert_eq!(store.highest_sequence("molt-core"), Some(6));
    // Another name has no floor: no downgrade for it.
    let p2 = packed(&fx, "p2", PRECHECK, 2, &[&fx.key]);
    let p1 = packed(&fx, "p1", PRECHECK, 1, &[&fx.key]);
    store.verify_bundle(&p2, &o).unwrap();
    assert!(
        msg(store.verify_bundle_as(&p1, &o, Accept::Assigned))
            .contains("sets no rollback_floor for `molt-precheck`")
    );
}

#[test]
fn a_floor_refuses_old_bundles_on_a_fresh_host_too() {
    use crate::store::Accept;
    let fx = fx();
    let v2 = with_floors(&fx.root, &[("molt-core", Some(3))], &fx.key);
    fx.root.check_rotation(&v2, Utc::now()).unwrap();
    let mut store = TrustStore::open_or_init(&fx.dir.path().join("state"), &v2).unwrap();
    let b2 = packed(&fx, "s2", CORE, 2, &[&fx.key]);
    let e = msg(store.verify_bundle_as(&b2, &VerifyOptions::default(), Accept::Assigned));
    assert!(e.contains("is below the rollback floor 3 that trusted root version 2 sets for `molt-core`; to allow it"), "{e}");
    assert_eq!(store.highest_sequence("molt-core"), None);
}

#[test]
fn a_root_without_floors_keeps_its_canonical_bytes_and_signatures() {
    let t = rot();
    // The JSON a root had before floors existed: no `rollback_floor` key.
    let old_json = serde_json::to_value(&t.v1).unwrap();
    assert!(
        old_json["signed"].get("rollback_floor").is_none(),
        "{old_json}"
    );
    let signed_value = old_json["signed"].clone();
    let want = crate::schema::canonical_json(&signed_value).unwrap();
    let parsed = SignedRoot::from_slice(&serde_json::to_vec(&old_json).unwrap()).unwrap();
    assert!(parsed.signed.rollback_floor.is_empty());
    assert_eq!(parsed.signed.canonical_bytes().unwrap(), want);
    assert!(!String::from_utf8(want).unwrap().contains("rollback_floor"));
    // With a floor, the field is signed: changing it breaks the signature.
    let v2 = with_floors(&t.v1, &[("molt-core", Some(3))], &t.r1);
    let text = String::from_utf8(v2.to_json_pretty().unwrap()).unwrap();
    assert!(text.contains("\"rollback_floor\""), "{text}");
    SignedRoot::from_slice(text.as_bytes()).unwrap();
    let lowered = text.replace("\"molt-core\": 3", "\"molt-core\": 1");
    assert_ne!(lowered, text);
    let e = SignedRoot::from_slice(lowered.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad signature"), "{e}");
}

#[test]
fn rotation_carries_floors_and_says_when_one_is_lowered() {
    let t = rot();
    let state = t.fx.dir.path().join("state");
    let mut store = TrustStore::open_or_init(&state, &t.v1).unwrap();
    let v2 = with_floors(
        &t.v1,
        &[("molt-core", Some(5)), ("molt-upgrade", Some(2))],
        &t.r1,
    );
    let c = t.v1.signed.floor_changes(&v2.signed);
    assert_eq!(c.len(), 2);
    assert!(c.iter().all(|c| !c.lowers()), "{c:?}");
    store.update_root(v2.clone()).unwrap();
    // Version 3 lowers one floor and removes the other: allowed (that is how
    // an operator authorises an older version), and said so.
    let v3 = with_floors(
        &v2,
        &[("molt-core", Some(3)), ("molt-upgrade", None)],
        &t.r1,
    );
    let c = v2.signed.floor_changes(&v3.signed);
    assert_eq!(
        c.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        vec![
            "rollback floor of `molt-core`: 5 -> 3 (LOWERED: older signed bundles of it become acceptable as an assigned downgrade)",
            "rollback floor of `molt-upgrade`: 2 -> none (LOWERED: older signed bundles of it become acceptable as an assigned downgrade)",
        ]
    );
    store.update_root(v3).unwrap();
    let s = TrustStore::open(&state).unwrap();
    assert_eq!(s.root().signed.version, 3);
    assert_eq!(s.root().signed.floor("molt-core"), Some(3));
    assert_eq!(s.root().signed.floor("molt-upgrade"), None);
    // A floor name that is not a bundle name is refused when editing and in a root.
    let mut bad = v2.signed.clone();
    assert!(editor::set_floor(&mut bad, "molt core\n", 1).is_err());
    bad.rollback_floor.insert("../x".into(), 1);
    let e = bad.validate().unwrap_err().to_string();
    assert!(
        e.contains("rollback_floor: `../x` is not a bundle name"),
        "{e}"
    );
}
