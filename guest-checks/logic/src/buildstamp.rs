//! Package names ("buildstamps") in the seeds' scheme, e.g.
//! `mid-core.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip`.
//!
//! This is the one parser, ordering and family table: the guests call it in
//! wasm, and the host's `molt_bundle::buildstamp` is a chrono-typed layer over
//! it, so host and guests cannot disagree. No dependencies (it runs in guests).
//!
//! Grammar (`<version>` is the seeds' `mid.buildstamp`):
//! ```text
//! <product>-<kind>.<version>.<os>.<arch>.zip
//! <version> = <family>-<MM-DD-YYYY>__patch<N>[<letter>][-hotfix<M>[<letters>]]-<MM-DD-YYYY>_<MM-DD-YYYY>_<HHMM>
//! ```
//! Release families are ordered by an explicit table ([`FamilyTable`]), never by
//! the alphabet: the names wrap around after `zurich`. Within a family date,
//! `patch6 < patch6-hotfix1 < patch6-hotfix2 < patch6a < patch6a-hotfix1 < patch6b < patch7`:
//! a lettered (security) patch is released after every hotfix of the patch it
//! letters, so the patch level (number, letter) is compared before the hotfix.
use std::cmp::Ordering;
use std::fmt;

/// The trait impls a version or package-name type shares with its twin (this
/// crate's [`Version`] and [`Buildstamp`], and the host's chrono-typed
/// `molt_bundle` ones): `FromStr` with the built-in [`FamilyTable`], and the
/// order of its `key()`. The `package` form adds the `<product>-<kind>` name
/// and the full name's `Display`. One definition, so host and guests cannot
/// differ in what parses or what is newer.
#[macro_export]
macro_rules! buildstamp_traits {
    ($t:ty, $err:ty) => {
        impl ::core::str::FromStr for $t {
            type Err = $err;
            fn from_str(s: &str) -> ::core::result::Result<Self, Self::Err> {
                <$t>::parse_with(&$crate::buildstamp::FamilyTable::default(), s)
            }
        }
        impl ::core::cmp::Ord for $t {
            fn cmp(&self, o: &Self) -> ::core::cmp::Ordering {
                self.key().cmp(&o.key())
            }
        }
        impl ::core::cmp::PartialOrd for $t {
            fn partial_cmp(&self, o: &Self) -> ::core::option::Option<::core::cmp::Ordering> {
                ::core::option::Option::Some(self.cmp(o))
            }
        }
    };
    (package $t:ty, $err:ty) => {
        $crate::buildstamp_traits!($t, $err);
        impl $t {
            /// `<product>-<kind>`, the bundle name (the key of rollback protection).
            pub fn package(&self) -> String {
                format!("{}-{}", self.product.as_str(), self.kind_word())
            }
        }
        /// `<product>-<kind>.<version>.<os>.<arch>.zip`.
        impl ::core::fmt::Display for $t {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
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
    };
}

/// Every full package name in the seed articles (examples for tests and docs).
pub const SEED_NAMES: &[&str] = &[
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

/// The error every parser here returns: the input and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BuildstampError {
    pub input: String,
    pub reason: String,
}

impl fmt::Display for BuildstampError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Not a valid package buildstamp: {}: {}",
            self.input, self.reason
        )
    }
}

impl std::error::Error for BuildstampError {}

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

/// A calendar date (proleptic Gregorian), ordered by year, month, day.
/// Plain integers so the host can build one from chrono without a fallible step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

impl Date {
    /// `None` unless it is a real calendar date (leap years included).
    pub fn new(year: i32, month: u32, day: u32) -> Option<Date> {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        (1..=days)
            .contains(&day)
            .then_some(Date { year, month, day })
    }
}

/// `MM-DD-YYYY`, the buildstamp's own form.
impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}-{:02}-{:04}", self.month, self.day, self.year)
    }
}

/// Build date and time, minute precision (the `_<MM-DD-YYYY>_<HHMM>` tail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Built {
    pub date: Date,
    pub hour: u32,
    pub minute: u32,
}

