//! `molt check new|run`: scaffold a check crate, run checks locally against
//! (simulated) host facts.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use molt_sandbox::{
    CheckContext, FactsSource, HostFacts, Policy, Sandbox, SandboxConfig, Severity,
};

#[derive(clap::Subcommand)]
pub enum CheckCmd {
    /// Scaffold a buildable check crate in ./<name> (cargo build --release --target wasm32-wasip2).
    New(NewArgs),
    /// Run the checks of a signed precheck bundle, or one .wasm component, and print the findings.
    Run(RunArgs),
}

#[derive(clap::Args)]
pub struct NewArgs {
    /// Check name: lower-case letters, digits and `-`.
    pub name: String,
    /// Parent directory of the new crate.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Path of a molt-check-sdk crate to use instead of the copy vendored into
    /// the scaffold (`vendor/`, embedded in this binary).
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// A signed `molt-precheck.*.zip` bundle or a `.wasm` component.
    pub target: PathBuf,
    /// facts.toml: every field given replaces the probed one (simulate low disk, 32-bit, ...).
    #[arg(long)]
    pub facts: Option<PathBuf>,
    /// Trust root to verify a bundle (default: root.json beside the bundle).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Install dir the checks see (default: a fresh temp dir).
    #[arg(long)]
    pub install_dir: Option<PathBuf>,
    /// Extra parameter for every check, `key=value` (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// URL the `net` probe may reach (repeatable).
    #[arg(long = "allow-url")]
    pub allow_urls: Vec<String>,
    /// PEM bundle of a private CA the `net` probe trusts besides the web PKI
    /// (as the agent's `ca_bundle` setting).
    #[arg(long, value_name = "PEM")]
    pub ca_bundle: Option<std::path::PathBuf>,
    /// Compile cache dir (default: $TMPDIR/molt-check-cache).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print the reports as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: CheckCmd) -> Result<ExitCode> {
    match c {
        CheckCmd::New(a) => new(a),
        CheckCmd::Run(a) => run_checks(a),
    }
}

fn new(a: NewArgs) -> Result<ExitCode> {
    let ok = !a.name.is_empty()
        && a.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && a.name.starts_with(|c: char| c.is_ascii_lowercase());
    if !ok {
        bail!(
            "check name `{}`: use lower-case letters, digits and `-`, starting with a letter",
            a.name
        );
    }
    let sdk = match &a.sdk {
        Some(p) => Some(
            std::fs::canonicalize(p)
                .with_context(|| format!("molt-check-sdk not found at {}", p.display()))?,
        ),
        None => None,
    };
    let dir = a.dir.join(&a.name);
    if dir.exists() {
        bail!("{} already exists; not overwriting it", dir.display());
    }
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    // The SDK, the logic crate and the WIT contract, as this binary was built
    // with them: the scaffold builds from its own folder, anywhere.
    let sdk_dep = match &sdk {
        Some(p) => toml_string(&p.display().to_string()),
        None => {
            write_vendored(&dir)?;
            toml_string(VENDORED_SDK)
        }
    };
    let ty: String = a
        .name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
molt-check-sdk = {{ path = {sdk} }}

# Keep the component small (about 50 KB).
[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"

# A standalone crate, not part of an enclosing workspace.
[workspace]
"#,
        name = a.name,
        sdk = sdk_dep
    );
    let lib = format!(
        r#"//! `{name}`: describe what this check verifies.
//! Build: cargo build --release --target wasm32-wasip2
//! Run:   molt check run target/wasm32-wasip2/release/{file}.wasm --facts facts.toml
use molt_check_sdk::{{Check, Finding, Severity, facts, param}};

struct {ty};

impl Check for {ty} {{
    const NAME: &'static str = "{name}";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str = "At least `min_free` bytes free on the install volume.";

    fn run(params: &[(String, String)]) -> Vec<Finding> {{
        let min: u64 = param(params, "min_free")
            .and_then(|s| s.parse().ok())
            .unwrap_or(1 << 30);
        let f = facts();
        if f.install_free_bytes < min {{
            return vec![Finding {{
                severity: Severity::Blocking,
                code: "{name}.insufficient".into(),
                message: format!("{{}} bytes free on the install volume, need {{min}}", f.install_free_bytes),
                remediation: "Free disk space on the install volume.".into(),
            }}];
        }}
        Vec::new()
    }}
}}

molt_check_sdk::check!({ty});
"#,
        name = a.name,
        file = a.name.replace('-', "_"),
    );
    std::fs::write(dir.join("Cargo.toml"), cargo)?;
    std::fs::write(dir.join("src/lib.rs"), lib)?;
    std::fs::write(dir.join(".gitignore"), "/target\n")?;
    println!("Created check crate {}", dir.display());
    println!(
        "  build: (cd {} && cargo build --release --target wasm32-wasip2)",
        dir.display()
    );
    println!(
        "  run:   molt check run {}/target/wasm32-wasip2/release/{}.wasm",
        dir.display(),
        a.name.replace('-', "_")
    );
    Ok(ExitCode::SUCCESS)
}

