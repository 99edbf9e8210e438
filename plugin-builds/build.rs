//! Builds the example and test plugins (`plugins/`, their own workspace) to
//! wasm32-wasip2 components, and writes their paths into `$OUT_DIR/paths.rs`
//! as constants (`src/lib.rs` includes it), so that the tests can say
//! `USER_DIRECTORY` instead of a path.
//!
//! The plugins get their own target directory (`target/plugins`): this build
//! holds the lock on the main one. Python and JavaScript plugins are built
//! with their own toolchains (`build/languages.rs`). The example components
//! are also copied to `target/plugins/examples/` for `serve --plugins-dir`
//! (`scripts/serve`).

use std::fmt::Write as _;
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
        name: "PYTHON_USER_DIRECTORY",
    },
    Plugin {
        language: Language::JavaScript,
        dir: "user-directory",
        wit: "wit/v0.2",
        world: "projection",
        name: "JS_USER_DIRECTORY",
    },
    Plugin {
        language: Language::JavaScript,
        dir: "endless-loop",
        wit: "wit",
        world: "projection",
        name: "JS_ENDLESS_LOOP",
    },
    Plugin {
        language: Language::Python,
        dir: "order-fulfilment",
        wit: "wit/v0.4",
        world: "reactor",
        name: "PYTHON_ORDER_FULFILMENT",
    },
    Plugin {
        language: Language::JavaScript,
        dir: "order-fulfilment",
        wit: "wit/v0.4",
        world: "reactor",
        name: "JS_ORDER_FULFILMENT",
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
    "counter-v0-3",
    "endless-loop",
    "memory-hog",
    "trap",
    "failing",
    "chatty",
    "oversize-notifier",
    "sneaky-projection",
    "records-notifier-v0-2",
    "order-fulfilment",
    "scripted-reactor",
    "scripted-reactor-v2",
    "relay-reactor",
    "relay-projection",
];
/// The ones copied to `target/plugins/examples/`.
const EXAMPLES: &[&str] = &[
    "user-directory",
    "order-totals",
    "shipment-notifier",
    "order-fulfilment",
];
const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("plugin-builds/ is inside the workspace")
        .to_path_buf();
    // The workspace manifest too: the SDK inherits its dependencies from it.
    for watched in ["plugins", "guest-sdk", "wit", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    // A relative CARGO_TARGET_DIR is taken from the workspace root (this
    // script runs in plugin-builds/): the paths below must hold from anywhere.
    let target_dir = root
        .join(std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into()))
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
    let mut paths = String::new();
    constant(
        &mut paths,
        "PLUGINS_DIR",
        "The plugins' own target directory (`target/plugins`): the Rust plugins are under \
         `wasm32-wasip2/release/`, the Python and JavaScript ones under `python/` and `js/`.",
        &target_dir,
    );
    constant(
        &mut paths,
        "WASM_DIR",
        "Where the Rust plugins' components are (`target/plugins/wasm32-wasip2/release`), \
         named after their crates with `_` for `-` (`user_directory.wasm`).",
        &built,
    );
    constant(
        &mut paths,
        "EXAMPLES_DIR",
        "The example plugins, ready for `serve --plugins-dir` (`target/plugins/examples`).",
        &examples,
    );
    for plugin in PLUGINS {
        let file = built.join(format!("{}.wasm", plugin.replace('-', "_")));
        assert!(
            file.exists(),
            "the plugin build did not produce {}",
            file.display()
        );
        let name = plugin.replace('-', "_").to_ascii_uppercase();
        let doc = describe(&root, plugin);
        constant(&mut paths, &name, &doc, &file);
        if EXAMPLES.contains(plugin) {
            copy_if_changed(&file, &examples.join(format!("{plugin}.wasm")));
        }
    }
    for (plugin, file) in languages::build(&root, &target_dir, OTHER_LANGUAGES) {
        let language = match plugin.language {
            Language::Python => "Python",
            Language::JavaScript => "JavaScript",
        };
        let doc = format!(
            "`{}` in {language}, built against `{}`.",
            plugin.dir, plugin.wit
        );
        constant(&mut paths, plugin.name, &doc, &file);
    }
    // The user directory in Python and JavaScript beside the Rust one.
    for language in ["python", "js"] {
        let file = target_dir.join(language).join("user-directory.wasm");
        copy_if_changed(
            &file,
            &examples.join(format!("{language}-user-directory.wasm")),
        );
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("paths.rs");
    write_if_changed(&out, &paths);
}

/// Appends `pub const NAME: &str = "path";` with its doc comment to `paths`.
fn constant(paths: &mut String, name: &str, doc: &str, path: &Path) {
    let path = path.to_str().expect("the target directory's path is UTF-8");
    writeln!(paths, "/// {doc}\npub const {name}: &str = {path:?};\n").expect("write to a String");
}

/// The plugin's `description` from its Cargo.toml, for its constant's doc.
fn describe(root: &Path, plugin: &str) -> String {
    let manifest = [
        root.join("plugins").join(plugin),
        root.join("plugins/test-plugins").join(plugin),
    ]
    .into_iter()
    .map(|dir| dir.join("Cargo.toml"))
    .find(|m| m.exists());
    let description = manifest
        .and_then(|m| std::fs::read_to_string(m).ok())
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("description = ")
                    .map(|d| d.trim_matches('"').to_owned())
            })
        });
    match description {
        Some(d) => format!("`{plugin}`: {d}"),
        None => format!("The `{plugin}` plugin."),
    }
}

fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).expect("write the plugins' paths");
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
