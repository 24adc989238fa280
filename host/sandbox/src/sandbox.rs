//! The engine: compile cache, capability granting, limits, running checks and
//! the selector, and turning guest misbehaviour into blocking findings.
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Component as PathComponent, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use molt_bundle::text::{
    MAX_CODE, MAX_LABEL, MAX_LOG_LINE, MAX_MESSAGE, MAX_REMEDIATION, sanitize,
};
use molt_bundle::{Component as ManifestComponent, Manifest};
use serde::{Deserialize, Serialize};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{precheck as pb, selector as sb};
use crate::error::SandboxError;
use crate::facts::{HostFacts, ServiceState};
use crate::plan::{Action, Plan, RuntimeDecision, SelectorInput};
use crate::policy::{Capability, Grant, Limits, Policy, Preopen, url_allowed};

/// The WIT package this host implements.
pub const CONTRACT: &str = "molt:check@1.0.0";
/// Majors of `molt:check` this host knows (it supports every minor of each).
pub const KNOWN_MAJORS: &[u64] = &[1];
/// Epoch tick: the granularity of deadlines.
const TICK: Duration = Duration::from_millis(10);
const MAX_FINDINGS: usize = 256;
const MAX_LOG_LINES: usize = 200;
/// Elements a guest's tables may hold in all.
const TABLE_ELEMENTS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Blocking,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Blocking => "blocking",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// One finding, as the agent reports it to the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    pub code: String,
    pub message: String,
    pub remediation: String,
}

/// The outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The check's name (from `describe`, else the component's file name).
    pub check: String,
    pub version: String,
    pub description: String,
    /// Path of the component inside the bundle.
    pub component: String,
    pub findings: Vec<Finding>,
    pub elapsed: Duration,
}

impl CheckReport {
    pub fn blocking(&self) -> bool {
        self.findings
            .iter()
            .any(|f| f.severity == Severity::Blocking)
    }
}

/// Where the facts come from.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // built once per run; boxing would only obscure the API
pub enum FactsSource {
    /// Probe this host (`HostFacts::probe(install_dir, scratch_parent)`).
    Probe,
    /// Given (simulated, or probed and overridden from a facts.toml).
    Given(HostFacts),
}

/// What one `run_precheck` runs against.
#[derive(Debug, Clone)]
pub struct CheckContext {
    pub install_dir: PathBuf,
    /// Parent of the fresh per-check scratch dirs (e.g. `<home>/work`).
    pub scratch_parent: PathBuf,
    pub facts: FactsSource,
    /// URLs allowed for this run in addition to the policy's (the download URL).
    pub net_allow: Vec<String>,
    /// The operator's private CA bundle (`ca_bundle`), trusted by `net.probe`
    /// besides the web PKI, as the agent's own downloads trust it.
    pub ca_bundle: Option<PathBuf>,
    /// Parameters added to (and overriding) every check's manifest params.
    pub params: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub cache_dir: PathBuf,
    pub policy: Policy,
}

/// Counters of the compile cache (a warm run has `compiled == 0`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub compiled: usize,
    pub loaded: usize,
}

