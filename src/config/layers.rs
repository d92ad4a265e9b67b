//! How a channel's settings are made: JSON layers merged field by field
//! (built-in defaults < `global.yaml` multicast endpoints < `relay.yaml`
//! top level < the channel's `config` < a `PATCH`), SpeedData's
//! shorthands expanded, and the one validation every door goes through.

use std::path::Path;

use serde_json::{Map, Value};

use super::ChannelSettings;
use super::schema::{compare_pointers, one_line, schema_violations, schemas};

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
    use crate::config::schema::tests::definition;
    use crate::config::{
        Algorithm, ArchiveSettings, Codec, Decimation, Destination, Outputs, Retention,
        RetentionMode, Rotation, RotationMode, SocketSettings,
    };
    use serde_json::json;

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
                    nats: (i == 0).then(|| crate::config::NatsOutput {
                        subject_prefix: "lab.a-1".into(),
                        raw_headers: true,
                        decimated: false,
                        ..Default::default()
                    }),
                    gso: i % 2 == 1,
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
                    coalesce_us: 1_000_000,
                },
                placement: [
                    Some(crate::config::Placement::Node("relay-a".into())),
                    Some(crate::config::Placement::Group("lab_b".into())),
                    None,
                    None,
                ][i]
                    .clone(),
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
            json!({"outputs": {"gso": false}}),
            json!({"outputs": {"full_rate": null, "decimated": []}}),
            json!({"outputs": {"decimated": {"address": "239.1.1.2", "port": 6001, "interface": "10.1.2.3", "ttl": 0}}}),
            json!({"rotation": {"mode": "size", "threshold": 0}}),
            json!({"retention": null}),
            json!({"retention": {"mode": "quota", "value": 1_000_000}}),
            json!({"archive": {"codec": "zstandard", "flush_ms": 0}}),
            json!({"validate": false}),
            json!({"socket": {"bind": "127.0.0.1", "recv_buffer": 0, "max_datagram": 65535}}),
            json!({"socket": {"bind": "::"}}),
            json!({"socket": {"coalesce_us": 0}}),
            json!({"socket": {"coalesce_us": 1_000_000}}),
            json!({"placement": {"node": "relay-a"}}),
            json!({"placement": {"group": "lab_b-2"}}),
            json!({"placement": null}),
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
            json!({"outputs": {"gso": "yes"}}),
            json!({"outputs": {"gso": null}}),
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
            json!({"socket": {"coalesce_us": -1}}),
            json!({"socket": {"coalesce_us": "300"}}),
            json!({"socket": {"coalesce_us": 2.5}}),
            json!({"decimation": null}),
            json!({"placement": {}}),
            json!({"placement": {"node": "a", "group": "b"}}),
            json!({"placement": {"host": "a"}}),
            json!({"placement": {"node": 7}}),
            json!({"placement": "relay-a"}),
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
            json!({"socket": {"coalesce_us": 1_000_001}}),
            json!({"outputs": {"full_rate": {"address": "239.1.1.1", "port": 1, "ttl": 256}}}),
            json!({"placement": {"node": "relay a"}}),
            json!({"placement": {"group": "-lab"}}),
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
}
