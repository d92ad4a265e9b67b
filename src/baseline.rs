//! The configuration baseline (SPEC §3): SpeedData's `relay.yaml` and
//! `global.yaml`, read unchanged, checked against the JSON Schemas shipped in
//! `config/` (embedded in the binary), and resolved into one [`ChannelSpec`]
//! per listed channel.
//!
//! Loading has two stages. First every problem is collected: each file
//! against its schema, then what a schema cannot say (channel names and
//! ports unique, `ports.start <= ports.end`, each channel's schema file
//! present and an Avro schema). Any problem stops there, with all of them in
//! [`ConfigError::Violations`]. Only a clean configuration is deserialized
//! and layered.
//!
//! Settings are layered as JSON documents, later layers winning field by
//! field: built-in defaults < `global.yaml` multicast endpoints (the default
//! destinations) < `relay.yaml` top-level settings < the channel's `config`.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::channel::ChannelSpec;
use crate::config::ChannelSettings;
use crate::validator::Validator;

/// `config/relay.schema.json`, as built into this binary.
pub const RELAY_SCHEMA: &str = include_str!("../config/relay.schema.json");
/// `config/global.schema.json`, as built into this binary.
pub const GLOBAL_SCHEMA: &str = include_str!("../config/global.schema.json");

const RELAY_FILE: &str = "relay.schema.json";
const GLOBAL_FILE: &str = "global.schema.json";
/// Where the embedded schemas pretend to live, so that relay.schema.json's
/// relative `$ref`s to `global.schema.json` resolve. Nothing is fetched:
/// both documents are in the registry and the validator is offline.
const SCHEMA_BASE: &str = "https://speedrelay.invalid/config/";

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

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The file, as the path it was read from.
    pub file: PathBuf,
    /// JSON pointer to the offending value in the file (`/channels/3/name`);
    /// empty for the whole document.
    pub pointer: String,
    /// What is wrong, on one line.
    pub message: String,
}

/// `relay.yaml: /decimation/factor: 0 is less than the minimum of 1`; the
/// whole document is `/`.
impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "{}: {pointer}: {}", self.file.display(), self.message)
    }
}

struct Lines<'a>(&'a [Violation]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
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
pub struct Baseline {
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
) -> Result<Baseline, ConfigError> {
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
    Ok(Baseline {
        config_dir: Some(config_dir),
        data_dir: storage.avro_path,
        defaults,
        channels,
        ports: relay.ports.map(|r| (r.start, r.end)),
        api_listen: api.listen,
        api_token: api.token,
        allowed_hosts: api.allowed_hosts,
        cors_origins: api.cors_origins,
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

/// The two embedded schemas, compiled once.
struct Schemas {
    relay: jsonschema::Validator,
    global: jsonschema::Validator,
    /// `relay.schema.json#/$defs/channelSettings`: one channel's layered
    /// settings, whichever door they came through.
    settings: jsonschema::Validator,
    /// The schema documents by file name: where an unknown key is found,
    /// they say which keys would have been allowed.
    documents: HashMap<&'static str, Value>,
}

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        // Both are part of the binary, and a unit test compiles them.
        let documents = schema_documents();
        let relay = compile(&documents, RELAY_FILE, &documents[RELAY_FILE])
            .expect("relay.schema.json compiles");
        let global = compile(&documents, GLOBAL_FILE, &documents[GLOBAL_FILE])
            .expect("global.schema.json compiles");
        let settings = compile(
            &documents,
            "channel-settings.schema.json",
            &serde_json::json!({"$ref": format!("{RELAY_FILE}#/$defs/channelSettings")}),
        )
        .expect("channelSettings compiles");
        Schemas {
            relay,
            global,
            settings,
            documents,
        }
    })
}

fn schema_documents() -> HashMap<&'static str, Value> {
    [(RELAY_FILE, RELAY_SCHEMA), (GLOBAL_FILE, GLOBAL_SCHEMA)]
        .into_iter()
        .map(|(name, text)| {
            let doc = serde_json::from_str(text).expect("embedded schema is JSON");
            (name, doc)
        })
        .collect()
}

