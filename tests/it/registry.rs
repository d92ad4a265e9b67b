//! The channel registry against real redb files in temporary directories:
//! round trips, persistence across reopen, uniqueness, tombstones and
//! seeding, and how it fails on a locked, foreign, corrupt or newer file.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableDefinition};
use serde_json::json;
use speedrelay::registry::{
    CURRENT_VERSION, ChannelRecord, DUMP_FORMAT, ImportReport, Registry, RegistryDump,
    RegistryError,
};
use tempfile::TempDir;

const SCHEMA: &str = r#"{"type":"record","name":"T","fields":[{"name":"time","type":"long"}]}"#;

fn rec(name: &str, port: u16) -> ChannelRecord {
    ChannelRecord {
        name: name.to_owned(),
        port,
        schema_json: SCHEMA.to_owned(),
        schema_path: Some(format!("agents/{name}.avsc")),
        config: json!({ "decimation": { "factor": 10 } }),
        created_at: 1_700_000_000_000,
    }
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("registry.redb")
}

fn open(dir: &TempDir) -> Registry {
    Registry::open(&db_path(dir)).expect("open registry")
}

fn names(records: &[ChannelRecord]) -> Vec<&str> {
    records.iter().map(|r| r.name.as_str()).collect()
}

/// Everything a failed operation must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    list: Vec<ChannelRecord>,
    owners: Vec<Option<String>>,
}

fn snapshot(reg: &Registry, ports: &[u16]) -> Snapshot {
    Snapshot {
        list: reg.list().expect("list"),
        owners: ports
            .iter()
            .map(|&p| reg.port_owner(p).expect("port_owner"))
            .collect(),
    }
}

fn assert_names_path(err: &RegistryError, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message should name {}: {msg}",
        path.display()
    );
}

/// One registry shared by threads writing at once: every insert is kept,
/// and of two threads racing for one port exactly one wins.
#[test]
fn one_registry_is_shared_by_threads_writing_at_once() {
    let dir = TempDir::new().unwrap();
    let reg = std::sync::Arc::new(open(&dir));
    let threads: Vec<_> = (0..8u16)
        .map(|t| {
            let reg = reg.clone();
            std::thread::spawn(move || {
                for i in 0..10u16 {
                    reg.insert(&rec(&format!("t{t}c{i}"), 27000 + t * 10 + i))
                        .unwrap();
                }
                reg.insert(&rec(&format!("race{t}"), 26999)).is_ok()
            })
        })
        .collect();
    let wins = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|won| *won)
        .count();
    assert_eq!(wins, 1, "one owner for port 26999");
    assert_eq!(reg.len().unwrap(), 81);
    for t in 0..8u16 {
        for i in 0..10u16 {
            let name = format!("t{t}c{i}");
            assert_eq!(
                reg.get(&name).unwrap(),
                Some(rec(&name, 27000 + t * 10 + i))
            );
        }
    }
}

#[test]
fn open_creates_parent_dirs_and_sets_current_version() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("a/b/registry.redb");
    let reg = Registry::open(&path).unwrap();
    assert_eq!(reg.path(), path);
    assert!(path.exists());
    assert_eq!(reg.schema_version().unwrap(), CURRENT_VERSION);
    assert!(reg.is_empty().unwrap());
    drop(reg);
    let reg = Registry::open(&path).unwrap();
    assert_eq!(reg.schema_version().unwrap(), CURRENT_VERSION);
}

#[test]
fn insert_get_list_round_trip_sorted() {
    let dir = TempDir::new().unwrap();
    let reg = open(&dir);
    for (name, port) in [("gamma", 26002), ("alpha", 26000), ("Beta", 26001)] {
        reg.insert(&rec(name, port)).unwrap();
    }
    let mut inline = rec("delta", 26003);
    inline.schema_path = None;
    inline.config = json!({});
    reg.insert(&inline).unwrap();

    assert_eq!(reg.get("alpha").unwrap(), Some(rec("alpha", 26000)));
    assert_eq!(reg.get("delta").unwrap(), Some(inline));
    assert_eq!(reg.get("nope").unwrap(), None);
    // Byte order: upper case sorts before lower case.
    assert_eq!(
        names(&reg.list().unwrap()),
        ["Beta", "alpha", "delta", "gamma"]
    );
    assert_eq!(reg.len().unwrap(), 4);
    assert!(!reg.is_empty().unwrap());
    assert_eq!(reg.port_owner(26002).unwrap().as_deref(), Some("gamma"));
    assert_eq!(reg.port_owner(26999).unwrap(), None);
}

