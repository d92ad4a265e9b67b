//! `speedrelay registry export|import`: the registry of a stopped relay as
//! one JSON document, for backups, upgrades and moves to another host.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use speedrelay::engine::{check_record, registry_path};
use speedrelay::registry::{CURRENT_VERSION, DUMP_FORMAT, Registry, RegistryDump, RegistryError};

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Write every registration (schema and settings included) and every
    /// tombstone of the data directory's registry as JSON. The relay must
    /// be stopped: the registry is open in one process at a time.
    Export {
        /// Write to this file instead of standard output (written to a
        /// temporary file beside it, then renamed).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Add the registrations and tombstones of an export to the data
    /// directory's registry (created if missing), all or nothing: each
    /// channel gets the checks a registration through the API gets, and a
    /// name or port already taken refuses the whole import. The relay must
    /// be stopped.
    Import {
        /// A file written by `registry export` (`-` for standard input).
        file: PathBuf,
    },
}

/// Runs `command` on the registry of `data_dir`.
pub fn run(command: RegistryCommand, data_dir: &Path) -> Result<(), String> {
    let path = registry_path(data_dir).map_err(|e| e.to_string())?;
    match command {
        RegistryCommand::Export { output } => {
            if !path.exists() {
                return Err(format!(
                    "no registry at {} (check --data-dir or --config)",
                    path.display()
                ));
            }
            let dump = open(&path)?.export().map_err(|e| e.to_string())?;
            let mut json = serde_json::to_vec_pretty(&dump)
                .map_err(|e| format!("cannot encode the export: {e}"))?;
            json.push(b'\n');
            match output {
                Some(file) => write_atomically(&file, &json)?,
                None => std::io::stdout()
                    .write_all(&json)
                    .map_err(|e| format!("cannot write the export: {e}"))?,
            }
            eprintln!(
                "exported {} channel(s) and {} tombstone(s) from {}",
                dump.channels.len(),
                dump.deleted.len(),
                path.display()
            );
            Ok(())
        }
        RegistryCommand::Import { file } => {
            let dump = read_dump(&file)?;
            let registry = open(&path)?;
            let report = registry.import(&dump).map_err(|e| match e {
                e @ (RegistryError::NameTaken { .. } | RegistryError::PortTaken { .. }) => {
                    format!("{e}; nothing was imported")
                }
                e => e.to_string(),
            })?;
            eprintln!(
                "imported {} channel(s) and {} tombstone(s) into {}",
                report.channels,
                report.tombstones,
                path.display()
            );
            Ok(())
        }
    }
}

fn open(path: &Path) -> Result<Registry, String> {
    Registry::open(path).map_err(|e| match e {
        e @ RegistryError::Locked { .. } => format!("{e}; stop the relay first"),
        e => e.to_string(),
    })
}

/// Reads and checks a whole export before anything is written.
fn read_dump(file: &Path) -> Result<RegistryDump, String> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| format!("cannot read standard input: {e}"))?
    } else {
        fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?
    };
    let at = file.display();
    let dump: RegistryDump =
        serde_json::from_str(&text).map_err(|e| format!("{at}: not a registry export: {e}"))?;
    if dump.format != DUMP_FORMAT {
        return Err(format!(
            "{at}: format is '{}', not '{DUMP_FORMAT}'",
            dump.format
        ));
    }
    if dump.schema_version > CURRENT_VERSION {
        return Err(format!(
            "{at}: written by a newer speedrelay (registry version {}, this one understands {CURRENT_VERSION})",
            dump.schema_version
        ));
    }
    for record in &dump.channels {
        check_record(record).map_err(|e| format!("{at}: channel '{}': {e}", record.name))?;
    }
    Ok(dump)
}

fn write_atomically(file: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, file))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write {}: {e}", file.display())
        })
}
