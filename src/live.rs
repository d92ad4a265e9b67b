//! Live view of a channel's records: `GET /api/v1/channels/{name}/live`, a
//! Server-Sent Events stream of the channel's numeric fields decoded to
//! JSON, for the page's stripchart.
//!
//! SSE rather than WebSocket: the stream is one-way, plain HTTP/1.1 through
//! the same hyper service (no upgrade handshake, no extra crate), and the
//! browser's `EventSource` reconnects by itself.
//!
//! The channel task offers records through a [`LiveTap`]: one relaxed
//! atomic load per receive batch when nobody watches. When someone does,
//! at most one record per [`MIN_INTERVAL`] (50 a second) is copied, stamped
//! and queued to every viewer; decoding happens in the viewer's response
//! body, off the channel task. A viewer whose queue is full (it does not
//! read) is dropped and its connection closed; drops are counted for
//! `/metrics`. Viewers are capped per channel and in total.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as Avro;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Viewers one channel may have at once.
pub const MAX_PER_CHANNEL: usize = 8;
/// Viewers the relay may have at once.
pub const MAX_TOTAL: usize = 64;
/// The shortest time between two records offered to viewers: at most
/// 50 points a second per field.
pub const MIN_INTERVAL: Duration = Duration::from_millis(20);
/// Records a viewer may have waiting once its connection's buffers are
/// full; a full queue drops the viewer. About 0.3 s at the highest rate;
/// small because a record may be as large as a datagram (64 KiB).
pub const QUEUE: usize = 16;
/// A comment line this often keeps proxies from closing a quiet stream
/// and lets a closed connection be noticed.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Counts shared by every channel's tap, for `/metrics`.
#[derive(Debug, Default)]
pub struct LiveHub {
    viewers: AtomicUsize,
    dropped: AtomicU64,
    next_id: AtomicU64,
}

impl LiveHub {
    /// Viewers connected now.
    pub fn viewers(&self) -> usize {
        self.viewers.load(Relaxed)
    }

    /// Viewers dropped because they did not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

struct Viewer {
    id: u64,
    queue: mpsc::Sender<Bytes>,
    /// Closes the viewer's connection: its writes may be stuck, so the
    /// response body would never be polled to notice the drop.
    kick: CancellationToken,
}

/// One channel's tap: kept by the engine across restarts of the channel
/// task, like its counters.
pub struct LiveTap {
    hub: Arc<LiveHub>,
    /// How many viewers there are: the channel task's only look at the tap
    /// when nobody watches.
    watched: AtomicUsize,
    viewers: Mutex<Vec<Viewer>>,
}

impl std::fmt::Debug for LiveTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTap")
            .field("watched", &self.watched.load(Relaxed))
            .finish()
    }
}

impl Default for LiveTap {
    fn default() -> Self {
        LiveTap::new(Arc::default())
    }
}

/// Why a viewer was refused.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("channel {channel} already has {MAX_PER_CHANNEL} live viewers; close one and retry")]
    ChannelFull { channel: String },
    #[error("the relay already has {MAX_TOTAL} live viewers; close one and retry")]
    RelayFull,
    #[error("the channel's schema cannot be read: {0}")]
    Schema(String),
}

impl LiveTap {
    pub fn new(hub: Arc<LiveHub>) -> Self {
        LiveTap {
            hub,
            watched: AtomicUsize::new(0),
            viewers: Mutex::new(Vec::new()),
        }
    }

