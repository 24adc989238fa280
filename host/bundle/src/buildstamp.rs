//! Package names ("buildstamps") in the seeds' scheme, e.g.
//! `mid-core.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip`.
//!
//! Grammar (`<version>` is the seeds' `mid.buildstamp`):
//! ```text
//! <product>-<kind>.<version>.<os>.<arch>.zip
//! <version> = <family>-<MM-DD-YYYY>__patch<N>[-hotfix<M>[<letters>]]-<MM-DD-YYYY>_<MM-DD-YYYY>_<HHMM>
//! ```
//! Release families are ordered by an explicit table ([`FamilyTable`]), never by
//! the alphabet: the names wrap around after `zurich`.
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};

use crate::schema::BundleKind;

/// The error every parser here returns: the input and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Not a valid package buildstamp: {input}: {reason}")]
pub struct BuildstampError {
    pub input: String,
    pub reason: String,
}

/// Release families in their real release order. Append new families at the end.
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
    // After zurich the alphabet starts again: the table, not the name, orders them.
    "australia",
];

/// An ordered list of release families. The built-in [`FAMILIES`] can be
/// extended at run time (e.g. from configuration) as families are released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyTable {
    names: Vec<String>,
}

impl Default for FamilyTable {
    fn default() -> Self {
        FamilyTable {
            names: FAMILIES.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl FamilyTable {
    /// Append families released after the last known one (in order).
    pub fn extended<I: IntoIterator<Item = S>, S: Into<String>>(mut self, newer: I) -> Self {
        for n in newer {
            let n = n.into();
            if !self.names.contains(&n) {
                self.names.push(n);
            }
        }
        self
    }

    /// Position of a family in release order.
    pub fn rank(&self, family: &str) -> Option<u32> {
        self.names
            .iter()
            .position(|n| n == family)
            .and_then(|p| u32::try_from(p).ok())
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// A hotfix number with an optional letter suffix (`hotfix2`, `hotfix2a`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hotfix {
    pub number: u32,
    pub suffix: String,
}

impl Ord for Hotfix {
    fn cmp(&self, other: &Self) -> Ordering {
        // "" < "a" < "b" < ... < "z" < "aa": shorter suffixes first, then letters.
        self.number
            .cmp(&other.number)
            .then(self.suffix.len().cmp(&other.suffix.len()))
            .then(self.suffix.cmp(&other.suffix))
    }
}
impl PartialOrd for Hotfix {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The bare `<version>` part, e.g. `quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225`:
/// the fleet buildstamp on the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    pub family: String,
    /// Position of `family` in the table used to parse it (orders families).
    pub family_rank: u32,
    pub family_date: NaiveDate,
    pub patch: u32,
    pub hotfix: Option<Hotfix>,
    /// Release date of the patch or hotfix.
    pub patch_date: NaiveDate,
    /// Build date and time (minute precision).
    pub built: NaiveDateTime,
}

impl Ord for Version {
    fn cmp(&self, o: &Self) -> Ordering {
        self.family_rank
            .cmp(&o.family_rank)
            .then(self.family_date.cmp(&o.family_date))
            .then(self.patch.cmp(&o.patch))
            .then(self.hotfix.cmp(&o.hotfix))
            .then(self.built.cmp(&o.built))
            .then(self.patch_date.cmp(&o.patch_date))
            .then(self.family.cmp(&o.family))
    }
}
impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn err(input: &str, reason: impl Into<String>) -> BuildstampError {
    BuildstampError {
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// `MM-DD-YYYY`, exactly 2-2-4 digits so that Display round-trips.
fn parse_date(input: &str, s: &str, what: &str) -> Result<NaiveDate, BuildstampError> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b[2] == b'-'
        && b[5] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 2 || i == 5 || c.is_ascii_digit());
    if !shape_ok {
        return Err(err(
            input,
            format!("{what} `{s}` is not a date in MM-DD-YYYY form"),
        ));
    }
    let num = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<u32>().ok());
    match (num(0..2), num(3..5), num(6..10)) {
        (Some(m), Some(d), Some(y)) => NaiveDate::from_ymd_opt(y as i32, m, d)
            .ok_or_else(|| err(input, format!("{what} `{s}` is not a real calendar date"))),
        _ => Err(err(input, format!("{what} `{s}` is not a date"))),
    }
}

fn fmt_date(d: &NaiveDate) -> String {
    d.format("%m-%d-%Y").to_string()
}

fn parse_number(input: &str, s: &str, what: &str) -> Result<u32, BuildstampError> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return Err(err(input, format!("{what} `{s}` is not a number")));
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(err(input, format!("{what} `{s}` has a leading zero")));
    }
    s.parse::<u32>()
        .map_err(|_| err(input, format!("{what} `{s}` is too large")))
}

impl Version {
    /// Parse with an explicit family table (use [`FromStr`] for the built-in one).
    /// `input` is only used in error messages (the whole package name, when
    /// called from [`Buildstamp`]).
    pub fn parse_with(table: &FamilyTable, s: &str) -> Result<Version, BuildstampError> {
        Self::parse_inner(table, s, s)
    }