/// Where the scaffold's copy of the SDK lives, relative to the scaffold.
const VENDORED_SDK: &str = "vendor/guest-checks/sdk";

/// The SDK sources, the logic crate and the WIT files, embedded at build time
/// (build.rs), plus the guests' Cargo.lock.
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/scaffold_files.rs"));
}

/// Write the embedded SDK, logic crate and WIT contract under `<dir>/vendor/`
/// and the guests' Cargo.lock as the scaffold's.
fn write_vendored(dir: &Path) -> Result<()> {
    for (rel, bytes) in embedded::VENDORED_FILES {
        let p = dir.join("vendor").join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&p, bytes).with_context(|| format!("cannot write {}", p.display()))?;
    }
    std::fs::write(dir.join("Cargo.lock"), embedded::GUEST_LOCK)
        .with_context(|| format!("cannot write {}", dir.join("Cargo.lock").display()))?;
    Ok(())
}

/// A TOML basic string (quotes and backslashes escaped).
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn fresh_tmp(label: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("molt-check-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    Ok(d)
}

fn run_checks(a: RunArgs) -> Result<ExitCode> {
    let mut params = BTreeMap::new();
    for p in &a.params {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("--param `{p}` is not KEY=VALUE"))?;
        params.insert(k.to_string(), v.to_string());
    }
    let mut cleanup = Vec::new();
    let install_dir = match &a.install_dir {
        Some(d) => d.clone(),
        None => {
            let d = fresh_tmp("install")?;
            cleanup.push(d.clone());
            d
        }
    };
    let work = fresh_tmp("work")?;
    cleanup.push(work.clone());
    let mut facts = HostFacts::probe(&install_dir, &std::env::temp_dir())?;
    if let Some(f) = &a.facts {
        facts = facts.with_overrides(f)?;
    }
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: a
            .cache_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("molt-check-cache")),
        policy: Policy::default(),
    })?;
    let ctx = CheckContext {
        install_dir,
        scratch_parent: work.clone(),
        facts: FactsSource::Given(facts),
        net_allow: a.allow_urls.clone(),
        ca_bundle: a.ca_bundle.clone(),
        params,
    };
    let is_wasm = a.target.extension().is_some_and(|e| e == "wasm");
    let reports = if is_wasm {
        let dir = a
            .target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = a
            .target
            .file_name()
            .context("no file name")?
            .to_string_lossy()
            .to_string();
        let m = molt_sandbox::testing::manifest(vec![molt_sandbox::testing::component(&name, &[])]);
        sandbox.run_precheck(dir, &m, &ctx)?
    } else {
        let root_path = match &a.root {
            Some(r) => r.clone(),
            None => a
                .target
                .parent()
                .unwrap_or(Path::new("."))
                .join("root.json"),
        };
        let root = molt_bundle::SignedRoot::load(&root_path)
            .with_context(|| format!("trust root {} (pass --root)", root_path.display()))?;
        let v =
            molt_bundle::verify_bundle(&a.target, &root, &molt_bundle::VerifyOptions::default())?;
        let dest = work.join("bundle");
        molt_bundle::extract_scratch(&v, &a.target, &dest, &molt_bundle::Limits::default())?;
        sandbox.run_precheck(&dest, &v.manifest, &ctx)?
    };
    for d in cleanup {
        let _ = std::fs::remove_dir_all(d);
    }
    let blocking = reports.iter().any(|r| r.blocking());
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print_table(&reports);
    }
    Ok(if blocking {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Guest text as the table prints it: the sandbox already escaped it; this
/// keeps the terminal safe should a report ever come from elsewhere.
fn shown(s: &str) -> String {
    molt_bundle::sanitize(s, usize::MAX)
}

fn print_table(reports: &[molt_sandbox::CheckReport]) {
    let w = reports
        .iter()
        .map(|r| shown(&r.check).len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:<w$}  {:<8}  {:<24}  MESSAGE",
        "CHECK", "SEVERITY", "CODE"
    );
    for r in reports {
        if r.findings.is_empty() {
            println!(
                "{:<w$}  {:<8}  {:<24}  passed ({} ms)",
                shown(&r.check),
                "ok",
                "-",
                r.elapsed.as_millis()
            );
        }
        for f in &r.findings {
            println!(
                "{:<w$}  {:<8}  {:<24}  {}",
                shown(&r.check),
                f.severity.as_str(),
                shown(&f.code),
                shown(&f.message)
            );
            if !f.remediation.is_empty() && f.severity != Severity::Info {
                println!(
                    "{:<w$}  {:<8}  {:<24}  -> {}",
                    "",
                    "",
                    "",
                    shown(&f.remediation)
                );
            }
        }
    }
    let blocking: usize = reports.iter().filter(|r| r.blocking()).count();
    println!(
        "{} checks, {} with blocking findings: {}",
        reports.len(),
        blocking,
        if blocking == 0 {
            "Pre-upgrade validation tests successful"
        } else {
            "upgrade blocked"
        }
    );
}
