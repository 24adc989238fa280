//! Back-off after a rollback: a version that failed after the hand-over (its
//! health check, a crash at start) and was rolled back is not attempted again
//! by this agent, not at restarts and not by the hourly check, until
//! - the assignment moves to another version (the record is dropped),
//! - an operator retries (`upgrade` command, `molt upgrade now`), or
//! - the back-off expires: 4 h after the first rollback of that version,
//!   doubling with each further one (8 h, 16 h, ...), capped at 3 days.
//!
//! 4 h, not less: the hourly check and a few restarts in the first hours after
//! a bad release must not try it again (the fleet's operators need the time to
//! move the assignment); 3 days caps how long a host stays behind a version
//! that was only transiently bad.
//!
//! Without it an agent whose new version crashes at start upgrades, rolls back
//! and upgrades again at its next start, forever. The record is
//! `state/held-after-rollback.json`; the runner's `work/last-deploy.json` is
//! what it learns rollbacks from.
use chrono::{DateTime, Duration, Utc};
use molt_layout::Home;
use molt_protocol::AttemptResult;

/// First back-off after a rollback.
pub const FIRST: Duration = Duration::hours(4);
/// The longest back-off.
pub const CAP: Duration = Duration::days(3);

pub use molt_layout::Held;
use molt_layout::HeldRecord as Record;

fn file(home: &Home) -> std::path::PathBuf {
    home.held_after_rollback_file()
}

/// The back-off after `rollbacks` rollbacks in a row.
pub fn backoff(rollbacks: u32) -> Duration {
    let doublings = rollbacks.saturating_sub(1).min(16);
    (FIRST * 2i32.pow(doublings)).min(CAP)
}

/// Fold the last deploy into the record and say whether `target` is held at
/// `now`. A target other than the held version drops the hold (the assignment
/// changed); `retry` (an operator's) ends it now, keeping the count, so a retry
/// that fails again backs off longer.
pub fn check(home: &Home, target: &str, now: DateTime<Utc>, retry: bool) -> Option<Held> {
    let mut rec: Record = molt_layout::read_json_opt(&file(home))
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut changed = false;
    if let Ok(Some(last)) = molt_deploy::journal::read_last(home)
        && rec.seen.is_none_or(|s| last.at > s)
    {
        rec.seen = Some(last.at);
        changed = true;
        if matches!(
            last.result,
            AttemptResult::RolledBack | AttemptResult::Failed
        ) && last.running_version != last.to_version
        {
            let rollbacks = match &rec.held {
                Some(h) if h.version == last.to_version => h.rollbacks + 1,
                _ => 1,
            };
            let h = Held {
                version: last.to_version.clone(),
                rollbacks,
                last_at: last.at,
                until: last.at + backoff(rollbacks),
            };
            tracing::warn!(version = %h.version, rollbacks, until = %h.until,
                "Version held after rollback: not attempted again before the back-off expires, the assignment changes or an operator retries");
            rec.held = Some(h);
        } else if last.result == AttemptResult::Complete {
            rec.held = None;
        }
    }
    let mut out = None;
    if let Some(h) = rec.held.clone() {
        if h.version != target {
            tracing::info!(version = %h.version, assigned = %target, "Hold after rollback released: the assignment changed");
            rec.held = None;
            changed = true;
        } else if retry && now < h.until {
            tracing::info!(version = %h.version, "Hold after rollback released by an operator's retry");
            rec.held = Some(Held { until: now, ..h });
            changed = true;
        } else if now < h.until {
            out = Some(h);
        }
    }
    if changed && let Err(e) = molt_layout::write_json_atomic(&file(home), &rec) {
        tracing::warn!(error = %e, "Cannot record the hold after rollback");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use molt_deploy::journal::{LastDeploy, write_last};

    fn rolled_back(home: &Home, to: &str, at: DateTime<Utc>) {
        write_last(
            home,
            &LastDeploy {
                attempt_id: None,
                from_version: "v1".into(),
                to_version: to.into(),
                result: AttemptResult::RolledBack,
                message: "health check failed".into(),
                running_version: "v1".into(),
                at,
            },
        )
        .unwrap();
    }

    #[test]
    fn backoff_doubles_from_four_hours_and_stops_at_three_days() {
        assert_eq!(backoff(0), Duration::hours(4));
        assert_eq!(backoff(1), Duration::hours(4));
        assert_eq!(backoff(2), Duration::hours(8));
        assert_eq!(backoff(3), Duration::hours(16));
        assert_eq!(backoff(4), Duration::hours(32));
        assert_eq!(backoff(5), Duration::hours(64));
        assert_eq!(backoff(6), Duration::days(3));
        assert_eq!(backoff(60), Duration::days(3));
        assert_eq!(backoff(u32::MAX), Duration::days(3));
    }

    #[test]
    fn a_rolled_back_version_is_held_until_the_backoff_the_assignment_or_a_retry() {
        let t = tempfile::tempdir().unwrap();
        let home = Home::new(t.path());
        std::fs::create_dir_all(home.work_dir()).unwrap();
        std::fs::create_dir_all(home.state_dir()).unwrap();
        let t0 = Utc::now();
        assert_eq!(check(&home, "v2", t0, false), None, "nothing failed yet");
        rolled_back(&home, "v2", t0);
        // Held at restarts and hourly checks for four hours, however often
        // asked (two hours later included: the e2e test's faked clock).
        for m in [0, 1, 30, 60, 120, 180, 239] {
            let h = check(&home, "v2", t0 + Duration::minutes(m), false);
            assert_eq!(h.map(|h| h.rollbacks), Some(1), "minute {m}");
        }
        assert_eq!(check(&home, "v2", t0 + Duration::minutes(241), false), None);
        // A second rollback of the same version: eight hours.
        let t1 = t0 + Duration::minutes(242);
        rolled_back(&home, "v2", t1);
        let h = check(&home, "v2", t1 + Duration::hours(7), false).unwrap();
        assert_eq!((h.rollbacks, h.until), (2, t1 + Duration::hours(8)));
        // An operator's retry releases it at once.
        assert_eq!(check(&home, "v2", t1 + Duration::hours(7), true), None);
        assert_eq!(
            check(
                &home,
                "v2",
                t1 + Duration::hours(7) + Duration::minutes(1),
                false
            ),
            None
        );
        // The fleet moving to another version releases it too.
        let t2 = t1 + Duration::hours(9);
        rolled_back(&home, "v2", t2);
        assert!(check(&home, "v2", t2, false).is_some());
        assert_eq!(check(&home, "v3", t2, false), None);
        assert_eq!(check(&home, "v2", t2 + Duration::minutes(1), false), None);
    }
}
