//! Staged rollouts end to end (issue 15): a real `molt serve` and six real
//! agents, each under its own supervisor (`molt run`), in three groups by
//! label. A good version goes group by group (canary first, the next group
//! only after the last completion plus the soak, checked from the store's
//! timestamps); a version whose agent crashes at start halts the rollout at
//! the canary, is blocklisted, cannot be resumed while blocklisted, and
//! aborting it leaves every agent Up on the old version; a rollout outside
//! its maintenance window admits nobody and says when the window opens, one
//! inside it proceeds. Driven through
//! `molt fleet` (exit codes and `--json`).

#[path = "../src/rollout_fx.rs"]
mod rollout_fx;

use std::time::Duration;

use rollout_fx::*;
use serde_json::{Value, json};

/// A version whose `bin/molt` crashes at start.
const V3: &str = "vancouver-06-01-2023__patch4-09-01-2023_09-02-2023_0900";
const CRASHING_AGENT: &[u8] = b"#!/bin/sh\n# Stand-in for a broken release: starts, then crashes.\n[ \"$1\" = --version ] && { echo molt broken; exit 0; }\necho 'crashing at start' >&2\nexit 1\n";
const SOAK_SECS: i64 = 3;

const AGENTS: &[(&str, &str)] = &[
    ("lon-1", "lon"),
    ("lon-2", "lon"),
    ("par-1", "par"),
    ("par-2", "par"),
    ("nyc-1", "nyc"),
    ("nyc-2", "nyc"),
];

/// A GET's text with the admin token (the dashboard; the metrics need none).
fn get_text(url: &str, path: &str) -> String {
    let (status, text) =
        molt_e2e::agent_fx::http_call(url, reqwest::Method::GET, path, ADMIN_TOKEN, None);
    assert!((200..300).contains(&status), "{path}: HTTP {status}");
    text
}