/// The wasm sandbox. Cheap to share (`&self` everywhere); one per process.
pub struct Sandbox {
    engine: Engine,
    policy: Policy,
    cache_dir: PathBuf,
    fingerprint: String,
    compiled: AtomicUsize,
    loaded: AtomicUsize,
    ticker_stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

/// The WASI context every guest starts from: no sockets, no name lookup, no
/// env, args or stdin; stderr captured into `stderr`. Guests run synchronously
/// on their own threads, so file operations are done on that thread rather than
/// bounced through a runtime's blocking pool.
fn base_wasi(stderr: &MemoryOutputPipe) -> wasmtime_wasi::WasiCtxBuilder {
    let mut b = WasiCtx::builder();
    b.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .allow_blocking_current_thread(true)
        .stderr(stderr.clone());
    b
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            // Wake it from its tick sleep: joining must not cost up to a tick.
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Per-store state.
struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limiter,
    facts: Arc<HostFacts>,
    net: Arc<NetGrant>,
    check: String,
    log_lines: usize,
}

/// What `net.probe` may reach in one run, and which TLS servers it trusts.
struct NetGrant {
    allow: Vec<String>,
    /// `None` when nothing is allowed (the selector): never used.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl pb::molt::check::types::Host for HostState {}
impl sb::molt::check::selection::Host for HostState {}

impl pb::molt::check::facts::Host for HostState {
    fn get(&mut self) -> pb::molt::check::facts::HostFacts {
        let f = &self.facts;
        pb::molt::check::facts::HostFacts {
            os: f.os.clone(),
            arch: f.arch.clone(),
            is_64bit: f.is_64bit,
            libc_version: f.libc_version.clone(),
            install_free_bytes: f.install_free_bytes,
            temp_free_bytes: f.temp_free_bytes,
            service_account: f.service_account.clone(),
            privileged: f.privileged,
            runtime_version: f.runtime_version.clone(),
            agent_pid: f.agent_pid,
        }
    }
}

impl pb::molt::check::net::Host for HostState {
    fn allowed(&mut self) -> Vec<String> {
        self.net.allow.clone()
    }
    fn probe(&mut self, url: String) -> Result<pb::molt::check::net::ProbeResult, String> {
        use pb::molt::check::net::{ProbeResult, Stage as W};
        if !url_allowed(&self.net.allow, &url) {
            tracing::warn!(check = %self.check, %url, "Pre Upgrade Check: probe refused (not on the allow-list)");
            return Err(format!("URL {url} is not on the host's network allow-list"));
        }
        let stage = |s: &str| match s {
            "dns" => W::Dns,
            "tcp" => W::Tcp,
            "tls" => W::Tls,
            _ => W::Http,
        };
        if let Some(o) = self.facts.net.get(&url) {
            return Ok(ProbeResult {
                url,
                ok: o.ok,
                failed_stage: o.failed_stage.as_deref().map(stage),
                http_status: o.http_status,
                detail: o.detail.clone(),
            });
        }
        let Some(tls) = &self.net.tls else {
            return Err(format!(
                "URL {url}: no network is granted to this component"
            ));
        };
        let p = crate::net::probe(&url, tls);
        tracing::info!(check = %self.check, %url, ok = p.ok, detail = %p.detail, "Pre Upgrade Check: probed URL");
        use molt_check_logic::Stage as L;
        Ok(ProbeResult {
            url: p.url,
            ok: p.ok,
            failed_stage: p.failed_stage.map(|s| match s {
                L::Dns => W::Dns,
                L::Tcp => W::Tcp,
                L::Tls => W::Tls,
                L::Http => W::Http,
            }),
            http_status: p.http_status,
            detail: p.detail,
        })
    }
}

impl pb::molt::check::services::Host for HostState {
    fn status(&mut self) -> pb::molt::check::services::ServiceState {
        use pb::molt::check::services::ServiceState as W;
        match self.facts.service_state {
            ServiceState::Running => W::Running,
            ServiceState::Stopped => W::Stopped,
            ServiceState::NotInstalled => W::NotInstalled,
            ServiceState::Unknown => W::Unknown,
        }
    }
    fn file_holders(&mut self) -> Vec<pb::molt::check::services::ProcessInfo> {
        self.facts
            .file_holders
            .iter()
            .map(|h| pb::molt::check::services::ProcessInfo {
                pid: h.pid,
                name: h.name.clone(),
                path: h.path.clone(),
            })
            .collect()
    }
    fn sharing_install_dir(&mut self) -> Vec<String> {
        self.facts.others_sharing()
    }
}

impl pb::molt::check::log::Host for HostState {
    fn log(&mut self, level: pb::molt::check::log::Level, message: String) {
        use pb::molt::check::log::Level;
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES {
            return;
        }
        let msg = sanitize(&message, MAX_LOG_LINE);
        let check = &self.check;
        match level {
            Level::Trace | Level::Debug => tracing::debug!(%check, "guest: {msg}"),
            Level::Info => tracing::info!(%check, "guest: {msg}"),
            Level::Warn => tracing::warn!(%check, "guest: {msg}"),
            Level::Error => tracing::error!(%check, "guest: {msg}"),
        }
    }
}

/// What the store's limiter refused, read after a guest fails: out of memory is
/// known from here, never from the guest's own (forgeable) output.
#[derive(Debug, Default)]
struct Refusals {
    /// Largest memory size in bytes a `memory.grow` asked for and was refused (0: none).
    memory: AtomicU64,
    /// Largest table size in elements a `table.grow` asked for and was refused (0: none).
    table: AtomicU64,
}

impl Refusals {
    fn record(slot: &AtomicU64, desired: usize) {
        slot.fetch_max(
            u64::try_from(desired).unwrap_or(u64::MAX).max(1),
            Ordering::Relaxed,
        );
    }
}

/// The store's limits, recording every refusal in [`Refusals`].
struct Limiter {
    inner: StoreLimits,
    refused: Arc<Refusals>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if !ok {
            Refusals::record(&self.refused.memory, desired);
        }
        Ok(ok)
    }
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Refusals::record(&self.refused.memory, 1);
        self.inner.memory_grow_failed(error)
    }
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.table_growing(current, desired, maximum)?;
        if !ok {
            Refusals::record(&self.refused.table, desired);
        }
        Ok(ok)
    }
    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Refusals::record(&self.refused.table, 1);
        self.inner.table_grow_failed(error)
    }
    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Make every text of a report safe for a log line, a terminal or a page (see
/// [`molt_bundle::sanitize`]). Applied once, to each report as it leaves the
/// sandbox, whether the text came from the guest or from the host's own findings
/// (which quote guest output such as a panic message).
fn sanitize_report(r: &mut CheckReport) {
    r.check = sanitize(&r.check, MAX_LABEL);
    r.version = sanitize(&r.version, MAX_LABEL);
    r.description = sanitize(&r.description, MAX_MESSAGE);
    for f in &mut r.findings {
        f.code = sanitize(&f.code, MAX_CODE);
        f.message = sanitize(&f.message, MAX_MESSAGE);
        f.remediation = sanitize(&f.remediation, MAX_REMEDIATION);
    }
}

/// A parsed world name such as `molt:check/precheck@1.0.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldRef {
    pub package: String,
    pub world: String,
    pub major: u64,
    pub minor: u64,
}

