//! `service-account`: the service account can stop, start and reinstall the service.
use molt_check_sdk::{Check, Finding, facts, logic};

struct ServiceAccount;

impl Check for ServiceAccount {
    const NAME: &'static str = "service-account";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "The service account is privileged enough to stop, start and reinstall the service.";
    fn run(_params: &[(String, String)]) -> Vec<Finding> {
        logic::checks::service_account(&facts())
    }
}

molt_check_sdk::check!(ServiceAccount);
