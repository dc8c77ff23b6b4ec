//! The dataplane's own XDP program: one per port, redirecting every frame to
//! the AF_XDP socket of the queue it arrived on.
//!
//! libxdp's default path (`xsk_setup_xdp_prog`) loads its program and then
//! looks the program and its map up by id (`BPF_PROG_GET_FD_BY_ID`,
//! `BPF_MAP_GET_FD_BY_ID`), which the kernel allows only with CAP_SYS_ADMIN
//! (`kernel/bpf/syscall.c`, `bpf_prog_get_fd_by_id`); its multi-program
//! dispatcher also needs CAP_PERFMON (its verifier log on this machine:
//! "R1 pointer comparison prohibited"). Measured with exactly the DaemonSet's
//! capabilities (NET_ADMIN, NET_RAW, BPF, IPC_LOCK), that path fails with
//! EPERM ("couldn't get program fd"). So the dataplane loads this program
//! itself, keeps every descriptor, and creates its sockets with
//! `XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`; then CAP_BPF plus CAP_NET_ADMIN are
//! enough (`bpf_prog_load` and `map_create` want CAP_NET_ADMIN for XDP programs
//! and XSKMAPs, `bpf_link_create` for attaching to an interface).
//!
//! The program is the one libbpf used to generate (`xsk_load_xdp_prog`,
//! kernels >= 5.3), with one change: a queue with no socket **drops** the
//! frame instead of passing it to the kernel's stack, so nothing arriving on a
//! port bypasses enforcement, not even before the sockets are bound.
//!
//! ```text
//! r2 = ctx->rx_queue_index
//! r1 = &xsks_map
//! r3 = XDP_DROP                        ; what bpf_redirect_map returns if map[r2] is empty
//! r0 = bpf_redirect_map(r1, r2, r3)    ; XDP_REDIRECT to the socket of queue r2
//! exit
//! ```
//!
//! It is attached through a `bpf_link` (kernel >= 5.9): the link, and with it
//! the program, goes away when the last descriptor closes, so even a killed
//! dataplane leaves its ports clean.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{AttachMode, ProgramError};

/// `XDP_DROP` (`include/uapi/linux/bpf.h`, `enum xdp_action`).
const XDP_DROP: i32 = 1;
/// `offsetof(struct xdp_md, rx_queue_index)` (`include/uapi/linux/bpf.h`).
const RX_QUEUE_INDEX: i16 = 16;
/// `XDP_FLAGS_SKB_MODE` and `XDP_FLAGS_DRV_MODE` (`include/uapi/linux/if_link.h`).
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// One BPF instruction, laid out as `struct bpf_insn` (`include/uapi/linux/bpf.h`):
/// opcode, destination register in the low nibble and source register in the high
/// nibble of the second byte, offset, immediate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const _: () = assert!(std::mem::size_of::<Insn>() == std::mem::size_of::<libxdp_sys::bpf_insn>());
const _: () = assert!(std::mem::align_of::<Insn>() == std::mem::align_of::<libxdp_sys::bpf_insn>());

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | (dst & 0x0f), off, imm }
}

