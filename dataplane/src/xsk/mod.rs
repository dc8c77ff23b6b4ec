//! AF_XDP I/O: UMEM, rings, sockets and the few raw syscalls around them.
//!
//! This module is the only place in the project allowed to contain `unsafe`
//! code. It wraps `xsk-rs` (itself over libxdp) so that the rest of the
//! crate moves frames around with safe, move-only tokens:
//!
//! ```text
//!            Umem (one per worker, shared by all its sockets)
//!   free pool ──fill()──▶ FILL ring ──kernel──▶ RX ring ──recv()──▶ Frames (batch)
//!      ▲                                                                │ pipeline
//!      │                                                                ▼
//!      └──complete()── COMPLETION ring ◀──kernel── TX ring ◀──send()── Frames (per port)
//! ```
//!
//! # Ownership invariant
//!
//! Every frame of a UMEM is, at any instant, in exactly one place: a kernel
//! ring (fill, RX, TX, completion) or one userspace [`Frames`] container /
//! [`Frame`] token. Tokens are neither `Clone` nor `Copy`, containers hand
//! them out by value and take them back by value, and the ring wrappers only
//! ever give the kernel descriptors that were moved out of a container. So a
//! frame userspace can read or write is never one the kernel may write, which
//! is the contract of `xsk_rs::Umem::data`/`data_mut` and of the ring
//! `produce`/`consume` calls (see the kernel's
//! `Documentation/networking/af_xdp.rst`, "UMEM Fill Ring"/"TX Ring").
//! Tokens also carry the id of their UMEM and are refused by any other one.
//!
//! A dropped [`Frame`] is not unsafe, only lost: the frame leaves circulation.

mod prog;
mod socket;
mod sys;
mod umem;

pub use prog::XdpProgram;
pub use socket::{Sent, XskSocket, XskStatistics};
pub use sys::{if_index, Poller};
pub use umem::{Frame, Frames, Umem};

use std::io;
use std::time::Duration;

use thiserror::Error;

/// Whether the kernel copies frames between the driver and the UMEM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    /// Force copy mode (`XDP_COPY`): works on every driver, veth included.
    Copy,
    /// Force zero-copy (`XDP_ZEROCOPY`): bind fails where the driver lacks it
    /// (veth refuses with EOPNOTSUPP).
    ZeroCopy,
    /// Let the kernel pick (zero-copy when the driver supports it).
    Auto,
}

/// How the XDP program that redirects to the sockets is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Driver mode (`XDP_FLAGS_DRV_MODE`): the driver runs the program.
    Native,
    /// Generic mode (`XDP_FLAGS_SKB_MODE`): after skb allocation, any driver.
    Generic,
    /// Let libxdp/the kernel choose.
    Auto,
}

/// Socket and UMEM settings shared by all the sockets of a worker.
#[derive(Clone, Debug)]
pub struct XskConfig {
    /// Copy or zero-copy. Default: [`CopyMode::Auto`].
    pub copy: CopyMode,
    /// Native or generic XDP. Default: [`AttachMode::Auto`].
    pub attach: AttachMode,
    /// Size in bytes of one UMEM frame: a power of two, at least 2048. A
    /// frame holds 256 bytes of XDP headroom and then the packet, so 2048
    /// carries a 1500-byte MTU. Default: 2048.
    pub frame_size: u32,
    /// Descriptors in each RX ring and each fill ring (power of two).
    /// Default: 1024.
    pub rx_ring: u32,
    /// Descriptors in each TX ring and each completion ring (power of two).
    /// Default: 1024.
    pub tx_ring: u32,
    /// Set `XDP_USE_NEED_WAKEUP`: the kernel tells when the fill/TX rings need
    /// a syscall to make progress, saving syscalls on zero-copy drivers.
    /// Default: true.
    pub need_wakeup: bool,
    /// How long to keep retrying a bind that fails with EBUSY (the previous
    /// owner of the queue may still be releasing it). Default: 2 s.
    pub bind_retry: Duration,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            copy: CopyMode::Auto,
            attach: AttachMode::Auto,
            frame_size: 2048,
            rx_ring: 1024,
            tx_ring: 1024,
            need_wakeup: true,
            bind_retry: Duration::from_secs(2),
        }
    }
}

impl XskConfig {
    /// Frames a UMEM needs for `sockets` sockets: each socket's fill ring can
    /// be full while as many frames again are in flight towards TX.
    pub fn frames_for(&self, sockets: usize) -> u32 {
        let per_socket = self.rx_ring as usize + self.tx_ring as usize;
        (per_socket * sockets.max(1)).min(u32::MAX as usize) as u32
    }
}

