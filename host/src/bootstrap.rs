//! Loading what a host starts with: the plugin catalog (built-ins and the plugin directory)
//! and the functions file.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;

use crate::capability::{Grants, parse_grant};
use crate::config::Config;
use crate::control_plane::ControlPlane;
use crate::function::FunctionSpec;
use crate::plugin::{Catalog, LoadError};

/// Builds the catalog: built-in plugins, then every valid component in the plugin directory.
/// Refused files are logged and returned; they do not stop the host.
pub fn catalog(config: &Config) -> anyhow::Result<(Catalog, Vec<LoadError>)> {
    let grants = grants(&config.grants)?;
    check_grants(&grants, config.plugin_dir.as_deref())?;
    let mut builder = Catalog::builder(&config.plugin)?;
    builder.add_builtins()?;
    let mut refused = Vec::new();
    if let Some(dir) = &config.plugin_dir {
        refused = builder.add_dir(dir, &grants)?;
    }
    Ok((builder.build(), refused))
}

/// Refuses a grant for a plugin the plugin directory has no file for: a typo there would
/// otherwise leave the plugin without the capability it was meant to get, silently.
fn check_grants(grants: &BTreeMap<String, Grants>, dir: Option<&Path>) -> anyhow::Result<()> {
    let Some(name) = grants.keys().next() else { return Ok(()) };
    let Some(dir) = dir else {
        anyhow::bail!("--grant {name}=…: grants are for plugins of --plugin-dir, and none is given");
    };
    let files: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the plugin directory {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
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
