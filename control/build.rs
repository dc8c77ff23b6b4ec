//! Records the commit the binary is built from, for `--version`, `/status`,
//! `portcullis_build_info` and the start-up log: `PORTCULLIS_COMMIT` when set
//! (the Dockerfile's build argument: its build context has no `.git`), else
//! `git rev-parse`, with `-dirty` appended when the sources the binary is
//! built from ([`SOURCES`]) differ from that commit, else "unknown". Only
//! letters, digits and `.-_+` are kept (it becomes a metric label).
//! `PORTCULLIS_COMMIT_SOURCE` says which: `env`, `git` or `none`;
//! `PORTCULLIS_COMMIT_PATHS`, the paths compared (comma-separated).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// What the binary is built from, relative to the workspace root: the
/// crates' sources and manifests, this script, the workspace's manifest and
/// lock file (not tests, benches or anything git ignores, whose changes would
/// only rebuild the crate for nothing).
const SOURCES: [&str; 9] = [
    "Cargo.toml",
    "Cargo.lock",
    "policy-compiler/Cargo.toml",
    "policy-compiler/src",
    "dataplane/Cargo.toml",
    "dataplane/src",
    "control/Cargo.toml",
    "control/build.rs",
    "control/src",
];

/// Do tracked files among [`SOURCES`] differ from the commit (staged or not)?
fn dirty() -> bool {
    let out = Command::new("git")
        .args(["-C", "..", "status", "--porcelain", "--untracked-files=no", "--"])
        .args(SOURCES)
        .output();
    out.is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=PORTCULLIS_COMMIT");
    let (commit, source) = match std::env::var("PORTCULLIS_COMMIT") {
        Ok(c) if !c.is_empty() => (c, "env"),
        _ => {
            // Built again when the checked-out commit moves: HEAD (a checkout),
            // its log (every commit and checkout), the branch's ref. Only files
            // that exist: Cargo reruns a build script every time for a missing
            // one (a branch kept in packed-refs has no file of its own).
            let branch = git(&["symbolic-ref", "-q", "HEAD"]);
            for f in ["HEAD", "logs/HEAD"].into_iter().map(String::from).chain(branch) {
                if let Some(p) = git(&["rev-parse", "--git-path", &f]) {
                    if std::path::Path::new(&p).exists() {
                        println!("cargo:rerun-if-changed={p}");
                    }
                }
            }
            // Run again when those sources change, to tell whether they still match the commit.
            for p in SOURCES {
                println!("cargo:rerun-if-changed=../{p}");
            }
            match git(&["rev-parse", "--short=12", "HEAD"]) {
                Some(c) if dirty() => (format!("{c}-dirty"), "git"),
                Some(c) => (c, "git"),
                None => ("unknown".into(), "none"),
            }
        }
    };
    let commit: String =
        commit.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+')).collect();
    let commit = if commit.is_empty() { "unknown".to_string() } else { commit };
    println!("cargo:rustc-env=PORTCULLIS_COMMIT={commit}");
    println!("cargo:rustc-env=PORTCULLIS_COMMIT_SOURCE={source}");
    println!("cargo:rustc-env=PORTCULLIS_COMMIT_PATHS={}", SOURCES.join(","));
}
