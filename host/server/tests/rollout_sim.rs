//! A rollout through simulated agents (lightweight clients in this process
//! speaking the real agent HTTP API to a real in-process control plane): every
//! agent ends on the version, the groups go in order, and never more than the
//! rollout's max in flight (fleet-wide, lowered by a group's cap) attempts are
//! under way at once — asserted from the store's attempt timestamps; that same
//! number is the upgrade semaphore's limit in the store while the rollout runs,
//! and the `--max-concurrent-upgrades` default (2) is back once it completes.

use std::time::Duration;

use serde_json::{Value, json};

const V1: &str = "rome-06-23-2021__patch0-07-01-2021_07-10-2021_0900";
const V2: &str = "rome-06-23-2021__patch1-08-01-2021_08-10-2021_0900";
const ADMIN: &str = "admin-token-0123456789";
const AGENTS: usize = 999;
const IN_FLIGHT: usize = 50;
const B_CAP: usize = 30;
const UPGRADE_MS: u64 = 60;

async fn agent(url: String, token: String, site: &'static str) {
    let c = reqwest::Client::new();
    let mut version = V1.to_string();
    let hb = |version: &str| json!({"host": "sim", "version": version, "status": "Up", "pid": 1, "labels": {"site": site}});
    let auth = format!("Bearer {token}");
    let post = |path: &str, body: Value| {
        c.post(format!("{url}{path}"))
            .header("Authorization", &auth)
            .json(&body)
            .send()
    };
    post("/api/v1/agent/heartbeat", hb(&version)).await.unwrap();
    loop {
        let cmds: Vec<Value> = match c
            .get(format!("{url}/api/v1/agent/commands?wait=5"))
            .header("Authorization", &auth)
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => return,
        };
        for cmd in cmds {
            let assigned: Value = c
                .get(format!(
                    "{url}/api/v1/agent/assigned?os=universal&arch=universal"
                ))
                .header("Authorization", &auth)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let to = assigned["version"].as_str().unwrap().to_string();
            if to != version {
                loop {
                    let r = post("/api/v1/agent/upgrade-slot", json!({"to_version": to}))
                        .await
                        .unwrap();
                    if r.status().is_success() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let a: Value = post(
                    "/api/v1/agent/attempts",
                    json!({"from_version": version, "to_version": to}),
                )
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
                let id = a["attempt_id"].as_i64().unwrap();
                tokio::time::sleep(Duration::from_millis(UPGRADE_MS)).await;
                version = to;
                post("/api/v1/agent/heartbeat", hb(&version)).await.unwrap();
                post(
                    &format!("/api/v1/agent/attempts/{id}/finish"),
                    json!({"result": "Complete"}),
                )
                .await
                .unwrap();
            }
            post(
                &format!("/api/v1/agent/commands/{}/done", cmd["id"]),
                json!({"ok": true}),
            )
            .await
            .unwrap();
        }
        post("/api/v1/agent/heartbeat", hb(&version)).await.unwrap();
    }
}

