//! Schema files named by path — a channel's `schema:` in `relay.yaml` and
//! the `schema` string of `POST /channels`: one resolver that keeps them
//! inside the config directory, and one reader that takes only a regular
//! file and never waits on a FIFO or a device.
//!
//! A path is relative to the config directory. SpeedData writes its paths
//! from the repository root (`config/agents/x.avsc`), so a first component
//! that is the config directory's own name, or `config`, may be dropped:
//! both forms find the same file, and a config directory keeps working
//! wherever it is copied (`/etc/speedrelay`).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// Larger schema files are refused: a schema is stored in the registry and
/// sent back by the API, whose request bodies are capped at 2 MiB too.
pub const MAX_SCHEMA_FILE: u64 = 2 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SchemaFileError {
    #[error("must be a relative path without '..' inside the config directory")]
    NotRelative,
    #[error("{given} leaves the config directory")]
    Outside { given: String },
    #[error("schema file {given} not found (looked for {})", looked_list(.looked))]
    NotFound { given: String, looked: Vec<PathBuf> },
    #[error("{} is a {kind}, not a regular file", .path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{} is larger than {MAX_SCHEMA_FILE} bytes", .path.display())]
    TooLarge { path: PathBuf },
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn looked_list(looked: &[PathBuf]) -> String {
    let shown: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
    shown.join(" and ")
}

/// Where `given` names a file inside `config_dir`: the first candidate that
/// exists (see the module doc), checked not to leave the directory through
/// `..` or a symbolic link.
pub fn resolve(config_dir: &Path, given: &str) -> Result<PathBuf, SchemaFileError> {
    let rel = Path::new(given);
    if given.is_empty()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(SchemaFileError::NotRelative);
    }
    let root = config_dir
        .canonicalize()
        .map_err(|source| SchemaFileError::Read {
            path: config_dir.to_path_buf(),
            source,
        })?;
    let mut looked = vec![root.join(rel)];
    let mut parts = rel.components().filter(|c| *c != Component::CurDir);
    if let Some(Component::Normal(first)) = parts.next() {
        let rest: PathBuf = parts.collect();
        let own_name = root.file_name();
        if !rest.as_os_str().is_empty() && (Some(first) == own_name || first == "config") {
            looked.push(root.join(rest));
        }
    }
    for candidate in &looked {
        // `metadata` follows links but never opens the file: a FIFO is
        // seen here without blocking.
        if std::fs::metadata(candidate).is_err() {
            continue;
        }
        let full = candidate
            .canonicalize()
            .map_err(|source| SchemaFileError::Read {
                path: candidate.clone(),
                source,
            })?;
        if !full.starts_with(&root) {
            return Err(SchemaFileError::Outside {
                given: given.to_string(),
            });
        }
        return Ok(full);
    }
    Err(SchemaFileError::NotFound {
        given: given.to_string(),
        looked,
    })
}

/// The text of a regular file of at most [`MAX_SCHEMA_FILE`] bytes.
/// Opened non-blocking and checked again once open, so a FIFO swapped in
/// after [`resolve`] looked cannot make the read wait for a writer.
pub fn read(path: &Path) -> Result<String, SchemaFileError> {
    let read_err = |source| SchemaFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    check_regular(path, &meta.file_type())?;
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    check_regular(path, &meta.file_type())?;
    if meta.len() > MAX_SCHEMA_FILE {
        return Err(SchemaFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let mut text = String::new();
    file.take(MAX_SCHEMA_FILE + 1)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    if text.len() as u64 > MAX_SCHEMA_FILE {
        return Err(SchemaFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// [`resolve`] then [`read`].
pub fn load(config_dir: &Path, given: &str) -> Result<(PathBuf, String), SchemaFileError> {
    let path = resolve(config_dir, given)?;
    let text = read(&path)?;
    Ok((path, text))
}

fn check_regular(path: &Path, t: &std::fs::FileType) -> Result<(), SchemaFileError> {
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() || t.is_block_device() {
        "device"
    } else {
        "special file"
    };
    Err(SchemaFileError::NotRegular {
        path: path.to_path_buf(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_named(name: &str) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(dir.join("agents")).unwrap();
        std::fs::write(dir.join("agents/t.avsc"), "\"long\"").unwrap();
        (tmp, dir)
    }

    #[test]
    fn both_speeddata_forms_find_the_file() {
        let (_tmp, dir) = dir_named("speedrelay");
        let want = dir.canonicalize().unwrap().join("agents/t.avsc");
        for given in [
            "agents/t.avsc",
            "./agents/t.avsc",
            "speedrelay/agents/t.avsc",
            "config/agents/t.avsc",
        ] {
            assert_eq!(resolve(&dir, given).unwrap(), want, "{given}");
        }
        assert_eq!(load(&dir, "agents/t.avsc").unwrap().1, "\"long\"");
    }

    #[test]
    fn a_missing_file_says_where_it_looked() {
        let (_tmp, dir) = dir_named("config");
        let err = resolve(&dir, "config/agents/gone.avsc").unwrap_err();
        let text = err.to_string();
        let root = dir.canonicalize().unwrap();
        assert!(
            text.contains(&root.join("config/agents/gone.avsc").display().to_string())
                && text.contains(&root.join("agents/gone.avsc").display().to_string()),
            "{text}"
        );
    }

    #[test]
    fn nothing_outside_the_directory() {
        let (tmp, dir) = dir_named("config");
        std::fs::write(tmp.path().join("secret.avsc"), "\"long\"").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret.avsc"), dir.join("link.avsc")).unwrap();
        for given in [
            "../secret.avsc",
            "/etc/passwd",
            "",
            "agents/../../secret.avsc",
        ] {
            assert!(
                matches!(resolve(&dir, given), Err(SchemaFileError::NotRelative)),
                "{given}"
            );
        }
        assert!(matches!(
            resolve(&dir, "link.avsc"),
            Err(SchemaFileError::Outside { .. })
        ));
    }

    #[test]
    fn only_regular_files_are_read() {
        let (_tmp, dir) = dir_named("config");
        let fifo = dir.join("fifo.avsc");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = load(&dir, "fifo.avsc").unwrap_err();
        assert!(
            matches!(err, SchemaFileError::NotRegular { kind: "FIFO", .. }),
            "{err}"
        );
        let err = load(&dir, "agents").unwrap_err();
        assert!(matches!(
            err,
            SchemaFileError::NotRegular {
                kind: "directory",
                ..
            }
        ));
    }
}