/// Parse `molt:check/<world>@<major>.<minor>.<patch>`.
pub fn parse_world(s: &str) -> Result<WorldRef, String> {
    let bad = |why: &str| format!("world `{s}`: {why}");
    let (path, ver) = s.split_once('@').ok_or_else(|| bad("no @version"))?;
    let (package, world) = path
        .split_once('/')
        .ok_or_else(|| bad("expected <package>/<world>"))?;
    let mut v = ver.split('.').map(|p| p.parse::<u64>());
    let (Some(Ok(major)), Some(Ok(minor))) = (v.next(), v.next()) else {
        return Err(bad("version is not <major>.<minor>.<patch>"));
    };
    Ok(WorldRef {
        package: package.to_string(),
        world: world.to_string(),
        major,
        minor,
    })
}

/// Refuse a world this host cannot run.
pub fn check_world(s: &str, expected: &str) -> Result<WorldRef, String> {
    let w = parse_world(s)?;
    if w.package != "molt:check" {
        return Err(format!("world `{s}` is not from the molt:check package"));
    }
    if !KNOWN_MAJORS.contains(&w.major) {
        return Err(format!(
            "component is built for molt:check@{}.x, but this host supports molt:check@{}.x only ({CONTRACT}); upgrade the agent first",
            w.major,
            KNOWN_MAJORS
                .iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(".x, @")
        ));
    }
    if w.world != expected {
        return Err(format!("world `{s}` is not a `{expected}` world"));
    }
    Ok(w)
}

fn finding(severity: Severity, code: &str, message: String, remediation: &str) -> Finding {
    Finding {
        severity,
        code: code.into(),
        message,
        remediation: remediation.into(),
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

/// A path inside the bundle: relative, no `..`.
fn inside(dir: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    if p.components()
        .all(|c| matches!(c, PathComponent::Normal(_)))
    {
        Some(dir.join(p))
    } else {
        None
    }
}

fn code_ok(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 64
        && c.chars()
            .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == '.' || x == '-')
        && !c.starts_with(['.', '-'])
}

/// A component ready to run, or the report saying why it will not.
struct Prepared {
    component: Component,
    grant: Grant,
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes a scratch dir when the run ends, however it ends.
struct ScratchGuard(Option<PathBuf>);
impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.0
            && let Err(e) = std::fs::remove_dir_all(p)
        {
            tracing::warn!(dir = %p.display(), error = %e, "Pre Upgrade Check: could not remove scratch dir");
        }
    }
}