#[test]
fn everything_persists_across_reopen() {
    let dir = TempDir::new().unwrap();
    let before = {
        let reg = open(&dir);
        reg.insert(&rec("a", 26000)).unwrap();
        reg.insert(&rec("b", 26001)).unwrap();
        reg.insert(&rec("c", 26002)).unwrap();
        reg.update_config("b", json!({ "validate": false }))
            .unwrap();
        reg.remove("c").unwrap();
        snapshot(&reg, &[26000, 26001, 26002])
    };
    let reg = open(&dir);
    assert_eq!(snapshot(&reg, &[26000, 26001, 26002]), before);
    assert_eq!(names(&before.list), ["a", "b"]);
    assert_eq!(
        reg.get("b").unwrap().unwrap().config,
        json!({ "validate": false })
    );
    // The tombstone persisted too.
    let report = reg.seed(&[rec("c", 26002)]).unwrap();
    assert_eq!(report.deleted_by_api, ["c"]);
}

#[test]
fn name_taken_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let reg = open(&dir);
    reg.insert(&rec("a", 26000)).unwrap();
    let before = snapshot(&reg, &[26000, 26001]);

    let err = reg.insert(&rec("a", 26001)).unwrap_err();
    assert_eq!(err, RegistryError::NameTaken { name: "a".into() });
    assert_eq!(snapshot(&reg, &[26000, 26001]), before);
    assert_eq!(reg.get("a").unwrap(), Some(rec("a", 26000)));
}

#[test]
fn port_taken_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let reg = open(&dir);
    reg.insert(&rec("a", 26000)).unwrap();
    let before = snapshot(&reg, &[26000]);

    let err = reg.insert(&rec("b", 26000)).unwrap_err();
    assert_eq!(
        err,
        RegistryError::PortTaken {
            port: 26000,
            used_by: "a".into()
        }
    );
    assert!(err.to_string().contains("'a'"), "{err}");
    assert_eq!(snapshot(&reg, &[26000]), before);
    assert_eq!(reg.get("b").unwrap(), None);
    // Still true after reopen: the failed insert never reached the file.
    drop(reg);
    let reg = open(&dir);
    assert_eq!(snapshot(&reg, &[26000]), before);
}

#[test]
fn remove_returns_record_and_frees_port() {
    let dir = TempDir::new().unwrap();
    let reg = open(&dir);
    reg.insert(&rec("a", 26000)).unwrap();
    reg.insert(&rec("keep", 26001)).unwrap();

    assert_eq!(reg.remove("a").unwrap(), rec("a", 26000));
    assert_eq!(reg.get("a").unwrap(), None);
    assert_eq!(reg.port_owner(26000).unwrap(), None);
    assert_eq!(names(&reg.list().unwrap()), ["keep"]);

    reg.insert(&rec("b", 26000)).unwrap();
    assert_eq!(reg.port_owner(26000).unwrap().as_deref(), Some("b"));

    for name in ["a", "never"] {
        assert_eq!(
            reg.remove(name).unwrap_err(),
            RegistryError::NotFound { name: name.into() }
        );
    }
    assert_eq!(names(&reg.list().unwrap()), ["b", "keep"]);
}

#[test]
fn update_config_persists_and_keeps_the_rest() {
    let dir = TempDir::new().unwrap();
    {
        let reg = open(&dir);
        reg.insert(&rec("a", 26000)).unwrap();
        let new = json!({ "decimation": { "factor": 5, "algorithm": "rms" } });
        let updated = reg.update_config("a", new.clone()).unwrap();
        let expected = ChannelRecord {
            config: new,
            ..rec("a", 26000)
        };
        assert_eq!(updated, expected);
        assert_eq!(reg.get("a").unwrap(), Some(expected));
        assert_eq!(
            reg.update_config("nope", json!({})).unwrap_err(),
            RegistryError::NotFound {
                name: "nope".into()
            }
        );
        assert_eq!(reg.len().unwrap(), 1);
    }
    let reg = open(&dir);
    assert_eq!(
        reg.get("a").unwrap().unwrap().config,
        json!({ "decimation": { "factor": 5, "algorithm": "rms" } })
    );
}

#[test]
fn seed_inserts_new_names_and_never_updates_existing_rows() {
    let dir = TempDir::new().unwrap();
    let reg = open(&dir);
    reg.insert(&rec("known", 26000)).unwrap();

    // The baseline's idea of `known` differs in every field.
    let mut changed = rec("known", 26500);
    changed.schema_json = "\"long\"".into();
    changed.config = json!({ "validate": false });
    let report = reg
        .seed(&[changed, rec("new1", 26001), rec("new2", 26002)])
        .unwrap();
    assert_eq!(report.inserted, ["new1", "new2"]);
    assert_eq!(report.already_known, ["known"]);
    assert!(report.deleted_by_api.is_empty());
    assert!(report.conflicts.is_empty());

    assert_eq!(reg.get("known").unwrap(), Some(rec("known", 26000)));
    assert_eq!(reg.port_owner(26500).unwrap(), None);
    assert_eq!(reg.get("new2").unwrap(), Some(rec("new2", 26002)));
    assert_eq!(reg.port_owner(26001).unwrap().as_deref(), Some("new1"));
}

