//! What both SQL drivers share: the columns of an execution row and their mapping to and from
//! a [`Record`], written once over sqlx's generic row and query types.

use std::time::SystemTime;

use sqlx::{ColumnIndex, Database, Decode, Encode, Row, Type};

use super::{KeyRecord, StoreError};
use crate::execution::{
    ErrorInfo, ErrorKind, FinishedBy, Input, Output, PendingWork, Record, Snapshot, Status, from_unix_ms, unix_ms,
};
use crate::function::FunctionSpec;

/// The columns of `executions`, in the order [`bind_execution`] binds them.
pub(super) const EXECUTION_COLUMNS: &str = "id, function, spec, trace_id, idempotency_key, input_content_type, input, \
     input_metadata, accepted_at_ms, deadline_ms, status, attempt, started_at_ms, finished_at_ms, output_content_type, \
     output, error_code, error_message, error_kind, finished_by, pending_handle, pending_attempt, pending_resumable, \
     owner, epoch";

/// The statuses of unfinished executions, as SQL.
pub(super) const UNFINISHED: &str = "('queued', 'running')";

pub(super) type Query<'q, DB> = sqlx::query::Query<'q, DB, <DB as Database>::Arguments>;

fn ms(t: SystemTime) -> i64 {
    unix_ms(t) as i64
}

fn time(ms: i64) -> SystemTime {
    from_unix_ms(ms.max(0) as u64)
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} `{value}`"))
}

/// Binds every column of `record` (in [`EXECUTION_COLUMNS`] order).
pub(super) fn bind_execution<'q, DB: Database>(q: Query<'q, DB>, r: &Record) -> Result<Query<'q, DB>, StoreError>
where
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
    for<'t> Vec<u8>: Encode<'t, DB> + Type<DB>,
    for<'t> Option<Vec<u8>>: Encode<'t, DB> + Type<DB>,
{
    let spec = serde_json::to_string(&r.spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let metadata = serde_json::to_string(&r.input.metadata).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let s = &r.snapshot;
    let pending = r.pending.as_ref();
    Ok(q.bind(r.id.clone())
        .bind(r.spec.name.clone())
        .bind(spec)
        .bind(r.trace_id.clone())
        .bind(r.idempotency_key.clone())
        .bind(r.input.content_type.clone())
        .bind(r.input.body.to_vec())
        .bind(metadata)
        .bind(ms(r.accepted_at))
        .bind(r.deadline_unix_ms as i64)
        .bind(s.status.as_str().to_string())
        .bind(i64::from(s.attempt))
        .bind(s.started_at.map(ms))
        .bind(s.finished_at.map(ms))
        .bind(s.output.as_ref().map(|o| o.content_type.clone()))
        .bind(output_column(s))
        .bind(s.error.as_ref().map(|e| e.code.clone()))
        .bind(s.error.as_ref().map(|e| e.message.clone()))
        .bind(s.error_kind.map(|k| k.as_str().to_string()))
        .bind(s.finished_by.map(|b| b.as_str().to_string()))
        .bind(pending.map(|p| p.handle.clone()))
        .bind(pending.map(|p| i64::from(p.attempt)))
        .bind(pending.map(|p| i64::from(p.resumable)))
        .bind(r.owner.clone())
        .bind(r.epoch as i64))
}

/// Binds the terminal columns of a settle: status, attempt, finished_at_ms, output_content_type,
/// output, error_code, error_message, error_kind, finished_by.
pub(super) fn bind_terminal<'q, DB: Database>(q: Query<'q, DB>, s: &Snapshot) -> Query<'q, DB>
where
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
    for<'t> Option<Vec<u8>>: Encode<'t, DB> + Type<DB>,
{
    q.bind(s.status.as_str().to_string())
        .bind(i64::from(s.attempt))
        .bind(s.finished_at.map(ms))
        .bind(s.output.as_ref().map(|o| o.content_type.clone()))
        .bind(output_column(s))
        .bind(s.error.as_ref().map(|e| e.code.clone()))
        .bind(s.error.as_ref().map(|e| e.message.clone()))
        .bind(s.error_kind.map(|k| k.as_str().to_string()))
        .bind(s.finished_by.map(|b| b.as_str().to_string()))
}

/// The `output` column: the output's bytes, or — for an output over the retained-output cap,
/// with a NULL `output_content_type` — its [`DroppedOutput`](crate::execution::DroppedOutput)
/// as JSON (no schema change for a rare case).
fn output_column(s: &Snapshot) -> Option<Vec<u8>> {
    match (&s.output, &s.dropped_output) {
        (Some(o), _) => Some(o.body.to_vec()),
        (None, Some(d)) => Some(serde_json::to_vec(d).expect("a digest serializes")),
        (None, None) => None,
    }
}

