//! The HTTP API (SPEC §5): JSON routes under `/api/v1` that register,
//! inspect, reconfigure and remove channels on a running [`Engine`].
//!
//! One hyper HTTP/1 connection per accepted socket, bounded by a semaphore;
//! when every slot is taken, the oldest connection that is not inside a
//! request is closed to make room, so idle or trickling clients cannot lock
//! others out. Headers and bodies must arrive within a time limit. Every
//! answer, errors included, is a JSON document. Bad input is always a
//! 4xx and changes no state: everything is checked before the engine is
//! asked to do anything.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue,
    ORIGIN, VARY,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::{Engine, EngineError, Registration, check_name};
use crate::metrics::{self, RequestCounts};
use crate::routes::{PREFIX, Route};

/// The API's connection cap unless configured otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Requests with a larger body get 413.
pub(crate) const MAX_BODY: usize = 2 * 1024 * 1024;
/// The range `GET /ports/available` scans when none is given or configured:
/// SpeedData's.
pub(crate) const DEFAULT_PORTS: (u16, u16) = (26000, 27000);
/// The widest range `GET /ports/available` scans.
pub(crate) const MAX_PORT_SPAN: u32 = 10_000;
/// A client must send its request headers within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request body must arrive within this time once its headers have.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection's read buffer (request line and headers) stays below this;
/// larger headers get 431. Keeps 256 connections' buffers to a few MiB.
const MAX_READ_BUFFER: usize = 64 * 1024;
/// How long open connections get to finish once shutdown is requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a client waiting for a connection slot looks for an idle
/// connection to close.
const EVICT_RETRY: Duration = Duration::from_millis(100);
/// How long reading a registration's schema file may take before the
/// request is answered 400 (a slow network filesystem, say).
const SCHEMA_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Schema reads that may be under way at once. A read stuck on a dead
/// filesystem holds its slot until it returns; once all are stuck, further
/// registrations by path get 503 instead of piling up blocked threads.
const SCHEMA_READS: usize = 4;

/// How the API is run.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// When set, every request but `GET /api/v1/health` must carry
    /// `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// The only directory schema paths given to `POST /channels` may name.
    pub config_dir: Option<PathBuf>,
    /// When set, the inclusive range new channels' ports must lie in.
    pub ports: Option<(u16, u16)>,
    /// At most this many connections are open at once. A new one beyond it
    /// closes the oldest connection that is not inside a request; when every
    /// one is, the new one waits in the listen backlog.
    pub max_connections: usize,
    /// Host names accepted in the `Host` header besides IP literals and
    /// `localhost` (a defence against DNS rebinding). Lower case, no port.
    pub allowed_hosts: Vec<String>,
    /// Origins whose pages may call the API (CORS); `*` is any origin.
    /// Empty: no cross-origin calls.
    pub cors_origins: Vec<String>,
    /// How long a schema file named by `POST /channels` may take to read.
    pub schema_read_timeout: Duration,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            token: None,
            config_dir: None,
            ports: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            allowed_hosts: Vec::new(),
            cors_origins: Vec::new(),
            schema_read_timeout: SCHEMA_READ_TIMEOUT,
        }
    }
}

