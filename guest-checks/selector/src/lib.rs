//! `version-select`: the selector world. A thin wrapper over
//! `molt_check_logic::select` (see there for the rules).
wit_bindgen::generate!({ world: "selector", path: "../../wit" });

use molt::check::log::{Level, log};
use molt::check::selection as w;
use molt_check_logic::select as s;

struct Selector;

impl Guest for Selector {
    fn select(input: SelectorInput) -> Result<Plan, String> {
        let i = s::SelectorInput {
            installed: input.installed,
            assigned_version: input.assigned_version,
            assigned: input.assigned,
            downloaded: input.downloaded,
            pinned: input.pinned,
            os: input.os,
            arch: input.arch,
            is_64bit: input.is_64bit,
            libc_version: input.libc_version,
        };
        // The contract's `result<plan, string>`: the error's text crosses it.
        let p = s::select(&i).map_err(|e| e.to_string())?;
        log(
            Level::Debug,
            &format!("selected {} ({:?})", p.target_version, p.action),
        );
        Ok(Plan {
            action: match p.action {
                s::Action::Upgrade => w::Action::Upgrade,
                s::Action::Downgrade => w::Action::Downgrade,
                s::Action::None => w::Action::None,
            },
            target_version: p.target_version,
            installed: p.installed,
            assigned: p.assigned,
            missing: p.missing,
            downloaded: p.downloaded,
            crosses_family: p.crosses_family,
            runtime: match p.runtime {
                s::RuntimeDecision::Upgrade => w::RuntimeDecision::Upgrade,
                s::RuntimeDecision::Skip => w::RuntimeDecision::Skip,
                s::RuntimeDecision::Current => w::RuntimeDecision::Current,
            },
            runtime_reason: p.runtime_reason,
            notes: p.notes,
        })
    }
}

export!(Selector);
