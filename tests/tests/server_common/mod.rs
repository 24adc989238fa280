//! Shared set-up for the control-plane tests: a real `molt_server` on
//! 127.0.0.1 over a real SQLite file in a temp dir, with package files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use molt_server::{Clock, Config};
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{Value, json};

pub const Q1: &str = "quebec-12-09-2020__patch0-hotfix1-01-04-2021_01-06-2021_1339";
pub const Q2: &str = "quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225";
pub const Q3: &str = "quebec-12-09-2020__patch2-04-01-2021_04-10-2021_0800";
pub const ADMIN: &str = "test-admin-token-0123456789abcdef";

pub struct TestServer {
    pub url: String,
    pub admin: String,
    pub dir: tempfile::TempDir,
    pub clock: Clock,
    pub client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn packages_dir(dir: &Path) -> PathBuf {
    dir.join("packages")
}

/// Writes a package file with distinct content; returns its bytes.
pub fn write_package(
    dir: &Path,
    kind: &str,
    version: &str,
    os: &str,
    arch: &str,
    len: usize,
) -> Vec<u8> {
    let name = format!("molt-{kind}.{version}.{os}.{arch}.zip");
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[i % 4] ^ name.len() as u8)
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), &bytes).unwrap();
    bytes
}

/// The core, upgrade, precheck and selector packages of `version` plus a linux/x86-64 runtime.
pub fn write_release(dir: &Path, version: &str) {
    for kind in ["core", "upgrade", "precheck", "selector"] {
        write_package(dir, kind, version, "universal", "universal", 3000);
    }
    write_package(dir, "runtime", version, "linux", "x86-64", 5000);
}

