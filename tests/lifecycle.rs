//! The host-owned execution lifecycle, driven through real plugins: deadlines (exact, under
//! tokio's paused clock), polling and wake-ups, callbacks, retries, admission and cleanup; and
//! the functions' lifecycle as plugins that implement `lifecycle` are told it.

mod common;

use std::time::Duration;

use common::*;
use nanofaas::config::Config;
use nanofaas::control_plane::{CallbackOutcome, CallbackResult, SubmitError, SubmitOptions};
use nanofaas::execution::Status;
use serde_json::json;
use tokio::time::Instant;

fn callback(json: &str) -> CallbackResult {
    serde_json::from_str(json).unwrap()
}

#[tokio::test(start_paused = true)]
async fn pending_work_times_out_exactly_at_the_deadline() {
    let cp = control_plane(Config::default()).await;
    testkit(&cp, "slow", json!({"behavior": "pending"}), |s| s.timeout_ms = Some(1000)).await;
    let started = Instant::now();
    let exec = submit(&cp, "slow", "1").await;
    exec.wait_done().await;
    assert_eq!(started.elapsed(), Duration::from_millis(1000), "ends exactly at its deadline");
    let s = exec.snapshot();
    assert_eq!(s.status, Status::Timeout);
    assert_eq!(s.error.unwrap().code, "TIMEOUT");
    assert_eq!(cp.metrics().timeouts.with_label_values(&["slow"]).get(), 1);
    assert_eq!(cp.metrics().invocations.with_label_values(&["slow", "testkit", "timeout"]).get(), 1);
    let f = cp.registry().get("slow").unwrap();
    // The driver releases the pending work right after answering.
    while cp.running_drivers() > 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(plugin_calls(&cp, "testkit", "release"), 1, "the plugin was told to let go");
    assert_eq!((f.queue.busy(), f.queue.waiting()), (0, 0), "slot released");
    assert!(exec.pending().is_none());
}

