//! Staged rollouts of a version (`/api/v1/admin/rollouts`, docs/control-plane.md
//! "Rollouts").
//!
//! A rollout names a target version and ordered groups of agents chosen by
//! label selectors (an empty selector is the catch-all, allowed only last).
//! In each group the first `canary` agents (by name) upgrade first; when they
//! have finished, the rest follow with at most the rollout's max in flight
//! under way ([`RolloutSpec::limit`]: fleet-wide, a count or a % of the
//! rollout's agents, with an optional per-group cap). That one number is also
//! the upgrade semaphore's limit, held in the store ([`sync_slot_limit`])
//! while the rollout is open;
//! `soak_secs` after the group's last completion the next group starts. When
//! a group's Failed / Rolled Back attempts reach its `failure_threshold` the
//! rollout halts with the reason and the agents, and its version goes on the
//! fleet-wide blocklist. An attempt whose Health Check stage failed counts as a
//! failure as soon as that stage is reported (the runner reports it once the
//! rollback is done, just before the attempt's result; a runner that dies
//! there leaves the attempt open with only the stage). A group may carry maintenance [`Window`]s (days and
//! hours at a fixed UTC offset) and a jitter: its agents are admitted only
//! inside a window, each no earlier than the opening plus a hash of its name
//! modulo the jitter; outside, the rollout waits for the next opening.
//!
//! With a readiness gate (`readiness_gate`: the ratio of a group's agents that
//! must be Ready, 1.0 = all), a group starts only when its agents' latest
//! `runPrecheck {version}` of the target version (the fleet readiness run,
//! `api_admin::readiness_for`) shows no blocking finding for that share; the
//! scheduler queues the run for members never checked, and until then the
//! rollout waits, saying which agents block and why.
//!
//! [`decide`] is the scheduler's whole judgement, a pure function over a
//! [`Snapshot`]; [`tick`] builds the snapshot from the store and applies the
//! [`Plan`]. "Upgrading an agent" means admitting it: from then on the
//! assignment answers it the rollout's version ([`RolloutCache`]), and an
//! `autoUpgrade` command is queued for it.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::model::{AttemptResult, Labels};
use crate::state::AppState;
use molt_protocol::RolloutState;

/// At most this many agents under way: a count or a percentage (of the rollout's
/// agents fleet-wide, of the group's for a group cap).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InFlight {
    Count(u32),
    Percent(u32),
}

impl InFlight {
    /// The number for a group of `size` agents (at least 1).
    pub fn limit(self, size: usize) -> usize {
        match self {
            InFlight::Count(n) => n.max(1) as usize,
            InFlight::Percent(p) => (size * p as usize).div_ceil(100).max(1),
        }
    }
}

/// The number of a percentage written `N%` (spaces allowed around).
fn percent<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.trim().strip_suffix('%')?.trim().parse().ok()
}

impl Serialize for InFlight {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            InFlight::Count(n) => s.serialize_u32(*n),
            InFlight::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for InFlight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        let bad = || serde::de::Error::custom("max_in_flight must be a number or \"N%\"");
        match Raw::deserialize(d)? {
            Raw::N(0) => Err(serde::de::Error::custom("max_in_flight must be at least 1")),
            Raw::N(n) => Ok(InFlight::Count(n)),
            Raw::S(s) => {
                let p: u32 = percent(&s).ok_or_else(bad)?;
                if p == 0 || p > 100 {
                    return Err(serde::de::Error::custom(
                        "max_in_flight percentage must be 1% to 100%",
                    ));
                }
                Ok(InFlight::Percent(p))
            }
        }
    }
}

/// When a group's failures halt the rollout: a count, or a ratio of the group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Count(u32),
    Ratio(f64),
}

impl Threshold {
    /// Whether `failures` in a group of `size` reach the threshold.
    pub fn reached(self, failures: usize, size: usize) -> bool {
        failures > 0
            && match self {
                Threshold::Count(n) => failures >= n.max(1) as usize,
                Threshold::Ratio(r) => failures as f64 >= r * size as f64,
            }
    }
}

impl Serialize for Threshold {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Threshold::Count(n) => s.serialize_u32(*n),
            Threshold::Ratio(r) => s.serialize_f64(*r),
        }
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(f64),
            S(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "failure_threshold must be a count (1, 2, ...), a ratio (0 < r < 1) or \"N%\"",
            )
        };
        let r = match Raw::deserialize(d)? {
            Raw::N(x) if x >= 1.0 && x.fract() == 0.0 && x <= f64::from(u32::MAX) => {
                return Ok(Threshold::Count(x as u32));
            }
            Raw::N(x) => x,
            Raw::S(s) => percent::<f64>(&s).ok_or_else(bad)? / 100.0,
        };
        if r > 0.0 && r <= 1.0 {
            Ok(Threshold::Ratio(r))
        } else {
            Err(bad())
        }
    }
}

/// A maintenance window: days of the week and an hour range in an IANA time
/// zone or at a fixed UTC offset, written `DAYS@HH:MM-HH:MM ZONE`
/// (`Mon-Fri@02:00-04:00 Europe/Berlin`, daylight saving time followed) or
/// `DAYS@HH:MM-HH:MM±HH:MM` (`Mon-Fri@02:00-04:00+00:00`,
/// `Sat,Sun@22:00-02:00+01:00`, `*@00:00-24:00+00:00`). DAYS are the days the
/// window opens on; an end before the start runs past midnight into the next
/// day. In a zone, an opening that falls in a spring-forward gap moves to the
/// end of the gap, one repeated in autumn takes the first; the window then
/// stays open its length in elapsed time.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    text: String,
    /// Bit 0 Monday … bit 6 Sunday.
    days: u8,
    start_min: u32,
    /// Minutes the window stays open (1 to 1440).
    len_min: u32,
    offset_min: i32,
    /// The IANA zone (then `offset_min` is unused).
    tz: Option<chrono_tz::Tz>,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Why a maintenance window does not parse: the text and the problem, with
/// the syntax spelled out (the API answers it as a 422).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error(
    "window {text:?}: {problem} (expected DAYS@HH:MM-HH:MM ZONE or DAYS@HH:MM-HH:MM+HH:MM, e.g. Mon-Fri@02:00-04:00 Europe/Berlin or Mon-Fri@02:00-04:00+00:00)"
)]
pub struct WindowError {
    pub text: String,
    pub problem: WindowProblem,
}

/// What is wrong with a window's text.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WindowProblem {
    #[error("no `@`")]
    NoAt,
    #[error("unknown day {0:?} (Mon … Sun)")]
    UnknownDay(String),
    #[error("a time is not HH:MM")]
    NotHhMm,
    #[error("a time is out of range")]
    TimeOutOfRange,
    #[error("unknown time zone {0:?} (an IANA name such as Europe/Berlin)")]
    UnknownZone(String),
    #[error("no time zone or UTC offset (Europe/Berlin, +HH:MM or -HH:MM)")]
    NoZone,
    #[error("no hour range")]
    NoRange,
    #[error("the range is empty (00:00-24:00 for a whole day)")]
    EmptyRange,
}

