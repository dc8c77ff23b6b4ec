//! # control
//!
//! The `portcullis` binary's library: reads cluster state, compiles it with
//! `policy-compiler`, and answers questions about it.
//!
//! ```text
//!  files / stdin ──manifest::parse──▶ State (k8s-openapi objects + origins)
//!                                        │ policy_compiler::compile
//!                                        ▼
//!                       Compiled { table, problems } ──report──▶ verdicts, explain, matrix
//! ```
//!
//! What comes in: YAML/JSON manifests (later: the Kubernetes API). What goes
//! out: text and JSON answers for people and programs; errors name the file,
//! document, object and field.

pub mod config;
pub mod daemon;
pub mod enforce;
pub mod index;
pub mod lab;
pub mod manifest;
pub mod manifest_dir;
pub mod report;
pub mod run;
pub mod sources;
pub mod status;

use manifest::{LoadErrors, State};

/// Loads every path: a file, `-` for stdin, or a directory (its `*.yaml`,
/// `*.yml` and `*.json` files in name order). All or nothing: any error in any
/// file fails the whole load.
pub fn load_paths(paths: &[String]) -> Result<State, LoadErrors> {
    let mut state = State::default();
    let mut errs = Vec::new();
    for p in paths {
        let files: Vec<String> = match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => match list_manifests(p) {
                Ok(f) => f,
                Err(e) => {
                    errs.extend(e.0);
                    continue;
                }
            },
            _ => vec![p.clone()],
        };
        for f in files {
            match manifest::load(&f).and_then(|s| state.merge(s)) {
                Ok(()) => {}
                Err(e) => errs.extend(e.0),
            }
        }
    }
    if errs.is_empty() {
        Ok(state)
    } else {
        Err(LoadErrors(errs))
    }
}

/// Manifest files of a directory, sorted by name.
pub fn list_manifests(dir: &str) -> Result<Vec<String>, LoadErrors> {
    let rd = std::fs::read_dir(dir).map_err(|e| {
        LoadErrors(vec![manifest::LoadError {
            origin: manifest::Origin { file: dir.to_string(), document: 0, line: 0, item: Vec::new() },
            object: None,
            field: None,
            line: None,
            message: format!("cannot read directory: {e}"),
        }])
    })?;
    let mut files: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
                && !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
        })
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    Ok(files)
}