    fn parse_inner(table: &FamilyTable, s: &str, input: &str) -> Result<Version, BuildstampError> {
        if s.contains("...") {
            return Err(err(
                input,
                "the version is elided (`...`); a full name such as `quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225` is needed",
            ));
        }
        let (head, tail) = s.split_once("__").ok_or_else(|| {
            err(
                input,
                "missing `__` between the release family and the patch part",
            )
        })?;
        let (family, family_date) = head
            .split_once('-')
            .ok_or_else(|| err(input, format!("`{head}` is not `<family>-<MM-DD-YYYY>`")))?;
        if family.is_empty() || !family.bytes().all(|c| c.is_ascii_lowercase()) {
            return Err(err(
                input,
                format!("release family `{family}` must be lowercase letters"),
            ));
        }
        let family_rank = table.rank(family).ok_or_else(|| {
            err(
                input,
                format!(
                    "unknown release family `{family}` (known: {})",
                    table.names().join(", ")
                ),
            )
        })?;
        let family_date = parse_date(input, family_date, "family date")?;

        // tail: patch<N>[-hotfix<M><sfx>]-<MM-DD-YYYY>_<MM-DD-YYYY>_<HHMM>
        let parts: Vec<&str> = tail.split('_').collect();
        let [pd, build_date, build_time] = parts.as_slice() else {
            return Err(err(
                input,
                format!("`{tail}` is not `patch<N>[-hotfix<M>]-<MM-DD-YYYY>_<MM-DD-YYYY>_<HHMM>`"),
            ));
        };
        let rest = pd
            .strip_prefix("patch")
            .ok_or_else(|| err(input, format!("`{pd}` does not start with `patch<N>`")))?;
        // rest = N[-hotfixM sfx]-MM-DD-YYYY: the date is always the last 10 chars.
        if rest.len() < 12 || !rest.is_char_boundary(rest.len() - 11) {
            return Err(err(
                input,
                format!("`{pd}` is not `patch<N>[-hotfix<M>]-<MM-DD-YYYY>`"),
            ));
        }
        let (levels, date_part) = rest.split_at(rest.len() - 11);
        let patch_date_s = date_part.strip_prefix('-').ok_or_else(|| {
            err(
                input,
                format!("`{pd}` is not `patch<N>[-hotfix<M>]-<MM-DD-YYYY>`"),
            )
        })?;
        let patch_date = parse_date(input, patch_date_s, "patch date")?;
        let (patch_s, hotfix) = match levels.split_once('-') {
            None => (levels, None),
            Some((p, h)) => {
                let h = h.strip_prefix("hotfix").ok_or_else(|| {
                    err(
                        input,
                        format!("`{h}` after the patch number is not `hotfix<M>`"),
                    )
                })?;
                let digits_end = h.bytes().take_while(|c| c.is_ascii_digit()).count();
                let (num, sfx) = h.split_at(digits_end);
                let number = parse_number(input, num, "hotfix number")?;
                if sfx.len() > 3 || !sfx.bytes().all(|c| c.is_ascii_lowercase()) {
                    return Err(err(
                        input,
                        format!("hotfix suffix `{sfx}` must be at most 3 lowercase letters"),
                    ));
                }
                (
                    p,
                    Some(Hotfix {
                        number,
                        suffix: sfx.to_string(),
                    }),
                )
            }
        };
        let patch = parse_number(input, patch_s, "patch number")?;
        let bdate = parse_date(input, build_date, "build date")?;
        let bt = build_time.as_bytes();
        if bt.len() != 4 || !bt.iter().all(|c| c.is_ascii_digit()) {
            return Err(err(input, format!("build time `{build_time}` is not HHMM")));
        }
        let hh = u32::from(bt[0] - b'0') * 10 + u32::from(bt[1] - b'0');
        let mm = u32::from(bt[2] - b'0') * 10 + u32::from(bt[3] - b'0');
        let time = NaiveTime::from_hms_opt(hh, mm, 0).ok_or_else(|| {
            err(
                input,
                format!("build time `{build_time}` is not a time of day"),
            )
        })?;
        Ok(Version {
            family: family.to_string(),
            family_rank,
            family_date,
            patch,
            hotfix,
            patch_date,
            built: NaiveDateTime::new(bdate, time),
        })
    }
}

impl FromStr for Version {
    type Err = BuildstampError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::parse_with(&FamilyTable::default(), s)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}__patch{}",
            self.family,
            fmt_date(&self.family_date),
            self.patch
        )?;
        if let Some(h) = &self.hotfix {
            write!(f, "-hotfix{}{}", h.number, h.suffix)?;
        }
        write!(
            f,
            "-{}_{}_{}",
            fmt_date(&self.patch_date),
            self.built.format("%m-%d-%Y"),
            self.built.format("%H%M")
        )
    }
}

