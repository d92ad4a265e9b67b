//! `speedrelay verify`: archive files checked (or repaired), one line each,
//! the exit status the worst file's.

use std::path::PathBuf;
use std::process::ExitCode;

/// `speedrelay verify FILE... [--repair] [--schema]`: one line per file;
/// the exit status is the worst file's.
pub fn verify(files: &[PathBuf], repair: bool, print_schema: bool) -> ExitCode {
    use speedrelay::verify::{self, Repaired};
    let mut status = 0u8;
    for path in files {
        let p = path.display();
        let outcome = if repair {
            verify::repair(path)
        } else {
            verify::scan(path).map(Repaired::Healthy)
        };
        let report = match outcome {
            Err(e) => {
                eprintln!("speedrelay: {p}: {e}");
                status = 2;
                continue;
            }
            Ok(Repaired::Removed(before)) => {
                if before.file_len == 0 {
                    println!("{p}: removed: it was empty (0 bytes, no Avro header)");
                } else {
                    println!("{p}: removed: it held no complete header, so no record");
                }
                continue;
            }
            Ok(Repaired::Truncated { before, after }) => {
                println!(
                    "{p}: repaired: cut from {} to {} bytes ({}); kept {}",
                    before.file_len,
                    after.file_len,
                    before
                        .tail
                        .as_ref()
                        .map_or(String::new(), |t| t.problem.to_string()),
                    summary(&after)
                );
                after
            }
            Ok(Repaired::Healthy(report)) => {
                match &report.tail {
                    None => println!("{p}: healthy: {}", summary(&report)),
                    // No header, so nothing to keep: repair removes the file.
                    Some(_) if report.file_len == 0 => {
                        status = status.max(1);
                        println!("{p}: empty: no Avro header (0 bytes); --repair removes it");
                    }
                    Some(_) if report.header_len == 0 => {
                        status = status.max(1);
                        println!(
                            "{p}: torn: the Avro header is incomplete ({} bytes), so no \
                             record is readable; --repair removes it",
                            report.file_len
                        );
                    }
                    Some(tail) => {
                        status = status.max(1);
                        println!(
                            "{p}: torn: {} bytes unreadable {tail}; readable: {}; \
                             --repair cuts the file to these {} bytes",
                            report.file_len - report.complete_len,
                            summary(&report),
                            report.complete_len
                        );
                    }
                }
                report
            }
        };
        if print_schema && !report.schema.is_empty() {
            println!("{}", report.schema);
        }
    }
    ExitCode::from(status)
}

/// `12 blocks, 1200 records, codec zstandard, schema ns.Name, 45678 bytes`.
fn summary(r: &speedrelay::verify::Report) -> String {
    let name = serde_json::from_str::<serde_json::Value>(&r.schema)
        .ok()
        .and_then(|v| match v {
            serde_json::Value::Object(o) => {
                let name = o.get("name")?.as_str()?.to_string();
                match o.get("namespace").and_then(|n| n.as_str()) {
                    Some(ns) if !ns.is_empty() && !name.contains('.') => {
                        Some(format!("{ns}.{name}"))
                    }
                    _ => Some(name),
                }
            }
            serde_json::Value::String(s) => Some(s),
            _ => None,
        })
        .unwrap_or_else(|| "(unnamed)".to_string());
    format!(
        "{} blocks, {} records, codec {}, schema {name}, {} bytes",
        r.blocks, r.records, r.codec, r.complete_len
    )
}