    /// Whether anyone watches: one relaxed load, per receive batch.
    #[inline]
    pub fn watched(&self) -> bool {
        self.watched.load(Relaxed) != 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Viewer>> {
        self.viewers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one record (a datum of the channel's schema) to every viewer,
    /// stamped with the time now. Called by the channel task at most once
    /// per [`MIN_INTERVAL`], only while [`LiveTap::watched`].
    pub fn offer(&self, datum: &[u8]) {
        let mut framed = Vec::with_capacity(8 + datum.len());
        framed.extend_from_slice(&unix_ms().to_le_bytes());
        framed.extend_from_slice(datum);
        let framed = Bytes::from(framed);
        let mut viewers = self.lock();
        viewers.retain(|v| match v.queue.try_send(framed.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.hub.dropped.fetch_add(1, Relaxed);
                v.kick.cancel();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        self.watched.store(viewers.len(), Relaxed);
    }

    /// Adds a viewer; `kick` closes its connection when it falls behind.
    fn subscribe(
        self: &Arc<Self>,
        channel: &str,
        kick: CancellationToken,
    ) -> Result<(mpsc::Receiver<Bytes>, ViewerGuard), LiveError> {
        let mut viewers = self.lock();
        if viewers.len() >= MAX_PER_CHANNEL {
            return Err(LiveError::ChannelFull {
                channel: channel.to_string(),
            });
        }
        // Reserved before it is checked, so racing viewers cannot overshoot.
        if self.hub.viewers.fetch_add(1, Relaxed) >= MAX_TOTAL {
            self.hub.viewers.fetch_sub(1, Relaxed);
            return Err(LiveError::RelayFull);
        }
        let id = self.hub.next_id.fetch_add(1, Relaxed);
        let (queue, rx) = mpsc::channel(QUEUE);
        viewers.push(Viewer { id, queue, kick });
        self.watched.store(viewers.len(), Relaxed);
        let guard = ViewerGuard {
            tap: self.clone(),
            id,
        };
        Ok((rx, guard))
    }
}

/// Leaves the tap and frees the viewer's slot when the response ends.
struct ViewerGuard {
    tap: Arc<LiveTap>,
    id: u64,
}

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        let mut viewers = self.tap.lock();
        viewers.retain(|v| v.id != self.id);
        self.tap.watched.store(viewers.len(), Relaxed);
        self.tap.hub.viewers.fetch_sub(1, Relaxed);
    }
}

/// A numeric field the stream carries, as the `meta` event describes it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldInfo {
    /// Dotted path from the root record (`position.x`).
    pub name: String,
    /// The Avro type (`double`, `long`, `timestamp-nanos`…).
    #[serde(rename = "type")]
    pub avro_type: String,
    /// The field's `unit` (or `units`) attribute, else what its logical
    /// type implies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc: Option<String>,
}

/// How a numeric value is read from a record: the path of field indexes.
#[derive(Debug, Clone)]
struct Extract {
    path: Vec<usize>,
}

/// What a viewer decodes with: the schema and where its numbers are.
#[derive(Debug)]
pub struct Decoder {
    schema: Schema,
    fields: Vec<FieldInfo>,
    extracts: Vec<Extract>,
    /// The index in `fields` of a top-level `time` field, the x-axis.
    time: Option<usize>,
}

impl Decoder {
    pub fn new(schema_json: &str) -> Result<Self, LiveError> {
        let schema =
            Schema::parse_str(schema_json).map_err(|e| LiveError::Schema(e.to_string()))?;
        let mut fields = Vec::new();
        let mut extracts = Vec::new();
        if let Schema::Record(r) = &schema {
            collect(&r.fields, "", &mut Vec::new(), &mut fields, &mut extracts);
        }
        let time = fields.iter().position(|f| f.name == "time");
        Ok(Decoder {
            schema,
            fields,
            extracts,
            time,
        })
    }

    pub fn fields(&self) -> &[FieldInfo] {
        &self.fields
    }

    /// The first event: what the data events' `values` are.
    pub fn meta(&self, channel: &str, source: &str) -> Value {
        json!({
            "channel": channel,
            "fields": self.fields,
            "time": self.time,
            "source": source,
            "max_rate": 1000 / MIN_INTERVAL.as_millis() as u64,
        })
    }

    /// One framed record (unix ms, then the datum) as a data event's JSON:
    /// `{"at": ms, "values": [...]}` in the order of `fields`; a value that
    /// is absent (a null branch) or not finite is `null`.
    pub fn event(&self, framed: &[u8]) -> Option<Value> {
        let (stamp, datum) = framed.split_first_chunk::<8>()?;
        let at = u64::from_le_bytes(*stamp);
        let mut reader = datum;
        let record = GenericDatumReader::builder(&self.schema)
            .build()
            .ok()?
            .read_value(&mut reader)
            .ok()?;
        let values: Vec<Value> = self
            .extracts
            .iter()
            .map(|e| number(&record, &e.path))
            .collect();
        Some(json!({ "at": at, "values": values }))
    }
}

fn collect(
    fields: &[apache_avro::schema::RecordField],
    prefix: &str,
    path: &mut Vec<usize>,
    out: &mut Vec<FieldInfo>,
    extracts: &mut Vec<Extract>,
) {
    for (i, f) in fields.iter().enumerate() {
        let name = format!("{prefix}{}", f.name);
        path.push(i);
        let unit_attr = ["unit", "units"]
            .iter()
            .find_map(|k| f.custom_attributes.get(*k))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let schema = match &f.schema {
            // A nullable number: `["null", "double"]`.
            Schema::Union(u) => {
                let mut branches = u.variants().iter().filter(|s| **s != Schema::Null);
                match (branches.next(), branches.next()) {
                    (Some(s), None) => s,
                    _ => &f.schema,
                }
            }
            s => s,
        };
        if let Schema::Record(r) = schema {
            collect(&r.fields, &format!("{name}."), path, out, extracts);
        } else if let Some((avro_type, implied)) = numeric_type(schema) {
            out.push(FieldInfo {
                name,
                avro_type: avro_type.to_string(),
                unit: unit_attr.or(implied.map(str::to_string)),
                doc: f.doc.clone(),
            });
            extracts.push(Extract { path: path.clone() });
        }
        path.pop();
    }
}

/// The type name and implied unit of a schema the stripchart can plot.
fn numeric_type(s: &Schema) -> Option<(&'static str, Option<&'static str>)> {
    Some(match s {
        Schema::Int => ("int", None),
        Schema::Long => ("long", None),
        Schema::Float => ("float", None),
        Schema::Double => ("double", None),
        Schema::Date => ("date", Some("days since 1970-01-01")),
        Schema::TimeMillis => ("time-millis", Some("ms")),
        Schema::TimeMicros => ("time-micros", Some("µs")),
        Schema::TimestampMillis => ("timestamp-millis", Some("ms since 1970")),
        Schema::TimestampMicros => ("timestamp-micros", Some("µs since 1970")),
        Schema::TimestampNanos => ("timestamp-nanos", Some("ns since 1970")),
        Schema::LocalTimestampMillis => ("local-timestamp-millis", Some("ms")),
        Schema::LocalTimestampMicros => ("local-timestamp-micros", Some("µs")),
        Schema::LocalTimestampNanos => ("local-timestamp-nanos", Some("ns")),
        _ => return None,
    })
}

fn number(v: &Avro, path: &[usize]) -> Value {
    let mut v = v;
    for &i in path {
        if let Avro::Union(_, inner) = v {
            v = inner;
        }
        match v {
            Avro::Record(fields) => match fields.get(i) {
                Some((_, inner)) => v = inner,
                None => return Value::Null,
            },
            _ => return Value::Null,
        }
    }
    if let Avro::Union(_, inner) = v {
        v = inner;
    }
    match *v {
        Avro::Int(n) | Avro::Date(n) | Avro::TimeMillis(n) => json!(n),
        Avro::Long(n)
        | Avro::TimeMicros(n)
        | Avro::TimestampMillis(n)
        | Avro::TimestampMicros(n)
        | Avro::TimestampNanos(n)
        | Avro::LocalTimestampMillis(n)
        | Avro::LocalTimestampMicros(n)
        | Avro::LocalTimestampNanos(n) => json!(n),
        // serde_json writes NaN and infinities as null.
        Avro::Float(x) => json!(x),
        Avro::Double(x) => json!(x),
        _ => Value::Null,
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A viewer's response body: the `meta` event, then one `data` event per
/// record offered, with keep-alive comments while the channel is quiet.
pub struct LiveBody {
    first: Option<Bytes>,
    queue: mpsc::Receiver<Bytes>,
    decoder: Arc<Decoder>,
    keepalive: Pin<Box<tokio::time::Sleep>>,
    /// The relay is stopping: the stream ends.
    stop: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    _guard: ViewerGuard,
}

/// Opens a viewer of `tap`: the body to answer with, or why not.
pub fn open(
    tap: &Arc<LiveTap>,
    channel: &str,
    decoder: Arc<Decoder>,
    source: &str,
    kick: CancellationToken,
    stop: CancellationToken,
) -> Result<LiveBody, LiveError> {
    let (queue, guard) = tap.subscribe(channel, kick)?;
    let meta = format!("event: meta\ndata: {}\n\n", decoder.meta(channel, source));
    Ok(LiveBody {
        first: Some(Bytes::from(meta)),
        queue,
        decoder,
        keepalive: Box::pin(tokio::time::sleep(KEEPALIVE)),
        stop: Box::pin(stop.cancelled_owned()),
        _guard: guard,
    })
}

impl Body for LiveBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        loop {
            match self.queue.poll_recv(cx) {
                Poll::Ready(Some(framed)) => {
                    // A datum that does not decode (validation off) is skipped.
                    if let Some(event) = self.decoder.event(&framed) {
                        let deadline = tokio::time::Instant::now() + KEEPALIVE;
                        self.keepalive.as_mut().reset(deadline);
                        let text = format!("data: {event}\n\n");
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(text)))));
                    }
                }
                // Dropped by the tap (it fell behind): end the stream.
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        if self.keepalive.as_mut().poll(cx).is_ready() {
            let deadline = tokio::time::Instant::now() + KEEPALIVE;
            self.keepalive.as_mut().reset(deadline);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                b": keep-alive\n\n",
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"{"type":"record","name":"r","fields":[
        {"name":"time","type":{"type":"long","logicalType":"timestamp-nanos"}},
        {"name":"label","type":"string"},
        {"name":"volts","type":"double","unit":"V","doc":"supply"},
        {"name":"maybe","type":["null","int"]},
        {"name":"pos","type":{"type":"record","name":"p","fields":[{"name":"x","type":"float"}]}}
    ]}"#;

