//! `molt demo`: the README's main-job command. Everything happens in a temp dir,
//! offline: TEST keys and root, signed v1 and v2 packages (with a copy of this
//! very `molt` binary as `bin/molt`), a control plane on 127.0.0.1, a fresh v1
//! install run by the supervisor (`molt run`), then a real upgrade to v2 that is
//! narrated from the agent log and the control plane's upgrade history.
use std::io::{BufRead, Seek};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use molt_layout::Home;
use molt_ops::demo::{AGENT, AGENT_TOKEN, CheckBundles, V1, V2};
use molt_protocol::{AgentStatus, AttemptResult};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Keep everything in DIR (created; must be empty) instead of a temp dir removed at the end.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
}

fn say(s: &str) {
    println!("==> {s}");
}

/// Kills the supervisor (and its agent) when the demo ends, however it ends.
struct Supervisor(Child);

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SIGTERM: the supervisor forwards it to the agent and waits for it.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.0.id().to_string())
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let (_tmp, dir) = match &a.keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            if std::fs::read_dir(d)?.next().is_some() {
                bail!("--keep {}: directory is not empty", d.display());
            }
            (None, d.canonicalize()?)
        }
        None => {
            let t = std::env::temp_dir().join(format!("molt-demo-{}", std::process::id()));
            std::fs::create_dir_all(&t)?;
            (Some(TempDir(t.clone())), t)
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let r = rt.block_on(demo(&dir, deadline));
    match r {
        Ok(()) => {
            say("Demo complete: the agent upgraded itself from v1 to v2 and is Up.");
            if a.keep.is_some() {
                println!("    everything is kept in {}", dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            eprintln!(
                "    agent log: {}",
                Home::new(dir.join("home")).agent_log().display()
            );
            if a.keep.is_none() {
                eprintln!("    (run with --keep DIR to keep the files)");
            }
            Ok(ExitCode::from(1))
        }
    }
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

include!(concat!(env!("OUT_DIR"), "/demo_bundles.rs"));

/// The signed precheck/selector bundles: `$MOLT_SIGNED_BUNDLES` when set (CI
/// rebuilds them there), else the copies embedded at build time, so a `molt`
/// installed away from the source tree runs the real checks too.
fn check_bundles() -> anyhow::Result<Option<CheckBundles>> {
    if let Some(dir) = std::env::var_os("MOLT_SIGNED_BUNDLES") {
        return Ok(CheckBundles::from_dir(Path::new(&dir))?);
    }
    let Some(root_json) = EMBEDDED_ROOT else {
        return Ok(None);
    };
    Ok(Some(CheckBundles {
        root_json: root_json.to_vec(),
        bundles: EMBEDDED_BUNDLES
            .iter()
            .map(|(n, b)| (n.to_string(), b.to_vec()))
            .collect(),
    }))
}

async fn demo(dir: &Path, deadline: Instant) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locate the running molt binary")?;
    let home_dir = dir.join("home");

    say("Generating a TEST-ONLY signing key and trust root");
    say(&format!(
        "Building signed packages for v1 ({V1}) and v2 ({V2})"
    ));
    let molt_bytes = std::fs::read(&exe).with_context(|| format!("read {}", exe.display()))?;
    let fx = molt_ops::demo::build(dir, &molt_bytes, check_bundles()?.as_ref())?;
    if !fx.have_precheck {
        say(
            "No signed precheck bundle found (signed-bundles/): the Pre Upgrade Check will be Skipped",
        );
    }

    say("Starting the control plane on 127.0.0.1 (embedded SQLite), fleet version v1");
    let mut cfg = molt_server::Config::new(dir.join("cp.db"), &fx.packages, "127.0.0.1:0".parse()?);
    cfg.admin_token = Some("demo-admin-token-0123".into());
    cfg.fleet_version = Some(V1.into());
    cfg.bootstrap_agents = vec![(AGENT.into(), AGENT_TOKEN.into())];
    cfg.logs_dir = Some(dir.join("cp-logs"));
    let server = molt_server::bind(cfg).await?;
    let url = server.url();
    let state = server.state();
    tokio::spawn(async move {
        let _ = server.run().await;
    });
    println!("    control plane listening on {url}");

    say("Installing v1 into a fresh home");
    let home = Home::new(&home_dir);
    fx.install_v1(&home, &url)?;
    println!("    {}/current -> versions/{V1}", home_dir.display());

    say("Starting the supervisor (molt run), which starts the v1 agent");
    let child = Command::new(&exe)
        .args(["run", "--home"])
        .arg(&home_dir)
        .env("MOLT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("supervisor.log"))?)
        .spawn()
        .context("start molt run")?;
    let _sup = Supervisor(child);
    wait_status(&home, V1, None, deadline)
        .await
        .context("waiting for the v1 agent to be Up")?;
    let pid1 = home.read_status()?.map(|s| s.pid);
    say(&format!("Agent is Up on v1 (pid {})", pid1.unwrap_or(0)));

    say("Setting the fleet version to v2 on the control plane (queues autoUpgrade)");
    let n = molt_server::api_admin::apply_fleet_version(&state, V2)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    println!("    autoUpgrade queued for {n} agent(s)");

    // Narrate from the agent log until the v2 agent is Up.
    let log = home.agent_log();
    let mut pos = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let keys = [
        "Checking to see if agent needs to upgrade",
        "Current packages",
        "Installed:",
        "Assigned:",
        "Missing:",
        "Downloaded:",
        "Setting agent status",
        "Performing pre-upgrade validation tests",
        "Pre-upgrade validation tests successful",
        "Aborting",
        "Package was successfully downloaded",
        "Upgrading agent",
        "Extracting:",
        "Stopping agent. Bootstrapping upgrade.",
        "Upgrade History stage",
        "Upgrade Complete",
        AttemptResult::RolledBack.as_str(),
        "Agent starting",
        "ERROR",
    ];
    loop {
        pos = narrate(&log, pos, &keys);
        if let Ok(Some(s)) = home.read_status()
            && s.status == AgentStatus::Up
            && s.version == V2
            && Some(s.pid) != pid1
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the upgrade did not finish in time (status: {:?})",
                home.read_status()
                    .ok()
                    .flatten()
                    .map(|s| (s.version, s.status))
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    narrate(&log, pos, &keys);
    say(&format!(
        "Agent is Up on v2; {}/current -> versions/{V2}",
        home_dir.display()
    ));

    // The control plane's Upgrade History.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attempts = state
        .db(|s| s.list_attempts(AGENT, 10))
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    say("Upgrade History");
    for a in &attempts {
        println!(
            "    attempt {}  {} -> {}  result: {}",
            a.id,
            short(&a.from_version),
            short(&a.to_version),
            a.result.map_or("(in progress)", |r| r.as_str())
        );
        println!("    {:<28} {:<12} message", "stage", "state");
        for s in &a.stages {
            println!(
                "    {:<28} {:<12} {}",
                s.stage.as_str(),
                s.state.as_str(),
                s.message
            );
        }
    }
    Ok(())
}

fn short(v: &str) -> &str {
    if v == V1 {
        "v1"
    } else if v == V2 {
        "v2"
    } else {
        v
    }
}

/// Print new lines of the log that carry one of `keys`; returns the new offset.
fn narrate(log: &Path, pos: u64, keys: &[&str]) -> u64 {
    let Ok(mut f) = std::fs::File::open(log) else {
        return pos;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let pos = if len < pos { 0 } else { pos };
    if f.seek(std::io::SeekFrom::Start(pos)).is_err() {
        return pos;
    }
    let mut r = std::io::BufReader::new(f);
    let mut read = pos;
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !line.ends_with('\n') {
                    break; // partial line: read it again next time
                }
                read += n as u64;
                if keys.iter().any(|k| line.contains(k)) {
                    // Drop the timestamp and level columns for readability.
                    let text = line.trim_end();
                    let msg = text
                        .split_once("  ")
                        .map(|(_, m)| m.trim_start())
                        .unwrap_or(text);
                    println!("    | {msg}");
                }
            }
        }
    }
    read
}

async fn wait_status(
    home: &Home,
    version: &str,
    not_pid: Option<u32>,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        if let Ok(Some(s)) = home.read_status()
            && s.status == AgentStatus::Up
            && s.version == version
            && Some(s.pid) != not_pid
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "timed out; supervisor log: {}",
                home.root()
                    .parent()
                    .map(|p| p.join("supervisor.log").display().to_string())
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
