//! What keeps an agent out of a rollout, end to end (issue 15): a real `molt
//! serve` and real agents, each under its own supervisor (`molt run`), driven
//! through `molt fleet` (`--json` and text).
//!
//! - The readiness gate: an agent whose precheck of the target version blocks
//!   (the committed `file-locks` check: a process other than the agent holds a
//!   file under its `versions/`) holds its group, and the status says who and
//!   why; once the cause is gone and readiness is run again, the group starts
//!   and completes.
//! - A maintenance window in an IANA zone (Pacific/Kiritimati, UTC+14:00 all
//!   year): one closed now there (but open now if read as UTC) admits nobody
//!   and says when it opens; one open now there (closed if read as UTC) proceeds.
//! - A control-plane pin keeps an agent out of that rollout: no command, Up on
//!   its pinned version while the others complete; cleared, it is upgraded.

#[path = "../src/rollout_fx.rs"]
mod rollout_fx;

use rollout_fx::*;
use serde_json::{Value, json};

/// The rollout's `waiting` once `done` holds for it (bounded).
fn wait_waiting(url: &str, id: i64, what: &str, done: impl Fn(&str) -> bool) -> Value {
    let mut st = Value::Null;
    wait_for(what, T, || {
        st = rollout_state(url, id);
        st["waiting"].as_str().is_some_and(&done)
    });
    st
}

