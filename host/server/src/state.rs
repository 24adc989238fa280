//! Shared state of one running control plane, and request authentication.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, RwLock};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use tokio::sync::{Notify, mpsc};

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::FleetState;
use crate::packages::PackageIndex;
use crate::store::{Store, StoreError, StoreEvent, TokenHash};

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "molt_session";

/// An agent known by its token.
#[derive(Clone, Debug)]
pub struct AgentRef {
    pub id: i64,
    pub name: Arc<str>,
}

/// State behind every handler (cheap to clone).
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub store: Arc<dyn Store>,
    /// Token hash to agent: the fast path of authentication (see [`TokenMap`]).
    pub tokens: RwLock<TokenMap>,
    pub admin_hash: TokenHash,
    /// Value of the dashboard cookie (derived from the admin token).
    pub session: String,
    pub packages: PackageIndex,
    /// Cached fleet settings (written through to the store; reloaded when
    /// another replica publishes `FleetChanged`).
    pub fleet: RwLock<FleetState>,
    /// Wakes an agent's long-poll when a command is queued for it.
    pub notifies: Mutex<HashMap<i64, Arc<Notify>>>,
    pub metrics: Metrics,
    /// The newest rollout unless aborted: whom it admitted (they are offered its version).
    /// A local change publishes `RolloutChanged` (see [`Watched`]).
    pub rollout: Watched<Option<crate::rollout::RolloutCache>>,
    /// Versions offered to no agent (halted or aborted rollouts) until cleared.
    pub blocked: Watched<std::collections::BTreeSet<String>>,
    /// Bumped whenever the token cache is cleared, so a database lookup that
    /// raced with the clear does not put a deleted agent back.
    pub tokens_gen: AtomicU64,
    /// Changes to tell the other replicas (sent by [`AppState::publish`],
    /// written to the store by the publisher task).
    pub events: mpsc::UnboundedSender<StoreEvent>,
    /// Whether the database answered its last readiness check.
    pub db_health: DbHealth,
    /// Encoded `GET /api/v1/agent/assigned` answers (see [`AnswerCache`]).
    pub answers: RwLock<AnswerCache>,
    /// Per-agent pins, both sources: read on every poll, so held here.
    pub pins: RwLock<Pins>,
}

/// Per-agent pins (agent id to version) by source.
#[derive(Default)]
pub struct Pins {
    /// The control plane's (`molt fleet pin`), from the store; reloaded on `AgentsChanged`.
    pub cp: HashMap<i64, String>,
    /// The agents' own (`pinned_version` in config.toml) as their last
    /// assignment request said. Not stored: a replica knows the pins of the
    /// agents that polled it since it started.
    pub own: HashMap<i64, String>,
}

/// Who pinned an agent, for the dashboard and the rollout view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// `pinned_version` in the agent's config.toml (wins over the control plane's).
    AgentConfig,
    /// `molt fleet pin` / `PUT /api/v1/admin/agents/{name}/pin`.
    ControlPlane,
}

impl PinSource {
    /// How the dashboard names it.
    pub const fn title(self) -> &'static str {
        match self {
            PinSource::AgentConfig => "agent config",
            PinSource::ControlPlane => "control plane",
        }
    }
}

/// Token hash to agent. The keys are SHA-256 digests, uniform and not chosen
/// by a caller, so hashing their first bytes is enough (no SipHash per request).
pub type TokenMap = HashMap<TokenHash, AgentRef, BuildHasherDefault<DigestHasher>>;

/// A [`Hasher`] for keys that are already cryptographic digests.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
}

/// The assignment answer is the same bytes for every agent that shares its
/// inputs (version, source, platform, runtime, package base URL) and the
/// packages snapshot: encode it once per snapshot instead of per poll. Bounded:
/// cleared when the snapshot changes or it holds [`AnswerCache::MAX`] entries.
#[derive(Default)]
pub struct AnswerCache {
    snapshot: Option<Arc<crate::packages::Snapshot>>,
    entries: HashMap<String, axum::body::Bytes>,
}

impl AnswerCache {
    pub const MAX: usize = 4096;

    /// The cached answer for `key` computed from `snap`.
    pub fn get(
        &self,
        snap: &Arc<crate::packages::Snapshot>,
        key: &str,
    ) -> Option<axum::body::Bytes> {
        match &self.snapshot {
            Some(s) if Arc::ptr_eq(s, snap) => self.entries.get(key).cloned(),
            _ => None,
        }
    }