#[test]
fn seed_does_not_resurrect_a_channel_deleted_through_the_api() {
    let dir = TempDir::new().unwrap();
    let baseline = [rec("a", 26000), rec("b", 26001)];
    {
        let reg = open(&dir);
        assert_eq!(reg.seed(&baseline).unwrap().inserted, ["a", "b"]);
        reg.remove("a").unwrap();
        let report = reg.seed(&baseline).unwrap();
        assert_eq!(report.deleted_by_api, ["a"]);
        assert_eq!(report.already_known, ["b"]);
        assert!(report.inserted.is_empty());
        assert_eq!(reg.get("a").unwrap(), None);
    }
    // Start-up after a restart: still deleted.
    let reg = open(&dir);
    let report = reg.seed(&baseline).unwrap();
    assert_eq!(report.deleted_by_api, ["a"]);
    assert_eq!(names(&reg.list().unwrap()), ["b"]);
    assert_eq!(reg.port_owner(26000).unwrap(), None);
}

#[test]
fn reinserting_a_deleted_name_clears_its_tombstone() {
    let dir = TempDir::new().unwrap();
    let reg = open(&dir);
    reg.insert(&rec("a", 26000)).unwrap();
    reg.remove("a").unwrap();

    // Re-registered through the API, on another port.
    reg.insert(&rec("a", 26005)).unwrap();
    let report = reg.seed(&[rec("a", 26000)]).unwrap();
    assert_eq!(report.already_known, ["a"]);
    assert!(report.deleted_by_api.is_empty());
    assert_eq!(reg.get("a").unwrap(), Some(rec("a", 26005)));

    // Removing it again tombstones it again.
    reg.remove("a").unwrap();
    drop(reg);
    let reg = open(&dir);
    assert_eq!(reg.seed(&[rec("a", 26000)]).unwrap().deleted_by_api, ["a"]);
    assert!(reg.is_empty().unwrap());
}

#[test]
fn seed_reports_port_conflicts_and_inserts_the_rest() {
    let dir = TempDir::new().unwrap();
    let reg = open(&dir);
    reg.insert(&rec("api_made", 26000)).unwrap();

    let report = reg
        .seed(&[
            rec("x", 26001),
            rec("clash", 26000),
            // Two baseline entries on one port: the first wins.
            rec("y", 26002),
            rec("y_twin", 26002),
        ])
        .unwrap();
    assert_eq!(report.inserted, ["x", "y"]);
    assert_eq!(
        report.conflicts,
        [
            (
                "clash".to_owned(),
                RegistryError::PortTaken {
                    port: 26000,
                    used_by: "api_made".into()
                }
            ),
            (
                "y_twin".to_owned(),
                RegistryError::PortTaken {
                    port: 26002,
                    used_by: "y".into()
                }
            ),
        ]
    );
    assert_eq!(reg.get("clash").unwrap(), None);
    assert_eq!(reg.port_owner(26000).unwrap().as_deref(), Some("api_made"));
    assert_eq!(names(&reg.list().unwrap()), ["api_made", "x", "y"]);
}

#[test]
fn seeding_twice_is_idempotent() {
    let dir = TempDir::new().unwrap();
    let reg = open(&dir);
    let baseline = [rec("a", 26000), rec("b", 26001)];
    let first = reg.seed(&baseline).unwrap();
    assert_eq!(first.inserted, ["a", "b"]);
    let after_first = snapshot(&reg, &[26000, 26001]);

    let second = reg.seed(&baseline).unwrap();
    assert!(second.inserted.is_empty());
    assert_eq!(second.already_known, ["a", "b"]);
    assert!(second.conflicts.is_empty());
    assert_eq!(snapshot(&reg, &[26000, 26001]), after_first);
}

#[test]
fn second_open_of_the_same_file_is_locked() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let first = Registry::open(&path).unwrap();
    first.insert(&rec("a", 26000)).unwrap();

    let err = Registry::open(&path).unwrap_err();
    assert_eq!(err, RegistryError::Locked { path: path.clone() });
    assert_names_path(&err, &path);
    assert!(err.to_string().contains("already open"), "{err}");
    // The refused open disturbed nothing.
    assert_eq!(first.get("a").unwrap(), Some(rec("a", 26000)));

    drop(first);
    let again = Registry::open(&path).unwrap();
    assert_eq!(again.len().unwrap(), 1);
}