/// `molt fleet rollout status ID` (JSON, exit 0) and its text output, which
/// must say the same waiting reason.
fn status_saying(url: &str, id: i64, waiting: &str) -> Value {
    let (code, st, out) = fleet(url, &["rollout", "status", &id.to_string()]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(st["waiting"], waiting, "{out}");
    assert_eq!(st["state"], "Running", "{out}");
    let o = fleet_text(url, &["rollout", "status", &id.to_string()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains(waiting), "{o:?}");
    st
}

/// The names of the agents `cmds` are for, sorted.
fn agents_in(cmds: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = cmds
        .iter()
        .map(|c| c["agent"].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

/// Each of `names` has exactly one attempt to `v`, Complete.
fn one_complete_attempt(url: &str, names: &[&str], v: &str) {
    for n in names {
        let at = attempts_to(url, n, v);
        assert_eq!(at.len(), 1, "{n}: {at:?}");
        assert_eq!(at[0]["result"], "Complete", "{n}: {at:?}");
    }
}

#[test]
fn the_readiness_gate_holds_a_group_while_an_agent_blocks_and_starts_it_once_ready() {
    let k = releases(&[V1, V2]);
    // V2's precheck: the committed file-locks check alone.
    precheck_bundle(&k, V2, &["file_locks"]);
    let f = Fleet::start(
        k,
        V1,
        &[("lon-1", "lon"), ("par-1", "par"), ("par-2", "par")],
    );
    let url = f.url();
    // The blocking cause on par-2 only: this test process holds a file of
    // its installed version open.
    let held = std::fs::File::open(f.homes[2].version_dir(V1).join("lib/version.txt")).unwrap();

    let id = f.create_rollout(
        V2,
        &[
            "lon label.site=lon canary=0 max_in_flight=1",
            "rest canary=0 max_in_flight=2",
        ],
        &["--readiness-gate", "1"],
    );
    // The gate ran everyone's precheck by itself: lon goes, rest waits for par-2.
    let blocked = format!(
        "waiting for readiness of group rest: 1 of 2 agents Ready for {V2} (gate 100%); blocking: par-2 (Not Ready: Not Ready for {V2}: 1 blocking finding(s): files.locked: Processes other than the agent hold files"
    );
    let st = wait_waiting(url, id, "the rest waiting for par-2's readiness", |w| {
        w.starts_with(&blocked)
    });
    let waiting = st["waiting"].as_str().unwrap_or_default().to_string();
    let st = status_saying(url, id, &waiting);
    let groups = &st["group_progress"];
    assert!(
        groups[0]["completed_at"].is_string() && groups[1]["started_at"].is_null(),
        "{st:#}"
    );
    assert_eq!(agents_in(&rollout_commands(url, id)), ["lon-1"]);
    wait_for("lon-1 Up on V2", T, || up_on(&agents_of(url), "lon-1", V2));
    let list = agents_of(url);
    for n in ["par-1", "par-2"] {
        assert!(up_on(&list, n, V1), "{n}: {list:?}");
        assert!(attempts_to(url, n, V2).is_empty(), "{n}");
    }
    // `molt fleet readiness` says the same.
    let (code, r, out) = fleet(url, &["readiness", V2]);
    assert_eq!(code, 0, "{out}");
    let row = |n: &str| {
        r["agents"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["agent"] == n).cloned())
            .unwrap_or_else(|| panic!("{n} in {out}"))
    };
    assert_eq!(row("par-1")["readiness"], "Ready", "{out}");
    assert_eq!(row("par-2")["readiness"], "Not Ready", "{out}");
    assert!(
        row("par-2")["message"]
            .as_str()
            .is_some_and(|m| m.contains("files.locked")),
        "{out}"
    );

    // The cause removed and readiness run again: the group starts and completes.
    drop(held);
    let (code, r, out) = fleet(url, &["readiness", V2, "--run"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(r["queued"], 3, "every agent: {out}");
    let rerun = commands(url)
        .iter()
        .filter(|c| c["agent"] == "par-2" && c["kind"] == "runPrecheck")
        .filter_map(|c| c["id"].as_i64())
        .max()
        .unwrap_or_else(|| panic!("par-2's runPrecheck: {out}"));
    f.wait_rollout(id, "Completed", T);
    wait_for("every agent Up on V2", T, || f.all_up_on(V2));
    one_complete_attempt(url, &["lon-1", "par-1", "par-2"], V2);
    let cmds = rollout_commands(url, id);
    assert_eq!(agents_in(&cmds), ["lon-1", "par-1", "par-2"], "{cmds:?}");
    // par-2 was sent its upgrade only after the re-run's precheck was queued.
    for c in cmds.iter().filter(|c| c["agent"] != "lon-1") {
        assert!(c["id"].as_i64() > Some(rerun), "{c} before {rerun}");
    }
    let st = rollout_state(url, id);
    assert!(st["waiting"].is_null(), "{st:#}");
}

/// Minutes of the day as `HH:MM` (wrapping).
fn hhmm(min: i64) -> String {
    let m = min.rem_euclid(1440);
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// lon-1 and par-1 Up on V1, V2 served.
fn two_agents() -> Fleet {
    Fleet::start(
        releases(&[V1, V2]),
        V1,
        &[("lon-1", "lon"), ("par-1", "par")],
    )
}

#[test]
fn a_window_in_an_iana_zone_admits_nobody_while_closed_there_and_proceeds_once_open() {
    let f = two_agents();
    let url = f.url();
    // Two-hour windows around now, every day, in Pacific/Kiritimati
    // (UTC+14:00 all year): one around now as UTC reads it (there it is 10 h
    // later: closed), one around now there (closed if read as UTC).
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let utc_min = secs % 86_400 / 60;
    let zone_min = utc_min + 14 * 60;
    let window = |at: i64| format!("*@{}-{}", hhmm(at - 60), hhmm(at + 60));
    let group = |at: i64| {
        format!(
            "all canary=1 max_in_flight=2 window={} tz=Pacific/Kiritimati",
            window(at)
        )
    };

    let closed = f.create_rollout(V2, &[&group(utc_min)], &[]);
    // It opens when Kiritimati reaches utc_min - 60: 9 h after this minute.
    let opens = (secs - secs % 60 + 9 * 3600) * 1000;
    let st = wait_waiting(url, closed, "the rollout waiting for its window", |w| {
        w.starts_with("waiting for maintenance window ")
    });
    let waiting = st["waiting"].as_str().unwrap_or_default().to_string();
    assert_eq!(
        ms(&json!(waiting.rsplit(' ').next().unwrap_or_default())),
        opens,
        "{waiting}"
    );
    let st = status_saying(url, closed, &waiting);
    assert_eq!(st["admitted"], json!([]), "{st:#}");
    assert!(st["group_progress"][0]["started_at"].is_null(), "{st:#}");
    assert_eq!(
        st["group_progress"][0]["windows"],
        json!([format!("{} Pacific/Kiritimati", window(utc_min))]),
        "{st:#}"
    );
    assert!(rollout_commands(url, closed).is_empty());
    let (code, _, out) = fleet(url, &["rollout", "abort", &closed.to_string()]);
    assert_eq!(code, 0, "{out}");
    let (code, _, out) = fleet(url, &["blocklist", "clear", V2]);
    assert_eq!(code, 0, "{out}");

    // Open now in the zone: it proceeds.
    let open = f.create_rollout(V2, &[&group(zone_min)], &[]);
    f.wait_rollout(open, "Completed", T);
    wait_for("every agent Up on V2", T, || f.all_up_on(V2));
    one_complete_attempt(url, &["lon-1", "par-1"], V2);
    assert_eq!(agents_in(&rollout_commands(url, open)), ["lon-1", "par-1"]);
    let (_, st, out) = fleet(url, &["rollout", "status", &open.to_string()]);
    assert_eq!(st["admitted"].as_array().map(Vec::len), Some(2), "{out}");
    assert!(st["waiting"].is_null(), "{out}");
}

#[test]
fn a_pinned_agent_stays_out_of_a_rollout_and_is_upgraded_once_the_pin_is_cleared() {
    let f = two_agents();
    let url = f.url();
    let (code, p, out) = fleet(url, &["pin", "par-1", V1]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(p["pin"], V1, "{out}");
    // Setting the pin queues par-1 one autoUpgrade (so it asks at once); it
    // is answered the pin it already runs. Nothing after it may reach par-1.
    let pin_cmds: Vec<Value> = commands(url)
        .into_iter()
        .filter(|c| c["agent"] == "par-1")
        .collect();
    assert_eq!(pin_cmds.len(), 1, "{pin_cmds:?}");
    assert_eq!(pin_cmds[0]["kind"], "autoUpgrade", "{pin_cmds:?}");
    let pin_cmd_id = pin_cmds[0]["id"].as_i64().unwrap_or(i64::MAX);

    // The rollout completes for every agent but the pinned one.
    let id = f.create_rollout(V2, &["all canary=1 max_in_flight=2"], &[]);
    f.wait_rollout(id, "Completed", T);
    wait_for("lon-1 Up on V2", T, || up_on(&agents_of(url), "lon-1", V2));
    one_complete_attempt(url, &["lon-1"], V2);
    assert_eq!(agents_in(&rollout_commands(url, id)), ["lon-1"]);
    let (_, st, out) = fleet(url, &["rollout", "status", &id.to_string()]);
    assert_eq!(st["admitted"].as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(get(url, "/api/v1/admin/fleet")["version"], V2);
    // The pinned agent: no upgrade command since the pin's, no attempt, Up on V1.
    let upgrades = commands(url)
        .into_iter()
        .filter(|c| {
            c["agent"] == "par-1"
                && c["id"].as_i64().is_some_and(|id| id > pin_cmd_id)
                && matches!(c["kind"].as_str(), Some("autoUpgrade" | "upgrade"))
        })
        .count();
    assert_eq!(upgrades, 0);
    assert!(attempts_to(url, "par-1", V2).is_empty());
    assert!(up_on(&agents_of(url), "par-1", V1));

    // The pin cleared: par-1 follows the fleet to V2.
    let (code, p, out) = fleet(url, &["pin", "par-1", "--clear"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(p["pin"], Value::Null, "{out}");
    // Nothing else tells the agent: it reads its assignment again at start,
    // on a command, or at its hourly check; the pin's change must queue it an
    // autoUpgrade, as a fleet version change does for every agent.
    wait_for("par-1 upgraded to V2 after its pin was cleared", T, || {
        up_on(&agents_of(url), "par-1", V2)
            && attempts_to(url, "par-1", V2)
                .first()
                .is_some_and(|a| a["result"] == "Complete")
    });
    one_complete_attempt(url, &["par-1"], V2);
}
