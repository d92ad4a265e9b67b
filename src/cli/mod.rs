//! The command line's subcommands that are more than a call into the
//! library: argument types, printing and exit codes.

pub mod registry;
