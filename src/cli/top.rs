//! `speedrelay top`: a full-screen live table of a running relay's
//! channels (rates, drops, invalid, archive) with a records/s sparkline of
//! the last minute each, for operators on SSH. It polls the HTTP API
//! (`GET /channels` and each channel's `/history`), so it works against any
//! relay it can reach; `q`, `Esc` or Ctrl-C quit and restore the terminal
//! (ratatui's init also restores it on a panic).

use std::time::{Duration, Instant};

use hyper::Method;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use serde_json::Value;

use super::channels::DEFAULT_URL;
use super::client::{ApiClient, ClientError};

/// Seconds of history in a row's sparkline.
const SPARK_SECONDS: usize = 60;
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// `speedrelay top`
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Base URL of the relay's API (http only). The token, if the relay has
    /// one, is taken from SPEEDRELAY_API_TOKEN.
    #[arg(long, env = "SPEEDRELAY_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Seconds between two refreshes (0.2 to 60).
    #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.2..=60.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: give seconds from 0.2 to 60")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("speedrelay top needs a terminal: {0}")]
    Terminal(std::io::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// One channel row, from its API object and history.
#[derive(Debug, Default, Clone)]
struct ChannelRow {
    name: String,
    port: u64,
    status: String,
    records: u64,
    invalid: u64,
    drops: u64,
    archive_bytes: u64,
    /// Records per second, oldest first; with whether that second had
    /// drops or invalid records.
    history: Vec<(u64, bool)>,
}

impl ChannelRow {
    fn of(channel: &Value, history: Option<&Value>) -> Self {
        let s = &channel["stats"];
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        let col = |h: &Value, k: &str| -> Vec<u64> {
            h[k].as_array()
                .map(|a| a.iter().map(n).collect())
                .unwrap_or_default()
        };
        let history = history
            .map(|h| {
                let records = col(h, "records");
                let invalid = col(h, "invalid");
                let drops = col(h, "kernel_drops");
                records
                    .iter()
                    .enumerate()
                    .map(|(i, &r)| {
                        let bad = invalid.get(i).copied().unwrap_or(0)
                            + drops.get(i).copied().unwrap_or(0);
                        (r, bad > 0)
                    })
                    .collect()
            })
            .unwrap_or_default();
        ChannelRow {
            name: channel["name"].as_str().unwrap_or("?").to_string(),
            port: n(&channel["port"]),
            status: channel["status"].as_str().unwrap_or("?").to_string(),
            records: n(&s["packets"]).saturating_sub(n(&s["invalid"])),
            invalid: n(&s["invalid"]),
            drops: n(&s["kernel_drops"]),
            archive_bytes: n(&s["archive_bytes"]),
            history,
        }
    }

    /// Records in the last whole second.
    fn rate(&self) -> Option<u64> {
        self.history.last().map(|&(r, _)| r)
    }

    fn sparkline(&self, width: usize) -> Line<'static> {
        let tail = &self.history[self.history.len().saturating_sub(width)..];
        let peak = tail.iter().map(|&(r, _)| r).max().unwrap_or(0).max(1);
        let spans: Vec<Span> = tail
            .iter()
            .map(|&(r, bad)| {
                let level = if r == 0 {
                    0
                } else {
                    ((r * 7).div_ceil(peak)) as usize
                };
                let style = if bad {
                    Style::default().fg(Color::Red)
                } else {
                    Style::default().fg(Color::Cyan)
                };
                Span::styled(BARS[level.min(7)].to_string(), style)
            })
            .collect();
        Line::from(spans)
    }
}

/// What one refresh got.
struct Snapshot {
    rows: Vec<ChannelRow>,
    error: Option<String>,
    at: Instant,
}

/// The channels, in name order, with the history of the first `shown`
/// (those that fit on the screen: a relay with many channels is not asked
/// for every history every refresh).
async fn fetch(client: &ApiClient, shown: usize) -> Result<Vec<ChannelRow>, ClientError> {
    let list = client.call(Method::GET, "/channels", None).await?;
    let mut channels = list["channels"].as_array().cloned().unwrap_or_default();
    channels.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut rows = Vec::with_capacity(channels.len());
    for (i, c) in channels.iter().enumerate() {
        let name = c["name"].as_str().unwrap_or("");
        // A channel removed meanwhile has no history: shown without one.
        let history = if i < shown {
            client
                .call(
                    Method::GET,
                    &format!("/channels/{name}/history?seconds={SPARK_SECONDS}"),
                    None,
                )
                .await
                .ok()
        } else {
            None
        };
        rows.push(ChannelRow::of(c, history.as_ref()));
    }
    Ok(rows)
}