async fn admin(c: &reqwest::Client, url: &str, method: &str, path: &str, body: Value) -> Value {
    let r = c
        .request(method.parse().unwrap(), format!("{url}{path}"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let st = r.status();
    let text = r.text().await.unwrap();
    assert!(st.is_success(), "{method} {path}: {st}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_agents_never_exceed_max_in_flight_and_go_group_by_group() {
    let d = tempfile::tempdir().unwrap();
    let pk = d.path().join("packages");
    std::fs::create_dir_all(&pk).unwrap();
    for v in [V1, V2] {
        for kind in ["core", "upgrade"] {
            std::fs::write(
                pk.join(format!("molt-{kind}.{v}.universal.universal.zip")),
                format!("{kind} {v}"),
            )
            .unwrap();
        }
    }
    let mut cfg =
        molt_server::Config::new(d.path().join("cp.db"), &pk, "127.0.0.1:0".parse().unwrap());
    cfg.admin_token = Some(ADMIN.into());
    cfg.fleet_version = Some(V1.into());
    cfg.rollout_tick = Duration::from_millis(100);
    cfg.max_concurrent_upgrades = 2;
    let server = molt_server::bind(cfg).await.unwrap();
    let url = server.url();
    let store = server.state().store.clone();
    tokio::spawn(server.run());

    let c = reqwest::Client::new();
    let sites = ["a", "b", "c"];
    let mut tasks = Vec::new();
    for i in 0..AGENTS {
        let name = format!("sim-{i:04}");
        let token = format!("token-{name}-0123456789");
        admin(
            &c,
            &url,
            "POST",
            "/api/v1/admin/agents",
            json!({"name": name, "token": token}),
        )
        .await;
        tasks.push(tokio::spawn(agent(url.clone(), token, sites[i % 3])));
    }
    // Every agent has reported its labels.
    for _ in 0..100 {
        let p = admin(
            &c,
            &url,
            "GET",
            "/api/v1/admin/fleet/agents?label=site=c&per_page=1",
            Value::Null,
        )
        .await;
        if p["total"] == AGENTS / 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Fleet-wide IN_FLIGHT; group b capped at B_CAP, the rest at 10% of its 333.
    let groups = json!([
        {"name": "a", "selector": {"site": "a"}, "canary": 2, "soak_secs": 1},
        {"name": "b", "selector": {"site": "b"}, "canary": 2, "max_in_flight": B_CAP, "soak_secs": 1},
        {"name": "rest", "canary": 2, "max_in_flight": "10%"}
    ]);
    let r = admin(
        &c,
        &url,
        "POST",
        "/api/v1/admin/rollouts",
        json!({"version": V2, "max_in_flight": IN_FLIGHT, "groups": groups}),
    )
    .await;
    let id = r["id"].as_i64().unwrap();
    let started = std::time::Instant::now();
    let mut limits_seen = std::collections::BTreeSet::new();
    loop {
        let r = admin(
            &c,
            &url,
            "GET",
            &format!("/api/v1/admin/rollouts/{id}"),
            Value::Null,
        )
        .await;
        if r["state"] == "Completed" {
            break;
        }
        if let Some(n) = r["semaphore_limit"].as_u64() {
            limits_seen.insert(n as usize);
        }
        assert_ne!(r["state"], "Halted", "{r:#}");
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "not completed: {r:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // From the store: each agent one Complete attempt; per group at most
    // max_in_flight attempts overlap; group k+1 starts after group k's last
    // completion plus the soak.
    let rollout = store.rollout(id).unwrap().unwrap();
    let admitted = store.rollout_agents(id).unwrap();
    let attempts = store.attempts_to(V2, rollout.created_at).unwrap();
    assert_eq!(attempts.len(), AGENTS);
    assert_eq!(admitted.len(), AGENTS);
    let rest = (AGENTS / 3 * 10).div_ceil(100);
    let limits = [IN_FLIGHT, B_CAP, rest];
    assert!(
        limits_seen.iter().all(|n| limits.contains(n)) && limits_seen.contains(&IN_FLIGHT),
        "the store's semaphore limit follows the current group: {limits_seen:?}"
    );
    assert_eq!(
        store.slot_limit().unwrap(),
        None,
        "completed: the --max-concurrent-upgrades default again"
    );
    // Fleet-wide, across groups.
    let mut all = Vec::new();
    for t in &attempts {
        all.push((t.started_at, 1i32));
        all.push((t.finished_at.unwrap(), -1));
    }
    all.sort();
    let (mut cur, mut max) = (0, 0);
    for (_, d) in &all {
        cur += d;
        max = max.max(cur);
    }
    assert!(
        max as usize <= IN_FLIGHT,
        "{max} attempts under way at once fleet-wide, max in flight {IN_FLIGHT}"
    );
    let mut spans = Vec::new();
    for (g, limit) in limits.into_iter().enumerate() {
        let ids: Vec<i64> = admitted
            .iter()
            .filter(|a| a.group == g)
            .map(|a| a.agent_id)
            .collect();
        assert_eq!(ids.len(), AGENTS / 3);
        let mut events = Vec::new();
        for t in attempts.iter().filter(|t| ids.contains(&t.agent_id)) {
            assert_eq!(t.result, Some(molt_protocol::AttemptResult::Complete));
            events.push((t.started_at, 1i32));
            events.push((t.finished_at.unwrap(), -1));
        }
        events.sort();
        let (mut cur, mut max) = (0, 0);
        for (_, d) in &events {
            cur += d;
            max = max.max(cur);
        }
        assert!(
            max as usize <= limit,
            "group {g}: {max} attempts under way at once, max {limit}"
        );
        assert!(max >= 2, "group {g} ran in parallel ({max})");
        spans.push((events.first().unwrap().0, events.last().unwrap().0));
    }
    for k in 1..3 {
        let soak = chrono::Duration::seconds(1);
        assert!(
            spans[k].0 >= spans[k - 1].1 + soak,
            "group {k} started before group {} ended + soak",
            k - 1
        );
    }
    let fleet = admin(&c, &url, "GET", "/api/v1/admin/fleet", Value::Null).await;
    assert_eq!(fleet["version"], V2);

    // The dashboard renders one page of agents from the store's sorted page,
    // and the version distribution.
    let dash = |q: &str| {
        let c = c.clone();
        let u = format!("{url}/dashboard{q}");
        async move {
            let r = c.get(u).bearer_auth(ADMIN).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
            r.text().await.unwrap()
        }
    };
    let html = dash("").await;
    assert!(html.len() < 200_000, "dashboard page {} bytes", html.len());
    let pages = AGENTS.div_ceil(50);
    assert!(html.contains(&format!("Page 1 of {pages}")), "paginated");
    assert!(
        html.contains("id=\"agent-sim-0000\"") && !html.contains("id=\"agent-sim-0050\""),
        "50 rows by name"
    );
    assert!(
        html.contains(&format!("{V2}</td>")) && html.contains(&format!("{AGENTS} (100.0%)")),
        "version chart"
    );
    let html = dash("?page=2&sort=name&desc=1").await;
    assert!(
        html.contains("id=\"agent-sim-0948\"") && !html.contains("id=\"agent-sim-0949\""),
        "page 2 of names descending starts after sim-0949"
    );
    let html = dash("?label=site%3Db&page=1").await;
    assert!(
        html.contains(&format!("id=\"agents-total\">{}<", AGENTS / 3)),
        "filtered by label in the store"
    );
    for t in tasks {
        t.abort();
    }
}
