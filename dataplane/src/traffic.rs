//! A traffic generator's transmit loop: frames built in order by the caller,
//! put on one AF_XDP socket's TX ring for a while, paced or as fast as the
//! ring drains. Shared by `portcullis lab flood` and the load test's
//! `pcl-load gen`; not used by the workers.
//!
//! What comes in: a bound socket with its UMEM and free frames, how long and
//! how fast, and `build(k, buf) -> len`, which writes frame number `k` (0, 1,
//! 2, ...) into `buf`. What goes out: how many frames the kernel took, in
//! order, so frames `0..sent` are exactly the ones transmitted.

use std::time::{Duration, Instant};

use crate::xsk::{Frames, SyscallError, Umem, XskSocket};

/// Largest frame `build` may write.
pub const MAX_FRAME: usize = 1514;

/// What a run transmitted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transmitted {
    /// Frames the kernel took from the TX ring: frames `0..sent` in build order.
    pub sent: u64,
    /// Seconds spent sending (at most the requested duration, plus the last round).
    pub seconds: f64,
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TransmitError {
    /// `build` returned a length larger than a UMEM frame (or than [`MAX_FRAME`]).
    #[error("frame of {0} bytes does not fit a UMEM frame")]
    FrameTooLarge(usize),
    /// The kick (`sendto`) failed.
    #[error(transparent)]
    Kick(#[from] SyscallError),
}

/// Transmits for `duration`, at most `pps` frames per second (0: as fast as
/// the TX ring drains), building at most `batch` frames ahead of the ring
/// (the socket's TX ring size is right). Copy mode moves the TX ring only when kicked, so the
/// loop kicks whenever frames are outstanding; at the end it lets the kernel
/// take what is on the ring (up to one second) and counts only that.
pub fn transmit(
    umem: &Umem,
    free: &mut Frames,
    sock: &mut XskSocket,
    batch: usize,
    duration: Duration,
    pps: u64,
    mut build: impl FnMut(u64, &mut [u8]) -> usize,
) -> Result<Transmitted, TransmitError> {
    let mut pending = Frames::with_capacity(umem, batch.max(1));
    let mut buf = [0u8; MAX_FRAME];
    let start = Instant::now();
    let until = start + duration;
    let mut next: u64 = 0; // frames built; the TX ring takes them in this order
    let mut rounds = 0u32;
    let mut now = start;
    loop {
        rounds = rounds.wrapping_add(1);
        if rounds.is_multiple_of(16) {
            now = Instant::now();
            if now >= until {
                break;
            }
        }
        sock.complete(free);
        let mut budget = pending.room() as u64;
        if pps > 0 {
            let due = (now.duration_since(start).as_secs_f64() * pps as f64) as u64;
            budget = budget.min(due.saturating_sub(next));
        }
        for _ in 0..budget {
            let Some(mut f) = free.pop() else { break };
            let len = build(next, &mut buf);
            if len > buf.len() || !umem.write(&mut f, &buf[..len]) {
                return Err(TransmitError::FrameTooLarge(len));
            }
            if let Err(f) = pending.push(f) {
                let _ = free.push(f);
                break;
            }
            next += 1;
        }
        sock.send(&mut pending);
        let mut kicks = 0;
        while kicks < 40 && sock.needs_kick() {
            sock.kick()?;
            kicks += 1;
        }
        if pps > 0 && pending.is_empty() && sock.tx_outstanding() == 0 {
            std::thread::sleep(Duration::from_micros(50));
            now = Instant::now();
        }
    }
    let drain_until = Instant::now() + Duration::from_secs(1);
    while sock.tx_outstanding() > 0 && Instant::now() < drain_until {
        let _ = sock.kick();
        sock.complete(free);
    }
    let seconds = start.elapsed().as_secs_f64().min(duration.as_secs_f64().max(1e-9));
    let sent = next - pending.len() as u64 - u64::from(sock.tx_outstanding());
    Ok(Transmitted { sent, seconds })
}
