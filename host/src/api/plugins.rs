//! `GET /v1/plugins`: the dispatcher plugins this host has loaded.

use std::borrow::Cow;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::control_plane::ControlPlane;

/// One loaded plugin. A dropped-in plugin shows its file name, not the host's paths.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginView<'a> {
    #[schema(value_type = String)]
    pub name: Cow<'a, str>,
    /// `log` and the capabilities it was granted.
    pub capabilities: Vec<String>,
    /// `built-in`, or the `.wasm` file it was loaded from.
    #[schema(value_type = String)]
    pub source: Cow<'a, str>,
    /// SHA-256 of the component (hex): which version of it is serving.
    #[schema(value_type = String)]
    pub digest: Cow<'a, str>,
    /// The contract version it was built against (`0.1.0`, `0.1.1`).
    #[serde(default)]
    #[schema(value_type = String)]
    pub contract: Cow<'a, str>,
    /// Its own version, from its metadata (none for a plugin of contract 0.1.0).
    #[serde(default)]
    pub version: Option<String>,
    /// The capabilities it needs (its imports and its metadata say so), granted or not.
    #[serde(default)]
    pub needs: Vec<String>,
}

/// The dispatcher plugins this host loaded.
#[utoipa::path(get, path = "/v1/plugins", operation_id = "listPlugins", tag = "plugins", responses(
    (status = 200, description = "Plugins, built-in and from the plugin directory", body = Vec<PluginView<'static>>),
))]
pub(super) async fn list(State(cp): State<ControlPlane>) -> Json<Vec<PluginView<'static>>> {
    let catalog = cp.plugins().catalog();
    let views = catalog.plugins().map(|plugin| PluginView {
        name: Cow::Owned(plugin.name.clone()),
        capabilities: plugin.grants.to_string().split(',').map(str::to_string).collect(),
        source: Cow::Owned(plugin.source.label()),
        digest: Cow::Owned(plugin.digest.clone()),
        contract: Cow::Owned(plugin.contract.clone()),
        version: plugin.metadata.as_ref().map(|m| m.version.clone()),
        needs: plugin.needs.iter().map(|c| c.to_string()).collect(),
    });
    Json(views.collect())
}
