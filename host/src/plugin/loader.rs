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

use nanofaas_contract::CONTRACT_VERSION;

use super::bindings::{Dispatcher, PluginPre};
use super::{Catalog, HostState, Plugin, Source, read_metadata};
use crate::capability::{Capability, Grants};
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
    dir: Option<PathBuf>,
    grants: BTreeMap<String, Grants>,
    pins: BTreeMap<String, String>,
    strict_imports: bool,
    /// Files of the plugin directory that were refused: plugin name → reason.
    refused: BTreeMap<String, String>,
    pool_size: u32,
    memory_bytes: usize,
    /// The host's default limits, which a metadata call at load gets.
    limits: PluginLimits,
}

/// What a component must satisfy besides being one of this contract, and what it is given.
struct Admission<'a> {
    grants: Grants,
    /// The digest its name is pinned to.
    pin: Option<&'a String>,
    /// Refuse (rather than warn about) a component that imports a capability it is not granted.
    strict_imports: bool,
    /// What its metadata call may use.
    limits: &'a PluginLimits,
}

impl CatalogBuilder {
    pub(super) fn new(limits: &PluginLimits) -> anyhow::Result<Self> {
        let pool_size = limits.instances.max(1);
        // One slot more than calls may hold: the one a plugin's metadata is read in at load.
        let slots = pool_size + 1;
        let mut pool = PoolingAllocationConfig::new();
        // One instance of a wit-bindgen guest holds 1 component instance, 3 core instances,
        // 1 memory and 2 tables; keep some headroom for larger plugins.
        pool.total_component_instances(slots)
            .total_core_instances(slots * 4)
            .total_memories(slots)
            .total_tables(slots * 2)
            .total_stacks(slots)
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
            dir: None,
            grants: BTreeMap::new(),
            pins: BTreeMap::new(),
            strict_imports: false,
            refused: BTreeMap::new(),
            pool_size,
            memory_bytes: limits.memory_bytes,
            limits: limits.clone(),
        })
    }

    /// Adds a plugin from component bytes.
    pub fn add(&mut self, name: &str, bytes: &[u8], source: Source, grants: Grants) -> Result<(), LoadError> {
        if let Some(existing) = self.plugins.get(name) {
            let reason = format!("the name `{name}` is already taken by {}", taken_by(existing));
            return Err(LoadError { what: describe(name, &source), reason });
        }
        let admission =
            Admission { grants, pin: self.pins.get(name), strict_imports: self.strict_imports, limits: &self.limits };
        let plugin = compile(&self.engine, &self.linker, name, bytes, source, admission)?;
        log_loaded(&plugin);
        self.plugins.insert(name.to_string(), Arc::new(plugin));
        Ok(())
    }

    /// Pins dropped-in plugins to content digests: a file of a pinned name with another digest is
    /// refused, at start and when the directory is read again.
    pub fn pin(&mut self, pins: BTreeMap<String, String>) {
        self.pins = pins;
    }

    /// Refuses, instead of loading with a warning, a component whose imports name a capability
    /// it is not granted (`--plugin-imports refuse`).
    pub fn strict_imports(&mut self, strict: bool) {
        self.strict_imports = strict;
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
        self.dir = Some(dir.to_path_buf());
        self.grants = grants.clone();
        let mut refused = Vec::new();
        for (name, path) in wasm_files(dir)? {
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
            linker: Arc::new(self.linker),
            plugins: self.plugins,
            dir: self.dir,
            grants: self.grants,
            pins: self.pins,
            strict_imports: self.strict_imports,
            refused: self.refused,
            pool_size: self.pool_size,
            memory_bytes: self.memory_bytes,
            limits: self.limits,
        }
    }
}

