//! Staged-rollout fixtures (issue 15), shared by `tests/rollout.rs` and
//! `tests/rollout_gates.rs` (each includes this file as a module): a real
//! `molt serve` and real agents, each installed through the real
//! `fresh_install` and run by its own supervisor (`molt run`), labelled for a
//! rollout's groups; `molt fleet` and the admin API reads the tests assert on.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use molt_e2e::agent_fx::{
    admin_as, committed_components, launcher, light_release, runtime_package,
};
use molt_e2e::kit::pki::Kit;
use molt_e2e::kit::proc::{Proc, kill_all_on};
use molt_e2e::kit::serve::{Serve, Served};
use molt_layout::Home;
use serde_json::{Value, json};

pub use molt_e2e::kit::wait::until as wait_for;

pub const V1: &str = "vancouver-06-01-2023__patch2-07-01-2023_07-02-2023_0815";
pub const V2: &str = "vancouver-06-01-2023__patch3-08-01-2023_08-02-2023_0900";
/// The admin token of the control plane.
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";
/// The token of the bootstrap agent `a1` (removed once real agents are added).
pub const AGENT_TOKEN: &str = "agent-token-0123456789";
/// The agents' settings: quick hand-over, health check and retries; no
/// precheck during an upgrade (the readiness gate runs it on its own).
pub const AGENT_CONFIG: &str = "handover_wait_secs = 20\nrun_precheck = false\ntest_download_backoff_ms = 10\nhealth_timeout_secs = 20\n";
pub const T: Duration = Duration::from_secs(120);

/// A kit whose `packages/` holds a light release (core whose `bin/molt` runs
/// the molt binary under test, upgrade, this host's runtime) of each version.
pub fn releases(versions: &[&str]) -> Kit {
    let k = Kit::new();
    for v in versions {
        core_package(&k, v, &launcher());
        runtime_package(&k.pki, &work(&k), &packages(&k), v);
    }
    k
}

pub fn packages(k: &Kit) -> PathBuf {
    k.dir.path().join("packages")
}

fn work(k: &Kit) -> PathBuf {
    k.dir.path().join("work")
}

/// The core (with `bin` as its `bin/molt`) and upgrade packages of `v`.
pub fn core_package(k: &Kit, v: &str, bin: &[u8]) -> PathBuf {
    light_release(&k.pki, &work(k), &packages(k), v, bin)
}

/// The precheck bundle of `v`: the committed signed checks whose component
/// path contains one of `checks`, re-signed by the kit's key.
pub fn precheck_bundle(k: &Kit, v: &str, checks: &[&str]) -> PathBuf {
    let src = work(k).join(format!("src-precheck-{v}"));
    let mut comps = committed_components("precheck", &src)
        .expect("the committed precheck bundle (signed-bundles/) is needed");
    comps.retain(|c| checks.iter().any(|x| c.path.contains(x)));
    assert_eq!(comps.len(), checks.len(), "checks {checks:?} in {comps:?}");
    k.pki.pack(
        &src,
        &format!("molt-precheck.{v}.universal.universal.zip"),
        &packages(k),
        comps,
    )
}

/// A supervisor (`molt run`) on an install; on drop it is stopped, and so is
/// every agent, runner or supervisor still running on the install.
struct Supervisor(Proc, Home);

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.0.stop();
        kill_all_on(self.1.root());
    }
}

/// A control plane and the agents it drives. Dropped in field order: the
/// supervisors and agents first, then the control plane, then the files.
pub struct Fleet {
    sups: Vec<Supervisor>,
    pub cp: Served,
    pub homes: Vec<Home>,
    pub kit: Kit,
}

impl Fleet {
    /// `molt serve` of the kit's packages with the fleet on `version` (agent
    /// `a1` registered, never run).
    pub fn serve(kit: Kit, version: &str) -> Fleet {
        let cp = Serve {
            dir: &kit.dir.path().join("cp"),
            packages: &packages(&kit),
            port: 0,
            admin_token: ADMIN_TOKEN,
            agent: ("a1", AGENT_TOKEN),
            args: vec!["--fleet-version".into(), version.into()],
            env: &[],
            log: "serve.log".into(),
        }
        .start();
        Fleet {
            sups: Vec::new(),
            cp,
            homes: Vec::new(),
            kit,
        }
    }

    /// [`Fleet::serve`] with `agents` (name, site label) installed on
    /// `version`, each under its supervisor, Up with its label (the bootstrap
    /// agent removed).
    pub fn start(kit: Kit, version: &str, agents: &[(&str, &str)]) -> Fleet {
        let mut f = Fleet::serve(kit, version);
        admin(&f.cp.url, "DELETE", "/api/v1/admin/agents/a1", Value::Null);
        let core = packages(&f.kit).join(format!("molt-core.{version}.universal.universal.zip"));
        let runtime = packages(&f.kit).join(format!(
            "molt-runtime.{version}.{}.{}.zip",
            std::env::consts::OS,
            std::env::consts::ARCH.replace('_', "-")
        ));
        for (name, site) in agents {
            let token = format!("token-of-{name}-0123456789");
            admin(
                &f.cp.url,
                "POST",
                "/api/v1/admin/agents",
                json!({ "name": name, "token": token }),
            );
            let (h, v) = molt_e2e::kit::install::install(
                &f.kit.dir.path().join(name),
                &f.kit.pki.root,
                &[&core, &runtime],
            );
            assert_eq!(v, version);
            molt_e2e::kit::config::write_config(
                h.root(),
                &f.cp.url,
                name,
                &token,
                &format!("{AGENT_CONFIG}labels = {{ site = \"{site}\" }}\n"),
            );
            let root = h.root().to_string_lossy().into_owned();
            let sup = molt_e2e::kit::bin::molt_logged(
                &h.logs_dir().join("supervisor.log"),
                &["run", "--home", &root, "--stop-timeout", "5"],
            )
            .spawn()
            .unwrap();
            f.sups
                .push(Supervisor(Proc::new(sup, "supervisor"), h.clone()));
            f.homes.push(h);
        }
        wait_for("every agent Up with its label", T, || {
            f.all_up_on(version)
                && agents_of(&f.cp.url)
                    .iter()
                    .filter(|a| a["labels"]["site"].is_string())
                    .count()
                    == agents.len()
        });
        f
    }

