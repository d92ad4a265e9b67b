//! The integration tests, as one test binary: each module below was its own
//! binary once, and each linked the whole crate; one binary links it once.
//! Run one module with `./tests/run.sh NAME::` (a test-name filter), e.g.
//! `./tests/run.sh channel::`.

mod common;

mod api;
mod api_connections;
mod archive;
mod backoff;
mod batching;
mod channel;
mod check_config;
mod cli;
mod coalesce;
// Real nats-server processes: with `--features cluster` only.
#[cfg(feature = "cluster")]
mod cluster;
// Three hosts in network namespaces: with `--features cluster` only.
#[cfg(feature = "cluster")]
mod cluster_net;
mod crash;
mod decimation;
mod engine;
mod faults;
mod fuzz_corpus;
mod gso;
mod hostile_http;
mod live_patch;
mod load;
mod metrics;
#[cfg(feature = "cluster")]
mod nats_out;
mod plots;
mod registry;
mod registry_cli;
mod reliability;
mod routes;
mod security;
mod send;
mod serve;
mod serve_settings;
mod service;
mod shipped_config;
mod speeddata;
mod validate_off;
mod validator_limits;
mod verify;
mod web;
