//! The logic of Molt's standard pre-upgrade checks and of the version selector,
//! as plain Rust functions over plain data. The wasm guests are thin wrappers that
//! fetch host facts through WIT imports and call these; the host benchmark calls
//! them natively, so both run exactly the same code.
#![forbid(unsafe_code)]

pub mod buildstamp;
pub mod checks;
pub mod fileops;
pub mod select;
pub mod vectors;

/// How bad a finding is. `Blocking` stops the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Blocking,
    Warning,
    Info,
}

/// One result of a check: a stable code, a message and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub code: String,
    pub message: String,
    pub remediation: String,
}

impl Finding {
    pub fn new(severity: Severity, code: &str, message: String, remediation: &str) -> Finding {
        Finding {
            severity,
            code: code.to_string(),
            message,
            remediation: remediation.to_string(),
        }
    }
}

/// Host facts as the `facts` interface reports them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    pub os: String,
    pub arch: String,
    pub is_64bit: bool,
    pub libc_version: Option<String>,
    pub install_free_bytes: u64,
    pub temp_free_bytes: u64,
    pub service_account: String,
    pub privileged: bool,
    pub runtime_version: Option<String>,
    pub agent_pid: u32,
}

/// The stage at which a network probe failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Dns,
    Tcp,
    Tls,
    Http,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Dns => "DNS",
            Stage::Tcp => "TCP",
            Stage::Tls => "TLS",
            Stage::Http => "HTTP",
        }
    }
}

/// Outcome of a host-side probe of one allow-listed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub url: String,
    pub ok: bool,
    pub failed_stage: Option<Stage>,
    pub http_status: Option<u16>,
    pub detail: String,
}

/// A process holding a file under the install dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub name: String,
    pub path: String,
}

/// State of the agent's own service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    Running,
    Stopped,
    NotInstalled,
    Unknown,
}

/// Look a parameter up by key (last one wins).
pub fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Parse a byte count: plain integer or with a `KiB`/`MiB`/`GiB`/`KB`/`MB`/`GB` suffix.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}
