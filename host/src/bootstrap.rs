//! Loading what a host starts with: the plugin catalog (built-ins and the plugin directory)
//! and the functions file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;

use crate::capability::{Grants, parse_grant};
use crate::config::{Config, PluginImports};
use crate::control_plane::ControlPlane;
use crate::function::FunctionSpec;
use crate::plugin::{Catalog, LoadError};

/// Builds the catalog: built-in plugins, then every valid component in the plugin directory.
/// Refused files are logged and returned; they do not stop the host.
pub fn catalog(config: &Config) -> anyhow::Result<(Catalog, Vec<LoadError>)> {
    let mut grants = grants(&config.grants)?;
    check_grants(&grants, config.plugin_dir.as_deref())?;
    check_policies(config)?;
    for (name, policy) in &config.plugin_policies {
        let granted = policy.grants().map_err(anyhow::Error::msg)?;
        if granted.iter().next().is_some() {
            let merged = grants.get(name).map_or(granted.clone(), |g| g.with(&granted));
            grants.insert(name.clone(), merged);
        }
    }
    let pins = pins(&config.pins)?;
    if let (Some(name), None) = (pins.keys().next(), &config.plugin_dir) {
        anyhow::bail!("--pin {name}=…: pins are for plugins of --plugin-dir, and none is given");
    }
    let mut builder = Catalog::builder(&config.plugin)?;
    builder.add_builtins()?;
    builder.pin(pins);
    builder.strict_imports(config.plugin_imports == PluginImports::Refuse);
    let mut refused = Vec::new();
    if let Some(dir) = &config.plugin_dir {
        refused = builder.add_dir(dir, &grants)?;
    }
    Ok((builder.build(), refused))
}

/// Follows the plugin directory while the host runs: looked at every
/// `--plugin-scan-interval-ms` (a listing and a stat per file; read again only when a file was
/// added, removed or changed in size or time) and read again on SIGHUP. Each read swaps in the
/// catalog [`Catalog::reloaded`] makes; calls in flight finish on the plugins they started with.
/// The scan is a poll, not inotify, on purpose: plugin directories are often volumes (a
/// ConfigMap's symlink swap, a network file system) where change events are unreliable.
pub async fn watch_plugins(cp: ControlPlane, stop: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed even without a plugin directory: SIGHUP must not end the host.
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP");
            None
        }
    };
    let dir = cp.config().plugin_dir.clone();
    let interval = cp.config().plugin_scan_interval;
    let mut seen = dir.as_deref().map(crate::plugin::dir_signature).unwrap_or_default();
    loop {
        let scan = async {
            match (&dir, interval.is_zero()) {
                (Some(_), false) => tokio::time::sleep(interval).await,
                _ => std::future::pending().await,
            }
        };
        let hangup = async {
            match hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = scan => {
                let now = dir.as_deref().map(crate::plugin::dir_signature).unwrap_or_default();
                if now == seen {
                    continue;
                }
                seen = now;
            }
            _ = hangup => {
                if dir.is_none() {
                    tracing::info!("SIGHUP: there is no plugin directory to read again");
                    continue;
                }
                tracing::info!("SIGHUP: reading the plugin directory again");
            }
        }
        reload_plugins(&cp).await;
    }
}

/// Reads the plugin directory again and swaps in what changed; whether anything did.
pub async fn reload_plugins(cp: &ControlPlane) -> bool {
    let current = cp.plugins().catalog();
    let used: std::collections::HashSet<String> =
        cp.registry().list().iter().map(|f| f.dispatcher().to_string()).collect();
    let reloaded = tokio::task::spawn_blocking(move || current.reloaded(&|name| used.contains(name))).await;
    match reloaded {
        Ok(Some(catalog)) => {
            cp.plugins().replace(std::sync::Arc::new(catalog));
            publish_plugins(cp);
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::error!(error = %e, "reading the plugin directory failed");
            false
        }
    }
}

/// `nanofaas_plugin_info`: one series per loaded plugin, with its digest.
pub fn publish_plugins(cp: &ControlPlane) {
    let info = &cp.plugins().metrics().plugin_info;
    info.reset();
    for plugin in cp.plugins().catalog().plugins() {
        info.with_label_values(&[plugin.name.as_str(), plugin.digest.as_str(), plugin.source.label().as_str()]).set(1);
    }
}

