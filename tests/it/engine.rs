//! The engine (SPEC §5, §6): registration is atomic and durable, channels
//! come back after a restart, failures are contained and retried.

use crate::common;

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use speedrelay::channel::ChannelSpec;
use speedrelay::config::files::Seed;
use speedrelay::engine::{Engine, EngineError, EngineOptions, Registration, Status};

const T: Duration = Duration::from_secs(20);

fn defaults(extra: Value) -> Value {
    let mut d = json!({
        "socket": {"bind": "127.0.0.1"},
        "decimation": {"enabled": false},
        "archive": {"flush_ms": 50}
    });
    speedrelay::config::merge(&mut d, extra);
    d
}

async fn engine(dir: &Path, baseline: &[ChannelSpec]) -> Arc<Engine> {
    let options = EngineOptions::new(dir.to_path_buf(), defaults(json!({})));
    let seeds: Vec<Seed> = baseline.iter().cloned().map(Seed::from).collect();
    Engine::start(options, &seeds).await.expect("engine starts")
}

fn registration(name: &str, port: u16, dest_port: Option<u16>) -> Registration {
    Registration {
        name: name.into(),
        port,
        schema_json: EXAMPLE_SCHEMA.into(),
        schema_path: None,
        config: dest_port
            .map(|p| json!({"outputs": {"full_rate": {"address": "127.0.0.1", "port": p}}})),
    }
}

