//! The channel registry (SPEC §6): the redb file, by default
//! `<data_dir>/registry.redb`, that holds every channel registration so that
//! a restart brings back exactly the channels that were running.
//!
//! It owns four tables and nothing else:
//! - `channels`: name → the [`ChannelRecord`] as JSON, schema text included,
//!   so a restart needs no schema file;
//! - `ports`: port → name, so "is this port taken, and by whom" is one lookup
//!   and port uniqueness is checked in the same transaction as the insert;
//! - `deleted`: name → unix ms, a tombstone for each channel deleted through
//!   the API, so that seeding from `relay.yaml` does not bring it back;
//! - `meta`: `schema_version`, driving the forward-only migration that
//!   [`Registry::open`] runs at every start.
//!
//! Every change is one durable write transaction (redb's default
//! `Durability::Immediate`): when a method returns `Ok`, the change is on
//! disk; when it returns `Err`, nothing changed. Binding sockets and starting
//! tasks is the engine's business; the registry only answers whether a name
//! and a port are free and records the outcome.
//!
//! Calls block on disk I/O (a write waits for an fsync, about a millisecond
//! on an SSD, more on an SD card), and redb runs one write transaction at a
//! time, so async callers should use `tokio::task::spawn_blocking`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

/// The schema version this build writes. Bump it together with a new entry
/// in [`MIGRATIONS`]; the array's length makes forgetting one a compile error.
pub const CURRENT_VERSION: u32 = 1;

const CHANNELS: TableDefinition<&str, &[u8]> = TableDefinition::new("channels");
const PORTS: TableDefinition<u16, &str> = TableDefinition::new("ports");
const DELETED: TableDefinition<&str, u64> = TableDefinition::new("deleted");
const META: TableDefinition<&str, u32> = TableDefinition::new("meta");
const VERSION_KEY: &str = "schema_version";

/// The registry holds kilobytes to a few MiB; redb's default cache (1 GiB)
/// is sized for real databases and would be a poor neighbour on a Raspberry Pi.
const CACHE_BYTES: usize = 8 << 20;

/// One migration step, run inside the start-up write transaction.
type Step = fn(&WriteTransaction) -> Result<(), redb::Error>;

/// `MIGRATIONS[v]` takes a file from version `v` to `v + 1`. Steps are never
/// edited once released: a file at version `v` has run exactly steps `0..v`.
const MIGRATIONS: [Step; CURRENT_VERSION as usize] = [v0_create_tables];

/// 0 → 1: a new (or pre-registry) file gets the four tables.
fn v0_create_tables(txn: &WriteTransaction) -> Result<(), redb::Error> {
    // `open_table` in a write transaction creates the table if it is missing.
    txn.open_table(CHANNELS)?;
    txn.open_table(PORTS)?;
    txn.open_table(DELETED)?;
    txn.open_table(META)?;
    Ok(())
}

/// One registered channel as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelRecord {
    pub name: String,
    pub port: u16,
    /// The Avro schema as JSON text (stored, so a restart needs no schema file).
    pub schema_json: String,
    /// Where it came from when registered by path; None for an inline schema.
    pub schema_path: Option<String>,
    /// The channel's settings overrides as given (JSON object), layered on the defaults by the engine.
    pub config: serde_json::Value,
    /// Unix time in milliseconds.
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("a channel named '{name}' is already registered")]
    NameTaken { name: String },
    #[error("port {port} is already used by channel '{used_by}'")]
    PortTaken { port: u16, used_by: String },
    #[error("no channel named '{name}'")]
    NotFound { name: String },
    /// Another process has the file open (redb's DatabaseAlreadyOpen).
    #[error(
        "registry {} is locked: it is already open, probably by another speedrelay using the \
         same data directory; only one process may use it at a time",
        path.display()
    )]
    Locked { path: PathBuf },
    /// Written by a newer speedrelay: refuse, never downgrade.
    #[error(
        "registry {} has schema version {found}, newer than version {supported} that this \
         speedrelay understands; refusing to open it rather than downgrade it (run a newer \
         speedrelay, or use another data directory)",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("registry {} is corrupt: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("registry {}: {detail}", path.display())]
    Storage { path: PathBuf, detail: String },
}

