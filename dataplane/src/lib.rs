//! # dataplane
//!
//! The packet path of Portcullis: Ethernet frames in, a forwarding decision
//! out, with Kubernetes NetworkPolicy enforced per connection. The core
//! (parse, frag, conntrack, switch, counters, pipeline) has no sockets, no
//! clock and no `unsafe`: the AF_XDP I/O ([`xsk`], [`port`], [`worker`])
//! calls into it with a frame, its ingress port and the time, and acts on
//! the returned [`Action`]. [`xsk`] is the only module of the shipped code
//! that contains `unsafe` (the counting allocators of a test and of the
//! benchmarks aside); the I/O design is in
//! `docs/architecture-dataplane.md`.
//!
//! ```text
//!   interface queues ──AF_XDP (xsk/)──▶ worker.rs: RX batch ─▶ Pipeline::process ─▶ Action
//!        ▲                                                                          │
//!        └────── TX ring of the output port (same UMEM: descriptor moved, no copy) ◀┘
//! ```
//!
//! ```text
//!   control plane                        one worker (one thread, queue i of every port)
//!  ───────────────                      ─────────────────────────────────────────────────
//!  DecisionTable ─▶ ArcSwap<PublishedTable> ──one load per batch──┐
//!   (generation,                                                   ▼
//!    fail_closed,         (port, &[u8], now) ──▶ Pipeline::process ──▶ Action
//!    addresses)                                   │ parse    (parse.rs)     Forward(port)
//!                                                 │ pod ports, node (addresses.rs)  Flood
//!                                                 │ frag     (frag.rs)      FloodUnbound
//!                                                 │ conntrack(conntrack.rs) Drop(reason)
//!                                                 │ switch   (switch.rs)
//!                                                 ▼
//!  snapshot() ◀── WorkerCounters (counters.rs, lock-free, one writer per worker)
//! ```
//!
//! What comes in: frames as byte slices (borrowed for the duration of the
//! call only), the ingress [`PortId`], a monotonic time in nanoseconds, and
//! the policy table published by the control plane, with the pod behind each
//! port and the node's addresses ([`addresses`]). What goes out: an
//! [`Action`] per frame, counters, per-policy counts of the connections each
//! policy allowed (kept next to each published table, [`observe`]) and, when
//! enabled, rate-limited records of denied flows over a bounded channel
//! ([`observe`]); [`traffic`] is a test and benchmark traffic generator
//! (sockets and a clock), not part of the packet path. Each worker owns its [`Pipeline`]
//! (connection table, fragment tracker, MAC table), so the packet path takes
//! no lock and, after construction, allocates nothing. Both directions of a
//! flow must reach the same worker (symmetric RSS on multi-queue NICs; see
//! [`conntrack`]).

#![deny(unsafe_code)]

pub mod addresses;
mod assoc;
pub mod conntrack;
pub mod counters;
pub mod frag;
pub mod observe;
pub mod parse;
pub mod pins;
pub mod pipeline;
pub mod port;
pub mod switch;
pub mod testing;
pub mod traffic;
pub mod worker;
#[allow(unsafe_code)]
pub mod xsk;

pub use counters::{CountersSnapshot, WorkerCounters};
pub use pipeline::{Action, ConfigError, DropReason, Mode, Pipeline, PipelineConfig, PortId, PublishedTable};
pub use port::Port;
pub use worker::{
    Binding, Dataplane, DataplaneConfig, IoCounters, IoSnapshot, StartError, Waker, WorkerCore,
};
