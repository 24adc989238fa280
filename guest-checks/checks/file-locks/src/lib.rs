//! `file-locks`: no process other than the agent holds files the upgrade replaces.
use molt_check_sdk::{Check, Finding, facts, file_holders, logic};

struct FileLocks;

impl Check for FileLocks {
    const NAME: &'static str = "file-locks";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "No process other than the agent holds files under the install dir.";
    fn run(params: &[(String, String)]) -> Vec<Finding> {
        logic::checks::file_locks(facts().agent_pid, &file_holders(), params)
    }
}

molt_check_sdk::check!(FileLocks);
