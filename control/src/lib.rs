//! # control
//!
//! The `portcullis` binary's library: the daemon that feeds the dataplane,
//! and the offline tools that answer questions from manifests.
//!
//! ```text
//!  daemon (`run`):
//!   kube API watches (sources) ─┐                 index (validated objects)
//!   manifest directory ─────────┴─▶ SourceMsg ──▶ daemon ──patch / full compile──▶ DecisionTable
//!                                                   │                                   │ arc-swap
//!                                      status (/status, /metrics)        enforce ──▶ dataplane workers
//!  offline (`query`, `explain`, `matrix`, `check`):
//!   files / stdin ──manifest::parse──▶ State ──policy_compiler::compile──▶ Compiled ──report──▶ answers
//! ```
//!
//! What comes in: Namespaces, Pods and NetworkPolicies from the Kubernetes API
//! or YAML/JSON manifests, the node's configuration (`config`; command-line
//! flags and `NODE_NAME`/`NODE_ADDRESSES` from the environment), and the
//! process's CPU set (`cpus` keeps the control threads off the workers'
//! cores). What goes out: decision tables published to the dataplane, status
//! and metrics over HTTP, logs (JSON or text); for the offline tools, text
//! and JSON answers. `lab` (root) builds a test bed of network namespaces,
//! veths and pods' servers, runs a dataplane on it (its own `lab dataplane`
//! process, reloaded on SIGHUP by `lab apply`; the daemon itself with
//! `lab up --run-manifests`) and probes it. Panics are log lines of the
//! daemon (`panics`). Errors name
//! the file, document, object and field. No `unsafe` here: the dataplane's
//! `xsk` module holds it.

#![forbid(unsafe_code)]

pub mod config;
pub mod cpus;
pub mod daemon;
pub mod enforce;
pub mod index;
pub mod lab;
pub mod manifest;
pub mod manifest_dir;
pub mod panics;
pub mod report;
pub mod run;
pub mod sources;
pub mod status;
pub mod yaml11;

/// This build: the package version and the commit it was built from
/// (`build.rs`), as `--version`, `/status` and `portcullis_build_info` give it.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("PORTCULLIS_COMMIT"), ")");
/// The commit alone ("unknown" when the build could not tell).
pub const COMMIT: &str = env!("PORTCULLIS_COMMIT");

use manifest::{LoadErrors, State};

/// Loads every path: a file, `-` for stdin, or a directory (its `*.yaml`,
/// `*.yml` and `*.json` files in name order). All or nothing: any error in any
/// file fails the whole load.
pub fn load_paths(paths: &[String]) -> Result<State, LoadErrors> {
    let (state, errs) = load_paths_all(paths);
    if errs.is_empty() {
        Ok(state)
    } else {
        Err(LoadErrors(errs))
    }
}

/// [`load_paths`], giving both its problems and the objects read without
/// one ([`manifest::parse_all`]): for reporting every problem in one run,
/// never for applying.
pub fn load_paths_all(paths: &[String]) -> (State, Vec<manifest::LoadError>) {
    let mut state = State::default();
    let mut errs = Vec::new();
    let whole = manifest::LoadError::file;
    let mut seen: std::collections::HashMap<std::path::PathBuf, String> = Default::default();
    if paths.iter().filter(|p| *p == "-").count() > 1 {
        errs.push(whole("-", "standard input can be read once: give `-` once".into()));
    }
    for p in paths {
        let files: Vec<String> = match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => match list_manifests(p) {
                Ok(f) if f.is_empty() && !hidden_manifests(p).unwrap_or_default().is_empty() => {
                    errs.push(whole(
                        p,
                        "the directory holds no *.yaml, *.yml or *.json file, only hidden ones \
                         (names starting with `.`), which are not read"
                            .into(),
                    ));
                    continue;
                }
                Ok(f) if f.is_empty() => {
                    errs.push(whole(p, "the directory holds no *.yaml, *.yml or *.json file".into()));
                    continue;
                }
                Ok(f) => {
                    for h in hidden_manifests(p).unwrap_or_default() {
                        state.notes.push(format!("{h}: not read (a hidden name, starting with `.`)"));
                    }
                    f
                }
                Err(e) => {
                    errs.extend(e.0);
                    continue;
                }
            },
            _ => vec![p.clone()],
        };
        for f in files {
            // The same file named twice (`-s a.yaml -s a.yaml`, or a file and its
            // directory) would report every object of it as defined twice.
            if f != "-" {
                let id = std::fs::canonicalize(&f).unwrap_or_else(|_| f.clone().into());
                if let Some(first) = seen.get(&id) {
                    let also = if *first == f { String::new() } else { format!(" (also as {first})") };
                    errs.push(whole(&f, format!("given more than once{also}: name each file once")));
                    continue;
                }
                seen.insert(id, f.clone());
            }
            let (s, e) = manifest::load_all(&f);
            errs.extend(e);
            errs.extend(state.merge_all(s));
        }
    }
    (state, errs)
}

/// Manifest files of a directory, sorted by name: its `*.yaml`, `*.yml` and
/// `*.json` files, and symbolic links with those names whose target is
/// missing (reading one fails, naming it, rather than the file being left
/// out unnoticed). Names starting with `.` are left out: editors' and
/// copying tools' temporary files, and the `..data` entries of a mounted
/// ConfigMap, whose files are also reached through the visible links.
pub fn list_manifests(dir: &str) -> Result<Vec<String>, LoadErrors> {
    Ok(manifest_entries(dir)?.into_iter().filter(|(_, hidden)| !hidden).map(|(f, _)| f).collect())
}

/// The manifest files of a directory that [`list_manifests`] leaves out for
/// their hidden names, for a note.
pub fn hidden_manifests(dir: &str) -> Result<Vec<String>, LoadErrors> {
    Ok(manifest_entries(dir)?.into_iter().filter(|(_, hidden)| *hidden).map(|(f, _)| f).collect())
}

/// (path, hidden name) of a directory's manifest files, sorted by name.
fn manifest_entries(dir: &str) -> Result<Vec<(String, bool)>, LoadErrors> {
    let rd = std::fs::read_dir(dir).map_err(|e| {
        LoadErrors(vec![manifest::LoadError::file(dir, format!("cannot read directory: {e}"))])
    })?;
    let dangling = |p: &std::path::Path| {
        p.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) && std::fs::metadata(p).is_err()
    };
    let mut files: Vec<(String, bool)> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            (p.is_file() || dangling(p))
                && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
        })
        .map(|p| {
            let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            (p.to_string_lossy().into_owned(), hidden)
        })
        .collect();
    files.sort();
    Ok(files)
}
