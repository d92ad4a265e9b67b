//! `speedrelay verify` and the `verify` module against real archive files
//! written by the archive writer: healthy files, files torn inside a block,
//! corrupt blocks, cut headers, and files that are not Avro at all.

use std::fs::{self, File};
use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use apache_avro::types::{Record, Value};
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{Reader, Schema};
use speedrelay::archive::ArchiveWriter;
use speedrelay::config::{ArchiveSettings, Codec, Rotation, RotationMode};
use speedrelay::verify::{self, Repaired, TailProblem};

use crate::common::{stderr, stdout};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SCHEMA: &str = include_str!("../../config/agents/example.avsc");
const CODECS: [Codec; 4] = [Codec::Null, Codec::Deflate, Codec::Zstandard, Codec::Snappy];

/// `n` example.avsc records numbered from `start`, and their encodings.
fn records(start: usize, n: usize) -> (Vec<Value>, Vec<u8>) {
    let schema = Schema::parse_str(SCHEMA).expect("example.avsc parses");
    let writer = GenericDatumWriter::builder(&schema)
        .build()
        .expect("datum writer");
    let mut values = Vec::new();
    let mut data = Vec::new();
    for i in start..start + n {
        let mut r = Record::new(&schema).expect("a record schema");
        r.put(
            "time",
            Value::TimestampNanos(1_795_426_812_000_000_000 + i as i64),
        );
        r.put("message", Value::String(format!("record {i}")));
        r.put("counter", Value::Int(i as i32));
        for f in ["sine_wave", "ramp", "square_wave", "noise"] {
            r.put(f, Value::Double(i as f64));
        }
        let v = Value::from(r);
        writer.write_value_ref(&mut data, &v).expect("encodes");
        values.push(v);
    }
    (values, data)
}

/// A closed archive file of 3 blocks of 30 records; returns its path, the
/// size of each write (the first includes the header) and the records.
fn three_blocks(dir: &Path, codec: Codec) -> (PathBuf, Vec<u64>, Vec<Value>) {
    let mut w = ArchiveWriter::new(
        dir.join("ch"),
        "ch",
        SCHEMA,
        ArchiveSettings {
            codec,
            ..ArchiveSettings::default()
        },
        Rotation {
            mode: RotationMode::Time,
            threshold: 3600,
        },
        None,
    );
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    for b in 0..3 {
        let (values, data) = records(b * 30, 30);
        sizes.push(w.write_block(&data, 30).expect("block written").bytes);
        all.extend(values);
    }
    let path = w.current_path().expect("an open file").to_owned();
    w.close().expect("closed");
    (path, sizes, all)
}

fn read_all(path: &Path) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let reader = Reader::new(BufReader::new(File::open(path)?))?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_speedrelay"))
        .arg("verify")
        .args(args)
        .output()
        .expect("speedrelay runs")
}

#[test]
fn a_healthy_file_is_reported_with_its_counts_for_every_codec() -> TestResult {
    for codec in CODECS {
        let tmp = tempfile::tempdir()?;
        let (path, sizes, _) = three_blocks(tmp.path(), codec);
        let report = verify::scan(&path)?;
        assert!(report.is_healthy(), "{codec:?}: {report:?}");
        assert_eq!((report.blocks, report.records), (3, 90));
        assert_eq!(report.codec, codec.as_str());
        assert_eq!(report.complete_len, sizes.iter().sum::<u64>());
        assert_eq!(report.file_len, report.complete_len);
        assert!(report.schema.contains("sine_wave"));

        let p = path.to_str().ok_or("utf-8 path")?;
        let out = cli(&[p]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let line = stdout(&out);
        assert!(
            line.starts_with(&format!(
                "{p}: healthy: 3 blocks, 90 records, codec {}",
                codec.as_str()
            )),
            "{line}"
        );
        // --schema adds the header's schema, as JSON, after the line.
        let out = cli(&["--schema", p]);
        assert_eq!(out.status.code(), Some(0));
        let text = stdout(&out);
        let (first, schema_text) = text.split_once('\n').ok_or("two parts")?;
        assert!(first.starts_with(&format!("{p}: healthy")), "{text}");
        let printed: serde_json::Value = serde_json::from_str(schema_text.trim())?;
        assert_eq!(printed, serde_json::from_str::<serde_json::Value>(SCHEMA)?);
        // --repair on a healthy file writes nothing.
        let before = fs::read(&path)?;
        let out = cli(&["--repair", p]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(fs::read(&path)?, before);
    }
    Ok(())
}

#[test]
fn a_file_torn_inside_a_block_is_reported_then_repaired_to_its_complete_blocks() -> TestResult {
    for codec in CODECS {
        let tmp = tempfile::tempdir()?;
        let (path, sizes, all) = three_blocks(tmp.path(), codec);
        let two_blocks = sizes[0] + sizes[1];
        // Cut in the middle of the third block's data.
        File::options()
            .write(true)
            .open(&path)?
            .set_len(two_blocks + sizes[2] / 2)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640))?;

        let report = verify::scan(&path)?;
        assert_eq!((report.blocks, report.records), (2, 60), "{codec:?}");
        assert_eq!(report.complete_len, two_blocks);
        let tail = report.tail.clone().ok_or("torn")?;
        assert_eq!(tail.offset, two_blocks);
        assert_eq!(tail.problem, TailProblem::Truncated);

        let p = path.to_str().ok_or("utf-8 path")?;
        let out = cli(&[p]);
        assert_eq!(out.status.code(), Some(1), "torn without --repair exits 1");
        assert!(stdout(&out).contains("torn:"), "{}", stdout(&out));
        assert_eq!(
            fs::metadata(&path)?.len(),
            two_blocks + sizes[2] / 2,
            "left as is"
        );

        let out = cli(&["--repair", p]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains("repaired:"), "{}", stdout(&out));
        assert_eq!(fs::metadata(&path)?.len(), two_blocks);
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o640);
        assert_eq!(
            read_all(&path)?,
            all[..60],
            "{codec:?}: every complete block"
        );
        assert!(verify::scan(&path)?.is_healthy());
        // No temporary file is left beside it.
        assert_eq!(fs::read_dir(path.parent().ok_or("dir")?)?.count(), 1);
    }
    Ok(())
}

