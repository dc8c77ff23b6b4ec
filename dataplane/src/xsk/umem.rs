//! The UMEM and the move-only frame tokens that make access to it safe.

use std::io::Write;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};

use xsk_rs::config::{FrameSize, QueueSize, UmemConfig};
use xsk_rs::umem::frame::FrameDesc;

use super::{UmemError, XskConfig};

/// Distinguishes UMEMs so that a token of one is refused by another.
static NEXT_UMEM_ID: AtomicU32 = AtomicU32::new(1);

/// One UMEM frame owned by userspace. Move-only: see the module invariant.
#[derive(Debug)]
pub struct Frame {
    desc: FrameDesc,
    umem: u32,
}

impl Frame {
    /// Length of the packet in the frame.
    pub fn len(&self) -> usize {
        self.desc.lengths().data()
    }

    /// Is the frame empty?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A fixed-capacity, ordered container of frames owned by userspace (an RX
/// batch, a port's pending TX, the free pool). Never allocates after
/// construction: `push` fails when full.
///
/// Descriptors are stored contiguously because the rings take and fill
/// slices of them; only `descs[..len]` are owned frames, the slots after are
/// scratch.
#[derive(Debug)]
pub struct Frames {
    pub(super) descs: Vec<FrameDesc>,
    pub(super) len: usize,
    pub(super) umem: u32,
}

impl Frames {
    /// An empty container for frames of `umem`, holding at most `capacity`.
    pub fn with_capacity(umem: &Umem, capacity: usize) -> Frames {
        Frames { descs: vec![FrameDesc::default(); capacity], len: 0, umem: umem.id }
    }

    /// Number of frames held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Is it empty?
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of frames.
    pub fn capacity(&self) -> usize {
        self.descs.len()
    }

    /// Room left.
    pub fn room(&self) -> usize {
        self.descs.len() - self.len
    }

    /// Adds a frame at the end. Gives it back when full or when it belongs to
    /// another UMEM.
    pub fn push(&mut self, frame: Frame) -> Result<(), Frame> {
        if frame.umem != self.umem || self.len == self.descs.len() {
            return Err(frame);
        }
        self.descs[self.len] = frame.desc;
        self.len += 1;
        Ok(())
    }

    /// Takes the last frame.
    pub fn pop(&mut self) -> Option<Frame> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        Some(Frame { desc: self.descs[self.len], umem: self.umem })
    }

    /// Hands every frame, in order, to `f` and leaves the container empty.
    pub fn drain_each(&mut self, mut f: impl FnMut(Frame)) {
        let n = self.len;
        // Ownership moves to the tokens: the container forgets them first so
        // that no frame is ever in two places, even if `f` panics.
        self.len = 0;
        for i in 0..n {
            f(Frame { desc: self.descs[i], umem: self.umem });
        }
    }

    /// Forgets the first `n` frames (they were handed to the kernel) and
    /// moves the rest to the front, keeping their order.
    pub(super) fn consume_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.descs.copy_within(n..self.len, 0);
        self.len -= n;
    }
}

/// A UMEM: the packet memory shared by all the sockets of one worker, with
/// the initial pool of frames it was cut into.
#[derive(Debug)]
pub struct Umem {
    pub(super) inner: xsk_rs::umem::Umem,
    pub(super) id: u32,
    frames: u32,
    frame_size: u32,
    /// (ifindex, queue) pairs bound from this UMEM: binding one twice would
    /// break libxdp's contract (see `XskSocket::bind`).
    pub(super) bound: Vec<(u32, u32)>,
}

impl Umem {
    /// Maps and registers a UMEM of `frames` frames and returns it with a
    /// container holding all of them (the free pool).
    pub fn new(cfg: &XskConfig, frames: u32) -> Result<(Umem, Frames), UmemError> {
        let config_err = |reason: String| UmemError::Config { reason };
        let frame_size = FrameSize::new(cfg.frame_size).map_err(|e| config_err(e.to_string()))?;
        let fill = QueueSize::new(cfg.rx_ring).map_err(|e| config_err(e.to_string()))?;
        let comp = QueueSize::new(cfg.tx_ring).map_err(|e| config_err(e.to_string()))?;
        let config = UmemConfig::builder()
            .frame_size(frame_size)
            .fill_queue_size(fill)
            .comp_queue_size(comp)
            .build()
            .map_err(|e| config_err(e.to_string()))?;
        let count = NonZeroU32::new(frames).ok_or_else(|| config_err("zero frames".into()))?;
        let (inner, descs) = xsk_rs::umem::Umem::new(config, count, false)
            .map_err(|source| UmemError::Create { frames, frame_size: cfg.frame_size, source })?;
        let id = NEXT_UMEM_ID.fetch_add(1, Ordering::Relaxed);
        let umem = Umem { inner, id, frames, frame_size: cfg.frame_size, bound: Vec::new() };
        let len = descs.len();
        Ok((umem, Frames { descs, len, umem: id }))
    }

    /// Number of frames.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Size of one frame in bytes (headroom included).
    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// The packet in `frame`. Empty for a frame of another UMEM.
    pub fn data<'a>(&'a self, frame: &'a Frame) -> &'a [u8] {
        if frame.umem != self.id {
            return &[];
        }
        // SAFETY: `frame` is a token of this UMEM (checked above); its
        // descriptor came from `Umem::new` or from an RX or completion ring
        // of this UMEM, whose entries `XskSocket::recv`/`complete` keep only
        // when the address (and, from RX, the packet) lies inside the region,
        // and `write` keeps the length within the frame; so the slice is
        // inside this UMEM's region. A token is owned by userspace and not in
        // any ring (module invariant), so the kernel does not write this
        // frame while the shared borrow of the token lasts, and safe code
        // cannot get a `&mut` to it at the same time.
        unsafe { self.inner.data(&frame.desc) }.contents()
    }

    /// Replaces the packet in `frame` by `bytes`. Returns false (frame left
    /// as it was) when `bytes` does not fit or the frame is of another UMEM.
    pub fn write(&self, frame: &mut Frame, bytes: &[u8]) -> bool {
        if frame.umem != self.id {
            return false;
        }
        // SAFETY: as in `data`, and the token is borrowed mutably, so no other
        // reference to this frame's memory exists in userspace either.
        let mut data = unsafe { self.inner.data_mut(&mut frame.desc) };
        let mut cursor = data.cursor();
        if bytes.len() > cursor.buf_len() {
            return false;
        }
        cursor.set_pos(0);
        cursor.write_all(bytes).is_ok()
    }

    /// Copies the packet of `src` into `dst` (for flooding).
    pub fn copy(&self, src: &Frame, dst: &mut Frame) -> bool {
        if src.umem != self.id || dst.umem != self.id {
            return false;
        }
        // SAFETY: both tokens belong to this UMEM and are owned by userspace;
        // they are distinct tokens (one borrowed shared, one mutably), and
        // distinct tokens are distinct frames by the module invariant, so the
        // source slice and the destination slice do not overlap.
        let src_data = unsafe { self.inner.data(&src.desc) }.contents();
        self.write(dst, src_data)
    }
}