impl Catalog {
    /// This catalog with the plugin directory read again, or `None` when nothing changed. A file
    /// whose content digest is the loaded one keeps its compiled plugin; a new or changed file is
    /// compiled; one that fails leaves the loaded version (if any) serving, with the reason
    /// logged; a removed file's plugin is unloaded, unless `in_use` says functions use it (then
    /// it is kept, and that is logged). Compiles: call it off the async threads.
    pub fn reloaded(&self, in_use: &dyn Fn(&str) -> bool) -> Option<Catalog> {
        let dir = self.dir.as_deref()?;
        let files = match wasm_files(dir) {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(dir = %dir.display(), reason = %e.reason, "plugin directory not re-read");
                return None;
            }
        };
        let mut plugins: BTreeMap<String, Arc<Plugin>> = self
            .plugins
            .iter()
            .filter(|(_, p)| p.source == Source::Builtin)
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        let mut refused = BTreeMap::new();
        let mut changed = false;
        for (name, path) in &files {
            let old = self.plugins.get(name).filter(|p| p.source != Source::Builtin);
            let loaded = std::fs::read(path).map_err(|e| format!("cannot read: {e}")).and_then(|bytes| {
                match old.filter(|p| p.digest == digest(&bytes)) {
                    Some(same) => Ok(same.clone()),
                    None => match plugins.get(name) {
                        Some(builtin) => Err(format!("the name `{name}` is already taken by {}", taken_by(builtin))),
                        None => {
                            let admission = Admission {
                                grants: self.grants.get(name).cloned().unwrap_or_default(),
                                pin: self.pins.get(name),
                                strict_imports: self.strict_imports,
                                limits: &self.limits,
                            };
                            compile(&self.engine, &self.linker, name, &bytes, Source::File(path.clone()), admission)
                                .map(Arc::new)
                                .map_err(|e| e.reason)
                        }
                    },
                }
            });
            match loaded {
                Ok(plugin) => {
                    if old.is_none_or(|o| !Arc::ptr_eq(o, &plugin)) {
                        changed = true;
                        let was = old.map(|o| o.digest.as_str()).unwrap_or("none");
                        tracing::info!(plugin = %name, file = %path.display(), digest = %plugin.digest, was,
                            "plugin loaded from the plugin directory");
                    }
                    plugins.insert(name.clone(), plugin);
                }
                Err(reason) => {
                    changed |= self.refused.get(name) != Some(&reason);
                    match old {
                        Some(old) => {
                            tracing::error!(plugin = %name, file = %path.display(), %reason, digest = %old.digest,
                                "plugin file refused; the loaded version keeps serving");
                            plugins.insert(name.clone(), old.clone());
                        }
                        None => tracing::error!(file = %path.display(), %reason, "plugin refused"),
                    }
                    refused.insert(name.clone(), reason);
                }
            }
        }
        let removed: Vec<_> = self
            .plugins
            .iter()
            .filter(|(n, p)| p.source != Source::Builtin && !files.iter().any(|(f, _)| f == *n))
            .collect();
        for (name, old) in removed {
            if in_use(name) {
                tracing::warn!(plugin = %name, digest = %old.digest,
                    "plugin file removed, but functions use it: kept until they are deleted or changed");
                plugins.insert(name.clone(), old.clone());
            } else {
                tracing::info!(plugin = %name, digest = %old.digest, "plugin file removed: unloaded");
                changed = true;
            }
        }
        changed.then(|| Catalog {
            engine: self.engine.clone(),
            linker: self.linker.clone(),
            plugins,
            dir: self.dir.clone(),
            grants: self.grants.clone(),
            pins: self.pins.clone(),
            strict_imports: self.strict_imports,
            refused,
            pool_size: self.pool_size,
            memory_bytes: self.memory_bytes,
            limits: self.limits.clone(),
        })
    }
}

/// What a plugin directory holds now, as (file name, length, modification time): what a scan
/// compares to decide whether to re-read it.
pub fn dir_signature(dir: &Path) -> Vec<(std::ffi::OsString, u64, Option<std::time::SystemTime>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut signature: Vec<_> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
        .map(|e| {
            let meta = e.metadata().ok();
            (e.file_name(), meta.as_ref().map_or(0, |m| m.len()), meta.and_then(|m| m.modified().ok()))
        })
        .collect();
    signature.sort();
    signature
}

/// The `NAME.wasm` files of `dir`, by name.
fn wasm_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, LoadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoadError {
        what: dir.display().to_string(),
        reason: format!("cannot read the plugin directory: {e}"),
    })?;
    let mut files: Vec<(String, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .map(|p| (p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(), p))
        .collect();
    files.sort();
    Ok(files)
}

/// A component's identity: the SHA-256 of its bytes, in hex.
fn digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn describe(name: &str, source: &Source) -> String {
    match source {
        Source::Builtin => format!("`{name}` (built-in)"),
        Source::File(path) => path.display().to_string(),
    }
}

fn taken_by(plugin: &Plugin) -> String {
    match &plugin.source {
        Source::Builtin => "a built-in plugin".to_string(),
        Source::File(p) => p.display().to_string(),
    }
}

