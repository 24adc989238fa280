//! The packages directory: signed bundles named with a buildstamp, their sizes
//! and SHA-256 digests (cached by path, mtime and size), and which of them an
//! agent is assigned.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

/// Kinds of package (the part after `molt-`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageKind {
    Core,
    Runtime,
    Upgrade,
    Precheck,
    Selector,
}

impl PackageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PackageKind::Core => "core",
            PackageKind::Runtime => "runtime",
            PackageKind::Upgrade => "upgrade",
            PackageKind::Precheck => "precheck",
            PackageKind::Selector => "selector",
        }
    }
}

/// Why a file in the packages directory is not a servable package.
#[derive(Debug, thiserror::Error)]
pub enum PackageNameError {
    #[error(transparent)]
    Buildstamp(#[from] molt_bundle::BuildstampError),
    #[error("{0}: the control plane serves `molt-` packages only")]
    NotMolt(String),
    #[error("{0}: not <product>-<kind>.<version>.<os>.<arch>.zip")]
    NotPackageName(String),
}

/// The fields of a package file name `molt-<kind>.<version>.<os>.<arch>.zip`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageName {
    pub kind: PackageKind,
    pub version: String,
    pub os: String,
    pub arch: String,
}

impl PackageName {
    /// Parses a file name; `None` for anything that is not a Molt package.
    pub fn parse(file: &str) -> Option<Self> {
        Self::parse_checked(file).ok()
    }

    /// Parses a file name with `molt_bundle`'s buildstamp parser; the error
    /// says why a file is not a servable package.
    pub fn parse_checked(file: &str) -> Result<Self, PackageNameError> {
        use molt_bundle::schema::BundleKind;
        let b: molt_bundle::Buildstamp = file.parse()?;
        if b.product != molt_bundle::Product::Molt {
            return Err(PackageNameError::NotMolt(file.to_string()));
        }
        let kind = match b.kind {
            BundleKind::Core => PackageKind::Core,
            BundleKind::Runtime => PackageKind::Runtime,
            BundleKind::Upgrade => PackageKind::Upgrade,
            BundleKind::Precheck => PackageKind::Precheck,
            BundleKind::Selector => PackageKind::Selector,
        };
        // The version text exactly as written in the name (lookups are by name).
        let version = file
            .strip_suffix(".zip")
            .and_then(|r| r.split_once('.'))
            .and_then(|(_, r)| r.rsplit_once('.'))
            .and_then(|(r, _)| r.rsplit_once('.'))
            .map(|(v, _)| v.to_string())
            .ok_or_else(|| PackageNameError::NotPackageName(file.to_string()))?;
        Ok(Self {
            kind,
            version,
            os: b.os,
            arch: b.arch,
        })
    }

    /// The canonical file name.
    pub fn file_name(&self) -> String {
        format!(
            "molt-{}.{}.{}.{}.zip",
            self.kind.as_str(),
            self.version,
            self.os,
            self.arch
        )
    }
}

/// Characters allowed in the fields of a package name (and in os/arch queries).
pub fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// A release family and a build instant parsed from a buildstamp such as
/// `quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225`.
fn buildstamp_key(v: &str) -> (&str, Option<(u32, u32, u32, u32)>) {
    let family = v.split('-').next().unwrap_or(v);
    let mut parts = v.rsplit('_');
    let time = parts
        .next()
        .and_then(|t| (t.len() == 4).then(|| t.parse::<u32>().ok()).flatten());
    let date = parts.next().and_then(|d| {
        let mut f = d.split('-').map(|x| x.parse::<u32>().ok());
        match (
            f.next().flatten(),
            f.next().flatten(),
            f.next().flatten(),
            f.next(),
        ) {
            (Some(m), Some(dd), Some(y), None) => Some((y, m, dd)),
            _ => None,
        }
    });
    let key = match (date, time) {
        (Some((y, m, d)), Some(t)) => Some((y, m, d, t)),
        _ => None,
    };
    (family, key)
}

/// The release family of a version (`quebec` for a Quebec patch).
pub fn release_family(v: &str) -> &str {
    buildstamp_key(v).0
}

/// Orders two versions as `molt_bundle` does (family table, patch, hotfix,
/// build time); text that is not a buildstamp falls back to build date, then text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    if let (Ok(x), Ok(y)) = (
        a.parse::<molt_bundle::Version>(),
        b.parse::<molt_bundle::Version>(),
    ) {
        return x.cmp(&y).then_with(|| a.cmp(b));
    }
    let (_, ka) = buildstamp_key(a);
    let (_, kb) = buildstamp_key(b);
    match (ka, kb) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        _ => a.cmp(b),
    }
}

/// One package file with its digest.
#[derive(Clone, Debug, Serialize)]
pub struct PackageFile {
    pub name: String,
    pub kind: PackageKind,
    pub version: String,
    pub os: String,
    pub arch: String,
    pub size: u64,
    pub sha256: String,
}

/// The packages directory at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub files: Vec<PackageFile>,
    by_name: HashMap<String, usize>,
}

