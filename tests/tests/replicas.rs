//! Three real `molt serve` replicas on one real PostgreSQL (the kit's
//! `PgServer`: Debian's binaries, a throw-away cluster on a loopback port).
//!
//! The agents here are SIMULATED: lightweight HTTP clients speaking the real
//! agent API (register, heartbeat, assigned, upgrade slot, attempts, stages,
//! command long poll), so hundreds fit on a 2-core machine. Each test has its
//! own cluster and replicas; what they must agree on goes through the database.
//!
//! One test has REAL agents: each installed through the real `fresh_install`
//! and run by its own supervisor (`molt run`) with light signed packages, as
//! in tests/tests/rollout.rs, talking to the replicas through one address, an
//! nginx upstream. Balanced per agent (a hash of its token): balanced
//! request by request, a real agent woken by the autoUpgrade of a fleet
//! change asks `/assigned` within milliseconds, and another replica that has
//! not yet reloaded the fleet version answers the old one, so the agent
//! reports the command done, up to date, and waits for its hourly check
//! (3 runs of 3 failed so on 2026-12-03).

mod ops_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use molt_e2e::kit::pg::PgServer;
use molt_e2e::kit::proc::Proc;
use molt_e2e::kit::{serve, wait};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const V1: &str = "quebec-12-09-2020__patch0-hotfix1-01-04-2021_01-06-2021_1339";
const V2: &str = "quebec-12-09-2020__patch1-02-18-2021_03-01-2021_1225";
const ADMIN: &str = "replica-admin-token-0123456789abcdef";

/// One `molt serve` replica (killed on drop).
struct Replica {
    #[allow(dead_code)] // held for its Drop (kills the process)
    proc: Proc,
    url: String,
    log: PathBuf,
}

/// A PostgreSQL cluster, the shared directories and three replicas on it.
struct Fleet {
    pg: PgServer,
    dir: tempfile::TempDir,
    packages: PathBuf,
    replicas: Vec<Replica>,
    http: Client,
}

fn write_release(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let files = [
        ("core", "universal", "universal"),
        ("upgrade", "universal", "universal"),
        ("precheck", "universal", "universal"),
        ("selector", "universal", "universal"),
        ("runtime", "linux", "x86-64"),
    ];
    for (kind, os, arch) in files {
        let name = format!("molt-{kind}.{version}.{os}.{arch}.zip");
        let bytes: Vec<u8> = name.bytes().cycle().take(4000).collect();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

impl Fleet {
    /// A fresh cluster and `n` replicas sharing its database, one packages
    /// directory (releases V1 and V2 of placeholder files), one logs
    /// directory and one admin-token file.
    fn start(n: usize, extra: &[&str]) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let packages = dir.path().join("packages");
        write_release(&packages, V1);
        write_release(&packages, V2);
        Fleet::serving(dir, packages, n, extra)
    }

    /// As [`Fleet::start`], the replicas serving `packages`.
    fn serving(dir: tempfile::TempDir, packages: PathBuf, n: usize, extra: &[&str]) -> Fleet {
        let pg = PgServer::start();
        std::fs::write(dir.path().join("admin-token"), format!("{ADMIN}\n")).unwrap();
        let mut f = Fleet {
            pg,
            dir,
            packages,
            replicas: Vec::new(),
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        for i in 0..n {
            let r = f.spawn(&format!("replica-{}", (b'a' + i as u8) as char), extra);
            f.replicas.push(r);
        }
        f
    }

    fn spawn(&self, name: &str, extra: &[&str]) -> Replica {
        let d = self.dir.path();
        let log = d.join(format!("{name}.log"));
        let mut cmd = serve::command();
        cmd.args(["--db", &self.pg.url(), "--packages"])
            .arg(&self.packages)
            .args(["--listen", "127.0.0.1:0", "--admin-token-file"])
            .arg(d.join("admin-token"))
            .arg("--logs-dir")
            .arg(d.join("logs"))
            .args(extra);
        let (proc, url) = serve::listening(cmd, name, &log, Duration::from_secs(60));
        Replica { proc, url, log }
    }

    fn url(&self, i: usize) -> &str {
        &self.replicas[i % self.replicas.len()].url
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|r| {
                format!(
                    "--- {}:\n{}",
                    r.log.display(),
                    std::fs::read_to_string(&r.log).unwrap_or_default()
                )
            })
            .collect()
    }

    async fn admin(
        &self,
        i: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.admin_at(self.url(i), method, path, body).await
    }

    /// An admin call to `base` (a replica, or the load balancer in front).
    async fn admin_at(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rq = self
            .http
            .request(method, format!("{base}{path}"))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            rq = rq.json(&b);
        }
        let r = rq.send().await.unwrap();
        let st = r.status();
        (st, r.json().await.unwrap_or(Value::Null))
    }

    /// `GET path` on replica `i` as the admin.
    async fn get(&self, i: usize, path: &str) -> (StatusCode, Value) {
        self.admin(i, reqwest::Method::GET, path, None).await
    }

    /// Registers `name` through replica `i`; returns its token.
    async fn register(&self, i: usize, name: &str) -> String {
        let (st, v) = self
            .admin(
                i,
                reqwest::Method::POST,
                "/api/v1/admin/agents",
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "register {name}: {v}");
        v["token"].as_str().unwrap().to_string()
    }

    async fn agent_get(
        &self,
        i: usize,
        path: &str,
        token: &str,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .get(format!("{}{path}", self.url(i)))
            .bearer_auth(token)
            .send()
            .await
    }

    async fn agent_post(
        &self,
        i: usize,
        path: &str,
        token: &str,
        body: &Value,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{}{path}", self.url(i)))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
    }

    /// `psql -Atc sql` against the shared database (no password exists).
    fn psql(&self, sql: &str) -> String {
        psql(&self.pg.url(), sql)
    }
}