/// A release level with an optional letter suffix: a patch (`6`, `6a`) or a
/// hotfix (`2`, `2a`). `"" < "a" < "b" < ... < "z" < "aa"`: the number, then
/// shorter suffixes first, then the letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Level<'a> {
    pub number: u32,
    pub suffix: &'a str,
}

impl Ord for Level<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.number
            .cmp(&other.number)
            .then(self.suffix.len().cmp(&other.suffix.len()))
            .then(self.suffix.cmp(other.suffix))
    }
}
impl PartialOrd for Level<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A hotfix number with an optional letter suffix (`hotfix2`, `hotfix2a`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hotfix {
    pub number: u32,
    pub suffix: String,
}

impl Hotfix {
    pub fn level(&self) -> Level<'_> {
        Level {
            number: self.number,
            suffix: &self.suffix,
        }
    }
}

impl Ord for Hotfix {
    fn cmp(&self, other: &Self) -> Ordering {
        self.level().cmp(&other.level())
    }
}
impl PartialOrd for Hotfix {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The release order of versions, as one key: the field order is the
/// comparison order. Both this crate's [`Version`] and the host's chrono-typed
/// `molt_bundle::Version` compare through it, so they cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct OrderKey<'a> {
    pub family_rank: u32,
    pub family_date: Date,
    /// Patch number and letter: every hotfix of `patch6` comes before `patch6a`.
    pub patch: Level<'a>,
    /// `None` (no hotfix) sorts before any hotfix.
    pub hotfix: Option<Level<'a>>,
    pub built: Built,
    pub patch_date: Date,
    /// Last, so that the order is total even across extended family tables.
    pub family: &'a str,
}

/// The bare `<version>` part, e.g. `quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225`:
/// the fleet buildstamp on the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    pub family: String,
    /// Position of `family` in the table used to parse it (orders families).
    pub family_rank: u32,
    pub family_date: Date,
    pub patch: u32,
    /// A security patch's letter (`a` in `patch6a`); empty for a plain patch.
    pub patch_suffix: String,
    pub hotfix: Option<Hotfix>,
    /// Release date of the patch or hotfix.
    pub patch_date: Date,
    pub built: Built,
}

impl Version {
    pub fn key(&self) -> OrderKey<'_> {
        OrderKey {
            family_rank: self.family_rank,
            family_date: self.family_date,
            patch: Level {
                number: self.patch,
                suffix: &self.patch_suffix,
            },
            hotfix: self.hotfix.as_ref().map(Hotfix::level),
            built: self.built,
            patch_date: self.patch_date,
            family: &self.family,
        }
    }

    /// Parse with an explicit family table (use [`std::str::FromStr`] for the built-in one).
    pub fn parse_with(table: &FamilyTable, s: &str) -> Result<Version, BuildstampError> {
        parse_version(table, s, s)
    }
}

crate::buildstamp_traits!(Version, BuildstampError);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}__patch{}{}",
            self.family, self.family_date, self.patch, self.patch_suffix
        )?;
        if let Some(h) = &self.hotfix {
            write!(f, "-hotfix{}{}", h.number, h.suffix)?;
        }
        write!(
            f,
            "-{}_{}_{:02}{:02}",
            self.patch_date, self.built.date, self.built.hour, self.built.minute
        )
    }
}

