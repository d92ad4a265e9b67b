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
//! ([`web`]) and [`top`] show both.
//!
//! The Avro wire format they share — varints, the container file's header
//! and blocks, the block codecs — has one home, [`avro`]; [`verify`] reads
//! archive files back through it, and [`send`] encodes demo records with it.

pub mod api;
pub mod archive;
pub mod avro;
pub mod channel;
pub mod client;
pub mod config;
pub mod counters;
pub mod decimator;
pub mod descriptors;
pub mod engine;
pub mod history;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod registry;
pub mod schema_file;
pub mod send;
pub mod top;
pub mod udp;
pub mod validator;
pub mod verify;
pub mod web;