impl Window {
    /// Parses `DAYS@HH:MM-HH:MM ZONE` or `DAYS@HH:MM-HH:MM±HH:MM`.
    pub fn parse(s: &str) -> Result<Window, WindowError> {
        let bad = |problem: WindowProblem| WindowError {
            text: s.to_string(),
            problem,
        };
        let (days_s, rest) = s
            .trim()
            .split_once('@')
            .ok_or_else(|| bad(WindowProblem::NoAt))?;
        let day = |d: &str| {
            DAY_NAMES
                .iter()
                .position(|n| n.eq_ignore_ascii_case(d.trim()))
                .ok_or_else(|| bad(WindowProblem::UnknownDay(d.to_string())))
        };
        let mut days = 0u8;
        if days_s.trim() == "*" {
            days = 0x7f;
        } else {
            for part in days_s.split(',') {
                match part.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (day(a)?, day(b)?);
                        let mut d = a;
                        loop {
                            days |= 1 << d;
                            if d == b {
                                break;
                            }
                            d = (d + 1) % 7;
                        }
                    }
                    None => days |= 1 << day(part)?,
                }
            }
        }
        let hm = |t: &str, max: u32| -> Result<u32, WindowError> {
            let not_hm = || bad(WindowProblem::NotHhMm);
            let (h, m) = t.split_once(':').ok_or_else(not_hm)?;
            let (h, m): (u32, u32) = (
                h.parse().map_err(|_| not_hm())?,
                m.parse().map_err(|_| not_hm())?,
            );
            if h <= 24 && m < 60 && h * 60 + m <= max {
                Ok(h * 60 + m)
            } else {
                Err(bad(WindowProblem::TimeOutOfRange))
            }
        };
        let (range, offset_min, tz) = match rest.trim().split_once(char::is_whitespace) {
            // An IANA zone after a space.
            Some((range, zone)) => {
                let tz: chrono_tz::Tz = zone
                    .trim()
                    .parse()
                    .map_err(|_| bad(WindowProblem::UnknownZone(zone.trim().to_string())))?;
                (range, 0, Some(tz))
            }
            None => {
                // The offset starts at the last '+' or '-' (the hour range's '-' comes before it).
                let at = rest
                    .rfind(['+', '-'])
                    .filter(|i| *i > 5)
                    .ok_or_else(|| bad(WindowProblem::NoZone))?;
                let (range, off) = rest.split_at(at);
                let sign = if off.starts_with('-') { -1 } else { 1 };
                (range, sign * hm(&off[1..], 14 * 60)? as i32, None)
            }
        };
        let (a, b) = range
            .split_once('-')
            .ok_or_else(|| bad(WindowProblem::NoRange))?;
        let start_min = hm(a, 23 * 60 + 59)?;
        let end_min = hm(b, 24 * 60)?;
        if end_min == start_min {
            return Err(bad(WindowProblem::EmptyRange));
        }
        let len_min = (end_min + 1440 - start_min) % 1440;
        Ok(Window {
            text: s.trim().to_string(),
            days,
            start_min,
            len_min: if len_min == 0 { 1440 } else { len_min },
            offset_min,
            tz,
        })
    }

    /// Seconds the window stays open.
    pub fn len_secs(&self) -> i64 {
        i64::from(self.len_min) * 60
    }

    /// The openings of this window from the day before `now`'s (local) day to a week after.
    fn openings(&self, now: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        use chrono::{Datelike, TimeZone};
        let offset = chrono::Duration::minutes(i64::from(self.offset_min));
        let today = match self.tz {
            Some(tz) => now.with_timezone(&tz).date_naive(),
            None => (now.naive_utc() + offset).date(),
        };
        (-1..=8).filter_map(move |d| {
            let date = today + chrono::Duration::days(d);
            if self.days & (1 << date.weekday().num_days_from_monday()) == 0 {
                return None;
            }
            let local =
                date.and_hms_opt(0, 0, 0)? + chrono::Duration::minutes(i64::from(self.start_min));
            match self.tz {
                None => Some((local - offset).and_utc()),
                Some(tz) => match tz.from_local_datetime(&local) {
                    chrono::LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
                    chrono::LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
                    // In a spring-forward gap: the first local time after it.
                    chrono::LocalResult::None => (1..=180).find_map(|m| {
                        tz.from_local_datetime(&(local + chrono::Duration::minutes(m)))
                            .earliest()
                            .map(|t| t.with_timezone(&Utc))
                    }),
                },
            }
        })
    }
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Window::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Where `now` stands against a set of windows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WindowAt {
    /// Inside a window that opened at this time.
    Open(DateTime<Utc>),
    /// Outside every window; the next opens at this time.
    Closed(DateTime<Utc>),
}

/// `now` against `windows` (None: no windows, always open).
pub fn window_at(windows: &[Window], now: DateTime<Utc>) -> Option<WindowAt> {
    if windows.is_empty() {
        return None;
    }
    let mut open: Option<DateTime<Utc>> = None;
    let mut next: Option<DateTime<Utc>> = None;
    for w in windows {
        for o in w.openings(now) {
            if o <= now && now < o + chrono::Duration::seconds(w.len_secs()) {
                open = Some(open.map_or(o, |x| x.min(o)));
            } else if o > now {
                next = Some(next.map_or(o, |x| x.min(o)));
            }
        }
    }
    Some(match (open, next) {
        (Some(o), _) => WindowAt::Open(o),
        // Every window opens at least once a week: `next` is always found.
        (None, n) => WindowAt::Closed(n.unwrap_or(now)),
    })
}

/// An agent's jitter: a hash (FNV-1a) of its name modulo `jitter_secs`.
pub fn jitter_of(name: &str, jitter_secs: u64) -> u64 {
    if jitter_secs == 0 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % jitter_secs
}

/// The status line while a group waits for its window.
pub fn waiting_for(next: DateTime<Utc>) -> String {
    format!(
        "waiting for maintenance window {}",
        next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

fn first_failure() -> Threshold {
    Threshold::Count(1)
}

/// One group of a rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    /// Labels an agent must all carry; empty: every agent not in an earlier group.
    #[serde(default)]
    pub selector: Labels,
    /// Agents (the first by name) that upgrade before the rest of the group.
    #[serde(default)]
    pub canary: u32,
    /// A cap on the rollout's max in flight while this group runs (a % of the group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<InFlight>,
    /// Seconds after the group's last completion before the next group starts.
    #[serde(default)]
    pub soak_secs: u64,
    #[serde(default = "first_failure")]
    pub failure_threshold: Threshold,
    /// Maintenance windows: agents of the group are admitted only inside one
    /// (none: at any time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
    /// An agent is admitted no earlier than the window's opening plus its
    /// jitter, a hash of its name modulo this (needs windows; less than the shortest).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub jitter_secs: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl GroupSpec {
    /// The waiting reason when `now` is outside every window of the group.
    pub fn window_wait(&self, now: DateTime<Utc>) -> Option<String> {
        match window_at(&self.windows, now) {
            Some(WindowAt::Closed(next)) => Some(waiting_for(next)),
            _ => None,
        }
    }
}

/// The body of `POST /api/v1/admin/rollouts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    pub version: String,
    /// Fleet-wide: at most this many agents under way, a count or a % of the
    /// rollout's agents; also the semaphore's limit while the rollout is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<InFlight>,
    /// A group starts only when at least this share (0 < r <= 1) of its Up
    /// agents is Ready for the version (no blocking precheck finding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_gate: Option<f64>,
    pub groups: Vec<GroupSpec>,
}

