//! Process questions asked of the OS directly (`kill(pid, 0)`, `/proc`), never by
//! parsing the localized output of a command (seeds 7.9, 7.14).
use std::time::{Duration, Instant};

/// Is `pid` a live process? A zombie (exited, not yet reaped) counts as gone.
pub fn alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only checks existence and permission.
    let rc = unsafe { libc::kill(pid as i32, 0) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // EPERM: exists but belongs to someone else.
        return e.raw_os_error() == Some(libc::EPERM);
    }
    !is_zombie(pid)
}

#[cfg(target_os = "linux")]
fn is_zombie(pid: u32) -> bool {
    // /proc/<pid>/stat: "pid (comm) S ...": the state follows the last ')'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|st| st == "Z" || st == "X"),
        Err(_) => false,
    }
}

#[cfg(not(target_os = "linux"))]
fn is_zombie(_pid: u32) -> bool {
    false
}

/// When `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field 22).
/// With the pid it names one process for good: a pid recorded earlier and
/// reused since has another start time.
#[cfg(target_os = "linux")]
pub fn start_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(comm)": state is field 3, starttime field 22.
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(not(target_os = "linux"))]
pub fn start_ticks(_pid: u32) -> Option<u64> {
    None
}

/// Is `pid` still the process that had start time `recorded`? Without a
/// recorded start time only liveness can be asked.
pub fn same_process(pid: u32, recorded: Option<u64>) -> bool {
    match (recorded, start_ticks(pid)) {
        (Some(r), Some(now)) => r == now && alive(pid),
        (Some(_), None) => false,
        (None, _) => alive(pid),
    }
}

/// Send a signal; a process that is already gone is not an error.
pub fn signal(pid: u32, sig: i32) {
    if pid == 0 || pid > i32::MAX as u32 {
        return;
    }
    // SAFETY: plain kill(2).
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Wait until every pid is gone; returns the ones still alive at the deadline.
pub fn wait_gone(pids: &[u32], limit: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || start.elapsed() >= limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes (other than ourselves) holding an open file or mapping under `dir`.
/// Used to defer pruning of a version dir that is still in use.
#[cfg(target_os = "linux")]
pub fn users_of(dir: &std::path::Path) -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for ent in rd.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let base = ent.path();
        let mut uses = false;
        if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            for fd in fds.flatten() {
                if let Ok(t) = std::fs::read_link(fd.path())
                    && t.starts_with(dir)
                {
                    uses = true;
                    break;
                }
            }
        }
        if !uses && let Ok(t) = std::fs::read_link(base.join("exe")) {
            uses = t.starts_with(dir);
        }
        if !uses && let Ok(t) = std::fs::read_link(base.join("cwd")) {
            uses = t.starts_with(dir);
        }
        if uses {
            out.push(pid);
        }
    }
    out
}

#[cfg(not(target_os = "linux"))]
pub fn users_of(_dir: &std::path::Path) -> Vec<u32> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_alive_and_a_reaped_child_is_not() {
        assert!(alive(std::process::id()));
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        assert!(!alive(pid));
    }

    #[test]
    fn a_recorded_start_time_tells_a_reused_pid_apart() {
        let me = std::process::id();
        let t = start_ticks(me).expect("linux /proc");
        assert!(same_process(me, Some(t)));
        assert!(!same_process(me, Some(t + 1)), "another start time: not us");
        assert!(same_process(me, None));
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        assert!(!same_process(pid, Some(t)));
    }

    #[test]
    fn an_exited_unreaped_child_counts_as_gone() {
        let c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        assert!(wait_gone(&[pid], Duration::from_secs(10)).is_empty());
        drop(c);
    }
}
