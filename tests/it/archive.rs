//! The archive writer against real files: every file it leaves must open in
//! apache-avro's own `Reader` and hold exactly what was written, in order.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::{Record, Value};
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{Reader, Schema};
use speedrelay::archive::{self, ArchiveError, ArchiveWriter, Block, BlockWritten};
use speedrelay::config::{
    ArchiveSettings, Codec, Retention, RetentionMode, Rotation, RotationMode,
};
use speedrelay::counters::ChannelCounters;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SCHEMA: &str = include_str!("../../config/agents/example.avsc");
const CODECS: [Codec; 4] = [Codec::Null, Codec::Deflate, Codec::Zstandard, Codec::Snappy];

fn schema() -> Schema {
    Schema::parse_str(SCHEMA).expect("example.avsc parses")
}

/// `n` records numbered from `start` (the number is in `counter`, so order
/// is visible), and their concatenated encodings: one block's worth.
fn records(schema: &Schema, start: usize, n: usize) -> (Vec<Value>, Vec<u8>) {
    let writer = GenericDatumWriter::builder(schema)
        .build()
        .expect("datum writer");
    let mut values = Vec::with_capacity(n);
    let mut data = Vec::new();
    for i in start..start + n {
        let mut r = Record::new(schema).expect("a record schema");
        r.put(
            "time",
            Value::TimestampNanos(1_795_426_812_000_000_000 + i as i64 * 1000),
        );
        r.put(
            "message",
            Value::String(format!("record number {i:08} of the test")),
        );
        r.put("counter", Value::Int(i as i32));
        r.put("sine_wave", Value::Double((i as f64 / 10.0).sin()));
        r.put("ramp", Value::Double(i as f64));
        r.put(
            "square_wave",
            Value::Double(if i % 2 == 0 { 1.0 } else { -1.0 }),
        );
        r.put("noise", Value::Double(i as f64 * 0.123));
        let v = Value::from(r);
        writer.write_value_ref(&mut data, &v).expect("encodes");
        values.push(v);
    }
    (values, data)
}

fn settings(codec: Codec) -> ArchiveSettings {
    ArchiveSettings {
        codec,
        ..ArchiveSettings::default()
    }
}

/// Time rotation at an hour: nothing rotates during a test.
fn no_rotation() -> Rotation {
    Rotation {
        mode: RotationMode::Time,
        threshold: 3600,
    }
}

fn size_rotation(bytes: u64) -> Rotation {
    Rotation {
        mode: RotationMode::Size,
        threshold: bytes,
    }
}

fn writer(
    dir: &Path,
    codec: Codec,
    rotation: Rotation,
    retention: Option<Retention>,
) -> ArchiveWriter {
    ArchiveWriter::new(
        dir.join("ch"),
        "ch",
        SCHEMA,
        settings(codec),
        rotation,
        retention,
    )
}

/// Every record of an archive file; fails on any read error.
fn read_all(path: &Path) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let reader = Reader::new(BufReader::new(File::open(path)?))?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// The header's metadata map, decoded independently of `Reader`.
fn header_metadata(path: &Path) -> Result<HashMap<String, Vec<u8>>, Box<dyn std::error::Error>> {
    let bytes = fs::read(path)?;
    assert_eq!(&bytes[..4], b"Obj\x01", "magic of {}", path.display());
    let map_schema = Schema::map(Schema::Bytes).build();
    let value = GenericDatumReader::builder(&map_schema)
        .build()?
        .read_value(&mut &bytes[4..])?;
    let Value::Map(map) = value else {
        return Err("metadata is not a map".into());
    };
    Ok(map
        .into_iter()
        .map(|(k, v)| match v {
            Value::Bytes(b) => (k, b),
            other => panic!("metadata {k} is not bytes: {other:?}"),
        })
        .collect())
}

/// The `.avro` files of a directory, by name.
fn avro_files(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "avro") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn total_size(files: &[PathBuf]) -> Result<u64, std::io::Error> {
    files.iter().map(|f| fs::metadata(f).map(|m| m.len())).sum()
}