/// Reads an execution row (all of [`EXECUTION_COLUMNS`]).
pub(super) fn read_execution<R>(row: &R) -> Result<Record, StoreError>
where
    R: Row,
    for<'r> &'r str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let text = |c: &str| row.try_get::<String, _>(c);
    let opt_int = |c: &str| row.try_get::<Option<i64>, _>(c);
    let spec = read_spec(&text("spec")?)?;
    let metadata: Vec<(String, String)> =
        serde_json::from_str(&text("input_metadata")?).map_err(|e| corrupt("metadata", &e.to_string()))?;
    let pending = match (row.try_get::<Option<String>, _>("pending_handle")?, opt_int("pending_attempt")?) {
        (Some(handle), Some(attempt)) => Some(PendingWork {
            handle,
            attempt: attempt as u32,
            resumable: opt_int("pending_resumable")?.unwrap_or(0) != 0,
        }),
        _ => None,
    };
    Ok(Record {
        id: text("id")?,
        spec,
        trace_id: text("trace_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        input: Input {
            content_type: text("input_content_type")?,
            body: row.try_get::<Vec<u8>, _>("input")?.into(),
            metadata,
        },
        accepted_at: time(row.try_get("accepted_at_ms")?),
        deadline_unix_ms: row.try_get::<i64, _>("deadline_ms")?.max(0) as u64,
        snapshot: read_snapshot(row)?,
        pending,
        owner: row.try_get("owner")?,
        epoch: row.try_get::<i64, _>("epoch")? as u64,
    })
}

/// Reads the state columns of an execution row: status, attempt, timestamps, result.
pub(super) fn read_snapshot<R>(row: &R) -> Result<Snapshot, StoreError>
where
    R: Row,
    for<'r> &'r str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let opt_text = |c: &str| row.try_get::<Option<String>, _>(c);
    let status_text: String = row.try_get("status")?;
    let status = Status::parse(&status_text).ok_or_else(|| corrupt("status", &status_text))?;
    let (mut output, mut dropped_output) = (None, None);
    match (opt_text("output_content_type")?, row.try_get::<Option<Vec<u8>>, _>("output")?) {
        (Some(content_type), Some(body)) => output = Some(Output { content_type, body: body.into() }),
        (None, Some(digest)) => {
            dropped_output =
                Some(serde_json::from_slice(&digest).map_err(|e| corrupt("output digest", &e.to_string()))?)
        }
        _ => {}
    }
    let error = match (opt_text("error_code")?, opt_text("error_message")?) {
        (Some(code), Some(message)) => Some(ErrorInfo { code, message }),
        _ => None,
    };
    let error_kind = match opt_text("error_kind")? {
        Some(k) => Some(ErrorKind::parse(&k).ok_or_else(|| corrupt("error kind", &k))?),
        None => None,
    };
    let finished_by = match opt_text("finished_by")? {
        Some(b) => Some(FinishedBy::parse(&b).ok_or_else(|| corrupt("finisher", &b))?),
        None => None,
    };
    Ok(Snapshot {
        dropped_output,
        status,
        attempt: row.try_get::<i64, _>("attempt")? as u32,
        started_at: row.try_get::<Option<i64>, _>("started_at_ms")?.map(time),
        finished_at: row.try_get::<Option<i64>, _>("finished_at_ms")?.map(time),
        output,
        error,
        error_kind,
        finished_by,
    })
}

/// Reads an idempotency key row (`function, key, execution_id, fingerprint, expires_at_ms`).
pub(super) fn read_key<R>(row: &R) -> Result<KeyRecord, StoreError>
where
    R: Row,
    for<'r> &'r str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    let fp: Vec<u8> = row.try_get("fingerprint")?;
    Ok(KeyRecord {
        function: row.try_get("function")?,
        key: row.try_get("key")?,
        fingerprint: fp.try_into().map_err(|_| StoreError::Corrupt("a fingerprint is not 32 bytes".into()))?,
        execution_id: row.try_get("execution_id")?,
        expires_at: time(row.try_get("expires_at_ms")?),
    })
}

/// A function spec as stored.
/// A spec as stored: without its `version`, which has a column of its own.
pub(super) fn spec_json(spec: &FunctionSpec) -> String {
    let mut value = serde_json::to_value(spec).expect("a spec serializes");
    if let Some(map) = value.as_object_mut() {
        map.remove("version");
    }
    value.to_string()
}

pub(super) fn read_spec(text: &str) -> Result<FunctionSpec, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt("function spec", &e.to_string()))
}

/// A row of `functions`: its spec and its version column.
pub(super) fn read_function(text: &str, version: i64) -> Result<FunctionSpec, StoreError> {
    let mut spec = read_spec(text)?;
    spec.version = Some(version as u64);
    Ok(spec)
}

