//! The store contract, checked against both drivers: SQLite in a temporary directory and a
//! throwaway PostgreSQL server (tests/support/src/postgres.rs). Every check runs twice, once
//! per driver, through the same `Store` trait the host uses.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nanofaas::execution::{
    ErrorInfo, ErrorKind, FinishedBy, Input, Output, PendingWork, Record, Snapshot, Status, from_unix_ms, unix_ms,
};
use nanofaas::function::FunctionSpec;
use nanofaas::store::{
    self, Event, KeyRecord, Limit, Location, ProcessRecord, Replaced, Store, StoreError, TakeOver, Write, Written,
};
use nanofaas_test_support::postgres::Postgres;

/// A store of each kind, with what keeps it alive.
enum Under {
    Sqlite(tempfile::TempDir),
    Postgres(Postgres, String),
}

impl Under {
    fn sqlite() -> Self {
        Under::Sqlite(tempfile::tempdir().unwrap())
    }

    fn postgres() -> Self {
        let pg = Postgres::start(false).unwrap();
        let url = pg.database("nanofaas").unwrap();
        Under::Postgres(pg, url)
    }

    fn location(&self) -> Location {
        match self {
            Under::Sqlite(dir) => Location::Sqlite(dir.path().join("nanofaas.db")),
            Under::Postgres(_, url) => Location::Postgres(url.clone()),
        }
    }

    async fn open(&self) -> Arc<dyn Store> {
        store::open(&self.location()).await.unwrap()
    }
}

/// Runs `check` against SQLite and against PostgreSQL, as two tests.
macro_rules! both {
    ($name:ident, $check:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$check(super::Under::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$check(super::Under::postgres()).await;
            }
        }
    };
}

fn spec(name: &str) -> FunctionSpec {
    FunctionSpec { name: name.into(), dispatcher: Some("echo".into()), ..Default::default() }
        .resolve(Duration::from_secs(900))
        .unwrap()
}

fn record(id: &str, owner: &str) -> Record {
    Record {
        id: id.into(),
        spec: spec("f"),
        trace_id: "trace".into(),
        idempotency_key: None,
        input: Input {
            content_type: "application/json".into(),
            body: br#"{"x":[1,2]}"#.to_vec().into(),
            metadata: vec![("k".into(), "v".into())],
        },
        // Whole milliseconds: that is what the store keeps.
        accepted_at: from_unix_ms(unix_ms(SystemTime::now())),
        deadline_unix_ms: unix_ms(SystemTime::now()) + 60_000,
        snapshot: Snapshot::queued(),
        pending: None,
        owner: Some(owner.into()),
        epoch: 1,
    }
}

fn insert(r: &Record) -> Write {
    Write::Insert { record: Box::new(r.clone()), key: None, limit: None }
}

fn terminal(status: Status, body: &str) -> Snapshot {
    let now = from_unix_ms(unix_ms(SystemTime::now()));
    let mut s = Snapshot { status, attempt: 1, started_at: Some(now), finished_at: Some(now), ..Snapshot::queued() };
    match status {
        Status::Success => {
            s.output = Some(Output { content_type: "application/json".into(), body: body.to_string().into() })
        }
        _ => {
            s.error = Some(ErrorInfo { code: "X".into(), message: body.into() });
            s.error_kind = Some(ErrorKind::Platform);
        }
    }
    s.finished_by = Some(FinishedBy::Plugin);
    s
}

fn settle(id: &str, epoch: Option<u64>, s: Snapshot) -> Write {
    Write::Settle { id: id.into(), function: "f".into(), epoch, terminal: s }
}