/// Serves the API on `listener` until `shutdown` is cancelled, then lets
/// open connections finish their current request (for a bounded time).
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    options: ApiOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limit = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let own_port = listener.local_addr()?.port();
    let api = Arc::new(Api {
        engine,
        options,
        own_port,
        requests: RequestCounts::default(),
        schema_reads: Arc::new(Semaphore::new(SCHEMA_READS)),
        shutdown: shutdown.clone(),
    });
    let tracker = TaskTracker::new();
    let open = Arc::new(OpenConnections::default());
    let mut backoff = Duration::from_millis(10);
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "api: accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(10);
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => break,
            Err(TryAcquireError::NoPermits) => {
                // Full: make room by closing an idle connection. When every
                // one is inside a request, wait, and look again now and then:
                // a connection that finishes its request and stays open
                // idle gives back no permit.
                let permit = loop {
                    open.evict_oldest_idle();
                    tokio::select! {
                        _ = shutdown.cancelled() => break None,
                        p = limit.clone().acquire_owned() => break p.ok(),
                        _ = tokio::time::sleep(EVICT_RETRY) => {}
                    }
                };
                match permit {
                    Some(p) => p,
                    None => break,
                }
            }
        };
        let api = api.clone();
        let shutdown = shutdown.clone();
        let slot = open.add();
        tracker.spawn(async move {
            let _permit = permit;
            let in_service = slot.clone();
            let service = service_fn(move |req| {
                let api = api.clone();
                let slot = in_service.clone();
                async move {
                    slot.busy.store(true, Ordering::Relaxed);
                    let resp = api.handle(req, &slot.evict).await;
                    slot.busy.store(false, Ordering::Relaxed);
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_READ_BUFFER)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                // Dropping the connection closes the socket.
                _ = slot.evict.cancelled() => Ok(()),
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "api: connection ended with an error");
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait()).await;
    Ok(())
}

/// One open connection, as the accept loop sees it when it needs room.
#[derive(Default)]
struct Connection {
    /// True while a request is being handled (its body read included).
    busy: AtomicBool,
    /// Cancelled to close the connection and free its slot.
    evict: CancellationToken,
}

/// The open connections, oldest first; entries of closed ones are pruned
/// whenever room is needed.
#[derive(Default)]
struct OpenConnections {
    list: Mutex<VecDeque<Weak<Connection>>>,
}

impl OpenConnections {
    fn add(&self) -> Arc<Connection> {
        let conn = Arc::new(Connection::default());
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        // Pruned here too, so the list stays bounded without pressure.
        if list.len() >= 1024 {
            list.retain(|w| w.strong_count() > 0);
        }
        list.push_back(Arc::downgrade(&conn));
        conn
    }

    /// Closes the oldest connection that waits for a request (idle
    /// keep-alive, or headers still arriving), if there is one. An evicted
    /// connection leaves the list here, so it is never picked twice.
    fn evict_oldest_idle(&self) {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|w| w.strong_count() > 0);
        let victim = list
            .iter()
            .position(|w| w.upgrade().is_some_and(|c| !c.busy.load(Ordering::Relaxed)));
        if let Some(conn) = victim
            .and_then(|i| list.remove(i))
            .and_then(|w| w.upgrade())
        {
            conn.evict.cancel();
        }
    }
}

/// What every request handler shares.
struct Api {
    engine: Arc<Engine>,
    options: ApiOptions,
    /// The API's own TCP port: refused for a channel, to keep the two apart.
    own_port: u16,
    /// Answers given, by route template and status, for `/metrics`.
    requests: RequestCounts,
    /// Slots for schema file reads on the blocking pool ([`SCHEMA_READS`]).
    schema_reads: Arc<Semaphore>,
    /// Ends live streams at shutdown, which would otherwise hold their
    /// connections open until the drain timeout.
    shutdown: CancellationToken,
}

/// An error answer: `{error, field?, details?}` plus any route-specific
/// members (`used_by`).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub field: Option<String>,
    extra: Option<(&'static str, Value)>,
    /// Methods to list in `Allow` (405 only).
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            field: None,
            extra: None,
            allow: None,
        }
    }

    fn bad(field: &str, error: impl Into<String>) -> Self {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, error);
        e.field = Some(field.into());
        e
    }

    fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, what)
    }

    /// SpeedData's clients match on "Channel not found".
    fn no_channel(name: &str) -> Self {
        ApiError::not_found(format!("Channel not found: no channel named {name}"))
    }

    fn method(allow: &'static str) -> Self {
        let mut e = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        e.allow = Some(allow);
        e
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut body = json!({ "error": self.error });
        if let Some(field) = self.field {
            body["field"] = Value::String(field);
        }
        if let Some((key, value)) = self.extra {
            body[key] = value;
        }
        let mut resp = json_response(self.status, &body);
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid { field, message } => ApiError::bad(&field, message),
            EngineError::NotFound { name } => ApiError::no_channel(&name),
            EngineError::Conflict { message, used_by } => {
                let mut err = ApiError::new(StatusCode::CONFLICT, message);
                err.extra = used_by.map(|u| ("used_by", Value::String(u)));
                err
            }
            EngineError::Unavailable { message } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
            }
            EngineError::Refused { message } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
            }
            EngineError::Registry(e) => {
                tracing::error!(error = %e, "api: registry fault");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("registry: {e}"))
            }
        }
    }
}

