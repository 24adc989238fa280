//! The `molt:check` contract version this host implements, and the check that
//! refuses a component built for a world or major it cannot run.

/// The WIT package this host implements.
pub const CONTRACT: &str = "molt:check@1.0.0";
/// Majors of `molt:check` this host knows (it supports every minor of each).
pub const KNOWN_MAJORS: &[u64] = &[1];

/// A parsed world name such as `molt:check/precheck@1.0.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldRef {
    pub package: String,
    pub world: String,
    pub major: u64,
    pub minor: u64,
}

/// Why a component's world is refused before it is compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorldError {
    #[error("world `{0}`: no @version")]
    NoVersion(String),
    #[error("world `{0}`: expected <package>/<world>")]
    NoWorld(String),
    #[error("world `{0}`: version is not <major>.<minor>.<patch>")]
    BadVersion(String),
    #[error("world `{0}` is not from the molt:check package")]
    NotMoltCheck(String),
    /// The message names both versions, so an operator knows to upgrade the agent.
    #[error(
        "component is built for molt:check@{major}.x, but this host supports molt:check@{supported}.x only ({CONTRACT}); upgrade the agent first"
    )]
    UnknownMajor { major: u64, supported: String },
    #[error("world `{world}` is not a `{expected}` world")]
    WrongWorld { world: String, expected: String },
}

/// Parse `molt:check/<world>@<major>.<minor>.<patch>`.
pub fn parse_world(s: &str) -> Result<WorldRef, WorldError> {
    let (path, ver) = s
        .split_once('@')
        .ok_or_else(|| WorldError::NoVersion(s.into()))?;
    let (package, world) = path
        .split_once('/')
        .ok_or_else(|| WorldError::NoWorld(s.into()))?;
    let mut v = ver.split('.').map(|p| p.parse::<u64>());
    let (Some(Ok(major)), Some(Ok(minor))) = (v.next(), v.next()) else {
        return Err(WorldError::BadVersion(s.into()));
    };
    Ok(WorldRef {
        package: package.to_string(),
        world: world.to_string(),
        major,
        minor,
    })
}

/// Refuse a world this host cannot run.
pub fn check_world(s: &str, expected: &str) -> Result<WorldRef, WorldError> {
    let w = parse_world(s)?;
    if w.package != "molt:check" {
        return Err(WorldError::NotMoltCheck(s.into()));
    }
    if !KNOWN_MAJORS.contains(&w.major) {
        return Err(WorldError::UnknownMajor {
            major: w.major,
            supported: KNOWN_MAJORS
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(".x, @"),
        });
    }
    if w.world != expected {
        return Err(WorldError::WrongWorld {
            world: s.into(),
            expected: expected.into(),
        });
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_of_this_contract_is_accepted() {
        let w = check_world("molt:check/precheck@1.3.0", "precheck").unwrap();
        assert_eq!((w.world.as_str(), w.major, w.minor), ("precheck", 1, 3));
    }

    #[test]
    fn each_refusal_says_why() {
        let e = |s: &str, w: &str| check_world(s, w).unwrap_err();
        assert_eq!(
            e("molt:check/precheck", "precheck"),
            WorldError::NoVersion("molt:check/precheck".into())
        );
        assert!(matches!(
            e("precheck@1.0.0", "precheck"),
            WorldError::NoWorld(_)
        ));
        assert!(matches!(
            e("molt:check/precheck@x.0.0", "precheck"),
            WorldError::BadVersion(_)
        ));
        assert!(matches!(
            e("other:pkg/precheck@1.0.0", "precheck"),
            WorldError::NotMoltCheck(_)
        ));
        let major = e("molt:check/precheck@2.0.0", "precheck");
        assert_eq!(
            major.to_string(),
            "component is built for molt:check@2.x, but this host supports molt:check@1.x only (molt:check@1.0.0); upgrade the agent first"
        );
        assert!(matches!(
            e("molt:check/selector@1.0.0", "precheck"),
            WorldError::WrongWorld { .. }
        ));
    }
}
