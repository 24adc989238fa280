//! Least privilege for a runner started as root on a home that a service
//! account owns (the companion unit of an unprivileged agent, docs/deploy.md).
//!
//! The runner works as the home's owner, so every file it writes stays the
//! account's and a path the account planted cannot make root write elsewhere;
//! it takes root back ([`Elevated`]) only around the calls to systemd that stop,
//! hold and start the agent's own unit.
use std::os::unix::fs::MetadataExt;

use molt_layout::Home;

use crate::error::{DeployError, io_err};

/// If this process is root and the home's `work/` belongs to another account,
/// act as that account from now on (effective ids; the saved id stays root for
/// [`Elevated`]). Returns the account's uid when it switched.
pub fn drop_to_owner(home: &Home) -> Result<Option<u32>, DeployError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let work = home.work_dir();
    let md = std::fs::metadata(&work).map_err(io_err(&work))?;
    let (uid, gid) = (md.uid(), md.gid());
    if uid == 0 {
        return Ok(None);
    }
    let fail = |what: &str| DeployError::Service {
        service: format!("account uid {uid}"),
        reason: format!(
            "cannot act as the owner of {}: {what}: {}",
            work.display(),
            std::io::Error::last_os_error()
        ),
    };
    // SAFETY: plain syscalls on ids; the order matters (groups and gid while
    // still root, the uid last).
    unsafe {
        if libc::setgroups(1, &gid) != 0 {
            return Err(fail("setgroups"));
        }
        if libc::setegid(gid) != 0 {
            return Err(fail("setegid"));
        }
        if libc::seteuid(uid) != 0 {
            return Err(fail("seteuid"));
        }
    }
    tracing::info!(
        uid,
        gid,
        "runner acts as the install's owner; root only for systemctl"
    );
    Ok(Some(uid))
}

/// Root for the lifetime of the guard, when [`drop_to_owner`] switched away
/// from it; a no-op otherwise (an unprivileged runner stays unprivileged).
pub struct Elevated {
    back: Option<(libc::uid_t, libc::gid_t)>,
}

impl Elevated {
    pub fn new() -> Elevated {
        // SAFETY: id getters and setters; seteuid(0) only succeeds when the
        // real or saved uid is root, i.e. after drop_to_owner.
        unsafe {
            let (ruid, euid, egid) = (libc::getuid(), libc::geteuid(), libc::getegid());
            if ruid == 0 && euid != 0 && libc::seteuid(0) == 0 {
                let _ = libc::setegid(0);
                return Elevated {
                    back: Some((euid, egid)),
                };
            }
        }
        Elevated { back: None }
    }
}

impl Default for Elevated {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Elevated {
    fn drop(&mut self) {
        if let Some((uid, gid)) = self.back {
            // SAFETY: as in drop_to_owner: gid while still root, then uid.
            unsafe {
                let _ = libc::setegid(gid);
                if libc::seteuid(uid) != 0 {
                    // Staying root silently would defeat the point: stop here.
                    tracing::error!(uid, "cannot give root back; aborting the runner");
                    std::process::abort();
                }
            }
        }
    }
}

/// Is this process (its effective user) root?
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