type Reply = Result<Response<Full<Bytes>>, ApiError>;

/// An answer's body: a whole JSON document (or page file), or a live
/// event stream.
pub type Body = Either<Full<Bytes>, crate::live::LiveBody>;

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn whole(resp: Response<Full<Bytes>>) -> Response<Body> {
    resp.map(Either::Left)
}

fn ok(body: Value) -> Reply {
    Ok(json_response(StatusCode::OK, &body))
}

/// Compares a guess with the token without an early exit and in a number of
/// steps set by the guess's length, so the time taken tells neither how
/// much of the guess was right nor how long the token is.
fn token_matches(given: &[u8], token: &[u8]) -> bool {
    if token.is_empty() {
        return given.is_empty();
    }
    let mut diff = given.len() ^ token.len();
    for (i, &g) in given.iter().enumerate() {
        diff |= usize::from(g ^ token[i % token.len()]);
    }
    diff == 0
}

impl Api {
    /// `conn` closes the request's connection: a live viewer that falls
    /// behind is dropped with it.
    async fn handle(&self, req: Request<Incoming>, conn: &CancellationToken) -> Response<Body> {
        let found = Route::of(req.uri().path());
        let route = found.route;
        let method = req.method().clone();
        let origin = self.cors_origin(&req);
        let answer = match self.check_host(&req) {
            Err(e) => Err(e),
            Ok(()) if method == Method::OPTIONS && req.headers().contains_key(ORIGIN) => {
                self.preflight(origin.as_ref()).map(whole)
            }
            // A stream, not a whole body: answered here, checked like any route.
            Ok(()) if route == Route::ChannelLive && method == Method::GET => {
                self.live(&req, found.param, conn)
            }
            Ok(()) => self.route(req).await.map(whole),
        };
        let mut resp = answer.unwrap_or_else(|e| whole(e.into_response()));
        if let Some(origin) = origin {
            let headers = resp.headers_mut();
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(VARY, HeaderValue::from_static("Origin"));
        }
        self.requests.record(route, &method, resp.status().as_u16());
        resp
    }

