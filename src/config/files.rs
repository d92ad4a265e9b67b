//! The configuration files: SpeedData's `relay.yaml` and `global.yaml`,
//! read unchanged, checked against the shipped JSON Schemas, and resolved
//! into one [`Seed`] per listed channel. It only reads: nothing is bound or
//! created.
//!
//! Loading has two stages. First every problem is collected: each file
//! against its schema, then what a schema cannot say (channel names and
//! ports unique, `ports.start <= ports.end`, each channel's schema file
//! present and an Avro schema). Any problem stops there, with all of them in
//! [`ConfigError::Violations`]. Only a clean configuration is deserialized
//! and layered (see [`super::layers`]).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::schema::{Lines, Violation, compare_pointers, one_line, schema_violations, schemas};
use super::{expand_shorthand, merge, settings_from};
use crate::channel::ChannelSpec;
use crate::validator::Validator;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not YAML (serde_yaml's message says at which line and column), or,
    /// after a clean schema check, not what the typed settings accept.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// Everything wrong with the configuration, one violation per line.
    #[error("{}", Lines(violations))]
    Violations { violations: Vec<Violation> },
}

/// A channel the configuration lists, to be registered at start-up unless
/// the registry knows its name.
#[derive(Debug, Clone)]
pub struct Seed {
    pub spec: ChannelSpec,
    /// The schema path as the file wrote it, shown as `schema_path`.
    pub schema_path: Option<String>,
}

impl From<ChannelSpec> for Seed {
    fn from(spec: ChannelSpec) -> Self {
        Seed {
            spec,
            schema_path: None,
        }
    }
}

/// What the configuration files say.
#[derive(Debug, Default)]
pub struct FileConfig {
    /// Directory schema paths are resolved in.
    pub config_dir: Option<PathBuf>,
    /// `storage.avro_path` of `global.yaml`, if set.
    pub data_dir: Option<PathBuf>,
    /// The channel settings every channel starts from.
    pub defaults: Value,
    pub channels: Vec<Seed>,
    /// `ports: {start, end}` of `relay.yaml`: the range registrations may
    /// use, both ends included, `start <= end`.
    pub ports: Option<(u16, u16)>,
    /// `api.listen` of `global.yaml`, `host:port`.
    pub api_listen: Option<String>,
    /// `api.token` of `global.yaml`.
    pub api_token: Option<String>,
    /// `api.allowed_hosts` of `global.yaml`.
    pub allowed_hosts: Vec<String>,
    /// `api.cors_origins` of `global.yaml`.
    pub cors_origins: Vec<String>,
    /// `cluster` of `global.yaml`: used by a build with the `cluster` feature.
    pub cluster: Option<ClusterFile>,
}

/// The `cluster` section: which NATS servers, under which node name. No
/// secret is held here, only the paths of the files holding them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    #[serde(default, deserialize_with = "one_or_many")]
    pub nats: Vec<String>,
    pub node: Option<String>,
    pub bucket: Option<String>,
    pub credentials: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    /// How long a channel's lease lasts; 0: no leases, every node runs
    /// every channel.
    pub lease_ms: Option<u64>,
    /// The placement groups this node belongs to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Move a channel to the node that ranks first for it once that node
    /// has been live for a lease (a node that joins takes its share).
    pub rebalance: Option<bool>,
    /// How many NATS servers keep a copy of the bucket when this node
    /// creates it (1 to 5); an existing bucket keeps its own.
    pub replicas: Option<usize>,
}