    pub fn put(
        &mut self,
        snap: &Arc<crate::packages::Snapshot>,
        key: String,
        body: axum::body::Bytes,
    ) {
        if !self.snapshot.as_ref().is_some_and(|s| Arc::ptr_eq(s, snap))
            || self.entries.len() >= Self::MAX
        {
            self.entries.clear();
            self.snapshot = Some(snap.clone());
        }
        self.entries.insert(key, body);
    }
}

/// The database's health as this replica last saw it: while it is down the
/// API answers 503 instead of serving cached (possibly stale) state.
pub struct DbHealth {
    ok: AtomicBool,
    reason: RwLock<String>,
}

impl Default for DbHealth {
    fn default() -> Self {
        Self {
            ok: AtomicBool::new(true),
            reason: RwLock::new(String::new()),
        }
    }
}

impl DbHealth {
    pub fn is_ok(&self) -> bool {
        self.ok.load(Ordering::Acquire)
    }
    /// Why the database is not usable (empty while it is).
    pub fn reason(&self) -> String {
        self.reason
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    /// Records a check's outcome; returns whether the state changed.
    pub fn set(&self, outcome: &Result<(), HealthCheckError>) -> bool {
        let ok = outcome.is_ok();
        *self.reason.write().unwrap_or_else(|p| p.into_inner()) = outcome
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default();
        self.ok.swap(ok, Ordering::AcqRel) != ok
    }
}

/// Why a readiness check of the database failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthCheckError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("readiness task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("database did not answer a readiness check within {} ms", .0.as_millis())]
    Timeout(std::time::Duration),
}

tokio::task_local! {
    /// Set while a replica applies another replica's event: the caches it
    /// reloads must not publish the change back.
    static APPLYING_REMOTE: ();
}

/// A cache whose local changes other replicas must hear about: its write
/// guard publishes `event` when the content's fingerprint changed (not when
/// the change came from another replica's event). The rollout scheduler and
/// the rollout API write these caches after every change they store.
pub struct Watched<T: Fingerprint> {
    inner: RwLock<T>,
    event: StoreEvent,
    events: mpsc::UnboundedSender<StoreEvent>,
}

/// What identifies a cache's content for [`Watched`].
pub trait Fingerprint {
    fn fingerprint(&self) -> u64;
}

fn fingerprint_of(h: impl std::hash::Hash) -> u64 {
    use std::hash::BuildHasher;
    std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(h)
}

impl Fingerprint for Option<crate::rollout::RolloutCache> {
    fn fingerprint(&self) -> u64 {
        fingerprint_of(self.as_ref().map(|r| {
            let mut admitted: Vec<i64> = r.admitted.iter().copied().collect();
            admitted.sort_unstable();
            (
                r.id,
                r.version.clone(),
                r.state.map(|s| s.to_string()),
                admitted,
            )
        }))
    }
}

impl Fingerprint for std::collections::BTreeSet<String> {
    fn fingerprint(&self) -> u64 {
        fingerprint_of(self)
    }
}

impl<T: Fingerprint> Watched<T> {
    pub fn new(value: T, event: StoreEvent, events: mpsc::UnboundedSender<StoreEvent>) -> Self {
        Self {
            inner: RwLock::new(value),
            event,
            events,
        }
    }

    pub fn read(&self) -> std::sync::LockResult<std::sync::RwLockReadGuard<'_, T>> {
        self.inner.read()
    }

    /// Same shape as `RwLock::write` (poisoning is reported, never fatal).
    #[allow(clippy::type_complexity)]
    pub fn write(
        &self,
    ) -> Result<WatchedGuard<'_, T>, std::sync::PoisonError<WatchedGuard<'_, T>>> {
        let (guard, poisoned) = match self.inner.write() {
            Ok(g) => (g, false),
            Err(p) => (p.into_inner(), true),
        };
        let before = guard.fingerprint();
        let g = WatchedGuard {
            guard,
            before,
            owner: self,
        };
        if poisoned {
            Err(std::sync::PoisonError::new(g))
        } else {
            Ok(g)
        }
    }
}

/// Write access to a [`Watched`] cache.
pub struct WatchedGuard<'a, T: Fingerprint> {
    guard: std::sync::RwLockWriteGuard<'a, T>,
    before: u64,
    owner: &'a Watched<T>,
}

