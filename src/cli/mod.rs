//! The command line's subcommands, one file each: flags (clap), printing
//! and exit statuses. The library does the work; nothing here is on the
//! relay's data path.

pub mod channels;
pub mod check_config;
pub mod client;
pub mod registry;
pub mod send;
pub mod serve;
#[cfg(feature = "cluster")]
pub mod subscribe;
pub mod top;
pub mod verify;
