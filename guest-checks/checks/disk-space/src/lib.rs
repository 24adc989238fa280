//! `disk-space`: at least `min_free` (default 1 GiB) free on the install and temp volumes.
use molt_check_sdk::{Check, Finding, facts, logic};

struct DiskSpace;

impl Check for DiskSpace {
    const NAME: &'static str = "disk-space";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "At least 1 GiB (param `min_free`) free on the install and temp volumes.";
    fn run(params: &[(String, String)]) -> Vec<Finding> {
        logic::checks::disk_space(&facts(), params)
    }
}

molt_check_sdk::check!(DiskSpace);
