//! Package names ("buildstamps") in the seeds' scheme, e.g.
//! `mid-core.quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225.universal.universal.zip`.
//!
//! A chrono-typed layer over `molt_check_logic::buildstamp`, which holds the
//! one parser, ordering and family table that the wasm guests run too (so the
//! host and the selector cannot disagree about what is newer). Grammar and
//! order: docs/bundle-format.md section 7.
use std::fmt;

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use molt_check_logic::buildstamp as logic;

pub use logic::{FAMILIES, FamilyTable, Hotfix, KNOWN_ARCH, KNOWN_OS, Product, SEED_NAMES};

use crate::schema::BundleKind;

/// The error every parser here returns: the input and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Not a valid package buildstamp: {input}: {reason}")]
pub struct BuildstampError {
    pub input: String,
    pub reason: String,
}

impl From<logic::BuildstampError> for BuildstampError {
    fn from(e: logic::BuildstampError) -> Self {
        BuildstampError {
            input: e.input,
            reason: e.reason,
        }
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
    /// A security patch's letter (`a` in `patch12a`); empty for a plain patch.
    pub patch_suffix: String,
    pub hotfix: Option<Hotfix>,
    /// Release date of the patch or hotfix.
    pub patch_date: NaiveDate,
    /// Build date and time (minute precision).
    pub built: NaiveDateTime,
}

fn to_logic_date(d: &NaiveDate) -> logic::Date {
    logic::Date {
        year: d.year(),
        month: d.month(),
        day: d.day(),
    }
}

/// The logic crate only accepts real calendar dates, which chrono accepts too;
/// an error here would be a disagreement between the two, reported, not a panic.
fn from_logic_date(input: &str, d: logic::Date) -> Result<NaiveDate, BuildstampError> {
    NaiveDate::from_ymd_opt(d.year, d.month, d.day).ok_or_else(|| BuildstampError {
        input: input.to_string(),
        reason: format!("date `{d}` is out of range"),
    })
}

impl Version {
    /// Parse with an explicit family table (use [`std::str::FromStr`] for the built-in one).
    pub fn parse_with(table: &FamilyTable, s: &str) -> Result<Version, BuildstampError> {
        Self::from_logic(s, logic::Version::parse_with(table, s)?)
    }

    fn from_logic(input: &str, v: logic::Version) -> Result<Version, BuildstampError> {
        let time = NaiveTime::from_hms_opt(v.built.hour, v.built.minute, 0).ok_or_else(|| {
            BuildstampError {
                input: input.to_string(),
                reason: format!(
                    "build time {}:{} is out of range",
                    v.built.hour, v.built.minute
                ),
            }
        })?;
        Ok(Version {
            family_date: from_logic_date(input, v.family_date)?,
            patch_date: from_logic_date(input, v.patch_date)?,
            built: NaiveDateTime::new(from_logic_date(input, v.built.date)?, time),
            family: v.family,
            family_rank: v.family_rank,
            patch: v.patch,
            patch_suffix: v.patch_suffix,
            hotfix: v.hotfix,
        })
    }

    /// The same version in the logic crate's types (for its Display).
    fn to_logic(&self) -> logic::Version {
        logic::Version {
            family: self.family.clone(),
            family_rank: self.family_rank,
            family_date: to_logic_date(&self.family_date),
            patch: self.patch,
            patch_suffix: self.patch_suffix.clone(),
            hotfix: self.hotfix.clone(),
            patch_date: to_logic_date(&self.patch_date),
            built: self.built_logic(),
        }
    }

    fn built_logic(&self) -> logic::Built {
        logic::Built {
            date: to_logic_date(&self.built.date()),
            hour: self.built.hour(),
            minute: self.built.minute(),
        }
    }

    /// The release order key of the logic crate: the one definition of "newer".
    pub fn key(&self) -> logic::OrderKey<'_> {
        logic::OrderKey {
            family_rank: self.family_rank,
            family_date: to_logic_date(&self.family_date),
            patch: logic::Level {
                number: self.patch,
                suffix: &self.patch_suffix,
            },
            hotfix: self.hotfix.as_ref().map(Hotfix::level),
            built: self.built_logic(),
            patch_date: to_logic_date(&self.patch_date),
            family: &self.family,
        }
    }
}

molt_check_logic::buildstamp_traits!(Version, BuildstampError);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_logic().fmt(f)
    }
}

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

fn kind_from_logic(k: logic::Kind) -> BundleKind {
    match k {
        logic::Kind::Precheck => BundleKind::Precheck,
        logic::Kind::Selector => BundleKind::Selector,
        logic::Kind::Core => BundleKind::Core,
        logic::Kind::Runtime => BundleKind::Runtime,
        logic::Kind::Upgrade => BundleKind::Upgrade,
    }
}

fn kind_to_logic(k: BundleKind) -> logic::Kind {
    match k {
        BundleKind::Precheck => logic::Kind::Precheck,
        BundleKind::Selector => logic::Kind::Selector,
        BundleKind::Core => logic::Kind::Core,
        BundleKind::Runtime => logic::Kind::Runtime,
        BundleKind::Upgrade => logic::Kind::Upgrade,
    }
}

impl Buildstamp {
    pub fn parse_with(table: &FamilyTable, input: &str) -> Result<Buildstamp, BuildstampError> {
        let b = logic::Buildstamp::parse_with(table, input)?;
        Ok(Buildstamp {
            product: b.product,
            kind: kind_from_logic(b.kind),
            version: Version::from_logic(input, b.version)?,
            os: b.os,
            arch: b.arch,
        })
    }