/// Runs `speedrelay top` until q, Esc or Ctrl-C.
pub fn run(args: TopArgs) -> Result<(), TopError> {
    let client = ApiClient::from_env(&args.url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(TopError::Runtime)?;
    // Fails cleanly (no raw mode left behind) when there is no terminal.
    let mut terminal = ratatui::try_init().map_err(TopError::Terminal)?;
    let outcome = run_loop(&mut terminal, &runtime, &client, &args);
    ratatui::restore();
    outcome
}

fn run_loop(
    terminal: &mut ratatui::DefaultTerminal,
    runtime: &tokio::runtime::Runtime,
    client: &ApiClient,
    args: &TopArgs,
) -> Result<(), TopError> {
    let interval = Duration::from_secs_f64(args.interval);
    let mut snapshot = Snapshot {
        rows: Vec::new(),
        error: None,
        at: Instant::now(),
    };
    let mut next = Instant::now();
    loop {
        if Instant::now() >= next {
            // Rows that fit: the screen less the title, borders, header and foot.
            let shown = usize::from(terminal.size().map_or(50, |s| s.height).saturating_sub(5));
            match runtime.block_on(fetch(client, shown)) {
                Ok(rows) => {
                    snapshot.rows = rows;
                    snapshot.error = None;
                }
                Err(e) => snapshot.error = Some(e.to_string()),
            }
            snapshot.at = Instant::now();
            next = snapshot.at + interval;
            terminal
                .draw(|f| draw(f, &snapshot, &args.url))
                .map_err(TopError::Terminal)?;
        }
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait).map_err(TopError::Terminal)? {
            match event::read().map_err(TopError::Terminal)? {
                Event::Key(k) if k.kind == KeyEventKind::Press => {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
                Event::Resize(..) => terminal
                    .draw(|f| draw(f, &snapshot, &args.url))
                    .map(|_| ())
                    .map_err(TopError::Terminal)?,
                _ => {}
            }
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

fn draw(f: &mut ratatui::Frame, snap: &Snapshot, url: &str) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let total_rate: u64 = snap.rows.iter().filter_map(ChannelRow::rate).sum();
    let title = format!(
        " speedrelay top · {url} · {} channel{} · {total_rate} records/s",
        snap.rows.len(),
        if snap.rows.len() == 1 { "" } else { "s" }
    );
    f.render_widget(
        Paragraph::new(title).style(Style::default().add_modifier(Modifier::BOLD)),
        head,
    );
    let spark_width = usize::from(body.width.saturating_sub(80)).clamp(10, SPARK_SECONDS);
    let header = Row::new(
        [
            "CHANNEL",
            "PORT",
            "STATUS",
            "REC/S",
            "LAST MINUTE",
            "RECORDS",
            "INVALID",
            "DROPS",
            "ARCHIVE",
        ]
        .map(|h| Cell::from(h).style(Style::default().add_modifier(Modifier::BOLD))),
    );
    let rows = snap.rows.iter().map(|r| {
        let status = if r.status == "active" {
            Style::default().fg(Color::Green)
        } else {
            Style::default().fg(Color::Red)
        };
        let warn = |n: u64| {
            if n > 0 {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
            }
        };
        Row::new(vec![
            Cell::from(r.name.clone()),
            Cell::from(r.port.to_string()),
            Cell::from(r.status.clone()).style(status),
            Cell::from(r.rate().map_or("–".into(), |v| v.to_string())),
            Cell::from(r.sparkline(spark_width)),
            Cell::from(r.records.to_string()),
            Cell::from(r.invalid.to_string()).style(warn(r.invalid)),
            Cell::from(r.drops.to_string()).style(warn(r.drops)),
            Cell::from(human_bytes(r.archive_bytes)),
        ])
    });
    let widths = [
        Constraint::Min(12),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(spark_width as u16),
        Constraint::Length(12),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(10),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered())
        .column_spacing(1);
    f.render_widget(table, body);
    let foot_text = match &snap.error {
        Some(e) => Line::from(Span::styled(
            format!(" {e} · retrying · q quits"),
            Style::default().fg(Color::Red),
        )),
        None => Line::from(format!(
            " updated {:.0} s ago · red: seconds with drops or invalid records · q quits",
            snap.at.elapsed().as_secs_f64()
        )),
    };
    f.render_widget(Paragraph::new(foot_text), foot);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_row_takes_its_rate_and_marks_from_the_history() {
        let c = json!({"name": "a", "port": 5, "status": "active",
            "stats": {"packets": 10, "invalid": 2, "kernel_drops": 1, "archive_bytes": 2048}});
        let h = json!({"records": [0, 7, 3], "invalid": [0, 0, 1], "kernel_drops": [0, 1, 0]});
        let r = ChannelRow::of(&c, Some(&h));
        assert_eq!(r.records, 8);
        assert_eq!(r.rate(), Some(3));
        assert_eq!(r.history, [(0, false), (7, true), (3, true)]);
        let line = r.sparkline(10);
        let text: String = line.spans.iter().map(|s| s.content.as_ref()).collect();
        assert_eq!(text, "▁█▄");
        assert_eq!(human_bytes(2048), "2.0 KiB");
    }

    #[test]
    fn the_interval_is_bounded() {
        assert!(parse_interval("0.1").is_err());
        assert!(parse_interval("x").is_err());
        assert_eq!(parse_interval("2"), Ok(2.0));
    }
}