async fn round_trip(under: Under) {
    let store = under.open().await;
    let mut r = record("e1", "a");
    r.idempotency_key = Some("key".into());
    assert_eq!(store.write(insert(&r)).await.unwrap(), Written::Inserted);
    assert_eq!(store.execution("e1").await.unwrap(), Some(r.clone()), "read back as written");
    assert_eq!(store.execution("nope").await.unwrap(), None);

    let started = from_unix_ms(unix_ms(SystemTime::now()));
    let start = Write::Start { id: "e1".into(), epoch: 1, attempt: 2, started_at: started };
    assert_eq!(store.write(start).await.unwrap(), Written::Done);
    let work = PendingWork { handle: "job-1".into(), attempt: 2, resumable: true };
    let pending = Write::Pending { id: "e1".into(), epoch: 1, pending: Some(work.clone()) };
    assert_eq!(store.write(pending).await.unwrap(), Written::Done);
    let back = store.execution("e1").await.unwrap().unwrap();
    assert_eq!(
        (back.snapshot.status, back.snapshot.attempt, back.snapshot.started_at),
        (Status::Running, 2, Some(started))
    );
    assert_eq!(back.pending, Some(work));

    let done = terminal(Status::Success, r#"{"ok":true}"#);
    assert_eq!(store.write(settle("e1", Some(1), done.clone())).await.unwrap(), Written::Settled);
    let back = store.execution("e1").await.unwrap().unwrap();
    assert_eq!(back.snapshot.status, Status::Success);
    assert_eq!(back.snapshot.output, done.output);
    assert_eq!(back.pending, None, "a settle clears the pending work");

    // An output over the retained-output cap is kept as its size and digest.
    store.write(insert(&record("e2", "a"))).await.unwrap();
    let big = terminal(Status::Success, &"y".repeat(100)).retained(10);
    assert!(big.output.is_none() && big.dropped_output.as_ref().is_some_and(|d| d.bytes == 100));
    assert_eq!(store.write(settle("e2", Some(1), big.clone())).await.unwrap(), Written::Settled);
    assert_eq!(store.execution("e2").await.unwrap().unwrap().snapshot, big);
}
both!(records_round_trip, round_trip);

async fn first_settle_wins(under: Under) {
    let store = under.open().await;
    store.write(insert(&record("e1", "a"))).await.unwrap();
    let first = terminal(Status::Success, "1");
    assert_eq!(store.write(settle("e1", None, first.clone())).await.unwrap(), Written::Settled);
    match store.write(settle("e1", Some(1), terminal(Status::Timeout, "late"))).await.unwrap() {
        Written::AlreadyFinished(s) => assert_eq!((s.status, s.output), (Status::Success, first.output.clone())),
        other => panic!("expected AlreadyFinished, got {other:?}"),
    }
    // Nothing after the end changes the record: not a start, not pending work.
    let start = Write::Start { id: "e1".into(), epoch: 1, attempt: 3, started_at: SystemTime::now() };
    store.write(start).await.unwrap();
    assert_eq!(store.execution("e1").await.unwrap().unwrap().snapshot.status, Status::Success);
    assert_eq!(store.write(settle("ghost", None, first)).await.unwrap(), Written::NotFound);
}
both!(first_settle_wins, first_settle_wins);

async fn stale_epochs_are_refused(under: Under) {
    let store = under.open().await;
    store.join("a", Duration::from_secs(60)).await.unwrap();
    store.write(insert(&record("e1", "a"))).await.unwrap();
    // Replica b takes everything over (a is gone): the epoch moves on.
    store.join("b", Duration::from_secs(60)).await.unwrap();
    let taken = store.take_over("b", TakeOver::AllOthers).await.unwrap();
    assert_eq!(taken.records.len(), 1);
    assert_eq!((taken.records[0].owner.as_deref(), taken.records[0].epoch), (Some("b"), 2));
    assert!(taken.replicas.contains(&"a".to_string()), "{:?}", taken.replicas);
    // a, stale, can neither settle nor move it.
    let stale = Write::Start { id: "e1".into(), epoch: 1, attempt: 1, started_at: SystemTime::now() };
    assert_eq!(store.write(stale).await.unwrap(), Written::Lost);
    assert_eq!(store.write(settle("e1", Some(1), terminal(Status::Error, "stale"))).await.unwrap(), Written::Lost);
    assert_eq!(store.execution("e1").await.unwrap().unwrap().snapshot.status, Status::Queued);
    // b can.
    assert_eq!(store.write(settle("e1", Some(2), terminal(Status::Success, "2"))).await.unwrap(), Written::Settled);
    // Nothing is left to take over.
    assert!(store.take_over("c", TakeOver::AllOthers).await.unwrap().records.is_empty());
}
both!(stale_epochs_are_refused, stale_epochs_are_refused);

/// A callback's settle (no epoch) carries its token's attempt: refused while the store is at a
/// later attempt, accepted at the same one or at a later one the store has not heard of yet.
/// Both the one-by-one and the batched statement are checked (writes made at once are batched).
async fn callbacks_of_earlier_attempts_are_refused(under: Under) {
    let store = under.open().await;
    let at = |attempt, body: &str| Snapshot { attempt, ..terminal(Status::Success, body) };
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("e{i}");
            store.write(insert(&record(&id, "a"))).await.unwrap();
            let start = Write::Start { id: id.clone(), epoch: 1, attempt: 2, started_at: SystemTime::now() };
            assert_eq!(store.write(start).await.unwrap(), Written::Done);
            let stale = store.write(settle(&id, None, at(1, "stale"))).await.unwrap();
            // The store has not heard of attempt 3 (its start is behind): the driver has.
            let ahead = store.write(settle(&id, None, at(3, "ahead"))).await.unwrap();
            (stale, ahead)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), (Written::Stale(2), Written::Settled));
    }
    let r = store.execution("e7").await.unwrap().unwrap();
    assert_eq!((r.snapshot.status, r.snapshot.attempt), (Status::Success, 3));
    assert_eq!(r.snapshot.output.unwrap().body.as_ref(), b"ahead");
    // A driver's settle (with its epoch) is not held to an attempt.
    store.write(insert(&record("d", "a"))).await.unwrap();
    let start = Write::Start { id: "d".into(), epoch: 1, attempt: 2, started_at: SystemTime::now() };
    store.write(start).await.unwrap();
    assert_eq!(store.write(settle("d", Some(1), at(1, "driver"))).await.unwrap(), Written::Settled);
}
both!(callbacks_of_earlier_attempts_are_refused, callbacks_of_earlier_attempts_are_refused);

