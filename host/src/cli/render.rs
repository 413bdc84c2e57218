//! How the client prints: the API's JSON or YAML as is, or tables for people.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Execution, Format};
use crate::api::{LogsView, PluginView, ResultView};
use crate::function::FunctionSpec;

/// Prints `value` in `format`; `table` renders the human form.
pub fn print<T: Serialize + ?Sized>(format: Format, value: &T, table: impl FnOnce() -> String) -> anyhow::Result<()> {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(value)? + "\n",
        Format::Yaml => serde_yaml::to_string(value)?,
        Format::Table => table(),
    };
    emit(&text);
    Ok(())
}

/// Writes to stdout; a closed pipe (`| head`) ends the program quietly, as it does for other
/// command-line tools.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("nanofaas: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(text, "{cell:<w$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

pub fn functions(specs: &[FunctionSpec]) -> String {
    let rows: Vec<Vec<String>> = specs
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.dispatcher.clone().unwrap_or_default(),
                s.version.map_or_else(String::new, |v| v.to_string()),
                s.timeout_ms.map_or_else(String::new, |t| format!("{t}ms")),
                s.concurrency.map_or_else(String::new, |c| c.to_string()),
                s.max_retries.map_or_else(String::new, |r| r.to_string()),
            ]
        })
        .collect();
    table(&["NAME", "DISPATCHER", "VERSION", "TIMEOUT", "CONCURRENCY", "RETRIES"], &rows)
}

pub fn function(spec: &FunctionSpec) -> String {
    serde_yaml::to_string(spec).unwrap_or_default()
}

pub fn plugins(plugins: &[PluginView]) -> String {
    // The digest's first 12 digits, as container tools show image ids (`-o json` has all 64).
    let short = |d: &str| d.get(..12).unwrap_or(d).to_string();
    let rows: Vec<Vec<String>> = plugins
        .iter()
        .map(|p| {
            let version = p.version.clone().unwrap_or_else(|| "-".into());
            vec![
                p.name.to_string(),
                version,
                p.contract.to_string(),
                p.capabilities.join(","),
                p.source.to_string(),
                short(&p.digest),
            ]
        })
        .collect();
    table(&["NAME", "VERSION", "CONTRACT", "CAPABILITIES", "SOURCE", "DIGEST"], &rows)
}

pub fn execution(exec: &Execution) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(out, "{name:<10} {value}");
    };
    field("id", &exec.execution_id);
    field("function", &exec.function);
    field("status", &exec.status);
    field("attempt", &exec.attempt.to_string());
    field("trace", &exec.trace_id);
    field("accepted", &exec.accepted_at);
    field("finished", exec.finished_at.as_deref().unwrap_or("-"));
    if let Some(error) = &exec.result.error {
        field("error", &format!("{}: {}", error.code, error.message));
    }
    if let Some(output) = &exec.result.output {
        field("output", &output.to_string());
    }
    if let Some(dropped) = &exec.result.output_not_retained {
        field("output", &dropped.message);
    }
    out
}

/// Logs for a person: the text as is; each pod's under a `==> pod NAME <==` line when there are
/// pods (as `tail` heads several files).
pub fn logs(logs: &LogsView) -> String {
    let mut out = String::new();
    for entry in &logs.logs {
        if let Some(pod) = &entry.pod {
            let _ = writeln!(out, "==> pod {pod} <==");
        }
        match (&entry.text, &entry.error) {
            (Some(text), _) => {
                out.push_str(text);
                if !text.is_empty() && !text.ends_with('\n') {
                    out.push('\n');
                }
            }
            (None, Some(error)) => {
                let _ = writeln!(out, "(not readable: {error})");
            }
            (None, None) => {}
        }
    }
    out
}

/// An output for a person: a string as its text, anything else as JSON.
pub fn output(output: Option<&serde_json::Value>) -> String {
    match output {
        Some(serde_json::Value::String(text)) => format!("{text}\n"),
        Some(value) => format!("{value}\n"),
        None => String::new(),
    }
}

/// "ended error: CODE: message".
pub fn failure(status: &str, result: &ResultView<serde_json::Value>) -> String {
    match &result.error {
        Some(e) => format!("ended {status}: {}: {}", e.code, e.message),
        None => format!("ended {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_logs_are_headed_by_their_pod() {
        use crate::api::LogEntry;
        let entry = |pod: &str, text: Option<&str>, error: Option<&str>| LogEntry {
            source: "pod".into(),
            pod: Some(pod.into()),
            text: text.map(Into::into),
            error: error.map(Into::into),
        };
        let view = LogsView {
            execution_id: "e".into(),
            logs: vec![entry("a", Some("one\ntwo"), None), entry("b", None, Some("container is waiting"))],
        };
        assert_eq!(logs(&view), "==> pod a <==\none\ntwo\n==> pod b <==\n(not readable: container is waiting)\n");
    }

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![vec!["a".to_string(), "longer".to_string()], vec!["bbbb".to_string(), "x".to_string()]];
        assert_eq!(table(&["N", "V"], &rows), "N     V\na     longer\nbbbb  x\n");
    }
}