/// A label name or value the control plane accepts.
pub fn label_ok(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Refuses labels that are not 1–63 (values 200) letters, digits, '-', '_' or '.'.
pub fn check_labels(field: &str, labels: &Labels) -> Result<(), ApiError> {
    if labels.len() > 64 {
        return Err(ApiError::unprocessable(format!(
            "field `{field}` has more than 64 labels"
        )));
    }
    for (k, v) in labels {
        if !label_ok(k, 63) || !label_ok(v, 200) {
            return Err(ApiError::unprocessable(format!(
                "field `{field}`: label {k:?} = {v:?}: names (1 to 63) and values (1 to 200) may contain only letters, digits, '-', '_' and '.'"
            )));
        }
    }
    Ok(())
}

impl RolloutSpec {
    /// Refuses a spec the scheduler cannot run.
    pub fn check(&self) -> Result<(), ApiError> {
        crate::api_agent::check_version("version", &self.version)?;
        if self.groups.is_empty() {
            return Err(ApiError::unprocessable("field `groups` must not be empty"));
        }
        if let Some(r) = self.readiness_gate
            && !(r > 0.0 && r <= 1.0)
        {
            return Err(ApiError::unprocessable(
                "field `readiness_gate` must be a ratio, 0 < r <= 1 (1: every agent Ready)",
            ));
        }
        if self.groups.len() > 100 {
            return Err(ApiError::unprocessable(
                "field `groups` has more than 100 entries",
            ));
        }
        let mut names = HashSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            crate::api_agent::check_name(&format!("groups[{i}].name"), &g.name)?;
            if !names.insert(g.name.as_str()) {
                return Err(ApiError::unprocessable(format!(
                    "groups[{i}].name: group {:?} is named twice",
                    g.name
                )));
            }
            check_labels(&format!("groups[{i}].selector"), &g.selector)?;
            if g.selector.is_empty() && i + 1 != self.groups.len() {
                return Err(ApiError::unprocessable(format!(
                    "groups[{i}] ({}): the catch-all group (empty selector) must be the last",
                    g.name
                )));
            }
            if g.windows.len() > 20 {
                return Err(ApiError::unprocessable(format!(
                    "groups[{i}].windows has more than 20 entries"
                )));
            }
            if g.jitter_secs > 0 {
                let shortest = g.windows.iter().map(Window::len_secs).min();
                match shortest {
                    None => {
                        return Err(ApiError::unprocessable(format!(
                            "groups[{i}].jitter_secs: a jitter needs maintenance windows"
                        )));
                    }
                    Some(s) if g.jitter_secs as i64 >= s => {
                        return Err(ApiError::unprocessable(format!(
                            "groups[{i}].jitter_secs: {} s is not shorter than the shortest window ({s} s)",
                            g.jitter_secs
                        )));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The index of the group an agent with these labels belongs to.
    pub fn group_of(&self, labels: &Labels) -> Option<usize> {
        self.groups.iter().position(|g| {
            g.selector
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
        })
    }

    /// The max in flight while group `g` (of `size` agents, `total` in the
    /// whole rollout) runs: the fleet-wide number, lowered by the group's cap
    /// (only a cap: the cap; neither: 1). Groups run one after the other, so
    /// this one number bounds the rollout's attempts and the semaphore.
    pub fn limit(&self, g: usize, size: usize, total: usize) -> usize {
        let fleet = self.max_in_flight.map(|f| f.limit(total));
        let cap = self
            .groups
            .get(g)
            .and_then(|x| x.max_in_flight)
            .map(|c| c.limit(size));
        match (fleet, cap) {
            (Some(f), Some(c)) => f.min(c),
            (Some(n), None) | (None, Some(n)) => n,
            (None, None) => 1,
        }
    }

    /// Whether the last group is the catch-all (the rollout covers every agent).
    pub fn covers_all(&self) -> bool {
        self.groups.last().is_some_and(|g| g.selector.is_empty())
    }
}

/// An agent's admission into a rollout, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Admission {
    pub group: usize,
    pub at: DateTime<Utc>,
    /// How its attempt ended, once the scheduler has seen it.
    pub result: Option<(AttemptResult, DateTime<Utc>)>,
}

/// What the attempts say about an admitted agent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Observed {
    /// No attempt to the version since admission, and not on it.
    NotStarted,
    InFlight,
    Finished(AttemptResult, DateTime<Utc>),
}

/// An agent's readiness for the target version (its latest `runPrecheck {version}`).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Ready {
    Ready,
    /// The precheck found a blocking finding (the command's message names it).
    NotReady(String),
    /// Queued or running.
    Pending,
    #[default]
    NotChecked,
}

impl Ready {
    /// From `api_admin::Readiness` (its words and message).
    pub fn of(word: molt_protocol::Readiness, message: Option<&str>) -> Ready {
        use molt_protocol::Readiness as R;
        match word {
            R::Ready => Ready::Ready,
            R::NotReady => Ready::NotReady(message.unwrap_or_default().to_string()),
            R::Pending => Ready::Pending,
            R::NotChecked => Ready::NotChecked,
        }
    }

    fn words(&self) -> String {
        match self {
            Ready::Ready => molt_protocol::Readiness::Ready.to_string(),
            Ready::NotReady(m) if m.is_empty() => molt_protocol::Readiness::NotReady.to_string(),
            Ready::NotReady(m) => format!(
                "{}: {}",
                molt_protocol::Readiness::NotReady,
                m.chars().take(160).collect::<String>()
            ),
            Ready::Pending => "precheck pending".into(),
            Ready::NotChecked => "not checked".into(),
        }
    }
}

/// One agent as the scheduler sees it.
#[derive(Clone, Debug)]
pub struct AgentSnap {
    pub id: i64,
    pub name: String,
    pub labels: Labels,
    pub version: Option<String>,
    /// Not seen within the liveness window.
    pub down: bool,
    pub admission: Option<Admission>,
    pub observed: Observed,
    /// Its attempt since admission failed the Health Check stage.
    pub health_failed: bool,
    /// For the readiness gate (read only while a gated group waits to start).
    pub ready: Ready,
}

/// A group's recorded progress.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GroupTimes {
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Everything [`decide`] looks at.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub now: DateTime<Utc>,
    pub spec: RolloutSpec,
    pub state: RolloutState,
    /// One per group of the spec.
    pub groups: Vec<GroupTimes>,
    pub agents: Vec<AgentSnap>,
}

/// One admission to make.
#[derive(Clone, Debug, PartialEq)]
pub struct Admit {
    pub agent_id: i64,
    pub group: usize,
    /// Already on the version: admitted as done, no command.
    pub already: bool,
}

/// What the scheduler does this tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Admitted agents whose attempt has ended: (agent, result, when).
    pub finished: Vec<(i64, AttemptResult, DateTime<Utc>)>,
    pub group_started: Vec<usize>,
    pub group_completed: Vec<(usize, DateTime<Utc>)>,
    pub admit: Vec<Admit>,
    /// Halt with this reason (the agents that tripped it named).
    pub halt: Option<String>,
    /// Every group is done.
    pub complete: bool,
    /// Why nothing more is admitted now (`waiting for maintenance window …`,
    /// `waiting for readiness …`); not stored.
    pub waiting: Option<String>,
    /// Agents to send `runPrecheck {version}` (readiness gate, never checked).
    pub precheck: Vec<i64>,
}

fn is_failure(r: AttemptResult) -> bool {
    matches!(r, AttemptResult::Failed | AttemptResult::RolledBack)
}

/// An admitted agent counts against the halt rule: Failed, Rolled Back or a
/// failed health check; the words name why (`Rolled Back, health check failed`).
fn failure_words(a: &AgentSnap, result: Option<(AttemptResult, DateTime<Utc>)>) -> Option<String> {
    let failed = result.map(|(r, _)| r).filter(|r| is_failure(*r));
    let health = a.admission.is_some() && a.health_failed;
    match (failed, health) {
        (Some(r), true) => Some(format!("{r}, health check failed")),
        (Some(r), false) => Some(r.to_string()),
        (None, true) => Some("health check failed".to_string()),
        (None, false) => None,
    }
}

