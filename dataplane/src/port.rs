//! A port: one network interface, served with one AF_XDP socket per queue.
//!
//! Opening a port attaches the dataplane's own XDP program to it (`xsk/prog.rs`:
//! redirect each queue to its socket, drop what has no socket); the program
//! stays attached as long as a clone of the [`Port`] lives.
//!
//! The sockets of a port are spread over the workers: a port bound on `q`
//! queues has them bound by workers `0..q`, worker `i` on queue `i` (see
//! `worker.rs`). This module only knows the interface: its index, how many RX
//! queues it has, and how to clear XDP programs a crashed dataplane may have
//! left on it.
//!
//! # Every RX queue is bound, or the port is refused
//!
//! The XDP program redirects a frame to the socket of the queue it arrived
//! on. For a queue with no socket, libxdp's default program
//! (`bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_PASS)`) would pass
//! the frame to the kernel's stack, bypassing enforcement; ours drops it
//! (`xsk/prog.rs`), so that traffic would be lost silently. [`Port::open`]
//! therefore refuses an interface that has more RX queues (counted as the
//! `rx-N` entries of `/sys/class/net/<if>/queues`, which is the kernel's
//! `real_num_rx_queues`: RX plus combined channels) than are bound. Queue
//! counts changed later (`ethtool -L`) are not noticed: see
//! `docs/deployment.md`.

use std::io;
use std::sync::Arc;

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
    /// The interface's RX queues could not be counted (so it cannot be
    /// checked that all of them are bound).
    #[error("counting the RX queues of port {ifname} (/sys/class/net/{ifname}/queues)")]
    QueueCount {
        /// Interface.
        ifname: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The interface has more RX queues than are bound: frames arriving on
    /// the others would not be enforced (dropped by our XDP program; passed
    /// to the kernel's stack by libxdp's).
    #[error(
        "port {ifname} has {rx_queues} RX queues but only {bound} would be bound (queues 0..{bound}): \
         frames on the others would escape the dataplane; bind them all (ports[].queues, with as many \
         workers) or reduce the interface's queues (ethtool -L {ifname} combined {bound}, or rx {bound})"
    )]
    UnboundQueues {
        /// Interface.
        ifname: String,
        /// RX queues the interface has.
        rx_queues: u32,
        /// Queues that would be bound.
        bound: u32,
    },
    /// More queues to bind than the interface has (or none).
    #[error("port {ifname}: {queues} queues to bind, but the interface has {rx_queues} RX queues")]
    NoSuchQueues {
        /// Interface.
        ifname: String,
        /// Queues asked for.
        queues: u32,
        /// RX queues the interface has.
        rx_queues: u32,
    },
    /// Attaching the dataplane's XDP program failed.
    #[error("attaching the XDP program to port {ifname}")]
    Program {
        /// Interface.
        ifname: String,
        /// The error.
        #[source]
        source: xsk::ProgramError,
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
#[derive(Clone, Debug)]
pub struct Port {
    /// Index in the dataplane's port list (what the pipeline sees).
    pub id: PortId,
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub ifindex: u32,
    /// Queues bound, `0..queues`, one socket each (worker `i` on queue `i`).
    pub queues: u32,
    /// RX queues the interface has (equal to `queues`: see the module doc).
    pub rx_queues: u32,
    /// The XDP program attached to the interface; detached when the last
    /// clone of the port is dropped.
    pub program: Arc<xsk::XdpProgram>,
}

impl Port {
    /// The checks of [`Port::open`] that touch nothing: the interface exists
    /// and binding `queues` (`None`: all) covers its RX queues. Returns
    /// (ifindex, queues to bind, RX queues).
    pub fn plan(name: &str, queues: Option<u32>) -> Result<(u32, u32, u32), PortError> {
        let ifindex =
            xsk::if_index(name).map_err(|source| PortError::NoInterface { ifname: name.into(), source })?;
        let rx = rx_queues(name).map_err(|source| PortError::QueueCount { ifname: name.into(), source })?;
        let queues = queues.unwrap_or(rx);
        check_queues(name, queues, rx)?;
        Ok((ifindex, queues, rx))
    }

    /// Looks up interface `name`, checks that binding `queues` queues
    /// (`None`: as many as it has) covers every RX queue it has, removes any
    /// XDP program attached to it (a port owns its interface's XDP hook) and
    /// attaches the dataplane's.
    pub fn open(id: PortId, name: &str, attach: AttachMode, queues: Option<u32>) -> Result<Port, PortError> {
        let (ifindex, queues, rx) = Port::plan(name, queues)?;
        xsk::detach_xdp(name, attach).map_err(|source| PortError::Detach { ifname: name.into(), source })?;
        let program = xsk::XdpProgram::attach(name, ifindex, queues, attach)
            .map_err(|source| PortError::Program { ifname: name.into(), source })?;
        Ok(Port { id, name: name.to_string(), ifindex, queues, rx_queues: rx, program: Arc::new(program) })
    }
}

/// Binding queues `0..bound` of `ifname`, which has `rx_queues` RX queues,
/// must cover them all (and exist).
pub fn check_queues(ifname: &str, bound: u32, rx_queues: u32) -> Result<(), PortError> {
    if bound == 0 || bound > rx_queues.max(1) {
        return Err(PortError::NoSuchQueues { ifname: ifname.into(), queues: bound, rx_queues });
    }
    if rx_queues > bound {
        return Err(PortError::UnboundQueues { ifname: ifname.into(), rx_queues, bound });
    }
    Ok(())
}

/// Number of `rx-N` entries in `/sys/class/net/<name>/queues` (the kernel's
/// `real_num_rx_queues`, `net/core/net-sysfs.c`, `net_rx_queue_update_kobjects`).
/// Sysfs shows the interfaces of the network namespace it was mounted in
/// (`ip netns exec` remounts it; a host-network pod sees the node's).
pub fn rx_queues(name: &str) -> io::Result<u32> {
    let mut n = 0;
    for entry in std::fs::read_dir(format!("/sys/class/net/{name}/queues"))? {
        if entry?.file_name().to_string_lossy().starts_with("rx-") {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rx_queue_must_be_bound() {
        assert!(check_queues("eth0", 1, 1).is_ok());
        assert!(check_queues("eth0", 4, 4).is_ok());
        let e = check_queues("ens1f0", 2, 4).unwrap_err().to_string();
        assert!(e.contains("port ens1f0 has 4 RX queues but only 2 would be bound"), "{e}");
        assert!(e.contains("ethtool -L ens1f0 combined 2"), "{e}");
        let e = check_queues("eth0", 2, 1).unwrap_err().to_string();
        assert!(e.contains("port eth0: 2 queues to bind, but the interface has 1 RX queues"), "{e}");
        assert!(check_queues("eth0", 0, 1).is_err());
    }
}
