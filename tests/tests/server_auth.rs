//! Authentication failures and hostile bodies: refused with 4xx and a clear
//! message, nothing written, and the server keeps serving.

mod server_common;

use reqwest::StatusCode;
use serde_json::{Value, json};
use server_common::*;

async fn error_of(r: reqwest::Response) -> (StatusCode, String) {
    let st = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (st, body["error"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_foreign_and_wrong_role_tokens_are_refused_and_write_nothing() {
    let s = TestServer::start(|_| {}).await;
    let a = s.register("a1").await;
    let b = s.register("a2").await;
    s.set_fleet(Q2).await;

    // No token.
    let hb = json!({ "host": "h", "version": Q1, "status": "Up", "pid": 1 });
    let (st, msg) = error_of(
        s.post("/api/v1/agent/heartbeat")
            .json(&hb)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(msg.contains("Bearer"), "{msg}");
    assert_eq!(
        s.get("/api/v1/agent/assigned?os=linux&arch=x86-64")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // A made-up token, and a malformed header.
    let r = s
        .post_json("/api/v1/agent/heartbeat", "not-a-real-token-at-all", &hb)
        .await;
    assert_eq!(
        error_of(r).await,
        (StatusCode::UNAUTHORIZED, "unknown agent token".to_string())
    );
    let r = s
        .post("/api/v1/agent/heartbeat")
        .header("authorization", "Basic Zm9vOmJhcg==")
        .json(&hb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // a1 writes into a2's attempt and completes a2's command: 403.
    let b_attempt = s.open_attempt(&b, Q1, Q2).await;
    let stage = json!({ "stage": "Pre Upgrade Check", "state": "Failed", "message": "forged" });
    let r = s
        .post_json(
            &format!("/api/v1/agent/attempts/{b_attempt}/stages"),
            &a,
            &stage,
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .post_json(
            &format!("/api/v1/agent/attempts/{b_attempt}/finish"),
            &a,
            &json!({ "result": "Failed" }),
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = s
        .admin_post(
            "/api/v1/admin/agents/a2/commands",
            &json!({ "kind": "restart" }),
        )
        .await;
    let b_cmd = r.json::<Value>().await.unwrap()["command_id"]
        .as_i64()
        .unwrap();
    let r = s.command_done(&a, b_cmd, true, "forged").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let h = s.admin_get("/api/v1/admin/agents/a2/attempts").await;
    assert_eq!(
        (
            h[0]["stages"].as_array().unwrap().len(),
            h[0]["result"].is_null()
        ),
        (0, true),
        "{h}"
    );
    assert_eq!(
        s.admin_get("/api/v1/admin/commands?agent=a2").await[0]["state"],
        "Queued"
    );

    // An agent token on admin endpoints: 403; no token: 401; a wrong admin token: 401.
    for (req, want) in [
        (
            s.put("/api/v1/admin/fleet")
                .bearer_auth(&a)
                .json(&json!({ "version": Q3 })),
            StatusCode::FORBIDDEN,
        ),
        (
            s.put("/api/v1/admin/fleet").json(&json!({ "version": Q3 })),
            StatusCode::UNAUTHORIZED,
        ),
        (
            s.put("/api/v1/admin/fleet")
                .bearer_auth("wrong-admin-token-xxxxxxxx")
                .json(&json!({ "version": Q3 })),
            StatusCode::UNAUTHORIZED,
        ),
        (
            s.put("/api/v1/admin/fleet/override")
                .bearer_auth(&a)
                .json(&json!({ "version": Q1 })),
            StatusCode::FORBIDDEN,
        ),
        (
            s.post("/api/v1/admin/agents")
                .bearer_auth(&a)
                .json(&json!({ "name": "evil" })),
            StatusCode::FORBIDDEN,
        ),
        (
            s.post("/api/v1/admin/agents/a2/commands")
                .bearer_auth(&a)
                .json(&json!({ "kind": "restart" })),
            StatusCode::FORBIDDEN,
        ),
        (
            s.post("/api/v1/admin/purge").bearer_auth(&a),
            StatusCode::FORBIDDEN,
        ),
        (
            s.get("/api/v1/admin/agents").bearer_auth(&a),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let (st, msg) = error_of(req.send().await.unwrap()).await;
        assert_eq!(st, want, "{msg}");
        assert!(!msg.is_empty());
    }
    // The admin token cannot act as an agent.
    assert_eq!(
        s.admin_post("/api/v1/agent/heartbeat", &hb).await.status(),
        StatusCode::FORBIDDEN
    );
    // The dashboard without a session goes to the login form.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect
        .get(format!("{}/dashboard", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), r.headers()["location"].to_str().unwrap()),
        (StatusCode::SEE_OTHER, "/login")
    );
    let r = no_redirect
        .post(format!("{}/dashboard/agents/a1/upgrade", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);

    // Nothing was written by any refused call.
    assert_eq!(
        s.admin_get("/api/v1/admin/fleet").await,
        json!({ "version": Q2, "override": null })
    );
    let agents = s.admin_get("/api/v1/admin/agents").await;
    let names: Vec<&str> = strs(&agents, "name");
    assert_eq!(names, ["a1", "a2"]);
    assert!(
        agents
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["last_seen"].is_null())
    );
    assert_eq!(
        s.admin_get("/api/v1/admin/commands?agent=a1")
            .await
            .as_array()
            .unwrap()
            .len(),
        1,
        "only the autoUpgrade of the fleet change"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hundreds_of_garbage_requests_get_4xx_with_a_message_and_a_valid_one_still_works() {
    let s = TestServer::start(|_| {}).await;
    let a = s.register("a1").await;
    let huge = format!("{{\"host\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bodies: Vec<(&str, String, &str)> = vec![
        ("application/json", "".into(), "EOF"),
        ("application/json", "{".into(), ""),
        ("application/json", "not json".into(), ""),
        ("application/json", "[]".into(), ""),
        ("application/json", "null".into(), ""),
        (
            "application/json",
            "{\"host\": 5, \"version\": \"v\", \"status\": \"Up\", \"pid\": 1}".into(),
            "host",
        ),
        (
            "application/json",
            "{\"host\": \"h\", \"version\": \"v\", \"status\": \"Sideways\", \"pid\": 1}".into(),
            "Upgrade Failed",
        ),
        (
            "application/json",
            "{\"host\": \"h\", \"version\": \"v\", \"status\": \"Up\", \"pid\": \"one\"}".into(),
            "pid",
        ),
        (
            "application/json",
            "{\"host\": \"h\", \"version\": \"v\", \"status\": \"Up\"}".into(),
            "pid",
        ),
        (
            "application/json",
            "{\"host\": \"h\", \"version\": \"v\", \"status\": \"Up\", \"pid\": 1, \"extra\": 1}"
                .into(),
            "extra",
        ),
        (
            "application/json",
            "{\"host\": \"\", \"version\": \"v\", \"status\": \"Up\", \"pid\": 1}".into(),
            "host",
        ),
        (
            "application/json",
            "{\"host\": \"h\", \"version\": \"v\", \"status\": \"Up\", \"pid\": 1e999}".into(),
            "",
        ),
        ("application/json", "\u{0}\u{1}\u{2}".into(), ""),
        ("application/json", huge.clone(), "too large"),
        ("application/json", deep.clone(), ""),
        (
            "text/plain",
            "{\"host\": \"h\", \"version\": \"v\", \"status\": \"Up\", \"pid\": 1}".into(),
            "Content-Type",
        ),
        (
            "application/x-www-form-urlencoded",
            "host=h".into(),
            "Content-Type",
        ),
    ];
    let endpoints = [
        "/api/v1/agent/heartbeat",
        "/api/v1/agent/upgrade-slot",
        "/api/v1/agent/attempts",
        "/api/v1/agent/attempts/1/stages",
        "/api/v1/agent/attempts/abc/finish",
        "/api/v1/agent/issues",
        "/api/v1/agent/commands/1/done",
    ];
    let mut sent = 0;
    for round in 0..2 {
        for ep in endpoints {
            for (ct, body, needle) in &bodies {
                // Oversized bodies are refused from their length before being
                // read, so a client still sending sees a broken pipe: they are
                // checked below over raw TCP.
                if body.len() > 1024 * 1024 {
                    continue;
                }
                let r = s
                    .post(ep)
                    .bearer_auth(&a)
                    .header("content-type", *ct)
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let st = r.status();
                let (_, msg) = error_of(r).await;
                assert!(
                    st.is_client_error(),
                    "round {round} {ep} {ct} {:?}: {st}",
                    &body[..body.len().min(60)]
                );
                assert!(!msg.is_empty(), "{ep}: a 4xx names its reason");
                if ep == "/api/v1/agent/heartbeat" && !needle.is_empty() {
                    assert!(
                        msg.contains(needle),
                        "{ep} {:?}: {msg:?} lacks {needle:?}",
                        &body[..body.len().min(60)]
                    );
                }
                sent += 1;
            }
        }
    }
    // Wrongly typed queries and paths, and unknown routes.
    for path in [
        "/api/v1/agent/commands?wait=soon",
        "/api/v1/agent/assigned?os=linux",
        "/api/v1/nope",
        "/api/v1/admin/issues?state=Open",
    ] {
        let tok = if path.contains("admin") {
            s.admin.clone()
        } else {
            a.clone()
        };
        let r = s.get_as(path, &tok).await;
        assert!(r.status().is_client_error(), "{path}: {}", r.status());
        assert!(!error_of(r).await.1.is_empty(), "{path}");
        sent += 1;
    }
    for (path, len, limit) in [
        ("/api/v1/agent/heartbeat", 2 * 1024 * 1024, 1024 * 1024),
        ("/api/v1/agent/logs", 33 * 1024 * 1024, 32 * 1024 * 1024),
    ] {
        let answer = oversized(&s.url, path, &a, len, limit).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(answer.contains("too large"), "{path}: {answer}");
        sent += 1;
    }
    assert!(sent > 200, "{sent}");
    // Still serving, and nothing garbage got in.
    assert_eq!(s.heartbeat(&a, "h1", 42, "Up").await, StatusCode::OK);
    let agents = s.admin_get("/api/v1/admin/agents").await;
    assert_eq!(
        (agents[0]["host"].as_str(), agents[0]["pid"].as_i64()),
        (Some("h1"), Some(42))
    );
    assert_eq!(s.admin_get("/api/v1/admin/issues").await, json!([]));
    assert_eq!(
        s.admin_get("/api/v1/admin/agents/a1/attempts").await,
        json!([])
    );
}

/// Announces a body of `len` bytes over raw TCP and sends only `limit` + 64 KiB
/// of it, then reads the server's answer: it must refuse once past its limit
/// without waiting for the rest (a write error after the answer is ignored).
async fn oversized(url: &str, path: &str, token: &str, len: usize, limit: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(head.as_bytes()).await;
        let _ = wr.write_all(&vec![b' '; limit + 64 * 1024]).await;
        wr // keep the write half open: the body is never completed
    });
    let mut out = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(20), rd.read_to_end(&mut out)).await;
    drop(writer);
    String::from_utf8_lossy(&out).into_owned()
}
