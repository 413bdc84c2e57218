//! Test support shared by the host's unit tests, and the control plane's own tests.

use std::sync::{Arc, OnceLock};

use super::*;
use crate::config::PluginLimits;
use crate::plugin::Catalog;

/// The built-in plugins, compiled once per test binary.
pub(crate) fn catalog() -> Arc<Catalog> {
    static CATALOG: OnceLock<Arc<Catalog>> = OnceLock::new();
    CATALOG
        .get_or_init(|| {
            let mut builder = Catalog::builder(&PluginLimits { instances: 64, ..PluginLimits::default() }).unwrap();
            builder.add_builtins().unwrap();
            Arc::new(builder.build())
        })
        .clone()
}

pub(crate) async fn control_plane(config: Config) -> ControlPlane {
    let store = Arc::new(crate::store::memory::MemoryStore::new());
    crate::control_plane(config, catalog(), "http://127.0.0.1:9".into(), store).await.unwrap()
}

pub(crate) fn echo_spec(name: &str) -> FunctionSpec {
    FunctionSpec { name: name.into(), dispatcher: Some("echo".into()), ..Default::default() }
}

/// A registered `echo` function.
pub(crate) async fn echo_function() -> Arc<Function> {
    let cp = control_plane(Config::default()).await;
    cp.register(echo_spec("e")).await.unwrap();
    cp.registry().get("e").unwrap()
}

pub(crate) fn json_input(text: &str) -> Input {
    Input { content_type: "application/json".into(), body: text.to_string().into(), metadata: vec![] }
}

#[tokio::test]
async fn register_resolves_and_refuses_duplicates() {
    let cp = control_plane(Config::default()).await;
    let spec = cp.register(echo_spec("a")).await.unwrap();
    assert_eq!(spec.timeout_ms, Some(30_000));
    assert!(matches!(cp.register(echo_spec("a")).await, Err(RegisterError::Conflict(_))));
    assert!(cp.unregister("a").await.unwrap());
    assert!(!cp.unregister("a").await.unwrap());
    cp.register(echo_spec("a")).await.expect("a deleted name can be registered again");
}