pub(super) fn now_ms() -> i64 {
    ms(SystemTime::now())
}

pub(super) fn to_ms(t: SystemTime) -> i64 {
    ms(t)
}

/// Answers the writes of `chunk` whose execution id came back (first column of `returned`)
/// with `hit`; the others `Lost` (starts and pending writes) or unanswered (settles, which the
/// caller looks at again one by one).
pub(super) fn answer_by_id<R>(
    results: &mut [Option<Result<super::Written, StoreError>>],
    writes: &[super::Write],
    chunk: &[usize],
    returned: Vec<R>,
    hit: super::Written,
) -> Result<(), StoreError>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    use super::{Write, Written};
    let ids: std::collections::HashSet<String> =
        returned.iter().map(|r| r.try_get::<String, _>(0)).collect::<Result<_, _>>()?;
    for &i in chunk {
        let id = match &writes[i] {
            Write::Start { id, .. } | Write::Pending { id, .. } | Write::Settle { id, .. } => id,
            _ => continue,
        };
        if ids.contains(id) {
            results[i] = Some(Ok(hit.clone()));
        } else if !matches!(writes[i], Write::Settle { .. }) {
            results[i] = Some(Ok(Written::Lost));
        }
    }
    Ok(())
}

/// `rows` rows of placeholders for a multi-row `VALUES`: `(?, ?), (?, ?)` for SQLite, or
/// `($1::text, $2::bigint), ($3::text, …)` for PostgreSQL when `types` are given (PostgreSQL
/// needs them to type a `VALUES` list).
pub(super) fn values(rows: usize, columns: usize, types: Option<&[&str]>) -> String {
    let mut out = String::with_capacity(rows * columns * 8);
    let mut n = 0;
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                out.push_str(", ");
            }
            n += 1;
            match types {
                Some(types) => {
                    out.push('$');
                    out.push_str(&n.to_string());
                    out.push_str("::");
                    out.push_str(types[c]);
                }
                None => out.push('?'),
            }
        }
        out.push(')');
    }
    out
}

/// Binds the row of a settle in a multi-row statement: id, the terminal columns of
/// [`bind_terminal`], epoch, then started_at_ms (for a start folded into the settle).
pub(super) fn bind_settle_row<'q, DB: Database>(
    q: Query<'q, DB>,
    id: &str,
    s: &Snapshot,
    epoch: Option<u64>,
) -> Query<'q, DB>
where
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
    for<'t> Option<Vec<u8>>: Encode<'t, DB> + Type<DB>,
{
    bind_terminal(q.bind(id.to_string()), s).bind(epoch.map(|e| e as i64)).bind(s.started_at.map(ms))
}

/// Why a settle did not apply, from the execution's row as it is now (`None`: no row). A
/// callback's settle (`by_callback`) for `attempt` is refused while the store is at a later one.
pub(super) fn unsettled(now: Option<Snapshot>, by_callback: bool, attempt: u32) -> super::Written {
    use super::Written;
    match now {
        None => Written::NotFound,
        Some(s) if s.status.is_terminal() => Written::AlreadyFinished(Box::new(s)),
        Some(s) if by_callback && s.attempt > attempt => Written::Stale(s.attempt),
        Some(_) => Written::Lost,
    }
}

/// Binds the row of a start: id, epoch, attempt, started_at_ms.
pub(super) fn bind_start_row<'q, DB: Database>(
    q: Query<'q, DB>,
    id: &str,
    epoch: u64,
    attempt: u32,
    started: SystemTime,
) -> Query<'q, DB>
where
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    q.bind(id.to_string()).bind(epoch as i64).bind(i64::from(attempt)).bind(ms(started))
}

/// Binds the row of a pending write: id, epoch, handle, attempt, resumable.
pub(super) fn bind_pending_row<'q, DB: Database>(
    q: Query<'q, DB>,
    id: &str,
    epoch: u64,
    pending: Option<&crate::execution::PendingWork>,
) -> Query<'q, DB>
where
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> Option<String>: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
    for<'t> Option<i64>: Encode<'t, DB> + Type<DB>,
{
    q.bind(id.to_string())
        .bind(epoch as i64)
        .bind(pending.map(|p| p.handle.clone()))
        .bind(pending.map(|p| i64::from(p.attempt)))
        .bind(pending.map(|p| i64::from(p.resumable)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_lists() {
        assert_eq!(super::values(2, 2, None), "(?, ?), (?, ?)");
        assert_eq!(super::values(2, 2, Some(&["text", "bigint"])), "($1::text, $2::bigint), ($3::text, $4::bigint)");
    }
}
