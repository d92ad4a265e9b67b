//! `speedrelay send`: the flags, Ctrl-C, and the printed summary of the
//! load generator ([`speedrelay::loadgen`]).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use speedrelay::loadgen::{Limits, POOL_SIZE, RecordPool, SendError, Sender, load_schema, seed};

/// `speedrelay send …`
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// Destination UDP port (the channel's port).
    #[arg(long)]
    pub port: u16,
    /// Avro schema file of the channel (.avsc).
    #[arg(long)]
    pub schema: PathBuf,
    /// Destination host: an IP address or a name.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Records per second; 0 sends as fast as possible (flood).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds. Without --count or --duration, send
    /// until interrupted (Ctrl-C).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<f64>,
}

fn parse_duration(s: &str) -> Result<f64, String> {
    // Also refuses what Duration cannot hold, or a deadline now + d cannot.
    const MAX_SECS: f64 = 100.0 * 365.0 * 86_400.0;
    match s.parse::<f64>() {
        Ok(v) if (0.0..=MAX_SECS).contains(&v) => Ok(v),
        _ => Err("must be a number of seconds from 0 to 100 years".into()),
    }
}

/// Set by SIGINT/SIGTERM: finish the current batch, then report.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_stop_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // The handler only stores to an atomic (async-signal-safe). No
        // SA_RESTART, but interrupted calls are retried anyway
        // (`udp::retry_eintr`, std's sleep): the send loop sees STOP
        // between batches.
        // SAFETY: all-zero is a valid sigaction (no flags, empty mask).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        // SAFETY: `sa_mask` is a sigset_t of this live struct.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: a valid sigaction for a handler that is async-signal-safe
        // (see above); no old action asked for.
        unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) };
    }
}

/// Runs `speedrelay send`: prints the achieved rate on stdout at the end.
pub fn run(args: SendArgs) -> Result<(), SendError> {
    let schema = load_schema(&args.schema)?;
    let pool = RecordPool::generate(&schema, POOL_SIZE, seed())?;
    let addr = resolve(&args.host, args.port)?;
    install_stop_handler();
    let pace = match args.rate {
        0 => "as fast as possible".to_string(),
        r => format!("at {r} records/s"),
    };
    eprintln!(
        "speedrelay: sending random records of {} to {addr} {pace}; Ctrl-C stops",
        args.schema.display()
    );
    let limits = Limits {
        rate: args.rate,
        count: args.count,
        duration: args.duration.map(Duration::from_secs_f64),
    };
    let report = Sender::connect(addr, pool)?.run(limits, &STOP)?;
    if report.all_refused() {
        return Err(SendError::AllRefused {
            addr,
            port: args.port,
            sent: report.records,
        });
    }
    let summary = format!(
        "sent {} records ({}) to {addr} in {:.3} s: {:.0} records/s\n",
        report.records,
        super::channels::human_bytes(report.bytes),
        report.elapsed.as_secs_f64(),
        report.rate()
    );
    // A closed stdout (`| head`) must not turn a finished run into a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), summary.as_bytes());
    if report.refused > 0 {
        eprintln!(
            "speedrelay: {addr} refused {} of the {} records: is a channel listening on port {}?",
            report.refused, report.records, args.port
        );
    }
    Ok(())
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, SendError> {
    let resolve_error = |reason: String| SendError::Resolve {
        host: host.to_string(),
        reason,
    };
    (host, port)
        .to_socket_addrs()
        .map_err(|e| resolve_error(e.to_string()))?
        .next()
        .ok_or_else(|| resolve_error("no address".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_a_deadline_cannot_hold_are_refused() {
        assert_eq!(parse_duration("2.5"), Ok(2.5));
        assert_eq!(parse_duration("0"), Ok(0.0));
        for bad in ["1e19", "1e20", "inf", "NaN", "-1", "soon"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
