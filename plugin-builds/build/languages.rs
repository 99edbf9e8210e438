//! Plugins written in Python and JavaScript, built into components with
//! their languages' own tools: `componentize-py` (PyPI, pinned in
//! `plugins/python/requirements.txt`, installed into a virtual environment)
//! and `componentize-js` (npm, pinned by `plugins/js/package-lock.json`).
//! Both toolchains live under `target/plugins/`; a component is rebuilt only
//! when its source or the WIT changed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One plugin: its language's folder under `plugins/`, its own folder there,
/// the WIT folder (the package version) and world it targets, and the name
/// of the constant giving its `.wasm`.
pub struct Plugin {
    pub language: Language,
    pub dir: &'static str,
    pub wit: &'static str,
    pub world: &'static str,
    pub name: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    JavaScript,
}

/// Builds every plugin (when needed) and returns each one's `.wasm`.
pub fn build<'a>(
    root: &Path,
    target_dir: &Path,
    plugins: &'a [Plugin],
) -> Vec<(&'a Plugin, PathBuf)> {
    let mut python = None;
    let mut node = None;
    let mut built = Vec::new();
    for plugin in plugins {
        let wit = root.join(plugin.wit);
        let (source, out) = match plugin.language {
            Language::Python => (
                root.join("plugins/python").join(plugin.dir).join("app.py"),
                target_dir
                    .join("python")
                    .join(format!("{}.wasm", plugin.dir)),
            ),
            Language::JavaScript => (
                root.join("plugins/js").join(plugin.dir).join("app.js"),
                target_dir.join("js").join(format!("{}.wasm", plugin.dir)),
            ),
        };
        if !up_to_date(&out, &[&source, &wit]) {
            std::fs::create_dir_all(out.parent().expect("out has a folder"))
                .expect("create output folder");
            let mut command = match plugin.language {
                Language::Python => {
                    let tool = python.get_or_insert_with(|| python_toolchain(root, target_dir));
                    // Built from a copy: the build leaves __pycache__ beside
                    // the sources, which must not land in (and re-trigger) the tree.
                    let copy = target_dir.join("python-src").join(plugin.dir);
                    copy_python_sources(source.parent().expect("source has a folder"), &copy);
                    let mut c = Command::new(tool);
                    c.arg("-d")
                        .arg(&wit)
                        .args(["-w", plugin.world, "componentize", "-p"]);
                    c.arg(&copy).arg("app").arg("-o").arg(&out);
                    c
                }
                Language::JavaScript => {
                    let script = node.get_or_insert_with(|| js_toolchain(root, target_dir));
                    let mut c = Command::new("node");
                    c.arg(&*script)
                        .arg(&source)
                        .arg(&wit)
                        .arg(plugin.world)
                        .arg(&out);
                    c
                }
            };
            run(
                &mut command,
                &format!("building plugin {}", source.display()),
            );
        }
        built.push((plugin, out));
    }
    built
}

/// Copies the `.py` files of `from` into a fresh `to`.
fn copy_python_sources(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).expect("create the python source copy");
    for entry in std::fs::read_dir(from)
        .expect("read the plugin's folder")
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "py") {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy a python source");
        }
    }
}

/// Whether `out` exists and is newer than every file in `inputs`.
fn up_to_date(out: &Path, inputs: &[&Path]) -> bool {
    let Ok(built) = std::fs::metadata(out).and_then(|m| m.modified()) else {
        return false;
    };
    inputs
        .iter()
        .all(|input| newest(input).is_some_and(|t| t <= built))
}

fn newest(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| newest(&e.path()))
        .max()
}

/// `componentize-py` in `target/plugins/python-venv`, installed when missing
/// or when `requirements.txt` changed.
fn python_toolchain(root: &Path, target_dir: &Path) -> PathBuf {
    let requirements = root.join("plugins/python/requirements.txt");
    let venv = target_dir.join("python-venv");
    let tool = venv.join("bin/componentize-py");
    let stamp = venv.join("requirements.txt");
    if tool.exists() && std::fs::read(&stamp).ok() == std::fs::read(&requirements).ok() {
        return tool;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run(
        Command::new(&python).args(["-m", "venv"]).arg(&venv),
        "creating a Python virtual environment (is python3 with venv installed?)",
    );
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements),
        "installing componentize-py from PyPI",
    );
    std::fs::copy(&requirements, &stamp).expect("record the installed requirements");
    tool
}

/// `componentize-js` installed with `npm ci` in `target/plugins/js-toolchain`
/// (a copy of `plugins/js`'s package files and build script), when missing
/// or when the lock file changed; answers the build script's path.
fn js_toolchain(root: &Path, target_dir: &Path) -> PathBuf {
    let sources = root.join("plugins/js");
    let toolchain = target_dir.join("js-toolchain");
    std::fs::create_dir_all(&toolchain).expect("create the js toolchain folder");
    let lock = sources.join("package-lock.json");
    let stamp = toolchain.join("package-lock.json");
    let installed = toolchain
        .join("node_modules/@bytecodealliance/componentize-js")
        .exists();
    if !installed || std::fs::read(&stamp).ok() != std::fs::read(&lock).ok() {
        std::fs::copy(sources.join("package.json"), toolchain.join("package.json"))
            .expect("copy package.json");
        std::fs::copy(&lock, &stamp).expect("copy package-lock.json");
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&toolchain),
            "installing componentize-js from npm (is Node.js with npm installed?)",
        );
    }
    let script = toolchain.join("build.mjs");
    std::fs::copy(sources.join("build.mjs"), &script).expect("copy build.mjs");
    script
}

fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", command.get_program()));
    if !output.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
