//! Shared state of one running control plane, and request authentication.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use tokio::sync::Notify;

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::FleetState;
use crate::packages::PackageIndex;
use crate::store::{Store, StoreError, TokenHash};

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
    /// Token hash to agent: authentication never touches the database.
    pub tokens: RwLock<HashMap<TokenHash, AgentRef>>,
    pub admin_hash: TokenHash,
    /// Value of the dashboard cookie (derived from the admin token).
    pub session: String,
    pub packages: PackageIndex,
    /// Cached fleet settings (written through to the store).
    pub fleet: RwLock<FleetState>,
    /// Wakes an agent's long-poll when a command is queued for it.
    pub notifies: Mutex<HashMap<i64, Arc<Notify>>>,
    pub metrics: Metrics,
    /// The newest rollout unless aborted: whom it admitted (they are offered its version).
    pub rollout: RwLock<Option<crate::rollout::RolloutCache>>,
    /// Versions offered to no agent (halted or aborted rollouts) until cleared.
    pub blocked: RwLock<std::collections::BTreeSet<String>>,
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

    pub fn notify_for(&self, agent_id: i64) -> Arc<Notify> {
        let mut m = self.notifies.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(agent_id).or_default().clone()
    }

    /// Wakes the long-polls of these agents.
    pub fn wake(&self, agent_ids: &[i64]) {
        for id in agent_ids {
            self.notify_for(*id).notify_waiters();
        }
    }

    pub fn agent_by_name(&self, name: &str) -> Option<AgentRef> {
        let t = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        t.values().find(|a| &*a.name == name).cloned()
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

    pub fn set_fleet_cache(&self, f: FleetState) {
        *self.fleet.write().unwrap_or_else(|p| p.into_inner()) = f;
    }

    fn is_admin_token(&self, token: &str) -> bool {
        hash_token(token) == self.admin_hash
    }

    fn lookup_agent(&self, token: &str) -> Option<AgentRef> {
        let t = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        t.get(&hash_token(token)).cloned()
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
        if let Some(a) = state.lookup_agent(token) {
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
            Some(t) if state.lookup_agent(t).is_some() => Err(ApiError::forbidden(
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
