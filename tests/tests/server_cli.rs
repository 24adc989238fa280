//! `molt serve` as operators start it (the real binary), and HTTPS via rustls.

mod server_common;

use std::process::Command;
use std::time::Duration;

use molt_e2e::agent_fx::molt_bin;
use molt_e2e::kit::serve;
use reqwest::StatusCode;
use serde_json::{Value, json};
use server_common::*;

#[tokio::test(flavor = "multi_thread")]
async fn molt_serve_starts_prints_its_address_generates_an_admin_token_and_serves_agents() {
    let dir = tempfile::tempdir().unwrap();
    let pk = packages_dir(dir.path());
    write_release(&pk, Q2);
    let db = dir.path().join("cp.db");
    let agent_token = "agent-token-for-a1-0123456789";
    let mut cmd = serve::command();
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--fleet-version",
        Q2,
        "--max-concurrent-upgrades",
        "1",
    ])
    .arg("--db")
    .arg(&db)
    .arg("--packages")
    .arg(&pk)
    .arg("--bootstrap-agent")
    .arg(format!("a1:{agent_token}"));
    let log = dir.path().join("serve.log");
    let (server, url) = serve::listening(cmd, "serve", &log, Duration::from_secs(30));
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let c = reqwest::Client::new();
    let r = c
        .get(format!("{url}/api/v1/agent/assigned?os=linux&arch=x86-64"))
        .bearer_auth(agent_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["version"].as_str(), v["source"].as_str()),
        (Some(Q2), Some("fleet"))
    );
    // The admin token was generated next to the database, private to its owner.
    let token_file = dir.path().join("cp.db.admin-token");
    let admin = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let r = c
        .get(format!("{url}/api/v1/admin/agents"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()[0]["name"], "a1");
    let r = c
        .post(format!("{url}/api/v1/agent/upgrade-slot"))
        .bearer_auth(agent_token)
        .json(&json!({ "to_version": Q2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let metrics = get_text(&c, &format!("{url}/metrics")).await;
    assert!(metrics.contains("molt_upgrade_slots_max 1"), "{metrics}");
    drop(server);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("admin token generated and written to file"),
        "{logs}"
    );
}

#[tokio::test]
async fn molt_serve_refuses_a_missing_packages_directory_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let d = dir.path().to_path_buf();
        move || {
            Command::new(molt_bin())
                .args(["serve", "--listen", "127.0.0.1:0", "--admin-token", ADMIN])
                .arg("--db")
                .arg(d.join("cp.db"))
                .arg("--packages")
                .arg(d.join("no-such-dir"))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("packages directory") && err.contains("no-such-dir"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn it_serves_https_with_a_configured_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let pki = molt_e2e::tls::private_ca(certs.path(), "Molt test CA");
    let s = TestServer::start(|c| {
        c.tls = Some(molt_server::TlsFiles {
            cert: pki.cert.clone(),
            key: pki.key.clone(),
        });
    })
    .await;
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let tls = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let r = tls
        .post(format!("{}/api/v1/admin/agents", s.url))
        .bearer_auth(&s.admin)
        .json(&json!({ "name": "a1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = tls
        .post(format!("{}/api/v1/agent/heartbeat", s.url))
        .bearer_auth(&token)
        .json(&json!({ "host": "h", "version": Q1, "status": "Up", "pid": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Plain HTTP to the TLS port gets no answer, and a client that does not trust the CA is refused.
    let plain = s.url.replace("https://", "http://");
    assert!(
        reqwest::Client::new()
            .get(format!("{plain}/metrics"))
            .send()
            .await
            .is_err()
    );
    assert!(
        reqwest::Client::new()
            .get(format!("{}/metrics", s.url))
            .send()
            .await
            .is_err()
    );
    // The server still serves after those failed handshakes.
    assert_eq!(
        tls.get(format!("{}/metrics", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}
