//! `speedrelay channels`: the command-line client of the HTTP API (SPEC §2,
//! §5) — list, show, register and remove channels on a running relay,
//! through [`ApiClient`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::{Map, Value, json};

use super::client::{ApiClient, ClientError, one_line};

/// Where the API is when neither `--url` nor `SPEEDRELAY_URL` says.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// `speedrelay channels …`
#[derive(Debug, clap::Args)]
pub struct ChannelsArgs {
    /// Base URL of the relay's API (http only).
    ///
    /// The token, if the relay has one, is taken from the environment
    /// variable SPEEDRELAY_API_TOKEN and sent as `Authorization: Bearer`.
    #[arg(long, env = "SPEEDRELAY_URL", default_value = DEFAULT_URL, global = true)]
    pub url: String,
    #[command(subcommand)]
    pub action: ChannelsAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum ChannelsAction {
    /// A table of every channel with its status and counters.
    ///
    /// Columns: name, port, status, packets/s, packets, invalid, drops
    /// (datagrams the kernel dropped because the receive buffer was full),
    /// archive size. The relay reports cumulative counters only, so
    /// packets/s is computed from two samples taken --interval seconds apart.
    List {
        /// Seconds between the two samples packets/s is computed from;
        /// 0 takes one sample and leaves the rate column out.
        #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
        interval: f64,
    },
    /// One channel as the API returns it (pretty JSON).
    Get { name: String },
    /// Register a channel: binds the port and starts relaying at once.
    Add(AddArgs),
    /// Remove a channel: stops it, closes its archive, frees the port.
    Rm { name: String },
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Channel name: [A-Za-z0-9][A-Za-z0-9_.-]{0,63}.
    pub name: String,
    /// UDP port the channel receives on.
    #[arg(long)]
    pub port: u16,
    /// Avro schema file (.avsc, a JSON object); its content is sent inline.
    #[arg(long)]
    pub schema: PathBuf,
    /// Decimation factor: one decimated record per N received (turns
    /// decimation on).
    #[arg(long, value_name = "N")]
    pub decimation: Option<u32>,
    /// Decimation algorithm (turns decimation on).
    #[arg(long, value_parser = ["downsample", "average", "minmax", "rms"])]
    pub algorithm: Option<String>,
    /// Full-rate destination, IP:PORT (repeatable); replaces the default ones.
    #[arg(long = "output", value_name = "HOST:PORT")]
    pub outputs: Vec<SocketAddr>,
    /// Decimated destination, IP:PORT (repeatable); replaces the default ones.
    #[arg(long = "decimated-output", value_name = "HOST:PORT")]
    pub decimated_outputs: Vec<SocketAddr>,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=3600.0).contains(&v) => Ok(v),
        _ => Err("must be a number of seconds between 0 and 3600".into()),
    }
}