#[test]
fn every_cut_point_reads_as_a_prefix_of_whole_blocks() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (path, sizes, _) = three_blocks(tmp.path(), Codec::Snappy);
    let whole = fs::read(&path)?;
    let header_len = verify::scan(&path)?.header_len;
    let ends = [sizes[0], sizes[0] + sizes[1], whole.len() as u64];
    for cut in 0..=whole.len() {
        let report = verify::scan_bytes(&whole[..cut])?;
        let complete = ends.iter().filter(|&&e| e <= cut as u64).count() as u64;
        assert_eq!(report.blocks, complete, "cut at {cut}");
        assert_eq!(report.records, complete * 30, "cut at {cut}");
        let healthy = cut as u64 == header_len || ends.contains(&(cut as u64));
        assert_eq!(report.is_healthy(), healthy, "cut at {cut}: {report:?}");
    }
    Ok(())
}

#[test]
fn a_corrupt_block_ends_the_readable_part_and_nothing_after_it_counts() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (path, sizes, all) = three_blocks(tmp.path(), Codec::Null);
    let mut bytes = fs::read(&path)?;
    // The second block's last sync byte.
    let at = (sizes[0] + sizes[1] - 1) as usize;
    bytes[at] ^= 0xff;
    fs::write(&path, &bytes)?;
    let report = verify::scan(&path)?;
    assert_eq!((report.blocks, report.records), (1, 30), "{report:?}");
    assert_eq!(
        report.tail.as_ref().map(|t| &t.problem),
        Some(&TailProblem::Sync)
    );

    // A record that no longer matches the schema: a string length made huge.
    let (path2, _, _) = three_blocks(&tmp.path().join("b"), Codec::Null);
    let mut bytes = fs::read(&path2)?;
    let header_len = verify::scan(&path2)?.header_len as usize;
    // Block 1's data starts after its count (30 -> 1 byte) and size
    // (2 bytes for >= 64); the first record's time long is 9 bytes,
    // then the message string's length.
    bytes[header_len + 1 + 2 + 9] = 0x7e;
    fs::write(&path2, &bytes)?;
    let report = verify::scan(&path2)?;
    assert_eq!(report.blocks, 0, "{report:?}");
    assert!(matches!(
        report.tail.map(|t| t.problem),
        Some(TailProblem::Records(_))
    ));

    match verify::repair(&path)? {
        Repaired::Truncated { after, .. } => assert_eq!(after.records, 30),
        other => panic!("expected a truncation, got {other:?}"),
    }
    assert_eq!(read_all(&path)?, all[..30]);
    Ok(())
}

#[test]
fn a_cut_header_is_torn_and_repair_removes_the_file() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (path, _, _) = three_blocks(tmp.path(), Codec::Null);
    File::options().write(true).open(&path)?.set_len(40)?;
    let report = verify::scan(&path)?;
    assert_eq!(report.header_len, 0);
    assert_eq!(report.tail.map(|t| t.problem), Some(TailProblem::Header));
    let p = path.to_str().ok_or("utf-8 path")?;
    assert_eq!(cli(&[p]).status.code(), Some(1));
    let out = cli(&["--repair", p]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("removed"), "{}", stdout(&out));
    assert!(!path.exists());

    // An empty file (created, crashed before the header) is the same case.
    let empty = tmp.path().join("empty.avro");
    fs::write(&empty, b"")?;
    assert!(!verify::scan(&empty)?.is_healthy());
    Ok(())
}

