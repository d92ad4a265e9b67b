//! The HTTP API (SPEC §5), driven over real loopback HTTP against a real
//! engine: every route, the schema checks, the port queries, and the bad
//! input that must be a 4xx and change nothing.

use crate::common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use serde_json::{Value, json};
use speedrelay::api::{ApiOptions, serve};
use speedrelay::engine::{Engine, EngineOptions};
use tokio_util::sync::CancellationToken;

/// A running engine and API on an ephemeral loopback port.
struct Server {
    addr: SocketAddr,
    engine: Arc<Engine>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Sent as a bearer token by the convenience helpers when set.
    token: Option<String>,
    config_dir: PathBuf,
    _dir: tempfile::TempDir,
}

async fn server(token: Option<&str>) -> Server {
    server_with(token, None).await
}

async fn server_with(token: Option<&str>, ports: Option<(u16, u16)>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("example.avsc"), EXAMPLE_SCHEMA).unwrap();
    std::fs::write(config_dir.join("notjson.avsc"), "this is not json").unwrap();
    std::fs::write(dir.path().join("secret.avsc"), EXAMPLE_SCHEMA).unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.avsc"), config_dir.join("link.avsc"))
        .unwrap();
    let options = EngineOptions::new(
        data_dir,
        json!({
            "socket": {"bind": "127.0.0.1"},
            "decimation": {"enabled": false},
            "archive": {"flush_ms": 50}
        }),
    );
    let engine = Engine::start(options, &[]).await.expect("engine starts");
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let api = ApiOptions {
        token: token.map(str::to_string),
        config_dir: Some(config_dir.clone()),
        ports,
        max_connections: 64,
        ..ApiOptions::default()
    };
    let task = tokio::spawn(serve(listener, engine.clone(), api, shutdown.clone()));
    Server {
        addr,
        engine,
        shutdown,
        task,
        token: token.map(str::to_string),
        config_dir,
        _dir: dir,
    }
}

impl Server {
    /// A raw request: exactly the given headers (no token added).
    async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let addr = self.addr;
        let method = method.to_string();
        let path = path.to_string();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tokio::task::spawn_blocking(move || http(addr, &method, &path, &headers, body.as_deref()))
            .await
            .unwrap()
    }

    fn auth(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// `method /api/v1{path}` with no body.
    async fn call(&self, method: &str, path: &str) -> (u16, Value) {
        let auth = self.auth();
        let mut h = vec![];
        if let Some(a) = &auth {
            h.push(("Authorization", a.as_str()));
        }
        self.raw(method, &format!("/api/v1{path}"), &h, None).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path).await
    }

    /// `method /api/v1{path}` with a JSON body.
    async fn send(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        self.send_bytes(method, path, body.to_string().into_bytes())
            .await
    }

    async fn send_bytes(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        let auth = self.auth();
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            h.push(("Authorization", a.as_str()));
        }
        self.raw(method, &format!("/api/v1{path}"), &h, Some(body))
            .await
    }

    async fn names(&self) -> Vec<String> {
        let (status, body) = self.get("/channels").await;
        assert_eq!(status, 200, "{body}");
        body["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        self.engine.shutdown().await;
    }
}