/// Reads the plugin config file (`--plugin-config`) into `config.plugin_policies`.
pub fn load_plugin_config(config: &mut Config) -> anyhow::Result<()> {
    let Some(path) = &config.plugin_config else { return Ok(()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    config.plugin_policies =
        crate::plugin::parse_policies(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(())
}

/// Refuses a policy of a plugin that is neither built in nor a file of the plugin directory
/// (a typo would leave the intended plugin unbounded, silently), capabilities for a built-in
/// (theirs are fixed), and values the host cannot honour.
fn check_policies(config: &Config) -> anyhow::Result<()> {
    if config.plugin_policies.is_empty() {
        return Ok(());
    }
    let builtins: Vec<&str> = crate::builtin::BUILTIN.iter().map(|(name, _)| *name).collect();
    let files = match &config.plugin_dir {
        Some(dir) => plugin_files(dir)?,
        None => Vec::new(),
    };
    for (name, policy) in &config.plugin_policies {
        let what = format!("the plugin config's `{name}`");
        let builtin = builtins.contains(&name.as_str());
        if !builtin && !files.contains(name) {
            let mut known: Vec<&str> = builtins.clone();
            known.extend(files.iter().map(String::as_str));
            anyhow::bail!("{what}: there is no plugin of that name (plugins: {})", known.join(", "));
        }
        if builtin && !policy.capabilities.is_empty() {
            anyhow::bail!("{what}: a built-in plugin's capabilities are fixed");
        }
        policy.check(&config.plugin).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    }
    Ok(())
}

/// The plugin names (file stems) of the `.wasm` files in `dir`.
fn plugin_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the plugin directory {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect())
}

/// Refuses a grant for a plugin the plugin directory has no file for: a typo there would
/// otherwise leave the plugin without the capability it was meant to get, silently.
fn check_grants(grants: &BTreeMap<String, Grants>, dir: Option<&Path>) -> anyhow::Result<()> {
    let Some(name) = grants.keys().next() else { return Ok(()) };
    let Some(dir) = dir else {
        anyhow::bail!("--grant {name}=…: grants are for plugins of --plugin-dir, and none is given");
    };
    let files = plugin_files(dir)?;
    for name in grants.keys() {
        if !files.contains(name) {
            anyhow::bail!(
                "--grant {name}=…: there is no {name}.wasm in {} (plugins there: {})",
                dir.display(),
                if files.is_empty() { "none".to_string() } else { files.join(", ") }
            );
        }
    }
    Ok(())
}

/// Parses `NAME=SHA256` pins (a `sha256:` prefix is allowed).
fn pins(texts: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    texts
        .iter()
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            let (name, digest) =
                t.split_once('=').ok_or_else(|| anyhow::anyhow!("--pin `{t}`: expected NAME=SHA256"))?;
            let digest = digest.trim().trim_start_matches("sha256:").to_ascii_lowercase();
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!("--pin `{t}`: the digest must be 64 hex digits (SHA-256)");
            }
            Ok((name.trim().to_string(), digest))
        })
        .collect()
}

/// Parses `NAME=cap,cap` grants.
pub fn grants(texts: &[String]) -> anyhow::Result<BTreeMap<String, Grants>> {
    texts.iter().filter(|t| !t.trim().is_empty()).map(|t| parse_grant(t).map_err(anyhow::Error::msg)).collect()
}

/// Applies a YAML (or JSON) list of function specs: each is registered, or replaces the
/// registered function of its name when it differs (the file says what the functions are).
/// Fails on the first function that cannot be applied, naming it and the reason.
pub async fn apply_file(cp: &ControlPlane, path: &Path) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let specs: Vec<serde_json::Value> = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not a YAML list of function specs", path.display()))?;
    let count = specs.len();
    for (i, value) in specs.into_iter().enumerate() {
        let json = serde_json::to_vec(&value).expect("a Value serializes");
        let spec = FunctionSpec::from_json(&json)
            .map_err(|e| anyhow::anyhow!("{}: function #{}: {e}", path.display(), i + 1))?;
        let name = spec.name.clone();
        if cp.apply(spec).await.map_err(|e| anyhow::anyhow!("{}: function `{name}`: {e}", path.display()))? {
            tracing::info!(function = %name, "function registered from the functions file");
        }
    }
    Ok(count)
}