/// `nats: URL` or `nats: [URL, ...]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayFile {
    #[serde(default)]
    channels: Vec<ChannelEntry>,
    ports: Option<PortRange>,
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
    api: Option<Api>,
    cluster: Option<ClusterFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelEntry {
    name: String,
    port: u16,
    /// As written: resolved and read by [`check_channels`], and kept as the
    /// channel's `schema_path`.
    schema: String,
    #[serde(default)]
    config: Option<Value>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortRange {
    start: u16,
    end: u16,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GlobalFile {
    multicast: Option<Value>,
    storage: Option<Storage>,
    api: Option<Api>,
    cluster: Option<ClusterFile>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Storage {
    avro_path: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Api {
    listen: Option<String>,
    token: Option<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    #[serde(default)]
    cors_origins: Vec<String>,
}

/// Reads a config directory (`relay.yaml`, optional `global.yaml`) or one
/// YAML file holding both. It only reads: nothing is bound or created.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
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
    let relay_text = read_text(&relay_path)?;
    let global_text = match &global_path {
        Some(p) => Some((read_text(p)?, p.as_path())),
        None => None,
    };
    load_texts(
        config_dir,
        (&relay_text, &relay_path),
        global_text.as_ref().map(|(t, p)| (t.as_str(), *p)),
    )
}

/// [`load`] on file contents already in memory: `relay` and `global` are
/// each a YAML text and the path it is reported under; channel schema paths
/// are still resolved (and read) in `config_dir`. Used by `load` and by the
/// fuzz targets in `fuzz/`.
pub fn load_texts(
    config_dir: PathBuf,
    relay: (&str, &Path),
    global: Option<(&str, &Path)>,
) -> Result<FileConfig, ConfigError> {
    let relay_path = relay.1.to_path_buf();
    let relay_doc = parse_document(relay.0, &relay_path)?;
    let global_doc = match global {
        Some((text, p)) => Some((parse_document(text, p)?, p)),
        None => None,
    };

    let schemas = schemas();
    let mut violations = schema_violations(&schemas.relay, &relay_doc, &relay_path);
    let schema_texts = check_channels(&relay_doc, &relay_path, &config_dir, &mut violations);
    check_port_range(&relay_doc, &relay_path, &mut violations);
    violations.sort_by(|a, b| compare_pointers(&a.pointer, &b.pointer));
    if let Some((doc, p)) = &global_doc {
        let mut more = schema_violations(&schemas.global, doc, p);
        more.sort_by(|a, b| compare_pointers(&a.pointer, &b.pointer));
        violations.extend(more);
    }
    if !violations.is_empty() {
        return Err(ConfigError::Violations { violations });
    }

    let relay: RelayFile = from_document(relay_doc, &relay_path)?;
    let global: GlobalFile = match global_doc {
        Some((doc, p)) => from_document(doc, p)?,
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
    settings_from(&defaults).map_err(|e| ConfigError::Invalid {
        path: relay_path.clone(),
        message: format!("channel defaults: {e}"),
    })?;

    let mut channels = Vec::with_capacity(relay.channels.len());
    for (entry, schema_json) in relay.channels.into_iter().zip(schema_texts) {
        let mut doc = defaults.clone();
        if let Some(overrides) = entry.config {
            merge(&mut doc, expand_shorthand(overrides));
        }
        let settings = settings_from(&doc).map_err(|e| ConfigError::Invalid {
            path: relay_path.clone(),
            message: format!("channel {}: {e}", entry.name),
        })?;
        channels.push(Seed {
            spec: ChannelSpec {
                name: entry.name,
                port: entry.port,
                // Without a violation, check_channels read every schema.
                schema_json: schema_json.unwrap_or_default(),
                settings,
            },
            schema_path: Some(entry.schema),
        });
    }
    let storage = global.storage.or(relay.storage).unwrap_or_default();
    let api = global.api.or(relay.api).unwrap_or_default();
    // Paths in the section are relative to the configuration directory.
    let cluster = global.cluster.or(relay.cluster).map(|mut c| {
        c.credentials = c.credentials.map(|p| config_dir.join(p));
        c.ca = c.ca.map(|p| config_dir.join(p));
        c
    });
    Ok(FileConfig {
        config_dir: Some(config_dir),
        data_dir: storage.avro_path,
        defaults,
        channels,
        ports: relay.ports.map(|r| (r.start, r.end)),
        api_listen: api.listen,
        api_token: api.token,
        allowed_hosts: api.allowed_hosts,
        cors_origins: api.cors_origins,
        cluster,
    })
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A YAML file as JSON. Syntax errors keep serde_yaml's line and column; an
/// empty file (or one of comments only) is an empty mapping.
fn parse_document(text: &str, path: &Path) -> Result<Value, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    // Through serde_yaml's own Value, which refuses duplicate keys.
    let yaml: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    match serde_json::to_value(yaml).map_err(|e| invalid(e.to_string()))? {
        Value::Null => Ok(Value::Object(Map::new())),
        doc => Ok(doc),
    }
}

fn from_document<T: for<'de> Deserialize<'de>>(doc: Value, path: &Path) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let at = e.path().to_string();
        ConfigError::Invalid {
            path: path.to_path_buf(),
            message: format!("{at}: {}", e.into_inner()),
        }
    })
}

/// What the schema cannot say about `channels`: names and ports unique, and
/// each channel's schema file readable and an Avro schema. Returns each
/// channel's schema text (`None` where there is a violation).
fn check_channels(
    doc: &Value,
    path: &Path,
    config_dir: &Path,
    violations: &mut Vec<Violation>,
) -> Vec<Option<String>> {
    let Some(channels) = doc.get("channels").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut report = |pointer: String, message: String| {
        violations.push(Violation {
            file: path.to_path_buf(),
            pointer,
            message,
        })
    };
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut ports: HashMap<u64, (usize, &str)> = HashMap::new();
    let mut texts = Vec::with_capacity(channels.len());
    for (i, channel) in channels.iter().enumerate() {
        let name = channel.get("name").and_then(Value::as_str);
        if let Some(name) = name {
            match names.get(name) {
                Some(first) => report(
                    format!("/channels/{i}/name"),
                    format!("duplicate channel name {name:?} (first at /channels/{first})"),
                ),
                None => {
                    names.insert(name, i);
                }
            }
        }
        if let Some(port) = channel.get("port").and_then(Value::as_u64) {
            match ports.get(&port) {
                Some((first, first_name)) => report(
                    format!("/channels/{i}/port"),
                    format!(
                        "port {port} is already used by channel {first_name:?} (/channels/{first})"
                    ),
                ),
                None => {
                    ports.insert(port, (i, name.unwrap_or("?")));
                }
            }
        }
        let text = channel
            .get("schema")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .and_then(|schema| {
                read_avro_schema(config_dir, schema)
                    .map_err(|message| report(format!("/channels/{i}/schema"), message))
                    .ok()
            });
        texts.push(text);
    }
    texts
}

/// The text of a channel's schema file, once it parses as Avro.
fn read_avro_schema(config_dir: &Path, schema: &str) -> Result<String, String> {
    let (file, text) = crate::schema_file::load(config_dir, schema).map_err(|e| e.to_string())?;
    Validator::from_json(&text).map_err(|e| one_line(&format!("{}: {e}", file.display())))?;
    Ok(text)
}

/// `ports.start <= ports.end`, which JSON Schema cannot compare.
fn check_port_range(doc: &Value, path: &Path, violations: &mut Vec<Violation>) {
    let range = doc.get("ports");
    let bound = |key| range.and_then(|r| r.get(key)).and_then(Value::as_u64);
    if let (Some(start), Some(end)) = (bound("start"), bound("end"))
        && start > end
    {
        violations.push(Violation {
            file: path.to_path_buf(),
            pointer: "/ports".into(),
            message: format!("start {start} is after end {end}"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Algorithm;

    const AVRO: &str = r#"{"type":"record","name":"r","fields":[{"name":"x","type":"double"}]}"#;

    fn violations(err: ConfigError) -> Vec<(String, String)> {
        match err {
            ConfigError::Violations { violations } => violations
                .into_iter()
                .map(|v| (v.pointer, v.message))
                .collect(),
            other => panic!("expected violations, got {other}"),
        }
    }

    #[test]
    fn shipped_config_loads() {
        let b = load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))).unwrap();
        assert_eq!(b.channels.len(), 1);
        let ch = &b.channels[0].spec;
        assert_eq!(
            b.channels[0].schema_path.as_deref(),
            Some("agents/example.avsc")
        );
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
        fs::write(dir.path().join("s.avsc"), AVRO).unwrap();
        fs::write(
            dir.path().join("relay.yaml"),
            "channels:\n  - {name: a, port: 1, schema: s.avsc, config: {decimation: 7}}\n  - {name: b, port: 2, schema: s.avsc, config: {decimation: {algorithm: rms}}}\ndecimation: {factor: 3, algorithm: average}\n",
        )
        .unwrap();
        let b = load(dir.path()).unwrap();
        assert_eq!(b.channels[0].spec.settings.decimation.factor, 7);
        assert_eq!(
            b.channels[0].spec.settings.decimation.algorithm,
            Algorithm::Average
        );
        assert_eq!(b.channels[1].spec.settings.decimation.factor, 3);
        assert_eq!(
            b.channels[1].spec.settings.decimation.algorithm,
            Algorithm::Rms
        );
        assert_eq!(b.channels[0].spec.schema_json, AVRO);
    }

    #[test]
    fn ports_and_api_are_read() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("relay.yaml"),
            "ports: {start: 26000, end: 27000}\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("global.yaml"),
            "api: {listen: \"[::1]:8080\", token: s3cret}\n",
        )
        .unwrap();
        let b = load(dir.path()).unwrap();
        assert_eq!(b.ports, Some((26000, 27000)));
        assert_eq!(b.api_listen.as_deref(), Some("[::1]:8080"));
        assert_eq!(b.api_token.as_deref(), Some("s3cret"));

        // One file may hold global.yaml's keys too.
        let one = dir.path().join("all.yaml");
        fs::write(
            &one,
            "api: {listen: \"localhost:9000\"}\nstorage: {avro_path: /srv/data}\n",
        )
        .unwrap();
        let b = load(&one).unwrap();
        assert_eq!(b.api_listen.as_deref(), Some("localhost:9000"));
        assert_eq!(b.api_token, None);
        assert_eq!(b.ports, None);
        assert_eq!(b.data_dir.as_deref(), Some(Path::new("/srv/data")));
    }

    #[test]
    fn every_violation_is_reported_with_its_file_and_pointer() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("s.avsc"), AVRO).unwrap();
        fs::write(dir.path().join("text.avsc"), "not json").unwrap();
        fs::write(
            dir.path().join("relay.yaml"),
            "channels:\n\
             \x20 - {name: a, port: 1, schema: s.avsc}\n\
             \x20 - {name: a, port: 1, schema: gone.avsc}\n\
             \x20 - {name: ok, port: 3, schema: text.avsc}\n\
             ports: {start: 20, end: 10}\n\
             decimation: {factor: 0}\n",
        )
        .unwrap();
        fs::write(dir.path().join("global.yaml"), "storage: {avro_paht: x}\n").unwrap();
        let err = load(dir.path()).unwrap_err();
        let text = err.to_string();
        let got = violations(err);
        let pointers: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/channels/1/name",
                "/channels/1/port",
                "/channels/1/schema",
                "/channels/2/schema",
                "/decimation/factor",
                "/ports",
                "/storage/avro_paht",
            ],
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        let relay = dir.path().join("relay.yaml");
        assert_eq!(
            lines[4],
            format!(
                "{}: /decimation/factor: 0 is less than the minimum of 1",
                relay.display()
            )
        );
        assert!(lines[2].contains("gone.avsc not found"), "{text}");
        assert!(lines[3].contains("not an Avro schema"), "{text}");
        assert!(lines[6].starts_with(&format!("{}:", dir.path().join("global.yaml").display())));
        assert!(lines[6].contains("did you mean \"avro_path\""), "{text}");
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
        assert!(err.contains("/decimation/factor"), "{err}");
    }

    #[test]
    fn yaml_errors_say_where() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("relay.yaml"),
            "channels:\n  - name: a\n    port: 1\n   schema: x\n",
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("line 4"), "{err}");

        fs::write(
            dir.path().join("relay.yaml"),
            "validate: true\nvalidate: false\n",
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("duplicate") && err.contains("validate"),
            "{err}"
        );

        // Comments only: an empty configuration, not an error.
        fs::write(dir.path().join("relay.yaml"), "# nothing yet\n").unwrap();
        assert!(load(dir.path()).unwrap().channels.is_empty());
    }
}