fn err(input: &str, reason: impl Into<String>) -> BuildstampError {
    BuildstampError {
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// `MM-DD-YYYY`, exactly 2-2-4 digits so that Display round-trips.
fn parse_date(input: &str, s: &str, what: &str) -> Result<Date, BuildstampError> {
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
        (Some(m), Some(d), Some(y)) => i32::try_from(y)
            .ok()
            .and_then(|y| Date::new(y, m, d))
            .ok_or_else(|| err(input, format!("{what} `{s}` is not a real calendar date"))),
        _ => Err(err(input, format!("{what} `{s}` is not a date"))),
    }
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

/// Split `12a` into the number and its letters (`what` names it in errors).
fn parse_level<'a>(
    input: &str,
    s: &'a str,
    what: &str,
    max_letters: usize,
) -> Result<(u32, &'a str), BuildstampError> {
    let digits_end = s.bytes().take_while(|c| c.is_ascii_digit()).count();
    let (num, sfx) = s.split_at(digits_end);
    if num.is_empty() {
        return Err(err(input, format!("{what} `{s}` is not a number")));
    }
    let number = parse_number(input, num, what)?;
    if sfx.len() > max_letters || !sfx.bytes().all(|c| c.is_ascii_lowercase()) {
        let allowed = match max_letters {
            1 => "one lowercase letter".to_string(),
            n => format!("at most {n} lowercase letters"),
        };
        return Err(err(
            input,
            format!("{what} `{s}` is not a number (a suffix must be {allowed})"),
        ));
    }
    Ok((number, sfx))
}

/// Parse a `<version>`; `input` is only used in error messages (the whole
/// package name, when called from [`Buildstamp`]).
fn parse_version(table: &FamilyTable, s: &str, input: &str) -> Result<Version, BuildstampError> {
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

    // tail: patch<N>[<letter>][-hotfix<M><sfx>]-<MM-DD-YYYY>_<MM-DD-YYYY>_<HHMM>
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
    // rest = N[letter][-hotfixM sfx]-MM-DD-YYYY: the date is always the last 10 chars.
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
            let (number, suffix) = parse_level(input, h, "hotfix number", 3)?;
            (
                p,
                Some(Hotfix {
                    number,
                    suffix: suffix.to_string(),
                }),
            )
        }
    };
    let (patch, patch_suffix) = parse_level(input, patch_s, "patch number", 1)?;
    let bdate = parse_date(input, build_date, "build date")?;
    let bt = build_time.as_bytes();
    if bt.len() != 4 || !bt.iter().all(|c| c.is_ascii_digit()) {
        return Err(err(input, format!("build time `{build_time}` is not HHMM")));
    }
    let hour = u32::from(bt[0] - b'0') * 10 + u32::from(bt[1] - b'0');
    let minute = u32::from(bt[2] - b'0') * 10 + u32::from(bt[3] - b'0');
    if hour > 23 || minute > 59 {
        return Err(err(
            input,
            format!("build time `{build_time}` is not a time of day"),
        ));
    }
    Ok(Version {
        family: family.to_string(),
        family_rank,
        family_date,
        patch,
        patch_suffix: patch_suffix.to_string(),
        hotfix,
        patch_date,
        built: Built {
            date: bdate,
            hour,
            minute,
        },
    })
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

/// What a package carries. Same variants, in the same order, as the host's
/// `molt_bundle::schema::BundleKind` (the order breaks ties in [`Buildstamp`]'s order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Precheck,
    Selector,
    Core,
    Runtime,
    Upgrade,
}

impl Kind {
    /// The canonical word (`runtime`; the seeds' `mid-jre` is [`Kind::Runtime`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Precheck => "precheck",
            Kind::Selector => "selector",
            Kind::Core => "core",
            Kind::Runtime => "runtime",
            Kind::Upgrade => "upgrade",
        }
    }

    /// The word used in the package name for the kind (`jre` for `mid` runtimes).
    pub fn word(self, product: Product) -> &'static str {
        match (product, self) {
            (Product::Mid, Kind::Runtime) => "jre",
            (_, k) => k.as_str(),
        }
    }
}

pub const KNOWN_OS: &[&str] = &["universal", "linux", "windows", "darwin"];
pub const KNOWN_ARCH: &[&str] = &["universal", "x86-64", "x86", "aarch64"];

/// A full package name, e.g. `mid-jre.madrid-12-18-2018__patch1-hotfix2-03-14-2019_03-20-2019_1304.windows.x86-64.zip`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Buildstamp {
    pub product: Product,
    /// `mid-jre` is [`Kind::Runtime`] (and is printed back as `jre`).
    pub kind: Kind,
    pub version: Version,
    pub os: String,
    pub arch: String,
}