/// `mid` (the seeds' MID Server packages) or `molt` (our own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Product {
    Mid,
    Molt,
}

impl Product {
    pub fn as_str(self) -> &'static str {
        match self {
            Product::Mid => "mid",
            Product::Molt => "molt",
        }
    }
}

pub const KNOWN_OS: &[&str] = &["universal", "linux", "windows", "darwin"];
pub const KNOWN_ARCH: &[&str] = &["universal", "x86-64", "x86", "aarch64"];

/// A full package name, e.g. `mid-jre.madrid-12-18-2018__patch1-hotfix2-03-14-2019_03-20-2019_1304.windows.x86-64.zip`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Buildstamp {
    pub product: Product,
    /// `mid-jre` maps to [`BundleKind::Runtime`] (and is printed back as `jre`).
    pub kind: BundleKind,
    pub version: Version,
    pub os: String,
    pub arch: String,
}

impl Buildstamp {
    pub fn parse_with(table: &FamilyTable, input: &str) -> Result<Buildstamp, BuildstampError> {
        if input.contains("...") {
            return Err(err(
                input,
                "the version is elided (`...`); a full name such as `mid-core.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip` is needed",
            ));
        }
        let rest = input
            .strip_suffix(".zip")
            .ok_or_else(|| err(input, "does not end in `.zip`"))?;
        let (pk, rest) = rest
            .split_once('.')
            .ok_or_else(|| err(input, "missing `.` after `<product>-<kind>`"))?;
        let (product, kind_s) = pk
            .split_once('-')
            .ok_or_else(|| err(input, format!("`{pk}` is not `<product>-<kind>`")))?;
        let product = match product {
            "mid" => Product::Mid,
            "molt" => Product::Molt,
            other => {
                return Err(err(
                    input,
                    format!("unknown product `{other}` (expected `mid` or `molt`)"),
                ));
            }
        };
        let kind = match (product, kind_s) {
            (Product::Mid, "core") | (Product::Molt, "core") => BundleKind::Core,
            (Product::Mid, "jre") | (Product::Molt, "runtime") => BundleKind::Runtime,
            (Product::Mid, "upgrade") | (Product::Molt, "upgrade") => BundleKind::Upgrade,
            (Product::Molt, "precheck") => BundleKind::Precheck,
            (Product::Molt, "selector") => BundleKind::Selector,
            (p, k) => {
                let known = match p {
                    Product::Mid => "core, jre, upgrade",
                    Product::Molt => "core, runtime, upgrade, precheck, selector",
                };
                return Err(err(
                    input,
                    format!(
                        "unknown package kind `{k}` for `{}` (known: {known})",
                        p.as_str()
                    ),
                ));
            }
        };
        let (rest, arch) = rest
            .rsplit_once('.')
            .ok_or_else(|| err(input, "missing `.<os>.<arch>` before `.zip`"))?;
        let (version_s, os) = rest
            .rsplit_once('.')
            .ok_or_else(|| err(input, "missing `.<os>.<arch>` before `.zip`"))?;
        let version = Version::parse_inner(table, version_s, input)?;
        if !KNOWN_OS.contains(&os) {
            return Err(err(
                input,
                format!("unknown os `{os}` (known: {})", KNOWN_OS.join(", ")),
            ));
        }
        if !KNOWN_ARCH.contains(&arch) {
            return Err(err(
                input,
                format!("unknown arch `{arch}` (known: {})", KNOWN_ARCH.join(", ")),
            ));
        }
        Ok(Buildstamp {
            product,
            kind,
            version,
            os: os.to_string(),
            arch: arch.to_string(),
        })
    }

