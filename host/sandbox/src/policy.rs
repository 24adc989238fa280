//! What the host allows: capabilities, preopens, limits and the network
//! allow-list. A component gets `requested ∧ allowed`; a request beyond the
//! policy is refused before anything is compiled or run.
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use molt_bundle::Component;

/// Host import groups of the `molt:check` contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    Facts,
    Net,
    Services,
    Log,
}

impl Capability {
    pub const ALL: [Capability; 4] = [
        Capability::Facts,
        Capability::Net,
        Capability::Services,
        Capability::Log,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Facts => "facts",
            Capability::Net => "net",
            Capability::Services => "services",
            Capability::Log => "log",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| PolicyError::UnknownCapability(s.into()))
    }
}

/// Directories a component may see (WASI p2 preopens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Preopen {
    /// A fresh, empty dir, read-write, at `/scratch`; removed after the run.
    Scratch,
    /// The install dir, read-only, at `/install`.
    Install,
    /// `<install>/work/precheck-staging`, read-write, at `/staging` (the
    /// seeds' "upgradeCheck folder": proves the account may write in the install).
    Staging,
}

impl Preopen {
    pub const ALL: [Preopen; 3] = [Preopen::Scratch, Preopen::Install, Preopen::Staging];
    pub fn as_str(self) -> &'static str {
        match self {
            Preopen::Scratch => "scratch",
            Preopen::Install => "install",
            Preopen::Staging => "staging",
        }
    }
}

impl fmt::Display for Preopen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Preopen {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        Preopen::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| PolicyError::UnknownPreopen(s.into()))
    }
}

/// Why a manifest's request is refused before anything is compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("unknown capability `{0}` (known: facts, net, services, log)")]
    UnknownCapability(String),
    #[error("unknown preopen `{0}` (known: scratch, install, staging)")]
    UnknownPreopen(String),
    #[error("requests capability `{0}`, which the host policy does not allow")]
    CapabilityNotAllowed(Capability),
    #[error("requests preopen `{0}`, which the host policy does not allow")]
    PreopenNotAllowed(Preopen),
}

/// Resource limits of one check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline (epoch interruption, 10 ms ticks).
    pub deadline: Duration,
    /// Instruction budget (about 12 G fuel per second of tight loop).
    pub fuel: u64,
    /// Cap on each linear memory.
    pub memory_bytes: u64,
}

/// The host's policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub capabilities: BTreeSet<Capability>,
    pub preopens: BTreeSet<Preopen>,
    /// Used when the manifest does not say.
    pub defaults: Limits,
    /// Manifest overrides are capped here.
    pub ceilings: Limits,
    /// URLs `net.probe` may reach (matched by scheme, host and port).
    pub net_allow: Vec<String>,
    /// How many checks of one bundle run at once.
    pub concurrency: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            capabilities: Capability::ALL.into_iter().collect(),
            preopens: Preopen::ALL.into_iter().collect(),
            defaults: Limits {
                deadline: Duration::from_secs(10),
                fuel: 20_000_000_000,
                memory_bytes: 64 << 20,
            },
            ceilings: Limits {
                deadline: Duration::from_secs(120),
                fuel: 500_000_000_000,
                memory_bytes: 512 << 20,
            },
            net_allow: Vec::new(),
            concurrency: 4,
        }
    }
}

/// What one component is granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub capabilities: BTreeSet<Capability>,
    pub preopens: BTreeSet<Preopen>,
    pub limits: Limits,
}

impl Policy {
    /// requested ∧ allowed, or a refusal naming the first capability or preopen
    /// the policy does not allow. Limits: manifest value (or default), capped by the ceiling.
    pub fn grant(&self, c: &Component) -> Result<Grant, PolicyError> {
        let mut capabilities = BTreeSet::new();
        for s in &c.capabilities {
            let cap: Capability = s.parse()?;
            if !self.capabilities.contains(&cap) {
                return Err(PolicyError::CapabilityNotAllowed(cap));
            }
            capabilities.insert(cap);
        }
        let mut preopens = BTreeSet::new();
        for s in &c.preopens {
            let p: Preopen = s.parse()?;
            if !self.preopens.contains(&p) {
                return Err(PolicyError::PreopenNotAllowed(p));
            }
            preopens.insert(p);
        }
        let l = &c.limits;
        let limits = Limits {
            deadline: l
                .deadline_ms
                .map(Duration::from_millis)
                .unwrap_or(self.defaults.deadline)
                .min(self.ceilings.deadline),
            fuel: l.fuel.unwrap_or(self.defaults.fuel).min(self.ceilings.fuel),
            memory_bytes: l
                .memory_bytes
                .unwrap_or(self.defaults.memory_bytes)
                .min(self.ceilings.memory_bytes),
        };
        Ok(Grant {
            capabilities,
            preopens,
            limits,
        })
    }
}

/// `scheme://host:port` of a URL, lower-cased, default ports filled in.
pub fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?;
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h.to_string(), p.parse::<u16>().ok()?)
        }
        _ => (authority.to_string(), default_port),
    };
    Some(format!("{scheme}://{}:{port}", host.to_ascii_lowercase()))
}

/// Is `url` allowed by `allow` (same origin as one entry)?
pub fn url_allowed(allow: &[String], url: &str) -> bool {
    match origin(url) {
        None => false,
        Some(o) => allow
            .iter()
            .any(|a| origin(a).as_deref() == Some(o.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn comp(caps: &[&str], pre: &[&str]) -> Component {
        Component {
            path: "x.wasm".into(),
            world: "molt:check/precheck@1.0.0".into(),
            capabilities: caps.iter().map(|s| s.to_string()).collect(),
            preopens: pre.iter().map(|s| s.to_string()).collect(),
            limits: Default::default(),
            params: BTreeMap::new(),
        }
    }

    #[test]
    fn grant_is_requested_and_allowed() {
        let mut p = Policy::default();
        p.capabilities.remove(&Capability::Net);
        let g = p.grant(&comp(&["facts"], &["scratch"])).unwrap();
        assert_eq!(g.capabilities.len(), 1);
        let e = p.grant(&comp(&["facts", "net"], &[])).unwrap_err();
        assert_eq!(e, PolicyError::CapabilityNotAllowed(Capability::Net));
        assert!(e.to_string().contains("`net`"), "{e}");
        let e = p.grant(&comp(&["disk"], &[])).unwrap_err();
        assert!(e.to_string().contains("unknown capability"), "{e}");
        let e = p.grant(&comp(&[], &["root"])).unwrap_err();
        assert!(e.to_string().contains("unknown preopen"), "{e}");
    }

    #[test]
    fn limits_are_capped() {
        let p = Policy::default();
        let mut c = comp(&[], &[]);
        c.limits.memory_bytes = Some(4 << 30);
        c.limits.deadline_ms = Some(1);
        let g = p.grant(&c).unwrap();
        assert_eq!(g.limits.memory_bytes, p.ceilings.memory_bytes);
        assert_eq!(g.limits.deadline, Duration::from_millis(1));
        assert_eq!(g.limits.fuel, p.defaults.fuel);
    }

    #[test]
    fn origins_match() {
        let allow = vec!["https://dl.example.com/packages/".to_string()];
        assert!(url_allowed(&allow, "https://DL.example.com:443/x"));
        assert!(!url_allowed(&allow, "http://dl.example.com/"));
        assert!(!url_allowed(&allow, "https://dl.example.com.evil/"));
        assert!(!url_allowed(&allow, "https://user@dl.example.com/"));
    }
}
