//! Faulty plugins fail only their own call, with PLUGIN_FAULT; the host and every other
//! execution keep going. Real time: CPU budgets are counted in real epoch ticks.

mod common;

use std::time::Duration;

use common::*;
use nanofaas::config::{Config, PluginLimits};
use nanofaas::execution::Status;
use serde_json::json;

async fn fault_of(cp: &nanofaas::control_plane::ControlPlane, behavior: &str) -> (String, String) {
    let name = format!("f-{behavior}");
    testkit(cp, &name, json!({"behavior": behavior}), |s| s.max_retries = Some(3)).await;
    let exec = submit(cp, &name, "1").await;
    exec.wait_done().await;
    let s = exec.snapshot();
    assert_eq!(s.status, Status::Error, "{behavior}");
    assert_eq!(s.attempt, 1, "{behavior}: a plugin fault is never retried");
    let e = s.error.unwrap();
    (e.code, e.message)
}

fn kind_count(cp: &nanofaas::control_plane::ControlPlane, kind: &str) -> u64 {
    cp.metrics().plugin_faults.with_label_values(&["testkit", "dispatch", kind]).get()
}

#[tokio::test]
async fn each_fault_fails_only_its_call() {
    let cp = control_plane(Config::default()).await;
    testkit(&cp, "healthy", json!({}), |_| {}).await;
    for (behavior, kind, needle) in [
        ("trap", "trap", "trapped: wasm trap: wasm `unreachable` instruction executed"),
        ("loop", "cpu", "CPU budget"),
        ("oom", "memory", "memory limit"),
        ("recurse", "trap", "trapped"),
        ("bad-utf8", "malformed", "malformed"),
        ("empty-handle", "malformed", "pending handle"),
        ("bad-code", "malformed", "UPPER_SNAKE_CASE"),
        ("log-spam", "quota", "log lines"),
        ("payload-bomb", "quota", "payload bytes"),
    ] {
        let before = kind_count(&cp, kind);
        let (code, message) = fault_of(&cp, behavior).await;
        assert_eq!(code, "PLUGIN_FAULT", "{behavior}");
        assert!(message.contains(needle), "{behavior}: {message}");
        assert!(message.contains("plugin `testkit` dispatch"), "{behavior}: {message}");
        // A short reason: the guest's stderr (its panic message) and backtraces go to the log.
        assert!(!message.contains("on purpose") && !message.contains("backtrace"), "{behavior}: {message}");
        assert!(message.len() < 300, "{behavior}: {message}");
        assert_eq!(kind_count(&cp, kind), before + 1, "{behavior} counted as {kind}");
        // The same plugin still serves other executions.
        let ok = submit(&cp, "healthy", r#""still here""#).await;
        ok.wait_done().await;
        assert_eq!(ok.status(), Status::Success, "after {behavior}");
    }
}

#[tokio::test]
async fn a_looping_plugin_does_not_stall_others() {
    // One worker thread (tokio::test's default): only the yields at epoch ticks let anything
    // else run while the guests spin. A 600-tick budget per call keeps the hogs alive long enough.
    let limits = PluginLimits { cpu_budget_ticks: 600, ..PluginLimits::default() };
    let cp = control_plane(Config { plugin: limits, ..Config::default() }).await;
    testkit(&cp, "hog", json!({"behavior": "loop"}), |s| s.concurrency = Some(4)).await;
    testkit(&cp, "healthy", json!({}), |s| s.concurrency = Some(100)).await;
    let mut hogs = Vec::new();
    for i in 0..4 {
        hogs.push(submit(&cp, "hog", &i.to_string()).await);
    }
    while hogs.iter().any(|h| h.status() != Status::Running) {
        tokio::task::yield_now().await;
    }
    for i in 0..20 {
        let ok = submit(&cp, "healthy", &i.to_string()).await;
        ok.wait_done().await;
        assert_eq!(ok.status(), Status::Success);
    }
    assert!(
        hogs.iter().any(|h| !h.is_terminal()),
        "healthy executions finished while looping guests were still running"
    );
    for h in &hogs {
        h.wait_done().await;
        assert_eq!(h.snapshot().error.unwrap().code, "PLUGIN_FAULT");
    }
}

#[tokio::test]
async fn a_call_over_its_wall_clock_limit_is_cut_off() {
    let limits = PluginLimits {
        call_timeout: Duration::from_millis(50),
        cpu_budget_ticks: 1_000_000,
        ..PluginLimits::default()
    };
    let cp = control_plane(Config { plugin: limits, ..Config::default() }).await;
    let (code, message) = fault_of(&cp, "loop").await;
    assert_eq!(code, "PLUGIN_FAULT");
    assert!(message.contains("did not finish within 50 ms"), "{message}");
    assert_eq!(kind_count(&cp, "timeout"), 1);
}

#[tokio::test]
async fn faults_at_registration_are_502_and_refusals_400() {
    let cp = control_plane(Config::default()).await;
    let spec = |config| nanofaas::function::FunctionSpec {
        name: "v".into(),
        dispatcher: Some("testkit".into()),
        dispatcher_config: Some(config),
        ..Default::default()
    };
    match cp.register(spec(json!({"trapValidate": true}))).await {
        Err(nanofaas::control_plane::RegisterError::Fault(f)) => assert!(f.message.contains("validate"), "{f}"),
        other => panic!("unexpected {other:?}"),
    }
    match cp.register(spec(json!({"rejectValidate": "bad mode"}))).await {
        Err(nanofaas::control_plane::RegisterError::Refused { reason, .. }) => assert_eq!(reason, "bad mode"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(cp.registry().get("v").is_none());
}

#[tokio::test]
async fn plugin_directory_loads_valid_components_and_refuses_the_rest() {
    use nanofaas::plugin::Catalog;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(nanofaas_test_support::artifacts::UPPERCASE, dir.path().join("uppercase.wasm")).unwrap();
    std::fs::copy(nanofaas_test_support::artifacts::TESTKIT, dir.path().join("echo.wasm")).unwrap();
    std::fs::copy(nanofaas_test_support::artifacts::TESTKIT, dir.path().join("Bad_Name.wasm")).unwrap();
    // What cargo names the component of a crate called `my-plugin`.
    std::fs::copy(nanofaas_test_support::artifacts::TESTKIT, dir.path().join("my_plugin.wasm")).unwrap();
    std::fs::write(dir.path().join("junk.wasm"), b"\0asm not really").unwrap();
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let mut builder = Catalog::builder(&PluginLimits { instances: 8, ..PluginLimits::default() }).unwrap();
    builder.add_builtins().unwrap();
    let refused = builder.add_dir(dir.path(), &Default::default()).unwrap();
    let catalog = builder.build();
    assert!(catalog.get("uppercase").is_some());
    let reasons: Vec<String> = refused.iter().map(|e| format!("{} | {}", e.what, e.reason)).collect();
    assert_eq!(refused.len(), 5, "{reasons:#?}");
    let find = |file: &str| reasons.iter().find(|r| r.contains(file)).unwrap_or_else(|| panic!("{file}: {reasons:#?}"));
    assert!(find("echo.wasm").contains("already taken by a built-in plugin"));
    let bad = find("Bad_Name.wasm");
    assert!(bad.contains("not a valid plugin name") && !bad.contains("rename"), "{bad}");
    assert!(find("my_plugin.wasm").contains("rename the file to `my-plugin.wasm`"));
    assert!(find("junk.wasm").contains("not a valid WebAssembly component"));
    assert!(find("core.wasm").contains("not a valid WebAssembly component"));
    assert!(matches!(catalog.get("echo").unwrap().source, nanofaas::plugin::Source::Builtin), "no silent override");
}

#[test]
fn a_plugin_importing_a_capability_it_is_not_granted_warns_or_is_refused_by_policy() {
    use nanofaas::capability::{Capability, Grants, builtin_grants};
    use nanofaas::plugin::Catalog;
    let dir = tempfile::tempdir().unwrap();
    // The testkit imports `http` (its `http-get` behavior).
    std::fs::copy(nanofaas_test_support::artifacts::TESTKIT, dir.path().join("relay.wasm")).unwrap();
    let load = |strict: bool, grants: &[(&str, Grants)]| {
        let grants = grants.iter().map(|(n, g)| (n.to_string(), g.clone())).collect();
        let mut builder = Catalog::builder(&PluginLimits::default()).unwrap();
        builder.add_builtins().unwrap();
        builder.strict_imports(strict);
        let refused = builder.add_dir(dir.path(), &grants).unwrap();
        (builder.build(), refused)
    };
    // By default it loads: what it imports is known, and the grant is enforced per call.
    let (catalog, refused) = load(false, &[]);
    assert!(refused.is_empty(), "{:?}", refused.iter().map(|e| &e.reason).collect::<Vec<_>>());
    let relay = catalog.get("relay").unwrap();
    assert_eq!((relay.needs.names(), relay.grants.names()), ("http".to_string(), String::new()));
    // Every built-in imports exactly the capabilities it is granted.
    for plugin in catalog.plugins().filter(|p| p.name != "relay") {
        assert_eq!(plugin.needs, builtin_grants(&plugin.name), "{}", plugin.name);
    }
    // Strict: refused, naming what it imports and how to grant it.
    let (catalog, refused) = load(true, &[]);
    assert!(catalog.get("relay").is_none());
    assert_eq!(refused.len(), 1);
    let reason = &refused[0].reason;
    assert!(reason.contains("needs http and is not granted it") && reason.contains("--grant relay=http"), "{reason}");
    // Strict and granted (more than it needs is fine): it loads.
    let (catalog, refused) = load(true, &[("relay", Grants::of(&[Capability::Http, Capability::Process]))]);
    assert!(refused.is_empty() && catalog.get("relay").is_some());
}

#[tokio::test]
async fn a_plugin_of_the_previous_contract_serves_beside_plugins_of_the_current_one() {
    let cp = control_plane(Config::default()).await;
    let catalog = catalog();
    // `legacy` was built against a frozen copy of nanofaas:dispatcher@0.1.0: no metadata export.
    let legacy = catalog.get("legacy").unwrap();
    assert_eq!((legacy.contract.as_str(), legacy.metadata.is_none()), ("0.1.0", true));
    // The testkit (wit-bindgen) and uppercase (the SDK) are of the current contract and say so.
    let current = catalog.get("testkit").unwrap();
    assert_eq!(current.contract, nanofaas_contract::CONTRACT_VERSION);
    let meta = current.metadata.clone().unwrap();
    assert_eq!(
        (meta.name.as_str(), meta.version.as_str(), meta.capabilities),
        ("testkit", "0.1.0", vec!["http".into()])
    );
    let uppercase = catalog.get("uppercase").unwrap().metadata.clone().unwrap();
    assert_eq!(
        (uppercase.name.as_str(), uppercase.contract.as_str()),
        ("uppercase", nanofaas_contract::CONTRACT_VERSION)
    );
    for plugin in catalog.plugins().filter(|p| p.name != "legacy") {
        assert_eq!(plugin.contract, nanofaas_contract::CONTRACT_VERSION, "{}", plugin.name);
    }

    register(&cp, "old", "legacy", &[], json!({}), |_| {}).await.unwrap();
    testkit(&cp, "new", json!({}), |_| {}).await;
    let (old, new) = (submit(&cp, "old", r#""abc""#).await, submit(&cp, "new", r#""abc""#).await);
    old.wait_done().await;
    new.wait_done().await;
    let output =
        |e: &nanofaas::execution::Execution| e.snapshot().output.map(|o| String::from_utf8_lossy(&o.body).into_owned());
    assert_eq!((old.status(), output(&old).as_deref()), (Status::Success, Some(r#"{"legacy":5}"#)));
    assert_eq!((new.status(), output(&new).as_deref()), (Status::Success, Some(r#""abc""#)));
}

#[test]
fn a_plugin_whose_metadata_claims_what_it_lacks_is_refused_naming_each_claim() {
    use nanofaas::plugin::{Catalog, Source};
    let mut builder = Catalog::builder(&PluginLimits::default()).unwrap();
    let bytes = std::fs::read(nanofaas_test_support::artifacts::LIAR).unwrap();
    let e = builder.add("liar", &bytes, Source::Builtin, Default::default()).unwrap_err();
    assert!(e.reason.contains("`teleport`") && e.reason.contains("unknown capability"), "{}", e.reason);
    assert!(e.reason.contains("says it implements `teleporter`, which it does not export"), "{}", e.reason);
}

#[tokio::test]
async fn a_plugin_whose_metadata_call_spins_is_refused_at_its_cpu_budget() {
    use nanofaas::plugin::{Catalog, Source};
    // On the runtime, as the host loads plugins (the call runs on a thread of its own).
    let limits = PluginLimits { cpu_budget_ticks: 50, ..PluginLimits::default() };
    let mut builder = Catalog::builder(&limits).unwrap();
    let bytes = std::fs::read(nanofaas_test_support::artifacts::SPINNER).unwrap();
    let e = builder.add("spinner", &bytes, Source::Builtin, Default::default()).unwrap_err();
    assert!(e.reason.contains("its metadata call failed") && e.reason.contains("CPU budget"), "{}", e.reason);
    // The builder goes on loading the rest.
    let bytes = std::fs::read(nanofaas_test_support::artifacts::UPPERCASE).unwrap();
    builder.add("uppercase", &bytes, Source::Builtin, Default::default()).unwrap();
}

/// The testkit again under another name (`nogrant`), with a policy of its own.
fn with_policy(instances: u32, policy: nanofaas::plugin::PluginPolicy) -> Config {
    Config {
        plugin: PluginLimits { instances, ..PluginLimits::default() },
        plugin_policies: [("nogrant".to_string(), policy)].into(),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plugin_spinning_does_not_starve_anothers_share() {
    // A pool of two slots, of which `nogrant` may use one: its calls spin for 20 s of CPU each,
    // and the ones past its share wait for it instead of taking the other slot.
    let policy = nanofaas::plugin::PluginPolicy {
        instances: Some(1),
        cpu_budget_ms: Some(20_000),
        call_timeout_ms: Some(30_000),
        ..Default::default()
    };
    let cp = control_plane(with_policy(2, policy)).await;
    register(&cp, "spin", "nogrant", &[], json!({"behavior": "loop"}), |s| s.concurrency = Some(4)).await.unwrap();
    testkit(&cp, "healthy", json!({}), |s| s.concurrency = Some(100)).await;
    let validated = plugin_instances(&cp, "nogrant"); // registration's `validate`
    let mut spinners = Vec::new();
    for i in 0..3 {
        spinners.push(submit(&cp, "spin", &i.to_string()).await);
    }
    while plugin_instances(&cp, "nogrant") == validated {
        tokio::task::yield_now().await;
    }
    // Without the share, two spinners hold both slots and these wait 20 s for one.
    for i in 0..20 {
        let ok = submit(&cp, "healthy", &i.to_string()).await;
        tokio::time::timeout(Duration::from_secs(10), ok.wait_done())
            .await
            .expect("the healthy plugin's calls got a slot while the other plugin spun");
        assert_eq!(ok.status(), Status::Success);
    }
    assert!(spinners.iter().all(|s| !s.is_terminal()), "the spinners were still running");
    assert_eq!(plugin_instances(&cp, "nogrant"), validated + 1, "one spinner at a time: its share");
}

#[tokio::test]
async fn a_plugin_over_its_own_quota_fails_its_call_only() {
    let policy = nanofaas::plugin::PluginPolicy { payload_mib: Some(1), ..Default::default() };
    let cp = control_plane(with_policy(8, policy)).await;
    register(&cp, "tight", "nogrant", &[], json!({}), |_| {}).await.unwrap();
    testkit(&cp, "roomy", json!({}), |_| {}).await;
    // A 2 MiB input handed back: a 2 MiB payload created by the plugin.
    let big = format!("\"{}\"", "x".repeat(2 << 20));
    let tight = submit(&cp, "tight", &big).await;
    tight.wait_done().await;
    let error = tight.snapshot().error.expect("over its quota");
    assert_eq!(error.code, "PLUGIN_FAULT");
    assert!(error.message.contains("more payload bytes"), "{}", error.message);
    let roomy = submit(&cp, "roomy", &big).await;
    roomy.wait_done().await;
    assert_eq!(roomy.status(), Status::Success, "the host's default quota (64 MiB) applies to the others");
}