fn inline(name: &str, port: u16) -> Value {
    json!({"name": name, "port": port, "schema": serde_json::from_str::<Value>(EXAMPLE_SCHEMA).unwrap()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers() {
    let s = server(None).await;
    let (status, body) = s.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["service"], "speedrelay");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_relays_at_once_then_list_get_schema_delete() {
    let s = server(None).await;
    let (dest, d) = receiver();
    let port = free_port();
    let mut body = inline("live", port);
    body["config"] = json!({"outputs": {"full_rate": {"address": "127.0.0.1", "port": d.port}}});
    let (status, reply) = s.send("POST", "/channels", &body).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["status"], "success");
    assert_eq!(reply["name"], "live");
    assert_eq!(reply["port"], port);
    assert_eq!(reply["pid"], std::process::id());
    assert!(reply["message"].is_string());

    // No pause between the 201 and the first datagram.
    let records = example_records(100);
    let sent = records.clone();
    let got = tokio::task::spawn_blocking(move || {
        let tx = sender();
        for r in &sent {
            tx.send_to(r, (Ipv4Addr::LOCALHOST, port)).unwrap();
        }
        recv_n(&dest, sent.len())
    })
    .await
    .unwrap();
    assert_eq!(got, records);

    let (status, list) = s.get("/channels").await;
    assert_eq!(status, 200);
    assert_eq!(list["channels"].as_array().unwrap().len(), 1);
    let (_, active) = s.get("/channels?status=active").await;
    assert_eq!(active["channels"].as_array().unwrap().len(), 1);
    let (_, failed) = s.get("/channels?status=failed").await;
    assert_eq!(failed["channels"].as_array().unwrap().len(), 0);
    let (status, err) = s.get("/channels?status=sleepy").await;
    assert_eq!(status, 400);
    assert_eq!(err["field"], "status");

    let (status, ch) = s.get("/channels/live").await;
    assert_eq!(status, 200);
    assert_eq!(ch["name"], "live");
    assert_eq!(ch["port"], port);
    assert_eq!(ch["status"], "active");
    let created = ch["created_at"].as_str().unwrap();
    assert_eq!(created.len(), "YYYY-MM-DD HH:MM:SS".len(), "{created}");
    assert!(ch["created_at_ms"].is_u64());
    assert!(ch["config"].is_object());
    assert_eq!(ch["stats"]["forwarded"], 100);

    let (status, schema) = s.get("/channels/live/schema").await;
    assert_eq!(status, 200);
    assert_eq!(
        schema,
        serde_json::from_str::<Value>(EXAMPLE_SCHEMA).unwrap()
    );

    let (status, reply) = s.call("DELETE", "/channels/live").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "success");
    assert_eq!(reply["name"], "live");
    assert!(s.names().await.is_empty());
    // The port is released.
    UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).expect("port released");
    s.stop().await;
}