impl<T: Fingerprint> std::ops::Deref for WatchedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: Fingerprint> std::ops::DerefMut for WatchedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T: Fingerprint> Drop for WatchedGuard<'_, T> {
    fn drop(&mut self) {
        let remote = APPLYING_REMOTE.try_with(|_| ()).is_ok();
        if !remote && self.guard.fingerprint() != self.before {
            let _ = self.owner.events.send(self.owner.event.clone());
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// SHA-256 of a token.
pub fn hash_token(token: &str) -> TokenHash {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A fresh random token (256 bits, hex).
pub fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

impl AppState {
    /// Runs a store call on a blocking thread.
    pub async fn db<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| ApiError::internal(format!("database task failed: {e}")))?
            .map_err(ApiError::from)
    }

    /// The open (New or Acknowledged) issues of every agent.
    pub async fn open_issues(&self) -> Result<Vec<crate::model::Issue>, ApiError> {
        self.db(|s| {
            s.list_issues(&crate::store::IssueFilter {
                open_only: true,
                ..Default::default()
            })
        })
        .await
    }

    pub fn notify_for(&self, agent_id: i64) -> Arc<Notify> {
        let mut m = self.notifies.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(agent_id).or_default().clone()
    }

    /// Wakes the long polls of these agents, here and (through the store) on
    /// every other replica.
    pub fn wake(&self, agent_ids: &[i64]) {
        self.wake_local(agent_ids);
        if agent_ids.len() > 64 {
            self.publish(StoreEvent::WakeAll);
        } else {
            for id in agent_ids {
                self.publish(StoreEvent::Wake(*id));
            }
        }
    }

    fn wake_local(&self, agent_ids: &[i64]) {
        let m = self.notifies.lock().unwrap_or_else(|p| p.into_inner());
        for id in agent_ids {
            if let Some(n) = m.get(id) {
                n.notify_waiters();
            }
        }
    }

    fn wake_all_local(&self) {
        let m = self.notifies.lock().unwrap_or_else(|p| p.into_inner());
        for n in m.values() {
            n.notify_waiters();
        }
    }

    /// Tells the other replicas about a change this one stored (no-op with
    /// SQLite). Never blocks: the publisher task writes it to the store.
    pub fn publish(&self, ev: StoreEvent) {
        if self.events.send(ev).is_err() {
            tracing::warn!("replica event publisher stopped; event dropped");
        }
    }

    /// Forgets every cached token (another replica changed agents, or events
    /// may have been missed): the next request of each agent asks the store.
    pub fn clear_tokens(&self) {
        let mut t = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        self.tokens_gen.fetch_add(1, Ordering::AcqRel);
        t.clear();
    }

    /// An agent's id by name, from the store (the token cache holds only the
    /// agents seen lately by this replica).
    pub async fn agent_by_name(&self, name: &str) -> Result<Option<AgentRef>, ApiError> {
        let n = name.to_string();
        Ok(self
            .db(move |s| s.agent_by_name(&n))
            .await?
            .map(|a| AgentRef {
                id: a.id,
                name: a.name.into(),
            }))
    }

    /// Applies an event another replica (or this one) published.
    pub async fn apply_event(&self, ev: StoreEvent) {
        match ev {
            StoreEvent::Wake(id) => self.wake_local(&[id]),
            StoreEvent::WakeAll => self.wake_all_local(),
            StoreEvent::AgentsChanged => {
                self.clear_tokens();
                if let Err(e) = self.reload_pins().await {
                    tracing::error!(error = %e.message, "agent pins reload failed");
                }
            }
            StoreEvent::FleetChanged | StoreEvent::RolloutChanged => {
                self.reload_remote().await;
                // A replica may publish a change it caches before its commit
                // (the scheduler caches admissions first): look once more
                // after that commit has had time to land.
                let st = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(TRAILING_RELOAD).await;
                    st.reload_remote().await;
                });
            }
        }
    }

    /// [`Self::reload_shared`] for another replica's change (not published back).
    pub(crate) async fn reload_remote(&self) {
        if let Err(e) = APPLYING_REMOTE.scope((), self.reload_shared()).await {
            tracing::error!(error = %e.message, "replica cache reload failed");
        }
    }

    /// Reloads the fleet settings, the rollout cache and the blocklist from the store.
    pub async fn reload_shared(&self) -> Result<(), ApiError> {
        let fleet = self.db(|s| s.fleet()).await?;
        *self.fleet.write().unwrap_or_else(|p| p.into_inner()) = fleet;
        self.reload_pins().await?;
        crate::rollout::reload(self).await
    }

    /// Reloads the control plane's per-agent pins from the store.
    pub async fn reload_pins(&self) -> Result<(), ApiError> {
        let pins: HashMap<i64, String> = self.db(|s| s.agent_pins()).await?.into_iter().collect();
        self.pins.write().unwrap_or_else(|p| p.into_inner()).cp = pins;
        Ok(())
    }

    /// This agent's pin from `source`, if any.
    pub fn pin_for(&self, agent_id: i64, source: PinSource) -> Option<String> {
        let pins = self.pins.read().unwrap_or_else(|p| p.into_inner());
        match source {
            PinSource::AgentConfig => &pins.own,
            PinSource::ControlPlane => &pins.cp,
        }
        .get(&agent_id)
        .cloned()
    }

    /// Whether either pin holds this agent (then no rollout admits it).
    pub fn is_pinned(&self, a: &crate::model::Agent) -> bool {
        a.cp_pin.is_some() || self.pin_for(a.id, PinSource::AgentConfig).is_some()
    }

    /// Remembers the pin an agent's assignment request carried (none: not pinned);
    /// takes the write lock only when it changed.
    pub fn note_own_pin(&self, agent_id: i64, pinned: Option<&str>) {
        let known = self
            .pins
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .own
            .get(&agent_id)
            .map(String::as_str)
            == pinned;
        if known {
            return;
        }
        let mut pins = self.pins.write().unwrap_or_else(|p| p.into_inner());
        match pinned {
            Some(v) => {
                tracing::info!(agent_id, version = %v, "agent reports its own pin");
                pins.own.insert(agent_id, v.to_string())
            }
            None => pins.own.remove(&agent_id),
        };
    }

    pub fn fleet_state(&self) -> FleetState {
        self.fleet.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The version a rollout assigns this agent, if it admitted it and the
    /// version is not blocklisted.
    pub fn rollout_version_for(&self, agent_id: i64) -> Option<String> {
        let r = self.rollout.read().unwrap_or_else(|p| p.into_inner());
        let r = r.as_ref().filter(|r| r.admitted.contains(&agent_id))?;
        if self.is_blocked(&r.version) {
            return None;
        }
        Some(r.version.clone())
    }

    /// The in-flight limit of the rollout group that admitted this agent.
    pub fn rollout_slot_limit(&self, agent_id: i64, to_version: &str) -> Option<u32> {
        let r = self.rollout.read().unwrap_or_else(|p| p.into_inner());
        let r = r.as_ref().filter(|r| r.version == to_version)?;
        r.limits.get(&agent_id).copied()
    }

    pub fn is_blocked(&self, version: &str) -> bool {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(version)
    }

    /// Caches fleet settings this replica just stored, and tells the others.
    pub fn set_fleet_cache(&self, f: FleetState) {
        *self.fleet.write().unwrap_or_else(|p| p.into_inner()) = f;
        self.publish(StoreEvent::FleetChanged);
    }

    fn is_admin_token(&self, token: &str) -> bool {
        hash_token(token) == self.admin_hash
    }

    /// The agent holding this token: the cache, else the store (an agent
    /// registered through another replica), remembered for the next request.
    async fn lookup_agent(&self, token: &str) -> Result<Option<AgentRef>, ApiError> {
        let hash = hash_token(token);
        if let Some(a) = self
            .tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
        {
            return Ok(Some(a.clone()));
        }
        let generation = self.tokens_gen.load(Ordering::Acquire);
        let Some((id, name)) = self.db(move |s| s.agent_by_token(&hash)).await? else {
            return Ok(None);
        };
        let a = AgentRef {
            id,
            name: name.into(),
        };
        let mut t = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        if self.tokens_gen.load(Ordering::Acquire) == generation {
            t.insert(hash, a.clone());
        }
        Ok(Some(a))
    }

    /// Whether the request carries the dashboard session cookie.
    pub fn has_session(&self, parts: &Parts) -> bool {
        cookie(parts, SESSION_COOKIE).is_some_and(|v| v == self.session)
    }
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(v) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::unauthorized("Authorization header is not valid text"))?;
    match v.strip_prefix("Bearer ") {
        Some(t) if !t.trim().is_empty() => Ok(Some(t.trim())),
        _ => Err(ApiError::unauthorized(
            "Authorization header must be `Bearer <token>`",
        )),
    }
}

