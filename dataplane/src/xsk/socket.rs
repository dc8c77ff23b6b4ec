//! One AF_XDP socket: an interface queue with its RX, TX, fill and completion
//! rings, all on the worker's shared UMEM.

use std::error::Error as _;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use xsk_rs::config::{BindFlags, Interface, LibxdpFlags, QueueSize, SocketConfig, XdpFlags};
use xsk_rs::{CompQueue, FillQueue, RxQueue, TxQueue};

use super::prog::XdpProgram;
use super::sys;
use super::umem::{Frames, Umem};
use super::{AttachMode, BindError, CopyMode, SyscallError, XskConfig};

/// Kernel counters of one socket (`getsockopt(SOL_XDP, XDP_STATISTICS)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStatistics {
    /// Frames dropped by the kernel for lack of RX ring room or other reasons.
    pub rx_dropped: u64,
    /// RX descriptors the kernel found invalid.
    pub rx_invalid: u64,
    /// TX descriptors the kernel found invalid.
    pub tx_invalid: u64,
    /// Times the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived.
    pub fill_ring_empty: u64,
}

/// What one [`XskSocket::send_counted`] put on the TX ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Frames.
    pub frames: usize,
    /// Their packet bytes (Ethernet header included, no FCS).
    pub bytes: u64,
}

/// An AF_XDP socket bound to one queue of one interface.
pub struct XskSocket {
    ifname: String,
    queue: u32,
    umem: u32,
    tx: TxQueue,
    rx: RxQueue,
    fq: FillQueue,
    cq: CompQueue,
    tx_size: u32,
    /// Copy mode TX only moves on `sendto`; zero-copy drivers poll the ring
    /// themselves unless they ask for a wakeup.
    always_kick: bool,
    /// The UMEM's size and frame size, to check the descriptors the kernel
    /// hands back (see [`XskSocket::recv`]).
    umem_bytes: usize,
    frame_size: usize,
    /// Descriptors from the RX or completion ring that pointed outside the UMEM.
    bad_descs: u64,
}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket").field("ifname", &self.ifname).field("queue", &self.queue).finish()
    }
}

impl XskSocket {
    /// Creates a socket on `ifname` queue `queue` with `umem`'s memory, loading
    /// libxdp's redirect program on the interface if none is there yet.
    /// Retries for `cfg.bind_retry` while the kernel answers EBUSY.
    ///
    /// libxdp's program path needs CAP_SYS_ADMIN (see `prog.rs`); the
    /// dataplane uses [`bind_to`](Self::bind_to). This one is for tools that run
    /// as full root (the traffic generators).
    pub fn bind(umem: &mut Umem, ifname: &str, queue: u32, cfg: &XskConfig) -> Result<XskSocket, BindError> {
        Self::create(umem, ifname, queue, cfg, None)
    }

    /// Creates a socket on `ifname` queue `queue` with `umem`'s memory and adds
    /// it to `program`, the port's own XDP program (attached to `ifname`), which
    /// then redirects that queue's frames to it. Loads nothing: needs only
    /// CAP_NET_RAW for the socket. Retries for `cfg.bind_retry` while the
    /// kernel answers EBUSY.
    pub fn bind_to(
        umem: &mut Umem,
        ifname: &str,
        queue: u32,
        cfg: &XskConfig,
        program: &XdpProgram,
    ) -> Result<XskSocket, BindError> {
        Self::create(umem, ifname, queue, cfg, Some(program))
    }

