//! Installs as the product lays them out: verified, extracted, and placed by
//! the real `molt_deploy::install::fresh_install`.
use std::path::{Path, PathBuf};

use molt_bundle::SignedRoot;
use molt_layout::{Home, InstalledPackage};

/// Verify `pkg` against `root` and extract it into `dest` (replaced); its
/// installed-package record as `molt install` makes it.
pub fn extract(pkg: &Path, root: &SignedRoot, dest: &Path) -> InstalledPackage {
    let v = molt_bundle::verify_bundle(pkg, root, &Default::default()).unwrap();
    let _ = std::fs::remove_dir_all(dest);
    molt_bundle::extract(&v, pkg, dest, &Default::default()).unwrap();
    molt_ops::import::installed_package(&v)
}

/// A fresh install at `home` of `pkgs` (core first), verified against `root`,
/// through the real `fresh_install` (`versions/<v>/` with meta, `current`);
/// the root is copied to `state/root.json`. Returns the home and the version.
pub fn install(home: &Path, root: &SignedRoot, pkgs: &[impl AsRef<Path>]) -> (Home, String) {
    let h = Home::new(home);
    let tmp = tempfile::tempdir().unwrap();
    let extracted: Vec<(InstalledPackage, PathBuf)> = pkgs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let dest = tmp.path().join(i.to_string());
            (extract(p.as_ref(), root, &dest), dest)
        })
        .collect();
    let version = molt_deploy::install::fresh_install(&h, &extracted).unwrap();
    std::fs::create_dir_all(h.state_dir()).unwrap();
    std::fs::write(
        h.state_dir().join("root.json"),
        root.to_json_pretty().unwrap(),
    )
    .unwrap();
    (h, version)
}

/// Write each package's record to `<version dir>/meta/<kind>.meta.json`.
pub fn write_metas(vdir: &Path, metas: &[InstalledPackage]) {
    std::fs::create_dir_all(vdir.join("meta")).unwrap();
    for m in metas {
        molt_layout::write_json_atomic(&vdir.join("meta").join(format!("{}.meta.json", m.kind)), m)
            .unwrap();
    }
}
