//! The control plane's agent and admin API against a real server on
//! 127.0.0.1 with a real SQLite file.

mod server_common;

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE, RETRY_AFTER};
use serde_json::{Value, json};
use server_common::*;

async fn ask_slot(s: &TestServer, token: &str) -> reqwest::Response {
    s.post_json(
        "/api/v1/agent/upgrade-slot",
        token,
        &json!({ "to_version": Q2 }),
    )
    .await
}

/// What `assigned` answers `token` for `query`: `version` from `source`.
async fn assert_assigned(s: &TestServer, token: &str, query: &str, version: &str, source: &str) {
    let (_, v) = s.assigned(token, query).await;
    assert_eq!(
        (v["version"].as_str(), v["source"].as_str()),
        (Some(version), Some(source)),
        "{query}: {v}"
    );
}

/// A command's kind and its `version` argument.
fn kind_and_version(c: &Value) -> (Option<&str>, Option<&str>) {
    (c["kind"].as_str(), c["args"]["version"].as_str())
}

/// `GET path` with `Range: range`.
async fn get_range(s: &TestServer, path: &str, range: &str) -> reqwest::Response {
    s.get(path).header(RANGE, range).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_agents_ask_for_two_slots_the_third_waits_for_one_to_finish() {
    let (s, [a, b, c]) = TestServer::with_agents(["a1", "a2", "a3"]).await;
    assert_eq!(ask_slot(&s, &a).await.status(), StatusCode::OK);
    let rb = ask_slot(&s, &b).await;
    assert_eq!(rb.status(), StatusCode::OK);
    assert_eq!(rb.json::<Value>().await.unwrap()["lease_seconds"], 600);
    let rc = ask_slot(&s, &c).await;
    assert_eq!(rc.status(), StatusCode::CONFLICT);
    assert_eq!(rc.headers()[RETRY_AFTER], "20");
    let msg = rc.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("a1") && msg.contains("a2"), "{msg}");
    // Asking again while holding is not a second slot.
    assert_eq!(ask_slot(&s, &a).await.status(), StatusCode::OK);
    assert_eq!(ask_slot(&s, &c).await.status(), StatusCode::CONFLICT);
    // a1 finishes: a3 gets the slot.
    let r = s.delete_as("/api/v1/agent/upgrade-slot", &a).await;
    assert_eq!(r.json::<Value>().await.unwrap()["released"], true);
    assert_eq!(ask_slot(&s, &c).await.status(), StatusCode::OK);
    assert_eq!(ask_slot(&s, &a).await.status(), StatusCode::CONFLICT);
    let slots = s.admin_get("/api/v1/admin/upgrade-slots").await;
    assert_eq!(strs(&slots["holders"], "agent"), ["a2", "a3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_holder_that_stops_reporting_loses_its_slot_and_one_that_reports_keeps_it() {
    let s = TestServer::start(|c| {
        c.max_concurrent_upgrades = 2;
        c.lease_timeout = Duration::from_secs(300);
    })
    .await;
    let a = s.register("a1").await;
    let b = s.register("a2").await;
    let c = s.register("a3").await;
    assert_eq!(ask_slot(&s, &a).await.status(), StatusCode::OK);
    assert_eq!(ask_slot(&s, &b).await.status(), StatusCode::OK);
    s.clock.advance(Duration::from_secs(200));
    // a2 reports a stage of its attempt; a1 stays silent.
    let attempt = s.open_attempt(&b, Q1, Q2).await;
    let r = s
        .report_stage(&b, attempt, "Download Upgrade Packages", "In Progress", "")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(ask_slot(&s, &c).await.status(), StatusCode::CONFLICT);
    s.clock.advance(Duration::from_secs(150)); // a1 silent for 350 s > 300 s lease; a2 for 150 s
    assert_eq!(ask_slot(&s, &c).await.status(), StatusCode::OK);
    assert_eq!(ask_slot(&s, &a).await.status(), StatusCode::CONFLICT);
    // Finishing the attempt frees a2's slot.
    let r = s.finish_attempt(&b, attempt, "Complete", "upgraded").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(ask_slot(&s, &a).await.status(), StatusCode::OK);
}

fn finding(code: &str) -> Value {
    json!({ "code": code, "severity": "error", "description": format!("{code} detected"), "remediation": "fix it" })
}

async fn report(s: &TestServer, token: &str, source: &str, findings: Vec<Value>) -> Value {
    let r = s
        .post_json(
            "/api/v1/agent/issues",
            token,
            &json!({ "source": source, "findings": findings }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn issues_count_repeats_resolve_when_no_longer_reported_and_are_purged_after_30_days() {
    let (s, [a]) = TestServer::with_agents(["a1"]).await;
    report(
        &s,
        &a,
        "UpgradeCheck",
        vec![finding("DISK_SPACE"), finding("TEMP_DIR_BLOCKED")],
    )
    .await;
    let out = report(
        &s,
        &a,
        "UpgradeCheck",
        vec![finding("DISK_SPACE"), finding("TEMP_DIR_BLOCKED")],
    )
    .await;
    assert_eq!(
        (out["created"].as_i64(), out["incremented"].as_i64()),
        (Some(0), Some(2))
    );
    let issues = s.admin_get("/api/v1/admin/issues?agent=a1").await;
    assert!(
        issues
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["count"] == 2 && i["state"] == "New" && i["source"] == "UpgradeCheck")
    );
    // The next run no longer finds TEMP_DIR_BLOCKED: it is resolved automatically.
    let out = report(&s, &a, "UpgradeCheck", vec![finding("DISK_SPACE")]).await;
    assert_eq!(out["auto_resolved"], 1);
    // A report from another source leaves UpgradeCheck issues alone.
    report(&s, &a, "Diagnose", vec![]).await;
    let open = s.admin_get("/api/v1/admin/issues?open=true").await;
    let open: Vec<(&str, i64)> = open
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["code"].as_str().unwrap(), i["count"].as_i64().unwrap()))
        .collect();
    assert_eq!(open, [("DISK_SPACE", 3)]);
    let resolved = s.admin_get("/api/v1/admin/issues?state=Resolved").await;
    assert_eq!(resolved[0]["code"], "TEMP_DIR_BLOCKED");
    let disk_id = s.admin_get("/api/v1/admin/issues?open=true").await[0]["id"]
        .as_i64()
        .unwrap();
    let r = s
        .post(&format!("/api/v1/admin/issues/{disk_id}/acknowledge"))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["state"], "Acknowledged");
    // Acknowledged still counts repeats.
    report(&s, &a, "UpgradeCheck", vec![finding("DISK_SPACE")]).await;
    assert_eq!(
        s.admin_get("/api/v1/admin/issues?open=true").await[0]["count"],
        4
    );

    // 29 days on nothing is purged; DISK_SPACE is detected again then. After
    // 31 days the resolved issue is purged, and so is an open one (the seeds
    // purge issues not detected for 30 days, whatever their state).
    s.clock.advance(Duration::from_secs(29 * 86400));
    let purge = async |s: &TestServer| {
        let r = s.admin_post("/api/v1/admin/purge", &Value::Null).await;
        r.json::<Value>().await.unwrap()["purged"].clone()
    };
    assert_eq!(purge(&s).await, 0);
    report(&s, &a, "Diagnose", vec![finding("STALE_OPEN")]).await;
    s.clock.advance(Duration::from_secs(86400));
    report(&s, &a, "UpgradeCheck", vec![finding("DISK_SPACE")]).await;
    s.clock.advance(Duration::from_secs(86400));
    assert_eq!(purge(&s).await, 1);
    let all = s.admin_get("/api/v1/admin/issues").await;
    let codes: Vec<&str> = strs(&all, "code");
    assert_eq!(codes, ["DISK_SPACE", "STALE_OPEN"], "{all}");
    // 30 days after its last detection, the still-open STALE_OPEN goes too.
    s.clock.advance(Duration::from_secs(28 * 86400 + 43200));
    assert_eq!(purge(&s).await, 1);
    let all = s.admin_get("/api/v1/admin/issues").await;
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all[0]["code"], "DISK_SPACE");

    // Everything is in the SQLite file: a restarted server sees it.
    let clock = s.clock.clone();
    let dir = s.stop();
    let s = TestServer::start_in(dir, |c| c.clock = clock).await;
    assert_eq!(s.admin_get("/api/v1/admin/issues").await[0]["count"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commands_version_is_answered_for_that_version_if_its_packages_are_served() {
    let (s, [a]) = TestServer::with_agents(["a1"]).await;
    s.set_fleet(Q2).await;
    // Readiness of the next version: that version's packages and precheck.
    let (st, v) = s
        .assigned(&a, &format!("os=linux&arch=x86-64&version={Q3}"))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["version"].as_str(), v["source"].as_str()),
        (Some(Q3), Some("requested"))
    );
    let precheck = v["precheck"]["name"].as_str().unwrap();
    assert!(precheck.contains(Q3), "{v}");
    // The fleet assignment is unchanged.
    let (_, v) = s.assigned(&a, "os=linux&arch=x86-64").await;
    assert_eq!(v["version"], Q2);
    // Only versions the packages directory serves.
    let rome = "rome-06-23-2021__patch0-07-01-2021_07-10-2021_0900";
    let (st, v) = s
        .assigned(&a, &format!("os=linux&arch=x86-64&version={rome}"))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    assert!(v["error"].as_str().unwrap().contains(rome), "{v}");
    let (st, v) = s
        .assigned(&a, "os=linux&arch=x86-64&version=not-a-buildstamp")
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_pin_beats_the_override_which_beats_the_fleet_and_a_new_fleet_clears_the_override()
 {
    let (s, [a]) = TestServer::with_agents(["a1"]).await;
    let (st, body) = s.assigned(&a, "os=linux&arch=x86-64").await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    s.set_fleet(Q2).await;
    let (st, v) = s.assigned(&a, "os=linux&arch=x86-64").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (v["version"].as_str(), v["source"].as_str()),
        (Some(Q2), Some("fleet"))
    );
    let r = s
        .admin_put("/api/v1/admin/fleet/override", &json!({ "version": Q1 }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_assigned(&s, &a, "os=linux&arch=x86-64", Q1, "override").await;
    assert_assigned(
        &s,
        &a,
        &format!("os=linux&arch=x86-64&pinned={Q3}"),
        Q3,
        "pin",
    )
    .await;
    // A new fleet buildstamp clears the override and queues autoUpgrade.
    s.set_fleet(Q3).await;
    let fleet = s.admin_get("/api/v1/admin/fleet").await;
    assert_eq!(fleet, json!({ "version": Q3, "override": null }));
    assert_assigned(&s, &a, "os=linux&arch=x86-64", Q3, "fleet").await;
    assert_assigned(
        &s,
        &a,
        &format!("os=linux&arch=x86-64&pinned={Q1}"),
        Q1,
        "pin",
    )
    .await;
    let cmds = s.commands(&a, 0).await;
    let cmds = cmds.as_array().unwrap();
    assert_eq!(cmds.len(), 1, "one pending autoUpgrade per agent: {cmds:?}");
    assert_eq!(kind_and_version(&cmds[0]), (Some("autoUpgrade"), Some(Q3)));
    // A version whose packages are missing cannot become the fleet version.
    let r = s
        .admin_put(
            "/api/v1/admin/fleet",
            &json!({ "version": "rome-06-23-2021__patch0-07-01-2021_07-10-2021_0900" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text().await.unwrap().contains(
        "molt-core.rome-06-23-2021__patch0-07-01-2021_07-10-2021_0900.universal.universal.zip"
    ));
    // Text that is not a buildstamp is refused with the parser's reason.
    let r = s
        .admin_put(
            "/api/v1/admin/fleet",
            &json!({ "version": "quebec-latest" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let msg = r.text().await.unwrap();
    assert!(
        msg.contains("Not a valid package buildstamp") && msg.contains("quebec-latest"),
        "{msg}"
    );
    assert_eq!(s.admin_get("/api/v1/admin/fleet").await["version"], Q3);
}

#[tokio::test(flavor = "multi_thread")]
async fn assigned_packages_carry_urls_sizes_and_digests_and_skip_an_installed_runtime() {
    let (s, [a]) = TestServer::with_agents(["a1"]).await;
    s.set_fleet(Q2).await;
    let (st, v) = s.assigned(&a, "os=linux&arch=x86-64").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(strs(&v["packages"], "kind"), ["upgrade", "core", "runtime"]);
    for p in v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&v["precheck"], &v["selector"]])
    {
        let url = p["url"].as_str().unwrap();
        assert!(url.starts_with(&format!("{}/packages/", s.url)), "{url}");
        let body = s
            .client
            .get(url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(body.len() as u64, p["size"].as_u64().unwrap());
        assert_eq!(sha256(&body), p["sha256"].as_str().unwrap());
    }
    assert_eq!(
        v["precheck"]["name"],
        format!("molt-precheck.{Q2}.universal.universal.zip")
    );
    // The agent already runs this runtime: it is not assigned again.
    let (_, v) = s
        .assigned(&a, &format!("os=linux&arch=x86-64&runtime={Q2}"))
        .await;
    assert_eq!(strs(&v["packages"], "kind"), ["upgrade", "core"]);
    // No runtime built for this platform: core and upgrade only.
    let (_, v) = s.assigned(&a, "os=linux&arch=aarch64").await;
    assert_eq!(v["packages"].as_array().unwrap().len(), 2);
    // A bad os value is refused with the field named.
    let (st, v) = s.assigned(&a, "os=linux/../x&arch=x86-64").await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(v["error"].as_str().unwrap().contains("`os`"));
    let (st, v) = s.assigned(&a, "arch=x86-64").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("`os`"));
}

#[tokio::test(flavor = "multi_thread")]
async fn package_urls_point_at_an_external_base_when_configured() {
    let s =
        TestServer::start(|c| c.package_base_url = Some("https://cdn.example.test/molt/".into()))
            .await;
    let a = s.register("a1").await;
    s.set_fleet(Q2).await;
    let (_, v) = s.assigned(&a, "os=linux&arch=x86-64").await;
    assert_eq!(
        v["packages"][1]["url"],
        format!("https://cdn.example.test/molt/molt-core.{Q2}.universal.universal.zip")
    );
}

/// A package file cut short while it is being served (replaced by a careless
/// copy, a full disk on the mirror) must not be passed off as complete: the body
/// ends early, so the agent sees a short transfer and resumes or starts over.
#[tokio::test(flavor = "multi_thread")]
async fn a_package_truncated_while_served_ends_the_transfer_short() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start(|_| {}).await;
    let v = "tokyo-01-01-2024__patch0-01-01-2024_01-01-2024_0000";
    let len = 48 << 20; // far more than loopback socket buffers hold
    write_package(
        &packages_dir(s.dir.path()),
        "core",
        v,
        "universal",
        "universal",
        len,
    );
    let name = format!("molt-core.{v}.universal.universal.zip");
    let addr = s.url.trim_start_matches("http://").to_string();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    c.write_all(format!("GET /packages/{name} HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Read the head and a little of the body, then stop reading: the server
    // fills the socket buffers and waits.
    let mut got = vec![0u8; 64 * 1024];
    c.read_exact(&mut got).await.unwrap();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    assert!(head.contains(&format!("content-length: {len}")), "{head}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(packages_dir(s.dir.path()).join(&name))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    // The rest: the connection closes before the advertised length.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut rest))
        .await
        .expect("the server ends the connection");
    let body = got.len() - head_end + rest.len();
    assert!(read.is_ok() || body < len, "{read:?}");
    assert!(
        body < len,
        "served {body} of {len} bytes of a truncated file as complete"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_resumes_with_range_requests() {
    let s = TestServer::start(|_| {}).await;
    let bytes = write_package(
        &packages_dir(s.dir.path()),
        "core",
        "tokyo-01-01-2024__patch0-01-01-2024_01-01-2024_0000",
        "universal",
        "universal",
        1_000_000,
    );
    let url = "/packages/molt-core.tokyo-01-01-2024__patch0-01-01-2024_01-01-2024_0000.universal.universal.zip";
    // First part of an interrupted download …
    let r = get_range(&s, url, "bytes=0-399999").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes 0-399999/1000000");
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    let mut got = r.bytes().await.unwrap().to_vec();
    // … then the rest.
    let r = get_range(&s, url, &format!("bytes={}-", got.len())).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes 400000-999999/1000000");
    got.extend_from_slice(&r.bytes().await.unwrap());
    assert_eq!(sha256(&got), sha256(&bytes));
    // Suffix range, unsatisfiable range, no range.
    let r = get_range(&s, url, "bytes=-10").await;
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        &bytes[bytes.len() - 10..]
    );
    let r = get_range(&s, url, "bytes=1000000-").await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes */1000000");
    let r = s.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), 1_000_000);
    // If-Range with a stale validator gets the whole (changed) file.
    let r = s
        .get(url)
        .header(RANGE, "bytes=0-9")
        .header("if-range", "\"stale\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Not a package name, and a traversal attempt: 404.
    assert_eq!(
        s.get("/packages/secret.txt").send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get("/packages/..%2Fcp.db").send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_poll_returns_when_a_command_is_queued_and_grab_logs_round_trips() {
    let (s, [a, _b]) = TestServer::with_agents(["a1", "a2"]).await;
    assert_eq!(s.heartbeat(&a, "h1", 100, "Up").await, StatusCode::OK);
    let poll = {
        let c = s.client.clone();
        let url = format!("{}/api/v1/agent/commands?wait=30", s.url);
        let a = a.clone();
        tokio::spawn(async move {
            c.get(url)
                .bearer_auth(a)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    // Give the poll a moment to park; a command queued earlier is found anyway.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = s.queue("a1", json!({ "kind": "grabLogs" })).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let cmds = tokio::time::timeout(Duration::from_secs(25), poll)
        .await
        .expect("poll answered before its wait")
        .unwrap();
    assert_eq!(cmds[0]["kind"], "grabLogs");
    let id = cmds[0]["id"].as_i64().unwrap();
    // The agent uploads its log and reports the command done.
    let log = "2026-01-01 Checking to see if MID server needs to upgrade.\n".repeat(1000);
    let r = s
        .post("/api/v1/agent/logs")
        .bearer_auth(&a)
        .body(log.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = s.command_done(&a, id, true, "uploaded").await;
    assert_eq!(r.status(), StatusCode::OK);
    let logs = s.admin_get("/api/v1/admin/agents/a1/logs").await;
    let log_id = logs[0]["id"].as_i64().unwrap();
    let text = s
        .get_as(&format!("/api/v1/admin/logs/{log_id}"), &s.admin)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(text, log);
    let cmds = s.admin_get("/api/v1/admin/commands?agent=a1").await;
    assert_eq!(
        (cmds[0]["state"].as_str(), cmds[0]["message"].as_str()),
        (Some("Done"), Some("uploaded"))
    );
    // A command for an agent that is Down waits, queued, until it polls again.
    let r = s.queue("a2", json!({ "kind": "restart" })).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let agents = s.admin_get("/api/v1/admin/agents").await;
    assert_eq!(
        agents
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "a2")
            .unwrap()["status"],
        "Down"
    );
    assert_eq!(
        s.admin_get("/api/v1/admin/commands?agent=a2").await[0]["state"],
        "Queued"
    );
    // An empty poll answers [] after its wait.
    assert_eq!(s.commands(&a, 1).await, json!([]));
    // runPrecheck needs the version whose checks to run.
    let r = s.queue("a1", json!({ "kind": "runPrecheck" })).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_shows_which_agents_would_fail_the_next_versions_checks() {
    let (s, [a, b, _c]) = TestServer::with_agents(["a1", "a2", "a3"]).await;
    let r = s
        .admin_post("/api/v1/admin/readiness", &json!({ "version": Q3 }))
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    for (token, ok) in [(&a, true), (&b, false)] {
        let cmds = s.commands(token, 0).await;
        assert_eq!(kind_and_version(&cmds[0]), (Some("runPrecheck"), Some(Q3)));
        let id = cmds[0]["id"].as_i64().unwrap();
        let msg = if ok {
            "all checks passed"
        } else {
            "DISK_SPACE: 120 MiB free, 800 MiB needed"
        };
        s.post_json(
            &format!("/api/v1/agent/commands/{id}/done"),
            token,
            &json!({ "ok": ok, "message": msg }),
        )
        .await;
    }
    let ready = s
        .admin_get(&format!("/api/v1/admin/readiness?version={Q3}"))
        .await;
    assert_eq!(
        pairs(&ready, "agent", "readiness"),
        [("a1", "Ready"), ("a2", "Not Ready"), ("a3", "Pending")]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_live_agents_with_one_name_are_flagged_with_an_agent_registry_issue() {
    let (s, [a]) = TestServer::with_agents(["a1"]).await;
    for (host, pid) in [("h1", 10), ("h2", 20), ("h1", 10), ("h2", 20)] {
        assert_eq!(s.heartbeat(&a, host, pid, "Up").await, StatusCode::OK);
    }
    let agents = s.admin_get("/api/v1/admin/agents").await;
    assert_eq!(agents[0]["duplicate"], true);
    let issues = s.admin_get("/api/v1/admin/issues?open=true").await;
    assert_eq!(
        (issues[0]["source"].as_str(), issues[0]["code"].as_str()),
        (Some("AgentRegistry"), Some("DuplicateAgentName"))
    );
    // The second process stops; after the liveness window the flag and issue clear.
    s.clock.advance(Duration::from_secs(300));
    assert_eq!(s.heartbeat(&a, "h2", 20, "Up").await, StatusCode::OK);
    assert_eq!(
        s.admin_get("/api/v1/admin/agents").await[0]["duplicate"],
        false
    );
    assert_eq!(
        s.admin_get("/api/v1/admin/issues?open=true").await,
        json!([])
    );
    // Agents may not report under the reserved source.
    let r = s
        .post_json(
            "/api/v1/agent/issues",
            &a,
            &json!({ "source": "AgentRegistry", "findings": [] }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // A severity is one of the protocol's words, not free text.
    let mut odd = finding("ODD");
    odd["severity"] = json!("critical");
    let r = s
        .post_json(
            "/api/v1/agent/issues",
            &a,
            &json!({ "source": "UpgradeCheck", "findings": [odd] }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = r.text().await.unwrap_or_default();
    assert!(body.contains("critical"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_history_records_each_stage_of_each_attempt() {
    let (s, [a]) = TestServer::with_agents(["a1"]).await;
    let id = s.open_attempt(&a, Q1, Q2).await;
    let stages = [
        ("Pre Upgrade Check", "In Progress"),
        ("Pre Upgrade Check", "Complete"),
        ("Download Upgrade Packages", "Complete"),
        ("Extract Upgrade Packages", "Complete"),
        ("MigrateTrustStore", "Skipped"),
        ("Deploy Binary Files", "Complete"),
        ("Reinstall Service", "Skipped"),
        ("Restart", "Complete"),
        ("Health Check", "Failed"),
    ];
    for (stage, state) in stages {
        let r = s.post_json(&format!("/api/v1/agent/attempts/{id}/stages"), &a, &json!({ "stage": stage, "state": state, "message": format!("{stage}: {state}"), "at": "2026-01-01T10:00:00Z" })).await;
        assert_eq!(r.status(), StatusCode::OK, "{stage}");
    }
    s.finish_attempt(&a, id, "Rolled Back", "health check failed")
        .await;
    let h = s.admin_get("/api/v1/admin/agents/a1/attempts").await;
    assert_eq!(h[0]["result"], "Rolled Back");
    let got = pairs(&h[0]["stages"], "stage", "state");
    assert_eq!(got.len(), 8);
    assert_eq!(got[0], ("Pre Upgrade Check", "Complete"));
    assert_eq!(got[7], ("Health Check", "Failed"));
    // A stage name outside the seeds' vocabulary is refused with the choices listed.
    let r = s
        .post_json(
            &format!("/api/v1/agent/attempts/{id}/stages"),
            &a,
            &json!({ "stage": "Reticulate", "state": "Complete" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text().await.unwrap().contains("Pre Upgrade Check"));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_prometheus_text() {
    let (s, [a]) = TestServer::with_agents(["a1"]).await;
    s.heartbeat(&a, "h1", 1, "Up").await;
    s.post_json(
        "/api/v1/agent/issues",
        &a,
        &json!({ "source": "UpgradeCheck", "findings": [finding("X")] }),
    )
    .await;
    ask_slot(&s, &a).await;
    let text = get_text(&s.client, &format!("{}/metrics", s.url)).await;
    for line in [
        "molt_http_requests_total{method=\"POST\",route=\"/api/v1/agent/heartbeat\",status=\"200\"} 1",
        "molt_agents{status=\"Up\"} 1",
        "molt_upgrade_slots_held 1",
        "molt_issues_open{state=\"New\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}
