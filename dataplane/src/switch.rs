//! L2 forwarding: a learning switch, or a two-port wire.
//!
//! ```text
//!  Switch mode:  learn (vlan, src MAC) → in_port, aged after `ageing`
//!                dst broadcast/multicast ─────────────▶ Flood
//!                dst learned on port p ≠ in_port ─────▶ Forward(p)
//!                dst learned on in_port ──────────────▶ Drop(SamePort)   (802.1D filtering)
//!                dst unknown or aged out ─────────────▶ Flood
//!  Wire mode:    port 0 ⇄ port 1, nothing learned
//! ```
//!
//! `Flood` means "every port but the one it came in on"; the I/O layer
//! expands it. MAC addresses are learned per VLAN (independent VLAN
//! learning, IEEE 802.1Q §8.8), in a bounded per-worker table: each worker
//! learns from the frames it sees, so a worker that has not yet seen a
//! station floods frames for it — correct, just less efficient, and only
//! until the station's first frame on that worker. A group (multicast)
//! source address is invalid (IEEE 802.3 §3.2.3) and is never learned.
//! When a set of the table is full, the entry that would age out first is
//! replaced; a MAC flood therefore degrades to flooding, never to
//! misdelivery. The default ageing time is 300 s, the IEEE 802.1D default.

use serde::{Deserialize, Serialize};

use crate::assoc::SetAssoc;
use crate::parse::{Frame, Mac};
use crate::pipeline::PortId;

/// How frames are forwarded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A learning switch over all ports.
    #[default]
    Switch,
    /// Exactly two ports; everything goes to the other one.
    Wire,
}

/// The L2 decision for an allowed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L2 {
    /// Send out of this port.
    Forward(PortId),
    /// Send out of every port but the ingress port.
    Flood,
    /// The destination is on the ingress port: nothing to do.
    SamePort,
}

/// A learning switch (or wire) for one worker.
pub struct Switch {
    mode: Mode,
    ports: PortId,
    /// Key: [`mac_key`].
    macs: SetAssoc<u64, PortId>,
    ageing: u64,
}

/// VLAN key for untagged frames (802.1Q VIDs are 12 bits, so this cannot collide).
const UNTAGGED: u16 = u16::MAX;

/// (VLAN, MAC) packed in one word: one hash write instead of a tuple's three.
#[inline]
fn mac_key(vlan: Option<u16>, mac: &Mac) -> u64 {
    let [a, b, c, d, e, f] = *mac;
    let [v0, v1] = vlan.unwrap_or(UNTAGGED).to_be_bytes();
    u64::from_be_bytes([v0, v1, a, b, c, d, e, f])
}

#[inline]
fn is_group(mac: &Mac) -> bool {
    // I/G bit: least significant bit of the first octet (IEEE 802 §8.2).
    mac[0] & 1 == 1
}

impl Switch {
    /// A switch over `ports` ports learning up to about `mac_capacity`
    /// addresses, each forgotten `ageing` ns after it was last seen.
    pub fn new(mode: Mode, ports: PortId, mac_capacity: usize, ageing: u64) -> Self {
        Switch { mode, ports, macs: SetAssoc::new(if mode == Mode::Wire { 1 } else { mac_capacity }), ageing }
    }

    /// Is this a wire (two ports, each frame to the other)?
    #[inline]
    pub fn is_wire(&self) -> bool {
        self.mode == Mode::Wire
    }

    /// Slots holding a learned address (including aged ones not yet reused).
    pub fn learned(&self) -> usize {
        self.macs.used()
    }

    /// Learns the frame's source. Call for every well-formed frame, allowed
    /// or not: where a station is does not depend on policy.
    #[inline]
    pub fn learn(&mut self, in_port: PortId, frame: &Frame, now: u64) {
        if self.mode == Mode::Wire || is_group(&frame.src_mac) {
            return;
        }
        let key = mac_key(frame.vlan, &frame.src_mac);
        self.macs.insert(key, in_port, now.saturating_add(self.ageing), now);
    }

