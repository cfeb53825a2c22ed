//! Keeps the crate's layers pointing one way (see the crate map in `lib.rs`): production code of a
//! layer may name only layers below it, so no module cycle between the top-level modules can come
//! back. Test code (after a file's `#[cfg(test)]`, and `tests.rs` files) may build a whole
//! `Config` and is not checked.

use std::path::{Path, PathBuf};

/// The layers, lowest first; a module may use modules of a lower rank only.
const LAYERS: &[(&str, u8)] = &[
    ("secrets", 0),
    ("http", 1),
    ("configkit", 2),
    ("upstream", 3),
    ("features", 4),
    ("config", 5),
    ("pipeline", 6),
    ("daemon", 7),
    ("cli", 8),
    ("commands", 9),
];

/// Upward references tolerated while they are being removed: none left (the WebSocket relay and
/// the admin endpoints moved into `pipeline`). Each entry is (file, layer it names); an entry
/// that no longer occurs must be removed from this list.
const KNOWN: &[(&str, &str)] = &[];

fn rank(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(name, _)| *name == module).map(|(_, rank)| *rank)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules named by `crate::NAME` and `crate::{A, B::...}` in `code`.
fn named_modules(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.push(name);
            }
        } else {
            names.push(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    names
}

#[test]
fn layers_only_point_down() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut seen_known = Vec::new();
    for path in files {
        let relative = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        let top = relative.trim_start_matches("src/");
        let module = top.split('/').next().unwrap().trim_end_matches(".rs");
        let Some(own) = rank(module) else { continue };
        if relative.ends_with("/tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let production = text.split("#[cfg(test)]").next().unwrap();
        for (number, line) in production.lines().enumerate() {
            for name in named_modules(line) {
                let Some(other) = rank(&name) else { continue };
                if name == module || other < own {
                    continue;
                }
                if KNOWN.contains(&(relative.as_str(), name.as_str())) {
                    seen_known.push((relative.clone(), name));
                    continue;
                }
                violations.push(format!(
                    "{relative}:{}: `{module}` names `crate::{name}`, a layer not below it",
                    number + 1
                ));
            }
        }
    }
    assert!(violations.is_empty(), "upward imports:\n{}", violations.join("\n"));
    for (file, layer) in KNOWN {
        assert!(
            seen_known.iter().any(|(f, l)| f == file && l == layer),
            "{file} no longer names crate::{layer}: remove it from layering::KNOWN"
        );
    }
}

#[test]
fn grouped_and_plain_paths_are_both_seen() {
    assert_eq!(named_modules("use crate::{http, config::Route};"), ["http", "config"]);
    assert_eq!(named_modules("x: crate::pipeline::plan::RoutePlan"), ["pipeline"]);
}
