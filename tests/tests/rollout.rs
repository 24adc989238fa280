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

mod ops_common;

use std::process::Output;
use std::time::Duration;

use molt_layout::Home;
use ops_common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(120);
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

/// Milliseconds since the epoch of an RFC 3339 UTC time as the API writes it.
fn ms(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    let s = s.trim_end_matches('Z');
    let (date, time) = s.split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    let frac_ms: i64 = format!("{frac:0<3}")[..3].parse().unwrap();
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 86_400) + t[0] * 3600 + t[1] * 60 + t[2]) * 1000 + frac_ms
}

fn fleet(url: &str, args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["fleet", "--url", url, "--json"];
    all.extend_from_slice(args);
    let o: Output = molt_testkit::bin::molt_cmd(&all)
        .env("MOLT_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (
        o.status.code().unwrap_or(-1),
        serde_json::from_str(&out).unwrap_or(Value::Null),
        format!("{out}\n{err}"),
    )
}

/// A plain GET's text (the metrics need no token).
fn get_text(url: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { reqwest::get(url).await.unwrap().text().await.unwrap() })
}

/// The dashboard's page (admin bearer token).
fn dashboard(url: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = reqwest::Client::new()
            .get(format!("{url}/dashboard"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.text().await.unwrap()
    })
}

fn get(url: &str, path: &str) -> Value {
    admin(url, "GET", path, Value::Null)
}

fn agents(url: &str) -> Vec<Value> {
    get(url, "/api/v1/admin/agents")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn all_up_on(url: &str, v: &str) -> bool {
    let list = agents(url);
    AGENTS.iter().all(|(name, _)| {
        list.iter()
            .any(|a| a["name"] == *name && a["status"] == "Up" && a["version"] == v)
    })
}

/// The agent's attempts to `v` (newest first).
fn attempts_to(url: &str, name: &str, v: &str) -> Vec<Value> {
    get(url, &format!("/api/v1/admin/agents/{name}/attempts"))
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a["to_version"] == v)
        .collect()
}

/// Commands the rollout `id` queued, by agent.
fn rollout_commands(url: &str, id: i64) -> Vec<Value> {
    get(url, "/api/v1/admin/commands?limit=10000")
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["args"]["rollout"] == id)
        .collect()
}

fn rollout_state(url: &str, id: i64) -> Value {
    get(url, &format!("/api/v1/admin/rollouts/{id}"))
}