async fn idempotency_keys(under: Under) {
    let store = under.open().await;
    let key = |id: &str, ttl: Duration| KeyRecord {
        function: "f".into(),
        key: "k".into(),
        fingerprint: [7; 32],
        execution_id: id.into(),
        expires_at: SystemTime::now() + ttl,
    };
    let hour = Duration::from_secs(3600);
    let w = |id: &str, k: KeyRecord| Write::Insert { record: Box::new(record(id, "a")), key: Some(k), limit: None };
    assert_eq!(store.write(w("e1", key("e1", hour))).await.unwrap(), Written::Inserted);
    let live = store.key("f", "k").await.unwrap().expect("a live key");
    assert_eq!((live.execution_id.as_str(), live.fingerprint), ("e1", [7; 32]));
    match store.write(w("e2", key("e2", hour))).await.unwrap() {
        Written::Existing(k) => assert_eq!((k.execution_id.as_str(), k.fingerprint), ("e1", [7; 32])),
        other => panic!("expected Existing, got {other:?}"),
    }
    assert_eq!(store.execution("e2").await.unwrap(), None, "a re-attached request creates nothing");
    assert_eq!(store.key("g", "k").await.unwrap(), None, "keys are per function");
    // A forgotten key is free again.
    store.write(Write::ForgetKey { function: "f".into(), key: "k".into() }).await.unwrap();
    assert_eq!(store.write(w("e3", key("e3", Duration::from_millis(1)))).await.unwrap(), Written::Inserted);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.key("f", "k").await.unwrap(), None, "an expired key is not live");
    assert_eq!(store.write(w("e4", key("e4", hour))).await.unwrap(), Written::Inserted, "an expired key is free");
}
both!(idempotency_keys, idempotency_keys);

async fn functions_and_secret(under: Under) {
    let store = under.open().await;
    assert!(store.create_function(&spec("a")).await.unwrap());
    assert!(!store.create_function(&spec("a")).await.unwrap(), "a taken name is refused");
    let mut changed = spec("a");
    changed.timeout_ms = Some(1234);
    assert_eq!(store.put_function(&changed).await.unwrap(), 2, "the version counts changes");
    assert_eq!(store.put_function(&spec("b")).await.unwrap(), 1);
    changed.version = Some(2);
    assert_eq!(store.function("a").await.unwrap(), Some(changed.clone()));
    // Replacing checks the version it was made against, in one step.
    let mut replaced = changed.clone();
    replaced.timeout_ms = Some(99);
    assert_eq!(store.replace_function(&replaced, Some(1)).await.unwrap(), Replaced::Changed(2));
    assert_eq!(store.function("a").await.unwrap(), Some(changed.clone()), "a refused change changes nothing");
    assert_eq!(store.replace_function(&replaced, Some(2)).await.unwrap(), Replaced::Done(3));
    assert_eq!(store.replace_function(&replaced, None).await.unwrap(), Replaced::Done(4));
    assert_eq!(store.replace_function(&spec("zz"), None).await.unwrap(), Replaced::Missing);
    assert!(store.function("zz").await.unwrap().is_none());
    changed = replaced;
    changed.version = Some(4);
    assert_eq!(store.function("a").await.unwrap(), Some(changed.clone()));
    let names: Vec<_> = store.functions().await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(store.delete_function("b").await.unwrap());
    assert!(!store.delete_function("b").await.unwrap());
    let secret = store.secret().await.unwrap();
    assert_eq!(secret.len(), 64);
    assert_eq!(store.secret().await.unwrap(), secret, "generated once");
    drop(store);
    // Everything is there after reopening.
    let store = under.open().await;
    assert_eq!(store.secret().await.unwrap(), secret, "kept across restarts");
    assert_eq!(store.functions().await.unwrap(), vec![changed]);
}
both!(functions_and_secret, functions_and_secret);

