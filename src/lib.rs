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
//! Watching it: [`history`] keeps each channel's counters second by second,
//! [`live`] streams a sample of its records decoded to JSON; the web page
//! ([`web`]) and the `top` command show both.
//!
//! The Avro wire format they share — varints, the container file's header
//! and blocks, the block codecs — has one home, [`avro`]; [`verify`] reads
//! archive files back through it, and [`loadgen`] encodes demo records with it.
//!
//! Around the channels: [`engine`] runs every channel of the process
//! (registration, supervision, the [`registry`]), and [`api`] serves the
//! HTTP API over it (its route table, the page and the Prometheus metrics
//! are private modules). The command line is the binary's (`src/main.rs`,
//! `src/cli/`), not this library's. Fault injection for tests exists only
//! with the `testing` feature.
//!
//! With the `cluster` feature, `cluster` shares the [`registry`] between
//! several relays through NATS.

pub mod api;
pub mod archive;
pub mod avro;
pub mod channel;
#[cfg(feature = "cluster")]
pub mod cluster;
pub mod config;
pub mod counters;
pub mod decimator;
pub mod descriptors;
pub mod engine;
pub mod history;
pub mod live;
pub mod loadgen;
pub mod memory;
mod metrics;
pub mod nats_out;
pub mod registry;
mod routes;
pub mod schema_file;
mod standby;
pub mod udp;
pub mod validator;
pub mod verify;
mod web;
