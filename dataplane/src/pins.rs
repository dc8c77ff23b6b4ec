//! The MAC each pod port speaks with, shared by every worker.
//!
//! A pod port is pinned to the first MAC it speaks with (see
//! [`crate::addresses`] for why). The pins must be the same for every
//! worker: with per-worker pins, a port with several queues lets a hostile
//! pod take a victim's MAC on a worker that has not seen the victim yet. So
//! a pin is one atomic word per port, taken with a compare-and-swap (the
//! first worker wins, the others see its pin), and released only by the
//! table change that put another pod behind the port.
//!
//! ```text
//!  slot (AtomicU64, one per port):  0 = no pin
//!                                   bit 63 set | epoch (15 bits) << 48 | MAC (48 bits)
//! ```
//!
//! The epoch names the pod the pin belongs to ([`Addresses::epoch`]: counted
//! by the control plane per port, or else a hash of the pod's addresses): a
//! worker still on an older table does not read a newer pod's pin as its
//! own, and releases only the pin of the pod it saw leave.
//!
//! [`Addresses::epoch`]: crate::addresses::Addresses::epoch
//!
//! Writes happen when a port first speaks and when a pod goes (rare); the
//! packet path reads one word per frame from a pod port. Workers keep a
//! copy to answer "is this MAC pinned?" for frames from ports with no pod
//! without touching the shared words ([`LocalPins`], refreshed once per batch
//! when [`PodPins::changes`] moved).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::addresses::PodAddrs;
use crate::parse::Mac;

const PINNED: u64 = 1 << 63;
const MAC_BITS: u64 = (1 << 48) - 1;

/// The pins of every port, shared by the workers.
#[derive(Debug)]
pub struct PodPins {
    slots: Box<[AtomicU64]>,
    /// Bumped on every pin taken or released.
    changes: AtomicU64,
}

/// A pin: the MAC and the epoch of the pod that took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The MAC the port speaks with.
    pub mac: Mac,
    /// [`epoch`] of the pod's addresses when it was taken.
    pub epoch: u16,
}

fn word(pin: Pin) -> u64 {
    let [a, b, c, d, e, f] = pin.mac;
    PINNED | u64::from(pin.epoch & 0x7fff) << 48 | u64::from_be_bytes([0, 0, a, b, c, d, e, f])
}

fn pin_of(w: u64) -> Option<Pin> {
    if w & PINNED == 0 {
        return None;
    }
    let m = (w & MAC_BITS).to_be_bytes();
    Some(Pin { mac: [m[2], m[3], m[4], m[5], m[6], m[7]], epoch: (w >> 48) as u16 & 0x7fff })
}

/// The epoch of the pod with addresses `addrs` (15 bits of a hash of them).
pub fn epoch(addrs: &PodAddrs) -> u16 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    addrs.hash(&mut h);
    (h.finish() >> 49) as u16
}

impl PodPins {
    /// No pins, for `ports` ports.
    pub fn new(ports: usize) -> Self {
        PodPins { slots: (0..ports).map(|_| AtomicU64::new(0)).collect(), changes: AtomicU64::new(0) }
    }

    /// The pin of `port`, if any.
    #[inline]
    pub fn get(&self, port: usize) -> Option<Pin> {
        self.slots.get(port).and_then(|s| pin_of(s.load(Ordering::Acquire)))
    }

    /// Pins `port` to `pin` unless it has a pin already; returns the pin in
    /// place afterwards (this one, or the one another worker took first),
    /// `None` when another port turned out to hold the MAC too: two workers
    /// pinning two ports to one MAC at the same moment, each having checked
    /// [`PodPins::held_elsewhere`] before the other's pin was there.
    ///
    /// After its compare-and-swap each looks at every other port and gives
    /// its pin back if one holds the MAC. The swaps and the loads are all
    /// `SeqCst`, so they fall in one order that both workers see: whichever
    /// of the two looks last sees the other's pin, so at most one keeps it
    /// (both may give it back; the pod that spoke retries with its next
    /// frame). With acquire and release alone each could read the other's
    /// slot from before its swap, and both would keep the MAC.
    pub fn try_pin(&self, port: usize, pin: Pin) -> Option<Pin> {
        let slot = self.slots.get(port)?;
        let w = word(pin);
        match slot.compare_exchange(0, w, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => {
                let rival = self.held_elsewhere(port, pin.mac);
                if rival && slot.compare_exchange(w, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    // Counted as a change: a worker that copied the pins while
                    // this one was in place must copy them again.
                    self.changes.fetch_add(1, Ordering::AcqRel);
                    return None;
                }
                self.changes.fetch_add(1, Ordering::AcqRel);
                Some(pin)
            }
            Err(other) => pin_of(other),
        }
    }