/// A cookie's value.
pub fn cookie<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';').find_map(|kv| {
                let (k, val) = kv.trim().split_once('=')?;
                (k == name).then_some(val)
            })
        })
}

/// The calling agent (from its bearer token).
pub struct AgentAuth(pub AgentRef);

impl FromRequestParts<AppState> for AgentAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <agent token>"))?;
        if let Some(a) = state.lookup_agent(token).await? {
            return Ok(AgentAuth(a));
        }
        if state.is_admin_token(token) {
            return Err(ApiError::forbidden(
                "the admin token cannot make agent calls: use the agent's own token",
            ));
        }
        Err(ApiError::unauthorized("unknown agent token"))
    }
}

/// An admin caller (bearer admin token, or the dashboard session cookie).
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer(parts)? {
            Some(t) if state.is_admin_token(t) => Ok(AdminAuth),
            Some(t) if state.lookup_agent(t).await?.is_some() => Err(ApiError::forbidden(
                "agent tokens are not allowed on admin endpoints",
            )),
            Some(_) => Err(ApiError::unauthorized("invalid admin token")),
            None if state.has_session(parts) => Ok(AdminAuth),
            None => Err(ApiError::unauthorized(
                "missing Authorization: Bearer <admin token>",
            )),
        }
    }
}