impl Sandbox {
    /// An engine with fuel and epoch interruption, a compile cache in `cache_dir`,
    /// and a ticker thread driving deadlines.
    pub fn new(cfg: SandboxConfig) -> Result<Sandbox, SandboxError> {
        std::fs::create_dir_all(&cfg.cache_dir)
            .map_err(|e| SandboxError::io("create cache dir", &cfg.cache_dir, e))?;
        let mut c = Config::new();
        c.consume_fuel(true);
        c.epoch_interruption(true);
        c.parallel_compilation(true);
        let engine = Engine::new(&c).map_err(|e| SandboxError::Engine(e.to_string()))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let fingerprint = format!("{:016x}", h.finish());
        let stop = Arc::new(AtomicBool::new(false));
        let (e2, s2) = (engine.clone(), stop.clone());
        let ticker = std::thread::Builder::new()
            .name("molt-sandbox-epoch".into())
            .spawn(move || {
                // park_timeout, not sleep, so Drop can wake it at once. A
                // spurious or early wake-up only makes one tick shorter, which
                // deadlines (whole ticks, rounded up) tolerate.
                while !s2.load(Ordering::Relaxed) {
                    std::thread::park_timeout(TICK);
                    e2.increment_epoch();
                }
            })
            .map_err(|e| SandboxError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Sandbox {
            engine,
            policy: cfg.policy,
            cache_dir: cfg.cache_dir,
            fingerprint,
            compiled: AtomicUsize::new(0),
            loaded: AtomicUsize::new(0),
            ticker_stop: stop,
            ticker: Some(ticker),
        })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
        }
    }

    /// Load a compiled component from the cache, or compile and store it. The
    /// key is the SHA-256 of the (signed) wasm plus the engine fingerprint
    /// (wasmtime version and config); only files this cache wrote are read.
    fn load_or_compile(&self, wasm: &[u8], sha: &str) -> Result<Component, String> {
        let path = self
            .cache_dir
            .join(format!("{sha}-{}.cwasm", self.fingerprint));
        if path.is_file() {
            // SAFETY: the cache dir is the agent's own state and the file name
            // carries the digest of the verified wasm; wasmtime also checks the
            // engine compatibility header and refuses a mismatch.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(c) => {
                    self.loaded.fetch_add(1, Ordering::Relaxed);
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "Compile cache entry unusable; recompiling");
                }
            }
        }
        let c =
            Component::new(&self.engine, wasm).map_err(|e| format!("does not compile: {e:#}"))?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        match c.serialize() {
            Ok(bytes) => {
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                if let Err(e) =
                    std::fs::write(&tmp, &bytes).and_then(|_| std::fs::rename(&tmp, &path))
                {
                    let _ = std::fs::remove_file(&tmp);
                    tracing::warn!(file = %path.display(), error = %e, "Cannot write compile cache entry");
                }
            }
            Err(e) => tracing::warn!(error = %e, "Cannot serialize compiled component"),
        }
        Ok(c)
    }

    /// Everything before running: grant, world, digest, compile, imports.
    fn prepare(
        &self,
        bundle_dir: &Path,
        manifest: &Manifest,
        c: &ManifestComponent,
        world: &str,
    ) -> Result<Prepared, Finding> {
        let denied = |why: String| {
            finding(
                Severity::Blocking,
                "check.denied",
                format!("Check {} was refused: {why}", c.path),
                "Ship the check with a manifest that requests only what the host policy allows.",
            )
        };
        let grant = self.policy.grant(c).map_err(denied)?;
        check_world(&c.world, world).map_err(|why| {
            finding(
                Severity::Blocking,
                "check.incompatible",
                format!("Check {} cannot run: {why}", c.path),
                "Upgrade the agent, or ship a check built for this host's contract.",
            )
        })?;
        let invalid = |why: String| {
            finding(
                Severity::Blocking,
                "check.invalid",
                format!("Check {} is invalid: {why}", c.path),
                "Rebuild and re-sign the check bundle.",
            )
        };
        let path =
            inside(bundle_dir, &c.path).ok_or_else(|| invalid("path leaves the bundle".into()))?;
        let wasm = std::fs::read(&path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let sha = sha256_hex(&wasm);
        if let Some(entry) = manifest.entry(&c.path)
            && entry.sha256 != sha
        {
            return Err(invalid(format!(
                "SHA-256 {sha} differs from the signed manifest's {}",
                entry.sha256
            )));
        }
        let component = self.load_or_compile(&wasm, &sha).map_err(invalid)?;
        // The component's real imports must be within what its manifest requested.
        for (name, _) in component.component_type().imports(&self.engine) {
            if let Some(rest) = name.strip_prefix("molt:check/") {
                let (iface, ver) = rest.split_once('@').unwrap_or((rest, ""));
                let major = ver.split('.').next().and_then(|m| m.parse::<u64>().ok());
                if !major.is_some_and(|m| KNOWN_MAJORS.contains(&m)) {
                    return Err(finding(
                        Severity::Blocking,
                        "check.incompatible",
                        format!(
                            "Check {} imports {name}, but this host implements {CONTRACT}",
                            c.path
                        ),
                        "Upgrade the agent, or ship a check built for this host's contract.",
                    ));
                }
                if matches!(iface, "types" | "selection") {
                    continue;
                }
                let cap: Capability = iface.parse().map_err(|e: String| denied(e))?;
                if !grant.capabilities.contains(&cap) {
                    return Err(denied(format!(
                        "it imports `{cap}` but its manifest does not request that capability"
                    )));
                }
            } else if !name.starts_with("wasi:") {
                return Err(denied(format!(
                    "it imports `{name}`, which this host does not provide"
                )));
            }
        }
        Ok(Prepared { component, grant })
    }

    fn linker(&self, grant: &Grant, selector: bool) -> Result<Linker<HostState>, String> {
        let mut l = Linker::<HostState>::new(&self.engine);
        let e = |e: wasmtime::Error| e.to_string();
        wasmtime_wasi::p2::add_to_linker_sync(&mut l).map_err(e)?;
        if selector {
            sb::molt::check::selection::add_to_linker::<_, HasSelf<_>>(&mut l, |s| s).map_err(e)?;
        } else {
            pb::molt::check::types::add_to_linker::<_, HasSelf<_>>(&mut l, |s| s).map_err(e)?;
        }
        for cap in &grant.capabilities {
            match cap {
                Capability::Facts => {
                    pb::molt::check::facts::add_to_linker::<_, HasSelf<_>>(&mut l, |s| s)
                }
                Capability::Net => {
                    pb::molt::check::net::add_to_linker::<_, HasSelf<_>>(&mut l, |s| s)
                }
                Capability::Services => {
                    pb::molt::check::services::add_to_linker::<_, HasSelf<_>>(&mut l, |s| s)
                }
                Capability::Log => {
                    pb::molt::check::log::add_to_linker::<_, HasSelf<_>>(&mut l, |s| s)
                }
            }
            .map_err(e)?;
        }
        Ok(l)
    }

    /// A store with the grant's limits; `stderr` captures guest panics.
    fn store(
        &self,
        grant: &Grant,
        wasi: WasiCtx,
        facts: Arc<HostFacts>,
        net: Arc<NetGrant>,
        check: &str,
        refused: Arc<Refusals>,
    ) -> Result<Store<HostState>, String> {
        let inner = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(grant.limits.memory_bytes).unwrap_or(usize::MAX))
            .memories(4)
            .instances(64)
            .tables(16)
            .table_elements(TABLE_ELEMENTS)
            .build();
        let mut store = Store::new(
            &self.engine,
            HostState {
                wasi,
                table: ResourceTable::new(),
                limits: Limiter { inner, refused },
                facts,
                net,
                check: check.to_string(),
                log_lines: 0,
            },
        );
        store.limiter(|s| &mut s.limits);
        store
            .set_fuel(grant.limits.fuel)
            .map_err(|e| e.to_string())?;
        let ticks = grant
            .limits
            .deadline
            .as_millis()
            .div_ceil(TICK.as_millis())
            .max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        Ok(store)
    }

    /// Run every precheck component of a verified, extracted bundle, in
    /// parallel. Guest misbehaviour becomes a blocking finding in that check's
    /// report; `Err` only for host-side problems (facts cannot be probed).
    pub fn run_precheck(
        &self,
        bundle_dir: &Path,
        manifest: &Manifest,
        ctx: &CheckContext,
    ) -> Result<Vec<CheckReport>, SandboxError> {
        let facts = Arc::new(match &ctx.facts {
            FactsSource::Probe => HostFacts::probe(&ctx.install_dir, &ctx.scratch_parent)?,
            FactsSource::Given(f) => f.clone(),
        });
        let mut allow = self.policy.net_allow.clone();
        allow.extend(ctx.net_allow.iter().cloned());
        let allow = Arc::new(NetGrant {
            allow,
            tls: Some(molt_layout::tls::client_config(ctx.ca_bundle.as_deref())?),
        });
        let comps = &manifest.components;
        tracing::info!(bundle = %manifest.buildstamp, checks = comps.len(), "Performing pre-upgrade validation tests");
        // Compile (or load) in parallel, then run in parallel.
        let prepared: Vec<Result<Prepared, Finding>> = std::thread::scope(|s| {
            let hs: Vec<_> = comps
                .iter()
                .map(|c| s.spawn(move || self.prepare(bundle_dir, manifest, c, "precheck")))
                .collect();
            hs.into_iter()
                .zip(comps)
                .map(|(h, c)| {
                    h.join().unwrap_or_else(|_| {
                        Err(finding(
                            Severity::Blocking,
                            "check.crashed",
                            format!("Check {}: the host panicked while preparing it", c.path),
                            "Report this as a Molt bug.",
                        ))
                    })
                })
                .collect()
        });
        let slots: Vec<Mutex<Option<CheckReport>>> =
            comps.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let workers = self.policy.concurrency.clamp(1, comps.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= comps.len() {
                            break;
                        }
                        let c = &comps[i];
                        let started = Instant::now();
                        let mut report = match &prepared[i] {
                            Err(f) => CheckReport {
                                check: stem(&c.path),
                                version: String::new(),
                                description: String::new(),
                                component: c.path.clone(),
                                findings: vec![f.clone()],
                                elapsed: started.elapsed(),
                            },
                            Ok(p) => self.run_one(p, c, ctx, facts.clone(), allow.clone()),
                        };
                        sanitize_report(&mut report);
                        for f in &report.findings {
                            tracing::info!(check = %report.check, severity = f.severity.as_str(), code = %f.code, "Pre Upgrade Check finding: {}", f.message);
                        }
                        if let Ok(mut slot) = slots[i].lock() {
                            *slot = Some(report);
                        }
                    }
                });
            }
        });
        let reports: Vec<CheckReport> = slots
            .into_iter()
            .zip(comps)
            .map(|(m, c)| {
                m.into_inner()
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| CheckReport {
                        check: stem(&c.path),
                        version: String::new(),
                        description: String::new(),
                        component: c.path.clone(),
                        findings: vec![finding(
                            Severity::Blocking,
                            "check.crashed",
                            format!("Check {}: the host panicked while running it", c.path),
                            "Report this as a Molt bug.",
                        )],
                        elapsed: Duration::ZERO,
                    })
            })
            .collect();
        let blocking = reports.iter().filter(|r| r.blocking()).count();
        // The caller (the agent's stage, `molt check run`) says what happens next.
        tracing::info!(checks = reports.len(), blocking, "Checks finished");
        Ok(reports)
    }

    fn run_one(
        &self,
        p: &Prepared,
        c: &ManifestComponent,
        ctx: &CheckContext,
        facts: Arc<HostFacts>,
        allow: Arc<NetGrant>,
    ) -> CheckReport {
        let started = Instant::now();
        let mut report = CheckReport {
            check: stem(&c.path),
            version: String::new(),
            description: String::new(),
            component: c.path.clone(),
            findings: Vec::new(),
            elapsed: Duration::ZERO,
        };
        let crashed = |why: String| {
            finding(
                Severity::Blocking,
                "check.crashed",
                why,
                "Report this to the check's author; the upgrade waits until it passes.",
            )
        };
        let stderr = MemoryOutputPipe::new(16 * 1024);
        let mut b = base_wasi(&stderr);
        let mut scratch = ScratchGuard(None);
        let mut staging_created = None;
        let mut setup = || -> Result<(), String> {
            if p.grant.preopens.contains(&Preopen::Scratch) {
                let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
                let dir = ctx
                    .scratch_parent
                    .join(format!("molt-check-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create scratch dir {}: {e}", dir.display()))?;
                scratch.0 = Some(dir.clone());
                b.preopened_dir(&dir, "/scratch", FsPerms::ReadWrite)
                    .map_err(|e| e.to_string())?;
            }
            if p.grant.preopens.contains(&Preopen::Install) {
                b.preopened_dir(&ctx.install_dir, "/install", FsPerms::ReadOnly)
                    .map_err(|e| {
                        format!("cannot open install dir {}: {e}", ctx.install_dir.display())
                    })?;
            }
            if p.grant.preopens.contains(&Preopen::Staging) {
                let dir = ctx.install_dir.join("work").join("precheck-staging");
                match std::fs::create_dir_all(&dir) {
                    Ok(()) => {
                        b.preopened_dir(&dir, "/staging", FsPerms::ReadWrite)
                            .map_err(|e| e.to_string())?;
                        staging_created = Some(dir);
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "Pre Upgrade Check: Unable to create folder for upgrade check files")
                    }
                }
            }
            Ok(())
        };
        if let Err(why) = setup() {
            report.findings.push(finding(
                Severity::Blocking,
                "check.setup",
                format!("Check {}: {why}", report.check),
                "Fix the agent's work dir permissions.",
            ));
            report.elapsed = started.elapsed();
            return report;
        }
        let wasi = b.build();
        let mut params: BTreeMap<String, String> = c.params.clone();
        params.extend(ctx.params.iter().map(|(k, v)| (k.clone(), v.clone())));
        let params: Vec<(String, String)> = params.into_iter().collect();
        let refused = Arc::new(Refusals::default());
        let outcome = (|| -> Result<(pb::CheckInfo, Vec<pb::Finding>), wasmtime::Error> {
            let linker = self.linker(&p.grant, false).map_err(wasmtime::Error::msg)?;
            let mut store = self
                .store(&p.grant, wasi, facts, allow, &report.check, refused.clone())
                .map_err(wasmtime::Error::msg)?;
            let pre = pb::PrecheckPre::new(linker.instantiate_pre(&p.component)?)?;
            let inst = pre.instantiate(&mut store)?;
            let info = inst.call_describe(&mut store)?;
            let findings = inst.call_run(&mut store, &params)?;
            Ok((info, findings))
        })();
        if let Some(dir) = staging_created {
            // Only an empty dir is removed: leftovers stay for the next run to report.
            let _ = std::fs::remove_dir(dir);
        }
        match outcome {
            Ok((info, fs)) => {
                if info.name.is_empty() || info.name.len() > 64 || info.version.len() > 64 {
                    report.findings.push(nonsense(
                        &report.check,
                        "describe() returned an empty or over-long name or version",
                    ));
                } else {
                    report.check = info.name;
                    report.version = info.version;
                    report.description = info.description;
                }
                if fs.len() > MAX_FINDINGS {
                    report.findings.push(nonsense(
                        &report.check,
                        &format!("returned {} findings (at most {MAX_FINDINGS})", fs.len()),
                    ));
                } else if let Some(bad) = fs.iter().find(|f| !code_ok(&f.code)) {
                    // Over-long texts are cut (visibly) when the report leaves the
                    // sandbox; a code is an identifier, so a bad one is refused.
                    report.findings.push(nonsense(
                        &report.check,
                        &format!(
                            "returned a finding with code `{}`: codes are 1-{MAX_CODE} chars of a-z 0-9 . -",
                            sanitize(&bad.code, MAX_CODE)
                        ),
                    ));
                } else {
                    report.findings = fs
                        .into_iter()
                        .map(|f| Finding {
                            severity: match f.severity {
                                pb::molt::check::types::Severity::Blocking => Severity::Blocking,
                                pb::molt::check::types::Severity::Warning => Severity::Warning,
                                pb::molt::check::types::Severity::Info => Severity::Info,
                            },
                            code: f.code,
                            message: f.message,
                            remediation: f.remediation,
                        })
                        .collect();
                }
            }
            Err(e) => {
                let err_text = stderr_text(&stderr);
                report.findings.push(classify(
                    &e,
                    &err_text,
                    &refused,
                    &report.check,
                    &p.grant.limits,
                    crashed,
                ));
            }
        }
        report.elapsed = started.elapsed();
        report
    }

    /// Run the selector component at `component_path` (no manifest: default
    /// limits, `log` only, no preopens).
    pub fn select_version(
        &self,
        component_path: &Path,
        input: &SelectorInput,
    ) -> Result<Plan, SandboxError> {
        let grant = Grant {
            capabilities: [Capability::Log].into_iter().collect(),
            preopens: Default::default(),
            limits: self.policy.defaults,
        };
        self.select_with(component_path, &grant, input)
    }

    /// Run the selector of a verified, extracted selector bundle (the first
    /// `selector` component of its manifest, with its grant).
    pub fn select_version_in_bundle(
        &self,
        bundle_dir: &Path,
        manifest: &Manifest,
        input: &SelectorInput,
    ) -> Result<Plan, SandboxError> {
        let c = manifest
            .components
            .iter()
            .find(|c| parse_world(&c.world).is_ok_and(|w| w.world == "selector"))
            .ok_or_else(|| SandboxError::Component {
                component: manifest.buildstamp.clone(),
                reason: "bundle has no selector component".into(),
            })?;
        check_world(&c.world, "selector").map_err(|reason| SandboxError::Component {
            component: c.path.clone(),
            reason,
        })?;
        let grant = self
            .policy
            .grant(c)
            .map_err(|reason| SandboxError::Component {
                component: c.path.clone(),
                reason,
            })?;
        let path = inside(bundle_dir, &c.path).ok_or_else(|| SandboxError::Component {
            component: c.path.clone(),
            reason: "path leaves the bundle".into(),
        })?;
        self.select_with(&path, &grant, input)
    }

    fn select_with(
        &self,
        path: &Path,
        grant: &Grant,
        input: &SelectorInput,
    ) -> Result<Plan, SandboxError> {
        let name = path.display().to_string();
        let err = |reason: String| SandboxError::Selector {
            component: name.clone(),
            reason,
        };
        let wasm = std::fs::read(path).map_err(|e| SandboxError::io("read", path, e))?;
        let comp = self
            .load_or_compile(&wasm, &sha256_hex(&wasm))
            .map_err(err)?;
        // The platform the selector decides for is the host's, as the caller
        // probed it (or a simulation gave it): never made-up defaults.
        let facts = Arc::new(HostFacts {
            os: input.os.clone(),
            arch: input.arch.clone(),
            is_64bit: input.is_64bit,
            libc_version: input.libc_version.clone(),
            ..HostFacts::healthy()
        });
        // Own thread: sync WASI must not run on a tokio worker (it would block_on).
        let res = std::thread::scope(|s| {
            s.spawn(|| -> Result<Plan, String> {
                let linker = self.linker(grant, true)?;
                let stderr = MemoryOutputPipe::new(16 * 1024);
                let mut b = base_wasi(&stderr);
                let refused = Arc::new(Refusals::default());
                let mut store = self.store(grant, b.build(), facts, Arc::new(NetGrant { allow: Vec::new(), tls: None }), "version-select", refused.clone())?;
                let mut run = || -> Result<Result<sb::molt::check::selection::Plan, String>, wasmtime::Error> {
                    let pre = sb::SelectorPre::new(linker.instantiate_pre(&comp)?)?;
                    let inst = pre.instantiate(&mut store)?;
                    inst.call_select(&mut store, &to_wit_input(input))
                };
                match run() {
                    Ok(Ok(p)) => Ok(from_wit_plan(p)),
                    Ok(Err(e)) => Err(format!("refused the input: {}", sanitize(&e, MAX_MESSAGE))),
                    Err(e) => {
                        let f = classify(&e, &stderr_text(&stderr), &refused, "version-select", &grant.limits, |m| finding(Severity::Blocking, "check.crashed", m, ""));
                        Err(format!("{}: {}", f.code, sanitize(&f.message, MAX_MESSAGE)))
                    }
                }
            })
            .join()
            .unwrap_or_else(|_| Err("host thread panicked".into()))
        });
        let plan = res.map_err(err)?;
        for l in plan.current_packages_lines() {
            tracing::info!("{l}");
        }
        Ok(plan)
    }
}