async fn leases_and_processes(under: Under) {
    let store = under.open().await;
    store.join("a", Duration::from_millis(300)).await.unwrap();
    assert!(store.renew("a", Duration::from_millis(300)).await.unwrap());
    let p = ProcessRecord {
        replica: "a".into(),
        machine: "m1".into(),
        pgid: 4242,
        start_ticks: 99,
        execution_id: "e1".into(),
    };
    store.write(Write::Process(p.clone())).await.unwrap();
    store.write(Write::Process(ProcessRecord { pgid: 4343, ..p.clone() })).await.unwrap();
    store.write(Write::ForgetProcess { replica: "a".into(), pgid: 4343 }).await.unwrap();
    assert!(store.take_processes(&["a".into()], "m2").await.unwrap().is_empty(), "only this machine's");
    assert_eq!(store.take_processes(&["a".into()], "m1").await.unwrap(), vec![p]);
    assert!(store.take_processes(&["a".into()], "m1").await.unwrap().is_empty(), "taken once");
    if store.info().shared {
        // A lease that ran out cannot be renewed: its replica has to let go.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!store.renew("a", Duration::from_millis(300)).await.unwrap());
    }
    store.leave("a").await.unwrap();
    assert!(!store.renew("a", Duration::from_secs(1)).await.unwrap(), "a replica that left has no lease");
}
both!(leases_and_processes, leases_and_processes);

async fn eviction(under: Under) {
    let store = under.open().await;
    for i in 0..5 {
        let id = format!("e{i}");
        store.write(insert(&record(&id, "a"))).await.unwrap();
        store.write(settle(&id, None, terminal(Status::Success, "1"))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.write(insert(&record("running", "a"))).await.unwrap();
    assert_eq!(store.evict(Duration::from_secs(3600), 2).await.unwrap(), 3, "over the count cap, oldest first");
    assert!(store.execution("e0").await.unwrap().is_none());
    assert!(store.execution("e4").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.evict(Duration::from_millis(1), 100).await.unwrap(), 2, "past retention");
    assert!(store.execution("running").await.unwrap().is_some(), "unfinished executions are never evicted");
}
both!(eviction, eviction);

async fn group_commit_keeps_order(under: Under) {
    let store = under.open().await;
    // Many writers at once; each one's writes land in the order it made them.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("e{i}");
            store.write(insert(&record(&id, "a"))).await.unwrap();
            store.write_behind(Write::Start { id: id.clone(), epoch: 1, attempt: 1, started_at: SystemTime::now() });
            store.write(settle(&id, Some(1), terminal(Status::Success, "1"))).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Written::Settled);
    }
    for i in [0, 99, 199] {
        let r = store.execution(&format!("e{i}")).await.unwrap().unwrap();
        assert_eq!((r.snapshot.status, r.snapshot.attempt), (Status::Success, 1));
    }
}
both!(group_commit_keeps_order, group_commit_keeps_order);

