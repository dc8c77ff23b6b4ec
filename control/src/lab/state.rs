//! What `lab up` created, recorded in the state directory so that every other
//! lab command (and `lab down` after a crash) can find it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the state record inside the state directory.
pub const STATE_FILE: &str = "lab.json";
/// Copy of the cluster file given to `lab up`.
pub const CLUSTER_FILE: &str = "cluster.yaml";
/// Directory of files added by `lab apply`, read in name order.
pub const APPLIED_DIR: &str = "applied";
/// Written by the dataplane process after each publication: the generation.
pub const GENERATION_FILE: &str = "generation";
/// Written by the dataplane process when a reload failed.
pub const RELOAD_ERROR_FILE: &str = "reload-error";
/// The dataplane's counters, rewritten every second (JSON).
pub const COUNTERS_FILE: &str = "counters.json";
/// The dataplane's log.
pub const DATAPLANE_LOG: &str = "dataplane.log";

/// One pod of the lab.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabPod {
    /// `namespace/name`.
    pub key: String,
    /// The network namespace standing for the pod.
    pub netns: String,
    /// The host side of its veth pair (a dataplane port).
    pub host_if: String,
    /// Its addresses with their prefix lengths.
    pub addrs: Vec<(IpAddr, u8)>,
    /// MAC address of the pod side.
    pub mac: String,
    /// Ports served (TCP and UDP each).
    pub ports: Vec<u16>,
    /// The echo server's pid.
    pub server_pid: Option<u32>,
}

/// Everything a running lab consists of.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabState {
    /// Name prefix of every namespace and link.
    pub prefix: String,
    /// The pods, in the compiled cluster's order.
    pub pods: Vec<LabPod>,
    /// The dataplane process.
    pub dataplane_pid: Option<u32>,
    /// Arguments the dataplane was started with (after `lab dataplane`).
    pub dataplane_args: Vec<String>,
}

impl LabState {
    /// Reads `dir/lab.json`.
    pub fn load(dir: &Path) -> std::io::Result<LabState> {
        let text = std::fs::read_to_string(dir.join(STATE_FILE))?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }

    /// Writes `dir/lab.json` atomically.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(&dir.join(STATE_FILE), text.as_bytes())
    }
}

/// Writes a file through a temporary name and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The generation the dataplane last published, if any.
pub fn generation(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join(GENERATION_FILE)).ok()?.trim().parse().ok()
}
