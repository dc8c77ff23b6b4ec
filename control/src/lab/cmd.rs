//! Running the system tools the lab drives (`ip`, `ethtool`, `kill`).

use std::process::{Command, Stdio};

use thiserror::Error;

/// A command failed to start or exited with an error.
#[derive(Debug, Error)]
#[error("`{command}` failed: {message}")]
pub struct CommandError {
    /// The command line.
    pub command: String,
    /// Its standard error, or why it could not start.
    pub message: String,
}

/// Runs `program args..`, returns its standard output.
pub fn run(program: &str, args: &[&str]) -> Result<String, CommandError> {
    let command = || format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CommandError { command: command(), message: e.to_string() })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CommandError {
            command: command(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs `program args..` inside network namespace `netns`.
pub fn in_netns(netns: &str, program: &str, args: &[&str]) -> Result<String, CommandError> {
    let mut all = vec!["netns", "exec", netns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Sends `signal` (e.g. `"TERM"`) to process `pid`.
pub fn signal(pid: u32, signal: &str) -> Result<(), CommandError> {
    run("kill", &[&format!("-{signal}"), &pid.to_string()]).map(|_| ())
}

/// Is process `pid` alive and running one of our lab commands for this
/// state directory? Guards against signalling a recycled pid.
pub fn is_ours(pid: u32, marker: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(raw) => {
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            // `lab ...` processes, and `portcullis run` started by `lab up --run-manifests`
            // (its --config lives in the lab directory).
            (line.contains(" lab ") || line.contains(" run ")) && line.contains(marker)
        }
        Err(_) => false,
    }
}
