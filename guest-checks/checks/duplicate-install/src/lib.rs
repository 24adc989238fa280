//! `duplicate-install`: no two services on one install dir.
use molt_check_sdk::{Check, Finding, logic, service_state, sharing_install_dir};

struct DuplicateInstall;

impl Check for DuplicateInstall {
    const NAME: &'static str = "duplicate-install";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str = "No other service uses the agent's install dir.";
    fn run(_params: &[(String, String)]) -> Vec<Finding> {
        logic::checks::duplicate_install(service_state(), &sharing_install_dir())
    }
}

molt_check_sdk::check!(DuplicateInstall);
