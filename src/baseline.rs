//! The configuration baseline (SPEC §3): SpeedData's `relay.yaml` and
//! `global.yaml`, read unchanged, resolved into one [`ChannelSpec`] per
//! listed channel.
//!
//! Settings are layered as JSON documents, later layers winning field by
//! field: built-in defaults < `global.yaml` multicast endpoints (the default
//! destinations) < `relay.yaml` top-level settings < the channel's `config`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::channel::ChannelSpec;
use crate::config::ChannelSettings;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// What the configuration files say.
#[derive(Debug, Default)]
pub struct Baseline {
    /// Directory schema paths are resolved in.
    pub config_dir: Option<PathBuf>,
    /// `storage.avro_path` of `global.yaml`, if set.
    pub data_dir: Option<PathBuf>,
    /// The channel settings every channel starts from.
    pub defaults: Value,
    pub channels: Vec<ChannelSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayFile {
    #[serde(default)]
    channels: Vec<ChannelEntry>,
    // Global defaults for every channel; kept as JSON for layering.
    decimation: Option<Value>,
    outputs: Option<Value>,
    rotation: Option<Value>,
    retention: Option<Value>,
    archive: Option<Value>,
    validate: Option<Value>,
    socket: Option<Value>,
    // SpeedData's global.yaml keys, when one file holds everything.
    multicast: Option<Value>,
    storage: Option<Storage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelEntry {
    name: String,
    port: u16,
    schema: PathBuf,
    #[serde(default)]
    config: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlobalFile {
    multicast: Option<Value>,
    storage: Option<Storage>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Storage {
    avro_path: Option<PathBuf>,
}

/// Reads a config directory (`relay.yaml`, optional `global.yaml`) or one
/// YAML file holding both.
pub fn load(path: &Path) -> Result<Baseline, ConfigError> {
    let (config_dir, relay_path, global_path) = if path.is_dir() {
        (
            path.to_path_buf(),
            path.join("relay.yaml"),
            Some(path.join("global.yaml")).filter(|p| p.exists()),
        )
    } else {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        (dir, path.to_path_buf(), None)
    };
    let relay: RelayFile = read_yaml(&relay_path)?;
    let global: GlobalFile = match &global_path {
        Some(p) => read_yaml(p)?,
        None => GlobalFile::default(),
    };

    let mut defaults = Value::Object(Map::new());
    let multicast = global.multicast.or(relay.multicast);
    if let Some(Value::Object(m)) = multicast {
        let mut outputs = Map::new();
        for key in ["full_rate", "decimated"] {
            if let Some(v) = m.get(key) {
                outputs.insert(key.into(), v.clone());
            }
        }
        merge(
            &mut defaults,
            Value::Object(
                [("outputs".into(), Value::Object(outputs))]
                    .into_iter()
                    .collect(),
            ),
        );
    }
    let top = [
        ("decimation", relay.decimation),
        ("outputs", relay.outputs),
        ("rotation", relay.rotation),
        ("retention", relay.retention),
        ("archive", relay.archive),
        ("validate", relay.validate),
        ("socket", relay.socket),
    ];
    for (key, value) in top {
        if let Some(v) = value {
            merge(
                &mut defaults,
                Value::Object([(key.to_string(), v)].into_iter().collect()),
            );
        }
    }
    settings_from(&defaults).map_err(|message| ConfigError::Invalid {
        path: relay_path.clone(),
        message: format!("channel defaults: {message}"),
    })?;

    let mut channels = Vec::with_capacity(relay.channels.len());
    for entry in relay.channels {
        let schema_path =
            resolve_schema(&config_dir, &entry.schema).ok_or_else(|| ConfigError::Invalid {
                path: relay_path.clone(),
                message: format!(
                    "channel {}: schema file {} not found",
                    entry.name,
                    entry.schema.display()
                ),
            })?;
        let schema_json = fs::read_to_string(&schema_path).map_err(|source| ConfigError::Read {
            path: schema_path.clone(),
            source,
        })?;
        let mut doc = defaults.clone();
        if let Some(overrides) = entry.config {
            merge(&mut doc, expand_shorthand(overrides));
        }
        let settings = settings_from(&doc).map_err(|message| ConfigError::Invalid {
            path: relay_path.clone(),
            message: format!("channel {}: {message}", entry.name),
        })?;
        channels.push(ChannelSpec {
            name: entry.name,
            port: entry.port,
            schema_json,
            settings,
        });
    }
    let storage = global.storage.or(relay.storage).unwrap_or_default();
    Ok(Baseline {
        config_dir: Some(config_dir),
        data_dir: storage.avro_path,
        defaults,
        channels,
    })
}

fn read_yaml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_yaml::from_str(&text).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Typed settings from a layered JSON document.
/// Errors name the offending field's path (`decimation.factor: …`).
pub fn settings_from(doc: &Value) -> Result<ChannelSettings, String> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        format!("{path}: {}", e.into_inner())
    })
}

/// SpeedData's `"decimation": N` is short for `{"factor": N}`.
pub fn expand_shorthand(mut overrides: Value) -> Value {
    if let Some(obj) = overrides.as_object_mut()
        && let Some(n) = obj.get("decimation").filter(|v| v.is_number()).cloned()
    {
        obj.insert(
            "decimation".into(),
            Value::Object([("factor".into(), n)].into_iter().collect()),
        );
    }
    overrides
}

/// Merges `over` into `base`: objects field by field, anything else replaced.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}

/// SpeedData writes schema paths from the repository root
/// (`config/agents/x.avsc`); accept those and paths relative to the config
/// directory itself.
fn resolve_schema(config_dir: &Path, schema: &Path) -> Option<PathBuf> {
    if schema.is_absolute() {
        return schema.is_file().then(|| schema.to_path_buf());
    }
    let candidates = [
        Some(config_dir.join(schema)),
        config_dir.parent().map(|p| p.join(schema)),
    ];
    candidates.into_iter().flatten().find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Algorithm;

    #[test]
    fn shipped_config_loads() {
        let b = load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))).unwrap();
        assert_eq!(b.channels.len(), 1);
        let ch = &b.channels[0];
        assert_eq!((ch.name.as_str(), ch.port), ("example", 26000));
        assert_eq!(ch.settings.decimation.factor, 5);
        let full = &ch.settings.outputs.full_rate[0];
        assert_eq!(full.address.to_string(), "239.1.1.1");
        assert_eq!(
            full.interface.map(|i| i.to_string()).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(b.data_dir.as_deref(), Some(Path::new("./data")));
    }

    #[test]
    fn channel_config_overrides_defaults_with_shorthand() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("s.avsc"),
            r#"{"type":"record","name":"r","fields":[{"name":"x","type":"double"}]}"#,
        )
        .unwrap();
        fs::write(
            dir.path().join("relay.yaml"),
            "channels:\n  - {name: a, port: 1, schema: s.avsc, config: {decimation: 7}}\n  - {name: b, port: 2, schema: s.avsc, config: {decimation: {algorithm: rms}}}\ndecimation: {factor: 3, algorithm: average}\n",
        )
        .unwrap();
        let b = load(dir.path()).unwrap();
        assert_eq!(b.channels[0].settings.decimation.factor, 7);
        assert_eq!(
            b.channels[0].settings.decimation.algorithm,
            Algorithm::Average
        );
        assert_eq!(b.channels[1].settings.decimation.factor, 3);
        assert_eq!(b.channels[1].settings.decimation.algorithm, Algorithm::Rms);
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("relay.yaml"),
            "channels:\n  - {name: a, port: 1, schema: missing.avsc}\n",
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("relay.yaml") && err.contains("missing.avsc"),
            "{err}"
        );
        fs::write(
            dir.path().join("relay.yaml"),
            "decimation: {factor: lots}\n",
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("factor") || err.contains("invalid"), "{err}");
    }
}