/// The scheduler's decision for one tick of a Running rollout (anything else: no plan).
pub fn decide(snap: &Snapshot) -> Plan {
    let mut plan = Plan::default();
    if snap.state != RolloutState::Running {
        return plan;
    }
    let ngroups = snap.spec.groups.len();
    // Each agent's group (an admitted agent stays in the group it was admitted to)
    // and its result, recorded or just observed.
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); ngroups];
    let mut result: Vec<Option<(AttemptResult, DateTime<Utc>)>> = vec![None; snap.agents.len()];
    for (i, a) in snap.agents.iter().enumerate() {
        let group = match &a.admission {
            Some(ad) => Some(ad.group),
            None => snap.spec.group_of(&a.labels),
        };
        if let Some(g) = group.filter(|g| *g < ngroups) {
            members[g].push(i);
        }
        if let Some(ad) = &a.admission {
            result[i] = ad.result;
            if ad.result.is_none()
                && let Observed::Finished(r, at) = a.observed
            {
                result[i] = Some((r, at));
                plan.finished.push((a.id, r, at));
            }
        }
    }
    for m in &mut members {
        m.sort_by(|x, y| snap.agents[*x].name.cmp(&snap.agents[*y].name));
    }
    let total: usize = members.iter().map(Vec::len).sum();
    // Under way fleet-wide (groups run one after the other, so these are the
    // current group's).
    let mut in_flight = members
        .iter()
        .flatten()
        .filter(|i| snap.agents[**i].admission.is_some() && result[**i].is_none())
        .count();
    // The halt rule, group by group.
    for (g, spec) in snap.spec.groups.iter().enumerate() {
        let detail: Vec<String> = members[g]
            .iter()
            .filter_map(|i| {
                let a = &snap.agents[*i];
                failure_words(a, result[*i]).map(|w| format!("{} ({w})", a.name))
            })
            .collect();
        if spec
            .failure_threshold
            .reached(detail.len(), members[g].len())
        {
            plan.halt = Some(format!(
                "group {}: {} of {} agents failed to upgrade to {} (threshold {}): {}",
                spec.name,
                detail.len(),
                members[g].len(),
                snap.spec.version,
                match spec.failure_threshold {
                    Threshold::Count(n) => n.to_string(),
                    Threshold::Ratio(r) => format!("{}%", r * 100.0),
                },
                detail.join(", ")
            ));
            // A failed health check without its result yet is recorded as
            // Failed, so that a resume forgets (and re-admits) it like the others.
            for (i, a) in snap.agents.iter().enumerate() {
                if a.admission.is_some() && a.health_failed && result[i].is_none() {
                    plan.finished.push((a.id, AttemptResult::Failed, snap.now));
                }
            }
            return plan;
        }
    }
    let mut prev_done: Option<DateTime<Utc>> = None;
    for (g, spec) in snap.spec.groups.iter().enumerate() {
        let times = snap.groups.get(g).copied().unwrap_or_default();
        if let Some(done) = times.completed_at {
            prev_done = Some(done + chrono::Duration::seconds(spec.soak_secs as i64));
            continue;
        }
        if let Some(ready) = prev_done
            && snap.now < ready
        {
            return plan;
        }
        let window = window_at(&spec.windows, snap.now);
        let waiting = spec.window_wait(snap.now);
        if times.started_at.is_none() {
            // A group starts only inside one of its windows.
            if waiting.is_some() {
                plan.waiting = waiting;
                return plan;
            }
            // And, gated, when enough of its agents are Ready.
            if let Some(ratio) = snap.spec.readiness_gate {
                let on_version = |i: usize| {
                    snap.agents[i].version.as_deref() == Some(snap.spec.version.as_str())
                };
                let considered: Vec<usize> = members[g]
                    .iter()
                    .copied()
                    .filter(|i| !snap.agents[*i].down && !on_version(*i))
                    .collect();
                let blocking: Vec<usize> = considered
                    .iter()
                    .copied()
                    .filter(|i| snap.agents[*i].ready != Ready::Ready)
                    .collect();
                let ready = considered.len() - blocking.len();
                if !considered.is_empty() && (ready as f64) < ratio * considered.len() as f64 {
                    plan.precheck = blocking
                        .iter()
                        .filter(|i| snap.agents[**i].ready == Ready::NotChecked)
                        .map(|i| snap.agents[*i].id)
                        .collect();
                    let named: Vec<String> = blocking
                        .iter()
                        .take(10)
                        .map(|i| {
                            let a = &snap.agents[*i];
                            format!("{} ({})", a.name, a.ready.words())
                        })
                        .collect();
                    plan.waiting = Some(format!(
                        "waiting for readiness of group {}: {ready} of {} agents Ready for {} (gate {}%); blocking: {}{}",
                        spec.name,
                        considered.len(),
                        snap.spec.version,
                        ratio * 100.0,
                        named.join(", "),
                        if blocking.len() > 10 {
                            format!(" and {} more", blocking.len() - 10)
                        } else {
                            String::new()
                        }
                    ));
                    return plan;
                }
            }
            plan.group_started.push(g);
        }
        // Inside a window an agent is admitted from the opening plus its jitter.
        let eligible = |i: usize| match window {
            None => true,
            Some(WindowAt::Open(opened)) => {
                let j = jitter_of(&snap.agents[i].name, spec.jitter_secs);
                snap.now >= opened + chrono::Duration::seconds(j as i64)
            }
            Some(WindowAt::Closed(_)) => false,
        };
        let m = &members[g];
        let finished = |i: usize| result[i].is_some();
        let admitted = |i: usize| snap.agents[i].admission.is_some();
        let skipped = |i: usize| !admitted(i) && snap.agents[i].down;
        let limit = snap.spec.limit(g, m.len(), total);
        let canaries = &m[..m.len().min(spec.canary as usize)];
        let on_version =
            |i: usize| snap.agents[i].version.as_deref() == Some(snap.spec.version.as_str());
        let mut admitted_now = HashSet::new();
        let mut admit = |set: &[usize], plan: &mut Plan, admitted_now: &mut HashSet<usize>| {
            for &i in set {
                let a = &snap.agents[i];
                if admitted(i) || a.down || admitted_now.contains(&i) || !eligible(i) {
                    continue;
                }
                let already = on_version(i);
                if !already && in_flight >= limit {
                    continue;
                }
                plan.admit.push(Admit {
                    agent_id: a.id,
                    group: g,
                    already,
                });
                admitted_now.insert(i);
                if !already {
                    in_flight += 1;
                }
            }
        };
        admit(canaries, &mut plan, &mut admitted_now);
        let canaries_done = canaries
            .iter()
            .all(|i| finished(*i) || skipped(*i) || (admitted_now.contains(i) && on_version(*i)));
        if canaries_done {
            admit(m, &mut plan, &mut admitted_now);
        }
        let complete = m
            .iter()
            .all(|i| finished(*i) || skipped(*i) || (admitted_now.contains(i) && on_version(*i)));
        if !complete {
            plan.waiting = waiting;
            return plan;
        }
        let last = m
            .iter()
            .filter_map(|i| result[*i].map(|(_, at)| at))
            .max()
            .unwrap_or(snap.now);
        plan.group_completed.push((g, last));
        prev_done = Some(last + chrono::Duration::seconds(spec.soak_secs as i64));
    }
    plan.complete = true;
    plan
}

/// The open (or last completed) rollout as the assignment needs it, kept in memory.
#[derive(Clone, Debug, Default)]
pub struct RolloutCache {
    pub id: i64,
    pub version: String,
    pub state: Option<RolloutState>,
    /// Agents admitted: they are offered the rollout's version.
    pub admitted: HashSet<i64>,
    /// Left empty: the semaphore's limit is held in the store
    /// ([`crate::store::Store::slot_limit`], set by [`sync_slot_limit`]),
    /// which `acquire_slot` applies whatever limit its caller passes.
    pub limits: std::collections::HashMap<i64, u32>,
    /// The scheduler's last waiting reason (a window, the readiness gate).
    pub waiting: Option<String>,
}

/// Reloads the rollout cache and the blocklist from the store.
pub async fn reload(state: &AppState) -> Result<(), ApiError> {
    let (rollout, agents, blocked) = state
        .db(|s| {
            let r = s.latest_rollout()?;
            let agents = match &r {
                Some(r) => s.rollout_agents(r.id)?,
                None => Vec::new(),
            };
            Ok((r, agents, s.blocklist()?))
        })
        .await?;
    let cache = match rollout {
        Some(r) if r.state != RolloutState::Aborted => Some(RolloutCache {
            id: r.id,
            version: r.version.clone(),
            state: Some(r.state),
            admitted: agents.iter().map(|a| a.agent_id).collect(),
            // Kept until the next scheduler step says otherwise.
            waiting: state
                .rollout
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .filter(|o| o.id == r.id)
                .and_then(|o| o.waiting.clone()),
            ..Default::default()
        }),
        _ => None,
    };
    *state.rollout.write().unwrap_or_else(|p| p.into_inner()) = cache;
    *state.blocked.write().unwrap_or_else(|p| p.into_inner()) =
        blocked.into_iter().map(|b| b.version).collect();
    Ok(())
}

/// Stores the semaphore's limit when it changes (None: the
/// `--max-concurrent-upgrades` default applies again).
pub async fn sync_slot_limit(state: &AppState, limit: Option<u32>) -> Result<(), ApiError> {
    if state.db(|s| s.slot_limit()).await? == limit {
        return Ok(());
    }
    state.db(move |s| s.set_slot_limit(limit)).await?;
    tracing::info!(limit = ?limit, "rollout: upgrade semaphore limit set");
    Ok(())
}

/// The rollout's max in flight for its current group (the first not
/// completed after `plan`), or None once every group is done.
pub fn current_limit(snap: &Snapshot, plan: &Plan) -> Option<u32> {
    if plan.complete {
        return None;
    }
    let n = snap.spec.groups.len();
    let mut sizes = vec![0usize; n];
    for a in &snap.agents {
        let g = match &a.admission {
            Some(ad) => Some(ad.group),
            None => snap.spec.group_of(&a.labels),
        };
        if let Some(x) = g.and_then(|g| sizes.get_mut(g)) {
            *x += 1;
        }
    }
    let total = sizes.iter().sum();
    let g = (0..n).find(|g| {
        snap.groups.get(*g).is_none_or(|t| t.completed_at.is_none())
            && !plan.group_completed.iter().any(|(c, _)| c == g)
    })?;
    Some(u32::try_from(snap.spec.limit(g, sizes[g], total)).unwrap_or(u32::MAX))
}