#[test]
fn every_codec_round_trips_through_apache_avro_reader() -> TestResult {
    let schema = schema();
    for codec in CODECS {
        let tmp = tempfile::tempdir()?;
        let mut w = writer(tmp.path(), codec, no_rotation(), None);
        let mut expected = Vec::new();
        let mut bytes = 0;
        let mut start = 0;
        for (i, n) in [1, 10, 100, 250].into_iter().enumerate() {
            let (values, data) = records(&schema, start, n);
            let written = w.write_block(&data, n as u64)?;
            assert_eq!(written.opened.is_some(), i == 0, "{codec:?} block {i}");
            assert_eq!(written.closed, None);
            assert_eq!(
                written.opened.as_deref().or(w.current_path()),
                w.current_path()
            );
            bytes += written.bytes;
            expected.extend(values);
            start += n;
        }
        let path = w.current_path().ok_or("no open file")?.to_owned();
        w.close()?;
        assert_eq!(w.current_path(), None);

        let name = path.file_name().and_then(|n| n.to_str()).ok_or("name")?;
        assert!(
            name.starts_with("ch-") && name.ends_with("Z.avro"),
            "{name}"
        );
        assert_eq!(path.parent(), Some(tmp.path().join("ch").as_path()));
        assert_eq!(
            fs::metadata(&path)?.len(),
            bytes,
            "{codec:?}: bytes reported"
        );
        assert_eq!(read_all(&path)?, expected, "{codec:?}");
        let meta = header_metadata(&path)?;
        assert_eq!(meta["avro.codec"], codec.as_str().as_bytes(), "{codec:?}");
        assert_eq!(
            meta["avro.schema"],
            SCHEMA.as_bytes(),
            "schema text kept as given"
        );
    }
    Ok(())
}

#[test]
fn empty_blocks_write_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let mut w = writer(tmp.path(), Codec::Null, no_rotation(), None);
    let written = w.write_block(&[], 0)?;
    assert_eq!(
        written,
        BlockWritten {
            bytes: 0,
            opened: None,
            closed: None
        }
    );
    assert_eq!(w.current_path(), None);
    w.close()?;
    assert!(!tmp.path().join("ch").exists(), "no directory for no data");
    Ok(())
}

#[test]
fn size_rotation_splits_records_over_readable_files_in_order() -> TestResult {
    let schema = schema();
    let tmp = tempfile::tempdir()?;
    let threshold = 3000;
    let mut w = writer(tmp.path(), Codec::Deflate, size_rotation(threshold), None);
    let mut expected = Vec::new();
    let mut opened = Vec::new();
    let mut closed = Vec::new();
    for b in 0..12 {
        let (values, data) = records(&schema, b * 40, 40);
        let written = w.write_block(&data, 40)?;
        opened.extend(written.opened);
        closed.extend(written.closed);
        expected.extend(values);
    }
    w.close()?;

    let files = avro_files(&tmp.path().join("ch"))?;
    assert!(files.len() >= 3, "{} files", files.len());
    assert_eq!(files, opened, "names sort in the order files were opened");
    // Every file but the last was closed by rotation, once it reached the
    // threshold.
    assert_eq!(closed, opened[..closed.len()]);
    assert!(closed.len() >= files.len() - 1);
    for f in &files[..files.len() - 1] {
        assert!(fs::metadata(f)?.len() >= threshold, "{}", f.display());
    }
    let mut got = Vec::new();
    for f in &files {
        let part = read_all(f)?;
        assert!(!part.is_empty(), "{} holds records", f.display());
        got.extend(part);
    }
    assert_eq!(got, expected);
    Ok(())
}