    /// The port where `mac` (on `vlan`) is learned and not aged out.
    #[inline]
    pub fn station_port(&self, vlan: Option<u16>, mac: &Mac, now: u64) -> Option<PortId> {
        if self.mode == Mode::Wire {
            return None;
        }
        self.macs.get(&mac_key(vlan, mac), now)
    }

    /// Where an allowed frame goes.
    #[inline]
    pub fn forward(&self, in_port: PortId, frame: &Frame, now: u64) -> L2 {
        match self.mode {
            Mode::Wire => L2::Forward(if in_port == 0 { 1 } else { 0 }),
            Mode::Switch => {
                if is_group(&frame.dst_mac) {
                    return L2::Flood;
                }
                let key = mac_key(frame.vlan, &frame.dst_mac);
                match self.macs.get(&key, now) {
                    Some(p) if p == in_port => L2::SamePort,
                    Some(p) if p < self.ports => L2::Forward(p),
                    _ => L2::Flood,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Class;

    const A: Mac = [0x02, 0, 0, 0, 0, 0xa];
    const B: Mac = [0x02, 0, 0, 0, 0, 0xb];
    const BCAST: Mac = [0xff; 6];
    const MCAST: Mac = [0x01, 0x00, 0x5e, 0, 0, 1];

    fn frame(src: Mac, dst: Mac, vlan: Option<u16>) -> Frame {
        Frame { dst_mac: dst, src_mac: src, vlan, class: Class::Arp }
    }

    #[test]
    fn learns_floods_forwards_and_ages() {
        let mut s = Switch::new(Mode::Switch, 3, 64, 300);
        // Unknown destination: flood; source A learned on port 0.
        let ab = frame(A, B, None);
        s.learn(0, &ab, 0);
        assert_eq!(s.forward(0, &ab, 0), L2::Flood);
        // B answers from port 2: B learned, A known.
        let ba = frame(B, A, None);
        s.learn(2, &ba, 1);
        assert_eq!(s.forward(2, &ba, 1), L2::Forward(0));
        assert_eq!(s.forward(0, &ab, 2), L2::Forward(2));
        // Broadcast and multicast always flood.
        assert_eq!(s.forward(0, &frame(A, BCAST, None), 2), L2::Flood);
        assert_eq!(s.forward(0, &frame(A, MCAST, None), 2), L2::Flood);
        // A frame for a station on the ingress port is filtered.
        assert_eq!(s.forward(2, &frame(B, B, None), 2), L2::SamePort);
        // B moves to port 1.
        s.learn(1, &ba, 3);
        assert_eq!(s.forward(0, &ab, 3), L2::Forward(1));
        // Aged out 300 ns after last seen: flood again.
        assert_eq!(s.forward(0, &ab, 303), L2::Flood);
    }

    #[test]
    fn vlans_learn_independently_and_group_sources_are_ignored() {
        let mut s = Switch::new(Mode::Switch, 3, 64, 300);
        s.learn(1, &frame(B, A, Some(10)), 0);
        assert_eq!(s.forward(0, &frame(A, B, Some(10)), 0), L2::Forward(1));
        assert_eq!(s.forward(0, &frame(A, B, None), 0), L2::Flood);
        assert_eq!(s.forward(0, &frame(A, B, Some(11)), 0), L2::Flood);
        s.learn(2, &frame(MCAST, A, None), 0);
        assert_eq!(s.learned(), 1);
    }

    #[test]
    fn wire_mode() {
        let mut s = Switch::new(Mode::Wire, 2, 64, 300);
        let f = frame(A, BCAST, None);
        s.learn(0, &f, 0);
        assert_eq!(s.forward(0, &f, 0), L2::Forward(1));
        assert_eq!(s.forward(1, &f, 0), L2::Forward(0));
        assert_eq!(s.learned(), 0);
    }
}
