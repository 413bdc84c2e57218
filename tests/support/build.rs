//! Builds the guest plugins the tests use, from source: `tests/plugins` (the testkit) and the
//! example plugin of docs/plugins.md (`examples/plugins/uppercase`). They share a target
//! directory, so the second build reuses the first one's compiled dependencies.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../..");
    let wit = root.join("wit");
    let mut components = wasm_build::build_workspace(&root.join("tests/plugins"), &wit, &[], "wasm-test-plugins");
    components.extend(wasm_build::build_workspace(
        &root.join("examples/plugins/uppercase"),
        &wit,
        &[&root.join("sdk"), &root.join("contract/src")],
        "wasm-test-plugins",
    ));
    let mut code = String::new();
    for c in components {
        let constant = c.name.to_uppercase().replace('-', "_");
        writeln!(
            code,
            "/// Path of the `{}` component.\npub const {constant}: &str = {:?};",
            c.name,
            c.path.display().to_string()
        )
        .expect("writing to a String cannot fail");
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("artifacts.rs");
    fs::write(out, code).expect("cannot write artifacts.rs");
}