/// A validator for `schema` as if it were the file `name` beside the
/// shipped schemas: relative `$ref`s reach them, and nothing else.
fn compile(
    documents: &HashMap<&'static str, Value>,
    name: &str,
    schema: &Value,
) -> Result<jsonschema::Validator, String> {
    let mut builder = jsonschema::Registry::new();
    for (file, doc) in documents {
        builder = builder
            .add(format!("{SCHEMA_BASE}{file}"), doc)
            .map_err(|e| e.to_string())?;
    }
    let registry = builder.prepare().map_err(|e| e.to_string())?;
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_base_uri(format!("{SCHEMA_BASE}{name}"))
        .with_registry(&registry)
        .offline()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| e.to_string())
}

/// Every way `doc` breaks the schema `validator` was compiled from.
fn schema_violations(
    validator: &jsonschema::Validator,
    doc: &Value,
    path: &Path,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for error in validator.iter_errors(doc) {
        let pointer = error.instance_path().to_string();
        if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
            error.kind()
        {
            // One violation per unknown key, at the key itself.
            let allowed = allowed_keys(&error);
            for key in unexpected {
                out.push(Violation {
                    file: path.to_path_buf(),
                    pointer: format!("{pointer}/{}", escape_pointer(key)),
                    message: unknown_key_message(key, &allowed),
                });
            }
            continue;
        }
        out.push(Violation {
            file: path.to_path_buf(),
            pointer,
            message: one_line(&message(&error)),
        });
    }
    out
}

/// The crate's message, but every allowed value of an enum, and a pattern's
/// `errorMessage` (the ajv-errors convention) instead of the regex.
fn message(error: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as Kind;
    match error.kind() {
        Kind::Enum { options } => {
            let options: Vec<String> = match options.as_array() {
                Some(list) => list.iter().map(Value::to_string).collect(),
                None => vec![options.to_string()],
            };
            format!("{} is not one of {}", error.instance(), options.join(", "))
        }
        Kind::Pattern { .. } | Kind::Not { .. } => {
            let keyword = if matches!(error.kind(), Kind::Pattern { .. }) {
                "pattern"
            } else {
                "not"
            };
            match schema_node(error, keyword).and_then(|node| node.get("errorMessage")) {
                Some(Value::String(text)) => format!("{} {text}", error.instance()),
                _ => error.to_string(),
            }
        }
        Kind::Format { format } => {
            format!("{} is not a valid {format} address", error.instance())
        }
        _ => error.to_string(),
    }
}