    /// DNS rebinding: a page on `evil.example`, once that name resolves to
    /// 127.0.0.1, would reach the API with `Host: evil.example`. IP
    /// literals and `localhost` names cannot be rebound, so they pass; any
    /// other name must be on the allow-list. No `Host` (HTTP/1.0) passes.
    fn check_host(&self, req: &Request<Incoming>) -> Result<(), ApiError> {
        let Some(value) = req.headers().get(HOST) else {
            return Ok(());
        };
        let host = value.to_str().unwrap_or("").trim();
        if host_allowed(host, &self.options.allowed_hosts) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Host {host:?} is not an address of this relay: use an IP address or \
                 localhost, or allow the name with --allowed-host"
            ),
        ))
    }

    /// The `Origin` to echo in `Access-Control-Allow-Origin`, when the
    /// request has one and it is allowed.
    fn cors_origin(&self, req: &Request<Incoming>) -> Option<HeaderValue> {
        let origin = req.headers().get(ORIGIN)?;
        let allowed = &self.options.cors_origins;
        let listed = allowed.iter().any(|o| o == "*")
            || origin
                .to_str()
                .is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)));
        listed.then(|| origin.clone())
    }

    /// A CORS preflight (`OPTIONS` with `Origin`): 204 with what may be
    /// sent, for a listed origin; 403 otherwise. Needs no token: browsers
    /// never send one on a preflight.
    fn preflight(&self, origin: Option<&HeaderValue>) -> Reply {
        if origin.is_none() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this origin may not call the API: list it with --cors-origin",
            ));
        }
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        h.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"),
        );
        h.insert(
            ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("Authorization, Content-Type"),
        );
        h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        Ok(resp)
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.options.token else {
            return true;
        };
        let Some(value) = req.headers().get(AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let given = match value.split_first_chunk::<7>() {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"Bearer ") => rest,
            _ => return false,
        };
        token_matches(given, token.as_bytes())
    }

    async fn route(&self, req: Request<Incoming>) -> Reply {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let method = req.method().clone();
        let found = Route::of(&path);
        let (route, param) = (found.route, found.param.to_string());
        // The page's files hold no data and a browser navigation cannot send
        // a token, so they are public; the page asks for the token on a 401.
        if let Route::Page | Route::Asset = route
            && let Some(asset) = crate::web::asset(&path)
        {
            return match method {
                Method::GET | Method::HEAD => Ok(asset.response()),
                _ => Err(ApiError::method(route.allow())),
            };
        }
        // Outside the API's prefix, nothing needs a token to be told 404.
        if route == Route::Other && !path.starts_with(PREFIX) {
            return Err(ApiError::not_found(format!("no route for {path}")));
        }
        let public = route == Route::Health && method == Method::GET;
        if !public && !self.authorized(&req) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: send Authorization: Bearer <token>",
            ));
        }
        let name = param.as_str();
        match (route, &method) {
            (Route::Health, &Method::GET) => {
                #[allow(unused_mut)]
                let mut health = json!({
                    "status": "ok",
                    "service": "speedrelay",
                    "version": env!("CARGO_PKG_VERSION"),
                });
                #[cfg(feature = "cluster")]
                if let Some(c) = self.engine.cluster() {
                    health["cluster"] = json!({"node": c.node(), "nats": c.state()});
                    if c.leases() {
                        health["cluster"]["nodes"] = json!(c.live_nodes());
                    }
                }
                ok(health)
            }
            // `/metrics` is where Prometheus looks; it is `/api/v1/metrics` too.
            (Route::Metrics | Route::ApiMetrics, &Method::GET) => self.metrics().await,
            (Route::Channels, &Method::GET) => self.list(&query),
            (Route::Channels, &Method::POST) => {
                let body = read_json(req).await?;
                self.register(body).await
            }
            (Route::Channel, &Method::GET) => match self.engine.get(name) {
                Some(info) => ok(to_value(&info)),
                None => Err(ApiError::no_channel(name)),
            },
            (Route::Channel, &Method::PATCH) => {
                let body = read_json(req).await?;
                self.patch(name, body).await
            }
            (Route::Channel, &Method::DELETE) => {
                self.engine.deregister(name).await?;
                ok(json!({
                    "status": "success",
                    "name": name,
                    "message": format!("channel {name} removed"),
                }))
            }
            (Route::ChannelSchema, &Method::GET) => self.schema(name),
            (Route::ChannelValidateSchema, &Method::POST) => {
                if self.engine.get(name).is_none() {
                    return Err(ApiError::no_channel(name));
                }
                let body = read_json(req).await?;
                self.validate_schema(name, body)
            }
            (Route::ChannelHistory, &Method::GET) => self.history(name, &query),
            (Route::PortsAvailable, &Method::GET) => self.ports_available(&query).await,
            (Route::PortStatus, &Method::GET) => self.port_status(name).await,
            (Route::Other, _) => Err(ApiError::not_found(format!("no route for {path}"))),
            // A known path, a method it does not answer.
            (route, _) => Err(ApiError::method(route.allow())),
        }
    }

    async fn metrics(&self) -> Reply {
        let channels = self.engine.list();
        let engine = self.engine.clone();
        // A redb read and a stat: cheap, but blocking.
        let (registry_channels, registry_file_bytes) = tokio::task::spawn_blocking(move || {
            let registry = engine.registry();
            let len = registry.len().ok();
            let size = std::fs::metadata(registry.path()).ok().map(|m| m.len());
            (len, size)
        })
        .await
        .unwrap_or((None, None));
        #[cfg(feature = "cluster")]
        let cluster = self
            .engine
            .cluster()
            .map(|c| (c.node(), c.state() == "connected"));
        #[cfg(feature = "cluster")]
        let cluster_leases = self.engine.cluster().and_then(|c| c.lease_counts());
        #[cfg(not(feature = "cluster"))]
        let (cluster, cluster_leases) = (None, None);
        let text = metrics::render(&metrics::Exposition {
            cluster,
            cluster_leases,
            channels: &channels,
            registry_channels,
            registry_file_bytes,
            requests: &self.requests,
            resident_memory_bytes: metrics::resident_memory_bytes(),
            live_viewers: self.engine.live_hub().viewers(),
            live_viewers_dropped: self.engine.live_hub().dropped(),
        });
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        );
        Ok(resp)
    }

    fn list(&self, query: &str) -> Reply {
        use crate::engine::Status;
        // SpeedData's `registered` is every channel in the registry;
        // its `running` is `active`.
        let wanted = match query_param(query, "status") {
            None | Some("registered") => None,
            Some("active" | "running") => Some(Status::Active),
            Some("failed") => Some(Status::Failed),
            Some("standby") => Some(Status::Standby),
            Some(other) => {
                return Err(ApiError::bad(
                    "status",
                    format!(
                        "unknown status {other:?}: use active, failed, standby, registered or running"
                    ),
                ));
            }
        };
        let mut channels = self.engine.list();
        if let Some(w) = wanted {
            channels.retain(|c| c.status == w);
        }
        Ok(Self::list_response(&channels))
    }

    /// Serialises the list straight into the response body: going through
    /// `serde_json::Value` first allocated a map per field of every channel
    /// and cost 2-3 times the time of the serialisation itself.
    fn list_response(channels: &[crate::engine::ChannelInfo]) -> Response<Full<Bytes>> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            channels: &'a [crate::engine::ChannelInfo],
        }
        // About 1.3 KiB per channel with default settings; one allocation.
        let mut out = Vec::with_capacity(64 + channels.len() * 1536);
        match serde_json::to_writer(&mut out, &Body { channels }) {
            Ok(()) => {
                let mut resp = Response::new(Full::new(Bytes::from(out)));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp
            }
            // Serialising plain structs does not fail; answer like before if it does.
            Err(e) => json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!({ "error": e.to_string() }),
            ),
        }
    }

    async fn register(&self, body: Value) -> Reply {
        let registration = self.registration(body).await?;
        let info = self.engine.register(registration).await?;
        Ok(json_response(
            StatusCode::CREATED,
            &json!({
                "status": "success",
                "name": info.name,
                "port": info.port,
                "pid": info.pid,
                "message": format!("channel {} listening on port {}", info.name, info.port),
            }),
        ))
    }

    /// [`registration_from`] on the blocking pool with a time limit when
    /// it must read a schema file: a FIFO is refused before it is opened,
    /// but a file on a hung network filesystem can still block its read.
    async fn registration(&self, body: Value) -> Result<Registration, ApiError> {
        if !matches!(body.get("schema"), Some(Value::String(_))) {
            return registration_from(body, &self.options, self.own_port);
        }
        let Ok(slot) = self.schema_reads.clone().try_acquire_owned() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "schema files are not being read: earlier reads are still stuck \
                 (a hung filesystem in the config directory?); send the schema inline",
            ));
        };
        let options = self.options.clone();
        let own_port = self.own_port;
        let read = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            registration_from(body, &options, own_port)
        });
        let limit = self.options.schema_read_timeout;
        match tokio::time::timeout(limit, read).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the schema failed: {e}"),
            )),
            Err(_) => Err(ApiError::bad(
                "schema",
                format!(
                    "the schema file could not be read within {} s",
                    limit.as_secs_f64()
                ),
            )),
        }
    }

    async fn patch(&self, name: &str, body: Value) -> Reply {
        if self.engine.get(name).is_none() {
            return Err(ApiError::no_channel(name));
        }
        if !body.is_object() {
            return Err(ApiError::bad("config", "the body must be a JSON object"));
        }
        let info = self.engine.update(name, body).await?;
        ok(to_value(&info))
    }

    /// `GET /channels/{name}/history[?seconds=1..600]`: per-second
    /// samples, oldest first (all that are kept by default).
    fn history(&self, name: &str, query: &str) -> Reply {
        let max = crate::history::SECONDS;
        let seconds = match query_param(query, "seconds") {
            None => max,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad(
                        "seconds",
                        format!("seconds must be a whole number from 1 to {max}, not {text:?}"),
                    ));
                }
            },
        };
        match self.engine.history(name, seconds) {
            Some(view) => {
                let mut body = to_value(&view);
                body["name"] = Value::String(name.to_string());
                ok(body)
            }
            None => Err(ApiError::no_channel(name)),
        }
    }

    /// `GET /channels/{name}/live`: a Server-Sent Events stream of the
    /// channel's numeric fields ([`crate::live`]). Checked like any route
    /// (token, channel); 503 when the viewer caps are reached.
    fn live(
        &self,
        req: &Request<Incoming>,
        name: &str,
        conn: &CancellationToken,
    ) -> Result<Response<Body>, ApiError> {
        if !self.authorized(req) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token: send Authorization: Bearer <token>",
            ));
        }
        let source = self
            .engine
            .live_source(name)
            .ok_or_else(|| ApiError::no_channel(name))?;
        let decoder = crate::live::Decoder::new(&source.schema_json)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let kind = if source.decimated {
            "decimated"
        } else {
            "sampled"
        };
        let stop = self.shutdown.clone();
        let body = crate::live::open(
            &source.tap,
            name,
            Arc::new(decoder),
            kind,
            conn.clone(),
            stop,
        )
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        let mut resp = Response::new(Either::Right(body));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        h.insert(
            hyper::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        Ok(resp)
    }

    fn schema(&self, name: &str) -> Reply {
        let text = self
            .engine
            .schema(name)
            .ok_or_else(|| ApiError::no_channel(name))?;
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => ok(v),
            // A bare primitive name stored as text is still a schema.
            Err(_) => ok(Value::String(text)),
        }
    }

    /// Compares a provided schema with the registered one by Avro schema
    /// resolution, taking the provided schema as the new version:
    ///
    /// - `backward`: the provided schema can read records written with the
    ///   registered one (new consumers read existing data);
    /// - `forward`: the registered schema can read records written with the
    ///   provided one (existing consumers read new data);
    /// - `full`: both; `identical`: same canonical form.
    fn validate_schema(&self, name: &str, body: Value) -> Reply {
        let registered_text = self
            .engine
            .schema(name)
            .ok_or_else(|| ApiError::no_channel(name))?;
        compare_schemas(&registered_text, body)
    }

    async fn ports_available(&self, query: &str) -> Reply {
        // Without a range, the configured one (SpeedData's when none is).
        let (lo, hi) = self.options.ports.unwrap_or(DEFAULT_PORTS);
        let start = match query_param(query, "start") {
            None => lo,
            given => parse_port(given, "start")?,
        };
        let end = match query_param(query, "end") {
            None => hi,
            given => parse_port(given, "end")?,
        };
        if start >= end {
            return Err(ApiError::bad("start", "start must be < end"));
        }
        if u32::from(end - start) > MAX_PORT_SPAN {
            return Err(ApiError::bad(
                "end",
                format!("the range may span at most {MAX_PORT_SPAN} ports"),
            ));
        }
        let held: Vec<u16> = self.engine.list().iter().map(|c| c.port).collect();
        let available = tokio::task::spawn_blocking(move || {
            (start..=end)
                .filter(|p| !held.contains(p) && bindable(*p))
                .collect::<Vec<u16>>()
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        ok(json!({
            "range": { "start": start, "end": end },
            "count": available.len(),
            "available": available,
        }))
    }

    async fn port_status(&self, port: &str) -> Reply {
        let port = parse_port(Some(port), "port")?;
        if let Some(owner) = self.engine.port_owner(port) {
            return ok(json!({
                "port": port, "available": false, "status": "in_use", "channel": owner,
            }));
        }
        let free = tokio::task::spawn_blocking(move || bindable(port))
            .await
            .unwrap_or(false);
        ok(json!({
            "port": port,
            "available": free,
            "status": if free { "free" } else { "in_use" },
        }))
    }
}

/// The checks `POST /channels` makes on its body before the engine is
/// asked (which then compiles the schema and the settings). Public so that
/// the fuzz targets in `fuzz/` can run them without an engine.
pub fn registration_from(
    body: Value,
    options: &ApiOptions,
    own_port: u16,
) -> Result<Registration, ApiError> {
    let Value::Object(body) = body else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        ));
    };
    // SpeedData's clients match on "Missing required fields".
    let missing: Vec<&str> = ["name", "port", "schema"]
        .into_iter()
        .filter(|k| body.get(*k).is_none_or(Value::is_null))
        .collect();
    if let Some(first) = missing.first() {
        return Err(ApiError::bad(
            first,
            format!("Missing required fields: {}", missing.join(", ")),
        ));
    }
    let name = match body.get("name") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(ApiError::bad("name", "must be a string")),
    };
    check_name(&name)?;
    // A number, or as SpeedData also takes it, a string of digits.
    let port = match body.get("port") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().ok()
        }
        _ => None,
    };
    let port = match port {
        Some(p @ 1..=65535) => p as u16,
        _ => {
            return Err(ApiError::bad(
                "port",
                "must be an integer between 1 and 65535",
            ));
        }
    };
    if port == own_port {
        return Err(ApiError::bad(
            "port",
            format!("{port} is the API's own port"),
        ));
    }
    if let Some((lo, hi)) = options.ports
        && !(lo..=hi).contains(&port)
    {
        return Err(ApiError::bad(
            "port",
            format!("must be inside the configured range {lo}-{hi}"),
        ));
    }
    let (schema_json, schema_path) = match body.get("schema") {
        None | Some(Value::Null) => return Err(ApiError::bad("schema", "is required")),
        Some(Value::String(path)) => (
            read_schema_file(options.config_dir.as_deref(), path)?,
            Some(path.clone()),
        ),
        Some(v @ Value::Object(_)) => (v.to_string(), None),
        Some(_) => {
            return Err(ApiError::bad(
                "schema",
                "must be a path inside the config directory or an Avro schema object",
            ));
        }
    };
    Schema::parse_str(&schema_json)
        .map_err(|e| ApiError::bad("schema", format!("not an Avro schema: {e}")))?;
    let mut config = match body.get("config") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(ApiError::bad("config", "must be a JSON object")),
    };
    // `placement` is a channel setting; beside `config` it is taken as
    // `config.placement` (and checked there), once.
    if let Some(placement) = body.get("placement") {
        let settings = config.get_or_insert_with(|| Value::Object(Default::default()));
        if settings.get("placement").is_some() {
            return Err(ApiError::bad(
                "placement",
                "given twice: beside config and in config.placement",
            ));
        }
        settings["placement"] = placement.clone();
    }
    Ok(Registration {
        name,
        port,
        schema_json,
        schema_path,
        config,
    })
}