/// The total order of package names: the version first (what "newer" means),
/// then the rest so that no two different names compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BuildstampKey<'a> {
    pub version: OrderKey<'a>,
    pub product: Product,
    pub kind: Kind,
    pub os: &'a str,
    pub arch: &'a str,
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
            (Product::Mid, "core") | (Product::Molt, "core") => Kind::Core,
            (Product::Mid, "jre") | (Product::Molt, "runtime") => Kind::Runtime,
            (Product::Mid, "upgrade") | (Product::Molt, "upgrade") => Kind::Upgrade,
            (Product::Molt, "precheck") => Kind::Precheck,
            (Product::Molt, "selector") => Kind::Selector,
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
        let version = parse_version(table, version_s, input)?;
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

    pub fn key(&self) -> BuildstampKey<'_> {
        BuildstampKey {
            version: self.version.key(),
            product: self.product,
            kind: self.kind,
            os: &self.os,
            arch: &self.arch,
        }
    }

    /// The word used in the package name for the kind (`jre` for `mid` runtimes).
    pub fn kind_word(&self) -> &'static str {
        self.kind.word(self.product)
    }

    /// `runtime` and the seeds' `jre` are the same thing.
    pub fn is_runtime(&self) -> bool {
        self.kind == Kind::Runtime
    }

    /// The same package with another version.
    pub fn with_version(&self, version: &Version) -> Buildstamp {
        Buildstamp {
            version: version.clone(),
            ..self.clone()
        }
    }
}

crate::buildstamp_traits!(package Buildstamp, BuildstampError);

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_and_orders_seed_names() {
        let a: Buildstamp = "mid-core.madrid-12-18-2018__patch1-hotfix2-03-14-2019_03-20-2019_1304.universal.universal.zip".parse().unwrap();
        let b: Buildstamp =
            "mid-core.madrid-12-18-2018__patch2-03-20-2019_03-29-2019_1650.universal.universal.zip"
                .parse()
                .unwrap();
        assert_eq!(a.kind, Kind::Core);
        assert_eq!(
            a.version.hotfix,
            Some(Hotfix {
                number: 2,
                suffix: String::new()
            })
        );
        assert!(a.version < b.version);
        let j: Buildstamp =
            "mid-jre.madrid-12-18-2018__patch1-02-13-2019_02-25-2019_1807.windows.x86-64.zip"
                .parse()
                .unwrap();
        assert!(j.is_runtime());
        assert_eq!(j.kind_word(), "jre");
        assert!(
            "mid-core.nope.universal.universal.zip"
                .parse::<Buildstamp>()
                .is_err()
        );
    }

    #[test]
    fn lettered_patches_come_after_every_hotfix_of_their_patch() {
        let base = "helsinki-03-16-2016__patch";
        let tail = "-08-25-2017_08-25-2017_1200";
        let ordered = [
            "6",
            "6-hotfix1",
            "6-hotfix2",
            "6-hotfix2a",
            "6a",
            "6a-hotfix1",
            "6b",
            "7",
        ];
        for w in ordered.windows(2) {
            let (x, y) = (
                v(&format!("{base}{}{tail}", w[0])),
                v(&format!("{base}{}{tail}", w[1])),
            );
            assert!(x < y, "{x} < {y}");
        }
        let p = v(&format!("{base}12a-hotfix3b{tail}"));
        assert_eq!((p.patch, p.patch_suffix.as_str()), (12, "a"));
        assert_eq!(p.to_string(), format!("{base}12a-hotfix3b{tail}"));
    }

    #[test]
    fn calendar_dates_follow_the_gregorian_rules() {
        assert!(Date::new(2024, 2, 29).is_some());
        assert!(Date::new(2000, 2, 29).is_some());
        assert!(Date::new(1900, 2, 29).is_none());
        assert!(Date::new(2023, 2, 29).is_none());
        assert!(Date::new(2023, 4, 31).is_none());
        assert!(Date::new(2023, 13, 1).is_none());
        assert!(Date::new(2023, 1, 0).is_none());
    }

    #[test]
    fn bad_patch_letters_are_refused_with_a_reason() {
        let r = |s: &str| {
            format!("helsinki-03-16-2016__{s}-08-25-2017_08-25-2017_1200")
                .parse::<Version>()
                .unwrap_err()
                .reason
        };
        assert!(
            r("patch12ab").contains("one lowercase letter"),
            "{}",
            r("patch12ab")
        );
        assert!(r("patch12A").contains("one lowercase letter"));
        assert!(r("patcha").contains("is not a number"));
        assert!(r("patch012a").contains("leading zero"));
        assert!(r("patch6-hotfix1abcd").contains("at most 3"));
    }
}
