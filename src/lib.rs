//! speedrelay: one process that receives every telemetry channel over UDP,
//! validates each Avro record, archives it, and forwards it at full rate and
//! decimated.
//!
//! Where a datagram goes: [`channel`] receives a batch ([`udp`]), checks each
//! datagram with the [`validator`], forwards valid ones through [`udp`] to the
//! full-rate destinations, feeds the [`decimator`], and hands blocks of
//! records to the [`archive`] writer. [`counters`] tell what happened;
//! [`config`] says how.
//!
//! The Avro wire format they share — varints, the container file's header
//! and blocks, the block codecs — has one home, [`avro`]; [`verify`] reads
//! archive files back through it, and [`send`] encodes demo records with it.
//!
//! With the `cluster` feature, `cluster` shares the [`registry`] between
//! several relays through NATS.

pub mod api;
pub mod archive;
pub mod avro;
pub mod channel;
pub mod client;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod config;
pub mod counters;
pub mod decimator;
pub mod descriptors;
pub mod engine;
pub mod memory;
pub mod metrics;
pub mod registry;
pub mod schema_file;
pub mod send;
pub mod udp;
pub mod validator;
pub mod verify;
pub mod web;