/// Sends `records` to `port` and asserts they all arrive at `dest`.
async fn assert_relays(port: u16, dest: UdpSocket, records: Vec<Vec<u8>>) -> UdpSocket {
    tokio::task::spawn_blocking(move || {
        let tx = sender();
        for chunk in records.chunks(50) {
            for r in chunk {
                tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
            }
            assert_eq!(recv_n(&dest, chunk.len()), chunk);
        }
        dest
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_channel_relays_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), &[]).await;
    let (dest, d) = receiver();
    let port = free_port();
    let info = e
        .register(registration("now", port, Some(d.port)))
        .await
        .unwrap();
    assert_eq!(info.status, Status::Active);
    // No pause between the answer and the first datagram.
    assert_relays(port, dest, example_records(200)).await;
    // Counters are added just after a batch is sent.
    wait_until("the counters", T, || {
        e.get("now").is_some_and(|c| c.stats.forwarded == 200)
    })
    .await;
    assert_eq!(e.list().len(), 1);
    e.shutdown().await;
    assert_eq!(
        archived_datums(dir.path(), "now", EXAMPLE_SCHEMA),
        example_records(200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), &[]).await;
    let taken = free_port();
    e.register(registration("first", taken, None))
        .await
        .unwrap();
    let long = "a".repeat(65);
    let cases: Vec<(Registration, &str)> = vec![
        (registration("", free_port(), None), "name"),
        (registration(&long, free_port(), None), "name"),
        (registration("a/b", free_port(), None), "name"),
        (registration("..", free_port(), None), "name"),
        (registration("zero", 0, None), "port"),
        (
            Registration {
                schema_json: "not json".into(),
                ..registration("s1", free_port(), None)
            },
            "schema",
        ),
        (
            Registration {
                schema_json: r#"{"type":"recordd"}"#.into(),
                ..registration("s2", free_port(), None)
            },
            "schema",
        ),
        (
            Registration {
                config: Some(json!({"decimashun": 3})),
                ..registration("c1", free_port(), None)
            },
            "config",
        ),
        (
            Registration {
                config: Some(json!({"decimation": {"algorithm": "median"}})),
                ..registration("c2", free_port(), None)
            },
            "config",
        ),
    ];
    for (r, field) in cases {
        let name = r.name.clone();
        match e.register(r).await {
            Err(EngineError::Invalid { field: f, .. }) => {
                assert!(f.starts_with(field), "{name}: {f} is not under {field}")
            }
            other => panic!("{name}: expected invalid {field}, got {other:?}"),
        }
    }
    match e.register(registration("first", free_port(), None)).await {
        Err(EngineError::Conflict { .. }) => {}
        other => panic!("duplicate name: {other:?}"),
    }
    match e.register(registration("second", taken, None)).await {
        Err(EngineError::Conflict { used_by, .. }) => assert_eq!(used_by.as_deref(), Some("first")),
        other => panic!("duplicate port: {other:?}"),
    }
    assert_eq!(e.list().len(), 1);
    assert_eq!(e.registry().len().unwrap(), 1);
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_held_by_another_program_is_a_conflict_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), &[]).await;
    let holder = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = holder.local_addr().unwrap().port();
    match e.register(registration("blocked", port, None)).await {
        Err(EngineError::Conflict { message, .. }) => {
            assert!(message.contains(&port.to_string()), "{message}")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(e.list().is_empty());
    assert_eq!(e.registry().len().unwrap(), 0);
    assert!(e.registry().port_owner(port).unwrap().is_none());
    drop(holder);
    // Once the port is free the same registration succeeds.
    e.register(registration("blocked", port, None))
        .await
        .unwrap();
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_stops_the_channel_and_frees_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), &[]).await;
    let port = free_port();
    e.register(registration("gone", port, None)).await.unwrap();
    let records = example_records(100);
    let tx = sender();
    for r in &records {
        tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
    }
    e.deregister("gone").await.unwrap();
    assert!(e.get("gone").is_none());
    assert!(matches!(
        e.deregister("gone").await,
        Err(EngineError::NotFound { .. })
    ));
    // The archive is closed and complete, the port bindable again.
    assert_eq!(archived_datums(dir.path(), "gone", EXAMPLE_SCHEMA), records);
    UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).expect("port released");
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_come_back_after_a_restart_and_deleted_baseline_ones_stay_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let base_port = free_port();
    let mut settings = speedrelay::config::settings_from(&defaults(json!({}))).unwrap();
    settings.decimation.factor = 4;
    let baseline = vec![
        ChannelSpec {
            name: "base".into(),
            port: base_port,
            schema_json: EXAMPLE_SCHEMA.into(),
            settings: settings.clone(),
        },
        ChannelSpec {
            name: "kept".into(),
            port: free_port(),
            schema_json: EXAMPLE_SCHEMA.into(),
            settings,
        },
    ];
    let (dest, d) = receiver();
    let api_port = free_port();
    {
        let e = engine(dir.path(), &baseline).await;
        assert_eq!(e.list().len(), 2);
        let mut r = registration("api", api_port, Some(d.port));
        r.config = Some(
            json!({"outputs": {"full_rate": {"address": "127.0.0.1", "port": d.port}}, "decimation": 7}),
        );
        e.register(r).await.unwrap();
        e.deregister("base").await.unwrap();
        assert_relays(api_port, dest.try_clone().unwrap(), example_records(50)).await;
        e.shutdown().await;
    }
    // The first run's file, closed with its records.
    let first = archive_files(dir.path(), "api");
    assert_eq!(first.len(), 1);
    let first_bytes = std::fs::read(&first[0]).unwrap();
    assert_eq!(
        archived_datums(dir.path(), "api", EXAMPLE_SCHEMA),
        example_records(50)
    );
    let e = engine(dir.path(), &baseline).await;
    let names: Vec<String> = e.list().into_iter().map(|c| c.name).collect();
    assert_eq!(names, vec!["api", "kept"]);
    let api = e.get("api").unwrap();
    assert_eq!(api.status, Status::Active);
    assert_eq!(
        api.config.decimation.factor, 7,
        "config survives the restart"
    );
    let later: Vec<Vec<u8>> = example_records(150).split_off(50);
    assert_relays(api_port, dest, later.clone()).await;
    e.shutdown().await;
    // A new archive file was started for the second run; the first one
    // was left byte for byte as it was.
    let files = archive_files(dir.path(), "api");
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[0], first[0]);
    assert!(std::fs::read(&files[0]).unwrap() == first_bytes);
    let file = std::fs::File::open(&files[1]).unwrap();
    let s = schema(EXAMPLE_SCHEMA);
    let second: Vec<Vec<u8>> = apache_avro::Reader::new(std::io::BufReader::new(file))
        .unwrap()
        .map(|v| encode(&s, v.unwrap()))
        .collect();
    assert!(
        second == later,
        "the second file holds the second run's records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_whose_port_is_busy_at_start_fails_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let holder = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = holder.local_addr().unwrap().port();
    let (dest, d) = receiver();
    let mut settings = speedrelay::config::settings_from(&defaults(json!({}))).unwrap();
    settings.outputs.full_rate = vec![d];
    let other_port = free_port();
    let baseline = vec![
        ChannelSpec {
            name: "busy".into(),
            port,
            schema_json: EXAMPLE_SCHEMA.into(),
            settings: settings.clone(),
        },
        ChannelSpec {
            name: "fine".into(),
            port: other_port,
            schema_json: EXAMPLE_SCHEMA.into(),
            settings,
        },
    ];
    let e = engine(dir.path(), &baseline).await;
    let busy = e.get("busy").unwrap();
    assert!(busy.error.unwrap().contains(&port.to_string()));
    assert_eq!(busy.status, Status::Failed);
    assert_eq!(
        e.get("fine").unwrap().status,
        Status::Active,
        "the others start normally"
    );
    drop(holder);
    wait_until("busy to recover", T, || {
        e.get("busy").is_some_and(|c| c.status == Status::Active)
    })
    .await;
    assert_relays(port, dest, example_records(50)).await;
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_applies_live_and_loses_no_full_rate_record() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), &[]).await;
    let (dest, d) = receiver();
    let port = free_port();
    e.register(registration("live", port, Some(d.port)))
        .await
        .unwrap();
    // A continuous stream: the sender never pauses for the update, which
    // lands while chunk 10 of 40 is in flight.
    let records = example_records(2000);
    let (halfway, reached) = tokio::sync::oneshot::channel();
    let sent = records.clone();
    let stream = tokio::task::spawn_blocking(move || {
        let tx = sender();
        let mut got = Vec::new();
        let mut halfway = Some(halfway);
        for (i, chunk) in sent.chunks(50).enumerate() {
            if i == 10 {
                let _ = halfway.take().map(|h| h.send(()));
            }
            for r in chunk {
                tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
            }
            got.extend(recv_n(&dest, chunk.len()));
        }
        got
    });
    reached.await.unwrap();
    let info = e
        .update(
            "live",
            json!({"decimation": {"enabled": true, "factor": 3}}),
        )
        .await
        .unwrap();
    assert_eq!(info.config.decimation.factor, 3);
    assert!(info.config.decimation.enabled);
    assert!(
        stream.await.unwrap() == records,
        "every full-rate record arrived, in order"
    );
    assert!(matches!(
        e.update("nope", json!({})).await,
        Err(EngineError::NotFound { .. })
    ));
    assert!(matches!(
        e.update("live", json!({"decimation": {"factor": "x"}}))
            .await,
        Err(EngineError::Invalid { .. })
    ));
    assert_eq!(
        e.get("live").unwrap().config.decimation.factor,
        3,
        "a bad update changes nothing"
    );
    e.shutdown().await;
    drop(e);
    let e = engine(dir.path(), &[]).await;
    assert_eq!(
        e.get("live").unwrap().config.decimation.factor,
        3,
        "the update is durable"
    );
    e.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path(), &[]).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let e = e.clone();
        let port = free_port();
        tasks.push(tokio::spawn(async move {
            e.register(registration(&format!("c{i}"), port, None)).await
        }));
    }
    for t in tasks {
        t.await
            .unwrap()
            .expect("distinct registrations all succeed");
    }
    assert_eq!(e.list().len(), 50);
    let contested = free_port();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            e.register(registration(&format!("race{i}"), contested, None))
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1, "exactly one registration wins a port");
    assert_eq!(e.registry().len().unwrap(), 51);
    e.shutdown().await;
}