#[test]
fn time_rotation_starts_a_new_file_once_the_open_one_is_too_old() -> TestResult {
    let schema = schema();
    let tmp = tempfile::tempdir()?;
    let rotation = Rotation {
        mode: RotationMode::Time,
        threshold: 1,
    };
    let mut w = writer(tmp.path(), Codec::Null, rotation, None);
    let (v1, d1) = records(&schema, 0, 5);
    let (v2, d2) = records(&schema, 5, 5);
    let (v3, d3) = records(&schema, 10, 5);
    let first = w.write_block(&d1, 5)?.opened.ok_or("first file")?;
    assert_eq!(w.write_block(&d2, 5)?.opened, None, "too young to rotate");
    std::thread::sleep(Duration::from_millis(1100));
    let written = w.write_block(&d3, 5)?;
    assert_eq!(written.closed.as_ref(), Some(&first));
    let second = written.opened.ok_or("second file")?;
    w.close()?;
    assert_eq!(read_all(&first)?, [v1, v2].concat());
    assert_eq!(read_all(&second)?, v3);
    Ok(())
}

#[test]
fn quota_retention_deletes_the_oldest_files_and_keeps_the_total_under_it() -> TestResult {
    let schema = schema();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ch");
    // Neither another name nor another channel's file is ours to delete.
    fs::create_dir_all(&dir)?;
    let foreign = [
        dir.join("notes.txt"),
        dir.join("other-20200101T000000.000000Z.avro"),
    ];
    for f in &foreign {
        fs::write(f, vec![0u8; 10_000])?;
    }

    // One file per block; a block's file is about 1.2 kB.
    let mut w = writer(tmp.path(), Codec::Null, size_rotation(1), None);
    let (_, probe) = records(&schema, 0, 10);
    let one = w.write_block(&probe, 10)?;
    let file_size = one.bytes;
    let quota = file_size * 7 / 2;
    w.reconfigure(
        settings(Codec::Null),
        size_rotation(1),
        Some(Retention {
            mode: RetentionMode::Quota,
            value: quota,
        }),
    );
    let mut opened = vec![one.opened.ok_or("first file")?];
    let mut expected = Vec::new();
    for b in 1..10 {
        let (values, data) = records(&schema, b * 10, 10);
        let written = w.write_block(&data, 10)?;
        opened.extend(written.opened);
        expected.push(values);
        let ours: Vec<_> = avro_files(&dir)?
            .into_iter()
            .filter(|f| !foreign.contains(f))
            .collect();
        assert!(total_size(&ours)? <= quota, "after block {b}");
    }
    w.close()?;

    let kept: Vec<_> = avro_files(&dir)?
        .into_iter()
        .filter(|f| !foreign.contains(f))
        .collect();
    assert_eq!(kept.len(), 3, "3.5 files fit the quota");
    assert_eq!(kept, opened[opened.len() - 3..], "the newest are kept");
    for (f, values) in kept.iter().zip(&expected[expected.len() - 3..]) {
        assert_eq!(&read_all(f)?, values);
    }
    for f in &foreign {
        assert!(f.exists(), "{} untouched", f.display());
    }
    Ok(())
}

#[test]
fn ttl_retention_deletes_files_older_than_the_ttl_and_keeps_fresh_ones() -> TestResult {
    let schema = schema();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ch");
    let mut w = writer(tmp.path(), Codec::Null, size_rotation(1), None);
    let mut files = Vec::new();
    for b in 0..3 {
        let (_, data) = records(&schema, b * 10, 10);
        files.extend(w.write_block(&data, 10)?.opened);
    }
    assert_eq!(files.len(), 3);
    // The two oldest files were last modified two hours ago, and so was a
    // file that is not an archive.
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    let notes = dir.join("notes.txt");
    fs::write(&notes, "keep me")?;
    for f in files[..2].iter().chain([&notes]) {
        File::options()
            .write(true)
            .open(f)?
            .set_modified(two_hours_ago)?;
    }

    // A retention change takes effect at the next file.
    w.reconfigure(
        settings(Codec::Null),
        size_rotation(1),
        Some(Retention {
            mode: RetentionMode::Ttl,
            value: 3600,
        }),
    );
    let (values, data) = records(&schema, 30, 10);
    let newest = w.write_block(&data, 10)?.opened.ok_or("new file")?;
    w.close()?;

    assert!(
        !files[0].exists() && !files[1].exists(),
        "old files deleted"
    );
    assert!(files[2].exists(), "a fresh file is kept");
    assert!(notes.exists(), "not an archive file");
    assert_eq!(avro_files(&dir)?, [files[2].clone(), newest.clone()]);
    assert_eq!(read_all(&newest)?, values);
    Ok(())
}