#[test]
fn a_file_that_is_not_avro_exits_2_and_is_never_touched() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("notes.avro");
    fs::write(&path, "this is a text file, not a container\n")?;
    let p = path.to_str().ok_or("utf-8 path")?;
    for args in [vec![p], vec!["--repair", p]] {
        let out = cli(&args);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("not an Avro container file"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        fs::read_to_string(&path)?,
        "this is a text file, not a container\n"
    );

    let missing = tmp.path().join("missing.avro");
    let out = cli(&[missing.to_str().ok_or("utf-8 path")?]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));

    // Several files: the worst one decides.
    let (good, _, _) = three_blocks(tmp.path(), Codec::Null);
    let out = cli(&[good.to_str().ok_or("utf-8 path")?, p]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("healthy"));
    Ok(())
}

#[test]
fn hostile_lengths_are_refused_without_allocating_them() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (path, _, _) = three_blocks(tmp.path(), Codec::Null);
    let bytes = fs::read(&path)?;
    let header_len = verify::scan(&path)?.header_len as usize;
    // A block claiming 2^62 - 1 records and as many bytes.
    let mut hostile = bytes[..header_len].to_vec();
    hostile.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    hostile.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
    let report = verify::scan_bytes(&hostile)?;
    assert_eq!(report.blocks, 0);
    assert!(!report.is_healthy());

    // A schema whose records take zero bytes, and a block claiming 2^62 - 1 of them.
    let nulls = r#"{"type":"record","name":"n","fields":[{"name":"a","type":"null"}]}"#;
    let mut w = ArchiveWriter::new(
        tmp.path().join("z"),
        "z",
        nulls,
        ArchiveSettings::default(),
        Rotation {
            mode: RotationMode::Size,
            threshold: 1 << 30,
        },
        None,
    );
    w.write_block(&[], 3)?;
    let zpath = w.current_path().ok_or("open")?.to_owned();
    w.close()?;
    let mut z = fs::read(&zpath)?;
    let zheader = z.len() - 1 - 1 - 16;
    z.splice(
        zheader..zheader + 1,
        [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
    );
    let report = verify::scan_bytes(&z)?;
    assert_eq!(
        report.records,
        (1 << 62) - 1,
        "counted without walking each"
    );
    Ok(())
}

#[test]
fn an_empty_file_has_its_own_line_and_repair_removes_it() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let empty = tmp.path().join("empty.avro");
    fs::write(&empty, b"")?;
    let p = empty.to_str().ok_or("utf-8 path")?;
    let out = cli(&[p]);
    assert_eq!(out.status.code(), Some(1), "as a torn file");
    assert_eq!(
        stdout(&out),
        format!("{p}: empty: no Avro header (0 bytes); --repair removes it\n")
    );
    let out = cli(&["--repair", p]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!("{p}: removed: it was empty (0 bytes, no Avro header)\n")
    );
    assert!(!empty.exists());
    Ok(())
}

#[test]
fn the_torn_line_says_what_repair_will_do() -> TestResult {
    let tmp = tempfile::tempdir()?;
    // Torn inside the third block: repair keeps the first two.
    let (path, sizes, _) = three_blocks(tmp.path(), Codec::Null);
    let two_blocks = sizes[0] + sizes[1];
    File::options()
        .write(true)
        .open(&path)?
        .set_len(two_blocks + 10)?;
    let p = path.to_str().ok_or("utf-8 path")?;
    let said = stdout(&cli(&[p]));
    assert!(
        said.contains("readable: 2 blocks, 60 records, codec null")
            && said.ends_with(&format!(
                "; --repair cuts the file to these {two_blocks} bytes\n"
            )),
        "{said}"
    );
    cli(&["--repair", p]);
    assert_eq!(fs::metadata(&path)?.len(), two_blocks, "as it said");

    // A header cut short: nothing is readable, and repair removes the file.
    let (cut, _, _) = three_blocks(&tmp.path().join("cut"), Codec::Null);
    File::options().write(true).open(&cut)?.set_len(40)?;
    let c = cut.to_str().ok_or("utf-8 path")?;
    let out = cli(&[c]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        format!(
            "{c}: torn: the Avro header is incomplete (40 bytes), so no record is \
             readable; --repair removes it\n"
        )
    );
    cli(&["--repair", c]);
    assert!(!cut.exists(), "as it said");
    Ok(())
}