/// One step of the scheduler: builds the snapshot, decides and applies, and
/// keeps the semaphore's limit in the store at the rollout's max in flight
/// while it is open (Running, Paused or Halted: attempts under way finish).
pub async fn tick(state: &AppState) -> Result<(), ApiError> {
    let Some(r) = state.db(|s| s.latest_rollout()).await? else {
        return sync_slot_limit(state, None).await;
    };
    if matches!(r.state, RolloutState::Completed | RolloutState::Aborted) {
        return sync_slot_limit(state, None).await;
    }
    let spec: RolloutSpec = serde_json::from_value(r.spec.clone())
        .map_err(|e| ApiError::internal(format!("rollout {} spec: {e}", r.id)))?;
    let ngroups = spec.groups.len();
    let now = state.config.clock.now();
    let down_after = crate::clock::chrono_dur(state.config.agent_down_after);
    let (id, version, created) = (r.id, r.version.clone(), r.created_at);
    let (agents, admitted, attempts, health_failed) = state
        .db(move |s| {
            Ok((
                s.list_agents()?,
                s.rollout_agents(id)?,
                s.attempts_to(&version, created)?,
                s.health_check_failures(&version, created)?,
            ))
        })
        .await?;
    let health_failed: HashSet<i64> = health_failed.into_iter().collect();
    // The readiness gate reads the fleet readiness run only while a group waits to start.
    let gate_open = spec.readiness_gate.is_some()
        && r.state == RolloutState::Running
        && (0..ngroups).any(|g| {
            !r.groups
                .iter()
                .any(|x| x.idx == g && x.started_at.is_some())
        });
    let ready: std::collections::HashMap<String, Ready> = if gate_open {
        crate::api_admin::readiness_for(state, &r.version)
            .await?
            .into_iter()
            .map(|x| {
                let r = Ready::of(x.readiness, x.message.as_deref());
                (x.agent, r)
            })
            .collect()
    } else {
        Default::default()
    };
    let snap = Snapshot {
        now,
        spec,
        state: r.state,
        groups: (0..ngroups)
            .map(|g| {
                r.groups
                    .iter()
                    .find(|x| x.idx == g)
                    .map(|x| GroupTimes {
                        started_at: x.started_at,
                        completed_at: x.completed_at,
                    })
                    .unwrap_or_default()
            })
            .collect(),
        agents: agents
            .into_iter()
            // A pin (the control plane's or the agent's own) keeps an agent out
            // of rollouts (one admitted before the pin stays in its group's count).
            .filter(|a| !state.is_pinned(a) || admitted.iter().any(|x| x.agent_id == a.id))
            .map(|a| {
                let admission = admitted
                    .iter()
                    .find(|x| x.agent_id == a.id)
                    .map(|x| Admission {
                        group: x.group,
                        at: x.admitted_at,
                        result: x.result.zip(x.done_at),
                    });
                let latest = admission.as_ref().and_then(|ad| {
                    attempts
                        .iter()
                        .filter(|t| t.agent_id == a.id && t.started_at >= ad.at)
                        .max_by_key(|t| t.id)
                });
                let observed = match &admission {
                    None => Observed::NotStarted,
                    Some(_) => match latest {
                        Some(t) => match (t.result, t.finished_at) {
                            (Some(res), Some(at)) => Observed::Finished(res, at),
                            _ => Observed::InFlight,
                        },
                        None if a.version.as_deref() == Some(r.version.as_str()) => {
                            Observed::Finished(AttemptResult::Complete, now)
                        }
                        None => Observed::NotStarted,
                    },
                };
                AgentSnap {
                    ready: ready.get(&a.name).cloned().unwrap_or_default(),
                    health_failed: latest.is_some_and(|t| health_failed.contains(&t.id)),
                    down: a.effective_status(now, down_after) == crate::model::AgentStatus::Down,
                    id: a.id,
                    labels: a.labels.clone(),
                    version: a.version.clone(),
                    name: a.name,
                    admission,
                    observed,
                }
            })
            .collect(),
    };
    let mut plan = decide(&snap);
    let limit = current_limit(&snap, &plan);
    if let Some(c) = state
        .rollout
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .filter(|c| c.id == r.id)
    {
        c.waiting = plan.waiting.clone();
    }
    let precheck = std::mem::take(&mut plan.precheck);
    if !precheck.is_empty() {
        let (v, ids) = (snap.spec.version.clone(), precheck.clone());
        state
            .db(move |s| {
                for id in &ids {
                    s.queue_command(
                        *id,
                        crate::model::CommandKind::RunPrecheck,
                        &serde_json::json!({ "version": v }),
                        now,
                    )?;
                }
                Ok(())
            })
            .await?;
        tracing::info!(rollout = r.id, agents = precheck.len(), version = %snap.spec.version, "rollout: readiness gate queued runPrecheck");
        state.wake(&precheck);
    }
    // The limit is stored before admitting, so the admitted find the semaphore at it.
    if limit.is_some() {
        sync_slot_limit(state, limit).await?;
    }
    apply(state, r.id, &snap.spec, plan, now).await?;
    if limit.is_none() {
        sync_slot_limit(state, None).await?;
    }
    Ok(())
}

