//! # dataplane
//!
//! Portcullis's packet path. Frames come in on AF_XDP sockets bound to the
//! queues of a set of interfaces (ports), go through the pipeline (parse,
//! connection tracking, policy verdict from the published
//! `policy_compiler::DecisionTable`, switching), and go out of another port
//! or are dropped.
//!
//! ```text
//!   interface queues ──AF_XDP (xsk/)──▶ worker (worker.rs) ──▶ Pipeline::process ──▶ Action
//!        ▲                                  │                      ▲                    │
//!        └──────── TX ring of a port ◀──────┴──── Forward/Flood ◀──┼────────────────────┘
//!                                                                   │
//!                               control plane ──ArcSwap<PublishedTable>
//! ```
//!
//! What comes in: interface names, a [`xsk::XskConfig`], and a shared
//! `ArcSwap<PublishedTable>` the control plane replaces when policy changes.
//! What goes out: forwarded frames and counters. All `unsafe` code of the
//! project is in [`xsk`]; everything else here is safe Rust. The design is
//! described in `docs/architecture-dataplane.md`.

#![deny(unsafe_code)]

pub mod pipeline;
pub mod port;
pub mod worker;
#[allow(unsafe_code)]
pub mod xsk;

pub use port::Port;
pub use worker::{Dataplane, DataplaneConfig, IoCounters, IoSnapshot, StartError};
