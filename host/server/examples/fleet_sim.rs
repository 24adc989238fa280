//! Fleet rollout benchmark (tests/bench/fleet_rollout.sh; not run by CI):
//! N simulated agents — lightweight clients in this process speaking the real
//! agent HTTP API to a real control plane (`molt_server::bind`, in a child
//! process of this one so each holds one socket per agent) — through a rollout of
//! G label groups with a fleet-wide max in flight; each "upgrade" takes a
//! configurable time. Prints the time to 100 % beside the theoretical
//! minimum (and its formula), the p99 API latency, errors, the max in flight
//! observed (from the store's attempt timestamps) and the dashboard page size.
//!
//! `cargo run --release -p molt-server --example fleet_sim -- AGENTS GROUPS
//! IN_FLIGHT UPGRADE_MS CANARY SOAK_SECS`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const V1: &str = "rome-06-23-2021__patch0-07-01-2021_07-10-2021_0900";
const V2: &str = "rome-06-23-2021__patch1-08-01-2021_08-10-2021_0900";
const ADMIN: &str = "admin-token-0123456789";

/// API call latencies (µs) and errors, shared by every simulated agent.
#[derive(Default)]
struct Stats {
    lat: std::sync::Mutex<Vec<u64>>,
    errors: AtomicU64,
}

