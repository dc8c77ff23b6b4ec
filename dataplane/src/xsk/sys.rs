//! The raw system calls the I/O path needs beyond what `xsk-rs` offers.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

use super::{AttachMode, SyscallError};

/// `XDP_FLAGS_SKB_MODE` and `XDP_FLAGS_DRV_MODE` from `include/uapi/linux/if_link.h`.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The index of interface `name` (`if_nametoindex(3)`).
pub fn if_index(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call,
    // which only reads it.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(index)
    }
}

/// Detaches the XDP program attached to interface `index` in `mode`.
pub(super) fn xdp_detach(index: u32, mode: AttachMode) -> io::Result<()> {
    let flags = match mode {
        AttachMode::Native => XDP_FLAGS_DRV_MODE,
        AttachMode::Generic => XDP_FLAGS_SKB_MODE,
        AttachMode::Auto => 0,
    };
    let index = i32::try_from(index).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: libbpf's `bpf_xdp_detach` takes plain integers and an optional
    // options pointer, for which NULL means "no options" (libbpf `netlink.c`).
    let rc = unsafe { libxdp_sys::bpf_xdp_detach(index, flags, std::ptr::null()) };
    if rc < 0 {
        Err(io::Error::from_raw_os_error(-rc))
    } else {
        Ok(())
    }
}

/// A reusable set of file descriptors to wait on for readability, so that an
/// idle worker sleeps in the kernel instead of spinning.
#[derive(Debug)]
pub struct Poller {
    fds: Vec<libc::pollfd>,
}

impl Poller {
    /// A poller over `fds` (POLLIN).
    pub fn new(fds: impl IntoIterator<Item = RawFd>) -> Poller {
        Poller {
            fds: fds.into_iter().map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect(),
        }
    }

    /// Waits until one descriptor is readable or `timeout_ms` passed. Returns
    /// the number of ready descriptors (0 on timeout or signal).
    pub fn wait(&mut self, timeout_ms: i32) -> Result<usize, SyscallError> {
        if self.fds.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(timeout_ms.max(0) as u64));
            return Ok(0);
        }
        // SAFETY: `self.fds` is a valid, exclusively borrowed array of
        // `self.fds.len()` pollfd structs for the duration of the call.
        let rc = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(0);
            }
            return Err(SyscallError { call: "poll", source: e });
        }
        Ok(rc as usize)
    }
}
