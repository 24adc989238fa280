//! The dashboard in a real headless Chromium (Debian's `chromium`): log in,
//! click Acknowledge, Grab logs, Upgrade and Resolve, take screenshots, and
//! check both the page and the server's state.

mod server_common;

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};
use server_common::*;

fn require_tool(path: &str, install: &str) {
    let ok = Command::new(path)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{path} is needed for the dashboard browser test; install it with: {install}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_logs_in_acknowledges_and_resolves_an_issue_and_queues_grab_logs_and_upgrade() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    require_tool(&chromium, "apt-get install -y chromium");
    require_tool("node", "apt-get install -y nodejs (Node 20 or newer)");

    let s = TestServer::start(|_| {}).await;
    let a = s.register("a1").await;
    let _b = s.register("a2").await;
    // 60 agents: the table shows 50 a page.
    let mut tokens = Vec::new();
    for i in 0..58 {
        tokens.push(s.register(&format!("b{i:02}")).await);
    }
    s.set_fleet(Q2).await;
    // Pins: a2 by the control plane (`molt fleet pin`), b00 by its own config
    // (the `pinned` its assignment request carries).
    let r = s
        .admin_put("/api/v1/admin/agents/a2/pin", &json!({ "version": Q1 }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (st, answer) = s
        .assigned(&tokens[0], &format!("os=linux&arch=x86-64&pinned={Q1}"))
        .await;
    assert_eq!(
        (st, answer["source"].as_str()),
        (StatusCode::OK, Some("pin"))
    );
    let agents = s.admin_get("/api/v1/admin/agents").await;
    let pins: Vec<(String, Value, Value)> = agents
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| !a["pin"].is_null() || !a["own_pin"].is_null())
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["pin"].clone(),
                a["own_pin"].clone(),
            )
        })
        .collect();
    assert_eq!(
        pins,
        vec![
            ("a2".to_string(), json!(Q1), Value::Null),
            ("b00".to_string(), Value::Null, json!(Q1)),
        ]
    );
    assert_eq!(
        s.heartbeat(&a, "host-one", 4242, "Up").await,
        StatusCode::OK
    );
    // b00 is Up too: only its pin keeps it out of the rollout's readiness gate.
    assert_eq!(
        s.heartbeat(&tokens[0], "host-b00", 4300, "Up").await,
        StatusCode::OK
    );
    // An issue whose text tries to inject markup: it must show as text.
    let r = s.post_json("/api/v1/agent/issues", &a, &json!({ "source": "UpgradeCheck", "findings": [
            { "code": "TEMP_DIR_BLOCKED", "severity": "error", "description": "<script>document.title='pwned'</script> temp dir not writable", "remediation": "allow writes to work/upgrade_temp" }
        ] })).await;
    assert_eq!(r.status(), StatusCode::OK);
    let issue_id = s.admin_get("/api/v1/admin/issues").await[0]["id"]
        .as_i64()
        .unwrap();
    // One attempt with a stage timeline.
    let attempt = s.open_attempt(&a, Q1, Q2).await;
    for (stage, state) in [
        ("Pre Upgrade Check", "Complete"),
        ("Download Upgrade Packages", "Complete"),
        ("Extract Upgrade Packages", "In Progress"),
    ] {
        s.report_stage(&a, attempt, stage, state, "ok").await;
    }
    s.admin_post("/api/v1/admin/readiness", &json!({ "version": Q3 }))
        .await;
    // A rollout of Q3 gated on readiness: a1 (the one Up agent) is Pending, so
    // the rollout waits and says who blocks.
    s.admin_post(
        "/api/v1/admin/rollouts",
        &json!({"version": Q3, "readiness_gate": 1.0, "groups": [{"name": "all", "canary": 1}]}),
    )
    .await;
    let mut waiting = String::new();
    for _ in 0..100 {
        waiting = s.admin_get("/api/v1/admin/rollouts").await["waiting"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !waiting.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        waiting.contains("waiting for readiness of group all: 0 of 1 agents Ready")
            && waiting.contains("a1 (precheck pending)")
            && !waiting.contains("b00"),
        "{waiting}"
    );
    // The pinned agents are counted apart: pinned, not in the rollout.
    let group = &s.admin_get("/api/v1/admin/rollouts").await["group_progress"][0];
    assert_eq!(
        (&group["agents"], &group["pinned"], &group["waiting"]),
        (&json!(58), &json!(2), &json!(58)),
        "{group}"
    );

    let out = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/dashboard.mjs");
    let (url, admin, outp) = (s.url.clone(), s.admin.clone(), out.path().to_path_buf());
    let chromium2 = chromium.clone();
    let result = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("--experimental-websocket")
            .arg(script)
            .args([
                url.as_str(),
                admin.as_str(),
                outp.to_str().unwrap(),
                &issue_id.to_string(),
                "a1",
                "a2,b00",
            ])
            .env("CHROMIUM", chromium2)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        result.status.success(),
        "browser script failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let seen: Value = serde_json::from_slice(&result.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&result.stdout)));
    let t = |k: &str| seen[k].as_str().unwrap_or_default().to_string();

    assert_eq!(t("redirectedTo"), "/login", "{seen}");
    assert_eq!(t("afterLogin"), "/dashboard");
    assert_eq!(seen["agentRows"], 50, "one page of the 60 agents");
    assert_eq!(t("agentsTotal"), "60");
    assert!(t("agentsPageText").contains("Page 1 of 2"), "{seen}");
    assert!(
        t("rolloutWaiting").contains("a1 (precheck pending)")
            && t("rolloutText").contains("Running"),
        "{seen}"
    );
    let bars: Vec<String> = seen["versionBars"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b.as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        bars.iter()
            .any(|b| b.contains("(not reported)") && b.contains("58"))
            && bars
                .iter()
                .any(|b| b.contains(Q1) && b.contains("2 (3.3%)")),
        "{bars:?}"
    );
    assert!(t("agentsPage2Text").contains("Page 2 of 2"), "{seen}");
    assert_eq!(seen["agentRowsPage2"], 10);
    assert_eq!(t("sortedDescFirst"), "agent-b57", "name descending");
    assert_eq!(
        seen["filteredRows"],
        json!(["agent-b00", "agent-a1"]),
        "filtered on the server, still name descending"
    );
    assert!(
        t("agentRowText").contains("host-one") && t("agentRowText").contains("Up"),
        "{}",
        t("agentRowText")
    );
    assert!(
        t("issueRowText").contains("TEMP_DIR_BLOCKED") && t("issueRowText").contains("<script>"),
        "{}",
        t("issueRowText")
    );
    assert!(t("fleetText").contains(Q2));
    // Pins in the agents table (with their source), on the agent's page and
    // in the rollout's groups.
    assert!(
        t("pinCell-a2").contains("pinned · control plane") && t("pinCell-a2").contains(Q1),
        "{seen}"
    );
    assert!(
        t("pinCell-b00").contains("pinned · agent config") && t("pinCell-b00").contains(Q1),
        "{seen}"
    );
    assert_eq!(t("pinCell-a1"), "", "a1 is not pinned");
    assert!(
        t("agentPage-a2").contains(&format!("Pinned to {Q1} (source: control plane)")),
        "{seen}"
    );
    assert!(
        t("agentPage-b00").contains(&format!("Pinned to {Q1} (source: agent config)")),
        "{seen}"
    );
    assert_eq!(seen["rolloutPinned"], json!(["2"]), "{seen}");
    assert!(
        t("readinessText").contains("Pending"),
        "{}",
        t("readinessText")
    );
    assert!(
        t("flashAfterAck").contains("acknowledged"),
        "{}",
        t("flashAfterAck")
    );
    assert!(t("issueRowAfterAck").contains("Acknowledged"));
    assert!(t("flashAfterGrabLogs").contains("Grab logs queued for a1"));
    assert_eq!(t("pathAfterGrabLogs"), "/dashboard/agents/a1");
    assert!(
        t("flashAfterUpgrade").contains("Upgrade queued for a1"),
        "{}",
        t("flashAfterUpgrade")
    );
    assert!(t("flashAfterResolve").contains("resolved"));
    assert!(
        seen["issueRowAfterResolve"].is_null(),
        "resolved issues leave the open list"
    );
    assert_eq!(
        seen["stages"],
        json!([
            "Pre Upgrade Check",
            "Download Upgrade Packages",
            "Extract Upgrade Packages"
        ])
    );
    assert_eq!(
        seen["stageStates"],
        json!(["Complete", "Complete", "In Progress"])
    );
    assert!(t("commandsText").contains("grabLogs") && t("commandsText").contains("upgrade"));
    assert_eq!(seen["injected"], 0, "stored text must never become markup");
    assert!(!t("title").contains("pwned"));
    for shot in [
        "screenshotDashboard",
        "screenshotAfterActions",
        "screenshotAgent",
        "screenshotAgentsSorted",
    ] {
        let bytes = std::fs::read(t(shot)).unwrap();
        assert!(
            bytes.len() > 5000 && bytes.starts_with(b"\x89PNG"),
            "{shot} is a real PNG"
        );
    }
    if let Ok(keep) = std::env::var("MOLT_KEEP_SCREENSHOTS") {
        for f in [
            "dashboard.png",
            "dashboard-after-actions.png",
            "agent.png",
            "dashboard-agents-sorted.png",
        ] {
            let _ = std::fs::copy(out.path().join(f), Path::new(&keep).join(f));
        }
    }

    // The clicks changed the server's state.
    let issue = &s.admin_get("/api/v1/admin/issues").await[0];
    assert_eq!(issue["state"], "Resolved");
    let cmds = s.admin_get("/api/v1/admin/commands?agent=a1").await;
    let kinds: Vec<&str> = strs(&cmds, "kind");
    assert!(
        kinds.contains(&"grabLogs") && kinds.contains(&"upgrade"),
        "{kinds:?}"
    );
    let upgrade = cmds
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "upgrade")
        .unwrap();
    assert_eq!(upgrade["args"]["version"], Q2);
}
