//! Archive file names (SPEC §4): `<channel>-<UTC stamp>[-N].avro`, the
//! UTC stamp and the calendar behind it, and creating a file under a name
//! that no other file has had.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ArchiveError;

/// Length of `YYYYMMDDTHHMMSS.ffffffZ`.
const STAMP_LEN: usize = 23;
/// How many `-N` suffixes to try before giving up on a file name.
const MAX_NAME_SUFFIX: u32 = 1000;

/// `YYYYMMDDTHHMMSS.ffffffZ` in UTC. Times before 1970 (a badly set clock)
/// print as the epoch.
pub(super) fn utc_stamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let sod = secs % 86_400;
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}.{:06}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`, for non-negative days).
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift to eras of 400 years starting on 0000-03-01, so that the leap
    // day ends the year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of March-based year
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Creates `<channel>-<stamp>.avro`, or `-1`, `-2`, … if the name is taken:
/// an existing file is never appended to.
pub(super) fn create_unique(
    dir: &Path,
    channel: &str,
    stamp: &str,
) -> Result<(File, PathBuf), ArchiveError> {
    let mut path = dir.join(format!("{channel}-{stamp}.avro"));
    for n in 1..=MAX_NAME_SUFFIX + 1 {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&path)
        {
            Ok(file) => return Ok((file, path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n <= MAX_NAME_SUFFIX => {
                path = dir.join(format!("{channel}-{stamp}-{n}.avro"));
            }
            Err(source) => return Err(ArchiveError::Create { path, source }),
        }
    }
    // The loop returns on its last round; this only satisfies the compiler.
    Err(ArchiveError::Create {
        path,
        source: io::ErrorKind::AlreadyExists.into(),
    })
}

/// `(stamp, suffix)` if `name` is one of `channel`'s archive file names.
pub(super) fn parse_file_name(channel: &str, name: &str) -> Option<(String, u32)> {
    let rest = name
        .strip_prefix(channel)?
        .strip_prefix('-')?
        .strip_suffix(".avro")?;
    let stamp = rest.get(..STAMP_LEN)?;
    let shape_ok = stamp.bytes().enumerate().all(|(i, b)| match i {
        8 => b == b'T',
        15 => b == b'.',
        22 => b == b'Z',
        _ => b.is_ascii_digit(),
    });
    if !shape_ok {
        return None;
    }
    let suffix = match &rest[STAMP_LEN..] {
        "" => 0,
        s => {
            let digits = s.strip_prefix('-')?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()?
        }
    };
    Some((stamp.to_owned(), suffix))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;

    use super::*;

    /// Seconds since the epoch of a UTC date-time, checked with `date -u`.
    fn at(secs: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, micros * 1000)
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(10_957), (2000, 1, 1));
        // 2000 is a leap year (divisible by 400)…
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        // …2100 is not (divisible by 100 only).
        assert_eq!(civil_from_days(47_540), (2100, 2, 28));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        assert_eq!(civil_from_days(20_818), (2026, 12, 31));
        assert_eq!(civil_from_days(20_819), (2027, 1, 1));
    }

    #[test]
    fn stamps_are_utc_with_microseconds() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000.000000Z");
        // date -u -d 2026-11-23T09:40:12Z +%s
        assert_eq!(
            utc_stamp(at(1_795_426_812, 123_456)),
            "20261123T094012.123456Z"
        );
        // date -u -d 2024-02-29T23:59:59Z +%s
        assert_eq!(
            utc_stamp(at(1_709_251_199, 999_999)),
            "20240229T235959.999999Z"
        );
        // Before the epoch: the epoch, not a panic.
        assert_eq!(
            utc_stamp(UNIX_EPOCH - Duration::from_secs(5)),
            "19700101T000000.000000Z"
        );
    }

    #[test]
    fn file_names_parse_and_order() {
        let p = |n| parse_file_name("ch", n);
        assert_eq!(
            p("ch-20261123T094012.123456Z.avro"),
            Some(("20261123T094012.123456Z".to_owned(), 0))
        );
        assert_eq!(
            p("ch-20261123T094012.123456Z-12.avro"),
            Some(("20261123T094012.123456Z".to_owned(), 12))
        );
        assert_eq!(p("ch-20261123T094012.123456Z-.avro"), None);
        assert_eq!(p("ch-20261123T094012.123456Z.avro.tmp"), None);
        assert_eq!(p("ch2-20261123T094012.123456Z.avro"), None);
        assert_eq!(p("ch-x-20261123T094012.123456Z.avro"), None);
        assert_eq!(p("ch-2026112xT094012.123456Z.avro"), None);
        assert_eq!(p("notes.txt"), None);
        assert!(p("ch-20261123T094012.123456Z.avro") < p("ch-20261123T094012.123456Z-1.avro"));
        assert!(p("ch-20261123T094012.123456Z-9.avro") < p("ch-20261123T094012.123456Z-10.avro"));
        assert!(p("ch-20261123T094012.123456Z-9.avro") < p("ch-20261123T094012.123457Z.avro"));
    }

    #[test]
    fn taken_names_get_a_suffix_and_are_never_reused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let stamp = "20261123T094012.123456Z";
        let (mut first, p0) = create_unique(dir.path(), "ch", stamp)?;
        first.write_all(b"first")?;
        let (_, p1) = create_unique(dir.path(), "ch", stamp)?;
        let (_, p2) = create_unique(dir.path(), "ch", stamp)?;
        assert_eq!(
            p0.file_name(),
            Some("ch-20261123T094012.123456Z.avro".as_ref())
        );
        assert_eq!(
            p1.file_name(),
            Some("ch-20261123T094012.123456Z-1.avro".as_ref())
        );
        assert_eq!(
            p2.file_name(),
            Some("ch-20261123T094012.123456Z-2.avro".as_ref())
        );
        assert_eq!(fs::read(&p0)?, b"first");
        // 0o640, less whatever the umask takes away.
        let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&p0)?.permissions());
        assert_eq!(mode & 0o7777 & !0o640, 0);
        Ok(())
    }
}
