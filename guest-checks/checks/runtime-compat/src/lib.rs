//! `runtime-compat`: a runtime upgrade needs a 64-bit host and glibc >= 2.17.
use molt_check_sdk::{Check, Finding, facts, logic};

struct RuntimeCompat;

impl Check for RuntimeCompat {
    const NAME: &'static str = "runtime-compat";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "A runtime upgrade needs a 64-bit host and glibc 2.17 or newer (else it is skipped).";
    fn run(params: &[(String, String)]) -> Vec<Finding> {
        logic::checks::runtime_compat(&facts(), params)
    }
}

molt_check_sdk::check!(RuntimeCompat);
