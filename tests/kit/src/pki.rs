//! TEST keys, a single-key root, packing and signing.
use std::path::{Path, PathBuf};

use molt_bundle::chrono::{DateTime, Duration, Utc};
use molt_bundle::{Component, PackSpec, SignedRoot, SigningKey};

/// A TEST signing key and the single-key root (valid 30 days) that trusts it,
/// written to `root_path`.
pub struct Pki {
    pub key: SigningKey,
    /// The key's PKCS#8 document (what `molt keygen` writes).
    pub pk8: Vec<u8>,
    pub root: SignedRoot,
    pub root_path: PathBuf,
}

impl Pki {
    /// A new key and root; the root is written to `<dir>/root.json`.
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let (key, pk8) = SigningKey::generate().unwrap();
        let root =
            molt_bundle::editor::single_key_root(&key, Utc::now() + Duration::days(30)).unwrap();
        let root_path = dir.join("root.json");
        std::fs::write(&root_path, root.to_json_pretty().unwrap()).unwrap();
        Pki {
            key,
            pk8,
            root,
            root_path,
        }
    }

    /// Pack the tree at `src` as `<out_dir>/<name>` (sequence 1, the build
    /// stamp's defaults, `components`) and sign it.
    pub fn pack(
        &self,
        src: &Path,
        name: &str,
        out_dir: &Path,
        components: Vec<Component>,
    ) -> PathBuf {
        self.pack_with(
            src,
            &out_dir.join(name),
            PackOpts {
                components,
                ..PackOpts::default()
            },
        )
    }

    /// Pack the tree at `src` as `out` (named by its build stamp) with `o`.
    pub fn pack_with(&self, src: &Path, out: &Path, o: PackOpts<'_>) -> PathBuf {
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let name = out.file_name().unwrap().to_string_lossy();
        let mut spec = PackSpec::from_buildstamp(&name, o.sequence).unwrap();
        if let Some(e) = o.expires {
            spec.expires = e;
        }
        spec.components = o.components;
        molt_bundle::pack_dir(src, &spec, out).unwrap();
        molt_bundle::sign_bundle(out, &[o.signer.unwrap_or(&self.key)]).unwrap();
        out.to_path_buf()
    }

    /// Write `files` to `src` (replacing it) and pack them as `out`.
    pub fn pack_files<P: AsRef<Path>, D: AsRef<[u8]>>(
        &self,
        src: &Path,
        files: &[(P, D, u32)],
        out: &Path,
        o: PackOpts<'_>,
    ) -> PathBuf {
        write_tree(src, files);
        self.pack_with(src, out, o)
    }
}

/// How a package is packed: its sequence, which key signs it, when it
/// expires, its components.
pub struct PackOpts<'a> {
    pub sequence: u64,
    pub signer: Option<&'a SigningKey>,
    pub expires: Option<DateTime<Utc>>,
    pub components: Vec<Component>,
}

impl Default for PackOpts<'_> {
    fn default() -> Self {
        PackOpts {
            sequence: 1,
            signer: None,
            expires: None,
            components: Vec::new(),
        }
    }
}

impl PackOpts<'_> {
    /// The defaults with `sequence`.
    pub fn seq(sequence: u64) -> Self {
        PackOpts {
            sequence,
            ..PackOpts::default()
        }
    }
}

/// Replace `dir` with `files` (path, content, mode).
pub fn write_tree<P: AsRef<Path>, D: AsRef<[u8]>>(dir: &Path, files: &[(P, D, u32)]) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (p, data, mode) in files {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, data).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
}

/// Copy the tree `from` into `to` (files and directories).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// A scratch dir and a [`Pki`] whose root is `<dir>/root.json`; derefs to
/// the Pki. The crates' own kits wrap it and add their packages.
pub struct Kit {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
}

impl Kit {
    pub fn new() -> Kit {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        Kit { dir, pki }
    }
}

impl Default for Kit {
    fn default() -> Self {
        Kit::new()
    }
}

impl std::ops::Deref for Kit {
    type Target = Pki;
    fn deref(&self) -> &Pki {
        &self.pki
    }
}
