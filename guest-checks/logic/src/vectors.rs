//! The buildstamp test vectors (`testdata/buildstamp-vectors.txt`) and the
//! one rendering of a parse result that every side compares: this crate's unit
//! tests, molt-bundle's, and a wasm guest run under wasmtime by the sandbox tests.
//! Test support only; it is here (not under `#[cfg(test)]`) so that those other
//! crates and the guest can use the same file and the same rendering.
use std::fmt;

use crate::buildstamp::Buildstamp;

/// A vector file line that cannot be read, or a rendering that differs from
/// what its vector expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VectorError {
    /// The file's line (1-based) does not follow the format.
    Unreadable { line: usize, text: String },
    /// `describe` rendered the vector on that line otherwise than expected.
    Differs {
        line: usize,
        expected: Expect,
        got: String,
    },
}

impl fmt::Display for VectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VectorError::Unreadable { line, text } => {
                write!(f, "buildstamp vectors line {line}: cannot read `{text}`")
            }
            VectorError::Differs {
                line,
                expected,
                got,
            } => write!(
                f,
                "buildstamp vectors line {line}: expected {expected:?}, got `{got}`"
            ),
        }
    }
}

impl std::error::Error for VectorError {}

/// The shared vector file, compiled in.
pub const BUILDSTAMP_VECTORS: &str = include_str!("../testdata/buildstamp-vectors.txt");

/// What a vector expects of its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Parses, with this family, patch (`12a`) and hotfix (`2b`, or `-` for none).
    Ok {
        family: String,
        patch: String,
        hotfix: String,
    },
    /// Refused, with a reason containing this text.
    Err { reason: String },
}

/// One line of the vector file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vector {
    /// 1-based line number, for messages.
    pub line: usize,
    pub name: String,
    pub expect: Expect,
}

/// Parse the vector file format (see the file's header). `ok` vectors keep
/// their file order, which is their expected sorted order.
pub fn parse_vectors(text: &str) -> Result<Vec<Vector>, VectorError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || VectorError::Unreadable {
            line: i + 1,
            text: line.to_string(),
        };
        let (tag, rest) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
        let (name, rest) = rest
            .trim_start()
            .split_once(char::is_whitespace)
            .ok_or_else(bad)?;
        let expect = match tag {
            "ok" => match rest.split_whitespace().collect::<Vec<_>>().as_slice() {
                [family, patch, hotfix] => Expect::Ok {
                    family: family.to_string(),
                    patch: patch.to_string(),
                    hotfix: hotfix.to_string(),
                },
                _ => return Err(bad()),
            },
            "err" => Expect::Err {
                reason: rest.trim().to_string(),
            },
            _ => return Err(bad()),
        };
        out.push(Vector {
            line: i + 1,
            name: name.to_string(),
            expect,
        });
    }
    Ok(out)
}

/// Every field of a parse result (or the refusal) on one line, so that a
/// host-native and a wasm run can be compared as text.
pub fn describe(name: &str) -> String {
    match name.parse::<Buildstamp>() {
        Ok(b) => {
            let v = &b.version;
            format!(
                "ok product={} kind={} family={} rank={} family_date={} patch={}{} hotfix={} patch_date={} built={}T{:02}{:02} os={} arch={} display={}",
                b.product.as_str(),
                b.kind.as_str(),
                v.family,
                v.family_rank,
                v.family_date,
                v.patch,
                v.patch_suffix,
                v.hotfix
                    .as_ref()
                    .map(|h| format!("{}{}", h.number, h.suffix))
                    .unwrap_or_else(|| "-".into()),
                v.patch_date,
                v.built.date,
                v.built.hour,
                v.built.minute,
                b.os,
                b.arch,
                b,
            )
        }
        Err(e) => format!("err {e}"),
    }
}

/// The names that parse, sorted: the positions (in `names`) in ascending
/// buildstamp order. Names that do not parse are left out.
pub fn sorted_order(names: &[&str]) -> Vec<usize> {
    let mut parsed: Vec<(usize, Buildstamp)> = names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| n.parse::<Buildstamp>().ok().map(|b| (i, b)))
        .collect();
    parsed.sort_by(|a, b| a.1.cmp(&b.1));
    parsed.into_iter().map(|(i, _)| i).collect()
}

/// Check `describe` output for a vector against what the file expects;
/// `Err` names the line and what differed.
pub fn check_description(v: &Vector, described: &str) -> Result<(), VectorError> {
    let ok = match &v.expect {
        Expect::Ok {
            family,
            patch,
            hotfix,
        } => {
            let has = |k: &str, val: &str| described.split(' ').any(|f| f == format!("{k}={val}"));
            described.starts_with("ok ")
                && has("family", family)
                && has("patch", patch)
                && has("hotfix", hotfix)
                && has("display", &v.name)
        }
        Expect::Err { reason } => {
            described.starts_with(&format!("err Not a valid package buildstamp: {}: ", v.name))
                && described.contains(reason.as_str())
        }
    };
    if ok {
        Ok(())
    } else {
        Err(VectorError::Differs {
            line: v.line,
            expected: v.expect.clone(),
            got: described.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> Vec<Vector> {
        parse_vectors(BUILDSTAMP_VECTORS).unwrap()
    }

    #[test]
    fn there_are_enough_lettered_vectors() {
        let v = vectors();
        let lettered = v
            .iter()
            .filter(|v| match &v.expect {
                Expect::Ok { patch, hotfix, .. } => {
                    patch.ends_with(|c: char| c.is_ascii_lowercase()) || hotfix != "-"
                }
                Expect::Err { .. } => false,
            })
            .count();
        assert!(
            lettered >= 30,
            "{lettered} lettered-patch or hotfix vectors"
        );
    }

    #[test]
    fn every_vector_parses_as_expected() {
        for v in vectors() {
            check_description(&v, &describe(&v.name)).unwrap();
        }
    }

    #[test]
    fn ok_vectors_sort_in_file_order() {
        let v = vectors();
        let ok: Vec<&str> = v
            .iter()
            .filter(|v| matches!(v.expect, Expect::Ok { .. }))
            .map(|v| v.name.as_str())
            .collect();
        for w in ok.windows(2) {
            let (a, b) = (
                w[0].parse::<Buildstamp>().unwrap(),
                w[1].parse::<Buildstamp>().unwrap(),
            );
            assert!(a < b, "{a} < {b}");
        }
        // Sorting a scrambled copy gives the file order back.
        let mut scrambled = ok.clone();
        scrambled.reverse();
        scrambled.rotate_left(ok.len() / 3);
        let sorted: Vec<&str> = sorted_order(&scrambled)
            .into_iter()
            .map(|i| scrambled[i])
            .collect();
        assert_eq!(sorted, ok);
    }
}
