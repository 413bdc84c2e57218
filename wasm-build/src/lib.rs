//! Compiles a cargo workspace of Wasm components (wasm32-wasip2) from a build script.
//!
//! The host embeds its built-in plugins and the tests use fault plugins; both are built from
//! source as one step of the normal `cargo build`, so nobody runs a separate script. The inner
//! build is isolated from the outer one, for reasons measured in `WASM-RUNTIME-NOTES`-style
//! experiments and easy to forget:
//! - it gets its own target directory (sharing the outer one deadlocks on cargo's lock);
//! - the outer build's RUSTFLAGS, target and rustc wrapper (set by `cargo clippy`) are removed;
//! - the jobserver (`CARGO_MAKEFLAGS`) is kept, so the inner cargo shares the outer job tokens;
//! - the target directory is shared by all host profiles, so `cargo check` after
//!   `cargo build --release` does not build the guests again.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// A component produced by [`build_workspace`].
pub struct Component {
    /// The crate name, with `_` turned into `-` (`k8s_job` → `k8s-job`).
    pub name: String,
    /// Absolute path of the `.wasm` file.
    pub path: PathBuf,
}

/// Builds every member of the guest workspace at `manifest_dir` (whose guests read the WIT
/// package at `wit_dir`) in release mode and returns
/// the components, sorted by name. `target_subdir` names the target directory (under the outer
/// build's target directory) so that two build scripts never wait on each other's lock.
///
/// Panics with an actionable message when the build fails: a build script has no other way to
/// report an error.
///
/// `extra_sources` are further directories the guests depend on (path dependencies), watched for
/// changes.
pub fn build_workspace(
    manifest_dir: &Path,
    wit_dir: &Path,
    extra_sources: &[&Path],
    target_subdir: &str,
) -> Vec<Component> {
    check_target_installed();
    let members = members(manifest_dir);
    rerun_if_changed(manifest_dir, wit_dir);
    for dir in extra_sources.iter().filter(|d| d.exists()) {
        println!("cargo:rerun-if-changed={}", dir.display());
    }

    let target_dir = shared_target_dir().join(target_subdir);
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--workspace")
        .arg(format!("--target={TARGET}"))
        .arg("--manifest-path")
        .arg(manifest_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run cargo to build {}: {e}", manifest_dir.display()));
    assert!(
        status.success(),
        "building the Wasm components in {} failed ({status}); see the cargo output above",
        manifest_dir.display()
    );

    let out = target_dir.join(TARGET).join("release");
    let mut components: Vec<Component> = members
        .iter()
        .map(|m| {
            let file = format!("{}.wasm", m.replace('-', "_"));
            let path = out.join(&file);
            assert!(path.is_file(), "expected {} after the build", path.display());
            Component { name: m.replace('_', "-"), path }
        })
        .collect();
    components.sort_by(|a, b| a.name.cmp(&b.name));
    components
}

/// The crate names of the workspace members: the root package, if the root manifest has one,
/// and every direct subdirectory with a `Cargo.toml`.
fn members(manifest_dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let root = fs::read_to_string(manifest_dir.join("Cargo.toml"))
        .unwrap_or_else(|e| panic!("cannot read {}/Cargo.toml: {e}", manifest_dir.display()));
    if is_component(&root) {
        names.extend(package_name(&root));
    }
    let entries = fs::read_dir(manifest_dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", manifest_dir.display()));
    for entry in entries.flatten() {
        let manifest = entry.path().join("Cargo.toml");
        if let Ok(text) = fs::read_to_string(&manifest)
            && is_component(&text)
        {
            names.push(package_name(&text).unwrap_or_else(|| panic!("no [package] name in {}", manifest.display())));
        }
    }
    names.sort();
    names
}

/// Whether a manifest builds a component (a `cdylib`), as opposed to a helper library.
fn is_component(manifest: &str) -> bool {
    manifest.contains("\"cdylib\"")
}

/// The `name = "…"` of a manifest's `[package]` table (the first `name` key after it).
fn package_name(manifest: &str) -> Option<String> {
    let package = manifest.split("[package]").nth(1)?;
    package.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "name").then(|| value.trim().trim_matches('"').to_string())
    })
}

/// Watches the WIT contract, the workspace manifest and lock, and each member's sources.
/// Only paths that exist are printed: a missing one makes cargo rerun the script every time.
fn rerun_if_changed(manifest_dir: &Path, wit_dir: &Path) {
    let mut paths = vec![manifest_dir.join("Cargo.toml"), manifest_dir.join("Cargo.lock"), wit_dir.to_path_buf()];
    for entry in fs::read_dir(manifest_dir).into_iter().flatten().flatten() {
        let dir = entry.path();
        if dir.join("Cargo.toml").is_file() {
            paths.push(dir.join("Cargo.toml"));
            paths.push(dir.join("src"));
        }
    }
    for path in paths.into_iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// `<outer target dir>/`, found from `OUT_DIR` (`target/<profile>/build/<pkg>-<hash>/out`).
fn shared_target_dir() -> PathBuf {
    if let Some(dir) = env::var_os("NANOFAAS_WASM_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set for build scripts"));
    out.ancestors().nth(4).map(Path::to_path_buf).unwrap_or_else(|| out.join("wasm-target"))
}

/// Fails early with the fix when the wasm32-wasip2 standard library is missing: a toolchain
/// file does not install targets where rustup's auto-install is off.
fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let lib = Path::new(&sysroot).join("lib/rustlib").join(TARGET);
    assert!(lib.is_dir(), "the {TARGET} target is not installed for this toolchain; run `rustup target add {TARGET}`");
}

#[cfg(test)]
mod tests {
    use super::package_name;

    #[test]
    fn reads_the_package_name() {
        let manifest = "[package]\nedition = \"2024\"\nname = \"k8s-job\"\n[dependencies]\nname = 1\n";
        assert_eq!(package_name(manifest).as_deref(), Some("k8s-job"));
        assert_eq!(package_name("[workspace]\n"), None);
    }
}
