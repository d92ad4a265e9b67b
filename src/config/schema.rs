//! The JSON Schemas shipped in `config/` (built into the binary): compiled
//! once, run offline, and their violations turned into one line each with
//! the JSON pointer of the offending value, the allowed values of an enum,
//! and "did you mean" for an unknown key. Used for whole files by
//! [`super::files`] and for one channel's settings by [`super::settings_from`].

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

/// `config/relay.schema.json`, as built into this binary.
pub(crate) const RELAY_SCHEMA: &str = include_str!("../../config/relay.schema.json");
/// `config/global.schema.json`, as built into this binary.
pub(crate) const GLOBAL_SCHEMA: &str = include_str!("../../config/global.schema.json");

pub(crate) const RELAY_FILE: &str = "relay.schema.json";
pub(crate) const GLOBAL_FILE: &str = "global.schema.json";
/// Where the embedded schemas pretend to live, so that relay.schema.json's
/// relative `$ref`s to `global.schema.json` resolve. Nothing is fetched:
/// both documents are in the registry and the validator is offline.
const SCHEMA_BASE: &str = "https://speedrelay.invalid/config/";

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

pub(crate) struct Lines<'a>(pub(crate) &'a [Violation]);

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

/// The embedded schemas, compiled once.
pub(crate) struct Schemas {
    pub(crate) relay: jsonschema::Validator,
    pub(crate) global: jsonschema::Validator,
    /// `relay.schema.json#/$defs/channelSettings`: one channel's layered
    /// settings, whichever door they came through.
    pub(crate) settings: jsonschema::Validator,
    /// The schema documents by file name: where an unknown key is found,
    /// they say which keys would have been allowed.
    documents: HashMap<&'static str, Value>,
}

pub(crate) fn schemas() -> &'static Schemas {
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

pub(crate) fn schema_documents() -> HashMap<&'static str, Value> {
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
pub(crate) fn compile(
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
pub(crate) fn schema_violations(
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
pub(crate) fn message(error: &jsonschema::ValidationError<'_>) -> String {
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
pub(crate) fn schema_node(
    error: &jsonschema::ValidationError<'_>,
    keyword: &str,
) -> Option<&'static Value> {
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
pub(crate) fn allowed_keys(error: &jsonschema::ValidationError<'_>) -> Vec<String> {
    schema_node(error, "additionalProperties")
        .and_then(|node| node.get("properties"))
        .and_then(Value::as_object)
        .map(|props| props.keys().cloned().collect())
        .unwrap_or_default()
}

pub(crate) fn unknown_key_message(key: &str, allowed: &[String]) -> String {
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
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
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

pub(crate) fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Collapses a message's line breaks and runs of spaces into single spaces.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Orders JSON pointers as the document reads: segment by segment, array
/// indices numerically (`/channels/2` before `/channels/10`).
pub(crate) fn compare_pointers(a: &str, b: &str) -> Ordering {
    let key = |p: &str| -> Vec<(Option<usize>, String)> {
        p.split('/')
            .skip(1)
            .map(|s| (s.parse().ok(), s.to_string()))
            .collect()
    };
    key(a).cmp(&key(b))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A validator for one definition of the shipped schemas.
    pub(crate) fn definition(file: &str, def: &str) -> jsonschema::Validator {
        let schema = json!({"$ref": format!("{file}#/$defs/{def}")});
        compile(&schema_documents(), "test.schema.json", &schema).unwrap()
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