/// `psql -Atc sql` against `url`.
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-Atc", sql])
        .output()
        .expect("psql runs (postgresql-client)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `fut` to completion from a blocking closure inside a multi-threaded
/// tokio test (e.g. a [`wait::poll`] condition).
fn block<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(fut))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_registered_on_a_authenticates_on_b_and_c_and_is_refused_on_b_once_deleted_on_a() {
    let f = Fleet::start(3, &[]);
    let token = f.register(0, "sim-agent-1").await;
    for i in [1, 2] {
        let r = f.agent_get(i, "/api/v1/agent/self", &token).await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "replica {i}: {}\n{}",
            r.text().await.unwrap(),
            f.logs()
        );
        let hb = json!({ "host": "sim-host", "version": V1, "status": "Up", "pid": 7 });
        let r = f
            .agent_post(i, "/api/v1/agent/heartbeat", &token, &hb)
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "heartbeat on replica {i}");
    }
    // B has the token cached now; the delete goes through A.
    let (st, v) = f
        .admin(
            0,
            reqwest::Method::DELETE,
            "/api/v1/admin/agents/sim-agent-1",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // Refused on B (the one that cached the token), then on A and C, each
    // within 5 s of the delete (a replica under load may apply the change a
    // moment after another one does).
    let t0 = Instant::now();
    for i in [1, 0, 2] {
        let limit = Duration::from_secs(5).saturating_sub(t0.elapsed());
        let refused = wait::poll(limit, || {
            block(async {
                f.agent_get(i, "/api/v1/agent/self", &token)
                    .await
                    .is_ok_and(|r| r.status() == StatusCode::UNAUTHORIZED)
            })
        });
        assert!(
            refused,
            "the agent deleted through A is still accepted on replica {i} 5 s after\n{}",
            f.logs()
        );
        println!(
            "deleted through A, refused on replica {i} after {:?}",
            t0.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_queued_through_a_wakes_a_long_poll_held_on_b() {
    let f = Arc::new(Fleet::start(3, &[]));
    let token = f.register(0, "sim-agent-poll").await;
    const WAIT: u64 = 30;
    let poll = {
        let (f, token) = (f.clone(), token.clone());
        tokio::spawn(async move {
            let r = f
                .agent_get(1, &format!("/api/v1/agent/commands?wait={WAIT}"), &token)
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            (Instant::now(), r.json::<Value>().await.unwrap())
        })
    };
    // Let B take the poll and find nothing queued yet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !poll.is_finished(),
        "the long poll on B returned before any command was queued"
    );
    let queued_at = Instant::now();
    let (st, v) = f
        .admin(
            0,
            reqwest::Method::POST,
            "/api/v1/admin/agents/sim-agent-poll/commands",
            Some(json!({ "kind": "grabLogs" })),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (answered_at, cmds) = poll.await.unwrap();
    let latency = answered_at.duration_since(queued_at);
    println!(
        "command queued through A woke the long poll on B after {latency:?} (poll timeout {WAIT} s)"
    );
    let cmds = cmds.as_array().unwrap().clone();
    assert_eq!(
        cmds.len(),
        1,
        "the poll on B returned without the command: {cmds:?}\n{}",
        f.logs()
    );
    assert_eq!(cmds[0]["kind"], "grabLogs");
    assert!(
        latency < Duration::from_secs(WAIT),
        "woken only by the poll's timeout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_answers_503_on_every_replica_when_postgresql_stops_and_recovers_after_restart() {
    let mut f = Fleet::start(3, &[]);
    let token = f.register(0, "sim-agent-ready").await;
    let http = f.http.clone();
    let urls: Vec<String> = f.replicas.iter().map(|r| r.url.clone()).collect();
    let status = |url: String, path: &'static str, token: Option<String>| {
        let http = http.clone();
        block(async move {
            let mut rq = http
                .get(format!("{url}{path}"))
                .timeout(Duration::from_secs(3));
            if let Some(t) = token {
                rq = rq.bearer_auth(t);
            }
            rq.send().await.map(|r| r.status()).ok()
        })
    };
    for u in &urls {
        assert_eq!(
            status(u.clone(), "/readyz", None),
            Some(StatusCode::OK),
            "{u}/readyz"
        );
        assert_eq!(
            status(u.clone(), "/healthz", None),
            Some(StatusCode::OK),
            "{u}/healthz"
        );
    }
    f.pg.stop_immediate();
    let stopped = Instant::now();
    for u in &urls {
        let down = wait::poll(
            Duration::from_secs(5).saturating_sub(stopped.elapsed()),
            || status(u.clone(), "/readyz", None) == Some(StatusCode::SERVICE_UNAVAILABLE),
        );
        assert!(
            down,
            "{u}/readyz is not 503 within 5 s of pg_ctl stop -m immediate\n{}",
            f.logs()
        );
    }
    println!(
        "every replica's /readyz answered 503 within {:?} of the stop",
        stopped.elapsed()
    );
    for u in &urls {
        // Alive, but no stale answers from its caches.
        assert_eq!(
            status(u.clone(), "/healthz", None),
            Some(StatusCode::OK),
            "{u}/healthz"
        );
        assert_eq!(
            status(u.clone(), "/api/v1/agent/self", Some(token.clone())),
            Some(StatusCode::SERVICE_UNAVAILABLE),
            "{u}: the API must answer 503 while the database is gone"
        );
    }
    f.pg.start_again();
    for u in &urls {
        wait::until(
            "/readyz 200 again after the restart",
            Duration::from_secs(60),
            || status(u.clone(), "/readyz", None) == Some(StatusCode::OK),
        );
        assert_eq!(
            status(u.clone(), "/api/v1/agent/self", Some(token.clone())),
            Some(StatusCode::OK),
            "{u}: the API serves again"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_simulated_agents_contend_for_ten_slots_through_three_replicas() {
    const AGENTS: usize = 300;
    const SLOTS: usize = 10;
    let f = Arc::new(Fleet::start(3, &["--max-concurrent-upgrades", "10"]));
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let name = format!("sim-agent-{i:03}");
        let token = f.register(i, &name).await;
        agents.push((name, token));
    }
    // Sample the holders straight from the database while they contend.
    // The sampler holds the URL, not the fleet, and stops when this test ends
    // however it ends, so the replicas and the cluster are dropped with it.
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let _stop_sampler = SetOnDrop(done.clone());
    let sampler = {
        let (url, done) = (f.pg.url(), done.clone());
        std::thread::spawn(move || {
            let (mut max, mut samples) = (0usize, 0usize);
            while !done.load(Ordering::Acquire) {
                let n: usize = psql(&url, "SELECT count(*) FROM upgrade_slots")
                    .parse()
                    .unwrap();
                max = max.max(n);
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (max, samples)
        })
    };
    let granted = Arc::new(AtomicUsize::new(0));
    let busy = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, (_, token)) in agents.into_iter().enumerate() {
        let (f, granted, busy) = (f.clone(), granted.clone(), busy.clone());
        tasks.push(tokio::spawn(async move {
            // Through the replicas in turn: ask on one, release on the next.
            let mut turn = i;
            loop {
                turn += 1;
                let r = f
                    .agent_post(
                        turn,
                        "/api/v1/agent/upgrade-slot",
                        &token,
                        &json!({ "to_version": V2 }),
                    )
                    .await
                    .unwrap();
                match r.status() {
                    StatusCode::OK => break,
                    // All held, or the replica is overloaded: retry later, as
                    // an agent does (Retry-After), through the next replica.
                    StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE => {
                        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
                            busy.fetch_add(1, Ordering::AcqRel);
                        }
                        let ms = 200 + (turn as u64 * 37 % 300);
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    s => panic!("slot request answered {s}: {}", r.text().await.unwrap()),
                }
            }
            granted.fetch_add(1, Ordering::AcqRel);
            tokio::time::sleep(Duration::from_millis(150)).await;
            loop {
                turn += 1;
                let r = f
                    .http
                    .delete(format!("{}/api/v1/agent/upgrade-slot", f.url(turn)))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                match r.status() {
                    StatusCode::OK => break,
                    StatusCode::SERVICE_UNAVAILABLE => {
                        busy.fetch_add(1, Ordering::AcqRel);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    s => panic!("slot release answered {s}: {}", r.text().await.unwrap()),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, Ordering::Release);
    let (max, samples) = sampler.join().unwrap();
    println!(
        "{AGENTS} simulated agents, {SLOTS} slots, 3 replicas: at most {max} holders in {samples} database samples ({} answers 503, retried)",
        busy.load(Ordering::Acquire)
    );
    assert_eq!(
        granted.load(Ordering::Acquire),
        AGENTS,
        "every agent got a slot"
    );
    assert!(
        max <= SLOTS,
        "{max} agents held a slot at once (limit {SLOTS})"
    );
    assert!(max > 0, "the sampler never saw a holder");
    assert_eq!(f.psql("SELECT count(*) FROM upgrade_slots"), "0");
}

/// One call of a simulated agent: to its replica (an agent's keep-alive
/// connection through a load balancer stays on one backend), moving to the
/// next one when that replica does not answer (killed) or answers 503.
async fn call_any(
    f: &Fleet,
    turn: &mut usize,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    for _ in 0..f.replicas.len() * 2 {
        let mut rq = f
            .http
            .request(method.clone(), format!("{}{path}", f.url(*turn)))
            .bearer_auth(token)
            .timeout(Duration::from_secs(10));
        if let Some(b) = body {
            rq = rq.json(b);
        }
        match rq.send().await {
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => *turn += 1,
            Ok(r) => {
                let st = r.status();
                return (st, r.json().await.unwrap_or(Value::Null));
            }
            Err(_) => *turn += 1,
        }
    }
    panic!("no replica answered {method} {path}");
}

/// Simulated agent `i`'s heartbeat: Up on `version` as `pid`, labelled with
/// its `site`.
async fn sim_heartbeat(
    f: &Fleet,
    turn: &mut usize,
    i: usize,
    token: &str,
    version: &str,
    pid: usize,
    site: &str,
) -> StatusCode {
    let hb = json!({ "host": format!("sim-host-{i}"), "version": version, "status": "Up",
        "pid": pid, "labels": { "site": site } });
    let path = "/api/v1/agent/heartbeat";
    call_any(f, turn, reqwest::Method::POST, path, token, Some(&hb))
        .await
        .0
}

/// A simulated agent following a rollout: heartbeat, assigned, and when the
/// assignment changes a slot, an attempt with its stages, the finish, the new
/// version's heartbeat and the release.
async fn simulated_agent(
    f: Arc<Fleet>,
    i: usize,
    token: String,
    site: &'static str,
    stop: Arc<AtomicBool>,
) {
    use reqwest::Method;
    let mut turn = i;
    let mut current = V1.to_string();
    while !stop.load(Ordering::Acquire) {
        sim_heartbeat(&f, &mut turn, i, &token, &current, 1000 + i, site).await;
        let (st, a) = call_any(
            &f,
            &mut turn,
            Method::GET,
            "/api/v1/agent/assigned?os=linux&arch=x86-64",
            &token,
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "assigned: {a}");
        let to = a["version"].as_str().unwrap().to_string();
        if to != current {
            let slot = json!({ "to_version": to });
            let (st, _) = call_any(
                &f,
                &mut turn,
                Method::POST,
                "/api/v1/agent/upgrade-slot",
                &token,
                Some(&slot),
            )
            .await;
            if st == StatusCode::OK {
                let (st, v) = call_any(
                    &f,
                    &mut turn,
                    Method::POST,
                    "/api/v1/agent/attempts",
                    &token,
                    Some(&json!({ "from_version": current, "to_version": to })),
                )
                .await;
                assert_eq!(st, StatusCode::OK, "attempt: {v}");
                let id = v["attempt_id"].as_i64().unwrap();
                for (stage, state) in [
                    ("Download Upgrade Packages", "In Progress"),
                    ("Download Upgrade Packages", "Complete"),
                    ("Deploy Binary Files", "Complete"),
                    ("Health Check", "Complete"),
                ] {
                    let (st, v) = call_any(
                        &f,
                        &mut turn,
                        Method::POST,
                        &format!("/api/v1/agent/attempts/{id}/stages"),
                        &token,
                        Some(&json!({ "stage": stage, "state": state, "message": "simulated" })),
                    )
                    .await;
                    assert_eq!(st, StatusCode::OK, "stage: {v}");
                }
                let (st, v) = call_any(
                    &f,
                    &mut turn,
                    Method::POST,
                    &format!("/api/v1/agent/attempts/{id}/finish"),
                    &token,
                    Some(&json!({ "result": "Complete", "message": "simulated upgrade" })),
                )
                .await;
                assert_eq!(st, StatusCode::OK, "finish: {v}");
                current = to;
                sim_heartbeat(&f, &mut turn, i, &token, &current, 2000 + i, site).await;
                call_any(
                    &f,
                    &mut turn,
                    Method::DELETE,
                    "/api/v1/agent/upgrade-slot",
                    &token,
                    None,
                )
                .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_rollout_the_others_complete_it_with_every_history_row() {
    use reqwest::Method;
    const AGENTS: usize = 6;
    let f = Fleet::start(3, &[]);
    let (st, v) = f
        .admin(
            0,
            Method::PUT,
            "/api/v1/admin/fleet",
            Some(json!({ "version": V1 })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let name = format!("sim-agent-{i}");
        let token = f.register(i, &name).await;
        agents.push((name, token, if i < 2 { "lon" } else { "par" }));
    }
    // The agents must have reported their labels before the rollout groups them.
    for (i, (_, token, site)) in agents.iter().enumerate() {
        let mut turn = i;
        let st = sim_heartbeat(&f, &mut turn, i, token, V1, 1000 + i, site).await;
        assert_eq!(st, StatusCode::OK);
    }
    let spec = json!({ "version": V2, "max_in_flight": 2, "groups": [
        { "name": "lon", "selector": { "site": "lon" }, "canary": 1 },
        { "name": "rest", "canary": 1 },
    ]});
    let (st, r) = f
        .admin(1, Method::POST, "/api/v1/admin/rollouts", Some(spec))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    let id = r["id"].as_i64().unwrap();

    // The agents run through all three; A is SIGKILLed once the first attempt is recorded.
    let f = Arc::new(f);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, (_, token, site)) in agents.iter().enumerate() {
        tasks.push(tokio::spawn(simulated_agent(
            f.clone(),
            i,
            token.clone(),
            site,
            stop.clone(),
        )));
    }
    wait::until("a first attempt recorded", Duration::from_secs(60), || {
        f.psql("SELECT count(*) FROM attempts") != "0"
    });
    // One scheduler runs: A, started first, holds the lease; B and C stand by.
    let log = |i: usize| std::fs::read_to_string(&f.replicas[i].log).unwrap_or_default();
    const LEADER: &str = "rollout scheduler: leader (replica";
    assert!(log(0).contains(LEADER), "A leads\n{}", f.logs());
    for i in 1..3 {
        assert!(
            log(i).contains("rollout scheduler: standing by") && !log(i).contains(LEADER),
            "replica {i} stands by\n{}",
            f.logs()
        );
    }
    let pid = f.replicas[0].proc.pid();
    assert!(
        molt_e2e::kit::proc::signal(pid, "KILL"),
        "SIGKILL replica A ({pid})"
    );
    // A's session ends with it: B or C takes the lease at its next tick.
    let took_over = wait::poll(Duration::from_secs(30), || {
        (1..3).filter(|&i| log(i).contains(LEADER)).count() == 1
    });
    assert!(took_over, "B or C leads after A's death\n{}", f.logs());
    let attempts_at_kill = f.psql("SELECT count(*) FROM attempts");
    let state_at_kill = f.psql(&format!("SELECT state FROM rollouts WHERE id = {id}"));
    println!(
        "replica A killed with {attempts_at_kill} attempt(s) recorded, rollout {state_at_kill}"
    );
    assert_ne!(
        state_at_kill, "Completed",
        "the rollout ended before the kill: nothing to show"
    );

    let rollout = format!("/api/v1/admin/rollouts/{id}");
    let done = wait::poll(Duration::from_secs(120), || {
        block(f.get(1, &rollout)).1["state"] == "Completed"
    });
    stop.store(true, Ordering::Release);
    for t in tasks {
        t.await.unwrap();
    }
    let (_, v) = f.get(2, &rollout).await;
    assert!(
        done,
        "the rollout did not complete through B and C: {v}\n{}",
        f.logs()
    );
    for (name, _, _) in &agents {
        let (st, h) = f
            .get(2, &format!("/api/v1/admin/agents/{name}/attempts"))
            .await;
        assert_eq!(st, StatusCode::OK);
        let h = h.as_array().unwrap();
        assert_eq!(h.len(), 1, "{name}: one attempt: {h:?}");
        assert_eq!(h[0]["to_version"], V2, "{name}");
        assert_eq!(h[0]["result"], "Complete", "{name}");
        let stages: Vec<(&str, &str)> = h[0]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["stage"].as_str().unwrap(), s["state"].as_str().unwrap()))
            .collect();
        assert_eq!(
            stages,
            [
                ("Download Upgrade Packages", "Complete"),
                ("Deploy Binary Files", "Complete"),
                ("Health Check", "Complete"),
            ],
            "{name}: every stage row"
        );
    }
    assert_eq!(
        f.psql("SELECT count(*) FROM attempts WHERE result IS NOT NULL"),
        AGENTS.to_string()
    );
}

/// The third release of the real agents (after ops_common's V1 and V2).
const REAL_V3: &str = "vancouver-06-01-2023__patch4-09-01-2023_09-02-2023_0900";

/// The agents of the admin API (as seen through `base`) by name.
async fn agents_at(f: &Fleet, base: &str) -> Vec<Value> {
    let (st, v) = f
        .admin_at(base, reqwest::Method::GET, "/api/v1/admin/agents", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

/// Whether every one of `names` is Up on `version` (admin API through `base`).
fn all_up_on(f: &Fleet, base: &str, names: &[&str], version: &str) -> bool {
    let list = block(agents_at(f, base));
    names.iter().all(|n| {
        list.iter()
            .any(|a| a["name"] == *n && a["status"] == "Up" && a["version"] == version)
    })
}

/// Sets the fleet version through `base` and waits (180 s at most) until every
/// one of `names` is Up on it; each then has exactly one attempt to it,
/// Complete, with a row for every stage of the upgrade history.
fn fleet_change_reaches(
    f: &Fleet,
    base: &str,
    homes: &[molt_layout::Home],
    names: &[&str],
    from: &str,
    to: &str,
) {
    let (st, v) = block(f.admin_at(
        base,
        reqwest::Method::PUT,
        "/api/v1/admin/fleet",
        Some(json!({ "version": to })),
    ));
    assert_eq!(st, StatusCode::OK, "{v}");
    // Up on `to` (the new agent's heartbeat) may come before the runner's
    // Health Check ends the attempt: wait for both.
    let attempts_to = |name: &str| -> Vec<Value> {
        let path = format!("/api/v1/admin/agents/{name}/attempts");
        let (st, h) = block(f.admin_at(base, reqwest::Method::GET, &path, None));
        assert_eq!(st, StatusCode::OK, "{h}");
        let all = h.as_array().cloned().unwrap_or_default();
        all.into_iter().filter(|a| a["to_version"] == to).collect()
    };
    let done = wait::poll(Duration::from_secs(180), || {
        all_up_on(f, base, names, to)
            && names
                .iter()
                .all(|n| attempts_to(n).iter().any(|a| !a["result"].is_null()))
    });
    assert!(
        done,
        "not every agent Up on {to} with its attempt ended: {:#}\n{}{}",
        Value::Array(block(agents_at(f, base))),
        f.logs(),
        agent_logs(homes)
    );
    for name in names {
        let to_v = attempts_to(name);
        let h = &to_v;
        assert_eq!(to_v.len(), 1, "{name}: one attempt to {to}: {h:?}");
        let a = &to_v[0];
        assert_eq!(
            (a["from_version"].as_str(), a["result"].as_str()),
            (Some(from), Some("Complete")),
            "{name}: {a:#}"
        );
        let stages: Vec<(&str, &str)> = a["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["stage"].as_str().unwrap(), s["state"].as_str().unwrap()))
            .collect();
        assert_eq!(stages, REAL_STAGES, "{name}: every stage row of {a:#}");
    }
}

/// The last 40 lines of each agent's log.
fn agent_logs(homes: &[molt_layout::Home]) -> String {
    let mut out = String::new();
    for h in homes {
        let t = std::fs::read_to_string(h.agent_log()).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        out.push_str(&format!("--- {}:\n{tail}\n", h.agent_log().display()));
    }
    out
}

/// The upgrade history of a real agent's upgrade between two light releases:
/// a row for every stage, the precheck not run (`run_precheck = false`), the
/// service not reinstalled (the built-in supervisor restarts the agent).
const REAL_STAGES: &[(&str, &str)] = &[
    ("Pre Upgrade Check", "Skipped"),
    ("Download Upgrade Packages", "Complete"),
    ("Extract Upgrade Packages", "Complete"),
    ("MigrateTrustStore", "Complete"),
    ("Deploy Binary Files", "Complete"),
    ("Reinstall Service", "Skipped"),
    ("Restart", "Complete"),
    ("Health Check", "Complete"),
];

#[tokio::test(flavor = "multi_thread")]
async fn real_agents_behind_nginx_upgrade_through_the_replicas_and_outlive_one_of_them() {
    use ops_common::{Kit, Service, V1 as R1, V2 as R2};
    const NAMES: [&str; 3] = ["real-1", "real-2", "real-3"];
    let k = Kit::new();
    for v in [R1, R2, REAL_V3] {
        k.light_release(v);
    }
    let f = Fleet::serving(tempfile::tempdir().unwrap(), k.packages_dir(), 3, &[]);
    let urls: Vec<&str> = f.replicas.iter().map(|r| r.url.as_str()).collect();
    // Round robin, request by request: an agent's questions land on any
    // replica, so the one that answers `/assigned` after an autoUpgrade is
    // often not the one that queued it (agents ask with `fresh=1`).
    let (http, server) = molt_e2e::nginx::upstream("molt_replicas", &urls, "");
    let lb = molt_e2e::nginx::start(&f.dir.path().join("nginx"), &http, &server);
    let (st, v) = f
        .admin_at(
            &lb.url,
            reqwest::Method::PUT,
            "/api/v1/admin/fleet",
            Some(json!({ "version": R1 })),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");

    // Three agents on R1, each registered and served through the balancer,
    // each under its own supervisor.
    let (mut services, mut homes) = (Vec::new(), Vec::new());
    for name in NAMES {
        let token = format!("token-of-{name}-0123456789");
        let (st, v) = f
            .admin_at(
                &lb.url,
                reqwest::Method::POST,
                "/api/v1/admin/agents",
                Some(json!({ "name": name, "token": token })),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        let h = k.light_install(&k.dir.path().join(name), R1, &lb.url);
        molt_e2e::kit::config::write_config(
            h.root(),
            &lb.url,
            name,
            &token,
            "handover_wait_secs = 20\nrun_precheck = false\ndownload_backoff_ms = 10\n\
             health_timeout_secs = 20\nslot_retry_secs = 1\n",
        );
        services.push(Service::start(&h));
        homes.push(h);
    }
    let up = wait::poll(Duration::from_secs(120), || {
        all_up_on(&f, &lb.url, &NAMES, R1)
    });
    assert!(up, "the agents are not Up on {R1}\n{}", f.logs());

    // A fleet version change: every agent upgrades through the replicas.
    fleet_change_reaches(&f, &lb.url, &homes, &NAMES, R1, R2);
    for s in &services {
        s.wait_up(R2, Duration::from_secs(30));
    }

    // A replica that served an agent (it delivered its autoUpgrade) dies;
    // the agents keep reporting Up on R2 through the other two.
    let served = |r: &Replica| {
        let log = std::fs::read_to_string(&r.log).unwrap_or_default();
        log.contains("command delivered agent=real-")
    };
    let dead = f
        .replicas
        .iter()
        .position(served)
        .unwrap_or_else(|| panic!("no replica delivered a command to an agent\n{}", f.logs()));
    let pid = f.replicas[dead].proc.pid();
    assert!(
        molt_e2e::kit::proc::signal(pid, "KILL"),
        "SIGKILL replica {dead} ({pid})"
    );
    let gone = wait::poll(Duration::from_secs(10), || {
        std::net::TcpStream::connect(f.replicas[dead].url.trim_start_matches("http://")).is_err()
    });
    assert!(
        gone,
        "replica {dead} still accepts connections after SIGKILL"
    );
    println!("replica {dead} (it served an agent) killed after the upgrade to {R2}");
    let at_kill = block(agents_at(&f, &lb.url));
    let still_up = wait::poll(Duration::from_secs(30), || {
        let now = block(agents_at(&f, &lb.url));
        NAMES.iter().all(|n| {
            let a = now.iter().find(|a| a["name"] == *n);
            let before = at_kill.iter().find(|a| a["name"] == *n);
            a.is_some_and(|a| {
                a["status"] == "Up"
                    && a["version"] == R2
                    && before.is_some_and(|b| b["last_seen"] != a["last_seen"])
            })
        })
    });
    assert!(
        still_up,
        "the agents did not heartbeat Up on {R2} through the two replicas left: {:#}\n{}",
        Value::Array(block(agents_at(&f, &lb.url))),
        f.logs()
    );

    // A further change reaches them through the two replicas left.
    fleet_change_reaches(&f, &lb.url, &homes, &NAMES, R2, REAL_V3);
    for s in &services {
        s.wait_up(REAL_V3, Duration::from_secs(30));
    }
    for name in NAMES {
        let (_, h) = f
            .admin_at(
                &lb.url,
                reqwest::Method::GET,
                &format!("/api/v1/admin/agents/{name}/attempts"),
                None,
            )
            .await;
        assert_eq!(
            h.as_array().map(Vec::len),
            Some(2),
            "{name}: two attempts: {h:#}"
        );
    }
    assert_eq!(
        f.psql("SELECT count(*) FROM attempts WHERE result IS NOT NULL"),
        (2 * NAMES.len()).to_string()
    );
}