/// The `format` of every [`RegistryDump`]: tells a registry export from any
/// other JSON file.
pub const DUMP_FORMAT: &str = "speedrelay-registry";

/// A whole registry as one JSON document: what `speedrelay registry export`
/// writes and `registry import` reads back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryDump {
    /// Always [`DUMP_FORMAT`].
    pub format: String,
    /// The registry schema version of the speedrelay that wrote it.
    pub schema_version: u32,
    /// Every registered channel, sorted by name.
    pub channels: Vec<ChannelRecord>,
    /// Channels deleted through the API (name → unix ms), so that a seed
    /// does not bring them back after an import either.
    pub deleted: BTreeMap<String, u64>,
}

/// What [`Registry::import`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub channels: usize,
    pub tombstones: usize,
}

/// What [`Registry::seed`] did with each baseline channel, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// Unknown until now: inserted.
    pub inserted: Vec<String>,
    /// Already registered: left as it is, whatever the baseline says.
    pub already_known: Vec<String>,
    /// Deleted through the API: stays deleted.
    pub deleted_by_api: Vec<String>,
    /// Not inserted, with the reason (its port belongs to another channel).
    pub conflicts: Vec<(String, RegistryError)>,
}

/// The open registry file. `Send + Sync`: share it behind an `Arc`.
pub struct Registry {
    /// None only between closing a database that hit an I/O error and
    /// reopening it.
    db: RwLock<Option<Database>>,
    /// Set when redb reported an I/O error (a full disk, say): it then
    /// refuses every later operation until reopened, so the next operation
    /// reopens it and the registry recovers once the fault clears.
    broken: AtomicBool,
    /// Whether the file was found missing from `path` (its directory
    /// removed, say): the open database lives on in the deleted file, so
    /// the next write first writes every row to a new file at `path`.
    /// Checked before each write (one `stat`): acknowledged registrations
    /// must survive a restart.
    removed: AtomicBool,
    /// Kept for error messages: every error names the file.
    path: PathBuf,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Opens or creates the file (parent dir created), then runs the
    /// migration steps forward to [`CURRENT_VERSION`] in one write transaction.
    ///
    /// Before a migration changes a file that held data, the file is copied
    /// to [`Registry::backup_path`] (the database closed for the copy), so an
    /// upgrade can be rolled back by putting the copy back.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let existed = fs::metadata(path).is_ok_and(|m| m.len() > 0);
        let registry = Registry {
            db: RwLock::new(Some(open_database(path)?)),
            broken: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            path: path.to_path_buf(),
        };
        let found = registry.schema_version()?;
        if existed && found < CURRENT_VERSION {
            registry.keep_copy(found)?;
        }
        registry.migrate()?;
        Ok(registry)
    }

    /// Where [`Registry::open`] keeps the file as it was before migrating it
    /// from version `found`: `<file>.v<found>.bak` beside it.
    pub fn backup_path(path: &Path, found: u32) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".v{found}.bak"));
        PathBuf::from(name)
    }

    /// Copies the file to its backup path with the database closed (no
    /// transaction can be half-written into the copy), then reopens it.
    fn keep_copy(&self, found: u32) -> Result<(), RegistryError> {
        let backup = Self::backup_path(&self.path, found);
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        guard.take();
        let copied = fs::copy(&self.path, &backup);
        *guard = Some(open_database(&self.path)?);
        copied.map_err(|e| RegistryError::Storage {
            path: self.path.clone(),
            detail: format!(
                "cannot keep a copy at {} before migrating it: {e}",
                backup.display()
            ),
        })?;
        tracing::info!(path = %self.path.display(), backup = %backup.display(), from = found,
            "registry copied before its migration");
        Ok(())
    }

    /// Runs `f` on the database, reopening it first if an I/O error broke it.
    fn with_db<T>(
        &self,
        op: &str,
        f: impl FnOnce(&Database) -> Result<T, redb::Error>,
    ) -> Result<T, RegistryError> {
        if self.broken.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let Some(db) = guard.as_ref() else {
            return Err(RegistryError::Storage {
                path: self.path.clone(),
                detail: format!("{op}: closed after an I/O error; reopening failed"),
            });
        };
        f(db).map_err(|e| self.fault(e, op))
    }

    /// Converts a redb error, noting an I/O error for [`Registry::reopen`].
    fn fault(&self, e: redb::Error, op: &str) -> RegistryError {
        if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
            self.broken.store(true, Ordering::Release);
            tracing::warn!(path = %self.path.display(), op, error = %e,
                "registry I/O error; it is reopened at the next operation");
        }
        e.at_path(&self.path, op)
    }

    /// Closes the database (its handle holds the file lock) and opens it
    /// again; on failure it stays closed and the next operation retries.
    fn reopen(&self) -> Result<(), RegistryError> {
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        if !self.path.exists() {
            // Reopening would start an empty registry: keep the old one.
            return Err(RegistryError::Storage {
                path: self.path.clone(),
                detail: "the file was removed after an I/O error; restart to recover".into(),
            });
        }
        guard.take();
        *guard = Some(open_database(&self.path)?);
        self.broken.store(false, Ordering::Release);
        tracing::info!(path = %self.path.display(), "registry reopened after an I/O error");
        Ok(())
    }

    /// When the file is gone from `path`, writes every row of the open
    /// database to a new file there (built beside it, then renamed into
    /// place) and continues with that one.
    fn rewrite_if_removed(&self) -> Result<(), RegistryError> {
        if self.path.exists() && !self.removed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.removed.store(true, Ordering::Release);
        let op = "rewrite the removed file";
        tracing::warn!(path = %self.path.display(),
            "registry file was removed while open; writing it again from the open database");
        let storage = |detail: String| RegistryError::Storage {
            path: self.path.clone(),
            detail: format!("{op}: {detail}"),
        };
        let fresh = self.path.with_extension("redb.rewrite");
        let _ = fs::remove_file(&fresh);
        let new_db = open_database(&fresh)?;
        let old = self.with_db(op, |db| db.begin_read().map_err(Into::into))?;
        let txn = new_db.begin_write().at(&self.path, op)?;
        macro_rules! copy_table {
            ($table:expr) => {{
                let from = old.open_table($table).at(&self.path, op)?;
                let mut to = txn.open_table($table).at(&self.path, op)?;
                for row in from.iter().at(&self.path, op)? {
                    let (k, v) = row.at(&self.path, op)?;
                    to.insert(k.value(), v.value()).at(&self.path, op)?;
                }
            }};
        }
        copy_table!(CHANNELS);
        copy_table!(PORTS);
        copy_table!(DELETED);
        copy_table!(META);
        txn.commit().at(&self.path, op)?;
        drop(old);
        fs::rename(&fresh, &self.path).map_err(|e| storage(format!("rename: {e}")))?;
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = Some(new_db);
        self.removed.store(false, Ordering::Release);
        tracing::info!(path = %self.path.display(), "registry file written again");
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version recorded in the file (0 for a file no step has run on).
    pub fn schema_version(&self) -> Result<u32, RegistryError> {
        let txn = self.with_db("read schema version", |db| {
            db.begin_read().map_err(Into::into)
        })?;
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(e.at_path(&self.path, "read schema version")),
        };
        let version = meta
            .get(VERSION_KEY)
            .at(&self.path, "read schema version")?;
        Ok(version.map_or(0, |v| v.value()))
    }

    /// Brings the file to [`CURRENT_VERSION`]. The version is read first in a
    /// read transaction so that a file that is current or too new is never
    /// written to.
    fn migrate(&self) -> Result<(), RegistryError> {
        let found = self.schema_version()?;
        if found > CURRENT_VERSION {
            return Err(self.too_new(found));
        }
        if found == CURRENT_VERSION {
            return Ok(());
        }
        self.write("migrate", |txn| {
            // Read again under the writer lock: the transaction is what counts.
            let from = {
                let meta = txn.open_table(META).at(&self.path, "migrate")?;
                let v = meta.get(VERSION_KEY).at(&self.path, "migrate")?;
                v.map_or(0, |v| v.value())
            };
            if from > CURRENT_VERSION {
                return Err(self.too_new(from));
            }
            for (v, step) in MIGRATIONS.iter().enumerate().skip(from as usize) {
                step(txn).at(&self.path, &format!("migration {v} -> {}", v + 1))?;
            }
            let mut meta = txn.open_table(META).at(&self.path, "migrate")?;
            meta.insert(VERSION_KEY, CURRENT_VERSION)
                .at(&self.path, "migrate")?;
            tracing::info!(
                path = %self.path.display(),
                from,
                to = CURRENT_VERSION,
                "registry schema migrated"
            );
            Ok(())
        })
    }

    /// One durable write transaction: checks name and port uniqueness and
    /// inserts; on any error nothing changes. Clears a tombstone of the same
    /// name (re-registering a deleted channel is allowed).
    pub fn insert(&self, record: &ChannelRecord) -> Result<(), RegistryError> {
        let bytes = self.encode(record)?;
        self.write("insert", |txn| {
            let mut channels = txn.open_table(CHANNELS).at(&self.path, "insert")?;
            let mut ports = txn.open_table(PORTS).at(&self.path, "insert")?;
            let mut deleted = txn.open_table(DELETED).at(&self.path, "insert")?;
            self.check_free(&channels, &ports, record)?;
            channels
                .insert(record.name.as_str(), bytes.as_slice())
                .at(&self.path, "insert")?;
            ports
                .insert(record.port, record.name.as_str())
                .at(&self.path, "insert")?;
            deleted
                .remove(record.name.as_str())
                .at(&self.path, "insert")?;
            Ok(())
        })
    }

    /// Writes a registration as the cluster registry holds it (insert or
    /// replace), in one transaction: the cluster has decided, so a local
    /// port entry of another channel is overwritten (that channel's own
    /// deletion follows in the cluster's order of changes).
    pub fn mirror_put(&self, record: &ChannelRecord) -> Result<(), RegistryError> {
        let bytes = self.encode(record)?;
        let op = "mirror";
        self.write(op, |txn| {
            let mut channels = txn.open_table(CHANNELS).at(&self.path, op)?;
            let mut ports = txn.open_table(PORTS).at(&self.path, op)?;
            let mut deleted = txn.open_table(DELETED).at(&self.path, op)?;
            let old_port = match channels.get(record.name.as_str()).at(&self.path, op)? {
                Some(old) => Some(self.decode(&record.name, old.value())?.port),
                None => None,
            };
            if let Some(old_port) = old_port.filter(|p| *p != record.port) {
                let owned = ports
                    .get(old_port)
                    .at(&self.path, op)?
                    .is_some_and(|o| o.value() == record.name);
                if owned {
                    ports.remove(old_port).at(&self.path, op)?;
                }
            }
            channels
                .insert(record.name.as_str(), bytes.as_slice())
                .at(&self.path, op)?;
            ports
                .insert(record.port, record.name.as_str())
                .at(&self.path, op)?;
            deleted.remove(record.name.as_str()).at(&self.path, op)?;
            Ok(())
        })
    }

    /// Replaces the config of an existing channel; returns the updated record.
    pub fn update_config(
        &self,
        name: &str,
        config: serde_json::Value,
    ) -> Result<ChannelRecord, RegistryError> {
        self.write("update config", |txn| {
            let mut channels = txn.open_table(CHANNELS).at(&self.path, "update config")?;
            let mut record = match channels.get(name).at(&self.path, "update config")? {
                Some(bytes) => self.decode(name, bytes.value())?,
                None => return Err(not_found(name)),
            };
            record.config = config;
            let bytes = self.encode(&record)?;
            channels
                .insert(name, bytes.as_slice())
                .at(&self.path, "update config")?;
            Ok(record)
        })
    }

    /// Deletes the row and its port entry and records a tombstone so seeding
    /// never brings it back. Returns the removed record.
    pub fn remove(&self, name: &str) -> Result<ChannelRecord, RegistryError> {
        self.write("remove", |txn| {
            let mut channels = txn.open_table(CHANNELS).at(&self.path, "remove")?;
            let mut ports = txn.open_table(PORTS).at(&self.path, "remove")?;
            let mut deleted = txn.open_table(DELETED).at(&self.path, "remove")?;
            let record = match channels.remove(name).at(&self.path, "remove")? {
                Some(bytes) => self.decode(name, bytes.value())?,
                None => return Err(not_found(name)),
            };
            // Only free the port if this channel holds it: never drop
            // another channel's claim, whatever the row said.
            let owned = ports
                .get(record.port)
                .at(&self.path, "remove")?
                .is_some_and(|owner| owner.value() == name);
            if owned {
                ports.remove(record.port).at(&self.path, "remove")?;
            }
            deleted.insert(name, now_ms()).at(&self.path, "remove")?;
            Ok(record)
        })
    }

    pub fn get(&self, name: &str) -> Result<Option<ChannelRecord>, RegistryError> {
        let txn = self.with_db("get", |db| db.begin_read().map_err(Into::into))?;
        let channels = txn.open_table(CHANNELS).at(&self.path, "get")?;
        let row = channels.get(name).at(&self.path, "get")?;
        row.map(|bytes| self.decode(name, bytes.value()))
            .transpose()
    }

    /// Every channel in one read transaction, sorted by name (redb orders
    /// `&str` keys by their bytes, which is `str`'s order).
    pub fn list(&self) -> Result<Vec<ChannelRecord>, RegistryError> {
        let txn = self.with_db("list", |db| db.begin_read().map_err(Into::into))?;
        let channels = txn.open_table(CHANNELS).at(&self.path, "list")?;
        let mut records = Vec::new();
        for row in channels.iter().at(&self.path, "list")? {
            let (name, bytes) = row.at(&self.path, "list")?;
            records.push(self.decode(name.value(), bytes.value())?);
        }
        Ok(records)
    }

    pub fn len(&self) -> Result<usize, RegistryError> {
        let txn = self.with_db("count", |db| db.begin_read().map_err(Into::into))?;
        let channels = txn.open_table(CHANNELS).at(&self.path, "count")?;
        let n = channels.len().at(&self.path, "count")?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    pub fn is_empty(&self) -> Result<bool, RegistryError> {
        Ok(self.len()? == 0)
    }

    /// The channel registered on `port`, if any.
    pub fn port_owner(&self, port: u16) -> Result<Option<String>, RegistryError> {
        let txn = self.with_db("port owner", |db| db.begin_read().map_err(Into::into))?;
        let ports = txn.open_table(PORTS).at(&self.path, "port owner")?;
        let owner = ports.get(port).at(&self.path, "port owner")?;
        Ok(owner.map(|o| o.value().to_owned()))
    }

    /// Start-up seeding from relay.yaml, in ONE write transaction: inserts
    /// each record whose name is neither known nor tombstoned; a port clash
    /// with another channel is reported in `conflicts` and that record
    /// skipped; never updates an existing row.
    pub fn seed(&self, baseline: &[ChannelRecord]) -> Result<SeedReport, RegistryError> {
        self.write("seed", |txn| {
            let mut channels = txn.open_table(CHANNELS).at(&self.path, "seed")?;
            let mut ports = txn.open_table(PORTS).at(&self.path, "seed")?;
            let deleted = txn.open_table(DELETED).at(&self.path, "seed")?;
            let mut report = SeedReport::default();
            for record in baseline {
                let name = record.name.as_str();
                if deleted.get(name).at(&self.path, "seed")?.is_some() {
                    report.deleted_by_api.push(record.name.clone());
                    continue;
                }
                match self.check_free(&channels, &ports, record) {
                    Ok(()) => {}
                    Err(RegistryError::NameTaken { .. }) => {
                        report.already_known.push(record.name.clone());
                        continue;
                    }
                    Err(e @ RegistryError::PortTaken { .. }) => {
                        report.conflicts.push((record.name.clone(), e));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                let bytes = self.encode(record)?;
                channels
                    .insert(name, bytes.as_slice())
                    .at(&self.path, "seed")?;
                ports.insert(record.port, name).at(&self.path, "seed")?;
                report.inserted.push(record.name.clone());
            }
            Ok(report)
        })
    }

    /// Every registration and tombstone, in one read transaction.
    pub fn export(&self) -> Result<RegistryDump, RegistryError> {
        let op = "export";
        let txn = self.with_db(op, |db| db.begin_read().map_err(Into::into))?;
        let channels = txn.open_table(CHANNELS).at(&self.path, op)?;
        let deleted = txn.open_table(DELETED).at(&self.path, op)?;
        let mut dump = RegistryDump {
            format: DUMP_FORMAT.to_owned(),
            schema_version: CURRENT_VERSION,
            channels: Vec::new(),
            deleted: BTreeMap::new(),
        };
        for row in channels.iter().at(&self.path, op)? {
            let (name, bytes) = row.at(&self.path, op)?;
            dump.channels
                .push(self.decode(name.value(), bytes.value())?);
        }
        for row in deleted.iter().at(&self.path, op)? {
            let (name, ms) = row.at(&self.path, op)?;
            dump.deleted.insert(name.value().to_owned(), ms.value());
        }
        Ok(dump)
    }

    /// Adds every channel and tombstone of `dump` in ONE write transaction:
    /// a name or port already taken (by the registry or earlier in the dump)
    /// fails the whole import and nothing is written. A tombstone for a name
    /// the import registers is dropped. The caller checks each record's
    /// contents (name, schema, settings) first, as the API does.
    pub fn import(&self, dump: &RegistryDump) -> Result<ImportReport, RegistryError> {
        let op = "import";
        self.write(op, |txn| {
            let mut channels = txn.open_table(CHANNELS).at(&self.path, op)?;
            let mut ports = txn.open_table(PORTS).at(&self.path, op)?;
            let mut deleted = txn.open_table(DELETED).at(&self.path, op)?;
            let mut report = ImportReport::default();
            for record in &dump.channels {
                self.check_free(&channels, &ports, record)?;
                let bytes = self.encode(record)?;
                let name = record.name.as_str();
                channels.insert(name, bytes.as_slice()).at(&self.path, op)?;
                ports.insert(record.port, name).at(&self.path, op)?;
                deleted.remove(name).at(&self.path, op)?;
                report.channels += 1;
            }
            for (name, ms) in &dump.deleted {
                if channels.get(name.as_str()).at(&self.path, op)?.is_none() {
                    deleted.insert(name.as_str(), *ms).at(&self.path, op)?;
                    report.tombstones += 1;
                }
            }
            Ok(report)
        })
    }

    /// `NameTaken` if the name is registered, else `PortTaken` if the port is.
    fn check_free(
        &self,
        channels: &impl ReadableTable<&'static str, &'static [u8]>,
        ports: &impl ReadableTable<u16, &'static str>,
        record: &ChannelRecord,
    ) -> Result<(), RegistryError> {
        if channels
            .get(record.name.as_str())
            .at(&self.path, "check name")?
            .is_some()
        {
            return Err(RegistryError::NameTaken {
                name: record.name.clone(),
            });
        }
        if let Some(owner) = ports.get(record.port).at(&self.path, "check port")? {
            return Err(RegistryError::PortTaken {
                port: record.port,
                used_by: owner.value().to_owned(),
            });
        }
        Ok(())
    }

    /// Runs `f` in a write transaction, committing if it returns `Ok` and
    /// aborting if it returns `Err`, so a failed operation leaves no trace.
    fn write<T>(
        &self,
        op: &str,
        f: impl FnOnce(&WriteTransaction) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        self.rewrite_if_removed()?;
        let txn = self.with_db(op, |db| db.begin_write().map_err(Into::into))?;
        match f(&txn) {
            Ok(value) => {
                txn.commit().map_err(|e| self.fault(e.into(), op))?;
                Ok(value)
            }
            Err(e) => {
                // Dropping would abort too, but silently; an abort that fails
                // is worth a line in the log next to the error we return.
                if let Err(abort) = txn.abort() {
                    tracing::warn!(path = %self.path.display(), op, "registry abort failed: {abort}");
                }
                Err(e)
            }
        }
    }

    fn encode(&self, record: &ChannelRecord) -> Result<Vec<u8>, RegistryError> {
        serde_json::to_vec(record).map_err(|e| RegistryError::Storage {
            path: self.path.clone(),
            detail: format!("cannot encode channel '{}': {e}", record.name),
        })
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<ChannelRecord, RegistryError> {
        let record: ChannelRecord =
            serde_json::from_slice(bytes).map_err(|e| RegistryError::Corrupt {
                path: self.path.clone(),
                detail: format!("channel '{key}': undecodable record: {e}"),
            })?;
        if record.name != key {
            return Err(RegistryError::Corrupt {
                path: self.path.clone(),
                detail: format!("row '{key}' holds channel '{}'", record.name),
            });
        }
        Ok(record)
    }

    fn too_new(&self, found: u32) -> RegistryError {
        RegistryError::TooNew {
            path: self.path.clone(),
            found,
            supported: CURRENT_VERSION,
        }
    }
}

fn not_found(name: &str) -> RegistryError {
    RegistryError::NotFound {
        name: name.to_owned(),
    }
}

/// Unix time in milliseconds; a clock before 1970 gives 0 rather than an error,
/// since a tombstone's time is informational.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Turns any redb error into a [`RegistryError`] naming the file and the
/// operation that failed.
trait AtPath {
    fn at_path(self, path: &Path, op: &str) -> RegistryError;
}

impl<E: Into<redb::Error>> AtPath for E {
    fn at_path(self, path: &Path, op: &str) -> RegistryError {
        use redb::Error as E;
        let path = path.to_path_buf();
        match self.into() {
            E::DatabaseAlreadyOpen | E::LockProtocolMismatch => RegistryError::Locked { path },
            E::Corrupted(msg) => RegistryError::Corrupt {
                path,
                detail: format!("{op}: {msg}"),
            },
            // redb reports a file that is not a redb database as InvalidData.
            E::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => RegistryError::Corrupt {
                path,
                detail: format!("{op}: {e}"),
            },
            // A redb file, but not laid out as ours: someone else's database.
            e @ (E::TableTypeMismatch { .. }
            | E::TypeDefinitionChanged { .. }
            | E::TableIsMultimap(_)
            | E::TableIsNotMultimap(_)
            | E::TableDoesNotExist(_)) => RegistryError::Corrupt {
                path,
                detail: format!("{op}: not a speedrelay registry: {e}"),
            },
            e => RegistryError::Storage {
                path,
                detail: format!("{op}: {e}"),
            },
        }
    }
}

/// Opens (or creates) the redb file.
/// Opens or creates the database file, creating it and its directory
/// first with private modes.
fn open_database(path: &Path) -> Result<Database, RegistryError> {
    create_private(path).map_err(|detail| RegistryError::Storage {
        path: path.to_path_buf(),
        detail,
    })?;
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        // A file damaged outside redb is then reported as Corrupted
        // instead of possibly panicking later; on a file this small the
        // check (which reads every page) costs next to nothing.
        .set_check_integrity_on_open(true)
        .create(path)
        .at(path, "open")
}

/// The file's directory (0750) and the file itself (0640), unless they
/// exist: redb would create the file with the umask's mode (usually 0644).
/// redb initialises an empty file; an existing file keeps its mode.
fn create_private(path: &Path) -> Result<(), String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(parent)
            .map_err(|e| format!("cannot create directory {}: {e}", parent.display()))?;
    }
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create {}: {e}", path.display())),
    }
}

/// `.at(path, op)` on a redb result.
trait At<T> {
    fn at(self, path: &Path, op: &str) -> Result<T, RegistryError>;
}

impl<T, E: Into<redb::Error>> At<T> for Result<T, E> {
    fn at(self, path: &Path, op: &str) -> Result<T, RegistryError> {
        self.map_err(|e| e.at_path(path, op))
    }
}
