//! Builds the built-in dispatcher plugins (`plugins/`) for wasm32-wasip2 and generates
//! `builtin_plugins.rs`, which embeds them in the `nanofaas` binary.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("..");
    // Path dependencies of the plugins, watched for changes.
    let (sdk, contract, jobkit) = (root.join("sdk"), root.join("contract/src"), root.join("jobkit"));
    let components = wasm_build::build_workspace(
        &root.join("plugins"),
        &root.join("wit"),
        &[&sdk, &contract, &jobkit],
        "wasm-plugins",
    );

    let mut code =
        String::from("/// The built-in plugins: (name, component bytes).\npub static BUILTIN: &[(&str, &[u8])] = &[\n");
    for c in &components {
        writeln!(code, "    ({:?}, include_bytes!({:?})),", c.name, c.path.display().to_string())
            .expect("writing to a String cannot fail");
    }
    code.push_str("];\n");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("builtin_plugins.rs");
    fs::write(&out, code).expect("cannot write builtin_plugins.rs");
}