#[test]
fn a_second_writer_in_the_same_directory_starts_its_own_file() -> TestResult {
    let schema = schema();
    let tmp = tempfile::tempdir()?;
    let (v1, d1) = records(&schema, 0, 20);
    let (v2, d2) = records(&schema, 20, 20);
    let (v3, d3) = records(&schema, 40, 20);

    // As after a restart: the first writer's file is complete and closed.
    let mut first = writer(tmp.path(), Codec::Snappy, no_rotation(), None);
    let first_path = first.write_block(&d1, 20)?.opened.ok_or("first file")?;
    first.close()?;
    let first_bytes = fs::read(&first_path)?;

    // Within the same second: the names differ in their microseconds, or
    // by a `-N` suffix (the unit tests force that case).
    let mut second = writer(tmp.path(), Codec::Snappy, no_rotation(), None);
    let second_path = second.write_block(&d2, 20)?.opened.ok_or("second file")?;
    second.write_block(&d3, 20)?;
    second.close()?;

    assert_ne!(first_path, second_path);
    assert_eq!(fs::read(&first_path)?, first_bytes, "first file unchanged");
    assert_eq!(read_all(&first_path)?, v1);
    assert_eq!(read_all(&second_path)?, [v2, v3].concat());
    Ok(())
}

/// apache-avro's `Reader` reads a block by its header (count, size), then
/// `read_exact`s the data and the sync marker. A torn block makes that read
/// fail: the iterator yields every record of the complete blocks, then one
/// `Err` (a short read), then `None`. Tearing the file exactly at a block
/// boundary reads as a clean end.
#[test]
fn a_torn_tail_still_reads_up_to_the_last_complete_block() -> TestResult {
    let schema = schema();
    for codec in CODECS {
        for cut in [Cut::MidData, Cut::MidSync, Cut::AfterCount] {
            let tmp = tempfile::tempdir()?;
            let mut w = writer(tmp.path(), codec, no_rotation(), None);
            let mut sizes = Vec::new();
            let mut blocks = Vec::new();
            for b in 0..3 {
                let (values, data) = records(&schema, b * 30, 30);
                sizes.push(w.write_block(&data, 30)?.bytes);
                blocks.push(values);
            }
            let path = w.current_path().ok_or("open file")?.to_owned();
            w.close()?;

            let whole: u64 = sizes.iter().sum();
            let third_starts = whole - sizes[2];
            let len = match cut {
                Cut::MidData => third_starts + sizes[2] / 2,
                Cut::MidSync => whole - 5,
                Cut::AfterCount => third_starts + 1,
            };
            File::options().write(true).open(&path)?.set_len(len)?;

            let mut reader = Reader::new(BufReader::new(File::open(&path)?))?;
            let mut good = Vec::new();
            let mut errors = 0;
            for item in reader.by_ref() {
                match item {
                    Ok(v) => {
                        assert_eq!(errors, 0, "no record after the error");
                        good.push(v);
                    }
                    Err(_) => errors += 1,
                }
            }
            assert_eq!(
                good,
                [blocks[0].clone(), blocks[1].clone()].concat(),
                "{codec:?} {cut:?}"
            );
            assert_eq!(errors, 1, "{codec:?} {cut:?}: one error, then the end");
            assert!(reader.next().is_none());
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Cut {
    MidData,
    MidSync,
    AfterCount,
}

#[test]
fn an_unwritable_directory_is_a_typed_error_naming_the_path() -> TestResult {
    let schema = schema();
    let tmp = tempfile::tempdir()?;
    // We run as root: permission bits stop nothing, a file in the way does.
    let blocker = tmp.path().join("blocker");
    fs::write(&blocker, "not a directory")?;
    let channel_dir = blocker.join("ch");
    let mut w = ArchiveWriter::new(
        channel_dir.clone(),
        "ch",
        SCHEMA,
        settings(Codec::Null),
        no_rotation(),
        None,
    );
    let (values, data) = records(&schema, 0, 5);
    let err = w
        .write_block(&data, 5)
        .expect_err("the directory cannot exist");
    match &err {
        ArchiveError::CreateDir { path, source } => {
            assert_eq!(path, &channel_dir);
            assert_eq!(source.kind(), std::io::ErrorKind::NotADirectory);
        }
        other => panic!("unexpected error: {other:?}"),
    }
    assert!(
        err.to_string().contains(&channel_dir.display().to_string()),
        "{err}"
    );
    assert_eq!(w.current_path(), None);

    // The same writer recovers once the way is clear.
    fs::remove_file(&blocker)?;
    let path = w.write_block(&data, 5)?.opened.ok_or("file")?;
    w.close()?;
    assert_eq!(read_all(&path)?, values);
    Ok(())
}

/// Polls `cond` every few milliseconds, failing after 10 s.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The archive task over a fresh writer into `dir` with `codec`, no
/// rotation and `capacity` queue slots, and the counters it updates.
fn spawn_task(
    dir: &Path,
    codec: Codec,
    capacity: usize,
) -> (archive::ArchiveHandle, Arc<ChannelCounters>) {
    let counters = Arc::new(ChannelCounters::default());
    let handle = archive::spawn(
        writer(dir, codec, no_rotation(), None),
        Arc::clone(&counters),
        capacity,
    );
    (handle, counters)
}

fn block(data: Vec<u8>, count: u64) -> Block {
    Block { data, count }
}

#[tokio::test]
async fn close_writes_every_queued_block() -> TestResult {
    let schema = schema();
    let tmp = tempfile::tempdir()?;
    let (handle, counters) = spawn_task(tmp.path(), Codec::Zstandard, 64);
    let mut expected = Vec::new();
    for b in 0..50 {
        let (values, data) = records(&schema, b * 20, 20);
        assert!(
            handle.try_send(Block { data, count: 20 }).is_ok(),
            "block {b} queued"
        );
        expected.extend(values);
    }
    handle.close().await;

    let files = avro_files(&tmp.path().join("ch"))?;
    assert_eq!(files.len(), 1);
    assert_eq!(read_all(&files[0])?, expected);
    let stats = counters.snapshot();
    assert_eq!(stats.archive_files, 1);
    assert_eq!(stats.archive_bytes, fs::metadata(&files[0])?.len());
    assert_eq!((stats.archive_errors, stats.archive_dropped), (0, 0));
    Ok(())
}

#[tokio::test]
async fn a_full_queue_hands_the_block_back() -> TestResult {
    let schema = schema();
    let tmp = tempfile::tempdir()?;
    let (handle, counters) = spawn_task(tmp.path(), Codec::Null, 2);
    // On this current-thread runtime the task cannot run before we await,
    // so the queue fills deterministically.
    let (v1, d1) = records(&schema, 0, 3);
    let (v2, d2) = records(&schema, 3, 3);
    let (_, d3) = records(&schema, 6, 3);
    assert!(handle.try_send(block(d1, 3)).is_ok());
    assert!(handle.try_send(block(d2, 3)).is_ok());
    let back = handle
        .try_send(block(d3.clone(), 3))
        .expect_err("queue full");
    assert_eq!(back, block(d3, 3));
    handle.close().await;

    let files = avro_files(&tmp.path().join("ch"))?;
    assert_eq!(read_all(&files[0])?, [v1, v2].concat());
    // Counting a refused block is the caller's job.
    assert_eq!(counters.snapshot().archive_dropped, 0);
    Ok(())
}

#[tokio::test]
async fn reconfigure_is_applied_in_order_with_blocks() -> TestResult {
    let schema = schema();
    let tmp = tempfile::tempdir()?;
    let (handle, counters) = spawn_task(tmp.path(), Codec::Null, 16);
    let (v1, d1) = records(&schema, 0, 10);
    let (v2, d2) = records(&schema, 10, 10);
    let (v3, d3) = records(&schema, 20, 10);
    assert!(handle.try_send(block(d1, 10)).is_ok());
    // Rotation applies from the next block; the codec from the next file.
    handle.reconfigure(settings(Codec::Deflate), size_rotation(1), None);
    assert!(handle.try_send(block(d2, 10)).is_ok());
    assert!(handle.try_send(block(d3, 10)).is_ok());
    handle.close().await;

    let files = avro_files(&tmp.path().join("ch"))?;
    assert_eq!(files.len(), 2);
    assert_eq!(header_metadata(&files[0])?["avro.codec"], b"null");
    assert_eq!(read_all(&files[0])?, [v1, v2].concat());
    assert_eq!(header_metadata(&files[1])?["avro.codec"], b"deflate");
    assert_eq!(read_all(&files[1])?, v3);
    assert_eq!(counters.snapshot().archive_files, 2);
    Ok(())
}

#[tokio::test]
async fn a_broken_directory_is_counted_backed_off_and_recovered_from() -> TestResult {
    let schema = schema();
    let tmp = tempfile::tempdir()?;
    let blocker = tmp.path().join("blocker");
    fs::write(&blocker, "not a directory")?;
    let channel_dir = blocker.join("ch");
    let counters = Arc::new(ChannelCounters::default());
    let w = ArchiveWriter::new(
        channel_dir.clone(),
        "ch",
        SCHEMA,
        settings(Codec::Null),
        no_rotation(),
        None,
    );
    let handle = archive::spawn(w, Arc::clone(&counters), 32);

    // A failed block: counted as an error, its records as dropped, and the
    // error text names the directory.
    let (_, d1) = records(&schema, 0, 10);
    assert!(handle.try_send(block(d1, 10)).is_ok());
    wait_for("the first error", || {
        counters.archive_errors.load(Relaxed) == 1
    })
    .await;
    assert_eq!(counters.archive_dropped.load(Relaxed), 10);
    let text = counters.archive_error().ok_or("archive error set")?;
    assert!(text.contains(&channel_dir.display().to_string()), "{text}");

    // A burst while broken, queued before the task runs again (this is a
    // current-thread runtime): one failed attempt, not one per block. The
    // rest arrive before the 100 ms backoff deadline and are dropped.
    let mut burst = 0;
    for b in 0..20 {
        let (_, data) = records(&schema, 10 + b * 5, 5);
        assert!(handle.try_send(Block { data, count: 5 }).is_ok());
        burst += 5;
    }
    wait_for("the burst dropped", || {
        counters.archive_dropped.load(Relaxed) == 10 + burst
    })
    .await;
    assert_eq!(counters.archive_errors.load(Relaxed), 1, "no retry storm");
    assert_eq!(counters.archive_files.load(Relaxed), 0);

    // Clear the way; blocks keep coming. Those before the backoff deadline
    // are dropped, then one opens a file and the error clears.
    fs::remove_file(&blocker)?;
    let mut sent = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while counters.archive_files.load(Relaxed) == 0 {
        assert!(Instant::now() < deadline, "never recovered");
        let (values, data) = records(&schema, 100 + sent.len() * 3, 3);
        assert!(handle.try_send(Block { data, count: 3 }).is_ok());
        sent.push(values);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for("the error cleared", || counters.archive_error().is_none()).await;
    handle.close().await;

    let stats = counters.snapshot();
    assert!(stats.archive_errors >= 1);
    let files = avro_files(&channel_dir)?;
    assert_eq!(files.len(), 1);
    let got = read_all(&files[0])?;
    // The file holds the blocks from the first one written on; everything
    // before it was dropped, and counted.
    let first_written = (0..sent.len())
        .find(|&k| sent[k..].concat() == got)
        .ok_or("the file is not a suffix of what was sent")?;
    assert!(first_written < sent.len());
    assert_eq!(stats.archive_dropped, 10 + burst + 3 * first_written as u64);
    assert_eq!(stats.archive_bytes, fs::metadata(&files[0])?.len());
    Ok(())
}