/// Reads a schema named by a path inside the config directory (see
/// [`crate::schema_file`]); anything that could leave it, or that is not a
/// regular file, is refused. Blocking: the API calls it on the blocking pool.
fn read_schema_file(config_dir: Option<&Path>, given: &str) -> Result<String, ApiError> {
    let Some(dir) = config_dir else {
        return Err(ApiError::bad(
            "schema",
            "schema paths are disabled (no config directory): send the schema inline",
        ));
    };
    crate::schema_file::load(dir, given)
        .map(|(_, text)| text)
        .map_err(|e| ApiError::bad("schema", e.to_string()))
}

/// The answer of `POST /channels/{name}/validate-schema` for a channel
/// whose registered schema is `registered_text` (see
/// `Api::validate_schema`). Public for the fuzz targets in `fuzz/`.
pub fn compare_schemas(registered_text: &str, body: Value) -> Reply {
    let provided = match body {
        Value::Object(mut m) if !m.contains_key("type") && m.contains_key("schema") => {
            m.remove("schema").unwrap_or(Value::Null)
        }
        other => other,
    };
    let provided_text = match provided {
        Value::String(s) if serde_json::from_str::<Value>(&s).is_ok() => s,
        other => other.to_string(),
    };
    let provided = Schema::parse_str(&provided_text)
        .map_err(|e| ApiError::bad("schema", format!("not an Avro schema: {e}")))?;
    let registered = Schema::parse_str(registered_text).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the registered schema no longer parses: {e}"),
        )
    })?;
    if provided.canonical_form() == registered.canonical_form() {
        return ok(json!({ "valid": true, "compatibility": "identical" }));
    }
    let mut reasons = Vec::new();
    let mut check = |writer: &Schema, reader: &Schema, what: &str| -> bool {
        match SchemaCompatibility::can_read(writer, reader) {
            Ok(Compatibility::Full) => true,
            Ok(_) => {
                reasons.push(format!("{what}: resolution can fail for some values"));
                false
            }
            Err(e) => {
                reasons.push(format!("{what}: {e}"));
                false
            }
        }
    };
    let backward = check(
        &registered,
        &provided,
        "the provided schema cannot read data written with the registered one",
    );
    let forward = check(
        &provided,
        &registered,
        "the registered schema cannot read data written with the provided one",
    );
    let compatibility = match (backward, forward) {
        (true, true) => "full",
        (true, false) => "backward",
        (false, true) => "forward",
        (false, false) => {
            return Ok(json_response(
                StatusCode::CONFLICT,
                &json!({
                    "valid": false,
                    "compatibility": "incompatible",
                    "error": "the schemas are incompatible",
                    "reasons": reasons,
                }),
            ));
        }
    };
    ok(json!({ "valid": true, "compatibility": compatibility, "details": reasons }))
}

