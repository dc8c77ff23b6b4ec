//! STAND-IN for the packet pipeline being written on branch `dp-core`.
//!
//! Same names and signatures as the real one so that the I/O layer switches
//! over with a merge; what it does is only what the lab needs without
//! policy: a learning switch (or a two-port wire) that never looks above L2.
//! It is replaced wholesale when `dp-core` is merged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Index of a port in the dataplane's port list.
pub type PortId = u16;

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Too short to be an Ethernet frame.
    Malformed,
    /// The destination is on the port the frame came from.
    Hairpin,
    /// Denied by policy.
    Policy,
}

/// What to do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send it out of one port.
    Forward(PortId),
    /// Send a copy out of every port but the one it came in on.
    Flood,
    /// Drop it.
    Drop(DropReason),
}

/// How frames are switched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A learning switch over all ports.
    Switch,
    /// Two ports: what comes in on one goes out of the other.
    Wire,
}

/// Pipeline settings.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Switch or wire.
    pub mode: Mode,
    /// Number of ports.
    pub ports: u16,
}

/// A compiled policy table as published to the workers.
#[derive(Debug)]
pub struct PublishedTable {
    /// Increases with every publication.
    pub generation: u64,
    /// The table.
    pub table: policy_compiler::DecisionTable,
    /// Deny everything (the control plane could not compile a valid table).
    pub fail_closed: bool,
}

/// Counters of one worker's pipeline.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Frames processed.
    pub frames: AtomicU64,
}

const MAC_SLOTS: usize = 1024;

/// The stand-in pipeline: a learning switch with a fixed-size MAC table.
pub struct Pipeline {
    mode: Mode,
    macs: Box<[([u8; 6], PortId, bool)]>,
    counters: Arc<WorkerCounters>,
    _tables: Arc<ArcSwap<PublishedTable>>,
    processed: u64,
}

impl Pipeline {
    /// A pipeline for one worker.
    pub fn new(
        cfg: &PipelineConfig,
        tables: Arc<ArcSwap<PublishedTable>>,
        counters: Arc<WorkerCounters>,
    ) -> Self {
        Pipeline {
            mode: cfg.mode,
            macs: vec![([0; 6], 0, false); MAC_SLOTS].into_boxed_slice(),
            counters,
            _tables: tables,
            processed: 0,
        }
    }

    /// Called once per RX batch with the batch's time.
    pub fn begin_batch(&mut self, _now: u64) {
        self.counters.frames.store(self.processed, Ordering::Relaxed);
    }

    /// Decides what to do with one frame.
    pub fn process(&mut self, in_port: PortId, frame: &[u8], _now: u64) -> Action {
        self.processed += 1;
        if frame.len() < 14 {
            return Action::Drop(DropReason::Malformed);
        }
        if self.mode == Mode::Wire {
            return Action::Forward(in_port ^ 1);
        }
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&frame[0..6]);
        src.copy_from_slice(&frame[6..12]);
        if src[0] & 1 == 0 {
            let slot = &mut self.macs[slot_of(&src)];
            *slot = (src, in_port, true);
        }
        if dst[0] & 1 == 1 {
            return Action::Flood;
        }
        match self.macs[slot_of(&dst)] {
            (mac, port, true) if mac == dst => {
                if port == in_port {
                    Action::Drop(DropReason::Hairpin)
                } else {
                    Action::Forward(port)
                }
            }
            _ => Action::Flood,
        }
    }
}

fn slot_of(mac: &[u8; 6]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in mac {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    (h as usize) % MAC_SLOTS
}