/// How often a replica checks that its database is reachable and current.
pub const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// A readiness check that has not answered within this counts as failed.
pub const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);
/// After another replica's change, its caches are reloaded again this much later.
pub const TRAILING_RELOAD: std::time::Duration = std::time::Duration::from_millis(500);
/// Every this many health checks (5 s) a replica on a shared database reloads
/// fleet, rollout and blocklist anyway: a bound on staleness should an event
/// be lost (a replica killed between its commit and its NOTIFY).
pub const RECONCILE_EVERY: u32 = 10;
/// Failed checks in a row before the replica answers 503 (a lost database
/// shows within about `HEALTH_FAILURES * (HEALTH_EVERY + HEALTH_TIMEOUT)`).
pub const HEALTH_FAILURES: u32 = 2;

/// The background tasks that keep a replica in agreement with the others:
/// the publisher (local changes to the store's channel), the subscriber
/// (other replicas' changes to this one's caches and long polls) and the
/// database health check.
pub fn spawn_replica_tasks(
    state: &AppState,
    mut outbox: mpsc::UnboundedReceiver<StoreEvent>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let st = state.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(first) = outbox.recv().await {
            let mut batch = vec![first];
            while let Ok(ev) = outbox.try_recv() {
                if !batch.contains(&ev) {
                    batch.push(ev);
                }
            }
            let store = st.store.clone();
            let r = tokio::task::spawn_blocking(move || {
                batch.iter().try_for_each(|ev| store.publish(ev))
            })
            .await;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "replica event not published: other replicas may serve stale state until their next reload")
                }
                Err(e) => tracing::error!(error = %e, "replica event publisher task failed"),
            }
        }
    }));
    if let Some(mut inbox) = state.store.subscribe() {
        let st = state.clone();
        tasks.push(tokio::spawn(async move {
            tracing::info!("listening for other replicas' changes");
            while let Some(ev) = inbox.recv().await {
                tracing::debug!(event = ?ev, "replica event received");
                st.apply_event(ev).await;
            }
            tracing::error!(
                "replica event subscription ended: caches no longer follow other replicas"
            );
        }));
    }
    let st = state.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEALTH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        let shared = st.config.db_is_url();
        let mut n = 0u32;
        loop {
            tick.tick().await;
            n = n.wrapping_add(1);
            if shared && failures == 0 && n.is_multiple_of(RECONCILE_EVERY) {
                st.reload_remote().await;
            }
            let store = st.store.clone();
            let check = tokio::task::spawn_blocking(move || store.readiness());
            let outcome = match tokio::time::timeout(HEALTH_TIMEOUT, check).await {
                Ok(Ok(r)) => r.map_err(HealthCheckError::from),
                Ok(Err(e)) => Err(HealthCheckError::from(e)),
                Err(_) => Err(HealthCheckError::Timeout(HEALTH_TIMEOUT)),
            };
            // One failed check may be a busy pool; two in a row is a database gone.
            failures = if outcome.is_ok() { 0 } else { failures + 1 };
            if outcome.is_err() && failures < HEALTH_FAILURES {
                continue;
            }
            let ok = outcome.is_ok();
            if st.db_health.set(&outcome) {
                if ok {
                    tracing::info!("database reachable again: this replica serves again");
                    // Events may have been missed while it was down.
                    st.clear_tokens();
                    st.wake_all_local();
                    if let Err(e) = st.reload_shared().await {
                        tracing::error!(error = %e.message, "replica cache reload failed");
                    }
                } else {
                    tracing::error!(error = %st.db_health.reason(), "database unavailable: this replica answers 503");
                }
            }
        }
    }));
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_health_flips_with_the_outcome_and_keeps_its_reason() {
        let h = DbHealth::default();
        assert!(!h.set(&Ok(())), "already ok: no change");
        let down = Err(HealthCheckError::Timeout(HEALTH_TIMEOUT));
        assert!(h.set(&down));
        assert!(!h.is_ok());
        assert_eq!(
            h.reason(),
            "database did not answer a readiness check within 1500 ms"
        );
        assert!(!h.set(&down), "still down: no change");
        assert!(h.set(&Ok(())));
        assert!(h.is_ok() && h.reason().is_empty());
    }
}