/// Set in the child process of `locked_from_another_process`: the path of
/// the registry its parent holds open.
const CHILD_ENV: &str = "SPEEDRELAY_TEST_REGISTRY_HELD_OPEN";

#[test]
fn locked_from_another_process() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let _held = Registry::open(&path).unwrap();
    // Re-run this test binary, selecting only the child half below.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "registry::child_open_of_a_held_registry",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}");
    assert!(stdout.contains("child saw Locked"), "{stdout}");
}

/// The child half of `locked_from_another_process`, which runs it in a
/// process of its own; not a test by itself, so ignored in a normal run.
#[test]
#[ignore = "run by locked_from_another_process in a child process"]
fn child_open_of_a_held_registry() {
    let path = std::env::var_os(CHILD_ENV)
        .expect("run by locked_from_another_process, which names the registry it holds");
    let path = PathBuf::from(path);
    let err = Registry::open(&path).unwrap_err();
    assert_eq!(err, RegistryError::Locked { path: path.clone() });
    assert_names_path(&err, &path);
    println!("child saw Locked");
}

#[test]
fn a_file_of_random_bytes_is_reported_not_panicked_on() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    // A fixed pseudo-random fill (xorshift), large enough to look like pages.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&path, &bytes).unwrap();

    let err = Registry::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Corrupt { .. } | RegistryError::Storage { .. }
        ),
        "{err:?}"
    );
    assert_names_path(&err, &path);
    // Left as it was: the registry never overwrites what it cannot read.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn a_redb_file_that_is_not_a_registry_is_corrupt() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    {
        // Someone else's database: a `meta` table with other types.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: TableDefinition<u64, u64> = TableDefinition::new("meta");
            txn.open_table(def).unwrap().insert(1, 2).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Registry::open(&path).unwrap_err();
    assert!(matches!(err, RegistryError::Corrupt { .. }), "{err:?}");
    assert_names_path(&err, &path);
}

#[test]
fn damaged_pages_are_reported_as_corrupt() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    {
        let reg = Registry::open(&path).unwrap();
        for i in 0..50u16 {
            reg.insert(&rec(&format!("c{i}"), 26000 + i)).unwrap();
        }
    }
    // Keep redb's header page, scramble everything after it: the integrity
    // check on open must catch it before any read trusts a damaged page.
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[4096..] {
        *b ^= 0x5A;
    }
    std::fs::write(&path, &bytes).unwrap();

    let err = Registry::open(&path).unwrap_err();
    assert!(matches!(err, RegistryError::Corrupt { .. }), "{err:?}");
    assert_names_path(&err, &path);
}

const META: TableDefinition<&str, u32> = TableDefinition::new("meta");

fn stored_version(path: &Path) -> Option<u32> {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    meta.get("schema_version").unwrap().map(|v| v.value())
}

#[test]
fn a_file_from_a_newer_speedrelay_is_refused_and_left_alone() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    {
        let reg = Registry::open(&path).unwrap();
        reg.insert(&rec("a", 26000)).unwrap();
    }
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", CURRENT_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }

    let err = Registry::open(&path).unwrap_err();
    assert_eq!(
        err,
        RegistryError::TooNew {
            path: path.clone(),
            found: CURRENT_VERSION + 1,
            supported: CURRENT_VERSION
        }
    );
    assert_names_path(&err, &path);
    assert_eq!(stored_version(&path), Some(CURRENT_VERSION + 1));
}

#[test]
fn an_empty_redb_file_is_migrated_from_version_zero() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    drop(Database::create(&path).unwrap());
    assert!(std::fs::metadata(&path).unwrap().len() > 0);

    let reg = Registry::open(&path).unwrap();
    assert_eq!(reg.schema_version().unwrap(), CURRENT_VERSION);
    assert!(reg.list().unwrap().is_empty());
    assert_eq!(reg.port_owner(26000).unwrap(), None);
    reg.insert(&rec("a", 26000)).unwrap();
    drop(reg);
    assert_eq!(stored_version(&path), Some(CURRENT_VERSION));
}

#[test]
fn a_thousand_channels() {
    let dir = TempDir::new().unwrap();
    let reg = open(&dir);
    for i in 0..1000u16 {
        reg.insert(&rec(&format!("ch{i:04}"), 26000 + i)).unwrap();
    }
    let list = reg.list().unwrap();
    assert_eq!(list.len(), 1000);
    assert_eq!(reg.len().unwrap(), 1000);
    assert!(list.windows(2).all(|w| w[0].name < w[1].name));
    assert_eq!(list[999], rec("ch0999", 26999));
}

