//! A port: one network interface, served with one AF_XDP socket per queue.
//!
//! The sockets of a port are spread over the workers: worker `i` binds queue
//! `i` of every port (see `worker.rs`). This module only knows the interface:
//! its index, how many queues it has, and how to clear XDP programs a crashed
//! dataplane may have left on it.

use std::io;

use thiserror::Error;

use crate::pipeline::PortId;
use crate::xsk::{self, AttachMode};

/// Opening a port failed.
#[derive(Debug, Error)]
pub enum PortError {
    /// The interface does not exist.
    #[error("interface {ifname} not found")]
    NoInterface {
        /// Interface.
        ifname: String,
        /// The lookup error.
        #[source]
        source: io::Error,
    },
    /// Clearing a stale XDP program failed.
    #[error("clearing the XDP program of port {ifname}")]
    Detach {
        /// Interface.
        ifname: String,
        /// The error.
        #[source]
        source: xsk::DetachError,
    },
}

/// A network interface the dataplane switches between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// Index in the dataplane's port list (what the pipeline sees).
    pub id: PortId,
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub ifindex: u32,
    /// Number of RX queues (one socket each).
    pub queues: u32,
}

impl Port {
    /// Looks up interface `name`, counts its RX queues and removes any XDP
    /// program attached to it: a port owns its interface's XDP hook.
    pub fn open(id: PortId, name: &str, attach: AttachMode) -> Result<Port, PortError> {
        let ifindex =
            xsk::if_index(name).map_err(|source| PortError::NoInterface { ifname: name.into(), source })?;
        let queues = rx_queues(name).unwrap_or(1).max(1);
        xsk::detach_xdp(name, attach).map_err(|source| PortError::Detach { ifname: name.into(), source })?;
        Ok(Port { id, name: name.to_string(), ifindex, queues })
    }
}

/// Number of `rx-N` entries in `/sys/class/net/<name>/queues`.
fn rx_queues(name: &str) -> io::Result<u32> {
    let mut n = 0;
    for entry in std::fs::read_dir(format!("/sys/class/net/{name}/queues"))? {
        if entry?.file_name().to_string_lossy().starts_with("rx-") {
            n += 1;
        }
    }
    Ok(n)
}