fn to_wit_input(i: &SelectorInput) -> sb::molt::check::selection::SelectorInput {
    sb::molt::check::selection::SelectorInput {
        installed: i.installed.clone(),
        assigned_version: i.assigned_version.clone(),
        assigned: i.assigned.clone(),
        downloaded: i.downloaded.clone(),
        pinned: i.pinned.clone(),
        os: i.os.clone(),
        arch: i.arch.clone(),
        is_64bit: i.is_64bit,
        libc_version: i.libc_version.clone(),
    }
}

/// The selector's plan as host types, every text sanitized: package names
/// are only ever compared with the assignment's, so escaping one cannot make
/// it match; reasons and notes are logged and reported.
fn from_wit_plan(p: sb::molt::check::selection::Plan) -> Plan {
    use sb::molt::check::selection as w;
    let names =
        |v: Vec<String>| -> Vec<String> { v.iter().map(|n| sanitize(n, MAX_LABEL)).collect() };
    Plan {
        action: match p.action {
            w::Action::Upgrade => Action::Upgrade,
            w::Action::Downgrade => Action::Downgrade,
            w::Action::None => Action::None,
        },
        target_version: sanitize(&p.target_version, MAX_LABEL),
        installed: names(p.installed),
        assigned: names(p.assigned),
        missing: names(p.missing),
        downloaded: names(p.downloaded),
        crosses_family: p.crosses_family,
        runtime: match p.runtime {
            w::RuntimeDecision::Upgrade => RuntimeDecision::Upgrade,
            w::RuntimeDecision::Skip => RuntimeDecision::Skip,
            w::RuntimeDecision::Current => RuntimeDecision::Current,
        },
        runtime_reason: sanitize(&p.runtime_reason, MAX_MESSAGE),
        notes: p.notes.iter().map(|n| sanitize(n, MAX_MESSAGE)).collect(),
    }
}