impl TestServer {
    /// Starts a server with releases Q1..Q3 and `tweak` applied to its config.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, tweak).await
    }

    pub async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> Self {
        let pk = packages_dir(dir.path());
        if !pk.exists() {
            for v in [Q1, Q2, Q3] {
                write_release(&pk, v);
            }
        }
        let mut cfg = Config::new(
            dir.path().join("cp.db"),
            &pk,
            "127.0.0.1:0".parse().unwrap(),
        );
        cfg.admin_token = Some(ADMIN.into());
        tweak(&mut cfg);
        let clock = cfg.clock.clone();
        let server = molt_server::bind(cfg).await.expect("server binds");
        let url = server.url();
        let admin = server.admin_token().to_string();
        let task = tokio::spawn(async move {
            server.run().await.expect("server runs");
        });
        TestServer {
            url,
            admin,
            dir,
            clock,
            client: Client::new(),
            task,
        }
    }

    /// A default server with `names` registered; their tokens in order.
    pub async fn with_agents<const N: usize>(names: [&str; N]) -> (Self, [String; N]) {
        let s = Self::start(|_| {}).await;
        let mut tokens = Vec::new();
        for n in names {
            tokens.push(s.register(n).await);
        }
        let tokens = tokens.try_into().unwrap_or_else(|_| unreachable!());
        (s, tokens)
    }

    /// Stops serving and hands back the directory (database and packages stay).
    pub fn stop(mut self) -> tempfile::TempDir {
        self.task.abort();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(format!("{}{path}", self.url))
    }
    pub fn post(&self, path: &str) -> RequestBuilder {
        self.client.post(format!("{}{path}", self.url))
    }
    pub fn put(&self, path: &str) -> RequestBuilder {
        self.client.put(format!("{}{path}", self.url))
    }
    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.client.delete(format!("{}{path}", self.url))
    }

    /// Registers an agent through the admin API; returns its token.
    pub async fn register(&self, name: &str) -> String {
        let r = self
            .post("/api/v1/admin/agents")
            .bearer_auth(&self.admin)
            .json(&json!({ "name": name }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `method path` as `token` with the JSON `body`; the response.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `POST path` as `token` with the JSON `body`.
    pub async fn post_json(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.send_json(reqwest::Method::POST, path, token, body)
            .await
    }

    /// `PUT path` as `token` with the JSON `body`.
    pub async fn put_json(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.send_json(reqwest::Method::PUT, path, token, body)
            .await
    }

    /// `POST path` as the admin with the JSON `body`.
    pub async fn admin_post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.post_json(path, &self.admin, body).await
    }

    /// `PUT path` as the admin with the JSON `body`.
    pub async fn admin_put(&self, path: &str, body: &Value) -> reqwest::Response {
        self.put_json(path, &self.admin, body).await
    }

    /// `GET path` as `token`.
    pub async fn get_as(&self, path: &str, token: &str) -> reqwest::Response {
        self.get(path).bearer_auth(token).send().await.unwrap()
    }

    /// `DELETE path` as `token`.
    pub async fn delete_as(&self, path: &str, token: &str) -> reqwest::Response {
        self.delete(path).bearer_auth(token).send().await.unwrap()
    }

    /// Open an upgrade attempt `from -> to` as agent `token`; its id.
    pub async fn open_attempt(&self, token: &str, from: &str, to: &str) -> i64 {
        let r = self
            .post_json(
                "/api/v1/agent/attempts",
                token,
                &json!({ "from_version": from, "to_version": to }),
            )
            .await;
        r.json::<Value>().await.unwrap()["attempt_id"]
            .as_i64()
            .unwrap()
    }

    /// Report `stage` in `state` for `attempt` as agent `token`.
    pub async fn report_stage(
        &self,
        token: &str,
        attempt: i64,
        stage: &str,
        state: &str,
        message: &str,
    ) -> reqwest::Response {
        self.post_json(
            &format!("/api/v1/agent/attempts/{attempt}/stages"),
            token,
            &json!({ "stage": stage, "state": state, "message": message }),
        )
        .await
    }

    /// Finish `attempt` with `result` and `message` as agent `token`.
    pub async fn finish_attempt(
        &self,
        token: &str,
        attempt: i64,
        result: &str,
        message: &str,
    ) -> reqwest::Response {
        let body = json!({ "result": result, "message": message });
        let path = format!("/api/v1/agent/attempts/{attempt}/finish");
        self.post_json(&path, token, &body).await
    }

    /// Agent `token`'s pending commands (a long poll of `wait` seconds).
    pub async fn commands(&self, token: &str, wait: u64) -> Value {
        let path = format!("/api/v1/agent/commands?wait={wait}");
        self.get_as(&path, token).await.json().await.unwrap()
    }

    /// Queue the command `body` for agent `name` as the admin.
    pub async fn queue(&self, name: &str, body: Value) -> reqwest::Response {
        let path = format!("/api/v1/admin/agents/{name}/commands");
        self.admin_post(&path, &body).await
    }

    /// Mark command `id` done (`ok`, `message`) as agent `token`.
    pub async fn command_done(
        &self,
        token: &str,
        id: i64,
        ok: bool,
        message: &str,
    ) -> reqwest::Response {
        let body = json!({ "ok": ok, "message": message });
        let path = format!("/api/v1/agent/commands/{id}/done");
        self.post_json(&path, token, &body).await
    }

    pub async fn admin_get(&self, path: &str) -> Value {
        let r = self
            .get(path)
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn set_fleet(&self, version: &str) {
        let r = self
            .put("/api/v1/admin/fleet")
            .bearer_auth(&self.admin)
            .json(&json!({ "version": version }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    }

    pub async fn heartbeat(&self, token: &str, host: &str, pid: i64, status: &str) -> StatusCode {
        self.post("/api/v1/agent/heartbeat")
            .bearer_auth(token)
            .json(&json!({ "host": host, "version": Q1, "status": status, "pid": pid }))
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn assigned(&self, token: &str, query: &str) -> (StatusCode, Value) {
        let r = self
            .get(&format!("/api/v1/agent/assigned?{query}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let s = r.status();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

/// The body of a plain `GET url` (no token: `/metrics`, package files).
pub async fn get_text(c: &Client, url: &str) -> String {
    c.get(url).send().await.unwrap().text().await.unwrap()
}

/// The strings `(k1, k2)` of every element of the JSON array `v`.
pub fn pairs<'a>(v: &'a Value, k1: &str, k2: &str) -> Vec<(&'a str, &'a str)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| (x[k1].as_str().unwrap(), x[k2].as_str().unwrap()))
        .collect()
}

/// The string `key` of every element of the JSON array `v`.
pub fn strs<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x[key].as_str().unwrap())
        .collect()
}

/// Hex SHA-256 by the system's `sha256sum`, independent of the server's code.
pub fn sha256(b: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    child.stdin.take().unwrap().write_all(b).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
