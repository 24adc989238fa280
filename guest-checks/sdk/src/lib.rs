//! The SDK for Molt pre-upgrade checks: implement [`Check`] and call
//! [`check!`]. Host imports are wrapped in plain functions returning
//! `molt_check_logic` types, so check logic stays testable natively.
//!
//! ```ignore
//! use molt_check_sdk::{Check, Finding, Severity, facts};
//! struct Mine;
//! impl Check for Mine {
//!     const NAME: &'static str = "mine";
//!     const VERSION: &'static str = "0.1.0";
//!     const DESCRIPTION: &'static str = "What it checks.";
//!     fn run(params: &[(String, String)]) -> Vec<Finding> { Vec::new() }
//! }
//! molt_check_sdk::check!(Mine);
//! ```
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "precheck",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_precheck",
        default_bindings_module: "molt_check_sdk::bindings",
    });
}

pub use molt_check_logic as logic;
pub use molt_check_logic::{Facts, Finding, Holder, Probe, ServiceState, Severity, Stage, param};

use bindings::CheckInfo;
use bindings::molt::check::types as wtypes;
use bindings::molt::check::{facts as wfacts, log as wlog, net as wnet, services as wsvc};

/// A pre-upgrade check.
pub trait Check {
    const NAME: &'static str;
    const VERSION: &'static str;
    const DESCRIPTION: &'static str;
    fn run(params: &[(String, String)]) -> Vec<Finding>;
}

/// Host facts (capability `facts`).
pub fn facts() -> Facts {
    let f = wfacts::get();
    Facts {
        os: f.os,
        arch: f.arch,
        is_64bit: f.is_64bit,
        libc_version: f.libc_version,
        install_free_bytes: f.install_free_bytes,
        temp_free_bytes: f.temp_free_bytes,
        service_account: f.service_account,
        privileged: f.privileged,
        runtime_version: f.runtime_version,
        agent_pid: f.agent_pid,
    }
}

/// URLs the host allows probing (capability `net`).
pub fn allowed_urls() -> Vec<String> {
    wnet::allowed()
}

/// Probe an allow-listed URL from the host (capability `net`).
pub fn probe(url: &str) -> Result<Probe, String> {
    wnet::probe(url).map(|p| Probe {
        url: p.url,
        ok: p.ok,
        failed_stage: p.failed_stage.map(|s| match s {
            wnet::Stage::Dns => Stage::Dns,
            wnet::Stage::Tcp => Stage::Tcp,
            wnet::Stage::Tls => Stage::Tls,
            wnet::Stage::Http => Stage::Http,
        }),
        http_status: p.http_status,
        detail: p.detail,
    })
}

/// The agent service's state (capability `services`).
pub fn service_state() -> ServiceState {
    match wsvc::status() {
        wsvc::ServiceState::Running => ServiceState::Running,
        wsvc::ServiceState::Stopped => ServiceState::Stopped,
        wsvc::ServiceState::NotInstalled => ServiceState::NotInstalled,
        wsvc::ServiceState::Unknown => ServiceState::Unknown,
    }
}

/// Processes holding files under the install dir (capability `services`).
pub fn file_holders() -> Vec<Holder> {
    wsvc::file_holders()
        .into_iter()
        .map(|p| Holder {
            pid: p.pid,
            name: p.name,
            path: p.path,
        })
        .collect()
}

/// Other services using the install dir (capability `services`).
pub fn sharing_install_dir() -> Vec<String> {
    wsvc::sharing_install_dir()
}

/// Log through the host (capability `log`).
pub fn log_info(msg: &str) {
    wlog::log(wlog::Level::Info, msg);
}

#[doc(hidden)]
pub fn __describe<C: Check>() -> CheckInfo {
    CheckInfo {
        name: C::NAME.into(),
        version: C::VERSION.into(),
        description: C::DESCRIPTION.into(),
    }
}

#[doc(hidden)]
pub fn __run<C: Check>(params: Vec<(String, String)>) -> Vec<wtypes::Finding> {
    C::run(&params)
        .into_iter()
        .map(|f| wtypes::Finding {
            severity: match f.severity {
                Severity::Blocking => wtypes::Severity::Blocking,
                Severity::Warning => wtypes::Severity::Warning,
                Severity::Info => wtypes::Severity::Info,
            },
            code: f.code,
            message: f.message,
            remediation: f.remediation,
        })
        .collect()
}

/// Export a [`Check`] implementation as the component's `precheck` world.
#[macro_export]
macro_rules! check {
    ($t:ty) => {
        struct __MoltCheckGuest;
        impl $crate::bindings::Guest for __MoltCheckGuest {
            fn describe() -> $crate::bindings::CheckInfo {
                $crate::__describe::<$t>()
            }
            fn run(
                params: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::std::vec::Vec<$crate::__WitFinding> {
                $crate::__run::<$t>(params)
            }
        }
        $crate::bindings::__export_precheck!(__MoltCheckGuest);
    };
}

#[doc(hidden)]
pub use wtypes::Finding as __WitFinding;