/// Whether `host` (a `Host` header: name or IP, optional port) names this
/// relay: an IP literal, `localhost` or `*.localhost`, or a name in
/// `allowed` (lower case, without port).
pub(crate) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    // `[::1]:8080`, `[::1]`, `127.0.0.1:8080`, `name:8080`, `name`.
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    if name.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(&name))
}

/// Whether a channel could bind `port` right now (UDP on every address).
fn bindable(port: u16) -> bool {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

fn parse_port(value: Option<&str>, field: &str) -> Result<u16, ApiError> {
    match value.map(str::parse::<u16>) {
        Some(Ok(p)) if p != 0 => Ok(p),
        None => Err(ApiError::bad(field, "is required")),
        _ => Err(ApiError::bad(
            field,
            "must be an integer between 1 and 65535",
        )),
    }
}

/// The first value of `key` in a query string (no percent-decoding: every
/// parameter of this API is a plain word or number).
fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Reads a JSON body: 415 unless declared JSON, 413 over [`MAX_BODY`] (by
/// `Content-Length` first, then while reading), 400 unless it parses.
async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" && !essence.ends_with("+json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the body as Content-Type: application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    let Ok(collected) = tokio::time::timeout(BODY_READ_TIMEOUT, collect).await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
        ));
    };
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {e}"),
            ));
        }
    };
    body_json(&bytes)
}

/// A request body as JSON, or 400. Public for the fuzz targets in `fuzz/`.
pub fn body_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn only_the_exact_token_matches() {
        let token = b"s3cret-token";
        assert!(token_matches(token, token));
        for wrong in [
            &b""[..],
            b"s3cret-toke",
            b"s3cret-tokenn",
            b"s3cret-tokem",
            b"S3cret-token",
            b"s3cret-tokens3cret-token",
        ] {
            assert!(
                !token_matches(wrong, token),
                "{:?}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(token_matches(b"", b""));
        assert!(!token_matches(b"x", b""));
    }
}