/// Runs one `speedrelay channels` command; the token comes from
/// `SPEEDRELAY_API_TOKEN` (environment only, so it never shows in `ps`).
pub fn run(args: ChannelsArgs) -> Result<(), ClientError> {
    let client = ApiClient::from_env(&args.url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)?;
    runtime.block_on(async {
        match args.action {
            ChannelsAction::List { interval } => {
                let table = list(&client, interval).await?;
                out(&table);
            }
            ChannelsAction::Get { name } => {
                let channel = client
                    .call(
                        Method::GET,
                        &format!("/channels/{}", encode_segment(&name)),
                        None,
                    )
                    .await?;
                out(&format!("{}\n", pretty(&channel)));
            }
            ChannelsAction::Add(add) => {
                let body = registration(&add)?;
                let answer = client.call(Method::POST, "/channels", Some(body)).await?;
                let message = message_of(&answer, &format!("channel {} added", add.name));
                out(&format!("{message}\n"));
            }
            ChannelsAction::Rm { name } => {
                let path = format!("/channels/{}", encode_segment(&name));
                let answer = client.call(Method::DELETE, &path, None).await?;
                let message = message_of(&answer, &format!("channel {name} removed"));
                out(&format!("{message}\n"));
            }
        }
        Ok(())
    })
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Server text may hold newlines; the user gets one line.
fn message_of(answer: &Value, fallback: &str) -> String {
    answer
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| fallback.to_string(), one_line)
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Percent-encodes a path segment. Valid channel names need none, but an
/// invalid one must reach the server as one segment to get its 404/400.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The `POST /channels` body of `channels add`: the schema inline, and the
/// flags as SPEC §3 channel settings under `config`.
pub fn registration(add: &AddArgs) -> Result<Value, ClientError> {
    let schema = read_schema(&add.schema)?;
    let mut config = Map::new();
    if add.decimation.is_some() || add.algorithm.is_some() {
        let mut decimation = Map::new();
        decimation.insert("enabled".into(), Value::Bool(true));
        if let Some(n) = add.decimation {
            decimation.insert("factor".into(), json!(n));
        }
        if let Some(a) = &add.algorithm {
            decimation.insert("algorithm".into(), json!(a));
        }
        config.insert("decimation".into(), Value::Object(decimation));
    }
    let destinations = |list: &[SocketAddr]| -> Value {
        list.iter()
            .map(|a| json!({ "address": a.ip().to_string(), "port": a.port() }))
            .collect()
    };
    if !add.outputs.is_empty() || !add.decimated_outputs.is_empty() {
        let mut outputs = Map::new();
        if !add.outputs.is_empty() {
            outputs.insert("full_rate".into(), destinations(&add.outputs));
        }
        if !add.decimated_outputs.is_empty() {
            outputs.insert("decimated".into(), destinations(&add.decimated_outputs));
        }
        config.insert("outputs".into(), Value::Object(outputs));
    }
    let mut body = json!({ "name": add.name, "port": add.port, "schema": schema });
    if !config.is_empty() {
        body["config"] = Value::Object(config);
    }
    Ok(body)
}

fn read_schema(path: &Path) -> Result<Value, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClientError::SchemaRead {
        path: path.to_path_buf(),
        source,
    })?;
    let value: Value = serde_json::from_str(&text).map_err(|source| ClientError::SchemaJson {
        path: path.to_path_buf(),
        source,
    })?;
    if !value.is_object() {
        return Err(ClientError::SchemaNotObject {
            path: path.to_path_buf(),
        });
    }
    Ok(value)
}

/// One channel's row, from a `GET /channels` entry.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    name: String,
    port: u64,
    status: String,
    error: Option<String>,
    packets: u64,
    invalid: u64,
    drops: u64,
    archive_bytes: u64,
}

fn rows(listing: &Value) -> Vec<Row> {
    let empty = Vec::new();
    let channels = listing
        .get("channels")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    channels
        .iter()
        .map(|c| {
            let stat = |k: &str| c["stats"][k].as_u64().unwrap_or(0);
            Row {
                name: c["name"].as_str().unwrap_or("?").to_string(),
                port: c["port"].as_u64().unwrap_or(0),
                status: c["status"].as_str().unwrap_or("?").to_string(),
                error: c["error"].as_str().map(one_line),
                packets: stat("packets"),
                invalid: stat("invalid"),
                drops: stat("kernel_drops"),
                archive_bytes: stat("archive_bytes"),
            }
        })
        .collect()
}

/// `channels list`: one sample, or two `interval` seconds apart for the
/// packets/s column.
async fn list(client: &ApiClient, interval: f64) -> Result<String, ClientError> {
    let first = client.call(Method::GET, "/channels", None).await?;
    let taken = Instant::now();
    if interval == 0.0 {
        return Ok(render_table(&rows(&first), None));
    }
    tokio::time::sleep(Duration::from_secs_f64(interval)).await;
    let second = client.call(Method::GET, "/channels", None).await?;
    let elapsed = taken.elapsed().as_secs_f64();
    let before: HashMap<String, u64> = rows(&first)
        .into_iter()
        .map(|r| (r.name, r.packets))
        .collect();
    let now = rows(&second);
    let rates = now
        .iter()
        .map(|r| {
            before
                .get(&r.name)
                .map(|p| r.packets.saturating_sub(*p) as f64 / elapsed)
        })
        .collect();
    Ok(render_table(&now, Some(rates)))
}