    /// The word used in the package name for the kind (`jre` for `mid` runtimes).
    pub fn kind_word(&self) -> &'static str {
        kind_to_logic(self.kind).word(self.product)
    }

    /// The logic crate's total order key (version first).
    pub fn key(&self) -> logic::BuildstampKey<'_> {
        logic::BuildstampKey {
            version: self.version.key(),
            product: self.product,
            kind: kind_to_logic(self.kind),
            os: &self.os,
            arch: &self.arch,
        }
    }
}

// Ordered version first (what "newer" means), then the rest so that the order is total.
molt_check_logic::buildstamp_traits!(package Buildstamp, BuildstampError);

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use super::*;

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

    /// The shared vectors (guest-checks/logic/testdata/buildstamp-vectors.txt)
    /// through this chrono-typed layer: same fields, same refusals, same order.
    #[test]
    fn shared_vectors_parse_and_sort_the_same_through_the_host_types() {
        use molt_check_logic::vectors::{BUILDSTAMP_VECTORS, Expect, parse_vectors};
        let vectors = parse_vectors(BUILDSTAMP_VECTORS).unwrap();
        assert!(vectors.len() >= 30, "{} vectors", vectors.len());
        let mut ok = Vec::new();
        for v in &vectors {
            let parsed = v.name.parse::<Buildstamp>();
            match (&v.expect, parsed) {
                (
                    Expect::Ok {
                        family,
                        patch,
                        hotfix,
                    },
                    Ok(b),
                ) => {
                    let bv = &b.version;
                    assert_eq!(&bv.family, family, "line {}", v.line);
                    assert_eq!(
                        &format!("{}{}", bv.patch, bv.patch_suffix),
                        patch,
                        "line {}",
                        v.line
                    );
                    let h = bv
                        .hotfix
                        .as_ref()
                        .map(|h| format!("{}{}", h.number, h.suffix))
                        .unwrap_or_else(|| "-".into());
                    assert_eq!(&h, hotfix, "line {}", v.line);
                    assert_eq!(b.to_string(), v.name, "line {}", v.line);
                    // The logic crate's own parse agrees field for field.
                    let l: molt_check_logic::buildstamp::Buildstamp = v.name.parse().unwrap();
                    assert_eq!(bv.to_logic(), l.version, "line {}", v.line);
                    assert_eq!(kind_to_logic(b.kind), l.kind, "line {}", v.line);
                    ok.push(b);
                }
                (Expect::Err { reason }, Err(e)) => {
                    assert!(e.reason.contains(reason.as_str()), "line {}: {e}", v.line);
                    assert!(
                        e.to_string()
                            .starts_with(&format!("Not a valid package buildstamp: {}: ", v.name))
                    );
                }
                (expect, got) => panic!("line {}: expected {expect:?}, got {got:?}", v.line),
            }
        }
        for w in ok.windows(2) {
            assert!(w[0] < w[1], "{} < {}", w[0], w[1]);
            assert!(w[0].version <= w[1].version, "{} <= {}", w[0], w[1]);
        }
        let mut scrambled = ok.clone();
        scrambled.reverse();
        scrambled.rotate_left(ok.len() / 3);
        scrambled.sort();
        assert_eq!(scrambled, ok);
    }

    #[test]
    fn the_issue_s_security_patch_tag_parses() {
        let n = "mid-core.helsinki-03-16-2016__patch12a-08-25-2017_08-25-2017_1200.universal.universal.zip";
        let b: Buildstamp = n.parse().unwrap();
        assert_eq!(
            (b.version.patch, b.version.patch_suffix.as_str()),
            (12, "a")
        );
        assert_eq!(b.version.hotfix, None);
        assert_eq!(b.to_string(), n);
        let v = |s: &str| s.parse::<Version>().unwrap();
        let (base, tail) = ("helsinki-03-16-2016__patch", "-08-25-2017_08-25-2017_1200");
        let ordered = ["6", "6-hotfix1", "6-hotfix2", "6a", "6a-hotfix1", "6b", "7"];
        for w in ordered.windows(2) {
            assert!(
                v(&format!("{base}{}{tail}", w[0])) < v(&format!("{base}{}{tail}", w[1])),
                "{} < {}",
                w[0],
                w[1]
            );
        }
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
        fn structured_input_never_panics(s in "(mid|molt)-(core|jre|runtime|upgrade|precheck)\\.(quebec|rome|x)-[0-9]{1,2}-[0-9]{2}-[0-9]{4}__patch[0-9]{1,2}[a-c]?(-hotfix[0-9][a-c]{0,2})?-[0-9]{2}-[0-9]{2}-[0-9]{4}_[0-9]{2}-[0-9]{2}-[0-9]{4}_[0-9]{4}\\.(universal|linux)\\.(universal|x86-64)\\.zip") {
            if let Ok(b) = s.parse::<Buildstamp>() {
                proptest::prop_assert_eq!(b.to_string(), s.clone());
                let again: Buildstamp = b.to_string().parse().unwrap();
                proptest::prop_assert_eq!(again.cmp(&b), Ordering::Equal);
            }
        }

        /// The order is total and consistent with equality on generated versions.
        #[test]
        fn order_is_antisymmetric(a in 0u32..5, b in 0u32..5, la in "[ab]?", lb in "[ab]?", ha in proptest::option::of(0u32..3), hb in proptest::option::of(0u32..3)) {
            let mk = |p: u32, l: &str, h: Option<u32>| {
                let h = h.map(|h| format!("-hotfix{h}")).unwrap_or_default();
                format!("rome-01-01-2021__patch{p}{l}{h}-02-02-2021_02-03-2021_1000").parse::<Version>().unwrap()
            };
            let (x, y) = (mk(a, &la, ha), mk(b, &lb, hb));
            proptest::prop_assert_eq!(x.cmp(&y), y.cmp(&x).reverse());
            proptest::prop_assert_eq!(x.cmp(&y) == Ordering::Equal, x == y);
        }
    }
}
