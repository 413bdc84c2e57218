//! Building the [`Catalog`]: the engine, its tuning, and loading components (built-in bytes and
//! the operator's plugin directory).
//!
//! A component is accepted only when it links against the host's imports and exports the
//! `strategy` interface of this contract version; anything else is refused with the file and the
//! reason, and the rest still load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{Dispatcher, DispatcherPre};
use super::{Catalog, HostState, Plugin, Source};
use crate::capability::Grants;
use crate::config::PluginLimits;

/// How often the engine's epoch advances: the granularity of CPU budgets and of yielding.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// A plugin that was not loaded, and why.
#[derive(Debug, thiserror::Error)]
#[error("plugin {what} refused: {reason}")]
pub struct LoadError {
    /// The file (or built-in name) that was refused.
    pub what: String,
    pub reason: String,
}

pub struct CatalogBuilder {
    engine: Engine,
    linker: Linker<HostState>,
    plugins: BTreeMap<String, Arc<Plugin>>,
    /// Files of the plugin directory that were refused: plugin name → reason.
    refused: BTreeMap<String, String>,
    pool_size: u32,
    memory_bytes: usize,
}

impl CatalogBuilder {
    pub(super) fn new(limits: &PluginLimits) -> anyhow::Result<Self> {
        let pool_size = limits.instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        // One instance of a wit-bindgen guest holds 1 component instance, 3 core instances,
        // 1 memory and 2 tables; keep some headroom for larger plugins.
        pool.total_component_instances(pool_size)
            .total_core_instances(pool_size * 4)
            .total_memories(pool_size)
            .total_tables(pool_size * 2)
            .total_stacks(pool_size)
            .max_memory_size(limits.memory_bytes)
            // Keeping the first pages of each slot resident and resetting them by scanning the
            // page map makes recycling a slot ~5x cheaper than madvise on every release.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(2 << 20)
            .async_stack_keep_resident(2 << 20)
            .pagemap_scan(Enabled::Auto);
        let mut config = Config::new();
        config.epoch_interruption(true).allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("cannot create the Wasm engine: {e:#}"))?;
        spawn_epoch_ticker(&engine);

        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| anyhow::anyhow!("cannot link WASI: {e:#}"))?;
        Dispatcher::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("cannot link the host imports: {e:#}"))?;
        Ok(Self {
            engine,
            linker,
            plugins: BTreeMap::new(),
            refused: BTreeMap::new(),
            pool_size,
            memory_bytes: limits.memory_bytes,
        })
    }

    /// Adds a plugin from component bytes.
    pub fn add(&mut self, name: &str, bytes: &[u8], source: Source, grants: Grants) -> Result<(), LoadError> {
        let what = match &source {
            Source::Builtin => format!("`{name}` (built-in)"),
            Source::File(path) => path.display().to_string(),
        };
        let refuse = |reason: String| LoadError { what: what.clone(), reason };
        if !valid_name(name) {
            return Err(refuse(format!(
                "`{name}` is not a valid plugin name (lower-case letters, digits and `-`, starting with a letter)"
            )));
        }
        if let Some(existing) = self.plugins.get(name) {
            let by = match existing.source {
                Source::Builtin => "a built-in plugin".to_string(),
                Source::File(ref p) => p.display().to_string(),
            };
            return Err(refuse(format!("the name `{name}` is already taken by {by}")));
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| refuse(format!("not a valid WebAssembly component: {e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| refuse(format!("does not link against the nanofaas:dispatcher@0.1.0 imports: {e:#}")))?;
        let pre = DispatcherPre::new(pre)
            .map_err(|e| refuse(format!("does not export nanofaas:dispatcher/strategy@0.1.0: {e:#}")))?;
        tracing::info!(plugin = name, source = %what, grants = %grants, "plugin loaded");
        self.plugins.insert(name.to_string(), Arc::new(Plugin { name: name.to_string(), source, grants, pre }));
        Ok(())
    }

    /// Adds the plugins compiled into the binary.
    pub fn add_builtins(&mut self) -> anyhow::Result<()> {
        for (name, bytes) in crate::builtin::BUILTIN {
            self.add(name, bytes, Source::Builtin, crate::capability::builtin_grants(name))?;
        }
        Ok(())
    }

    /// Loads every `NAME.wasm` in `dir`. Each file that cannot be loaded is logged and returned;
    /// the others still load. `grants` gives the capabilities of each dropped-in plugin by name.
    pub fn add_dir(&mut self, dir: &Path, grants: &BTreeMap<String, Grants>) -> Result<Vec<LoadError>, LoadError> {
        let entries = std::fs::read_dir(dir).map_err(|e| LoadError {
            what: dir.display().to_string(),
            reason: format!("cannot read the plugin directory: {e}"),
        })?;
        let mut files: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "wasm")).collect();
        files.sort();
        let mut refused = Vec::new();
        for path in files {
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let result = std::fs::read(&path)
                .map_err(|e| LoadError { what: path.display().to_string(), reason: format!("cannot read: {e}") })
                .and_then(|bytes| {
                    let grants = grants.get(&name).cloned().unwrap_or_default();
                    self.add(&name, &bytes, Source::File(path.clone()), grants)
                });
            if let Err(e) = result {
                tracing::error!(file = %e.what, reason = %e.reason, "plugin refused");
                self.refused.insert(name, e.reason.clone());
                refused.push(e);
            }
        }
        Ok(refused)
    }

    pub fn build(self) -> Catalog {
        Catalog {
            engine: self.engine,
            plugins: self.plugins,
            refused: self.refused,
            pool_size: self.pool_size,
            memory_bytes: self.memory_bytes,
        }
    }
}

/// Plugin names are file stems and function `dispatcher` values: keep them simple.
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && name.len() <= 63
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Advances the engine's epoch every tick until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("nanofaas-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("cannot spawn the epoch thread");
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn plugin_names() {
        assert!(valid_name("echo"));
        assert!(valid_name("k8s-job"));
        assert!(!valid_name("Echo"));
        assert!(!valid_name("1echo"));
        assert!(!valid_name("my_plugin"));
        assert!(!valid_name(""));
    }
}
