//! Test-only check: for every param `name-NNN` it reports what
//! `molt_check_logic` makes of that package name (`buildstamp.ok` /
//! `buildstamp.err`, message `<key> <description>`), then one
//! `buildstamp.order` finding listing the keys of the accepted names in sorted
//! order. The host test compares this, computed in wasm, with its native parse.
use molt_check_logic::vectors::{describe, sorted_order};
use molt_check_sdk::{Check, Finding, Severity};

struct BuildstampVectors;

fn info(code: &str, message: String) -> Finding {
    Finding {
        severity: Severity::Info,
        code: code.into(),
        message,
        remediation: String::new(),
    }
}

impl Check for BuildstampVectors {
    const NAME: &'static str = "buildstamp-vectors";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "Parses and sorts the buildstamps it is given (sandbox tests only).";
    fn run(params: &[(String, String)]) -> Vec<Finding> {
        let given: Vec<(&str, &str)> = params
            .iter()
            .filter(|(k, _)| k.starts_with("name-"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut out: Vec<Finding> = given
            .iter()
            .map(|(k, name)| {
                let d = describe(name);
                let code = if d.starts_with("ok ") {
                    "buildstamp.ok"
                } else {
                    "buildstamp.err"
                };
                info(code, format!("{k} {d}"))
            })
            .collect();
        let names: Vec<&str> = given.iter().map(|(_, n)| *n).collect();
        let order: Vec<&str> = sorted_order(&names)
            .into_iter()
            .filter_map(|i| given.get(i).map(|(k, _)| *k))
            .collect();
        out.push(info("buildstamp.order", order.join(" ")));
        out
    }
}

molt_check_sdk::check!(BuildstampVectors);