#[tokio::test(start_paused = true)]
async fn timeout_header_narrows_the_deadline() {
    let cp = control_plane(Config::default()).await;
    testkit(&cp, "slow", json!({"behavior": "pending"}), |s| s.timeout_ms = Some(1000)).await;
    let started = Instant::now();
    let opts = SubmitOptions { timeout: Some(Duration::from_millis(250)), ..Default::default() };
    let exec = cp.submit("slow", input("1"), opts).await.unwrap().execution().clone();
    exec.wait_done().await;
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    // It never widens the function's own timeout.
    let opts = SubmitOptions { timeout: Some(Duration::from_millis(5000)), ..Default::default() };
    let started = Instant::now();
    let exec = cp.submit("slow", input("1"), opts).await.unwrap().execution().clone();
    exec.wait_done().await;
    assert_eq!(started.elapsed(), Duration::from_millis(1000));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_covers_the_queue_wait() {
    let cp = control_plane(Config::default()).await;
    testkit(&cp, "one", json!({"behavior": "pending"}), |s| {
        s.timeout_ms = Some(1000);
        s.concurrency = Some(1);
    })
    .await;
    let started = Instant::now();
    let first = submit(&cp, "one", "1").await;
    let opts = SubmitOptions { timeout: Some(Duration::from_millis(400)), ..Default::default() };
    let queued = cp.submit("one", input("2"), opts).await.unwrap().execution().clone();
    queued.wait_done().await;
    assert_eq!(started.elapsed(), Duration::from_millis(400));
    let s = queued.snapshot();
    assert_eq!((s.status, s.attempt), (Status::Timeout, 0), "timed out in the queue, never started");
    assert_eq!(first.status(), Status::Running);
    first.wait_done().await;
    assert_eq!(started.elapsed(), Duration::from_millis(1000));
    // The slot came back: a new execution starts at once.
    let third = submit(&cp, "one", "3").await;
    tokio::task::yield_now().await;
    while third.status() == Status::Queued {
        tokio::task::yield_now().await;
    }
    assert_eq!(third.status(), Status::Running);
    assert_eq!(started.elapsed(), Duration::from_millis(1000));
}

#[tokio::test(start_paused = true)]
async fn polls_follow_poll_after_and_release_on_completion() {
    let cp = control_plane(Config::default()).await;
    let config = json!({"behavior": "pending", "pollAfterMs": 100, "completeAfterPolls": 3});
    testkit(&cp, "polled", config, |_| {}).await;
    let started = Instant::now();
    let exec = submit(&cp, "polled", "1").await;
    exec.wait_done().await;
    assert_eq!(started.elapsed(), Duration::from_millis(300), "three polls, 100 ms apart");
    let s = exec.snapshot();
    assert_eq!(s.status, Status::Success);
    assert_eq!(s.output.unwrap().body.as_ref(), br#"{"polls":3}"#);
    assert_eq!(plugin_calls(&cp, "testkit", "poll"), 3);
    while cp.running_drivers() > 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(plugin_calls(&cp, "testkit", "release"), 1);
}

/// Runs one `instance` execution; answers what its poll saw and the instances it created.
async fn one_attempt_on_instances(config: Config, poll_after_ms: u32) -> (serde_json::Value, u64) {
    let cp = control_plane(config).await;
    testkit(&cp, "held", json!({"behavior": "instance", "pollAfterMs": poll_after_ms}), |_| {}).await;
    let before = plugin_instances(&cp, "testkit");
    let exec = submit(&cp, "held", "1").await;
    exec.wait_done().await;
    drivers_idle(&cp).await;
    assert_eq!(plugin_calls(&cp, "testkit", "release"), 1);
    let s = exec.snapshot();
    assert_eq!(s.status, Status::Success, "{s:?}");
    (serde_json::from_slice(&s.output.unwrap().body).unwrap(), plugin_instances(&cp, "testkit") - before)
}

#[tokio::test(start_paused = true)]
async fn a_quick_attempt_runs_dispatch_poll_and_release_on_one_instance() {
    let (seen, instances) = one_attempt_on_instances(Config::default(), 10).await;
    assert_eq!(seen, json!({"callsOnInstance": 2}), "the poll ran on the dispatch's instance");
    assert_eq!(instances, 1, "dispatch, poll and release shared one instance");
}

#[tokio::test(start_paused = true)]
async fn a_long_wait_keeps_no_instance() {
    // 1 s is past the hold window: the instance is dropped while the attempt waits.
    let (seen, instances) = one_attempt_on_instances(Config::default(), 1000).await;
    assert_eq!(seen, json!({"callsOnInstance": 1}), "the poll ran on a fresh instance");
    assert_eq!(instances, 2, "one for the dispatch, one for the poll and the release after it");
}

#[tokio::test(start_paused = true)]
async fn no_instance_is_kept_when_the_pool_is_short() {
    // One slot: keeping it would leave less than half the pool free.
    let mut config = Config::default();
    config.plugin.instances = 1;
    let (seen, instances) = one_attempt_on_instances(config, 10).await;
    assert_eq!(seen, json!({"callsOnInstance": 1}));
    assert_eq!(instances, 2);
}

#[tokio::test(start_paused = true)]
async fn cancel_ends_pending_work_at_once_and_releases_it() {
    let cp = control_plane(Config::default()).await;
    testkit(&cp, "long", json!({"behavior": "pending", "pollAfterMs": 1000}), |_| {}).await;
    let exec = submit(&cp, "long", "1").await;
    while exec.pending().is_none() {
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    assert!(cp.cancel(&exec, "changed my mind").await);
    assert_eq!(started.elapsed(), Duration::ZERO, "no wait for a poll or the deadline");
    let s = exec.snapshot();
    assert_eq!(s.status, Status::Cancelled);
    assert_eq!(s.error.unwrap().message, "changed my mind");
    drivers_idle(&cp).await;
    assert_eq!(plugin_calls(&cp, "testkit", "release"), 1, "the pending work was released");
    assert_eq!(plugin_calls(&cp, "testkit", "poll"), 0);
    assert!(!cp.cancel(&exec, "again").await, "a terminal execution stays as it ended");
    assert_eq!(exec.snapshot().error.unwrap().message, "changed my mind");
}

#[tokio::test(start_paused = true)]
async fn executions_keep_the_version_they_were_accepted_with() {
    let cp = control_plane(Config::default()).await;
    let config = |polls: u32| json!({"behavior": "pending", "pollAfterMs": 100, "completeAfterPolls": polls});
    testkit(&cp, "versioned", config(3), |_| {}).await;
    let old = submit(&cp, "versioned", "1").await;
    while old.pending().is_none() {
        tokio::task::yield_now().await;
    }
    let mut spec = cp.registry().get("versioned").unwrap().spec.clone();
    spec.dispatcher_config = Some(config(1));
    let updated = cp.update(spec, Some(1)).await.unwrap();
    assert_eq!(updated.version, Some(2));
    let new = submit(&cp, "versioned", "1").await;
    old.wait_done().await;
    new.wait_done().await;
    assert_eq!(old.function.spec.version, Some(1));
    assert_eq!(old.snapshot().output.unwrap().body.as_ref(), br#"{"polls":3}"#, "ran on version 1");
    assert_eq!(new.function.spec.version, Some(2));
    assert_eq!(new.snapshot().output.unwrap().body.as_ref(), br#"{"polls":1}"#, "ran on version 2");
}

#[tokio::test(start_paused = true)]
async fn a_wake_up_polls_at_once() {
    let cp = control_plane(Config::default()).await;
    // No poll interval: only the (30 s) safety poll or a wake-up would poll.
    testkit(&cp, "watched", json!({"behavior": "pending", "completeAfterPolls": 1}), |_| {}).await;
    let started = Instant::now();
    let exec = submit(&cp, "watched", "1").await;
    while exec.pending().is_none() {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_millis(7)).await;
    exec.wake();
    exec.wait_done().await;
    assert_eq!(started.elapsed(), Duration::from_millis(7), "completion at wake-up latency, not poll interval");
    assert_eq!(exec.status(), Status::Success);
}

#[tokio::test(start_paused = true)]
async fn without_wake_ups_the_safety_poll_still_runs() {
    let config = Config::default();
    let safety = config.plugin.safety_poll;
    let cp = control_plane(config).await;
    testkit(&cp, "quiet", json!({"behavior": "pending", "completeAfterPolls": 1}), |s| s.timeout_ms = Some(120_000))
        .await;
    let started = Instant::now();
    let exec = submit(&cp, "quiet", "1").await;
    exec.wait_done().await;
    assert_eq!(started.elapsed(), safety);
    assert_eq!(exec.status(), Status::Success);
}

#[tokio::test(start_paused = true)]
async fn a_callback_completes_pending_work_once() {
    let cp = control_plane(Config::default()).await;
    testkit(&cp, "remote", json!({"behavior": "pending"}), |_| {}).await;
    let exec = submit(&cp, "remote", "1").await;
    while exec.pending().is_none() {
        tokio::task::yield_now().await;
    }
    tokio::time::advance(Duration::from_millis(50)).await;
    assert_eq!(
        cp.complete(&exec, 1, callback(r#"{"success":true,"output":{"answer":42}}"#)).await,
        CallbackOutcome::Accepted
    );
    exec.wait_done().await;
    let s = exec.snapshot();
    assert_eq!(s.status, Status::Success);
    assert_eq!(s.output.unwrap().body.as_ref(), br#"{"answer":42}"#);
    assert_eq!(cp.complete(&exec, 1, callback(r#"{"success":true,"output":1}"#)).await, CallbackOutcome::Duplicate);
    assert_eq!(cp.metrics().callbacks.with_label_values(&["accepted"]).get(), 1);
    assert_eq!(cp.metrics().callbacks.with_label_values(&["duplicate"]).get(), 1);
    while cp.running_drivers() > 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(plugin_calls(&cp, "testkit", "release"), 1, "pending work released after the callback");
}

#[tokio::test(start_paused = true)]
async fn a_failed_callback_is_a_function_error() {
    let cp = control_plane(Config::default()).await;
    testkit(&cp, "remote", json!({"behavior": "pending"}), |_| {}).await;
    let exec = submit(&cp, "remote", "1").await;
    let r = callback(r#"{"success":false,"error":{"code":"BAD_INPUT","message":"no"}}"#);
    assert_eq!(cp.complete(&exec, 1, r).await, CallbackOutcome::Accepted);
    let s = exec.snapshot();
    assert_eq!((s.status, s.error.unwrap().code), (Status::Error, "BAD_INPUT".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_late_callback_changes_nothing_and_is_counted() {
    let cp = control_plane(Config::default()).await;
    testkit(&cp, "remote", json!({"behavior": "pending"}), |s| s.timeout_ms = Some(500)).await;
    let exec = submit(&cp, "remote", "1").await;
    exec.wait_done().await;
    assert_eq!(cp.complete(&exec, 1, callback(r#"{"success":true,"output":1}"#)).await, CallbackOutcome::Late);
    let s = exec.snapshot();
    assert_eq!(s.status, Status::Timeout);
    assert!(s.output.is_none());
    assert_eq!(cp.metrics().callbacks.with_label_values(&["late"]).get(), 1);
}

fn retry_config() -> Config {
    Config { retry_base: Duration::from_millis(100), retry_max: Duration::from_millis(1000), ..Config::default() }
}

#[tokio::test(start_paused = true)]
async fn retryable_failures_are_retried_with_backoff() {
    let cp = control_plane(retry_config()).await;
    let config = json!({"behavior": "fail", "retryable": true, "failAttempts": 2});
    testkit(&cp, "flaky", config, |_| {}).await;
    let started = Instant::now();
    let exec = submit(&cp, "flaky", r#""x""#).await;
    exec.wait_done().await;
    let s = exec.snapshot();
    assert_eq!((s.status, s.attempt), (Status::Success, 3));
    assert_eq!(s.output.unwrap().body.as_ref(), br#""x""#);
    assert_eq!(cp.metrics().retries.with_label_values(&["flaky"]).get(), 2);
    // Backoff before attempt 2 is in [50, 100] ms, before attempt 3 in [100, 200] ms.
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(150) && waited <= Duration::from_millis(300), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_max_retries() {
    let cp = control_plane(retry_config()).await;
    testkit(&cp, "down", json!({"behavior": "fail", "retryable": true}), |s| s.max_retries = Some(2)).await;
    let exec = submit(&cp, "down", "1").await;
    exec.wait_done().await;
    let s = exec.snapshot();
    assert_eq!((s.status, s.attempt), (Status::Error, 3));
    let error = s.error.unwrap();
    assert_eq!(error.code, "ENDPOINT_UNAVAILABLE");
    assert!(error.message.contains("no retries left"), "{}", error.message);
    assert_eq!(cp.metrics().retries.with_label_values(&["down"]).get(), 2);
}

#[tokio::test(start_paused = true)]
async fn final_failures_are_not_retried() {
    let cp = control_plane(retry_config()).await;
    testkit(&cp, "broken", json!({"behavior": "fail", "retryable": false, "code": "BAD_CONFIG"}), |_| {}).await;
    let exec = submit(&cp, "broken", "1").await;
    exec.wait_done().await;
    let s = exec.snapshot();
    assert_eq!((s.status, s.attempt, s.error.unwrap().code), (Status::Error, 1, "BAD_CONFIG".to_string()));
    testkit(&cp, "fn-error", json!({"behavior": "function-error"}), |_| {}).await;
    let exec = submit(&cp, "fn-error", "1").await;
    exec.wait_done().await;
    let s = exec.snapshot();
    assert_eq!((s.status, s.attempt, s.error.unwrap().code), (Status::Error, 1, "FUNCTION_ERROR".to_string()));
}

#[tokio::test(start_paused = true)]
async fn no_retry_when_the_deadline_leaves_no_time() {
    let config =
        Config { retry_base: Duration::from_secs(10), retry_max: Duration::from_secs(10), ..Config::default() };
    let cp = control_plane(config).await;
    testkit(&cp, "flaky", json!({"behavior": "fail", "retryable": true}), |s| s.timeout_ms = Some(1000)).await;
    let started = Instant::now();
    let exec = submit(&cp, "flaky", "1").await;
    exec.wait_done().await;
    assert_eq!(started.elapsed(), Duration::ZERO, "the error comes now instead of a timeout later");
    let s = exec.snapshot();
    assert_eq!((s.status, s.attempt), (Status::Error, 1));
    assert!(s.error.unwrap().message.contains("no time left"));
}

#[tokio::test(start_paused = true)]
async fn full_queues_refuse_without_touching_other_functions() {
    let cp = control_plane(Config::default()).await;
    testkit(&cp, "busy", json!({"behavior": "pending"}), |s| {
        s.concurrency = Some(1);
        s.queue_size = Some(1);
    })
    .await;
    testkit(&cp, "free", json!({}), |_| {}).await;
    let running = submit(&cp, "busy", "1").await;
    let queued = submit(&cp, "busy", "2").await;
    match cp.submit("busy", input("3"), SubmitOptions::default()).await {
        Err(SubmitError::Overloaded { concurrency, queue_size, .. }) => assert_eq!((concurrency, queue_size), (1, 1)),
        other => panic!("expected overload, got {:?}", other.map(|a| a.execution().id.clone())),
    }
    assert_eq!(cp.metrics().rejected.with_label_values(&["busy", "queue_full"]).get(), 1);
    assert_eq!(cp.ledger().len(), 2, "the refused request created nothing");
    let started = Instant::now();
    let other = submit(&cp, "free", "9").await;
    other.wait_done().await;
    assert_eq!(other.status(), Status::Success);
    assert_eq!(started.elapsed(), Duration::ZERO, "a saturated function does not delay another");
    assert_eq!((running.status(), queued.status()), (Status::Running, Status::Queued));
}

#[tokio::test(start_paused = true)]
async fn no_slot_leaks_after_many_failures() {
    let cp = control_plane(retry_config()).await;
    testkit(&cp, "mixed", json!({"behavior": "pending"}), |s| {
        s.concurrency = Some(2);
        s.queue_size = Some(50);
        s.timeout_ms = Some(100);
    })
    .await;
    for round in 0..5 {
        let mut execs = Vec::new();
        for i in 0..40 {
            execs.push(submit(&cp, "mixed", &i.to_string()).await);
        }
        for e in &execs {
            e.wait_done().await;
            assert_eq!(e.status(), Status::Timeout, "round {round}");
        }
    }
    let f = cp.registry().get("mixed").unwrap();
    while cp.running_drivers() > 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!((f.queue.busy(), f.queue.waiting()), (0, 0));
    assert_eq!(cp.metrics().in_flight.with_label_values(&["mixed"]).get(), 0);
    assert_eq!(cp.metrics().queue_depth.with_label_values(&["mixed"]).get(), 0);
}

#[tokio::test(start_paused = true)]
async fn every_accepted_execution_ends() {
    // A small soak: many executions of every kind at once; each must reach a terminal state by
    // its deadline, and the counters must add up.
    let cp = control_plane(retry_config()).await;
    let behaviours = [
        ("s-echo", json!({})),
        ("s-pending", json!({"behavior": "pending"})),
        ("s-polled", json!({"behavior": "pending", "pollAfterMs": 50, "completeAfterPolls": 2})),
        ("s-flaky", json!({"behavior": "fail", "retryable": true, "failAttempts": 1})),
        ("s-error", json!({"behavior": "function-error"})),
    ];
    for (name, config) in &behaviours {
        testkit(&cp, name, config.clone(), |s| {
            s.timeout_ms = Some(2000);
            s.concurrency = Some(20);
            s.queue_size = Some(1000);
        })
        .await;
    }
    let started = Instant::now();
    let mut execs = Vec::new();
    for i in 0..1000 {
        let (name, _) = &behaviours[i % behaviours.len()];
        execs.push(submit(&cp, name, &i.to_string()).await);
    }
    for e in &execs {
        e.wait_done().await;
        assert!(e.status().is_terminal());
    }
    assert!(started.elapsed() <= Duration::from_millis(2000));
    let total: u64 = ["success", "error", "timeout", "cancelled"]
        .iter()
        .flat_map(|o| behaviours.iter().map(move |(n, _)| (n, o)))
        .map(|(n, o)| cp.metrics().invocations.with_label_values(&[n, "testkit", o]).get())
        .sum();
    assert_eq!(total, 1000, "every accepted execution was counted once");
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_and_releases() {
    let cp = control_plane(Config::default()).await;
    testkit(&cp, "remote", json!({"behavior": "pending"}), |_| {}).await;
    let mut execs = Vec::new();
    for i in 0..3 {
        execs.push(submit(&cp, "remote", &i.to_string()).await);
    }
    while execs.iter().any(|e| e.pending().is_none()) {
        tokio::task::yield_now().await;
    }
    cp.shutdown(Duration::from_secs(5)).await;
    for e in &execs {
        let s = e.snapshot();
        assert_eq!((s.status, s.error.unwrap().code), (Status::Cancelled, "CANCELLED".to_string()));
    }
    assert_eq!(plugin_calls(&cp, "testkit", "release"), 3);
    assert_eq!(cp.running_drivers(), 0);
}

/// Waits (in paused time) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn plugins_with_a_lifecycle_are_told_of_their_functions_changes() {
    let config =
        Config { retry_base: Duration::from_millis(10), retry_max: Duration::from_millis(40), ..Config::default() };
    let cp = control_plane(config).await;
    let calls = |call: &str| plugin_calls(&cp, "testkit", call);
    let spec = |name: &str, dispatcher: &str, config: serde_json::Value| nanofaas::function::FunctionSpec {
        name: name.into(),
        dispatcher: Some(dispatcher.into()),
        dispatcher_config: Some(config),
        ..Default::default()
    };
    let settle = || tokio::time::sleep(Duration::from_secs(1));

    cp.register(spec("kept", "testkit", json!({}))).await.unwrap();
    until("apply after a registration", || calls("apply") == 1).await;
    // The same definition again changes nothing; another one is applied.
    cp.update(spec("kept", "testkit", json!({})), None).await.unwrap();
    settle().await;
    assert_eq!(calls("apply"), 1);
    cp.update(spec("kept", "testkit", json!({"poll_after_ms": 5})), None).await.unwrap();
    until("apply after an update", || calls("apply") == 2).await;
    // Plugins that do not list `lifecycle` are never called: the SDK's uppercase (off by
    // default) and a plugin of contract 0.1.0.
    cp.register(spec("plain", "uppercase", json!({}))).await.unwrap();
    cp.register(spec("old", "legacy", json!({}))).await.unwrap();
    settle().await;
    assert_eq!((plugin_calls(&cp, "uppercase", "apply"), plugin_calls(&cp, "legacy", "apply")), (0, 0));
    // Moved to another plugin: removed from the one it was applied with.
    cp.update(spec("kept", "uppercase", json!({})), None).await.unwrap();
    until("remove after a move", || calls("remove") == 1).await;
    // Deleted: removed.
    cp.register(spec("gone", "testkit", json!({}))).await.unwrap();
    until("apply of another function", || calls("apply") == 3).await;
    assert!(cp.unregister("gone").await.unwrap());
    until("remove after a delete", || calls("remove") == 2).await;
    // Refused for good: one call, and it stays so.
    cp.register(spec("refused", "testkit", json!({"applyFails": "final"}))).await.unwrap();
    until("a refused apply", || calls("apply") == 4).await;
    settle().await;
    assert_eq!(calls("apply"), 4);
    // A retryable failure is tried again, with backoff, while it fails.
    cp.register(spec("flaky", "testkit", json!({"applyFails": "retryable"}))).await.unwrap();
    until("retries of a failing apply", || calls("apply") >= 8).await;
    assert!(cp.unregister("flaky").await.unwrap());
    // Its function gone, the retries stop (the version that failed was never applied: no remove).
    settle().await;
    let after = calls("apply");
    settle().await;
    assert_eq!((calls("apply"), calls("remove")), (after, 2));
}
