//! A channel's settings and where they come from: the typed settings
//! ([`settings`]), how layers merge and the one validation every door goes
//! through — files, `POST`, `PATCH`, the registry ([`layers`]), the shipped
//! JSON Schemas behind it (`schema`), and the reader of `relay.yaml` and
//! `global.yaml` ([`files`]).

pub mod files;
mod layers;
mod schema;
mod settings;

pub use layers::{SettingsError, expand_shorthand, merge, settings_from};
pub use schema::Violation;
pub use settings::*;
