//! File descriptors, the resource every channel spends: the soft limit is
//! raised to the hard one at start, and a registration is refused (503)
//! while it would eat into a reserve kept for the API's connections, the
//! registry and each channel's archive file, rather than failing one of
//! those later.
//!
//! A channel holds one descriptor for its port and one per destination
//! socket, two more when it coalesces (an epoll set and a timer); its
//! archive holds one more while a file is open.

use std::io;

/// Kept free beyond the API's connections and one archive file per channel:
/// the registry, the runtime's epoll and wake-up descriptors, standard
/// streams, a schema file being read, `/proc` reads.
pub const SPARE: u64 = 32;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (at most 2^20: no need
/// for more, and `select`-era code is not in this process). Returns the
/// soft limit in force afterwards.
pub fn raise_limit() -> io::Result<u64> {
    let mut lim = get_limit()?;
    let wanted = lim.rlim_max.min(1 << 20);
    if wanted > lim.rlim_cur {
        lim.rlim_cur = wanted;
        // SAFETY: a valid rlimit, soft not above hard.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(rlim_to_u64(lim.rlim_cur))
}

/// The soft `RLIMIT_NOFILE` in force.
pub fn limit() -> io::Result<u64> {
    get_limit().map(|lim| rlim_to_u64(lim.rlim_cur))
}

fn get_limit() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim)
}

/// `rlim_t` is 64-bit here but 32-bit on armv7's glibc.
#[allow(clippy::unnecessary_cast)]
fn rlim_to_u64(n: libc::rlim_t) -> u64 {
    n as u64
}

/// Descriptors this process has open now (a directory read of
/// `/proc/self/fd`: call it off the runtime's threads).
pub(crate) fn open_count() -> io::Result<u64> {
    // The directory stream's own descriptor is listed too; it is in use
    // while we count, so counting it is right.
    Ok(std::fs::read_dir("/proc/self/fd")?.count() as u64)
}

/// Whether `needed` more descriptors fit while keeping `reserve` free.
/// `Err` says how many are open, the limit and what to do.
pub(crate) fn check_headroom(needed: u64, reserve: u64) -> Result<(), String> {
    let (Ok(limit), Ok(open)) = (limit(), open_count()) else {
        // Cannot tell: let the system call that needs one answer instead.
        return Ok(());
    };
    if open + needed + reserve <= limit {
        return Ok(());
    }
    Err(format!(
        "out of file descriptors: {open} of {limit} open, this channel needs {needed} \
         and {reserve} are kept for the API and the archives; raise the limit \
         (LimitNOFILE= in the service, ulimit -n) or remove channels"
    ))
}

/// Whether an error is the process or the system running out of
/// descriptors.
pub(crate) fn is_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_limits_are_read() {
        let open = open_count().unwrap();
        assert!(open >= 3, "stdin, stdout, stderr at least: {open}");
        let limit = limit().unwrap();
        assert!(check_headroom(1, 0).is_ok() || open + 1 > limit);
        let err = check_headroom(limit, 0).unwrap_err();
        assert!(err.contains("out of file descriptors"), "{err}");
        assert!(is_exhaustion(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(!is_exhaustion(&io::Error::from_raw_os_error(
            libc::EADDRINUSE
        )));
    }
}