    /// The word used in the package name for the kind (`jre` for `mid` runtimes).
    pub fn kind_word(&self) -> &'static str {
        match (self.product, self.kind) {
            (Product::Mid, BundleKind::Runtime) => "jre",
            (_, k) => k.as_str(),
        }
    }

    /// `<product>-<kind>`, the bundle name (the key of rollback protection).
    pub fn package(&self) -> String {
        format!("{}-{}", self.product.as_str(), self.kind_word())
    }
}

impl FromStr for Buildstamp {
    type Err = BuildstampError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Buildstamp::parse_with(&FamilyTable::default(), s)
    }
}

impl fmt::Display for Buildstamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}.zip",
            self.package(),
            self.version,
            self.os,
            self.arch
        )
    }
}

impl Ord for Buildstamp {
    /// Version first (what "newer" means), then the rest so that the order is total.
    fn cmp(&self, o: &Self) -> Ordering {
        self.version
            .cmp(&o.version)
            .then(self.product.cmp(&o.product))
            .then(self.kind.cmp(&o.kind))
            .then(self.os.cmp(&o.os))
            .then(self.arch.cmp(&o.arch))
    }
}
impl PartialOrd for Buildstamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every full package name in the seed articles.
    const SEED_NAMES: &[&str] = &[
        "mid-core.madrid-12-18-2018__patch1-hotfix2-03-14-2019_03-20-2019_1304.universal.universal.zip",
        "mid-core.madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650.universal.universal.zip",
        "mid-core.quebec-12-09-2020__patch0-hotfix3-01-20-2021_01-21-2021_0905.universal.universal.zip",
        "mid-core.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip",
        "mid-jre.madrid-12-18-2018__patch1-02-13-2019_02-25-2019_1807.windows.x86-64.zip",
        "mid-jre.quebec-12-09-2020__patch0-hotfix1-01-04-2021_01-06-2021_1339.windows.x86-64.zip",
        "mid-upgrade.madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650.universal.universal.zip",
        "mid-upgrade.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip",
        // From the issue text.
        "mid-jre.madrid-12-18-2018__patch1-hotfix2-03-14-2019_03-20-2019_1304.windows.x86-64.zip",
    ];

    #[test]
    fn every_seed_name_parses_and_round_trips() {
        for n in SEED_NAMES {
            let b: Buildstamp = n.parse().unwrap_or_else(|e| panic!("{n}: {e}"));
            assert_eq!(b.to_string(), *n);
        }
    }

    #[test]
    fn fields_of_a_hotfix_jre() {
        let b: Buildstamp =
            "mid-jre.madrid-12-18-2018__patch1-hotfix2-03-14-2019_03-20-2019_1304.windows.x86-64.zip"
                .parse()
                .unwrap();
        assert_eq!(b.product, Product::Mid);
        assert_eq!(b.kind, BundleKind::Runtime);
        assert_eq!(b.version.family, "madrid");
        assert_eq!(
            b.version.family_date,
            NaiveDate::from_ymd_opt(2018, 12, 18).unwrap()
        );
        assert_eq!(b.version.patch, 1);
        assert_eq!(
            b.version.hotfix,
            Some(Hotfix {
                number: 2,
                suffix: String::new()
            })
        );
        assert_eq!(
            b.version.patch_date,
            NaiveDate::from_ymd_opt(2019, 3, 14).unwrap()
        );
        assert_eq!(b.version.built.to_string(), "2019-03-20 13:04:00");
        assert_eq!(b.os, "windows");
        assert_eq!(b.arch, "x86-64");
    }

    #[test]
    fn seed_names_sort_in_release_order() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        let ordered = [
            "madrid-12-18-2018__patch1-02-13-2019_02-25-2019_1807",
            "madrid-12-18-2018__patch1-hotfix2-03-14-2019_03-20-2019_1304",
            "madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650",
            "quebec-12-09-2020__patch0-hotfix1-01-04-2021_01-06-2021_1339",
            "quebec-12-09-2020__patch0-hotfix3-01-20-2021_01-21-2021_0905",
            "quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225",
        ];
        for w in ordered.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
        }
    }

    #[test]
    fn families_are_ordered_by_the_table_not_the_alphabet() {
        let z: Version = "zurich-01-01-2025__patch0-01-01-2025_01-01-2025_0000"
            .parse()
            .unwrap();
        let a: Version = "australia-01-01-2026__patch0-01-01-2026_01-01-2026_0000"
            .parse()
            .unwrap();
        assert!(z < a);
        let table = FamilyTable::default().extended(["brazil"]);
        let b = Version::parse_with(
            &table,
            "brazil-06-01-2026__patch0-06-01-2026_06-01-2026_0000",
        )
        .unwrap();
        let a2 = Version::parse_with(
            &table,
            "australia-01-01-2026__patch9-01-01-2026_01-01-2026_0000",
        )
        .unwrap();
        assert!(a2 < b);
        let e = "brazil-06-01-2026__patch0-06-01-2026_06-01-2026_0000"
            .parse::<Version>()
            .unwrap_err();
        assert!(e.reason.contains("unknown release family `brazil`"), "{e}");
    }

    #[test]
    fn hotfix_letter_suffixes_order_after_the_bare_hotfix() {
        let v = |s: &str| s.parse::<Version>().unwrap();
        let base = "rome-01-01-2021__patch3";
        let tail = "-02-02-2021_02-03-2021_1000";
        let ordered = [
            "",
            "-hotfix1",
            "-hotfix1a",
            "-hotfix1b",
            "-hotfix2",
            "-hotfix10",
        ];
        for w in ordered.windows(2) {
            assert!(v(&format!("{base}{}{tail}", w[0])) < v(&format!("{base}{}{tail}", w[1])));
        }
        assert_eq!(
            v(&format!("{base}-hotfix1b{tail}")).to_string(),
            format!("{base}-hotfix1b{tail}")
        );
    }

    #[test]
    fn molt_packages_use_the_same_scheme() {
        for k in ["core", "runtime", "upgrade", "precheck", "selector"] {
            let n = format!(
                "molt-{k}.vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815.linux.x86-64.zip"
            );
            let b: Buildstamp = n.parse().unwrap();
            assert_eq!(b.kind.as_str(), k);
            assert_eq!(b.to_string(), n);
            assert_eq!(b.package(), format!("molt-{k}"));
        }
    }

    fn reason(s: &str) -> String {
        let e = s.parse::<Buildstamp>().unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("Not a valid package buildstamp: {s}: "))
        );
        e.reason
    }

    #[test]
    fn bad_names_are_rejected_with_a_reason() {
        assert!(reason("mid-core...zip").contains("elided"));
        assert!(reason("mid-jre...zip").contains("elided"));
        assert!(reason("mid-upgrade...zip").contains("elided"));
        assert!(reason("mid-upgrade...preUpgradeCheck.zip").contains("elided"));
        assert!(reason("mid-core.meta.properties").contains(".zip"));
        let q = "quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225";
        assert!(reason(&format!("mid-core.{q}.universal.universal.tar")).contains(".zip"));
        assert!(
            reason(&format!("foo-core.{q}.universal.universal.zip")).contains("unknown product")
        );
        assert!(
            reason(&format!("mid-precheck.{q}.universal.universal.zip"))
                .contains("unknown package kind")
        );
        assert!(reason(&format!("mid-core.{q}.solaris.universal.zip")).contains("unknown os"));
        assert!(reason(&format!("mid-core.{q}.linux.sparc.zip")).contains("unknown arch"));
        assert!(reason("mid-core.quebec-13-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip").contains("calendar"));
        assert!(reason("mid-core.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_2460.universal.universal.zip").contains("time of day"));
        assert!(reason("mid-core.quebec-12-09-2020_patch1-02-18-2021_03-01-2021_1225.universal.universal.zip").contains("`__`"));
        assert!(reason("mid-core.quebec-12-09-2020__hotfix1-02-18-2021_03-01-2021_1225.universal.universal.zip").contains("patch<N>"));
        assert!(reason("mid-core.quebec-12-09-2020__patch01-02-18-2021_03-01-2021_1225.universal.universal.zip").contains("leading zero"));
        assert!(reason("mid-core.quebec-2-9-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip").contains("MM-DD-YYYY"));
        assert!(reason("mid-core.Quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip").contains("lowercase"));
        assert!(reason("").contains(".zip"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Arbitrary strings never panic the parser; anything accepted round-trips.
        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,120}") {
            if let Ok(b) = s.parse::<Buildstamp>() {
                proptest::prop_assert_eq!(b.to_string(), s);
            }
        }

        /// Near-valid names (mutated from a template alphabet) never panic and round-trip.
        #[test]
        fn structured_input_never_panics(s in "(mid|molt)-(core|jre|runtime|upgrade|precheck)\\.(quebec|rome|x)-[0-9]{1,2}-[0-9]{2}-[0-9]{4}__patch[0-9]{1,2}(-hotfix[0-9][a-c]{0,2})?-[0-9]{2}-[0-9]{2}-[0-9]{4}_[0-9]{2}-[0-9]{2}-[0-9]{4}_[0-9]{4}\\.(universal|linux)\\.(universal|x86-64)\\.zip") {
            if let Ok(b) = s.parse::<Buildstamp>() {
                proptest::prop_assert_eq!(b.to_string(), s.clone());
                let again: Buildstamp = b.to_string().parse().unwrap();
                proptest::prop_assert_eq!(again.cmp(&b), Ordering::Equal);
            }
        }

        /// The order is total and consistent with equality on generated versions.
        #[test]
        fn order_is_antisymmetric(a in 0u32..5, b in 0u32..5, ha in proptest::option::of(0u32..3), hb in proptest::option::of(0u32..3)) {
            let mk = |p: u32, h: Option<u32>| {
                let h = h.map(|h| format!("-hotfix{h}")).unwrap_or_default();
                format!("rome-01-01-2021__patch{p}{h}-02-02-2021_02-03-2021_1000").parse::<Version>().unwrap()
            };
            let (x, y) = (mk(a, ha), mk(b, hb));
            proptest::prop_assert_eq!(x.cmp(&y), y.cmp(&x).reverse());
            proptest::prop_assert_eq!(x.cmp(&y) == Ordering::Equal, x == y);
        }
    }
}
