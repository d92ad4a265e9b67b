//! `speedrelay check-config`: a configuration checked, every violation
//! printed, the exit status 0/1/2.

use std::path::Path;
use std::process::ExitCode;

use speedrelay::config::files::{self, ConfigError};

/// `speedrelay check-config PATH`: `PATH: ok (N channels)` and 0; every
/// violation on stdout and 1; a file that cannot be read, 2.
pub fn check_config(path: &Path) -> ExitCode {
    match files::load(path) {
        Ok(b) => {
            let n = b.channels.len();
            let plural = if n == 1 { "" } else { "s" };
            println!("{}: ok ({n} channel{plural})", path.display());
            ExitCode::SUCCESS
        }
        Err(e @ ConfigError::Read { .. }) => {
            eprintln!("speedrelay: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            // Violations, or a YAML syntax error: the config itself is wrong.
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}