/// Waits for rollout `id` to reach `state`; on time-out shows the rollout,
/// the agents, the control plane's log and each agent's log tail.
fn wait_rollout(
    cp: &Cp,
    dir: &std::path::Path,
    homes: &[Home],
    id: i64,
    state: &str,
    limit: Duration,
) {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if rollout_state(&cp.url, id)["state"] == state {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let tail = |p: std::path::PathBuf| {
        let t = std::fs::read_to_string(&p).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        format!(
            "--- {} ---\n{}",
            p.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    };
    let mut logs = tail(dir.join("cp").join("serve.log"));
    for h in homes {
        logs.push_str(&tail(h.agent_log()));
    }
    panic!(
        "rollout {id} not {state} after {limit:?}:\n{:#}\n{:#}\n{logs}",
        rollout_state(&cp.url, id),
        Value::Array(agents(&cp.url))
    );
}

#[test]
fn a_rollout_goes_group_by_group_and_a_crashing_version_halts_at_the_canary() {
    let k = Kit::new();
    k.light_release(V1);
    k.light_release(V2);
    k.light_upgrade(V3);
    k.pack(
        &format!("molt-core.{V3}.universal.universal.zip"),
        &[
            ("bin/molt", CRASHING_AGENT.to_vec(), 0o755),
            ("lib/core.txt", V3.as_bytes().to_vec(), 0o644),
        ],
        PackOpts::default(),
    );
    let cp = serve(
        &k.dir.path().join("cp"),
        &k.packages_dir(),
        &["--fleet-version", V1],
    );

    // Only the six agents below: the kit's bootstrap agent never runs.
    admin(&cp.url, "DELETE", "/api/v1/admin/agents/a1", Value::Null);
    // Six agents on V1, labelled by site, each under its supervisor.
    let mut homes: Vec<Home> = Vec::new();
    for (name, site) in AGENTS {
        let token = format!("token-of-{name}-0123456789");
        admin(
            &cp.url,
            "POST",
            "/api/v1/admin/agents",
            json!({ "name": name, "token": token }),
        );
        let h = k.light_install(&k.dir.path().join(name), V1, &cp.url);
        molt_testkit::config::write_config(
            h.root(),
            &cp.url,
            name,
            &token,
            &format!(
                "handover_wait_secs = 20\nrun_precheck = false\ntest_download_backoff_ms = 10\nhealth_timeout_secs = 20\nlabels = {{ site = \"{site}\" }}\n"
            ),
        );
        homes.push(h);
    }
    let services: Vec<Service> = homes.iter().map(Service::start).collect();
    wait_for("six agents Up on V1 with their labels", T, || {
        all_up_on(&cp.url, V1)
            && agents(&cp.url)
                .iter()
                .filter(|a| a["labels"]["site"].is_string())
                .count()
                == AGENTS.len()
    });

    // Usage and refusals: no token is usage (2), an unknown rollout a refusal (1).
    let o = molt_testkit::bin::molt_cmd(&["fleet", "--url", &cp.url, "rollout", "status"])
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
    let mut args = vec!["rollout", "create", V2];
    for g in &groups {
        args.push("--group");
        args.push(g);
    }
    let (code, created, out) = fleet(&cp.url, &args);
    assert_eq!(code, 0, "{out}");
    let id = created["id"].as_i64().unwrap_or_else(|| panic!("{out}"));
    assert_eq!(created["state"], "Running", "{out}");
    wait_rollout(
        &cp,
        k.dir.path(),
        &homes,
        id,
        "Completed",
        Duration::from_secs(90),
    );
    wait_for("every agent Up on V2", T, || all_up_on(&cp.url, V2));
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
    let (code, created, out) = fleet(
        &cp.url,
        &[
            "rollout",
            "create",
            V3,
            "--group",
            "lon label.site=lon canary=1 max_in_flight=2 soak_secs=0",
            "--group",
            "rest canary=0 max_in_flight=2",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let bad = created["id"].as_i64().unwrap();
    wait_rollout(
        &cp,
        k.dir.path(),
        &homes,
        bad,
        "Halted",
        Duration::from_secs(180),
    );
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
    let html = dashboard(&cp.url);
    assert!(
        html.contains("id=\"rollout-state\">Halted<")
            && html.contains("lon-1 (")
            && html.contains("health check failed"),
        "the dashboard shows the halt and its reason:\n{html}"
    );
    let metrics = get_text(&format!("{}/metrics", cp.url));
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
    wait_for("the canary back Up on V2", T, || all_up_on(&cp.url, V2));

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
    wait_rollout(
        &cp,
        k.dir.path(),
        &homes,
        bad,
        "Halted",
        Duration::from_secs(120),
    );
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
    wait_for("the canary back Up on V2", T, || all_up_on(&cp.url, V2));
    assert!(all_up_on(&cp.url, V2), "{:?}", agents(&cp.url));
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
        let mut args = vec!["rollout", "create", version];
        for g in &gs {
            args.push("--group");
            args.push(g);
        }
        let (code, created, out) = fleet(&cp.url, &args);
        assert_eq!(code, 0, "{out}");
        created["id"].as_i64().unwrap_or_else(|| panic!("{out}"))
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
    let o = molt_testkit::bin::molt_cmd(&["fleet", "--url", &cp.url, "rollout", "status"])
        .env("MOLT_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(waiting), "{o:?}");
    let (code, _, out) = fleet(&cp.url, &["rollout", "abort", &closed.to_string()]);
    assert_eq!(code, 0, "{out}");
    let (code, _, out) = fleet(&cp.url, &["blocklist", "clear", V3]);
    assert_eq!(code, 0, "{out}");
    // With a window that includes now it proceeds (of V2, which every agent
    // runs already: each is admitted as done, no crash to wait for).
    let open = create(V2, "window=*@00:00-24:00+00:00");
    wait_rollout(
        &cp,
        k.dir.path(),
        &homes,
        open,
        "Completed",
        Duration::from_secs(15),
    );
    let (_, st, out) = fleet(&cp.url, &["rollout", "status", &open.to_string()]);
    assert_eq!(st["admitted"].as_array().map(Vec::len), Some(6), "{out}");
    assert!(st["waiting"].is_null(), "{out}");
    drop(services);
}

/// `molt fleet set-version|override|pin|issues|readiness`: `--json` from the
/// command's types, exit 0 done, 1 refused by the control plane, 2 usage.
#[test]
fn fleet_versions_issues_and_readiness_from_the_command_line() {
    let k = Kit::new();
    k.light_release(V1);
    k.light_release(V2);
    let cp = serve(
        &k.dir.path().join("cp"),
        &k.packages_dir(),
        &["--fleet-version", V1],
    );

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
    let o = molt_testkit::bin::molt_cmd(&["fleet", "--url", &cp.url, "readiness", V2])
        .env("MOLT_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && text.contains("0 Ready, 0 Not Ready, 1 Pending"),
        "{text}"
    );
    let o = molt_testkit::bin::molt_cmd(&["fleet", "--url", &cp.url, "set-version", V1])
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