/// The program, for the XSKMAP whose descriptor is `map_fd`.
fn program(map_fd: RawFd) -> [Insn; 6] {
    // Opcodes: BPF_LDX|BPF_MEM|BPF_W = 0x61, BPF_LD|BPF_IMM|BPF_DW = 0x18 (two slots),
    // BPF_ALU64|BPF_MOV|BPF_K = 0xb7, BPF_JMP|BPF_CALL = 0x85, BPF_JMP|BPF_EXIT = 0x95.
    [
        insn(0x61, 2, 1, RX_QUEUE_INDEX, 0),
        insn(0x18, 1, libxdp_sys::BPF_PSEUDO_MAP_FD as u8, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        insn(0xb7, 3, 0, 0, XDP_DROP),
        insn(0x85, 0, 0, 0, libxdp_sys::bpf_func_id_BPF_FUNC_redirect_map as i32),
        insn(0x95, 0, 0, 0, 0),
    ]
}

/// The XDP program of one port, its XSKMAP and the link attaching it. Dropping
/// it (the last descriptor of the link) detaches the program.
#[derive(Debug)]
pub struct XdpProgram {
    ifname: String,
    map: OwnedFd,
    // Held for their lifetime: the link keeps the program attached.
    _prog: OwnedFd,
    _link: OwnedFd,
}

impl XdpProgram {
    /// Creates an XSKMAP with room for `queues` queues, loads the program for
    /// it and attaches it to `ifname` (interface `ifindex`) in `mode`. Fails if
    /// another XDP program is attached (clear stale ones first).
    pub fn attach(
        ifname: &str,
        ifindex: u32,
        queues: u32,
        mode: AttachMode,
    ) -> Result<XdpProgram, ProgramError> {
        let err = |call: &'static str, rc: i32| ProgramError {
            ifname: ifname.to_string(),
            call,
            source: io::Error::from_raw_os_error(-rc),
        };
        let name = CString::new("pcl_xsks").expect("no NUL");
        // SAFETY: plain integers and a NUL-terminated name that outlives the call;
        // NULL options mean "none" (libbpf `bpf.c`, `bpf_map_create`). On success
        // the return value is a new descriptor that nothing else owns.
        let rc = unsafe {
            libxdp_sys::bpf_map_create(
                libxdp_sys::bpf_map_type_BPF_MAP_TYPE_XSKMAP,
                name.as_ptr(),
                4,
                4,
                queues.max(1),
                std::ptr::null(),
            )
        };
        if rc < 0 {
            return Err(err("bpf(BPF_MAP_CREATE, XSKMAP)", rc));
        }
        // SAFETY: `rc` is a fresh descriptor returned to us alone (see above).
        let map = unsafe { OwnedFd::from_raw_fd(rc) };

        let insns = program(map.as_raw_fd());
        let license = CString::new("GPL").expect("no NUL");
        let prog_name = CString::new("pcl_redirect").expect("no NUL");
        // SAFETY: `bpf_prog_load_opts` is a plain C struct for which all-zero is the
        // documented "no options" value, once `sz` is set (libbpf `LIBBPF_OPTS`).
        let mut opts: libxdp_sys::bpf_prog_load_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of::<libxdp_sys::bpf_prog_load_opts>();
        opts.expected_attach_type = libxdp_sys::bpf_attach_type_BPF_XDP;
        // SAFETY: `insns` is an array of `insns.len()` instructions laid out exactly
        // as `struct bpf_insn` (size and alignment asserted above, fields in the same
        // order), alive for the call, which only reads it; the strings are
        // NUL-terminated and outlive the call; `opts` is initialised (`sz` set, no
        // log buffer). A non-negative return is a new descriptor owned by us.
        let rc = unsafe {
            libxdp_sys::bpf_prog_load(
                libxdp_sys::bpf_prog_type_BPF_PROG_TYPE_XDP,
                prog_name.as_ptr(),
                license.as_ptr(),
                insns.as_ptr().cast::<libxdp_sys::bpf_insn>(),
                insns.len(),
                &mut opts,
            )
        };
        if rc < 0 {
            return Err(err("bpf(BPF_PROG_LOAD, XDP)", rc));
        }
        // SAFETY: fresh descriptor, ours alone.
        let prog = unsafe { OwnedFd::from_raw_fd(rc) };

        // SAFETY: as for the load options: all-zero plus `sz` means no options.
        let mut lopts: libxdp_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
        lopts.sz = std::mem::size_of::<libxdp_sys::bpf_link_create_opts>();
        lopts.flags = match mode {
            AttachMode::Native => XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => XDP_FLAGS_SKB_MODE,
            AttachMode::Auto => 0,
        };
        let target = i32::try_from(ifindex).map_err(|_| err("bpf(BPF_LINK_CREATE, XDP)", -libc::EINVAL))?;
        // SAFETY: integers, a valid program descriptor we own, and initialised
        // options read during the call only. A non-negative return is a new link
        // descriptor owned by us.
        let rc = unsafe {
            libxdp_sys::bpf_link_create(prog.as_raw_fd(), target, libxdp_sys::bpf_attach_type_BPF_XDP, &lopts)
        };
        if rc < 0 {
            return Err(err("bpf(BPF_LINK_CREATE, XDP)", rc));
        }
        // SAFETY: fresh descriptor, ours alone.
        let link = unsafe { OwnedFd::from_raw_fd(rc) };
        Ok(XdpProgram { ifname: ifname.to_string(), map, _prog: prog, _link: link })
    }

    /// Directs the frames of `queue` to the AF_XDP socket `socket_fd` (which
    /// must be bound to that queue of this interface).
    pub(super) fn insert(&self, queue: u32, socket_fd: RawFd) -> Result<(), ProgramError> {
        let value: i32 = socket_fd;
        // SAFETY: key and value point to live 4-byte integers, the sizes the map
        // was created with; the call copies them.
        let rc = unsafe {
            libxdp_sys::bpf_map_update_elem(
                self.map.as_raw_fd(),
                (&queue as *const u32).cast(),
                (&value as *const i32).cast(),
                0,
            )
        };
        if rc < 0 {
            return Err(ProgramError {
                ifname: self.ifname.clone(),
                call: "bpf(BPF_MAP_UPDATE_ELEM, XSKMAP)",
                source: io::Error::from_raw_os_error(-rc),
            });
        }
        Ok(())
    }
}