async fn apply(
    state: &AppState,
    id: i64,
    spec: &RolloutSpec,
    plan: Plan,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    if plan
        == (Plan {
            waiting: plan.waiting.clone(),
            ..Plan::default()
        })
    {
        return Ok(());
    }
    // The assignment must answer the version before the command can be read.
    {
        let mut c = state.rollout.write().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = c.as_mut().filter(|c| c.id == id) {
            for a in &plan.admit {
                c.admitted.insert(a.agent_id);
            }
        }
    }
    let version = spec.version.clone();
    let p = plan.clone();
    let woken = state
        .db(move |s| s.apply_rollout_plan(id, &version, &p, now))
        .await?;
    // The cache changed (and was published) before this commit: tell the other
    // replicas again now that the admissions are stored, or one reloading on the
    // first event may read the old state and offer an admitted agent the old version.
    state.publish(crate::store::StoreEvent::RolloutChanged);
    for a in &plan.admit {
        tracing::info!(rollout = id, agent_id = a.agent_id, group = %spec.groups[a.group].name, already = a.already, "rollout: agent admitted");
    }
    for (g, at) in &plan.group_completed {
        tracing::info!(rollout = id, group = %spec.groups[*g].name, last_completion = %at, "rollout: group complete");
    }
    if let Some(reason) = &plan.halt {
        tracing::warn!(rollout = id, version = %spec.version, reason = %reason, "rollout halted; version blocklisted");
    } else if plan.complete {
        tracing::info!(rollout = id, version = %spec.version, "rollout complete");
        if spec.covers_all() {
            state.set_fleet_cache(state.db(|s| s.fleet()).await?);
        }
    }
    reload(state).await?;
    state.wake(&woken);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = "xanadu-07-01-2024__patch0-07-01-2024_07-01-2024_1200";

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn labels(site: &str) -> Labels {
        [("site".to_string(), site.to_string())].into()
    }

    fn spec() -> RolloutSpec {
        serde_json::from_value(serde_json::json!({
            "version": V2,
            "groups": [
                {"name": "a", "selector": {"site": "a"}, "canary": 1, "max_in_flight": 2, "soak_secs": 10},
                {"name": "b", "selector": {"site": "b"}, "canary": 1, "max_in_flight": "50%", "soak_secs": 10,
                 "failure_threshold": 0.5},
                {"name": "rest", "max_in_flight": 1}
            ]
        }))
        .unwrap()
    }

    fn agent(id: i64, name: &str, site: &str) -> AgentSnap {
        AgentSnap {
            id,
            name: name.into(),
            labels: labels(site),
            version: Some("v1".into()),
            down: false,
            admission: None,
            observed: Observed::NotStarted,
            health_failed: false,
            ready: Ready::NotChecked,
        }
    }

    fn snap(agents: Vec<AgentSnap>, groups: Vec<GroupTimes>, now: i64) -> Snapshot {
        Snapshot {
            now: t(now),
            spec: spec(),
            state: RolloutState::Running,
            groups,
            agents,
        }
    }

    fn admitted(
        mut a: AgentSnap,
        group: usize,
        at: i64,
        result: Option<(AttemptResult, i64)>,
    ) -> AgentSnap {
        a.admission = Some(Admission {
            group,
            at: t(at),
            result: result.map(|(r, s)| (r, t(s))),
        });
        a
    }

    fn fleet() -> Vec<AgentSnap> {
        vec![
            agent(1, "a1", "a"),
            agent(2, "a2", "a"),
            agent(3, "a3", "a"),
            agent(4, "b1", "b"),
            agent(5, "b2", "b"),
            agent(6, "c1", "c"),
        ]
    }

    fn ids(p: &Plan) -> Vec<i64> {
        p.admit.iter().map(|a| a.agent_id).collect()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn w(s: &str) -> Vec<Window> {
        vec![Window::parse(s).unwrap()]
    }

    /// Group times of the three groups of [`spec`]: `(started, completed)`
    /// for the first groups given, the rest not started.
    fn times(given: &[(i64, Option<i64>)]) -> Vec<GroupTimes> {
        let mut g = vec![GroupTimes::default(); 3];
        for (x, (started, completed)) in g.iter_mut().zip(given) {
            *x = GroupTimes {
                started_at: Some(t(*started)),
                completed_at: completed.map(t),
            };
        }
        g
    }

    /// The fleet with a1 (group a's canary) admitted at 0 and seen as `observed`.
    fn canary_fleet(observed: Observed) -> Vec<AgentSnap> {
        let mut f = fleet();
        f[0] = admitted(f[0].clone(), 0, 0, None);
        f[0].observed = observed;
        f
    }

    fn open_since(s: &str) -> Option<WindowAt> {
        Some(WindowAt::Open(utc(s)))
    }

    fn next_opening(s: &str) -> Option<WindowAt> {
        Some(WindowAt::Closed(utc(s)))
    }

    /// Asserts `window_at` for each (windows, now, expected, why).
    fn assert_windows(cases: &[(&[Window], &str, Option<WindowAt>, &str)]) {
        for (windows, now, want, why) in cases {
            assert_eq!(window_at(windows, utc(now)), *want, "{why} (now {now})");
        }
    }

    #[test]
    fn windows_parse_days_ranges_and_offsets() {
        // (text, days, start minute, length in minutes, UTC offset in minutes)
        for (text, days, start, len, offset) in [
            ("Mon-Fri@02:00-04:00+00:00", 0x1f, 120, 120, 0),
            ("Sat,sun@22:00-02:00-05:30", 0x60, 1320, 240, -330),
            ("*@00:00-24:00+01:00", 0x7f, 0, 1440, 60),
            // A day range may wrap past Sunday.
            ("Fri-Mon@10:00-11:00+00:00", 0b111_0001, 600, 60, 0),
        ] {
            let x = Window::parse(text).unwrap();
            assert_eq!(
                (x.days, x.start_min, x.len_min, x.offset_min),
                (days, start, len, offset),
                "{text}"
            );
        }
        for bad in [
            "Mon-Fri 02:00-04:00+00:00",
            "Mon-Fri@02:00-04:00",
            "Xyz@02:00-04:00+00:00",
            "Mon@02:00-02:00+00:00",
            "Mon@25:00-02:00+00:00",
            "Mon@02:60-03:00+00:00",
            "Mon@02:00-03:00+15:00",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
        // The message names the text, the problem and the syntax.
        assert_eq!(
            Window::parse("Xyz@02:00-04:00+00:00")
                .unwrap_err()
                .to_string(),
            "window \"Xyz@02:00-04:00+00:00\": unknown day \"Xyz\" (Mon … Sun) (expected DAYS@HH:MM-HH:MM ZONE or DAYS@HH:MM-HH:MM+HH:MM, e.g. Mon-Fri@02:00-04:00 Europe/Berlin or Mon-Fri@02:00-04:00+00:00)"
        );
        // In the spec: a string, kept as written; a jitter needs windows shorter than it.
        let g: GroupSpec = serde_json::from_value(serde_json::json!(
            {"name": "x", "windows": ["Mon-Fri@02:00-04:00+00:00"], "jitter_secs": 600}
        ))
        .unwrap();
        assert_eq!(
            serde_json::to_value(&g).unwrap()["windows"],
            serde_json::json!(["Mon-Fri@02:00-04:00+00:00"])
        );
        let mut s = spec();
        s.groups[0] = GroupSpec {
            name: "a".into(),
            selector: labels("a"),
            ..g.clone()
        };
        assert!(s.check().is_ok());
        s.groups[0].jitter_secs = 7200;
        assert!(s.check().unwrap_err().message.contains("shortest window"));
        s.groups[0].windows.clear();
        assert!(
            s.check()
                .unwrap_err()
                .message
                .contains("needs maintenance windows")
        );
        assert!(
            serde_json::from_value::<GroupSpec>(
                serde_json::json!({"name": "x", "windows": ["Mon"]})
            )
            .is_err()
        );
        // No windows: nothing written (specs stored before windows read the same).
        assert!(
            serde_json::to_value(&spec().groups[0])
                .unwrap()
                .get("windows")
                .is_none()
        );
    }

    #[test]
    fn windows_in_an_iana_zone_follow_daylight_saving_time() {
        let berlin = w("Mon-Fri@02:00-04:00 Europe/Berlin");
        let sun = w("Sun@02:30-05:00 Europe/Berlin");
        assert_windows(&[
            // Winter (CET, +01:00): 02:00 Berlin is 01:00 UTC. Wed 2026-01-14.
            (
                &berlin,
                "2026-01-14T01:30:00Z",
                open_since("2026-01-14T01:00:00Z"),
                "winter, inside",
            ),
            (
                &berlin,
                "2026-01-14T03:00:00Z",
                next_opening("2026-01-15T01:00:00Z"),
                "winter, after",
            ),
            // Summer (CEST, +02:00): 02:00 Berlin is 00:00 UTC. Wed 2026-07-15.
            (
                &berlin,
                "2026-07-15T00:30:00Z",
                open_since("2026-07-15T00:00:00Z"),
                "summer, inside",
            ),
            (
                &berlin,
                "2026-07-15T02:30:00Z",
                next_opening("2026-07-16T00:00:00Z"),
                "summer, after",
            ),
            // Across the spring change (Sun 2026-03-29 02:00 -> 03:00): the
            // Sunday window's opening in the gap moves to 03:00 CEST = 01:00 UTC.
            (
                &sun,
                "2026-03-29T00:30:00Z",
                next_opening("2026-03-29T01:00:00Z"),
                "opening in the gap",
            ),
            // After Friday's window (01:00-03:00 UTC, CET) the next opens Monday at 00:00 UTC (CEST).
            (
                &berlin,
                "2026-03-27T03:30:00Z",
                next_opening("2026-03-30T00:00:00Z"),
                "over the change",
            ),
        ]);
        // The fixed-offset syntax still parses; a bad zone is refused.
        assert!(Window::parse("Mon@02:00-04:00+01:00").is_ok());
        let e = Window::parse("Mon@02:00-04:00 Mars/Olympus").unwrap_err();
        assert_eq!(e.problem, WindowProblem::UnknownZone("Mars/Olympus".into()));
        assert!(e.to_string().contains("unknown time zone"), "{e}");
        // Serialized as written.
        assert_eq!(
            serde_json::to_value(&berlin[0]).unwrap(),
            "Mon-Fri@02:00-04:00 Europe/Berlin"
        );
    }

    #[test]
    fn window_at_days_of_week_offsets_and_across_midnight() {
        // 2026-12-01 is a Tuesday.
        let wk = w("Mon-Fri@02:00-04:00+00:00");
        let night = w("Sat@22:00-02:00+00:00");
        let mut two = night.clone();
        two.extend(w("Wed@10:00-11:00+00:00"));
        assert_windows(&[
            (
                &wk,
                "2026-12-01T03:00:00Z",
                open_since("2026-12-01T02:00:00Z"),
                "inside",
            ),
            (
                &wk,
                "2026-12-01T04:00:00Z",
                next_opening("2026-12-02T02:00:00Z"),
                "the end is exclusive",
            ),
            (
                &wk,
                "2026-12-04T05:00:00Z",
                next_opening("2026-12-07T02:00:00Z"),
                "Friday after: Monday's",
            ),
            (
                &wk,
                "2026-12-05T03:00:00Z",
                next_opening("2026-12-07T02:00:00Z"),
                "not on Saturday",
            ),
            (
                &w("Tue@02:00-04:00+01:00"),
                "2026-12-01T01:30:00Z",
                open_since("2026-12-01T01:00:00Z"),
                "a fixed offset: 02:00+01:00 is 01:00 UTC",
            ),
            (
                &night,
                "2026-12-06T01:59:00Z",
                open_since("2026-12-05T22:00:00Z"),
                "Sunday 01:59, opened Saturday",
            ),
            (
                &night,
                "2026-12-06T02:00:00Z",
                next_opening("2026-12-12T22:00:00Z"),
                "closed at 02:00",
            ),
            (
                &night,
                "2026-12-05T21:00:00Z",
                next_opening("2026-12-05T22:00:00Z"),
                "before it opens",
            ),
            (
                &two,
                "2026-12-01T12:00:00Z",
                next_opening("2026-12-02T10:00:00Z"),
                "several: the earliest",
            ),
            (&[], "2026-12-01T12:00:00Z", None, "no windows: always open"),
        ]);
    }

    fn windowed(now: &str, jitter: u64) -> Snapshot {
        let mut s = snap(fleet(), vec![GroupTimes::default(); 3], 0);
        s.now = utc(now);
        s.spec.groups[0].windows = w("Mon-Fri@02:00-04:00+00:00");
        s.spec.groups[0].jitter_secs = jitter;
        s
    }

    #[test]
    fn inside_the_window_the_canary_is_admitted() {
        let p = decide(&windowed("2026-12-01T02:30:00Z", 0));
        assert_eq!(ids(&p), vec![1]);
        assert_eq!(p.group_started, vec![0]);
        assert_eq!(p.waiting, None);
    }

    #[test]
    fn outside_the_window_nobody_is_admitted_and_the_next_opening_is_said() {
        let p = decide(&windowed("2026-12-04T05:00:00Z", 0));
        assert!(p.admit.is_empty() && p.group_started.is_empty(), "{p:?}");
        assert_eq!(
            p.waiting.as_deref(),
            Some("waiting for maintenance window 2026-12-07T02:00:00Z")
        );
        assert_eq!(
            windowed("2026-12-04T05:00:00Z", 0).spec.groups[0]
                .window_wait(utc("2026-12-04T05:00:00Z")),
            p.waiting
        );
        // A started group whose window closed: in-flight agents go on, nobody new.
        let mut s = windowed("2026-12-01T05:00:00Z", 0);
        s.groups[0].started_at = Some(utc("2026-12-01T02:00:00Z"));
        s.agents[0] = admitted(
            s.agents[0].clone(),
            0,
            0,
            Some((AttemptResult::Complete, 1)),
        );
        let p = decide(&s);
        assert!(p.admit.is_empty(), "{p:?}");
        assert_eq!(
            p.waiting.as_deref(),
            Some("waiting for maintenance window 2026-12-02T02:00:00Z")
        );
        // The other groups have no windows, but wait for group a.
        s.now = utc("2026-12-02T02:00:00Z");
        assert_eq!(ids(&decide(&s)), vec![2, 3]);
    }

    #[test]
    fn a_window_across_midnight_admits_after_midnight() {
        let mut s = windowed("2026-12-06T01:00:00Z", 0);
        s.spec.groups[0].windows = w("Sat@22:00-02:00+00:00");
        assert_eq!(
            ids(&decide(&s)),
            vec![1],
            "Sunday 01:00, in Saturday's window"
        );
        s.now = utc("2026-12-06T02:30:00Z");
        assert!(decide(&s).admit.is_empty());
    }

    #[test]
    fn the_jitter_delays_an_agent_within_the_window() {
        let j = jitter_of("a1", 600) as i64;
        assert!(j < 600);
        assert_eq!(jitter_of("a1", 600), j as u64, "deterministic");
        assert_ne!(
            (0..20)
                .map(|i| jitter_of(&format!("agent-{i}"), 600))
                .collect::<HashSet<_>>()
                .len(),
            1,
            "agents spread"
        );
        let opened = utc("2026-12-01T02:00:00Z");
        let mut s = windowed("2026-12-01T02:00:00Z", 600);
        s.now = opened + chrono::Duration::seconds(j - 1);
        if j > 0 {
            let p = decide(&s);
            assert!(p.admit.is_empty(), "a1 before its jitter: {p:?}");
            assert_eq!(p.waiting, None, "inside the window");
        }
        s.now = opened + chrono::Duration::seconds(j);
        assert_eq!(ids(&decide(&s)), vec![1], "a1 at opening + {j} s");
    }

    #[test]
    fn the_spec_parses_counts_percentages_and_ratios_and_the_catch_all_must_be_last() {
        let s = spec();
        assert_eq!(s.groups[0].max_in_flight, Some(InFlight::Count(2)));
        assert_eq!(s.groups[1].max_in_flight, Some(InFlight::Percent(50)));
        assert_eq!(s.groups[1].failure_threshold, Threshold::Ratio(0.5));
        assert_eq!(s.groups[0].failure_threshold, Threshold::Count(1));
        assert_eq!(InFlight::Percent(20).limit(10_000), 2000);
        assert_eq!(InFlight::Percent(1).limit(3), 1);
        assert!(s.check().is_ok());
        assert!(s.covers_all());
        assert_eq!(s.group_of(&labels("b")), Some(1));
        assert_eq!(s.group_of(&labels("zz")), Some(2));
        let mut bad = spec();
        bad.groups.swap(1, 2);
        assert!(bad.check().unwrap_err().message.contains("catch-all"));
        assert!(
            serde_json::from_value::<GroupSpec>(
                serde_json::json!({"name": "x", "max_in_flight": "0%"})
            )
            .is_err()
        );
        assert!(
            serde_json::from_value::<GroupSpec>(
                serde_json::json!({"name": "x", "failure_threshold": 1.5})
            )
            .is_err()
        );
        // Percentages as text, spaces allowed; anything else refused.
        let g: GroupSpec = serde_json::from_value(
            serde_json::json!({"name": "x", "max_in_flight": " 20 % ", "failure_threshold": "25%"}),
        )
        .unwrap();
        assert_eq!(g.max_in_flight, Some(InFlight::Percent(20)));
        assert_eq!(g.failure_threshold, Threshold::Ratio(0.25));
        for bad in [
            serde_json::json!({"name": "x", "max_in_flight": "20"}),
            serde_json::json!({"name": "x", "failure_threshold": "x%"}),
        ] {
            assert!(
                serde_json::from_value::<GroupSpec>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_canary_goes_first_alone() {
        let p = decide(&snap(fleet(), vec![GroupTimes::default(); 3], 0));
        assert_eq!(ids(&p), vec![1], "only group a's canary (first by name)");
        assert_eq!(p.group_started, vec![0]);
        assert!(p.halt.is_none() && !p.complete);
    }

    #[test]
    fn after_the_canary_the_rest_follow_at_most_max_in_flight() {
        let mut f = canary_fleet(Observed::InFlight);
        let started = times(&[(0, None)]);
        // Canary under way: nobody else.
        assert!(
            decide(&snap(f.clone(), started.clone(), 5))
                .admit
                .is_empty()
        );
        // Canary done: a2 and a3 together (max 2).
        f[0].observed = Observed::Finished(AttemptResult::Complete, t(6));
        let p = decide(&snap(f.clone(), started.clone(), 7));
        assert_eq!(p.finished, vec![(1, AttemptResult::Complete, t(6))]);
        assert_eq!(ids(&p), vec![2, 3]);
        // One of them in flight, the other not yet admitted, max 1 would hold it back.
        let mut s = snap(f.clone(), started, 7);
        s.spec.groups[0].max_in_flight = Some(InFlight::Count(1));
        f[1] = admitted(f[1].clone(), 0, 7, None);
        s.agents = f;
        s.agents[0].admission.as_mut().unwrap().result = Some((AttemptResult::Complete, t(6)));
        assert!(decide(&s).admit.is_empty());
    }

    #[test]
    fn the_fleet_wide_max_in_flight_is_capped_per_group_and_is_the_semaphores_limit() {
        let mut s = spec();
        // 6 agents in the rollout: 50% is 3 fleet-wide; group a's cap 2, b's 50% of 2 = 1.
        s.max_in_flight = Some(InFlight::Percent(50));
        assert_eq!(s.limit(0, 3, 6), 2);
        assert_eq!(s.limit(1, 2, 6), 1);
        s.groups[0].max_in_flight = None;
        assert_eq!(s.limit(0, 3, 6), 3, "no cap: the fleet-wide number");
        s.max_in_flight = None;
        assert_eq!(s.limit(0, 3, 6), 1, "neither: 1");
        assert_eq!(s.limit(2, 1, 6), 1);
        // The scheduler admits up to that number and reports it for the semaphore.
        let mut f = fleet();
        f[0] = admitted(f[0].clone(), 0, 0, Some((AttemptResult::Complete, 1)));
        let mut sn = snap(f, times(&[(0, None)]), 2);
        sn.spec.max_in_flight = Some(InFlight::Count(1));
        let p = decide(&sn);
        assert_eq!(ids(&p), vec![2], "fleet-wide 1 under group a's cap of 2");
        assert_eq!(current_limit(&sn, &p), Some(1));
        sn.spec.max_in_flight = Some(InFlight::Count(10));
        let p = decide(&sn);
        assert_eq!(ids(&p), vec![2, 3], "the cap of 2 under fleet-wide 10");
        assert_eq!(current_limit(&sn, &p), Some(2));
        // Every group done: no limit (the flag's default again).
        let done = Plan {
            complete: true,
            ..Plan::default()
        };
        assert_eq!(current_limit(&sn, &done), None);
        // Group a completed: group b's limit.
        let p = Plan {
            group_completed: vec![(0, t(2))],
            ..Plan::default()
        };
        assert_eq!(current_limit(&sn, &p), Some(1), "50% of b's 2");
    }

    #[test]
    fn a_readiness_gate_holds_a_group_naming_who_blocks_and_queues_the_unchecked() {
        let mut sn = snap(fleet(), vec![GroupTimes::default(); 3], 0);
        sn.spec.readiness_gate = Some(1.0);
        sn.agents[0].ready = Ready::Ready;
        sn.agents[1].ready = Ready::NotReady("disk_space: 1 GiB free".into());
        let p = decide(&sn);
        assert!(p.admit.is_empty() && p.group_started.is_empty());
        assert_eq!(p.precheck, vec![3], "a3 was never checked");
        let w = p.waiting.unwrap();
        assert!(
            w.contains("waiting for readiness of group a: 1 of 3 agents Ready")
                && w.contains("a2 (Not Ready: disk_space: 1 GiB free)")
                && w.contains("a3 (not checked)"),
            "{w}"
        );
        // A ratio of 2/3 lets it start once a3 is Ready too... and a2's block is tolerated.
        sn.agents[2].ready = Ready::Ready;
        assert!(decide(&sn).waiting.is_some(), "1.0: a2 still blocks");
        sn.spec.readiness_gate = Some(0.6);
        let p = decide(&sn);
        assert_eq!(p.group_started, vec![0]);
        assert_eq!(ids(&p), vec![1], "the canary");
        // Down agents and agents already on the version are not waited for.
        sn.spec.readiness_gate = Some(1.0);
        sn.agents[1].down = true;
        assert_eq!(decide(&sn).group_started, vec![0]);
    }

    #[test]
    fn the_next_group_waits_for_the_soak_after_the_last_completion() {
        let mut f = fleet();
        for (i, done) in [(0, 6), (1, 20), (2, 15)] {
            f[i] = admitted(f[i].clone(), 0, 0, Some((AttemptResult::Complete, done)));
        }
        let p = decide(&snap(f.clone(), times(&[(0, None)]), 21));
        assert_eq!(p.group_completed, vec![(0, t(20))], "the last completion");
        assert!(p.admit.is_empty(), "group b waits for the soak");
        let g = times(&[(0, Some(20))]);
        assert!(decide(&snap(f.clone(), g.clone(), 29)).admit.is_empty());
        let p = decide(&snap(f, g, 30));
        assert_eq!(ids(&p), vec![4], "b's canary at completion + soak");
        assert_eq!(p.group_started, vec![1]);
    }

    #[test]
    fn a_failed_canary_halts_naming_it_and_nothing_else_is_admitted() {
        let f = canary_fleet(Observed::Finished(AttemptResult::RolledBack, t(9)));
        let p = decide(&snap(f, times(&[(0, None)]), 10));
        assert!(p.admit.is_empty());
        let reason = p.halt.unwrap();
        assert!(
            reason.contains("group a") && reason.contains("a1 (Rolled Back)"),
            "{reason}"
        );
    }

    #[test]
    fn a_failed_health_check_counts_before_the_attempt_ends() {
        let mut f = canary_fleet(Observed::InFlight);
        f[0].health_failed = true;
        let g = times(&[(0, None)]);
        let p = decide(&snap(f.clone(), g.clone(), 10));
        assert!(p.admit.is_empty());
        let reason = p.halt.clone().unwrap();
        assert!(reason.contains("a1 (health check failed)"), "{reason}");
        assert_eq!(p.finished, vec![(1, AttemptResult::Failed, t(10))]);
        // Once the result arrives both are named.
        f[0].observed = Observed::Finished(AttemptResult::RolledBack, t(9));
        let reason = decide(&snap(f.clone(), g.clone(), 10)).halt.unwrap();
        assert!(
            reason.contains("a1 (Rolled Back, health check failed)"),
            "{reason}"
        );
        // Not admitted: a stray health-check failure does not count.
        let mut f2 = fleet();
        f2[1].health_failed = true;
        assert!(decide(&snap(f2, g, 10)).halt.is_none());
    }

    #[test]
    fn a_ratio_threshold_tolerates_fewer_failures() {
        // Group b: 2 agents, ratio 0.5: one failure of two halts; with a count of 2 it does not.
        let mut f = fleet();
        for a in f.iter_mut().take(3) {
            *a = admitted(a.clone(), 0, 0, Some((AttemptResult::Complete, 1)));
        }
        f[3] = admitted(f[3].clone(), 1, 20, Some((AttemptResult::Failed, 25)));
        let g = times(&[(0, Some(1)), (20, None)]);
        assert!(decide(&snap(f.clone(), g.clone(), 30)).halt.is_some());
        let mut s = snap(f, g, 30);
        s.spec.groups[1].failure_threshold = Threshold::Count(2);
        let p = decide(&s);
        assert!(p.halt.is_none());
        assert_eq!(
            ids(&p),
            vec![5],
            "the canary finished (failed, under the threshold): the rest go"
        );
    }

    #[test]
    fn agents_on_the_version_are_done_without_a_command_down_ones_skipped_and_it_completes() {
        let mut f = fleet();
        for a in &mut f {
            a.version = Some(V2.into());
        }
        f[5].down = true;
        f[5].version = Some("v1".into());
        let mut s = snap(f, vec![GroupTimes::default(); 3], 0);
        for g in &mut s.spec.groups {
            g.soak_secs = 0;
        }
        let p = decide(&s);
        assert!(p.admit.iter().all(|a| a.already));
        assert_eq!(ids(&p), vec![1, 2, 3, 4, 5]);
        assert_eq!(p.group_completed.len(), 3);
        assert!(p.complete);
    }

    #[test]
    fn paused_halted_and_aborted_rollouts_do_nothing() {
        for st in [
            RolloutState::Paused,
            RolloutState::Halted,
            RolloutState::Aborted,
            RolloutState::Completed,
        ] {
            let mut s = snap(fleet(), vec![GroupTimes::default(); 3], 0);
            s.state = st;
            assert_eq!(decide(&s), Plan::default());
        }
    }
}
