//! Tells the plugins that implement `lifecycle` which functions use them: `apply` after a
//! function is registered or changed (and for every function at the host's start, as loading
//! puts each one in the registry), `remove` after one is deleted or moves to another plugin.
//!
//! It reconciles rather than relays: for each changed name it compares what the registry holds
//! with what it last applied, so a burst of changes to one function costs one call, and a call
//! that fails retryably is tried again, with backoff, from the registry's state at that time.
//! It holds the registry and the dispatcher weakly and ends when the control plane is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::dispatch::{Dispatcher, RetryPolicy};
use crate::function::Registry;
use crate::plugin::{Failure, Plugin, PluginFault};

/// What was last applied for a function.
struct Applied {
    plugin: String,
    version: Option<u64>,
}

struct Reconciler {
    registry: Weak<Registry>,
    dispatcher: Weak<Dispatcher>,
    retry: RetryPolicy,
    /// For retries: the name comes back after its backoff.
    again: UnboundedSender<String>,
    applied: HashMap<String, Applied>,
    /// Consecutive retryable failures by name (the backoff's attempt number).
    failures: HashMap<String, u32>,
}

/// Starts reconciling the functions of `registry` (which must not have a subscriber yet).
pub(super) fn spawn(registry: &Arc<Registry>, dispatcher: &Arc<Dispatcher>, retry: RetryPolicy) {
    let Some(changes) = registry.subscribe() else { return };
    let (again, retries) = tokio::sync::mpsc::unbounded_channel();
    let reconciler = Reconciler {
        registry: Arc::downgrade(registry),
        dispatcher: Arc::downgrade(dispatcher),
        retry,
        again,
        applied: HashMap::new(),
        failures: HashMap::new(),
    };
    tokio::spawn(reconciler.run(changes, retries));
}

/// What one step gave.
#[derive(PartialEq, Eq)]
enum Step {
    Done,
    /// A retryable failure: try the name again after a backoff.
    Retry,
}

impl Reconciler {
    async fn run(mut self, mut changes: UnboundedReceiver<String>, mut retries: UnboundedReceiver<String>) {
        loop {
            let first = tokio::select! {
                Some(name) = changes.recv() => name,
                Some(name) = retries.recv() => name,
                else => return,
            };
            // Everything queued so far, each name once.
            let mut names = vec![first];
            while let Ok(name) = changes.try_recv() {
                names.push(name);
            }
            let mut seen = HashSet::new();
            for name in names.into_iter().filter(|n| seen.insert(n.clone())) {
                let (Some(registry), Some(dispatcher)) = (self.registry.upgrade(), self.dispatcher.upgrade()) else {
                    return;
                };
                match self.reconcile(&name, &registry, &dispatcher).await {
                    Step::Done => {
                        self.failures.remove(&name);
                    }
                    Step::Retry => {
                        let attempt = self.failures.entry(name.clone()).or_default();
                        *attempt += 1;
                        let (delay, again) = (self.retry.backoff(*attempt), self.again.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = again.send(name);
                        });
                    }
                }
            }
        }
    }

    async fn reconcile(&mut self, name: &str, registry: &Registry, dispatcher: &Dispatcher) -> Step {
        let plugins = dispatcher.plugins();
        let current = registry.get(name);
        let current_plugin = current.as_ref().and_then(|f| plugins.get(f.dispatcher())).filter(|p| p.has_lifecycle());
        // The plugin it was applied with, when that is no longer the one.
        if let Some(before) = self.applied.get(name)
            && current_plugin.as_ref().is_none_or(|p| p.name != before.plugin)
        {
            if let Some(plugin) = plugins.get(&before.plugin).filter(|p| p.has_lifecycle()) {
                let result = plugins.remove(&plugin, name).await;
                if settle(&plugin, name, "remove", result) == Step::Retry {
                    return Step::Retry;
                }
            }
            self.applied.remove(name);
        }
        // The current plugin, when it has not seen this version.
        let (Some(function), Some(plugin)) = (current, current_plugin) else { return Step::Done };
        let version = function.spec.version;
        if self.applied.get(name).is_some_and(|a| a.version == version && a.plugin == plugin.name) {
            return Step::Done;
        }
        let result = plugins.apply(&plugin, &function.view).await;
        let step = settle(&plugin, name, "apply", result);
        if step == Step::Done {
            // Applied, or refused for good (logged): either way this version is settled, and a
            // delete will still call `remove`.
            self.applied.insert(name.to_string(), Applied { plugin: plugin.name.clone(), version });
        }
        step
    }
}

/// Logs a lifecycle call's result and says whether to try again.
fn settle(plugin: &Plugin, function: &str, call: &str, result: Result<Result<(), Failure>, PluginFault>) -> Step {
    match result {
        Ok(Ok(())) => {
            tracing::info!(plugin = %plugin.name, function, call, "function lifecycle call done");
            Step::Done
        }
        Ok(Err(failure)) if failure.retryable => {
            tracing::warn!(plugin = %plugin.name, function, call, code = %failure.code, error = %failure.message,
                "function lifecycle call failed; trying again");
            Step::Retry
        }
        Ok(Err(failure)) => {
            tracing::warn!(plugin = %plugin.name, function, call, code = %failure.code, error = %failure.message,
                "function lifecycle call refused");
            Step::Done
        }
        // A fault is the plugin's bug, not the moment's: not retried.
        Err(fault) => {
            tracing::warn!(plugin = %plugin.name, function, call, error = %fault, "function lifecycle call faulted");
            Step::Done
        }
    }
}
