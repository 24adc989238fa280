//! `download-access`: the download site answers over TLS (probed by the host).
use molt_check_sdk::{Check, Finding, allowed_urls, logic, param, probe};

struct DownloadAccess;

impl Check for DownloadAccess {
    const NAME: &'static str = "download-access";
    const VERSION: &'static str = "0.1.0";
    const DESCRIPTION: &'static str =
        "The download site (param `url`, default the first allow-listed URL) answers over TLS.";
    fn run(params: &[(String, String)]) -> Vec<Finding> {
        let url = param(params, "url")
            .map(str::to_string)
            .or_else(|| allowed_urls().into_iter().next());
        let result = match &url {
            Some(u) => probe(u),
            None => Err("the host allows no URL".to_string()),
        };
        logic::checks::download_access(url.as_deref(), result)
    }
}

molt_check_sdk::check!(DownloadAccess);
