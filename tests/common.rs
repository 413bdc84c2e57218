//! In-process helpers shared by the integration tests.

#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use nanofaas::capability::{Capability, Grants};
use nanofaas::config::{Config, PluginLimits};
use nanofaas::control_plane::{ControlPlane, SubmitOptions};
use nanofaas::execution::{Execution, Input};
use nanofaas::function::FunctionSpec;
use nanofaas::plugin::{Catalog, Source};
use nanofaas_test_support::artifacts;

/// Built-in plugins plus the test plugins, compiled once per test binary.
pub fn catalog() -> Arc<Catalog> {
    static CATALOG: OnceLock<Arc<Catalog>> = OnceLock::new();
    CATALOG
        .get_or_init(|| {
            let mut builder = Catalog::builder(&PluginLimits { instances: 128, ..PluginLimits::default() }).unwrap();
            builder.add_builtins().unwrap();
            let testkit = Grants::of(&[Capability::Http, Capability::Process]);
            for (name, path, grants) in
                // `nogrant` is the testkit again, without capabilities.
                [
                    ("testkit", artifacts::TESTKIT, testkit),
                    ("nogrant", artifacts::TESTKIT, Grants::none()),
                    ("uppercase", artifacts::UPPERCASE, Grants::none()),
                    // Built against the previous contract, nanofaas:dispatcher@0.1.0.
                    ("legacy", artifacts::LEGACY, Grants::none()),
                ]
            {
                let bytes = std::fs::read(path).unwrap();
                builder.add(name, &bytes, Source::File(Path::new(path).into()), grants).unwrap();
            }
            Arc::new(builder.build())
        })
        .clone()
}

pub async fn control_plane(config: Config) -> ControlPlane {
    let store = std::sync::Arc::new(nanofaas::store::memory::MemoryStore::new());
    let cp = nanofaas::control_plane(config, catalog(), "http://127.0.0.1:9".into(), store).await.unwrap();
    cp.set_ready(true);
    cp
}

/// Registers a `testkit` function with `dispatcherConfig = config`, then applies `tweak`.
pub async fn testkit(cp: &ControlPlane, name: &str, config: serde_json::Value, tweak: impl FnOnce(&mut FunctionSpec)) {
    let mut spec = FunctionSpec {
        name: name.into(),
        dispatcher: Some("testkit".into()),
        dispatcher_config: Some(config),
        ..Default::default()
    };
    tweak(&mut spec);
    let plugin = spec.dispatcher.clone().unwrap_or_default();
    let before = plugin_calls(cp, &plugin, "apply");
    cp.register(spec).await.unwrap();
    lifecycle_settled(cp, &plugin, before).await;
}

/// Waits until `plugin`, if it implements `lifecycle`, was told of a registration (its `apply`
/// calls went past `before`): that call takes an instance, which tests counting them must not
/// see land in the middle.
pub async fn lifecycle_settled(cp: &ControlPlane, plugin: &str, before: u64) {
    if cp.plugins().get(plugin).is_some_and(|p| p.has_lifecycle()) {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while plugin_calls(cp, plugin, "apply") == before {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        });
        waited.await.unwrap_or_else(|_| panic!("`{plugin}` was not told of the registration"));
    }
}

/// Registers a function with `dispatcher`, `command` and `dispatcherConfig = config`, then `tweak`.
pub async fn register(
    cp: &ControlPlane,
    name: &str,
    dispatcher: &str,
    command: &[&str],
    config: serde_json::Value,
    tweak: impl FnOnce(&mut FunctionSpec),
) -> Result<(), nanofaas::control_plane::RegisterError> {
    let mut spec = FunctionSpec {
        name: name.into(),
        dispatcher: Some(dispatcher.into()),
        command: Some(command.iter().map(|s| s.to_string()).collect()),
        dispatcher_config: Some(config),
        ..Default::default()
    };
    tweak(&mut spec);
    let plugin = spec.dispatcher.clone().unwrap_or_default();
    let before = plugin_calls(cp, &plugin, "apply");
    cp.register(spec).await?;
    lifecycle_settled(cp, &plugin, before).await;
    Ok(())
}

pub fn input(json: &str) -> Input {
    Input { content_type: "application/json".into(), body: json.to_string().into(), metadata: vec![] }
}

pub async fn submit(cp: &ControlPlane, function: &str, json: &str) -> Arc<Execution> {
    cp.submit(function, input(json), SubmitOptions::default()).await.unwrap().execution().clone()
}

/// How many calls of `call` the plugin runtime made to `plugin`.
pub fn plugin_calls(cp: &ControlPlane, plugin: &str, call: &str) -> u64 {
    cp.metrics().plugin_call_duration.with_label_values(&[plugin, call]).get_sample_count()
}

/// How many instances the plugin runtime created of `plugin`.
pub fn plugin_instances(cp: &ControlPlane, plugin: &str) -> u64 {
    cp.metrics().plugin_instances.with_label_values(&[plugin]).get()
}

/// Waits until no driver task runs (their releases are done).
pub async fn drivers_idle(cp: &ControlPlane) {
    while cp.running_drivers() > 0 {
        tokio::task::yield_now().await;
    }
}