/// A schema given by path is read from the config directory and stored:
/// the channel validates with that file's schema, and keeps it after the
/// file is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_by_path_inside_the_config_dir() {
    let s = server(None).await;
    let file = s.config_dir.join("numeric.avsc");
    std::fs::write(&file, NUMERIC_SCHEMA).unwrap();
    let port = free_port();
    let body = json!({"name": "bypath", "port": port, "schema": "numeric.avsc"});
    let (status, reply) = s.send("POST", "/channels", &body).await;
    assert_eq!(status, 201, "{reply}");
    std::fs::remove_file(&file).unwrap();
    let (_, ch) = s.get("/channels/bypath").await;
    assert_eq!(ch["schema_path"], "numeric.avsc");
    let (status, served) = s.get("/channels/bypath/schema").await;
    assert_eq!(status, 200);
    assert_eq!(
        served,
        serde_json::from_str::<Value>(NUMERIC_SCHEMA).unwrap()
    );
    // A record of the file's schema is valid, one of example.avsc is not.
    let numeric = encode(
        &schema(NUMERIC_SCHEMA),
        apache_avro::types::Value::Record(vec![
            (
                "label".into(),
                apache_avro::types::Value::String("n".into()),
            ),
            ("i".into(), apache_avro::types::Value::Int(1)),
            ("l".into(), apache_avro::types::Value::Long(2)),
            ("f".into(), apache_avro::types::Value::Float(3.0)),
            ("d".into(), apache_avro::types::Value::Double(4.0)),
        ]),
    );
    let tx = sender();
    tx.send_to(&numeric, (Ipv4Addr::LOCALHOST, port)).unwrap();
    tx.send_to(&example_records(1)[0], (Ipv4Addr::LOCALHOST, port))
        .unwrap();
    wait_until(
        "both datagrams counted",
        std::time::Duration::from_secs(20),
        || s.engine.get("bypath").is_some_and(|c| c.stats.packets == 2),
    )
    .await;
    let stats = s.engine.get("bypath").unwrap().stats;
    assert_eq!(stats.invalid, 1, "{stats:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_applies_config() {
    let s = server(None).await;
    let (status, _) = s.send("POST", "/channels", &inline("p", free_port())).await;
    assert_eq!(status, 201);
    let patch = json!({"decimation": {"enabled": true, "factor": 7}});
    let (status, ch) = s.send("PATCH", "/channels/p", &patch).await;
    assert_eq!(status, 200, "{ch}");
    assert_eq!(ch["config"]["decimation"]["factor"], 7);
    assert_eq!(ch["config"]["decimation"]["enabled"], true);
    let (_, again) = s.get("/channels/p").await;
    assert_eq!(again["config"]["decimation"]["factor"], 7);

    let (status, err) = s
        .send("PATCH", "/channels/p", &json!({"decimashun": 3}))
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(err["field"].as_str().unwrap().starts_with("config"));
    let (status, err) = s.send("PATCH", "/channels/p", &json!([1, 2])).await;
    assert_eq!(status, 400, "{err}");
    let (_, again) = s.get("/channels/p").await;
    assert_eq!(again["config"]["decimation"]["factor"], 7);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_schema_by_resolution() {
    let s = server(None).await;
    let (status, _) = s.send("POST", "/channels", &inline("v", free_port())).await;
    assert_eq!(status, 201);
    let base: Value = serde_json::from_str(EXAMPLE_SCHEMA).unwrap();
    let path = "/channels/v/validate-schema";

    let (status, r) = s.send("POST", path, &base).await;
    assert_eq!(
        (status, &r["valid"], &r["compatibility"]),
        (200, &json!(true), &json!("identical")),
        "{r}"
    );
    let (status, r) = s.send("POST", path, &json!({"schema": base})).await;
    assert_eq!(
        (status, &r["compatibility"]),
        (200, &json!("identical")),
        "{r}"
    );

    // A new field with a default: each side can read the other's data.
    let mut with_default = base.clone();
    with_default["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "extra", "type": "int", "default": 0}));
    let (status, r) = s.send("POST", path, &with_default).await;
    assert_eq!(
        (status, &r["valid"], &r["compatibility"]),
        (200, &json!(true), &json!("full")),
        "{r}"
    );

    // Without a default, only old readers can read new data.
    let mut no_default = base.clone();
    no_default["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "extra", "type": "int"}));
    let (status, r) = s.send("POST", path, &no_default).await;
    assert_eq!(
        (status, &r["compatibility"]),
        (200, &json!("forward")),
        "{r}"
    );

    // A field changes type.
    let mut changed = base.clone();
    changed["fields"][1]["type"] = json!("int");
    let (status, r) = s.send("POST", path, &changed).await;
    assert_eq!(status, 409, "{r}");
    assert_eq!(r["valid"], false);
    assert!(!r["reasons"].as_array().unwrap().is_empty());

    let (status, r) = s.send("POST", path, &json!({"type": "recordd"})).await;
    assert_eq!(status, 400, "{r}");
    let (status, r) = s.send_bytes("POST", path, b"{nope".to_vec()).await;
    assert_eq!(status, 400, "{r}");
    let (status, _) = s
        .send("POST", "/channels/ghost/validate-schema", &base)
        .await;
    assert_eq!(status, 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_available_and_status() {
    let s = server(None).await;
    let cport = free_port();
    let (status, _) = s.send("POST", "/channels", &inline("holder", cport)).await;
    assert_eq!(status, 201);
    let foreign = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let fport = foreign.local_addr().unwrap().port();
    let free = free_port();

    let (status, r) = s.get(&format!("/ports/{free}/status")).await;
    assert_eq!(status, 200);
    assert_eq!(
        r,
        json!({"port": free, "available": true, "status": "free"})
    );
    let (_, r) = s.get(&format!("/ports/{cport}/status")).await;
    assert_eq!(
        r,
        json!({"port": cport, "available": false, "status": "in_use", "channel": "holder"})
    );
    let (_, r) = s.get(&format!("/ports/{fport}/status")).await;
    assert_eq!(
        r,
        json!({"port": fport, "available": false, "status": "in_use"})
    );

    for (port, free) in [(free, true), (cport, false), (fport, false)] {
        let (status, r) = s
            .get(&format!("/ports/available?start={port}&end={}", port + 1))
            .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["range"], json!({"start": port, "end": port + 1}));
        let listed: Vec<u64> = r["available"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        assert_eq!(listed.contains(&u64::from(port)), free, "{r}");
        assert_eq!(r["count"], listed.len());
    }
    let (status, r) = s.get("/ports/available?start=40000&end=40100").await;
    assert_eq!(status, 200);
    assert!(r["count"].as_u64().unwrap() <= 101);

    for q in [
        "?start=100",
        "?end=100",
        "?start=0&end=10",
        "?start=abc&end=10",
        "?start=200&end=100",
        "?start=1000&end=11001",
        "?start=1&end=70000",
    ] {
        let (status, r) = s.get(&format!("/ports/available{q}")).await;
        assert_eq!(status, 400, "{q}: {r}");
        assert!(r["error"].is_string());
    }
    for p in ["0", "70000", "abc", "-1"] {
        let (status, r) = s.get(&format!("/ports/{p}/status")).await;
        assert_eq!(status, 400, "{p}: {r}");
        assert_eq!(r["field"], "port");
    }
    drop(foreign);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_4xx_and_changes_nothing() {
    let s = server(None).await;
    let taken = free_port();
    let (status, _) = s.send("POST", "/channels", &inline("first", taken)).await;
    assert_eq!(status, 201);
    let foreign = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let fport = foreign.local_addr().unwrap().port();
    let base: Value = serde_json::from_str(EXAMPLE_SCHEMA).unwrap();
    let long = "a".repeat(65);
    let with = |key: &str, value: Value| {
        let mut b = inline("fresh", free_port());
        b[key] = value;
        b
    };
    let without = |key: &str| {
        let mut b = inline("fresh", free_port());
        b.as_object_mut().unwrap().remove(key);
        b
    };
    let cases: Vec<(Value, u16, Option<&str>)> = vec![
        (without("name"), 400, Some("name")),
        (without("port"), 400, Some("port")),
        (without("schema"), 400, Some("schema")),
        (json!([1, 2, 3]), 400, None),
        (json!("just a string"), 400, None),
        (with("port", json!("80a0")), 400, Some("port")),
        (with("port", json!(0)), 400, Some("port")),
        (with("port", json!(70000)), 400, Some("port")),
        (with("port", json!(-5)), 400, Some("port")),
        (with("port", json!(80.5)), 400, Some("port")),
        (with("port", json!(s.addr.port())), 400, Some("port")),
        (with("name", json!("")), 400, Some("name")),
        (with("name", json!(long)), 400, Some("name")),
        (with("name", json!("a/b")), 400, Some("name")),
        (with("name", json!("..")), 400, Some("name")),
        (with("name", json!("../etc")), 400, Some("name")),
        (with("name", json!(7)), 400, Some("name")),
        (with("schema", json!("../secret.avsc")), 400, Some("schema")),
        (with("schema", json!("/etc/passwd")), 400, Some("schema")),
        (with("schema", json!("link.avsc")), 400, Some("schema")),
        (with("schema", json!("missing.avsc")), 400, Some("schema")),
        (with("schema", json!("notjson.avsc")), 400, Some("schema")),
        (with("schema", json!(42)), 400, Some("schema")),
        (with("schema", json!({"foo": "bar"})), 400, Some("schema")),
        (
            with("schema", json!({"type": "recordd"})),
            400,
            Some("schema"),
        ),
        (
            with("config", json!({"decimashun": 3})),
            400,
            Some("config"),
        ),
        (with("config", json!("fast")), 400, Some("config")),
        (inline("first", free_port()), 409, None),
        (inline("other", taken), 409, None),
        (inline("other", fport), 409, None),
    ];
    for (body, want, field) in cases {
        let (status, r) = s.send("POST", "/channels", &body).await;
        assert_eq!(status, want, "{body}: {r}");
        assert!(r["error"].is_string(), "{body}: {r}");
        if let Some(f) = field {
            assert!(
                r["field"].as_str().is_some_and(|x| x.starts_with(f)),
                "{body}: {r}"
            );
        }
    }
    let (_, r) = s.send("POST", "/channels", &inline("other", taken)).await;
    assert_eq!(r["used_by"], "first");

    // A bad destination is named with its list and field, not as a shape
    // that "did not match any variant".
    for (outputs, says) in [
        (
            json!({"full_rate": {"address": "127.0.0.1", "port": 0}}),
            ["/outputs/full_rate/port", "0 is less than the minimum of 1"],
        ),
        (
            json!({"decimated": [{"address": "nope", "port": 9}]}),
            ["/outputs/decimated/0/address", "not a valid ipv4 address"],
        ),
        (
            json!({"full_rate": [{"address": "0.0.0.0", "port": 9}]}),
            ["/outputs/full_rate/0/address", "bind-any"],
        ),
        (
            json!({"full_rate": {"address": "127.0.0.1", "port": 70000}}),
            ["/outputs/full_rate/port", "65535"],
        ),
    ] {
        let body = with("config", json!({"outputs": outputs}));
        let (status, r) = s.send("POST", "/channels", &body).await;
        assert_eq!(status, 400, "{body}: {r}");
        let message = r["error"].as_str().unwrap_or_default();
        for part in says {
            assert!(message.contains(part), "{part:?} not in {r}");
        }
        assert!(!message.contains("variant"), "{r}");
    }

    // Not JSON, wrong content type, too large.
    let (status, r) = s
        .send_bytes("POST", "/channels", b"{name: oops".to_vec())
        .await;
    assert_eq!(status, 400, "{r}");
    let body = inline("typed", free_port()).to_string().into_bytes();
    let (status, r) = s
        .raw(
            "POST",
            "/api/v1/channels",
            &[("Content-Type", "text/plain")],
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 415, "{r}");
    let (status, _) = s.raw("POST", "/api/v1/channels", &[], Some(body)).await;
    assert_eq!(status, 415);
    let mut big = inline("big", free_port());
    big["padding"] = json!("x".repeat(5 << 20));
    let (status, r) = s.send("POST", "/channels", &big).await;
    assert_eq!(status, 413, "{r}");
    let (status, r) = s
        .raw(
            "POST",
            "/api/v1/channels",
            &[
                ("Content-Type", "application/json"),
                ("Transfer-Encoding", "chunked"),
            ],
            Some(big.to_string().into_bytes()),
        )
        .await;
    assert_eq!(status, 413, "{r}");

    // Unknown channel on every route.
    for (method, path) in [
        ("GET", "/channels/ghost"),
        ("DELETE", "/channels/ghost"),
        ("GET", "/channels/ghost/schema"),
    ] {
        let (status, r) = s.call(method, path).await;
        assert_eq!(status, 404, "{method} {path}: {r}");
        assert!(r["error"].is_string());
    }
    let (status, _) = s
        .send("PATCH", "/channels/ghost", &json!({"decimation": 2}))
        .await;
    assert_eq!(status, 404);
    let (status, _) = s
        .send("POST", "/channels/ghost/validate-schema", &base)
        .await;
    assert_eq!(status, 404);

    // Unknown paths and wrong methods.
    let (status, r) = s.raw("GET", "/nowhere", &[], None).await;
    assert_eq!(status, 404, "{r}");
    let (status, _) = s.get("/channels/first/nothing").await;
    assert_eq!(status, 404);
    let (status, r) = s.call("PUT", "/channels").await;
    assert_eq!(status, 405, "{r}");
    let (status, _) = s.call("POST", "/health").await;
    assert_eq!(status, 405);

    assert_eq!(s.names().await, vec!["first".to_string()]);
    let (_, ch) = s.get("/channels/first").await;
    assert_eq!(ch["port"], taken);
    drop(foreign);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_everything_but_health() {
    let s = server(Some("s3cret-token")).await;
    let (status, _) = s.raw("GET", "/api/v1/health", &[], None).await;
    assert_eq!(status, 200);
    let body = inline("guarded", free_port()).to_string().into_bytes();
    let json_ct = ("Content-Type", "application/json");
    for auth in [
        None,
        Some("Bearer wrong-token!"),
        Some("Bearer s3cret"),
        Some("Basic s3cret-token"),
        Some("s3cret-token"),
    ] {
        let mut h = vec![];
        if let Some(a) = auth {
            h.push(("Authorization", a));
        }
        let (status, r) = s.raw("GET", "/api/v1/channels", &h, None).await;
        assert_eq!(status, 401, "{auth:?}: {r}");
        assert!(r["error"].is_string());
        h.push(json_ct);
        let (status, _) = s
            .raw("POST", "/api/v1/channels", &h, Some(body.clone()))
            .await;
        assert_eq!(status, 401, "{auth:?}");
        let (status, _) = s.raw("GET", "/api/v1/ports/80/status", &h, None).await;
        assert_eq!(status, 401, "{auth:?}");
    }
    assert!(s.names().await.is_empty());
    let (status, r) = s
        .send("POST", "/channels", &inline("guarded", free_port()))
        .await;
    assert_eq!(status, 201, "{r}");
    assert_eq!(s.names().await, vec!["guarded".to_string()]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_outside_the_configured_range_are_refused() {
    let port = free_port();
    let s = server_with(None, Some((port, port))).await;
    let other = if port > 1024 { port - 1 } else { port + 1 };
    let (status, r) = s.send("POST", "/channels", &inline("out", other)).await;
    assert_eq!(status, 400, "{r}");
    assert_eq!(r["field"], "port");
    assert!(s.names().await.is_empty());
    let (status, r) = s.send("POST", "/channels", &inline("in", port)).await;
    assert_eq!(status, 201, "{r}");
    s.stop().await;
}