    pub fn url(&self) -> &str {
        &self.cp.url
    }

    /// The agents' names, in the order given to [`Fleet::start`].
    pub fn names(&self) -> Vec<String> {
        self.homes
            .iter()
            .map(|h| h.root().file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    /// Every agent of the fleet Up on `v` (from the API).
    pub fn all_up_on(&self, v: &str) -> bool {
        let list = agents_of(self.url());
        self.names().iter().all(|n| up_on(&list, n, v))
    }

    /// Waits for rollout `id` to reach `state`; on time-out shows the
    /// rollout, the agents, the control plane's log and each agent's log tail.
    pub fn wait_rollout(&self, id: i64, state: &str, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if rollout_state(self.url(), id)["state"] == state {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut logs = tail(&self.cp.log);
        for h in &self.homes {
            logs.push_str(&tail(&h.agent_log()));
        }
        panic!(
            "rollout {id} not {state} after {limit:?}:\n{:#}\n{:#}\n{logs}",
            rollout_state(self.url(), id),
            Value::Array(agents_of(self.url()))
        );
    }

    /// `molt fleet rollout create VERSION --group G… EXTRA…`: the new rollout's id.
    pub fn create_rollout(&self, version: &str, groups: &[&str], extra: &[&str]) -> i64 {
        let mut args = vec!["rollout", "create", version];
        for g in groups {
            args.extend(["--group", g]);
        }
        args.extend_from_slice(extra);
        let (code, created, out) = fleet(self.url(), &args);
        assert_eq!(code, 0, "{out}");
        assert_eq!(created["state"], "Running", "{out}");
        created["id"].as_i64().unwrap_or_else(|| panic!("{out}"))
    }
}

fn tail(p: &std::path::Path) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    format!(
        "--- {} ---\n{}\n",
        p.display(),
        lines[lines.len().saturating_sub(40)..].join("\n")
    )
}

/// Whether agent `name` of `list` is Up on `v`.
pub fn up_on(list: &[Value], name: &str, v: &str) -> bool {
    list.iter()
        .any(|a| a["name"] == name && a["status"] == "Up" && a["version"] == v)
}

/// `molt fleet --url URL --json ARGS` with the admin token: (exit code, JSON
/// answer or Null, stdout and stderr).
pub fn fleet(url: &str, args: &[&str]) -> (i32, Value, String) {
    let o = fleet_text(url, &[&["--json"], args].concat());
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (
        o.status.code().unwrap_or(-1),
        serde_json::from_str(&out).unwrap_or(Value::Null),
        format!("{out}\n{err}"),
    )
}

/// `molt fleet --url URL ARGS` with the admin token (text for a person).
pub fn fleet_text(url: &str, args: &[&str]) -> Output {
    let mut all = vec!["fleet", "--url", url];
    all.extend_from_slice(args);
    molt_e2e::kit::bin::molt_cmd(&all)
        .env("MOLT_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap()
}

/// One admin API call (JSON in and out); panics on a non-2xx answer.
pub fn admin(url: &str, method: &str, path: &str, body: Value) -> Value {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    admin_as(url, ADMIN_TOKEN, m, path, Some(body))
}

pub fn get(url: &str, path: &str) -> Value {
    admin(url, "GET", path, Value::Null)
}

fn list(v: Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

pub fn agents_of(url: &str) -> Vec<Value> {
    list(get(url, "/api/v1/admin/agents"))
}

/// The agent's attempts to `v` (newest first).
pub fn attempts_to(url: &str, name: &str, v: &str) -> Vec<Value> {
    list(get(url, &format!("/api/v1/admin/agents/{name}/attempts")))
        .into_iter()
        .filter(|a| a["to_version"] == v)
        .collect()
}

/// Every command queued, oldest first or as the API lists them.
pub fn commands(url: &str) -> Vec<Value> {
    list(get(url, "/api/v1/admin/commands?limit=10000"))
}

/// Commands the rollout `id` queued.
pub fn rollout_commands(url: &str, id: i64) -> Vec<Value> {
    commands(url)
        .into_iter()
        .filter(|c| c["args"]["rollout"] == id)
        .collect()
}

pub fn rollout_state(url: &str, id: i64) -> Value {
    get(url, &format!("/api/v1/admin/rollouts/{id}"))
}

/// Milliseconds since the epoch of an RFC 3339 UTC time as the API writes it.
pub fn ms(v: &Value) -> i64 {
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
