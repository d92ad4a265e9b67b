//! The supervisor's backoff, followed through its log lines on tokio's
//! paused clock. In a test binary of its own: the log is captured with a
//! thread-local subscriber, and tracing's per-callsite interest cache can
//! turn the callsite off when another test's thread (with no subscriber)
//! hits it first.

use crate::common;

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use speedrelay::channel::ChannelSpec;
use speedrelay::config::files::Seed;
use speedrelay::engine::{Engine, EngineOptions, Status};

/// A channel that cannot start is retried after 0.1 s, then each wait
/// doubles, up to 30 s: followed on tokio's paused clock, which moves on
/// whenever every task waits, through the supervisor's own log lines.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failing_channel_is_retried_with_backoff_doubling_to_30_s() {
    #[derive(Clone, Default)]
    struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let log = Lines::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let retries = || -> Vec<String> {
        String::from_utf8_lossy(&log.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains("channel failed to start"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("retry_in="))
                    .map(str::to_string)
            })
            .collect()
    };

    let dir = tempfile::tempdir().unwrap();
    let holder = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = holder.local_addr().unwrap().port();
    let settings = speedrelay::config::settings_from(
        &json!({"socket": {"bind": "127.0.0.1"}, "decimation": {"enabled": false}}),
    )
    .unwrap();
    let baseline = [ChannelSpec {
        name: "busy".into(),
        port,
        schema_json: EXAMPLE_SCHEMA.into(),
        settings,
    }];
    let options = EngineOptions::new(
        dir.path(),
        json!({"socket": {"bind": "127.0.0.1"}, "decimation": {"enabled": false}}),
    );
    let seeds: Vec<Seed> = baseline.iter().cloned().map(Seed::from).collect();
    let e = Engine::start(options, &seeds).await.expect("engine starts");
    let started = tokio::time::Instant::now();
    while retries().len() < 13 {
        // Paused time: a missing log line fails here instead of spinning.
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "retries seen: {:?}",
            retries()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = retries();
    assert_eq!(
        seen[..13],
        [
            "100ms", "200ms", "400ms", "800ms", "1.6s", "3.2s", "6.4s", "12.8s", "25.6s", "30s",
            "30s", "30s", "30s"
        ],
        "{seen:?}"
    );
    // The waits really were taken: 0.1 s doubling to 25.6 s, then 30 s x 3.
    assert!(started.elapsed() >= Duration::from_millis(51_100 + 90_000));
    assert_eq!(e.get("busy").unwrap().status, Status::Failed);
    drop(holder);
    wait_until(
        "the channel to start once the port is free",
        Duration::from_secs(60),
        || e.get("busy").is_some_and(|c| c.status == Status::Active),
    )
    .await;
    e.shutdown().await;
}
