//! A small parser for package names in the seeds' scheme, for the guest (the
//! host's `molt_bundle::buildstamp` depends on `ring` and `chrono`, which we keep
//! out of wasm guests). Same grammar:
//! `<product>-<kind>.<family>-<MM-DD-YYYY>__patch<N>[-hotfix<M>[letters]]-<MM-DD-YYYY>_<MM-DD-YYYY>_<HHMM>.<os>.<arch>.zip`
use std::cmp::Ordering;

/// Release families in release order (same table as `molt_bundle::buildstamp::FAMILIES`).
pub const FAMILIES: &[&str] = &[
    "aspen",
    "berlin",
    "calgary",
    "dublin",
    "eureka",
    "fuji",
    "geneva",
    "helsinki",
    "istanbul",
    "jakarta",
    "kingston",
    "london",
    "madrid",
    "newyork",
    "orlando",
    "paris",
    "quebec",
    "rome",
    "sandiego",
    "tokyo",
    "utah",
    "vancouver",
    "washingtondc",
    "xanadu",
    "yokohama",
    "zurich",
    "australia",
];

/// A parsed `<version>`; ordered by family rank, family date, patch, hotfix, build time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub text: String,
    pub family: String,
    pub family_rank: usize,
    pub family_date: (u32, u32, u32),
    pub patch: u32,
    pub hotfix: Option<(u32, String)>,
    pub patch_date: (u32, u32, u32),
    pub built: (u32, u32, u32, u32),
}

impl Ord for Version {
    fn cmp(&self, o: &Self) -> Ordering {
        let hf = |h: &Option<(u32, String)>| h.as_ref().map(|(n, s)| (*n, s.len(), s.clone()));
        self.family_rank
            .cmp(&o.family_rank)
            .then(self.family_date.cmp(&o.family_date))
            .then(self.patch.cmp(&o.patch))
            .then(hf(&self.hotfix).cmp(&hf(&o.hotfix)))
            .then(self.built.cmp(&o.built))
            .then(self.patch_date.cmp(&o.patch_date))
    }
}
impl PartialOrd for Version {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// A parsed package name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub product: String,
    /// As written: `core`, `upgrade`, `runtime`, `jre` (the seeds' runtime), ...
    pub kind: String,
    pub version: Version,
    pub os: String,
    pub arch: String,
}

impl Package {
    /// `runtime` and the seeds' `jre` are the same thing.
    pub fn is_runtime(&self) -> bool {
        self.kind == "runtime" || self.kind == "jre"
    }
    /// The same package name with another version.
    pub fn with_version(&self, v: &str) -> String {
        format!(
            "{}-{}.{}.{}.{}.zip",
            self.product, self.kind, v, self.os, self.arch
        )
    }
}

fn date(parts: &[&str]) -> Option<(u32, u32, u32)> {
    if parts.len() != 3 || parts[0].len() != 2 || parts[1].len() != 2 || parts[2].len() != 4 {
        return None;
    }
    let m: u32 = parts[0].parse().ok()?;
    let d: u32 = parts[1].parse().ok()?;
    let y: u32 = parts[2].parse().ok()?;
    ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y, m, d))
}

/// Parse a bare `<version>`.
pub fn parse_version(s: &str) -> Result<Version, String> {
    let bad = |why: &str| format!("Not a valid buildstamp: {s}: {why}");
    let (fam, rest) = s.split_once("__").ok_or_else(|| bad("no `__`"))?;
    let (family, fdate) = fam.split_once('-').ok_or_else(|| bad("no family date"))?;
    let family_rank = FAMILIES
        .iter()
        .position(|f| *f == family)
        .ok_or_else(|| bad(&format!("unknown release family `{family}`")))?;
    let family_date =
        date(&fdate.split('-').collect::<Vec<_>>()).ok_or_else(|| bad("bad family date"))?;
    let parts: Vec<&str> = rest.split('_').collect();
    if parts.len() != 3 {
        return Err(bad("expected <patch>-<date>_<date>_<HHMM>"));
    }
    let p: Vec<&str> = parts[0].split('-').collect();
    let patch = p
        .first()
        .and_then(|x| x.strip_prefix("patch"))
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| bad("bad patch"))?;
    let (hotfix, dparts) = match p.get(1).and_then(|x| x.strip_prefix("hotfix")) {
        Some(h) => {
            let split = h.find(|c: char| !c.is_ascii_digit()).unwrap_or(h.len());
            let (n, suf) = h.split_at(split);
            let n: u32 = n.parse().map_err(|_| bad("bad hotfix"))?;
            if !suf.chars().all(|c| c.is_ascii_lowercase()) {
                return Err(bad("bad hotfix suffix"));
            }
            (Some((n, suf.to_string())), &p[2..])
        }
        None => (None, &p[1..]),
    };
    let patch_date = date(dparts).ok_or_else(|| bad("bad patch date"))?;
    let (by, bm, bd) =
        date(&parts[1].split('-').collect::<Vec<_>>()).ok_or_else(|| bad("bad build date"))?;
    let hhmm = parts[2];
    if hhmm.len() != 4 || !hhmm.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad("bad build time"));
    }
    let t: u32 = hhmm.parse().map_err(|_| bad("bad build time"))?;
    Ok(Version {
        text: s.to_string(),
        family: family.to_string(),
        family_rank,
        family_date,
        patch,
        hotfix,
        patch_date,
        built: (by, bm, bd, t),
    })
}

/// Parse a full package name.
pub fn parse_package(name: &str) -> Result<Package, String> {
    let bad = |why: &str| format!("Not a valid package name: {name}: {why}");
    let stem = name
        .strip_suffix(".zip")
        .ok_or_else(|| bad("no .zip suffix"))?;
    let parts: Vec<&str> = stem.split('.').collect();
    if parts.len() != 4 {
        return Err(bad("expected <product>-<kind>.<version>.<os>.<arch>.zip"));
    }
    let (product, kind) = parts[0]
        .rsplit_once('-')
        .ok_or_else(|| bad("no <product>-<kind>"))?;
    if product.is_empty() || kind.is_empty() || parts[2].is_empty() || parts[3].is_empty() {
        return Err(bad("empty part"));
    }
    Ok(Package {
        name: name.to_string(),
        product: product.to_string(),
        kind: kind.to_string(),
        version: parse_version(parts[1])
            .map_err(|e| format!("Not a valid package name: {name}: {e}"))?,
        os: parts[2].to_string(),
        arch: parts[3].to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_and_orders_seed_names() {
        let a = parse_package("mid-core.madrid-12-18-2018__patch1-hotfix2-03-14-2019_03-20-2019_1304.universal.universal.zip").unwrap();
        let b = parse_package(
            "mid-core.madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650.universal.universal.zip",
        )
        .unwrap();
        assert_eq!(a.kind, "core");
        assert_eq!(a.version.hotfix, Some((2, String::new())));
        assert!(a.version < b.version);
        let j = parse_package(
            "mid-jre.madrid-12-18-2018__patch1-02-13-2019_02-25-2019_1807.windows.x86-64.zip",
        )
        .unwrap();
        assert!(j.is_runtime());
        assert!(parse_package("mid-core.nope.universal.universal.zip").is_err());
    }
}