/// The aligned table; `rates` (one per row, `None` for a channel that
/// appeared between the samples) adds the packets/s column.
fn render_table(rows: &[Row], rates: Option<Vec<Option<f64>>>) -> String {
    if rows.is_empty() {
        return "no channels registered\n".to_string();
    }
    let mut header = vec!["NAME", "PORT", "STATUS"];
    if rates.is_some() {
        header.push("PACKETS/S");
    }
    header.extend(["PACKETS", "INVALID", "DROPS", "ARCHIVE"]);
    let mut cells: Vec<Vec<String>> = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let mut line = vec![r.name.clone(), r.port.to_string(), r.status.clone()];
        if let Some(rates) = &rates {
            line.push(match rates.get(i).copied().flatten() {
                Some(x) if x < 10.0 => format!("{x:.1}"),
                Some(x) => format!("{x:.0}"),
                None => "-".into(),
            });
        }
        line.extend([
            r.packets.to_string(),
            r.invalid.to_string(),
            r.drops.to_string(),
            human_bytes(r.archive_bytes),
        ]);
        cells.push(line);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            cells
                .iter()
                .map(|l| l[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    // Name and status read left to right; numbers line up on the right.
    let left = |c: usize| c == 0 || c == 2;
    let mut out = String::new();
    let mut push_line = |line: &[String]| {
        let mut text = String::new();
        for (c, cell) in line.iter().enumerate() {
            if c > 0 {
                text.push_str("  ");
            }
            if left(c) {
                let _ = write!(text, "{cell:<w$}", w = widths[c]);
            } else {
                let _ = write!(text, "{cell:>w$}", w = widths[c]);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    push_line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for line in &cells {
        push_line(line);
    }
    for r in rows.iter().filter(|r| r.error.is_some()) {
        let _ = writeln!(
            out,
            "{} {}: {}",
            r.name,
            r.status,
            r.error.as_deref().unwrap_or("")
        );
    }
    out
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `3.0 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn table_aligns_and_reports_failures() {
        let rows = vec![
            Row {
                name: "a".into(),
                port: 26000,
                status: "active".into(),
                error: None,
                packets: 123456,
                invalid: 0,
                drops: 0,
                archive_bytes: 2048,
            },
            Row {
                name: "longer-name".into(),
                port: 7,
                status: "failed".into(),
                error: Some("port 7 cannot be bound".into()),
                packets: 0,
                invalid: 3,
                drops: 1,
                archive_bytes: 0,
            },
        ];
        let t = render_table(&rows, Some(vec![Some(1000.4), None]));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "NAME          PORT  STATUS  PACKETS/S  PACKETS  INVALID  DROPS  ARCHIVE"
        );
        assert_eq!(
            lines[1],
            "a            26000  active       1000   123456        0      0  2.0 KiB"
        );
        assert_eq!(
            lines[2],
            "longer-name      7  failed          -        0        3      1      0 B"
        );
        assert_eq!(lines[3], "longer-name failed: port 7 cannot be bound");
        assert!(!render_table(&rows, None).contains("PACKETS/S"));
        assert_eq!(render_table(&[], None), "no channels registered\n");
    }

    #[test]
    fn flags_become_channel_settings() {
        let dir = tempfile::tempdir().unwrap();
        let schema = dir.path().join("s.avsc");
        std::fs::write(&schema, r#"{"type":"record","name":"r","fields":[]}"#).unwrap();
        let add = AddArgs {
            name: "n".into(),
            port: 26001,
            schema: schema.clone(),
            decimation: Some(4),
            algorithm: Some("rms".into()),
            outputs: vec!["127.0.0.1:7000".parse().unwrap()],
            decimated_outputs: vec![
                "[::1]:7001".parse().unwrap(),
                "239.1.1.2:7002".parse().unwrap(),
            ],
        };
        let body = registration(&add).unwrap();
        assert_eq!(body["schema"]["name"], "r");
        assert_eq!(
            body["config"],
            json!({
                "decimation": {"enabled": true, "factor": 4, "algorithm": "rms"},
                "outputs": {
                    "full_rate": [{"address": "127.0.0.1", "port": 7000}],
                    "decimated": [{"address": "::1", "port": 7001}, {"address": "239.1.1.2", "port": 7002}],
                },
            })
        );
        // The settings deserialize as the relay's own type would.
        let settings: speedrelay::config::ChannelSettings =
            serde_json::from_value(body["config"].clone()).unwrap();
        assert_eq!(settings.decimation.factor, 4);
        assert_eq!(settings.outputs.decimated.len(), 2);

        let plain = AddArgs {
            decimation: None,
            algorithm: None,
            outputs: vec![],
            decimated_outputs: vec![],
            ..add
        };
        assert!(registration(&plain).unwrap().get("config").is_none());

        std::fs::write(&schema, "\"long\"").unwrap();
        assert!(matches!(
            registration(&plain),
            Err(ClientError::SchemaNotObject { .. })
        ));
    }
}