    /// Does a port other than `port` hold `mac`? (`SeqCst` loads, for
    /// [`PodPins::try_pin`]'s argument; on x86 they are plain loads.)
    pub fn held_elsewhere(&self, port: usize, mac: Mac) -> bool {
        self.slots
            .iter()
            .enumerate()
            .any(|(p, s)| p != port && pin_of(s.load(Ordering::SeqCst)).is_some_and(|pin| pin.mac == mac))
    }

    /// Releases `port`'s pin if the pod of `epoch` took it (that pod is gone).
    pub fn release(&self, port: usize, epoch: u16) {
        let Some(slot) = self.slots.get(port) else { return };
        let w = slot.load(Ordering::Acquire);
        if pin_of(w).is_some_and(|p| p.epoch == epoch & 0x7fff)
            && slot.compare_exchange(w, 0, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// How many times a pin was taken or released: a worker whose copy was
    /// made at another count refreshes it.
    #[inline]
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Number of ports.
    pub fn ports(&self) -> usize {
        self.slots.len()
    }
}

/// A worker's copy of the pinned MACs, to tell quickly whether a frame from
/// a port with no pod carries one (one table read for almost every frame).
#[derive(Debug)]
pub struct LocalPins {
    macs: Vec<Option<Mac>>,
    /// Per [`mac_bit`]: 0 no pinned MAC has it, `p + 1` only port `p`'s,
    /// `u16::MAX` several.
    owner: Box<[u16; 1024]>,
    seen: u64,
}

/// A MAC's bucket in [`LocalPins`] (10 bits of a multiplicative hash).
#[inline]
fn mac_bit(mac: &Mac) -> usize {
    let [a, b, c, d, e, f] = *mac;
    let v = u64::from_le_bytes([a, b, c, d, e, f, 0, 0]);
    (v.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as usize
}

impl LocalPins {
    /// An empty copy for `ports` ports (refresh it before use).
    pub fn new(ports: crate::PortId) -> Self {
        // Port ids are below u16::MAX, so `p + 1` fits (u16::MAX itself means "several").
        LocalPins { macs: vec![None; usize::from(ports)], owner: Box::new([0; 1024]), seen: u64::MAX }
    }

    /// Copies the shared pins again if they changed since the last copy.
    pub fn refresh(&mut self, shared: &PodPins) {
        let now = shared.changes();
        if now == self.seen {
            return;
        }
        self.seen = now;
        self.owner.fill(0);
        for (p, m) in self.macs.iter_mut().enumerate() {
            *m = shared.get(p).map(|pin| pin.mac);
            if let Some(mac) = m {
                let o = &mut self.owner[mac_bit(mac)];
                *o = if *o == 0 { p as u16 + 1 } else { u16::MAX };
            }
        }
    }

    /// Records a pin this worker just took (others see it at their next refresh).
    pub fn note(&mut self, port: usize, mac: Mac) {
        if let Some(m) = self.macs.get_mut(port) {
            *m = Some(mac);
            let o = &mut self.owner[mac_bit(&mac)];
            *o = if *o == 0 || *o == port as u16 + 1 { port as u16 + 1 } else { u16::MAX };
        }
    }

    /// The port that speaks with `mac`, if one does (as of the last copy).
    #[inline]
    pub fn holder(&self, mac: &Mac) -> Option<usize> {
        match self.owner[mac_bit(mac)] {
            0 => None,
            u16::MAX => self.macs.iter().position(|m| *m == Some(*mac)),
            p => {
                let p = usize::from(p - 1);
                (self.macs.get(p) == Some(&Some(*mac))).then_some(p)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = [0x02, 0, 0, 0, 0, 0xa];
    const B: Mac = [0x02, 0xff, 0, 0, 0, 0xb];

    #[test]
    fn the_first_pin_wins_and_only_its_pods_departure_releases_it() {
        let pins = PodPins::new(3);
        assert_eq!(pins.get(0), None);
        let a = Pin { mac: A, epoch: 7 };
        assert_eq!(pins.try_pin(0, a), Some(a));
        // Another worker, another MAC: the first pin stays.
        assert_eq!(pins.try_pin(0, Pin { mac: B, epoch: 7 }), Some(a));
        assert!(pins.held_elsewhere(1, A) && !pins.held_elsewhere(0, A));
        // A release for another pod (epoch) does nothing; for this one it frees the port.
        pins.release(0, 8);
        assert_eq!(pins.get(0), Some(a));
        let before = pins.changes();
        pins.release(0, 7);
        assert_eq!(pins.get(0), None);
        assert!(pins.changes() > before);
        // Every bit of the MAC and the epoch survives the word.
        let odd = Pin { mac: [0xff, 0xfe, 0x80, 0x01, 0x7f, 0x00], epoch: 0x7fff };
        assert_eq!(pins.try_pin(2, odd), Some(odd));
        assert_eq!(pins.get(2), Some(odd));
    }

    /// Two workers pinning two ports to one MAC at the same moment, both
    /// past `held_elsewhere`: the one whose pin lands second sees the
    /// first and gives its own back, whichever port is lower.
    #[test]
    fn of_two_ports_pinned_to_one_mac_at_once_at_most_one_keeps_it() {
        let a = Pin { mac: A, epoch: 1 };
        for (first, second) in [(0, 2), (2, 0)] {
            let pins = PodPins::new(3);
            assert_eq!(pins.try_pin(first, a), Some(a));
            assert_eq!(pins.try_pin(second, a), None, "port {second} after port {first}");
            assert_eq!(pins.get(second), None);
            assert_eq!(pins.get(first), Some(a));
        }
    }

    /// The same race on real threads: two ports, one MAC, started together
    /// many times (without the `held_elsewhere` check before, so that every
    /// interleaving of the two swaps and scans happens); never do both end
    /// up holding it. (It catches a scan of only some of the other ports; on
    /// x86, where every compare-and-swap is a full fence, it cannot tell
    /// `SeqCst` from acquire/release: that rests on the argument in `try_pin`.)
    #[test]
    fn racing_workers_never_both_keep_one_mac() {
        use std::sync::{Arc, Barrier};
        let a = Pin { mac: A, epoch: 1 };
        for _ in 0..2_000 {
            let pins = Arc::new(PodPins::new(2));
            let start = Arc::new(Barrier::new(2));
            let racers: Vec<_> = (0..2)
                .map(|port| {
                    let (pins, start) = (pins.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        pins.try_pin(port, a);
                    })
                })
                .collect();
            for r in racers {
                r.join().unwrap();
            }
            assert!(pins.get(0).is_none() || pins.get(1).is_none(), "both ports hold the MAC");
        }
    }

    #[test]
    fn a_local_copy_finds_each_pinned_mac_and_nothing_else() {
        let pins = PodPins::new(300);
        let mac = |p: usize| [0x02, 0, 0, 0, (p >> 8) as u8, p as u8];
        for p in (0..300).step_by(2) {
            pins.try_pin(p, Pin { mac: mac(p), epoch: 1 });
        }
        let mut local = LocalPins::new(300);
        local.refresh(&pins);
        for p in 0..300 {
            // Buckets are shared by several MACs at 150 pins: the answer is exact anyway.
            assert_eq!(local.holder(&mac(p)), (p % 2 == 0).then_some(p), "port {p}");
        }
        pins.try_pin(1, Pin { mac: mac(1), epoch: 1 });
        assert_eq!(local.holder(&mac(1)), None, "not refreshed yet");
        local.refresh(&pins);
        assert_eq!(local.holder(&mac(1)), Some(1));
    }
}