#[test]
fn a_file_is_copied_before_its_migration_and_the_copy_is_the_old_file() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    // A version-0 file: a redb database some older build left, with a
    // table of its own that the migration must not lose.
    const OLD: TableDefinition<&str, u32> = TableDefinition::new("old");
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(OLD).unwrap().insert("kept", 7).unwrap();
        txn.commit().unwrap();
    }

    let reg = Registry::open(&path).unwrap();
    assert_eq!(reg.schema_version().unwrap(), CURRENT_VERSION);
    reg.insert(&rec("a", 26000)).unwrap();
    drop(reg);

    let backup = Registry::backup_path(&path, 0);
    assert_eq!(
        backup,
        dir.path().join("registry.redb.v0.bak"),
        "beside the file, named by the version it had"
    );
    // The copy is the file as it was (redb rewrites header bytes on open,
    // so compare contents): rolling back is putting the copy back.
    let db = Database::open(&backup).unwrap();
    let txn = db.begin_read().unwrap();
    assert_eq!(
        txn.open_table(OLD)
            .unwrap()
            .get("kept")
            .unwrap()
            .unwrap()
            .value(),
        7
    );
    assert!(
        txn.open_table(META).is_err(),
        "the copy was taken before the migration"
    );
}

#[test]
fn no_copy_of_a_new_or_current_file() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    drop(Registry::open(&path).unwrap());
    drop(Registry::open(&path).unwrap());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["registry.redb"]);
}

#[test]
fn export_then_import_gives_the_same_registry_tombstones_included() {
    let dir = TempDir::new().unwrap();
    let reg = open(&dir);
    reg.insert(&rec("a", 26000)).unwrap();
    reg.insert(&rec("b", 26001)).unwrap();
    reg.insert(&rec("gone", 26002)).unwrap();
    reg.remove("gone").unwrap();
    let dump = reg.export().unwrap();
    assert_eq!(dump.format, DUMP_FORMAT);
    assert_eq!(dump.schema_version, CURRENT_VERSION);
    assert_eq!(names(&dump.channels), ["a", "b"]);
    assert_eq!(dump.deleted.keys().collect::<Vec<_>>(), ["gone"]);
    // Through JSON, as the CLI writes it.
    let text = serde_json::to_string_pretty(&dump).unwrap();
    let back: RegistryDump = serde_json::from_str(&text).unwrap();
    assert_eq!(back, dump);

    let other = TempDir::new().unwrap();
    let fresh = open(&other);
    assert_eq!(
        fresh.import(&back).unwrap(),
        ImportReport {
            channels: 2,
            tombstones: 1
        }
    );
    assert_eq!(fresh.export().unwrap(), dump);
    assert_eq!(fresh.port_owner(26001).unwrap().as_deref(), Some("b"));
    // The tombstone works: a seed does not bring the deleted channel back.
    let seeded = fresh.seed(&[rec("gone", 26002)]).unwrap();
    assert_eq!(seeded.deleted_by_api, ["gone"]);
}

#[test]
fn an_import_that_clashes_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let reg = open(&dir);
    reg.insert(&rec("held", 26005)).unwrap();
    let before = snapshot(&reg, &[26000, 26001, 26005]);
    let mut tombstones = std::collections::BTreeMap::new();
    tombstones.insert("old".to_owned(), 1);
    let dump = |channels: Vec<ChannelRecord>| RegistryDump {
        format: DUMP_FORMAT.to_owned(),
        schema_version: CURRENT_VERSION,
        channels,
        deleted: tombstones.clone(),
    };
    // The clash comes last, so the first channel was already written in the
    // transaction that is thrown away.
    for (channels, expected) in [
        (
            vec![rec("new", 26000), rec("held", 26001)],
            RegistryError::NameTaken {
                name: "held".into(),
            },
        ),
        (
            vec![rec("new", 26000), rec("other", 26005)],
            RegistryError::PortTaken {
                port: 26005,
                used_by: "held".into(),
            },
        ),
        (
            vec![rec("new", 26000), rec("twice", 26000)],
            RegistryError::PortTaken {
                port: 26000,
                used_by: "new".into(),
            },
        ),
    ] {
        assert_eq!(reg.import(&dump(channels)).unwrap_err(), expected);
        assert_eq!(snapshot(&reg, &[26000, 26001, 26005]), before);
        assert!(
            reg.export().unwrap().deleted.is_empty(),
            "no tombstone written"
        );
    }
}
