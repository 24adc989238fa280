//! The engine: one wasmtime `Engine` with fuel and epoch deadlines (and the
//! ticker thread that drives them), the per-run store with its limits, and the
//! linker that adds only the host interfaces a component was granted. The
//! interfaces themselves live in one module each (facts, net, services, log).
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{precheck as pb, selector as sb};
use crate::cache::{Cache, CacheStats};
use crate::error::SandboxError;
use crate::facts::HostFacts;
use crate::net::NetGrant;
use crate::policy::{Capability, Grant, Policy};

/// Epoch tick: the granularity of deadlines.
const TICK: Duration = Duration::from_millis(10);
/// Elements a guest's tables may hold in all.
pub(crate) const TABLE_ELEMENTS: usize = 100_000;

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub cache_dir: PathBuf,
    pub policy: Policy,
}

/// The wasm sandbox. Cheap to share (`&self` everywhere); one per process.
pub struct Sandbox {
    pub(crate) engine: Engine,
    pub(crate) policy: Policy,
    pub(crate) cache: Cache,
    ticker_stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

/// The WASI context every guest starts from: no sockets, no name lookup, no
/// env, args or stdin; stderr captured into `stderr`. Guests run synchronously
/// on their own threads, so file operations are done on that thread rather than
/// bounced through a runtime's blocking pool.
pub(crate) fn base_wasi(stderr: &MemoryOutputPipe) -> wasmtime_wasi::WasiCtxBuilder {
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

/// Per-store state: what the host interfaces answer from, for one run.
pub(crate) struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: Limiter,
    pub(crate) facts: Arc<HostFacts>,
    pub(crate) net: Arc<NetGrant>,
    pub(crate) check: String,
    pub(crate) log_lines: usize,
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

/// What the store's limiter refused, read after a guest fails: out of memory is
/// known from here, never from the guest's own (forgeable) output.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    /// Largest memory size in bytes a `memory.grow` asked for and was refused (0: none).
    pub(crate) memory: AtomicU64,
    /// Largest table size in elements a `table.grow` asked for and was refused (0: none).
    pub(crate) table: AtomicU64,
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
pub(crate) struct Limiter {
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
        let cache = Cache::new(cfg.cache_dir, &engine);
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
            cache,
            ticker_stop: stop,
            ticker: Some(ticker),
        })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// WASI p2 (no sockets: see [`base_wasi`]), the world's type interfaces,
    /// and the granted host interfaces only: an import not granted stays
    /// undefined, so instantiation fails and the check is denied.
    pub(crate) fn linker(
        &self,
        grant: &Grant,
        selector: bool,
    ) -> wasmtime::Result<Linker<HostState>> {
        let mut l = Linker::<HostState>::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut l)?;
        if selector {
            sb::molt::check::selection::add_to_linker::<_, HasSelf<_>>(&mut l, |s| s)?;
        } else {
            pb::molt::check::types::add_to_linker::<_, HasSelf<_>>(&mut l, |s| s)?;
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
            }?;
        }
        Ok(l)
    }

    /// A store with the grant's limits; `stderr` captures guest panics.
    pub(crate) fn store(
        &self,
        grant: &Grant,
        wasi: WasiCtx,
        facts: Arc<HostFacts>,
        net: Arc<NetGrant>,
        check: &str,
        refused: Arc<Refusals>,
    ) -> wasmtime::Result<Store<HostState>> {
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
        store.set_fuel(grant.limits.fuel)?;
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
}