async fn newer_schemas_are_refused(under: Under) {
    let store = under.open().await;
    drop(store);
    // A later nanofaas migrated it further.
    match &under {
        Under::Sqlite(dir) => {
            let path = dir.path().join("nanofaas.db");
            let out = std::process::Command::new("python3")
                .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'future', 1, x'00', 0)\"); c.commit()"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        Under::Postgres(pg, _) => {
            let psql = nanofaas_test_support::postgres::binaries_dir().unwrap().join("psql");
            let out = std::process::Command::new(psql)
                .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "nanofaas", "-d", "nanofaas", "-c"])
                .arg("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99, 'future', true, '\\x00', 0)")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    match store::open(&under.location()).await {
        Err(StoreError::Schema(message)) => {
            assert!(message.contains("schema version 99") && message.contains("newer"), "{message}")
        }
        Err(e) => panic!("expected a schema error, got {e}"),
        Ok(_) => panic!("a store of a newer schema was opened"),
    }
}
both!(newer_schemas_are_refused, newer_schemas_are_refused);

#[tokio::test]
async fn an_embedded_store_serves_one_process() {
    let under = Under::sqlite();
    let store = under.open().await;
    match store::open(&under.location()).await {
        Err(StoreError::Locked(message)) => assert!(message.contains("another nanofaas process"), "{message}"),
        Err(e) => panic!("expected the lock error, got {e}"),
        Ok(_) => panic!("two processes opened one embedded store"),
    }
    drop(store);
    under.open().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_shares_admission_slots_and_events() {
    let under = Under::postgres();
    let a = under.open().await;
    let b = under.open().await;
    let mut events = b.events().expect("a shared store has events");
    let limit = Some(Limit { total: 2, concurrency: 1 });
    let admit = |id: &str| Write::Insert { record: Box::new(record(id, "a")), key: None, limit };
    assert_eq!(a.write(admit("e1")).await.unwrap(), Written::InsertedWithSlot, "a free slot comes with the insert");
    assert_eq!(b.write(admit("e2")).await.unwrap(), Written::Inserted);
    assert_eq!(a.write(admit("e3")).await.unwrap(), Written::Overloaded, "the limit holds across replicas");
    assert_eq!(a.execution("e3").await.unwrap(), None);
    let slot = |id: &str| Write::TakeSlot { id: id.into(), epoch: 1, function: "f".into(), concurrency: 1 };
    assert_eq!(a.write(slot("e1")).await.unwrap(), Written::Slot(true));
    assert_eq!(a.write(slot("e1")).await.unwrap(), Written::Slot(true), "a held slot stays held");
    assert_eq!(b.write(slot("e2")).await.unwrap(), Written::Slot(false), "concurrency holds across replicas");
    // The end frees the slot and a place in the queue, and tells the other replica.
    assert_eq!(a.write(settle("e1", Some(1), terminal(Status::Success, "1"))).await.unwrap(), Written::Settled);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("an event").unwrap();
        seen.push(event);
    }
    assert!(seen.contains(&Event::Finished("e1".into())), "{seen:?}");
    assert!(seen.contains(&Event::SlotFreed("f".into())), "{seen:?}");
    assert_eq!(b.write(slot("e2")).await.unwrap(), Written::Slot(true));
    assert_eq!(a.write(admit("e3")).await.unwrap(), Written::Inserted);
    // Registrations are announced too.
    a.create_function(&spec("g")).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("an event").unwrap();
    assert_eq!(event, Event::Function("g".into()));
    // And so are updates: the other replicas re-read the function.
    assert_eq!(a.replace_function(&spec("g"), Some(7)).await.unwrap(), Replaced::Changed(1));
    assert_eq!(a.replace_function(&spec("g"), Some(1)).await.unwrap(), Replaced::Done(2));
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await.expect("an event").unwrap();
    assert_eq!(event, Event::Function("g".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_takes_over_only_expired_leases() {
    let under = Under::postgres();
    let store = under.open().await;
    store.join("alive", Duration::from_secs(60)).await.unwrap();
    store.join("dying", Duration::from_millis(200)).await.unwrap();
    store.write(insert(&record("e-alive", "alive"))).await.unwrap();
    store.write(insert(&record("e-dying", "dying"))).await.unwrap();
    store.join("me", Duration::from_secs(60)).await.unwrap();
    assert!(store.take_over("me", TakeOver::Expired).await.unwrap().records.is_empty(), "no lease has expired");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let taken = store.take_over("me", TakeOver::Expired).await.unwrap();
    let ids: Vec<_> = taken.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["e-dying"]);
    assert_eq!(taken.replicas, ["dying"]);
    assert!(store.take_over("other", TakeOver::Expired).await.unwrap().records.is_empty(), "taken once");
}