    fn create(
        umem: &mut Umem,
        ifname: &str,
        queue: u32,
        cfg: &XskConfig,
        program: Option<&XdpProgram>,
    ) -> Result<XskSocket, BindError> {
        let config_err = |reason: String| BindError::Config { ifname: ifname.to_string(), queue, reason };
        let ifindex = sys::if_index(ifname).map_err(|e| config_err(format!("no such interface: {e}")))?;
        if umem.bound.contains(&(ifindex, queue)) {
            return Err(BindError::AlreadyBound { ifname: ifname.to_string(), queue });
        }
        let iface: Interface = ifname.parse().map_err(|e| config_err(format!("{e}")))?;
        let mut bind = match cfg.copy {
            CopyMode::Copy => BindFlags::XDP_COPY,
            CopyMode::ZeroCopy => BindFlags::XDP_ZEROCOPY,
            CopyMode::Auto => BindFlags::empty(),
        };
        if cfg.need_wakeup {
            bind |= BindFlags::XDP_USE_NEED_WAKEUP;
        }
        let xdp = match cfg.attach {
            AttachMode::Native => XdpFlags::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => XdpFlags::XDP_FLAGS_SKB_MODE,
            AttachMode::Auto => XdpFlags::empty(),
        };
        let config = SocketConfig::builder()
            .rx_queue_size(QueueSize::new(cfg.rx_ring).map_err(|e| config_err(e.to_string()))?)
            .tx_queue_size(QueueSize::new(cfg.tx_ring).map_err(|e| config_err(e.to_string()))?)
            .libxdp_flags(if program.is_some() {
                LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD
            } else {
                LibxdpFlags::empty()
            })
            .xdp_flags(xdp)
            .bind_flags(bind)
            .build();
        let deadline = Instant::now() + cfg.bind_retry;
        let mut attempts = 0;
        let (tx, rx, rings) = loop {
            attempts += 1;
            // SAFETY: `Socket::new` requires INHIBIT_PROG_LOAD when the UMEM
            // already has a socket on this (interface, queue) pair; `bound`
            // records every pair bound from this UMEM and the pair was checked
            // absent above, so either path (loading libxdp's program, or
            // INHIBIT_PROG_LOAD with our own program) is allowed.
            match unsafe { xsk_rs::Socket::new(config, &umem.inner, &iface, queue) } {
                Ok(s) => break s,
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(BindError::Create { ifname: ifname.to_string(), queue, attempts, source })
                }
            }
        };
        let (fq, cq) = rings.ok_or_else(|| BindError::NoFillRing { ifname: ifname.to_string(), queue })?;
        if let Some(p) = program {
            p.insert(queue, rx.fd().as_raw_fd()).map_err(|source| BindError::Program {
                ifname: ifname.to_string(),
                queue,
                source,
            })?;
        }
        umem.bound.push((ifindex, queue));
        // Copy mode must be kicked; so must Auto, which is copy mode on any
        // driver without zero-copy support and costs one cheap syscall
        // otherwise.
        let always_kick = cfg.copy != CopyMode::ZeroCopy;
        Ok(XskSocket {
            ifname: ifname.to_string(),
            queue,
            umem: umem.id,
            tx,
            rx,
            fq,
            cq,
            tx_size: cfg.tx_ring,
            always_kick,
            umem_bytes: umem.frames() as usize * umem.frame_size() as usize,
            frame_size: umem.frame_size() as usize,
            bad_descs: 0,
        })
    }

    /// Interface name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Queue id.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The socket's file descriptor (for `poll`).
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Moves received frames from the RX ring to the end of `out`, as many as
    /// `out` has room for. Returns how many.
    pub fn recv(&mut self, out: &mut Frames) -> usize {
        if out.umem != self.umem {
            return 0;
        }
        let start = out.len;
        // SAFETY: the slots after `out.len` hold no owned frame, so
        // overwriting them loses nothing; the descriptors the kernel puts on
        // the RX ring are frames it got from a fill ring of this UMEM, whose
        // ownership passes to `out` here (module invariant).
        let n = unsafe { self.rx.consume(&mut out.descs[start..]) };
        let n = self.keep_in_bounds(&mut out.descs[start..start + n], true);
        out.len += n;
        n
    }

    /// Keeps, at the front of `descs`, those that lie inside this socket's
    /// UMEM (`with_data`: the packet too, not only its start); returns how
    /// many. The rest are counted in [`XskSocket::bad_descriptors`] and left
    /// out of circulation.
    ///
    /// The kernel produces the RX and completion entries, and checks every
    /// address userspace gives it (fill and TX rings), so a descriptor out of
    /// bounds would take a kernel bug or a stray write into the rings, which
    /// are mapped writable in this process. `Umem::data` builds a slice from
    /// the address and length, and `Umem::write` a mutable one from the
    /// address: this check is what keeps those slices inside the UMEM even
    /// then. Two compares per frame (and a mask: the kernel takes only
    /// frame sizes that are powers of two in this, the aligned, mode; a
    /// division otherwise).
    fn keep_in_bounds(&mut self, descs: &mut [xsk_rs::FrameDesc], with_data: bool) -> usize {
        let (umem, fs) = (self.umem_bytes, self.frame_size);
        let mask = fs.is_power_of_two().then(|| fs - 1);
        let offset = |a: usize| match mask {
            Some(m) => a & m,
            None => a % fs,
        };
        let ok = |d: &xsk_rs::FrameDesc| {
            d.addr() < umem && (!with_data || offset(d.addr()) + d.lengths().data() <= fs)
        };
        let mut kept = 0;
        for i in 0..descs.len() {
            if ok(&descs[i]) {
                descs.swap(kept, i);
                kept += 1;
            }
        }
        self.bad_descs += (descs.len() - kept) as u64;
        kept
    }

    /// Descriptors the kernel handed back that pointed outside the UMEM
    /// (dropped; see [`XskSocket::recv`]). Expected to stay 0.
    pub fn bad_descriptors(&self) -> u64 {
        self.bad_descs
    }

    /// Moves frames from the front of `pending` to the TX ring, as many as
    /// the ring has room for (backpressure: the rest stay in `pending`, in
    /// order). Returns how many.
    pub fn send(&mut self, pending: &mut Frames) -> usize {
        self.send_counted(pending).frames
    }

    /// [`send`](Self::send), also returning the bytes of the frames put on
    /// the ring (for per-port TX counters). No allocation: it sums the
    /// lengths of the descriptors it hands over.
    pub fn send_counted(&mut self, pending: &mut Frames) -> Sent {
        if pending.umem != self.umem || pending.len == 0 {
            return Sent::default();
        }
        let want = pending.len as u32;
        let n = self.tx.nb_free(want).min(want) as usize;
        if n == 0 {
            return Sent::default();
        }
        // SAFETY: `pending.descs[..n]` are owned frames of this UMEM; the ring
        // had room for all `n` (checked just above; `produce` is
        // all-or-nothing), and they are forgotten by `pending` right after, so
        // ownership passes to the kernel.
        let sent = unsafe { self.tx.produce(&pending.descs[..n]) };
        let bytes = pending.descs[..sent].iter().map(|d| d.lengths().data() as u64).sum();
        pending.consume_front(sent);
        Sent { frames: sent, bytes }
    }

    /// Gives up to `max` frames from the end of `free` to the fill ring, as
    /// many as it has room for. Returns how many.
    pub fn fill(&mut self, free: &mut Frames, max: usize) -> usize {
        if free.umem != self.umem {
            return 0;
        }
        let want = max.min(free.len) as u32;
        if want == 0 {
            return 0;
        }
        let n = self.fq.nb_free(want).min(want) as usize;
        if n == 0 {
            return 0;
        }
        let start = free.len - n;
        // SAFETY: `free.descs[start..len]` are owned frames of this UMEM; the
        // ring has room for all of them (checked above, `produce` is
        // all-or-nothing) and `free` forgets them right after.
        let done = unsafe { self.fq.produce(&free.descs[start..free.len]) };
        free.len -= done;
        if done > 0 && self.fq.needs_wakeup() {
            // The kernel asked for a syscall to look at the fill ring again.
            let _ = self.fq.wakeup(self.rx.fd_mut(), 0);
        }
        done
    }

    /// Moves frames the kernel has finished sending from the completion ring
    /// to the end of `free`. Returns how many.
    pub fn complete(&mut self, free: &mut Frames) -> usize {
        if free.umem != self.umem {
            return 0;
        }
        let start = free.len;
        // SAFETY: the slots after `free.len` hold no owned frame; the kernel
        // returns on the completion ring only frames that were on this
        // socket's TX ring, whose ownership passes back to `free`.
        let n = unsafe { self.cq.consume(&mut free.descs[start..]) };
        // Only the address comes back on this ring (no length to check).
        let n = self.keep_in_bounds(&mut free.descs[start..start + n], false);
        free.len += n;
        n
    }

    /// Descriptors on the TX ring that the kernel has not taken yet.
    pub fn tx_outstanding(&mut self) -> u32 {
        self.tx_size - self.tx.nb_free_exact().min(self.tx_size)
    }

    /// Does the TX ring need a `sendto` to move?
    pub fn needs_kick(&mut self) -> bool {
        self.tx_outstanding() > 0 && (self.always_kick || self.tx.needs_wakeup())
    }

    /// `sendto(MSG_DONTWAIT)`: makes the kernel transmit from the TX ring (in
    /// copy mode at most 32 descriptors per call, kernel `TX_BATCH_SIZE`).
    /// Transient refusals (EAGAIN, EBUSY, ENOBUFS, ENETDOWN) are not errors.
    pub fn kick(&self) -> Result<(), SyscallError> {
        self.tx.wakeup().map_err(|source| SyscallError { call: "sendto", source })
    }

    /// The kernel's counters for this socket.
    pub fn statistics(&self) -> Result<XskStatistics, SyscallError> {
        let s = self
            .rx
            .fd()
            .xdp_statistics()
            .map_err(|source| SyscallError { call: "getsockopt(XDP_STATISTICS)", source })?;
        Ok(XskStatistics {
            rx_dropped: s.rx_dropped(),
            rx_invalid: s.rx_invalid_descs(),
            tx_invalid: s.tx_invalid_descs(),
            rx_ring_full: s.rx_ring_full(),
            fill_ring_empty: s.rx_fill_ring_empty_descs(),
        })
    }
}

fn is_busy(e: &xsk_rs::socket::SocketCreateError) -> bool {
    e.source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error)
        .is_some_and(|code| code == libc::EBUSY)
}
