//! `lab down`: removes every process, namespace and link of a lab, found
//! through the state directory and by name prefix, so it also works after a
//! crash left only some of them.

use std::time::{Duration, Instant};

use clap::Args;
use thiserror::Error;

use super::cmd::{self, CommandError};
use super::state::LabState;
use super::{DirArgs, DEFAULT_PREFIX};

/// `lab down` arguments.
#[derive(Args, Debug, Clone)]
pub struct DownArgs {
    /// State directory.
    #[command(flatten)]
    pub dir: DirArgs,
    /// Name prefix to clean up when the state directory is gone (default:
    /// the one recorded there, else `pcllab`).
    #[arg(long)]
    pub prefix: Option<String>,
}

/// `lab down` could not remove everything.
#[derive(Debug, Error)]
pub enum DownError {
    /// Some removals failed; the rest went on.
    #[error("{} thing(s) could not be removed:\n{}", .failures.len(), .failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Incomplete {
        /// The failed commands.
        failures: Vec<CommandError>,
    },
}

/// Tears a lab down. Idempotent: nothing to remove is not an error.
pub fn down(args: &DownArgs) -> Result<(), DownError> {
    let dir = &args.dir.dir;
    let marker = dir.to_string_lossy().into_owned();
    let recorded = LabState::load(dir).ok();
    let prefix = args
        .prefix
        .clone()
        .or_else(|| recorded.as_ref().map(|s| s.prefix.clone()))
        .unwrap_or_else(|| DEFAULT_PREFIX.to_string());
    let mut failures = Vec::new();
    let mut removed = 0usize;

    // Processes recorded by `up`, if they are still the ones it started.
    if let Some(s) = &recorded {
        let pids = s.dataplane_pid.into_iter().chain(s.pods.iter().filter_map(|p| p.server_pid));
        for pid in pids {
            if cmd::is_ours(pid, &marker) {
                stop(pid);
                removed += 1;
            }
        }
    }
    // Namespaces with the prefix, and anything still running inside them
    // (processes the lab started there).
    let listed = cmd::run("ip", &["netns", "list"]).unwrap_or_default();
    for name in listed.lines().filter_map(|l| l.split_whitespace().next()) {
        if !name.starts_with(&format!("{prefix}-")) {
            continue;
        }
        let pids = cmd::run("ip", &["netns", "pids", name]).unwrap_or_default();
        for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            stop(pid);
        }
        match cmd::run("ip", &["netns", "del", name]) {
            Ok(_) => removed += 1,
            Err(e) => failures.push(e),
        }
    }
    // Host-side links `<prefix>h<digits>` (deleting one end removes the pair).
    for name in host_links(&prefix) {
        match cmd::run("ip", &["link", "del", &name]) {
            Ok(_) => removed += 1,
            // Deleting a namespace deletes its veth ends, and their peers
            // with them, a moment later: the link may vanish between the
            // listing and the delete. iproute2 words that two ways.
            Err(e) if e.message.contains("Cannot find device") || e.message.contains("No such device") => {}
            Err(e) => failures.push(e),
        }
    }
    // Namespace teardown is asynchronous in the kernel; return only once
    // the links are really gone, so a following `up` can reuse the names.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host_links(&prefix).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for name in host_links(&prefix) {
        failures.push(CommandError {
            command: format!("ip link del {name}"),
            message: "the link is still there 5 s after its removal".to_string(),
        });
    }
    if dir.join(super::state::STATE_FILE).exists() || dir.join(super::state::CLUSTER_FILE).exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
    if failures.is_empty() {
        println!("lab down: removed {removed} process(es), namespace(s) and link(s) with prefix {prefix}");
        Ok(())
    } else {
        Err(DownError::Incomplete { failures })
    }
}

/// Host-side lab links: `<prefix>h<digits>`.
fn host_links(prefix: &str) -> Vec<String> {
    let links = cmd::run("ip", &["-o", "link", "show"]).unwrap_or_default();
    let head = format!("{prefix}h");
    links
        .lines()
        .filter_map(|line| {
            line.split(':').nth(1).map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        })
        .filter(|name| {
            name.strip_prefix(&head).is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect()
}

/// SIGTERM, then SIGKILL if still there after 3 s.
fn stop(pid: u32) {
    if cmd::signal(pid, "TERM").is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = cmd::signal(pid, "KILL");
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its parent) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
}
