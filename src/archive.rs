//! The archive writer: standard Avro Object Container Files, one directory
//! per channel, rotated and pruned by the channel's settings.
//!
//! STUB: interface only, to be implemented.