    #[test]
    fn numeric_fields_with_units_and_the_time_field_are_found() {
        let d = Decoder::new(SCHEMA).unwrap();
        let names: Vec<&str> = d.fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["time", "volts", "maybe", "pos.x"]);
        assert_eq!(d.fields()[0].unit.as_deref(), Some("ns since 1970"));
        assert_eq!(d.fields()[1].unit.as_deref(), Some("V"));
        assert_eq!(d.fields()[1].doc.as_deref(), Some("supply"));
        assert_eq!(d.time, Some(0));
    }

    #[test]
    fn a_record_decodes_to_its_numbers() {
        let d = Decoder::new(SCHEMA).unwrap();
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let record = Avro::Record(vec![
            ("time".into(), Avro::TimestampNanos(5)),
            ("label".into(), Avro::String("a".into())),
            ("volts".into(), Avro::Double(1.5)),
            ("maybe".into(), Avro::Union(0, Box::new(Avro::Null))),
            (
                "pos".into(),
                Avro::Record(vec![("x".into(), Avro::Float(2.0))]),
            ),
        ]);
        let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .and_then(|w| w.write_value_to_vec(record))
            .unwrap();
        let mut framed = 7u64.to_le_bytes().to_vec();
        framed.extend_from_slice(&datum);
        let e = d.event(&framed).unwrap();
        assert_eq!(e, json!({"at": 7, "values": [5, 1.5, null, 2.0]}));
        assert!(d.event(&framed[..10]).is_none(), "a torn datum is skipped");
    }

    #[test]
    fn a_viewer_that_does_not_read_is_dropped_and_counted() {
        let hub = Arc::new(LiveHub::default());
        let tap = Arc::new(LiveTap::new(hub.clone()));
        assert!(!tap.watched());
        let kick = CancellationToken::new();
        let (_rx, guard) = tap.subscribe("c", kick.clone()).unwrap();
        assert!(tap.watched());
        for _ in 0..QUEUE {
            tap.offer(b"x");
        }
        assert!(!kick.is_cancelled());
        tap.offer(b"x");
        assert!(kick.is_cancelled());
        assert!(!tap.watched());
        assert_eq!(hub.dropped(), 1);
        assert_eq!(hub.viewers(), 1, "the slot is freed when the response ends");
        drop(guard);
        assert_eq!(hub.viewers(), 0);
    }

    #[test]
    fn viewers_are_capped_per_channel() {
        let hub = Arc::new(LiveHub::default());
        let tap = Arc::new(LiveTap::new(hub.clone()));
        let held: Vec<_> = (0..MAX_PER_CHANNEL)
            .map(|_| tap.subscribe("c", CancellationToken::new()).unwrap())
            .collect();
        assert!(matches!(
            tap.subscribe("c", CancellationToken::new()),
            Err(LiveError::ChannelFull { .. })
        ));
        drop(held);
        assert_eq!(hub.viewers(), 0);
        assert!(!tap.watched());
    }
}