impl Snapshot {
    pub fn get(&self, name: &str) -> Option<&PackageFile> {
        self.by_name.get(name).map(|&i| &self.files[i])
    }

    fn find(&self, kind: PackageKind, version: &str, os: &str, arch: &str) -> Option<&PackageFile> {
        self.get(
            &PackageName {
                kind,
                version: version.into(),
                os: os.into(),
                arch: arch.into(),
            }
            .file_name(),
        )
    }

    /// The runtime for `os`/`arch` of `version`'s release family that is the
    /// newest not newer than `version`.
    pub fn runtime_for(&self, version: &str, os: &str, arch: &str) -> Option<&PackageFile> {
        let family = release_family(version);
        self.files
            .iter()
            .filter(|f| f.kind == PackageKind::Runtime && f.os == os && f.arch == arch)
            .filter(|f| release_family(&f.version) == family)
            .filter(|f| compare_versions(&f.version, version) != Ordering::Greater)
            .max_by(|a, b| compare_versions(&a.version, &b.version))
    }

    /// The packages assigned for `version` to an agent on `os`/`arch` whose
    /// runtime is `runtime` (omitted when it already matches: the seeds' "JRE
    /// upgrade skipped").
    pub fn assigned(
        &self,
        version: &str,
        os: &str,
        arch: &str,
        runtime: Option<&str>,
    ) -> Result<Assigned<'_>, MissingPackage> {
        let universal = |kind| {
            self.find(kind, version, "universal", "universal")
                .ok_or_else(|| MissingPackage {
                    name: PackageName {
                        kind,
                        version: version.into(),
                        os: "universal".into(),
                        arch: "universal".into(),
                    }
                    .file_name(),
                })
        };
        let core = universal(PackageKind::Core)?;
        let upgrade = universal(PackageKind::Upgrade)?;
        let runtime = self
            .runtime_for(version, os, arch)
            .filter(|r| Some(r.version.as_str()) != runtime);
        Ok(Assigned {
            core,
            upgrade,
            runtime,
            precheck: universal(PackageKind::Precheck).ok(),
            selector: universal(PackageKind::Selector).ok(),
        })
    }
}

/// A required package is not in the packages directory.
#[derive(Debug, thiserror::Error)]
#[error("package {name} is not in the packages directory")]
pub struct MissingPackage {
    pub name: String,
}

/// What one agent is assigned.
#[derive(Debug)]
pub struct Assigned<'a> {
    pub core: &'a PackageFile,
    pub upgrade: &'a PackageFile,
    pub runtime: Option<&'a PackageFile>,
    pub precheck: Option<&'a PackageFile>,
    pub selector: Option<&'a PackageFile>,
}

type DigestCache = HashMap<PathBuf, (SystemTime, u64, String)>;

/// The packages directory, rescanned at most every `max_age` (hashing only
/// files whose mtime or size changed).
pub struct PackageIndex {
    dir: PathBuf,
    digests: Mutex<DigestCache>,
    /// Names already warned about (warn once, not at every rescan).
    rejected: Mutex<std::collections::HashSet<String>>,
    snapshot: RwLock<(Arc<Snapshot>, Instant)>,
    refreshing: AtomicBool,
    max_age: Duration,
}

