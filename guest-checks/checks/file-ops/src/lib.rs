//! `file-ops`: the seeds' permission probe (extract, copy into the install, read, delete).
use std::path::Path;

use molt_check_sdk::{Check, Finding, logic};

struct FileOps;

impl Check for FileOps {
    const NAME: &'static str = "file-ops";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str = "Extract a zip into scratch, copy it into the install dir, read it back, delete everything.";
    fn run(_params: &[(String, String)]) -> Vec<Finding> {
        // The host preopens /staging only if it could create it in the install dir.
        let staging = Path::new("/staging");
        let staging = std::fs::metadata(staging).is_ok().then_some(staging);
        logic::fileops::file_ops(Path::new("/scratch"), staging)
    }
}

molt_check_sdk::check!(FileOps);