fn stem(path: &str) -> String {
    Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().replace('_', "-"))
        .unwrap_or_else(|| path.to_string())
}

/// The guest's stderr (bounded by its pipe), for quoting a panic message.
fn stderr_text(p: &MemoryOutputPipe) -> String {
    String::from_utf8_lossy(&p.contents()).into_owned()
}

fn nonsense(check: &str, why: &str) -> Finding {
    finding(
        Severity::Blocking,
        "check.nonsense",
        format!("Check {check} {why}"),
        "Report this to the check's author; the upgrade waits until it passes.",
    )
}

/// Turn a guest failure into a finding naming the check. Out of memory is
/// recognised from what the store's limiter refused, never from the guest's
/// output; `stderr` is only quoted (for a panic message).
fn classify(
    e: &wasmtime::Error,
    stderr: &str,
    refused: &Refusals,
    check: &str,
    limits: &Limits,
    crashed: impl Fn(String) -> Finding,
) -> Finding {
    let text = format!("{e:#}");
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => {
            return finding(
                Severity::Blocking,
                "check.timeout",
                format!(
                    "Check {check} did not finish within its deadline of {} ms and was stopped",
                    limits.deadline.as_millis()
                ),
                "Report this to the check's author; the upgrade waits until it passes.",
            );
        }
        Some(Trap::OutOfFuel) => {
            return finding(
                Severity::Blocking,
                "check.fuel-exhausted",
                format!(
                    "Check {check} used up its budget of {} fuel and was stopped",
                    limits.fuel
                ),
                "Report this to the check's author; the upgrade waits until it passes.",
            );
        }
        _ => {}
    }
    let memory = refused.memory.load(Ordering::Relaxed);
    if memory > 0 {
        let asked = if memory > 1 {
            format!(" (it asked for {memory} bytes)")
        } else {
            String::new()
        };
        return finding(
            Severity::Blocking,
            "check.out-of-memory",
            format!(
                "Check {check} needed more than its memory cap of {} bytes{asked} and was stopped",
                limits.memory_bytes
            ),
            "Report this to the check's author; the upgrade waits until it passes.",
        );
    }
    let table = refused.table.load(Ordering::Relaxed);
    if table > 0 {
        return finding(
            Severity::Blocking,
            "check.out-of-memory",
            format!(
                "Check {check} needed a table larger than its cap of {TABLE_ELEMENTS} elements and was stopped"
            ),
            "Report this to the check's author; the upgrade waits until it passes.",
        );
    }
    if text.contains("import")
        && (text.contains("not defined") || text.contains("has the wrong type"))
    {
        return finding(
            Severity::Blocking,
            "check.denied",
            format!("Check {check} could not be linked: {text}"),
            "Ship the check with a manifest that requests only what the host policy allows.",
        );
    }
    // Rust prints "thread '..' panicked at <file>:" and the message on the next line.
    let lines: Vec<&str> = stderr.lines().collect();
    let panic_line = lines
        .iter()
        .position(|l| l.contains("panicked"))
        .map(|i| lines[i..(i + 2).min(lines.len())].join(" "));
    match panic_line {
        Some(l) => crashed(format!("Check {check} crashed: {l}")),
        None => crashed(format!("Check {check} crashed: {text}")),
    }
}