/// A system call that failed.
#[derive(Debug, Error)]
#[error("{call} failed")]
pub struct SyscallError {
    /// The call, e.g. `"sendto"`.
    pub call: &'static str,
    /// The error the kernel returned.
    #[source]
    pub source: io::Error,
}

/// Creating a UMEM failed.
#[derive(Debug, Error)]
pub enum UmemError {
    /// A size in the configuration is not acceptable.
    #[error("invalid UMEM configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// The kernel refused the UMEM (ENOBUFS usually means locked memory:
    /// the process lacks CAP_IPC_LOCK and its memlock limit is too low).
    #[error("creating a UMEM of {frames} frames of {frame_size} bytes failed")]
    Create {
        /// Number of frames asked for.
        frames: u32,
        /// Size of each frame.
        frame_size: u32,
        /// What libxdp reported.
        #[source]
        source: xsk_rs::umem::UmemCreateError,
    },
}

/// Binding an AF_XDP socket to an interface queue failed.
#[derive(Debug, Error)]
pub enum BindError {
    /// A ring size is not a power of two, or the name has a NUL byte.
    #[error("invalid socket configuration for {ifname} queue {queue}: {reason}")]
    Config {
        /// Interface.
        ifname: String,
        /// Queue id.
        queue: u32,
        /// What is wrong.
        reason: String,
    },
    /// This UMEM already has a socket on this interface queue.
    #[error("{ifname} queue {queue} is already bound from this UMEM")]
    AlreadyBound {
        /// Interface.
        ifname: String,
        /// Queue id.
        queue: u32,
    },
    /// libxdp or the kernel refused the socket.
    #[error("binding an AF_XDP socket to {ifname} queue {queue} failed after {attempts} attempt(s)")]
    Create {
        /// Interface.
        ifname: String,
        /// Queue id.
        queue: u32,
        /// Attempts made (EBUSY is retried).
        attempts: u32,
        /// What libxdp reported (its source is the errno).
        #[source]
        source: xsk_rs::socket::SocketCreateError,
    },
    /// The socket could not be added to the port's XDP program map.
    #[error("{ifname} queue {queue}: adding the socket to the XDP program's map")]
    Program {
        /// Interface.
        ifname: String,
        /// Queue id.
        queue: u32,
        /// The error.
        #[source]
        source: ProgramError,
    },
    /// The kernel did not give this socket its own fill and completion rings.
    #[error("{ifname} queue {queue}: no fill/completion rings were created for the socket")]
    NoFillRing {
        /// Interface.
        ifname: String,
        /// Queue id.
        queue: u32,
    },
}

/// Loading or attaching the dataplane's XDP program, or adding a socket to its
/// map, failed (see `prog.rs`; EPERM usually means a missing capability:
/// CAP_BPF and CAP_NET_ADMIN are needed).
#[derive(Debug, Error)]
#[error("XDP program of {ifname}: {call} failed")]
pub struct ProgramError {
    /// Interface.
    pub ifname: String,
    /// The operation, e.g. `"bpf(BPF_PROG_LOAD, XDP)"`.
    pub call: &'static str,
    /// The errno.
    #[source]
    pub source: io::Error,
}

/// Detaching an XDP program from an interface failed.
#[derive(Debug, Error)]
#[error("detaching the XDP program of {ifname} failed")]
pub struct DetachError {
    /// Interface.
    pub ifname: String,
    /// The errno.
    #[source]
    pub source: io::Error,
}

/// Removes whatever XDP program is attached to `ifname` in `mode` (both
/// modes for [`AttachMode::Auto`]). Used to clear what a crashed dataplane
/// left behind before binding, and after closing sockets. No program attached
/// is not an error.
pub fn detach_xdp(ifname: &str, mode: AttachMode) -> Result<(), DetachError> {
    let index = if_index(ifname).map_err(|source| DetachError { ifname: ifname.into(), source })?;
    let modes: &[AttachMode] = match mode {
        AttachMode::Auto => &[AttachMode::Native, AttachMode::Generic],
        m => std::slice::from_ref(match m {
            AttachMode::Native => &AttachMode::Native,
            _ => &AttachMode::Generic,
        }),
    };
    for m in modes {
        sys::xdp_detach(index, *m).map_err(|source| DetachError { ifname: ifname.into(), source })?;
    }
    Ok(())
}