impl Stats {
    async fn timed(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let t = Instant::now();
        let r = req.send().await;
        let us = t.elapsed().as_micros() as u64;
        match &r {
            Ok(x) if x.status().is_success() || x.status().as_u16() == 409 => {}
            _ => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Ok(mut l) = self.lat.lock() {
            l.push(us);
        }
        r
    }
}

async fn agent(
    c: reqwest::Client,
    url: String,
    token: String,
    site: String,
    upgrade: Duration,
    stats: Arc<Stats>,
) {
    let mut version = V1.to_string();
    let auth = format!("Bearer {token}");
    let hb = |version: &str| json!({"host": "sim", "version": version, "status": molt_protocol::AgentStatus::Up, "pid": 1, "labels": {"site": site}});
    let post = |path: &str, body: Value| {
        c.post(format!("{url}{path}"))
            .header("Authorization", &auth)
            .json(&body)
    };
    let _ = stats
        .timed(post("/api/v1/agent/heartbeat", hb(&version)))
        .await;
    loop {
        // The long poll is not an API latency: it waits by design.
        let cmds: Vec<Value> = match c
            .get(format!("{url}/api/v1/agent/commands?wait=20"))
            .header("Authorization", &auth)
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for cmd in cmds {
            let assigned: Value = match stats
                .timed(
                    c.get(format!(
                        "{url}/api/v1/agent/assigned?os=universal&arch=universal"
                    ))
                    .header("Authorization", &auth),
                )
                .await
            {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => continue,
            };
            let to = assigned["version"].as_str().unwrap_or(&version).to_string();
            if to != version {
                loop {
                    match stats
                        .timed(post(
                            "/api/v1/agent/upgrade-slot",
                            json!({"to_version": to}),
                        ))
                        .await
                    {
                        Ok(r) if r.status().is_success() => break,
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                let a: Value = match stats
                    .timed(post(
                        "/api/v1/agent/attempts",
                        json!({"from_version": version, "to_version": to}),
                    ))
                    .await
                {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(_) => continue,
                };
                let id = a["attempt_id"].as_i64().unwrap_or(0);
                tokio::time::sleep(upgrade).await;
                version = to;
                let _ = stats
                    .timed(post("/api/v1/agent/heartbeat", hb(&version)))
                    .await;
                let _ = stats
                    .timed(post(
                        &format!("/api/v1/agent/attempts/{id}/finish"),
                        json!({"result": molt_protocol::AttemptResult::Complete}),
                    ))
                    .await;
            }
            let _ = stats
                .timed(post(
                    &format!("/api/v1/agent/commands/{}/done", cmd["id"]),
                    json!({"ok": true}),
                ))
                .await;
        }
        let _ = stats
            .timed(post("/api/v1/agent/heartbeat", hb(&version)))
            .await;
    }
}

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// The control plane in a child process (`fleet_sim --serve DIR`): each side
/// then holds one socket per agent within the per-process descriptor limit.
async fn serve_child(dir: &std::path::Path) -> anyhow_free::Result {
    let pk = dir.join("packages");
    let mut cfg = molt_server::Config::new(dir.join("cp.db"), &pk, "127.0.0.1:0".parse()?);
    cfg.admin_token = Some(ADMIN.into());
    cfg.fleet_version = Some(V1.into());
    cfg.rollout_tick = Duration::from_millis(250);
    cfg.agent_down_after = Duration::from_secs(600);
    let server = molt_server::bind(cfg).await?;
    println!("{}", server.url());
    server.run().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow_free::Result {
    if std::env::args().nth(1).as_deref() == Some("--serve") {
        let dir = std::env::args().nth(2).ok_or("--serve DIR")?;
        return serve_child(std::path::Path::new(&dir)).await;
    }
    let agents = arg(1, 10_000) as usize;
    let ngroups = arg(2, 4).max(1) as usize;
    let in_flight = arg(3, 500).max(1) as usize;
    let upgrade = Duration::from_millis(arg(4, 5_000));
    let canary = arg(5, 1) as usize;
    let soak = arg(6, 5);

    let d = tempfile::tempdir()?;
    let pk = d.path().join("packages");
    std::fs::create_dir_all(&pk)?;
    for v in [V1, V2] {
        for kind in ["core", "upgrade"] {
            std::fs::write(
                pk.join(format!("molt-{kind}.{v}.universal.universal.zip")),
                format!("{kind} {v}"),
            )?;
        }
    }
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--serve")
        .arg(d.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut line = String::new();
    {
        use std::io::BufRead;
        let out = child.stdout.take().ok_or("child stdout")?;
        std::io::BufReader::new(out).read_line(&mut line)?;
    }
    let url = line.trim().to_string();
    if !url.starts_with("http") {
        let _ = child.kill();
        return Err(format!("the control plane did not start: {line:?}").into());
    }
    // The same SQLite file, read from here (WAL: concurrent readers).
    let store = molt_server::store::open(&d.path().join("cp.db").to_string_lossy())?;

    let admin = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Value| {
        admin
            .request(method, format!("{url}{path}"))
            .bearer_auth(ADMIN)
            .json(&body)
    };
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(60))
        .build()?;
    let stats = Arc::new(Stats::default());
    eprintln!("registering {agents} agents");
    let mut tasks = Vec::new();
    for i in 0..agents {
        let name = format!("sim-{i:05}");
        let token = format!("token-{name}-0123456789");
        let r = call(
            reqwest::Method::POST,
            "/api/v1/admin/agents",
            json!({"name": name, "token": token}),
        )
        .send()
        .await?;
        if !r.status().is_success() {
            return Err(format!("register {name}: {}", r.status()).into());
        }
        tasks.push(tokio::spawn(agent(
            c.clone(),
            url.clone(),
            token,
            format!("g{}", i % ngroups),
            upgrade,
            stats.clone(),
        )));
    }
    let last = format!("g{}", ngroups - 1);
    loop {
        let p: Value = call(
            reqwest::Method::GET,
            &format!("/api/v1/admin/fleet/agents?label=site={last}&per_page=1"),
            Value::Null,
        )
        .send()
        .await?
        .json()
        .await?;
        // Every agent of the last group has reported its label.
        let expected = (0..agents).filter(|i| i % ngroups == ngroups - 1).count() as u64;
        if p["total"].as_u64() == Some(expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let groups: Vec<Value> = (0..ngroups)
        .map(|g| {
            json!({"name": format!("g{g}"), "selector": {"site": format!("g{g}")},
                   "canary": canary, "soak_secs": if g + 1 < ngroups { soak } else { 0 }})
        })
        .collect();
    let r: Value = call(
        reqwest::Method::POST,
        "/api/v1/admin/rollouts",
        json!({"version": V2, "max_in_flight": in_flight, "groups": groups}),
    )
    .send()
    .await?
    .json()
    .await?;
    let id = r["id"]
        .as_i64()
        .ok_or_else(|| format!("rollout not created: {r}"))?;
    if let Ok(mut l) = stats.lat.lock() {
        l.clear();
    }
    let started = Instant::now();
    loop {
        let r: Value = call(
            reqwest::Method::GET,
            &format!("/api/v1/admin/rollouts/{id}"),
            Value::Null,
        )
        .send()
        .await?
        .json()
        .await?;
        match r["state"].as_str() {
            Some("Completed") => break,
            Some("Halted") | Some("Aborted") => return Err(format!("rollout {r}").into()),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = started.elapsed();

    // Theoretical minimum: per group a canary wave (when canary > 0), then
    // ceil((size - canary) / in_flight) waves of one upgrade time; soaks between groups.
    let mut min = 0.0f64;
    let up = upgrade.as_secs_f64();
    for g in 0..ngroups {
        let size = (0..agents).filter(|i| i % ngroups == g).count();
        let c = canary.min(size);
        let waves = (size - c).div_ceil(in_flight);
        min += if c > 0 { up } else { 0.0 } + waves as f64 * up;
        if g + 1 < ngroups {
            min += soak as f64;
        }
    }
    // Max in flight observed, from the store's attempt timestamps.
    let rollout = store.rollout(id)?.ok_or("rollout vanished")?;
    let attempts = store.attempts_to(V2, rollout.created_at)?;
    let mut ev = Vec::new();
    for t in &attempts {
        ev.push((t.started_at, 1i32));
        ev.push((t.finished_at.unwrap_or(t.started_at), -1));
    }
    ev.sort();
    let (mut cur, mut max) = (0, 0);
    for (_, d) in &ev {
        cur += d;
        max = max.max(cur);
    }
    let mut lat = stats.lat.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let dash = admin
        .get(format!("{url}/dashboard"))
        .bearer_auth(ADMIN)
        .send()
        .await?
        .text()
        .await?;
    println!(
        "agents                 {agents} in {ngroups} groups, canary {canary}, soak {soak} s, max in flight {in_flight}, upgrade {up} s"
    );
    println!(
        "theoretical minimum    {min:.1} s = sum over groups of (canary>0 ? {up} s : 0) + ceil((size - canary) / {in_flight}) x {up} s, + {soak} s soak between groups"
    );
    println!(
        "time to 100 %          {:.1} s ({:.2}x the minimum)",
        took.as_secs_f64(),
        took.as_secs_f64() / min.max(0.001)
    );
    println!("attempts               {}", attempts.len());
    println!("max in flight observed {max} (limit {in_flight})");
    println!(
        "API latency            p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} calls",
        pct(0.50),
        pct(0.99),
        pct(1.0),
        lat.len()
    );
    println!(
        "errors                 {}",
        stats.errors.load(Ordering::Relaxed)
    );
    println!("dashboard page         {} bytes", dash.len());
    for t in tasks {
        t.abort();
    }
    let _ = child.kill();
    let _ = child.wait();
    if max as usize > in_flight {
        return Err(format!("{max} in flight at once, more than {in_flight}").into());
    }
    Ok(())
}

/// Errors of this example as text (the crate's own error types stay typed).
mod anyhow_free {
    pub type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}
