//! Records the commit the binary is built from, for `--version`, `/status`,
//! `portcullis_build_info` and the start-up log: `PORTCULLIS_COMMIT` when set
//! (the Dockerfile's build argument: its build context has no `.git`), else
//! `git rev-parse`, else "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=PORTCULLIS_COMMIT");
    let commit = match std::env::var("PORTCULLIS_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => {
            // Built again when the checked-out commit moves.
            for f in ["HEAD", "packed-refs"] {
                if let Some(p) = git(&["rev-parse", "--git-path", f]) {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
            if let Some(p) =
                git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r]))
            {
                println!("cargo:rerun-if-changed={p}");
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=PORTCULLIS_COMMIT={commit}");
}
