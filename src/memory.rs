//! The process's own memory: giving back, once the relay runs, the pages of
//! the executable that only start-up touched.
//!
//! A relay with one idle channel had 8.9 MiB resident, of which 1.6 MiB was
//! its own data; the rest were pages of the executable, mapped 64 KiB at a
//! time around every page of code touched (fault-around), most of it code
//! that only runs at start-up (options, YAML, config schema validation,
//! registry recovery).

use std::path::Path;

/// Drops this process's mappings of the executable's start-up code.
///
/// For every read-only mapping of the executable that holds no private
/// (relocated) page: `MADV_PAGEOUT` frees the pages only this process maps,
/// then `MADV_DONTNEED` unmaps the rest (pages shared with another process
/// running the binary, or held in large folios the kernel will not split).
/// Both are safe on such a mapping because every page of it is the file's
/// own content: code needed again faults back in from the page cache. A
/// mapping with private pages (RELRO, relocated at load) is left alone, as
/// dropping those would bring back the file's unrelocated bytes.
///
/// `SPEEDRELAY_NO_PAGE_RELEASE=1` (any value but empty or `0`) skips it:
/// qemu-user emulates these `madvise` calls on the emulator's own view of
/// the guest's code and the process crashes, so an emulated run needs it.
pub fn release_startup_code() {
    if page_release_disabled(std::env::var_os(NO_PAGE_RELEASE).as_deref()) {
        tracing::debug!("{NO_PAGE_RELEASE} is set: start-up code pages kept");
        return;
    }
    let before = executable_mappings();
    for m in before.iter().filter(|m| m.file_pages_only()) {
        // SAFETY: `m` is a read-only private mapping of the executable with
        // no anonymous page (checked in `file_pages_only`), so paging it out
        // or dropping it changes no byte this process reads.
        unsafe { libc::madvise(m.start as *mut libc::c_void, m.len, libc::MADV_PAGEOUT) };
        // SAFETY: as above.
        unsafe { libc::madvise(m.start as *mut libc::c_void, m.len, libc::MADV_DONTNEED) };
    }
    let resident = |ms: &[Mapping]| ms.iter().map(|m| m.rss_kib).sum::<u64>();
    tracing::debug!(
        before_kib = resident(&before),
        after_kib = resident(&executable_mappings()),
        "start-up code pages released"
    );
}

/// The switch that keeps the start-up pages (for running under emulation).
pub(crate) const NO_PAGE_RELEASE: &str = "SPEEDRELAY_NO_PAGE_RELEASE";

fn page_release_disabled(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

/// One mapping of the executable file, as /proc/self/smaps shows it.
#[derive(Debug, Default, PartialEq)]
struct Mapping {
    start: usize,
    len: usize,
    writable: bool,
    rss_kib: u64,
    anonymous_kib: u64,
}

impl Mapping {
    fn file_pages_only(&self) -> bool {
        !self.writable && self.anonymous_kib == 0
    }
}

/// The executable's mappings; empty if /proc is not mounted.
fn executable_mappings() -> Vec<Mapping> {
    let (Ok(exe), Ok(smaps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/smaps"),
    ) else {
        return Vec::new();
    };
    parse_smaps(&smaps, &exe)
}

/// Mappings of `path` in smaps text: a header line
/// ("start-end perms offset dev inode path") followed by "Key: N kB" lines.
fn parse_smaps(smaps: &str, path: &Path) -> Vec<Mapping> {
    let mut found: Vec<Mapping> = Vec::new();
    let mut ours = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some(key) = first.strip_suffix(':') {
            let Some(last) = found.last_mut().filter(|_| ours) else {
                continue;
            };
            let kib = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match key {
                "Rss" => last.rss_kib = kib,
                "Anonymous" => last.anonymous_kib = kib,
                _ => {}
            }
            continue;
        }
        let range = first.split_once('-').and_then(|(a, b)| {
            Some((
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        });
        let (Some((start, end)), Some(perms)) = (range, fields.next()) else {
            ours = false;
            continue;
        };
        ours = fields.nth(3).map(Path::new) == Some(path);
        if ours {
            found.push(Mapping {
                start,
                len: end - start,
                writable: perms.contains('w'),
                ..Mapping::default()
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
a5c0c000-a5dd6000 r--p 00000000 fe:00 5458383                    /opt/speedrelay
Size:               1832 kB
Rss:                 320 kB
Anonymous:             0 kB
a62c1000-a6301000 r--p 006b3000 fe:00 5458383                    /opt/speedrelay
Rss:                 256 kB
Anonymous:           256 kB
a6301000-a6304000 rw-p 006f2000 fe:00 5458383                    /opt/speedrelay
Rss:                  12 kB
Anonymous:            12 kB
b6f00000-b6f01000 r-xp 00000000 fe:00 1234                       /usr/lib/libc.so.6
Rss:                   4 kB
Anonymous:             0 kB
b6f02000-b6f03000 rw-p 00000000 00:00 0
Rss:                   4 kB
VmFlags: rd wr mr mw me ac
";

    #[test]
    fn only_read_only_file_pages_of_the_executable_are_released() {
        let maps = parse_smaps(SMAPS, Path::new("/opt/speedrelay"));
        assert_eq!(maps.len(), 3, "{maps:?}");
        assert_eq!(
            maps[0],
            Mapping {
                start: 0xa5c0c000,
                len: 0x1ca000,
                writable: false,
                rss_kib: 320,
                anonymous_kib: 0
            }
        );
        let released: Vec<bool> = maps.iter().map(Mapping::file_pages_only).collect();
        // RELRO (relocated, read-only now) and .data keep their pages.
        assert_eq!(released, [true, false, false]);
    }

    /// A 64-bit kernel prints 12-digit addresses; a 32-bit one 8 (the
    /// fixture above, so the test builds and runs on armv7 too).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn sixty_four_bit_addresses_are_read() {
        let smaps = "5603ecf0c000-5603ed0d6000 r--p 00000000 fe:00 1 /opt/speedrelay\nRss: 8 kB\n";
        let maps = parse_smaps(smaps, Path::new("/opt/speedrelay"));
        assert_eq!((maps[0].start, maps[0].len), (0x5603ecf0c000, 0x1ca000));
    }

    #[test]
    fn the_switch_keeps_the_pages_unless_empty_or_zero() {
        let off = |v: &str| page_release_disabled(Some(std::ffi::OsStr::new(v)));
        assert!(!page_release_disabled(None));
        assert!(!off("") && !off("0"));
        assert!(off("1") && off("yes"));
    }
}