#[tokio::test]
async fn unknown_dispatcher_lists_the_available_ones() {
    let cp = control_plane(Config::default()).await;
    let spec = FunctionSpec { dispatcher: Some("nope".into()), ..echo_spec("a") };
    match cp.register(spec).await {
        Err(RegisterError::UnknownDispatcher { name, available }) => {
            assert_eq!(name, "nope");
            assert!(available.contains(&"echo".to_string()), "{available:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_function_whose_plugin_is_missing_is_applied_as_unavailable_and_refuses_invocations() {
    let cp = control_plane(Config::default()).await;
    // The API refuses it; the functions file applies it, so one missing plugin stops nothing.
    let spec = FunctionSpec { dispatcher: Some("gone".into()), ..echo_spec("orphan") };
    assert!(matches!(cp.register(spec.clone()).await, Err(RegisterError::UnknownDispatcher { .. })));
    assert!(cp.apply(spec).await.unwrap());
    assert_eq!(cp.registry().get("orphan").unwrap().spec.timeout_ms, Some(30_000), "resolved like any other");
    match cp.submit("orphan", json_input("1"), SubmitOptions::default()).await {
        Err(SubmitError::Unavailable { function, reason }) => {
            assert_eq!(function, "orphan");
            assert!(reason.contains("dispatcher `gone` is not loaded") && reason.contains("echo"), "{reason}");
        }
        other => panic!("unexpected {:?}", other.map(|a| a.execution().id.clone())),
    }
    assert_eq!(cp.ledger().len(), 0, "nothing was accepted");
    // A spec the host itself refuses is still refused by the file.
    let bad = FunctionSpec { dispatcher: Some("gone".into()), timeout_ms: Some(0), ..echo_spec("bad") };
    assert!(cp.apply(bad).await.is_err());
}

#[tokio::test]
async fn plugin_validate_refusal_is_reported() {
    let cp = control_plane(Config::default()).await;
    let spec = FunctionSpec { dispatcher_config: Some(serde_json::json!({"x": 1})), ..echo_spec("a") };
    match cp.register(spec).await {
        Err(RegisterError::Refused { plugin, reason }) => {
            assert_eq!(plugin, "echo");
            assert!(reason.contains("invalid dispatcherConfig: unknown field `x`"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(cp.registry().get("a").is_none(), "nothing registered");
}

#[tokio::test]
async fn echo_returns_the_input_and_counts_it() {
    let cp = control_plane(Config::default()).await;
    cp.register(echo_spec("e")).await.unwrap();
    let attach = cp.submit("e", json_input(r#"{"a":[1,2]}"#), SubmitOptions::default()).await.unwrap();
    let exec = attach.execution().clone();
    exec.wait_done().await;
    let s = exec.snapshot();
    assert_eq!(s.status, Status::Success);
    assert_eq!(s.output.unwrap().body.as_ref(), br#"{"a":[1,2]}"#);
    assert_eq!(s.attempt, 1);
    assert_eq!(cp.metrics().invocations.with_label_values(&["e", "echo", "success"]).get(), 1);
}

#[tokio::test]
async fn unknown_function_creates_nothing() {
    let cp = control_plane(Config::default()).await;
    assert!(matches!(
        cp.submit("nope", json_input("1"), SubmitOptions::default()).await,
        Err(SubmitError::UnknownFunction(_))
    ));
    assert!(cp.ledger().is_empty());
}

#[tokio::test]
async fn idempotency_key_reattaches_or_conflicts() {
    let cp = control_plane(Config::default()).await;
    cp.register(echo_spec("e")).await.unwrap();
    let opts = SubmitOptions { idempotency_key: Some("k1".into()), ..Default::default() };
    let first = cp.submit("e", json_input("1"), opts.clone()).await.unwrap();
    let again = cp.submit("e", json_input("1"), opts.clone()).await.unwrap();
    assert!(matches!(first, Attach::New(..)));
    assert!(matches!(again, Attach::Existing(_)));
    assert_eq!(first.execution().id, again.execution().id);
    match cp.submit("e", json_input("2"), opts).await {
        Err(SubmitError::Idempotency(c)) => assert_eq!(c.execution_id, first.execution().id),
        other => panic!("unexpected {:?}", other.map(|a| a.execution().id.clone())),
    }
    // Keys are per function.
    cp.register(echo_spec("f")).await.unwrap();
    let other = cp
        .submit("f", json_input("2"), SubmitOptions { idempotency_key: Some("k1".into()), ..Default::default() })
        .await;
    assert!(matches!(other, Ok(Attach::New(..))));
}

#[tokio::test(start_paused = true)]
async fn idempotency_keys_expire_after_their_ttl() {
    let config = Config { idempotency_ttl: Duration::from_secs(60), ..Config::default() };
    let cp = control_plane(config).await;
    cp.register(echo_spec("e")).await.unwrap();
    let opts = SubmitOptions { idempotency_key: Some("k".into()), ..Default::default() };
    let first = cp.submit("e", json_input("1"), opts.clone()).await.unwrap().execution().id.clone();
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(cp.submit("e", json_input("1"), opts.clone()).await.unwrap().execution().id, first);
    tokio::time::advance(Duration::from_secs(1)).await;
    let after = cp.submit("e", json_input("2"), opts).await.expect("an expired key is free again");
    assert!(matches!(after, Attach::New(..)));
}

#[tokio::test(start_paused = true)]
async fn finished_executions_are_evicted_after_retention() {
    let config = Config { execution_retention: Duration::from_secs(10), ..Config::default() };
    let cp = control_plane(config).await;
    cp.register(echo_spec("e")).await.unwrap();
    let exec = cp.submit("e", json_input("1"), SubmitOptions::default()).await.unwrap().execution().clone();
    exec.wait_done().await;
    tokio::time::advance(Duration::from_millis(9_999)).await;
    cp.ledger().evict_memory();
    assert!(cp.ledger().get(&exec.id).is_some(), "still queryable within retention");
    tokio::time::advance(Duration::from_millis(1)).await;
    cp.ledger().evict_memory();
    assert!(cp.ledger().get(&exec.id).is_none(), "evicted at retention");
    assert_eq!(cp.metrics().evicted.with_label_values(&["retention"]).get(), 1);
}

#[tokio::test]
async fn retained_executions_are_capped() {
    let config = Config { max_retained_executions: 5, ..Config::default() };
    let cp = control_plane(config).await;
    cp.register(echo_spec("e")).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        let exec =
            cp.submit("e", json_input(&i.to_string()), SubmitOptions::default()).await.unwrap().execution().clone();
        exec.wait_done().await;
        ids.push(exec.id.clone());
    }
    assert_eq!(cp.ledger().len(), 5, "memory stays bounded");
    assert!(cp.ledger().get(&ids[19]).is_some(), "newest kept");
    assert!(cp.ledger().get(&ids[0]).is_none(), "oldest evicted");
}

#[tokio::test]
async fn callbacks_after_the_end_are_classified() {
    let cp = control_plane(Config::default()).await;
    cp.register(echo_spec("e")).await.unwrap();
    let exec = cp.submit("e", json_input("1"), SubmitOptions::default()).await.unwrap().execution().clone();
    exec.wait_done().await;
    let result: CallbackResult = serde_json::from_str(r#"{"success":true,"output":2}"#).unwrap();
    assert_eq!(cp.complete(&exec, 1, result).await, CallbackOutcome::Duplicate);
    assert_eq!(exec.snapshot().output.unwrap().body.as_ref(), b"1", "nothing changed");
    assert_eq!(cp.metrics().callbacks.with_label_values(&["duplicate"]).get(), 1);
}

#[tokio::test]
async fn invocation_carries_a_verifiable_token_and_callback_url() {
    let cp = control_plane(Config { callback_secret: Some("s".into()), ..Config::default() }).await;
    cp.register(echo_spec("e")).await.unwrap();
    let exec = cp
        .submit("e", json_input("1"), SubmitOptions { trace_id: Some("abc".into()), ..Default::default() })
        .await
        .unwrap()
        .execution()
        .clone();
    let inv = cp.invocation(&exec, 2);
    assert_eq!(inv.attempt, 2);
    assert_eq!(inv.trace_id, "abc");
    assert_eq!(cp.verify_token(&exec.id, &inv.callback_token), Some(2));
    assert_eq!(cp.verify_token("other", &inv.callback_token), None);
    assert_eq!(inv.callback_url.unwrap(), format!("http://127.0.0.1:9/v1/internal/executions/{}:complete", exec.id));
}

#[tokio::test]
async fn a_service_account_outside_the_allow_list_is_refused_at_registration() {
    let cp = control_plane(Config::default()).await;
    let spec = |account: &str| FunctionSpec {
        name: "job".into(),
        image: Some("img".into()),
        command: Some(vec!["run".into()]),
        dispatcher: Some("k8s-job".into()),
        dispatcher_config: Some(serde_json::json!({"serviceAccountName": account})),
        ..Default::default()
    };
    match cp.register(spec("cluster-admin")).await {
        Err(RegisterError::Invalid(e)) => {
            assert_eq!(e.field, "dispatcherConfig.serviceAccountName");
            assert!(e.message.contains("`cluster-admin` is not allowed"), "{}", e.message);
        }
        other => panic!("expected a refusal naming the field, got {other:?}"),
    }
    // An allowed one passes the policy (and is then refused for the missing cluster only).
    let cp =
        control_plane(Config { kube_allowed_service_accounts: vec!["fn-runner".into()], ..Config::default() }).await;
    match cp.register(spec("fn-runner")).await {
        Err(RegisterError::Refused { reason, .. }) => {
            assert!(reason.contains("Kubernetes") || reason.contains("cluster"), "{reason}")
        }
        other => panic!("expected the plugin's refusal for want of a cluster, got {other:?}"),
    }
}
