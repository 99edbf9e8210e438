//! Builds the example and test plugins (`plugins/`, their own workspace) to
//! wasm32-wasip2 components, so that `cargo run -- serve` has the examples at
//! hand and the tests can say `USER_DIRECTORY_WASM` instead of a path.
//!
//! The plugins get their own target directory (`target/plugins`): this build
//! holds the lock on the main one. Python and JavaScript plugins are built
//! with their own toolchains (`build/languages.rs`). The example components are also copied to
//! `target/plugins/examples/` for `serve --plugins-dir`.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/languages.rs"]
mod languages;

use languages::{Language, Plugin};

/// Plugins in other languages, built with their own toolchains.
const OTHER_LANGUAGES: &[Plugin] = &[
    Plugin {
        language: Language::Python,
        dir: "user-directory",
        wit: "wit/v0.2",
        world: "projection",
        var: "PYTHON_USER_DIRECTORY_WASM",
    },
    Plugin {
        language: Language::JavaScript,
        dir: "user-directory",
        wit: "wit/v0.2",
        world: "projection",
        var: "JS_USER_DIRECTORY_WASM",
    },
    Plugin {
        language: Language::JavaScript,
        dir: "endless-loop",
        wit: "wit",
        world: "projection",
        var: "JS_ENDLESS_LOOP_WASM",
    },
];

/// The plugins built, by crate name.
const PLUGINS: &[&str] = &[
    "user-directory",
    "order-totals",
    "shipment-notifier",
    "counter",
    "counter-v2",
    "counter-v0-1",
    "endless-loop",
    "memory-hog",
    "trap",
    "failing",
    "chatty",
    "oversize-notifier",
    "sneaky-projection",
    "records-notifier-v0-2",
];
/// The ones copied to `target/plugins/examples/`.
const EXAMPLES: &[&str] = &["user-directory", "order-totals", "shipment-notifier"];
const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ is inside the workspace")
        .to_path_buf();
    // The workspace manifest too: the SDK inherits its dependencies from it.
    for watched in ["plugins", "guest-sdk", "wit", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("plugins");

    ensure_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(root.join("plugins/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // Settings of the outer build that must not leak into this one.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        build.env_remove(var);
    }
    let output = build
        .output()
        .expect("cannot run cargo to build the plugins");
    if !output.status.success() {
        panic!(
            "building the plugins for {TARGET} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let built = target_dir.join(TARGET).join("release");
    let examples = target_dir.join("examples");
    std::fs::create_dir_all(&examples).expect("create target/plugins/examples");
    for plugin in PLUGINS {
        let file = built.join(format!("{}.wasm", plugin.replace('-', "_")));
        assert!(
            file.exists(),
            "the plugin build did not produce {}",
            file.display()
        );
        let var = format!("{}_WASM", plugin.replace('-', "_").to_ascii_uppercase());
        println!("cargo:rustc-env={var}={}", file.display());
        if EXAMPLES.contains(plugin) {
            copy_if_changed(&file, &examples.join(format!("{plugin}.wasm")));
        }
    }
    for (var, file) in languages::build(&root, &target_dir, OTHER_LANGUAGES) {
        println!("cargo:rustc-env={var}={}", file.display());
    }
    // The user directory in Python and JavaScript beside the Rust one.
    for language in ["python", "js"] {
        let file = target_dir.join(language).join("user-directory.wasm");
        copy_if_changed(
            &file,
            &examples.join(format!("{language}-user-directory.wasm")),
        );
    }
}

/// Installs the wasm32-wasip2 target when it is missing: with
/// RUSTUP_AUTO_INSTALL=0, naming it in rust-toolchain.toml does not.
fn ensure_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(out)
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == TARGET) => {}
        Ok(_) => {
            let status = Command::new("rustup")
                .args(["target", "add", TARGET])
                .status();
            if !status.is_ok_and(|s| s.success()) {
                panic!("the {TARGET} target is missing and `rustup target add {TARGET}` failed");
            }
        }
        Err(_) => {
            println!("cargo:warning=rustup not found; assuming the {TARGET} target is installed")
        }
    }
}

fn copy_if_changed(from: &Path, to: &Path) {
    let same = std::fs::read(to).ok() == std::fs::read(from).ok();
    if !same {
        std::fs::copy(from, to).expect("copy an example plugin");
    }
}