/// The schema object holding `keyword`, where `error` was raised.
fn schema_node(error: &jsonschema::ValidationError<'_>, keyword: &str) -> Option<&'static Value> {
    let location = error.absolute_keyword_location()?.as_str();
    let (document, fragment) = location.split_once('#')?;
    let file = document.rsplit('/').next()?;
    let parent = fragment.strip_suffix(&format!("/{keyword}"))?;
    schemas()
        .documents
        .get(file)?
        .pointer(&parent.replace("%24", "$"))
}

/// The keys of the `properties` beside an `additionalProperties` keyword.
fn allowed_keys(error: &jsonschema::ValidationError<'_>) -> Vec<String> {
    schema_node(error, "additionalProperties")
        .and_then(|node| node.get("properties"))
        .and_then(Value::as_object)
        .map(|props| props.keys().cloned().collect())
        .unwrap_or_default()
}

fn unknown_key_message(key: &str, allowed: &[String]) -> String {
    if allowed.is_empty() {
        return "unknown key".into();
    }
    let lower = key.to_lowercase();
    let near = allowed
        .iter()
        .map(|a| (edit_distance(&lower, a), a))
        .filter(|(d, a)| *d <= (a.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d);
    match near {
        Some((_, a)) => format!("unknown key; did you mean {a:?}?"),
        None => format!("unknown key; expected one of: {}", allowed.join(", ")),
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
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

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Collapses a message's line breaks and runs of spaces into single spaces.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Orders JSON pointers as the document reads: segment by segment, array
/// indices numerically (`/channels/2` before `/channels/10`).
fn compare_pointers(a: &str, b: &str) -> Ordering {
    let key = |p: &str| -> Vec<(Option<usize>, String)> {
        p.split('/')
            .skip(1)
            .map(|s| (s.parse().ok(), s.to_string()))
            .collect()
    };
    key(a).cmp(&key(b))
}

/// A channel's settings refused: the first problem, at its JSON pointer
/// inside the settings document (`/decimation/factor`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", if .pointer.is_empty() { "/" } else { .pointer })]
pub struct SettingsError {
    pub pointer: String,
    pub message: String,
}

impl SettingsError {
    /// The pointer as a dotted field name under `config`
    /// (`config.decimation.factor`), for the API's `field`.
    pub fn field(&self) -> String {
        let mut field = String::from("config");
        for part in self.pointer.split('/').skip(1) {
            field.push('.');
            field.push_str(&part.replace("~1", "/").replace("~0", "~"));
        }
        field
    }
}

/// Typed settings from a layered JSON document, checked against the
/// shipped JSON Schema first: the one validation of a channel's settings,
/// used for the config files, `POST`, `PATCH` and the registry alike, so a
/// document is valid or not whichever door it comes through. `null` is no
/// settings (every default).
pub fn settings_from(doc: &Value) -> Result<ChannelSettings, SettingsError> {
    let empty = Value::Object(Map::new());
    let doc = if doc.is_null() { &empty } else { doc };
    let mut violations = schema_violations(&schemas().settings, doc, Path::new(""));
    violations.sort_by(|a, b| compare_pointers(&a.pointer, &b.pointer));
    if let Some(v) = violations.into_iter().next() {
        return Err(SettingsError {
            pointer: v.pointer,
            message: v.message,
        });
    }
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let pointer: String = e.path().iter().map(|seg| format!("/{seg}")).collect();
        SettingsError {
            pointer,
            message: one_line(&e.into_inner().to_string()),
        }
    })
}

/// SpeedData's shorthands: `"decimation": N` is `{"factor": N}` and
/// `"rotation": N` is `{"mode": "time", "threshold": N}` (seconds).
pub fn expand_shorthand(mut overrides: Value) -> Value {
    if let Some(obj) = overrides.as_object_mut() {
        if let Some(n) = obj.get("decimation").filter(|v| v.is_number()).cloned() {
            obj.insert(
                "decimation".into(),
                Value::Object([("factor".into(), n)].into_iter().collect()),
            );
        }
        if let Some(n) = obj.get("rotation").filter(|v| v.is_number()).cloned() {
            obj.insert(
                "rotation".into(),
                serde_json::json!({"mode": "time", "threshold": n}),
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        Algorithm, ArchiveSettings, Codec, Decimation, Destination, Outputs, Retention,
        RetentionMode, Rotation, RotationMode, SocketSettings,
    };
    use serde_json::json;

    const AVRO: &str = r#"{"type":"record","name":"r","fields":[{"name":"x","type":"double"}]}"#;

    /// A validator for one definition of the shipped schemas.
    fn definition(file: &str, def: &str) -> jsonschema::Validator {
        let schema = json!({"$ref": format!("{file}#/$defs/{def}")});
        compile(&schema_documents(), "test.schema.json", &schema).unwrap()
    }

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
    fn embedded_schemas_are_valid_draft_2020_12_and_compile() {
        for (name, doc) in schema_documents() {
            assert_eq!(
                doc["$schema"], "https://json-schema.org/draft/2020-12/schema",
                "{name}"
            );
            if let Err(e) = jsonschema::meta::validate(&doc) {
                panic!("{name}: {e} at {}", e.instance_path());
            }
        }
        let s = schemas();
        assert!(s.relay.is_valid(&json!({})) && s.global.is_valid(&json!({})));
    }

    #[test]
    fn every_property_has_a_description() {
        fn walk(node: &Value, at: &str, missing: &mut Vec<String>) {
            match node {
                Value::Object(map) => {
                    if let Some(Value::Object(props)) = map.get("properties") {
                        for (key, prop) in props {
                            if !prop.get("description").is_some_and(Value::is_string) {
                                missing.push(format!("{at}/properties/{key}"));
                            }
                        }
                    }
                    for (key, child) in map {
                        walk(child, &format!("{at}/{key}"), missing);
                    }
                }
                Value::Array(items) => {
                    for (i, child) in items.iter().enumerate() {
                        walk(child, &format!("{at}/{i}"), missing);
                    }
                }
                _ => {}
            }
        }
        let mut missing = Vec::new();
        for (name, doc) in schema_documents() {
            walk(&doc, name, &mut missing);
        }
        assert!(missing.is_empty(), "no description: {missing:?}");
    }

    #[test]
    fn default_settings_validate_against_the_schema() {
        let schema = definition("relay.schema.json", "channelSettings");
        let doc = serde_json::to_value(ChannelSettings::default()).unwrap();
        let errors: Vec<String> = schema.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{doc}: {errors:?}");
    }

    /// Every field set away from its default, every enum variant, both
    /// address families: what Rust serializes, the schema accepts (a field
    /// added to `ChannelSettings` without the schema fails here).
    #[test]
    fn fully_populated_settings_validate_against_the_schema() {
        let schema = definition("relay.schema.json", "channelSettings");
        let algorithms = [
            Algorithm::Downsample,
            Algorithm::Average,
            Algorithm::Minmax,
            Algorithm::Rms,
        ];
        let codecs = [Codec::Null, Codec::Deflate, Codec::Zstandard, Codec::Snappy];
        for i in 0..4 {
            let settings = ChannelSettings {
                decimation: Decimation {
                    enabled: false,
                    factor: u32::MAX,
                    algorithm: algorithms[i],
                },
                outputs: Outputs {
                    full_rate: vec![
                        Destination {
                            address: "239.1.1.1".parse().unwrap(),
                            port: 6000,
                            interface: Some("127.0.0.1".parse().unwrap()),
                            ttl: Some(255),
                            multicast_loop: Some(false),
                        },
                        Destination::new("::1".parse().unwrap(), 65535),
                    ],
                    decimated: vec![Destination::new("10.0.0.5".parse().unwrap(), 1)],
                },
                rotation: Rotation {
                    mode: [RotationMode::Time, RotationMode::Size][i % 2],
                    threshold: u64::MAX,
                },
                retention: Some(Retention {
                    mode: [RetentionMode::Ttl, RetentionMode::Quota][i % 2],
                    value: 0,
                }),
                archive: ArchiveSettings {
                    enabled: false,
                    codec: codecs[i],
                    layout: Default::default(),
                    flush_records: 1,
                    flush_bytes: u32::MAX,
                    flush_ms: 0,
                },
                validate: false,
                socket: SocketSettings {
                    bind: "::".parse().unwrap(),
                    recv_buffer: 0,
                    max_datagram: 1,
                },
            };
            let doc = serde_json::to_value(&settings).unwrap();
            let errors: Vec<String> = schema.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{doc}: {errors:?}");
            assert_eq!(settings_from(&doc).unwrap(), settings, "round trip");
        }
    }

    /// The schema and the typed settings accept and refuse the same
    /// documents, but for the few the schema refuses on purpose.
    #[test]
    fn schema_and_typed_settings_agree() {
        let schema = definition("relay.schema.json", "channelSettings");
        let both = |doc: Value| (schema.is_valid(&doc), settings_from(&doc).is_ok());
        let accepted = [
            json!({}),
            json!({"decimation": {"factor": 1, "algorithm": "minmax"}}),
            json!({"decimation": {"enabled": false}}),
            json!({"outputs": {"full_rate": {"address": "239.1.1.1", "port": 6000}}}),
            json!({"outputs": {"full_rate": [{"address": "fe80::1", "port": 1, "loop": true}]}}),
            json!({"outputs": {"full_rate": null, "decimated": []}}),
            json!({"outputs": {"decimated": {"address": "239.1.1.2", "port": 6001, "interface": "10.1.2.3", "ttl": 0}}}),
            json!({"rotation": {"mode": "size", "threshold": 0}}),
            json!({"retention": null}),
            json!({"retention": {"mode": "quota", "value": 1_000_000}}),
            json!({"archive": {"codec": "zstandard", "flush_ms": 0}}),
            json!({"validate": false}),
            json!({"socket": {"bind": "127.0.0.1", "recv_buffer": 0, "max_datagram": 65535}}),
            json!({"socket": {"bind": "::"}}),
        ];
        for doc in accepted {
            assert_eq!(both(doc.clone()), (true, true), "{doc}");
        }
        let refused = [
            json!({"decimashun": 3}),
            json!({"decimation": {"factor": "many"}}),
            json!({"decimation": {"factor": -1}}),
            json!({"decimation": {"algorithm": "median"}}),
            json!({"decimation": {"enabled": "yes"}}),
            json!({"decimation": {"window": 3}}),
            json!({"decimation": 5}),
            json!({"outputs": {"full_rate": {"address": "x", "port": 1}}}),
            json!({"outputs": {"full_rate": {"address": "10.0.0.300", "port": 1}}}),
            json!({"outputs": {"full_rate": {"address": "fe80::zz", "port": 1}}}),
            json!({"outputs": {"full_rate": {"address": "239.1.1.1", "port": "abc"}}}),
            json!({"outputs": {"full_rate": {"address": "239.1.1.1", "port": 65536}}}),
            json!({"outputs": {"full_rate": {"address": "239.1.1.1", "port": 0}}}),
            json!({"outputs": {"decimated": [{"address": "0.0.0.0", "port": 9}]}}),
            json!({"outputs": {"full_rate": {"address": "::", "port": 9}}}),
            json!({"outputs": {"full_rate": {"address": "239.1.1.1"}}}),
            json!({"outputs": {"full_rate": {"port": 1}}}),
            json!({"outputs": {"full_rate": {"address": "239.1.1.1", "port": 1, "interface": "::1"}}}),
            json!({"outputs": {"full_rate": {"address": "239.1.1.1", "port": 1, "group": 2}}}),
            json!({"outputs": {"full_rate": 6000}}),
            json!({"outputs": {"full_rate": [6000]}}),
            json!({"outputs": {"unicast": []}}),
            json!({"rotation": {"mode": "weekly"}}),
            json!({"rotation": {"threshold": -1}}),
            json!({"retention": {"mode": "ttl"}}),
            json!({"retention": {"value": 5}}),
            json!({"retention": {"mode": "forever", "value": 5}}),
            json!({"archive": {"codec": "lz4"}}),
            json!({"archive": {"codec": null}}),
            json!({"archive": {"flush_ms": 4_294_967_296_u64}}),
            json!({"validate": "true"}),
            json!({"socket": {"bind": "localhost"}}),
            json!({"socket": {"recv_buffer": -1}}),
            json!({"decimation": null}),
        ];
        for doc in refused {
            assert_eq!(both(doc.clone()), (false, false), "{doc}");
        }
        // Bounds only the schema can say: refused by `settings_from` too,
        // since it checks the schema first (one validation for every door).
        let bounds = [
            json!({"decimation": {"factor": 0}}),
            json!({"archive": {"flush_records": 0}}),
            json!({"archive": {"flush_bytes": 0}}),
            json!({"socket": {"max_datagram": 0}}),
            json!({"socket": {"max_datagram": 65536}}),
            json!({"outputs": {"full_rate": {"address": "239.1.1.1", "port": 1, "ttl": 256}}}),
        ];
        for doc in bounds {
            assert_eq!(both(doc.clone()), (false, false), "{doc}");
            let serde_only: Result<ChannelSettings, _> = serde_json::from_value(doc.clone());
            assert!(serde_only.is_ok(), "serde alone would take {doc}");
        }
        let err = settings_from(&json!({"decimation": {"factor": 0}})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/decimation/factor: 0 is less than the minimum of 1"
        );
        assert_eq!(err.field(), "config.decimation.factor");
    }

    #[test]
    fn channel_overrides_take_the_decimation_shorthand() {
        let schema = definition("relay.schema.json", "channelOverrides");
        assert!(schema.is_valid(&json!({"decimation": 7})));
        assert!(schema.is_valid(&json!({"decimation": {"algorithm": "rms"}})));
        assert!(schema.is_valid(&json!(null)));
        assert!(!schema.is_valid(&json!({"decimation": 0})));
        assert!(!schema.is_valid(&json!({"decimation": 2.5})));
        assert!(!schema.is_valid(&json!({"decimation": "7"})));
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

    #[test]
    fn unknown_keys_suggest_the_nearest() {
        let allowed: Vec<String> = ["decimation", "outputs", "rotation"]
            .map(String::from)
            .into();
        assert_eq!(
            unknown_key_message("decimashun", &allowed),
            "unknown key; did you mean \"decimation\"?"
        );
        assert_eq!(
            unknown_key_message("zzz", &allowed),
            "unknown key; expected one of: decimation, outputs, rotation"
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn pointers_sort_as_the_document_reads() {
        let mut p = vec![
            "/channels/10/name",
            "/decimation",
            "/channels/2/port",
            "/channels/2",
        ];
        p.sort_by(|a, b| compare_pointers(a, b));
        assert_eq!(
            p,
            [
                "/channels/2",
                "/channels/2/port",
                "/channels/10/name",
                "/decimation"
            ]
        );
    }
}