#[test]
fn a_rollout_goes_group_by_group_and_a_crashing_version_halts_at_the_canary() {
    let k = releases(&[V1, V2]);
    core_package(&k, V3, CRASHING_AGENT);
    // Six agents on V1, labelled by site, each under its supervisor (the
    // kit's bootstrap agent removed).
    let f = Fleet::start(k, V1, AGENTS);
    let cp = &f.cp;

    // Usage and refusals: no token is usage (2), an unknown rollout a refusal (1).
    let o = molt_e2e::kit::bin::molt_cmd(&["fleet", "--url", &cp.url, "rollout", "status"])
        .env_remove("MOLT_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let (code, _, out) = fleet(&cp.url, &["rollout", "status", "999"]);
    assert_eq!(code, 1, "{out}");

    // (a) V2, group by group.
    let groups = [
        format!("lon label.site=lon canary=1 max_in_flight=1 soak_secs={SOAK_SECS}"),
        format!("par label.site=par canary=1 max_in_flight=1 soak_secs={SOAK_SECS}"),
        "rest canary=1 max_in_flight=50%".to_string(),
    ];
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    let id = f.create_rollout(V2, &groups, &[]);
    f.wait_rollout(id, "Completed", Duration::from_secs(90));
    wait_for("every agent Up on V2", T, || f.all_up_on(V2));
    assert_eq!(get(&cp.url, "/api/v1/admin/fleet")["version"], V2);

    // Exactly one attempt per agent, Complete; per group: (first started,
    // last finished), from the store.
    let mut spans = Vec::new();
    for pair in AGENTS.chunks(2) {
        let mut first_start = i64::MAX;
        let mut last_done = 0;
        for (name, _) in pair {
            let at = attempts_to(&cp.url, name, V2);
            assert_eq!(at.len(), 1, "{name}: {at:?}");
            assert_eq!(at[0]["result"], "Complete", "{name}: {at:?}");
            first_start = first_start.min(ms(&at[0]["started_at"]));
            last_done = last_done.max(ms(&at[0]["finished_at"]));
        }
        // The canary (first by name) finished before the other started.
        let canary = attempts_to(&cp.url, pair[0].0, V2);
        let other = attempts_to(&cp.url, pair[1].0, V2);
        assert!(
            ms(&other[0]["started_at"]) >= ms(&canary[0]["finished_at"]),
            "{} started before its canary {} finished",
            pair[1].0,
            pair[0].0
        );
        spans.push((first_start, last_done));
    }
    let cmds = rollout_commands(&cp.url, id);
    assert_eq!(
        cmds.len(),
        AGENTS.len(),
        "one autoUpgrade per agent: {cmds:?}"
    );
    for k in 1..spans.len() {
        let gate = spans[k - 1].1 + SOAK_SECS * 1000;
        assert!(
            spans[k].0 >= gate,
            "group {k} started {} ms before group {}'s last completion + soak",
            gate - spans[k].0,
            k - 1
        );
        for (name, _) in &AGENTS[2 * k..2 * k + 2] {
            let c = cmds.iter().find(|c| c["agent"] == *name).unwrap();
            assert!(
                ms(&c["created_at"]) >= gate,
                "{name}'s autoUpgrade was queued before the previous group's soak ended"
            );
        }
    }
    let (code, status, out) = fleet(&cp.url, &["rollout", "status", &id.to_string()]);
    assert_eq!(code, 0, "{out}");
    for g in status["group_progress"].as_array().unwrap() {
        assert_eq!(
            (g["agents"].as_u64(), g["done"].as_u64()),
            (Some(2), Some(2)),
            "{out}"
        );
    }

    // `molt fleet agents`: filtered and paginated by the store.
    let (code, page, out) = fleet(&cp.url, &["agents", "--label", "site=lon"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(page["total"], 2, "{out}");
    let (code, page, out) = fleet(
        &cp.url,
        &[
            "agents",
            "--status",
            "Up",
            "--on-version",
            V2,
            "--per-page",
            "4",
            "--page",
            "2",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(page["total"], 6, "{out}");
    let names: Vec<&str> = page["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["par-1", "par-2"], "{out}");
    let (code, _, out) = fleet(&cp.url, &["agents", "--status", "Sideways"]);
    assert_eq!(code, 1, "{out}");

    // (b) V3 crashes at start: the canary rolls back and the rollout halts.
    let bad = f.create_rollout(
        V3,
        &[
            "lon label.site=lon canary=1 max_in_flight=2 soak_secs=0",
            "rest canary=0 max_in_flight=2",
        ],
        &[],
    );
    f.wait_rollout(bad, "Halted", Duration::from_secs(180));
    let (code, st, out) = fleet(&cp.url, &["rollout", "status"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(st["id"], bad, "{out}");
    assert_eq!(st["state"], "Halted", "{out}");
    let reason = st["reason"].as_str().unwrap_or_default();
    // The crash fails the health check: it counts as soon as that stage is
    // reported, with or without the attempt's result (Rolled Back) yet.
    assert!(
        reason.contains("group lon")
            && (reason.contains("lon-1 (Rolled Back, health check failed)")
                || reason.contains("lon-1 (health check failed)")),
        "{reason}"
    );
    assert_eq!(st["blocklisted"], true, "{out}");
    // Exactly the canary's attempt fleet-wide, and no command for anyone else.
    for (name, _) in AGENTS {
        let n = attempts_to(&cp.url, name, V3).len();
        assert_eq!(n, usize::from(*name == "lon-1"), "{name} attempts to V3");
    }
    let cmds = rollout_commands(&cp.url, bad);
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    assert_eq!(cmds[0]["agent"], "lon-1");
    let html = get_text(&cp.url, "/dashboard");
    assert!(
        html.contains("id=\"rollout-state\">Halted<")
            && html.contains("lon-1 (")
            && html.contains("health check failed"),
        "the dashboard shows the halt and its reason:\n{html}"
    );
    let metrics = get_text(&cp.url, "/metrics");
    assert!(
        metrics.contains(&format!(
            "molt_rollout_state{{rollout=\"{bad}\",version=\"{V3}\",state=\"Halted\"}} 1"
        )) && metrics.contains("molt_blocklisted_versions 1"),
        "{metrics}"
    );
    let (code, list, out) = fleet(&cp.url, &["blocklist", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        list.as_array().unwrap().iter().any(|b| b["version"] == V3),
        "{out}"
    );
    wait_for("the canary back Up on V2", T, || f.all_up_on(V2));

    // Resume is refused while the version is blocklisted.
    let (code, _, out) = fleet(&cp.url, &["rollout", "resume", &bad.to_string()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("blocklisted"), "{out}");
    // Cleared and resumed, it goes on: the canary is admitted again (an
    // `upgrade {version}`, which retries a version the agent holds after its
    // rollback), crashes again, and the rollout halts again at the canary.
    let (code, _, out) = fleet(&cp.url, &["blocklist", "clear", V3]);
    assert_eq!(code, 0, "{out}");
    let (code, st, out) = fleet(&cp.url, &["rollout", "resume", &bad.to_string()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(st["state"], "Running", "{out}");
    f.wait_rollout(bad, "Halted", Duration::from_secs(120));
    for (name, _) in AGENTS {
        let n = attempts_to(&cp.url, name, V3).len();
        assert_eq!(
            n,
            if *name == "lon-1" { 2 } else { 0 },
            "{name} attempts to V3"
        );
    }
    let cmds = rollout_commands(&cp.url, bad);
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert!(cmds.iter().all(|c| c["agent"] == "lon-1"), "{cmds:?}");
    assert!(cmds.iter().any(|c| c["kind"] == "upgrade"), "{cmds:?}");
    let (_, st, _) = fleet(&cp.url, &["rollout", "status", &bad.to_string()]);
    assert_eq!(st["blocklisted"], true);
    assert!(st["resumed_at"].is_string());

    // Abort stops it for good: everyone stays Up on V2.
    let (code, st, out) = fleet(&cp.url, &["rollout", "abort", &bad.to_string()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(st["state"], "Aborted", "{out}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rollout_commands(&cp.url, bad).len(), 2);
    wait_for("the canary back Up on V2", T, || f.all_up_on(V2));
    assert!(f.all_up_on(V2), "{:?}", agents_of(&cp.url));
    assert_eq!(get(&cp.url, "/api/v1/admin/fleet")["version"], V2);

    // The operator clears the blocklist.
    let (code, _, out) = fleet(&cp.url, &["blocklist", "clear", V3]);
    assert_eq!(code, 0, "{out}");
    let (code, list, out) = fleet(&cp.url, &["blocklist", "list"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(list, json!([]), "{out}");
    let (code, _, out) = fleet(&cp.url, &["blocklist", "clear", V3]);
    assert_eq!(code, 1, "{out}");

    // (c) Maintenance windows. A rollout whose only window is on every day
    // but today (UTC) admits nobody: no command queued, the status says when
    // the window opens (tomorrow 00:00 UTC).
    let unix = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    if unix() % 86_400 > 86_400 - 30 {
        // Not across midnight UTC.
        std::thread::sleep(Duration::from_secs(31));
    }
    let secs = unix();
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let today = ((secs / 86_400 + 3) % 7) as usize; // 1970-01-01 was a Thursday.
    let not_today = format!(
        "window={}-{}@00:00-24:00+00:00",
        DAYS[(today + 1) % 7],
        DAYS[(today + 6) % 7]
    );
    let groups = |window: &str| {
        [
            format!("lon label.site=lon canary=1 max_in_flight=1 {window} jitter=2"),
            "rest canary=0 max_in_flight=50%".to_string(),
        ]
    };
    let create = |version: &str, window: &str| {
        let gs = groups(window);
        f.create_rollout(version, &[gs[0].as_str(), gs[1].as_str()], &[])
    };
    let closed = create(V3, &not_today);
    std::thread::sleep(Duration::from_secs(4));
    let (code, st, out) = fleet(&cp.url, &["rollout", "status", &closed.to_string()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(st["state"], "Running", "{out}");
    assert_eq!(st["admitted"], json!([]), "{out}");
    assert!(st["group_progress"][0]["started_at"].is_null(), "{out}");
    assert_eq!(
        st["group_progress"][0]["windows"],
        json!([not_today.trim_start_matches("window=")]),
        "{out}"
    );
    let waiting = st["waiting"].as_str().unwrap_or_default();
    assert!(
        waiting.starts_with("waiting for maintenance window ")
            && waiting.ends_with("T00:00:00Z")
            && ms(&json!(waiting.rsplit(' ').next().unwrap())) > (secs * 1000) as i64,
        "{out}"
    );
    assert!(rollout_commands(&cp.url, closed).is_empty());
    for (name, _) in AGENTS {
        let n = attempts_to(&cp.url, name, V3).len();
        assert_eq!(
            n,
            if *name == "lon-1" { 2 } else { 0 },
            "{name}: none since (b)"
        );
    }
    // Without --json the status says it too.
    let o = fleet_text(&cp.url, &["rollout", "status"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(waiting), "{o:?}");
    let (code, _, out) = fleet(&cp.url, &["rollout", "abort", &closed.to_string()]);
    assert_eq!(code, 0, "{out}");
    let (code, _, out) = fleet(&cp.url, &["blocklist", "clear", V3]);
    assert_eq!(code, 0, "{out}");
    // With a window that includes now it proceeds (of V2, which every agent
    // runs already: each is admitted as done, no crash to wait for).
    let open = create(V2, "window=*@00:00-24:00+00:00");
    f.wait_rollout(open, "Completed", Duration::from_secs(15));
    let (_, st, out) = fleet(&cp.url, &["rollout", "status", &open.to_string()]);
    assert_eq!(st["admitted"].as_array().map(Vec::len), Some(6), "{out}");
    assert!(st["waiting"].is_null(), "{out}");
}

/// `molt fleet set-version|override|pin|issues|readiness`: `--json` from the
/// command's types, exit 0 done, 1 refused by the control plane, 2 usage.
#[test]
fn fleet_versions_issues_and_readiness_from_the_command_line() {
    let f = Fleet::serve(releases(&[V1, V2]), V1);
    let cp = &f.cp;

    let (code, v, out) = fleet(&cp.url, &["set-version", V2]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["version"], V2, "{out}");
    assert_eq!(v["override"], Value::Null, "{out}");
    assert_eq!(v["auto_upgrade_queued"], 1, "agent a1: {out}");
    assert_eq!(get(&cp.url, "/api/v1/admin/fleet")["version"], V2);
    // A version the packages directory does not serve: refused (1), said in JSON.
    let missing = "vancouver-06-01-2023__patch9-09-09-2023_09-09-2023_0900";
    let (code, v, out) = fleet(&cp.url, &["set-version", missing]);
    assert_eq!(code, 1, "{out}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{out}");
    // Not a version at all: the control plane refuses it too.
    let (code, _, out) = fleet(&cp.url, &["set-version", "not a version"]);
    assert_eq!(code, 1, "{out}");

    let (code, v, out) = fleet(&cp.url, &["override", V1]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["override"], V1, "{out}");
    let (code, v, out) = fleet(&cp.url, &["override", "--clear"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["override"], Value::Null, "{out}");
    // Neither a version nor --clear: usage (clap's 2).
    let (code, _, out) = fleet(&cp.url, &["override"]);
    assert_eq!(code, 2, "{out}");

    // `pin`: the control plane's pin of one agent beats the fleet version; the
    // agent's own config pin (`pinned`) beats it; cleared, back to the fleet.
    let assigned = |q: &str| {
        let (st, text) = molt_e2e::agent_fx::http_call(
            &cp.url,
            reqwest::Method::GET,
            &format!("/api/v1/agent/assigned?os=universal&arch=universal{q}"),
            AGENT_TOKEN,
            None,
        );
        assert_eq!(st, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        (
            v["version"].as_str().unwrap_or("").to_string(),
            v["source"].as_str().unwrap_or("").to_string(),
        )
    };
    assert_eq!(assigned(""), (V2.to_string(), "fleet".to_string()));
    let (code, v, out) = fleet(&cp.url, &["pin", "a1", V1]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        (v["name"].as_str(), v["pin"].as_str()),
        (Some("a1"), Some(V1)),
        "{out}"
    );
    assert_eq!(assigned(""), (V1.to_string(), "cp-pin".to_string()));
    assert_eq!(
        assigned(&format!("&pinned={V2}")),
        (V2.to_string(), "pin".to_string()),
        "the agent's own pin wins"
    );
    let listed = get(&cp.url, "/api/v1/admin/agents");
    assert!(
        listed
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["name"] == "a1" && x["pin"] == V1),
        "{listed}"
    );
    let (code, v, out) = fleet(&cp.url, &["pin", "a1", "--clear"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["pin"], Value::Null, "{out}");
    assert_eq!(assigned(""), (V2.to_string(), "fleet".to_string()));
    // An unknown agent and a non-version: refused (1) with the reason; no
    // version and no --clear: usage (2).
    let (code, v, out) = fleet(&cp.url, &["pin", "nobody", V1]);
    assert_eq!(code, 1, "{out}");
    let e = v["error"].as_str().unwrap_or("");
    assert!(e.contains("HTTP 404") && e.contains("nobody"), "{out}");
    let (code, v, out) = fleet(&cp.url, &["pin", "a1", "not-a-version"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("HTTP 400")),
        "{out}"
    );
    let (code, _, out) = fleet(&cp.url, &["pin", "a1"]);
    assert_eq!(code, 2, "{out}");

    // An issue reported by agent a1 through the agent API.
    let (st, text) = molt_e2e::agent_fx::http_call(
        &cp.url,
        reqwest::Method::POST,
        "/api/v1/agent/issues",
        AGENT_TOKEN,
        Some(json!({"source": "precheck", "findings": [
            {"code": "disk_space", "severity": "blocking", "description": "1 GiB free"}
        ]})),
    );
    assert!((200..300).contains(&st), "{st}: {text}");
    let (code, v, out) = fleet(&cp.url, &["issues", "list", "--open"]);
    assert_eq!(code, 0, "{out}");
    let list = v.as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "{out}");
    assert_eq!(list[0]["code"], "disk_space");
    assert_eq!(list[0]["state"], "New");
    let id = list[0]["id"].as_i64().unwrap().to_string();
    let (code, v, out) = fleet(&cp.url, &["issues", "ack", &id]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["state"], "Acknowledged", "{out}");
    let (code, v, out) = fleet(&cp.url, &["issues", "resolve", &id]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["state"], "Resolved", "{out}");
    let (code, v, out) = fleet(&cp.url, &["issues", "list", "--open"]);
    assert_eq!((code, v.as_array().map(Vec::len)), (0, Some(0)), "{out}");
    let (code, _, out) = fleet(&cp.url, &["issues", "ack", "999999"]);
    assert_eq!(code, 1, "an unknown issue: {out}");
    let (code, _, out) = fleet(&cp.url, &["issues", "list", "--state", "Sideways"]);
    assert_eq!(code, 1, "{out}");
    let (code, _, out) = fleet(&cp.url, &["issues", "ack", "one"]);
    assert_eq!(code, 2, "{out}");

    // Readiness: a1 never checked; --run queues runPrecheck, then it is Pending.
    let (code, v, out) = fleet(&cp.url, &["readiness", V2]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        (v["not_checked"].as_u64(), v["ready"].as_u64()),
        (Some(1), Some(0)),
        "{out}"
    );
    assert_eq!(v["agents"][0]["agent"], "a1", "{out}");
    let (code, v, out) = fleet(&cp.url, &["readiness", V2, "--run"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(v["queued"], 1, "{out}");
    assert_eq!(v["pending"], 1, "{out}");
    assert_eq!(v["agents"][0]["readiness"], "Pending", "{out}");
    let cmds = get(&cp.url, "/api/v1/admin/commands?agent=a1");
    assert!(
        cmds.as_array()
            .into_iter()
            .flatten()
            .any(|c| c["kind"] == "runPrecheck" && c["args"]["version"] == V2),
        "{cmds}"
    );
    // Text output for a person, and no token is usage (2).
    let o = fleet_text(&cp.url, &["readiness", V2]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("0 Ready, 0 Not Ready, 1 Pending"),
        "{text}"
    );
    let o = molt_e2e::kit::bin::molt_cmd(&["fleet", "--url", &cp.url, "set-version", V1])
        .env_remove("MOLT_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        get(&cp.url, "/api/v1/admin/fleet")["version"],
        V2,
        "nothing changed"
    );
}
