//! One real agent (`a1`) upgraded by a real `molt serve`, as delta.rs and
//! downgrade.rs set it up (each includes this file beside `ops_common`):
//! V1 installed from a chosen core package, the agent's settings, and the
//! upgrade history read back from the admin API.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::ops_common::{Cp, Kit, V1, admin, agent_config, serve, wait_for};

/// How long an attempt may take to end.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(120);

/// A control plane serving the kit's packages (`<kit>/cp`), with `args`.
pub fn control_plane(k: &Kit, args: &[&str]) -> Cp {
    serve(&k.dir.path().join("cp"), &k.packages_dir(), args)
}

/// V1 made of `core` installed at `<kit>/agent` for `cp_url`: no precheck,
/// 30 s health and 10 s stop timeouts.
pub fn install_v1(k: &Kit, cp_url: &str, core: &Path) -> molt_layout::Home {
    let h = k.install_packages(
        &k.dir.path().join("agent"),
        V1,
        cp_url,
        &[core.to_path_buf()],
    );
    agent_config(
        &h,
        cp_url,
        "run_precheck = false\nhealth_timeout_secs = 30\nstop_timeout_secs = 10\n",
    );
    h
}

/// `a1`'s upgrade attempts (newest first).
pub fn attempts_of(url: &str) -> Vec<Value> {
    admin(url, "GET", "/api/v1/admin/agents/a1/attempts", json!({}))
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The attempt to `to`, once it has a result (the agent's log if none came).
pub fn wait_attempt_to(url: &str, h: &molt_layout::Home, to: &str) -> Value {
    let mut a = Value::Null;
    wait_for(
        &format!("the attempt to {to} to end"),
        ATTEMPT_LIMIT,
        || {
            a = attempts_of(url)
                .into_iter()
                .find(|a| a["to_version"] == to)
                .unwrap_or(Value::Null);
            a["result"].as_str().is_some_and(|r| !r.is_empty())
        },
    );
    assert!(
        !a.is_null(),
        "no attempt to {to}: {}",
        std::fs::read_to_string(h.agent_log()).unwrap_or_default()
    );
    a
}

/// The row of stage `name` in attempt `a` (Null if there is none).
pub fn stage<'a>(a: &'a Value, name: &str) -> &'a Value {
    a["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["stage"] == name))
        .unwrap_or(&Value::Null)
}