/// Compiles and links one component.
fn compile(
    engine: &Engine,
    linker: &Linker<HostState>,
    name: &str,
    bytes: &[u8],
    source: Source,
    admission: Admission,
) -> Result<Plugin, LoadError> {
    let Admission { grants, pin, strict_imports, limits } = admission;
    let what = describe(name, &source);
    let refuse = |reason: String| LoadError { what: what.clone(), reason };
    if !valid_name(name) {
        let mut reason =
            format!("`{name}` is not a valid plugin name (lower-case letters, digits and `-`, starting with a letter)");
        let dashed = name.replace('_', "-");
        if dashed != name && valid_name(&dashed) {
            // Cargo names the component of crate `my-plugin` `my_plugin.wasm`.
            reason.push_str(&format!("; rename the file to `{dashed}.wasm`"));
        }
        return Err(refuse(reason));
    }
    let digest = digest(bytes);
    if let Some(pinned) = pin.filter(|p| **p != digest) {
        return Err(refuse(format!("`{name}` is pinned to sha256 {pinned}; this file is {digest}")));
    }
    let component =
        Component::new(engine, bytes).map_err(|e| refuse(format!("not a valid WebAssembly component: {e:#}")))?;
    let pre = linker.instantiate_pre(&component).map_err(|e| {
        refuse(format!("does not link against the nanofaas:dispatcher@{CONTRACT_VERSION} imports: {e:#}"))
    })?;
    let pre = PluginPre::new(pre).map_err(|e| {
        refuse(format!("does not export nanofaas:dispatcher/strategy@{CONTRACT_VERSION} (or an earlier 0.1.x): {e:#}"))
    })?;
    let (imports, exports) = contract_names(engine, &component);
    let contract = exports.get("strategy").cloned().unwrap_or_default();
    let mut plugin = Plugin {
        name: name.to_string(),
        source,
        grants,
        needs: Grants::of(&imports.keys().filter_map(|i| i.parse().ok()).collect::<Vec<Capability>>()),
        contract,
        metadata: None,
        digest,
        pre,
    };
    let metadata =
        read_metadata(engine, &plugin, limits).map_err(|e| refuse(format!("its metadata call failed: {e}")))?;
    if let Some(metadata) = &metadata {
        let mut problems = Vec::new();
        let mut declared = Vec::new();
        for cap in metadata.capabilities.iter().filter(|c| *c != "log") {
            match cap.parse::<Capability>() {
                Ok(cap) => declared.push(cap),
                Err(e) => problems.push(format!("its metadata names {e}")),
            }
        }
        for interface in metadata.implements.iter().filter(|i| !exports.contains_key(i.as_str())) {
            problems.push(format!("its metadata says it implements `{interface}`, which it does not export"));
        }
        if !problems.is_empty() {
            return Err(refuse(problems.join("; ")));
        }
        plugin.needs = plugin.needs.with(&Grants::of(&declared));
    }
    plugin.metadata = metadata;
    let missing = plugin.needs.without(&plugin.grants).names();
    if !missing.is_empty() {
        if strict_imports {
            return Err(refuse(format!(
                "it needs {missing} and is not granted it (grant it with --grant {name}={missing} or the plugin config's capabilities)"
            )));
        }
        tracing::warn!(plugin = name, source = %what, missing = %missing,
            "plugin needs capabilities it is not granted: its calls of them will fail");
    }
    Ok(plugin)
}

fn log_loaded(plugin: &Plugin) {
    let version = plugin.metadata.as_ref().map_or("-", |m| m.version.as_str());
    tracing::info!(plugin = plugin.name, source = %describe(&plugin.name, &plugin.source), version,
        contract = %plugin.contract, grants = %plugin.grants, digest = %plugin.digest, "plugin loaded");
}

/// The interfaces of this contract a component imports and exports, by name, with the version
/// of each (`nanofaas:dispatcher/http@0.1.0` → `http` → `0.1.0`). wit-bindgen guests import only
/// the interfaces they call, so the imports say which capabilities a plugin uses.
fn contract_names(engine: &Engine, component: &Component) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let ty = component.component_type();
    let ours = |name: &str| {
        let (interface, version) = name.strip_prefix("nanofaas:dispatcher/")?.split_once('@')?;
        Some((interface.to_string(), version.to_string()))
    };
    let imports = ty.imports(engine).filter_map(|(name, _)| ours(name)).collect();
    let exports = ty.exports(engine).filter_map(|(name, _)| ours(name)).collect();
    (imports, exports)
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