impl PackageIndex {
    /// Scans `dir` once (blocking).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let idx = Self {
            dir: dir.to_path_buf(),
            digests: Mutex::new(HashMap::new()),
            rejected: Mutex::new(std::collections::HashSet::new()),
            snapshot: RwLock::new((Arc::new(Snapshot::default()), Instant::now())),
            refreshing: AtomicBool::new(false),
            max_age: Duration::from_secs(2),
        };
        idx.rescan()?;
        Ok(idx)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The latest snapshot, and whether it is older than the rescan interval.
    pub fn current(&self) -> (Arc<Snapshot>, bool) {
        let g = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        (g.0.clone(), g.1.elapsed() > self.max_age)
    }

    /// Claims the right to run a background rescan (one at a time).
    pub fn begin_refresh(&self) -> bool {
        !self.refreshing.swap(true, AtomicOrdering::AcqRel)
    }

    /// Rescans the directory now (blocking: it may hash new files).
    pub fn rescan(&self) -> std::io::Result<Arc<Snapshot>> {
        let result = self.scan();
        self.refreshing.store(false, AtomicOrdering::Release);
        let snap = Arc::new(result?);
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = (snap.clone(), Instant::now());
        Ok(snap)
    }

    fn scan(&self) -> std::io::Result<Snapshot> {
        let mut files = Vec::new();
        let mut cache = self.digests.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = std::collections::HashSet::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let parsed = match PackageName::parse_checked(&name) {
                Ok(p) => p,
                Err(reason) => {
                    let mut rejected = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
                    if rejected.insert(name.clone()) {
                        tracing::warn!(file = %name, reason = %reason, "packages directory: file ignored");
                    }
                    continue;
                }
            };
            let meta = match entry.metadata() {
                Ok(m) if m.is_file() => m,
                _ => continue,
            };
            let path = entry.path();
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let size = meta.len();
            let sha = match cache.get(&path) {
                Some((t, s, d)) if *t == mtime && *s == size => d.clone(),
                _ => {
                    let d = sha256_file(&path)?;
                    tracing::info!(package = %name, size, sha256 = %d, "package indexed");
                    cache.insert(path.clone(), (mtime, size, d.clone()));
                    d
                }
            };
            live.insert(path);
            files.push(PackageFile {
                name,
                kind: parsed.kind,
                version: parsed.version,
                os: parsed.os,
                arch: parsed.arch,
                size,
                sha256: sha,
            });
        }
        cache.retain(|p, _| live.contains(p));
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let by_name = files
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        Ok(Snapshot { files, by_name })
    }
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q1: &str = "quebec-12-09-2020__patch0-hotfix1-01-04-2021_01-06-2021_1339";
    const Q2: &str = "quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225";
    const Q3: &str = "quebec-12-09-2020__patch2-04-01-2021_04-10-2021_0800";
    const R1: &str = "rome-06-23-2021__patch0-07-01-2021_07-10-2021_0900";

    #[test]
    fn it_parses_names_with_buildstamps_and_refuses_others() {
        let n = PackageName::parse(&format!("molt-runtime.{Q2}.linux.x86-64.zip")).unwrap();
        assert_eq!(
            (n.kind, n.version.as_str(), n.os.as_str(), n.arch.as_str()),
            (PackageKind::Runtime, Q2, "linux", "x86-64")
        );
        assert_eq!(n.file_name(), format!("molt-runtime.{Q2}.linux.x86-64.zip"));
        for bad in [
            "molt-core.zip",
            "mid-core.v.universal.universal.zip",
            "molt-other.v.a.b.zip",
            "molt-core.v.a.b.tar",
            "molt-core..a.b.zip",
            "molt-core.v/x.a.b.zip",
        ] {
            assert!(PackageName::parse(bad).is_none(), "{bad}");
        }
        // The reason, typed: another product's package, or not a package name.
        let mid = format!("mid-core.{Q2}.universal.universal.zip");
        let e = PackageName::parse_checked(&mid).unwrap_err();
        assert!(matches!(e, PackageNameError::NotMolt(_)), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!("{mid}: the control plane serves `molt-` packages only")
        );
        let e = PackageName::parse_checked("molt-core.zip").unwrap_err();
        assert!(matches!(e, PackageNameError::Buildstamp(_)), "{e:?}");
    }

    #[test]
    fn versions_order_by_build_date_within_a_family() {
        assert_eq!(compare_versions(Q1, Q2), Ordering::Less);
        assert_eq!(compare_versions(Q3, Q2), Ordering::Greater);
        assert_eq!(release_family(Q2), "quebec");
        assert_eq!(release_family(R1), "rome");
    }

    fn write(dir: &Path, kind: &str, v: &str, os: &str, arch: &str) {
        std::fs::write(
            dir.join(format!("molt-{kind}.{v}.{os}.{arch}.zip")),
            format!("{kind}{v}"),
        )
        .unwrap();
    }

    #[test]
    fn the_runtime_is_the_newest_of_the_family_not_newer_and_skipped_when_installed() {
        let d = tempfile::tempdir().unwrap();
        for v in [Q1, Q2, Q3] {
            write(d.path(), "core", v, "universal", "universal");
            write(d.path(), "upgrade", v, "universal", "universal");
        }
        write(d.path(), "runtime", Q1, "linux", "x86-64");
        write(d.path(), "runtime", Q3, "linux", "x86-64");
        write(d.path(), "runtime", R1, "linux", "x86-64");
        write(d.path(), "runtime", Q1, "linux", "aarch64");
        std::fs::write(
            d.path()
                .join(format!("mid-core.{Q2}.universal.universal.zip")),
            "seeds",
        )
        .unwrap();
        std::fs::write(d.path().join("README.txt"), "not a package").unwrap();
        let idx = PackageIndex::open(d.path()).unwrap();
        let (snap, _) = idx.current();
        assert_eq!(snap.files.len(), 10, "only molt- packages are indexed");
        let a = snap.assigned(Q2, "linux", "x86-64", None).unwrap();
        assert_eq!(a.runtime.unwrap().version, Q1);
        assert_eq!(
            a.core.sha256,
            sha256_file(&d.path().join(&a.core.name)).unwrap()
        );
        assert!(
            snap.assigned(Q2, "linux", "x86-64", Some(Q1))
                .unwrap()
                .runtime
                .is_none()
        );
        assert_eq!(
            snap.assigned(Q3, "linux", "x86-64", Some(Q1))
                .unwrap()
                .runtime
                .unwrap()
                .version,
            Q3
        );
        assert!(
            snap.assigned(Q2, "windows", "x86-64", None)
                .unwrap()
                .runtime
                .is_none()
        );
        assert!(
            snap.assigned(Q2, "linux", "x86-64", None)
                .unwrap()
                .precheck
                .is_none()
        );
        let err = snap.assigned(R1, "linux", "x86-64", None).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("molt-core.{R1}.universal.universal.zip"))
        );
    }
}
