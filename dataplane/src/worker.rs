//! Workers: threads that move frames between the sockets of the ports.
//!
//! Worker `i` serves queue `i` of every port bound on more than `i` queues
//! (a port with `q` queues is bound on queues `0..q` by workers `0..q`; every
//! RX queue of its interface must be among them, see `port.rs`), so that both
//! directions of a flow (which a symmetric RSS hash puts on the same queue number of each
//! NIC) meet the same worker and its connection tracking. All the sockets of
//! a worker share one UMEM, so forwarding a frame is passing its descriptor
//! from one socket's RX ring to another's TX ring; only flooding copies.
//!
//! One loop iteration:
//!
//! ```text
//! for each socket: RX batch ─▶ pipeline.begin_batch(now) ─▶ process(frame) ─▶ pending TX of a port
//!                                                                          └▶ free pool (dropped)
//! for each socket: completions ─▶ free pool; pending ─▶ TX ring (as much as fits); kick (copy mode)
//! for each socket: free pool ─▶ fill ring
//! idle? poll() the sockets for a while instead of spinning.
//! ```
//!
//! Everything a worker touches per packet is owned by its thread: no lock,
//! and every container is allocated at start.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Instant;

/// How often a worker reads its sockets' kernel counters (a syscall each).
const KERNEL_STATS_EVERY_NS: u64 = 1_000_000_000;

use arc_swap::ArcSwap;
use crossbeam_channel::Receiver;
use thiserror::Error;

use crate::counters::{CountersSnapshot, PortCounters, WorkerCounters};
use crate::observe::{denied_channel, DeniedFlow, DenyLog};
use crate::pins::PodPins;
use crate::pipeline::{Action, ConfigError, Mode, Pipeline, PipelineConfig, PortId, PublishedTable};
use crate::port::{Port, PortError};
use crate::xsk::{self, AttachMode, Frame, Frames, Poller, Umem, XskConfig, XskSocket};

/// Dataplane settings.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// Interfaces to switch between; their order gives the port ids.
    pub ports: Vec<String>,
    /// Queues to bind on each port, by port index: port `p` is bound on
    /// queues `0..queues[p]`, by workers `0..queues[p]`. A missing entry
    /// (default: the list is empty) means every RX queue the interface has.
    /// Start fails when an interface has more RX queues than are bound
    /// (their frames would escape the dataplane) or fewer than asked for.
    pub queues: Vec<u32>,
    /// Number of workers; 0 means one per queue of the port with most queues.
    /// Must be at least that many.
    pub workers: usize,
    /// Cores to pin workers to (worker `i` on `cores[i % len]`); empty: no pinning.
    /// A worker that cannot be pinned (no such core, or not in the process's
    /// allowed CPUs) runs unpinned: [`Dataplane::cores`] says so.
    pub cores: Vec<usize>,
    /// Socket and UMEM settings.
    pub xsk: XskConfig,
    /// Most frames taken from one RX ring at a time. Default 64.
    pub batch: usize,
    /// The pipeline of each worker (mode, conntrack sizes, timeouts). Its
    /// `ports` is set from `ports` above.
    pub pipeline: PipelineConfig,
    /// How long an idle worker sleeps in `poll` before looking at its stop
    /// flag again, in milliseconds. Default 50.
    pub idle_poll_ms: i32,
    /// Packets denied by policy each worker reports per second at most (see
    /// [`Dataplane::denied_flows`]). Default 0: none.
    pub denied_log_per_second: u32,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            ports: Vec::new(),
            queues: Vec::new(),
            workers: 0,
            cores: Vec::new(),
            xsk: XskConfig::default(),
            batch: 64,
            pipeline: PipelineConfig::default(),
            idle_poll_ms: 50,
            denied_log_per_second: 0,
        }
    }
}

/// Starting the dataplane failed.
#[derive(Debug, Error)]
pub enum StartError {
    /// No ports given, or a setting out of range.
    #[error("invalid dataplane configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A port could not be opened.
    #[error(transparent)]
    Port(#[from] PortError),
    /// The pipeline configuration is invalid.
    #[error("pipeline configuration")]
    Pipeline(#[from] ConfigError),
    /// A worker could not create its UMEM.
    #[error("worker {worker}: UMEM")]
    Umem {
        /// Worker index.
        worker: usize,
        /// The error.
        #[source]
        source: xsk::UmemError,
    },
    /// A worker could not bind a socket.
    #[error("worker {worker}: socket")]
    Bind {
        /// Worker index.
        worker: usize,
        /// The error.
        #[source]
        source: xsk::BindError,
    },
    /// A worker thread could not be spawned or died during start.
    #[error("worker {worker} thread")]
    Thread {
        /// Worker index.
        worker: usize,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// I/O counters of one worker. Written by the worker only (relaxed stores
/// once per loop iteration), read by anyone.
#[derive(Debug, Default)]
pub struct IoCounters {
    /// Frames received.
    pub rx: AtomicU64,
    /// Frames put on TX rings.
    pub tx: AtomicU64,
    /// Frames the pipeline dropped.
    pub dropped: AtomicU64,
    /// Frames dropped because the output port's pending queue was full
    /// (the TX ring did not drain fast enough).
    pub tx_full: AtomicU64,
    /// Flood copies made.
    pub flood_copies: AtomicU64,
    /// Frames dropped because no free frame was left for a copy.
    pub no_frame: AtomicU64,
    /// Frames for a port this worker has no socket on.
    pub no_socket: AtomicU64,
    /// Descriptors from an RX or completion ring that pointed outside the
    /// UMEM, dropped (a kernel bug or a stray write into the rings; expected 0).
    pub bad_descriptors: AtomicU64,
    /// `sendto` kicks.
    pub kicks: AtomicU64,
    /// Kicks that failed with an unexpected error.
    pub kick_errors: AtomicU64,
}

/// A plain copy of [`IoCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IoSnapshot {
    /// See [`IoCounters::rx`].
    pub rx: u64,
    /// See [`IoCounters::tx`].
    pub tx: u64,
    /// See [`IoCounters::dropped`].
    pub dropped: u64,
    /// See [`IoCounters::tx_full`].
    pub tx_full: u64,
    /// See [`IoCounters::flood_copies`].
    pub flood_copies: u64,
    /// See [`IoCounters::no_frame`].
    pub no_frame: u64,
    /// See [`IoCounters::no_socket`].
    pub no_socket: u64,
    /// See [`IoCounters::bad_descriptors`].
    pub bad_descriptors: u64,
    /// See [`IoCounters::kicks`].
    pub kicks: u64,
    /// See [`IoCounters::kick_errors`].
    pub kick_errors: u64,
}

impl IoCounters {
    /// Reads all counters.
    pub fn snapshot(&self) -> IoSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IoSnapshot {
            rx: r(&self.rx),
            tx: r(&self.tx),
            dropped: r(&self.dropped),
            tx_full: r(&self.tx_full),
            flood_copies: r(&self.flood_copies),
            no_frame: r(&self.no_frame),
            no_socket: r(&self.no_socket),
            bad_descriptors: r(&self.bad_descriptors),
            kicks: r(&self.kicks),
            kick_errors: r(&self.kick_errors),
        }
    }

    fn publish(&self, s: &IoSnapshot) {
        let w = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        w(&self.rx, s.rx);
        w(&self.tx, s.tx);
        w(&self.dropped, s.dropped);
        w(&self.tx_full, s.tx_full);
        w(&self.flood_copies, s.flood_copies);
        w(&self.no_frame, s.no_frame);
        w(&self.no_socket, s.no_socket);
        w(&self.bad_descriptors, s.bad_descriptors);
        w(&self.kicks, s.kicks);
        w(&self.kick_errors, s.kick_errors);
    }
}

impl std::ops::AddAssign for IoSnapshot {
    fn add_assign(&mut self, o: IoSnapshot) {
        self.rx += o.rx;
        self.tx += o.tx;
        self.dropped += o.dropped;
        self.tx_full += o.tx_full;
        self.flood_copies += o.flood_copies;
        self.no_frame += o.no_frame;
        self.no_socket += o.no_socket;
        self.bad_descriptors += o.bad_descriptors;
        self.kicks += o.kicks;
        self.kick_errors += o.kick_errors;
    }
}

/// Frames the kernel sends per copy-mode `sendto` (`TX_BATCH_SIZE` in
/// `net/xdp/xsk.c`).
const KICK_BATCH: u32 = 32;

/// The state of one worker thread.
struct Worker {
    umem: Umem,
    free: Frames,
    rx: Frames,
    /// Sockets, with the port each serves.
    sockets: Vec<(PortId, XskSocket)>,
    /// For each port id: index in `sockets`, if this worker has a socket there.
    socket_of_port: Vec<Option<usize>>,
    /// For each socket: frames waiting for its TX ring.
    pending: Vec<Frames>,
    pipeline: Pipeline,
    fill_target: usize,
    max_kicks: u32,
    idle_poll_ms: i32,
    poller: Poller,
    /// Written by [`Waker::wake`]; in the poll set, so a new table wakes an idle worker.
    wake: Arc<OwnedFd>,
    counters: Arc<IoCounters>,
    stats: IoSnapshot,
    /// The pipeline's counters (same single writer: this thread), for the
    /// per-port `tx_*` counts; the pipeline itself fills `rx_*`.
    port_counters: Arc<WorkerCounters>,
}

impl Worker {
    fn new(
        index: usize,
        ports: &[Port],
        cfg: &DataplaneConfig,
        pipeline: Pipeline,
        counters: Arc<IoCounters>,
        wake: Arc<OwnedFd>,
    ) -> Result<Worker, StartError> {
        // Queue `index` of every port bound on more than `index` queues.
        let queue = index as u32;
        let mine: Vec<&Port> = ports.iter().filter(|p| p.queues > queue).collect();
        let (mut umem, free) = Umem::new(&cfg.xsk, cfg.xsk.frames_for(mine.len()))
            .map_err(|source| StartError::Umem { worker: index, source })?;
        let mut sockets = Vec::with_capacity(mine.len());
        let mut socket_of_port = vec![None; ports.len()];
        for p in &mine {
            let s = XskSocket::bind_to(&mut umem, &p.name, queue, &cfg.xsk, &p.program)
                .map_err(|source| StartError::Bind { worker: index, source })?;
            socket_of_port[p.id as usize] = Some(sockets.len());
            sockets.push((p.id, s));
        }
        let pending =
            sockets.iter().map(|_| Frames::with_capacity(&umem, cfg.xsk.tx_ring as usize)).collect();
        let rx = Frames::with_capacity(&umem, cfg.batch.max(1));
        let poller = Poller::new(sockets.iter().map(|(_, s)| s.fd()).chain([wake.as_raw_fd()]));
        let port_counters = pipeline.counters().clone();
        Ok(Worker {
            rx,
            free,
            sockets,
            socket_of_port,
            pending,
            pipeline,
            fill_target: cfg.xsk.rx_ring as usize,
            max_kicks: cfg.xsk.tx_ring / KICK_BATCH + 1,
            idle_poll_ms: cfg.idle_poll_ms.max(1),
            poller,
            wake,
            counters,
            stats: IoSnapshot::default(),
            port_counters,
            umem,
        })
    }

    fn run(&mut self, stop: &AtomicBool, epoch: Instant) {
        self.refill();
        let mut idle = 0u32;
        let mut kernel_read_at = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let now = epoch.elapsed().as_nanos() as u64;
            if now.saturating_sub(kernel_read_at) >= KERNEL_STATS_EVERY_NS {
                kernel_read_at = now;
                self.read_kernel_counters();
            }
            let received = self.receive(now);
            let outstanding = self.transmit();
            self.refill();
            self.counters.publish(&self.stats);
            if received == 0 && outstanding == 0 {
                idle = idle.saturating_add(1);
            } else {
                idle = 0;
            }
            if idle > 4 {
                // Nothing moved for a few rounds: pick up a newer table (and run the
                // expiry sweep) so an idle worker reports the generation it enforces,
                // then sleep in the kernel until a socket has something to read (or
                // the timeout, to see `stop`).
                self.pipeline.begin_batch(now);
                if let Ok(n) = self.poller.wait(self.idle_poll_ms) {
                    if n > 0 {
                        // Reset the wake-up counter (non-blocking; nothing to read is fine).
                        let _ = rustix::io::read(&*self.wake, &mut [0u8; 8]);
                    }
                }
            } else if received == 0 && outstanding > 0 {
                // TX is stuck behind a full peer: give it a moment, but still
                // take up a newer table (and sweep), as an idle worker does:
                // a peer that never drains must not keep the old table in force.
                self.pipeline.begin_batch(now);
                let _ = self.poller.wait(1);
            }
        }
        self.counters.publish(&self.stats);
        self.read_kernel_counters();
    }

    /// Copies each socket's kernel drop counters (one `getsockopt` each) to
    /// its port's counters. A failed read leaves the last values.
    fn read_kernel_counters(&mut self) {
        self.stats.bad_descriptors = self.sockets.iter().map(|(_, s)| s.bad_descriptors()).sum();
        for (port, socket) in &self.sockets {
            let (Ok(k), Some(c)) = (socket.statistics(), self.port_counters.ports().get(*port as usize))
            else {
                continue;
            };
            c.kernel.rx_dropped.set(k.rx_dropped);
            c.kernel.rx_ring_full.set(k.rx_ring_full);
            c.kernel.fill_ring_empty.set(k.fill_ring_empty);
            c.kernel.rx_invalid.set(k.rx_invalid);
            c.kernel.tx_invalid.set(k.tx_invalid);
        }
    }

    /// One RX batch from every socket, through the pipeline.
    fn receive(&mut self, now: u64) -> usize {
        let Worker {
            umem, free, rx, sockets, socket_of_port, pending, pipeline, stats, port_counters, ..
        } = self;
        let out = port_counters.ports();
        let mut total = 0;
        for (in_port, socket) in sockets.iter_mut() {
            let n = socket.recv(rx);
            if n == 0 {
                continue;
            }
            total += n;
            stats.rx += n as u64;
            pipeline.begin_batch(now);
            let in_port = *in_port;
            rx.drain_each(|frame| {
                let action = pipeline.process(in_port, umem.data(&frame), now);
                match action {
                    Action::Forward(port) => match socket_of_port.get(port as usize).copied().flatten() {
                        Some(s) => enqueue(&mut pending[s], frame, free, stats, out.get(port as usize)),
                        None => {
                            stats.no_socket += 1;
                            recycle(free, frame);
                        }
                    },
                    Action::Flood | Action::FloodUnbound => {
                        let unbound_only = action == Action::FloodUnbound;
                        for (port, slot) in socket_of_port.iter().enumerate() {
                            let Some(s) = *slot else { continue };
                            if port == in_port as usize
                                || unbound_only && pipeline.table().addresses.is_pod_port(port)
                            {
                                continue;
                            }
                            let Some(mut copy) = free.pop() else {
                                stats.no_frame += 1;
                                continue;
                            };
                            if umem.copy(&frame, &mut copy) {
                                stats.flood_copies += 1;
                                enqueue(&mut pending[s], copy, free, stats, out.get(port));
                            } else {
                                recycle(free, copy);
                            }
                        }
                        recycle(free, frame);
                    }
                    Action::Drop(_) => {
                        stats.dropped += 1;
                        recycle(free, frame);
                    }
                }
            });
        }
        total
    }

    /// Completions back to the free pool, pending frames to the TX rings,
    /// kicks. Returns the number of frames still outstanding on TX rings.
    fn transmit(&mut self) -> u32 {
        let Worker { free, sockets, pending, stats, max_kicks, port_counters, .. } = self;
        let mut outstanding = 0;
        for (i, (port, socket)) in sockets.iter_mut().enumerate() {
            let out = port_counters.ports().get(usize::from(*port));
            socket.complete(free);
            count_tx(socket.send_counted(&mut pending[i]), stats, out);
            let mut kicks = 0;
            while kicks < *max_kicks && socket.needs_kick() {
                if socket.kick().is_err() {
                    stats.kick_errors += 1;
                    break;
                }
                kicks += 1;
                socket.complete(free);
                // Frames the kick made room for.
                count_tx(socket.send_counted(&mut pending[i]), stats, out);
            }
            stats.kicks += u64::from(kicks);
            socket.complete(free);
            outstanding += socket.tx_outstanding() + pending[i].len() as u32;
        }
        outstanding
    }

    /// Tops up every fill ring from the free pool.
    fn refill(&mut self) {
        for (_, socket) in self.sockets.iter_mut() {
            socket.fill(&mut self.free, self.fill_target);
        }
    }
}

/// Queues `frame` for the TX ring of a port (`out`: that port's counters).
fn enqueue(
    pending: &mut Frames,
    frame: Frame,
    free: &mut Frames,
    stats: &mut IoSnapshot,
    out: Option<&PortCounters>,
) {
    if let Err(frame) = pending.push(frame) {
        stats.tx_full += 1;
        if let Some(c) = out {
            c.tx_dropped.inc();
        }
        recycle(free, frame);
    }
}

/// Counts frames put on a port's TX ring, in the worker's totals and the
/// port's own counters (relaxed single-writer stores: no lock, no allocation).
#[inline]
fn count_tx(sent: xsk::Sent, stats: &mut IoSnapshot, out: Option<&PortCounters>) {
    if sent.frames == 0 {
        return;
    }
    stats.tx += sent.frames as u64;
    if let Some(c) = out {
        c.tx_frames.add(sent.frames as u64);
        c.tx_bytes.add(sent.bytes);
    }
}

fn recycle(free: &mut Frames, frame: Frame) {
    // The free pool can hold every frame of the UMEM, so this cannot fail
    // for a frame of this UMEM; a foreign frame is simply let go.
    let _ = free.push(frame);
}

/// A running dataplane: its ports and worker threads.
pub struct Dataplane {
    ports: Vec<Port>,
    attach: AttachMode,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    io: Vec<Arc<IoCounters>>,
    pipeline: Vec<Arc<WorkerCounters>>,
    denied: Receiver<DeniedFlow>,
    waker: Waker,
    bindings: Vec<Binding>,
    cores: Vec<WorkerCore>,
}

/// The core a worker thread was to be pinned to, and whether that worked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WorkerCore {
    /// Worker index.
    pub worker: usize,
    /// The core from [`DataplaneConfig::cores`]; `None` when none was asked for.
    pub core: Option<usize>,
    /// The thread is pinned to `core`. False when pinning failed (the worker
    /// runs on whatever cores the scheduler gives it) or none was asked for.
    pub pinned: bool,
}

/// Pins the calling thread to `core`; false if the kernel refuses (no such
/// CPU, or one outside the process's cpuset) or `core` is beyond what a
/// `cpu_set_t` holds (`core_affinity` would index out of bounds there).
fn pin_current_thread(core: usize) -> bool {
    core < libc::CPU_SETSIZE as usize && core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

/// One AF_XDP socket a worker bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Binding {
    /// Worker index.
    pub worker: usize,
    /// Port id.
    pub port: PortId,
    /// Queue of the port's interface.
    pub queue: u32,
}

/// Wakes idle workers so that they pick up a newly published table at once
/// instead of at the end of their idle poll (`idle_poll_ms`). One eventfd per
/// worker, in its poll set. Cheap (one `write` per worker); call it after
/// storing a new table.
#[derive(Clone, Debug, Default)]
pub struct Waker {
    fds: Vec<Arc<OwnedFd>>,
}

impl Waker {
    /// Wakes every worker that sleeps in its poll.
    pub fn wake(&self) {
        for fd in &self.fds {
            // A full counter (EAGAIN) means a wake-up is already pending.
            let _ = rustix::io::write(&**fd, &1u64.to_ne_bytes());
        }
    }
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane").field("ports", &self.ports).field("workers", &self.threads.len()).finish()
    }
}

impl Dataplane {
    /// Opens the ports, starts the workers and returns once every socket is
    /// bound (or the first error).
    pub fn start(
        cfg: &DataplaneConfig,
        tables: Arc<ArcSwap<PublishedTable>>,
    ) -> Result<Dataplane, StartError> {
        if cfg.ports.is_empty() || cfg.ports.len() > usize::from(PortId::MAX) {
            return Err(StartError::Config { reason: format!("{} ports given", cfg.ports.len()) });
        }
        if cfg.pipeline.mode == Mode::Wire && cfg.ports.len() != 2 {
            return Err(StartError::Config { reason: "wire mode needs exactly two ports".into() });
        }
        if cfg.queues.len() > cfg.ports.len() || cfg.queues.contains(&0) {
            return Err(StartError::Config {
                reason: format!("queues {:?}: at most one entry per port, each at least 1", cfg.queues),
            });
        }
        // Every check first, before any interface gets an XDP program: a
        // refused configuration leaves the interfaces as they were.
        let queues = cfg
            .ports
            .iter()
            .enumerate()
            .map(|(i, name)| Port::plan(name, cfg.queues.get(i).copied()).map(|(_, q, _)| q))
            .collect::<Result<Vec<_>, _>>()?;
        let workers =
            if cfg.workers == 0 { queues.iter().copied().max().unwrap_or(1) as usize } else { cfg.workers };
        // Worker i binds queue i: a queue with no worker would have no socket, and
        // its frames would escape the dataplane (see `port.rs`).
        if let Some((name, q)) = cfg.ports.iter().zip(&queues).find(|(_, q)| **q as usize > workers) {
            return Err(StartError::Config {
                reason: format!(
                    "port {name} is bound on {q} queues but there are {workers} workers (worker i binds queue i)"
                ),
            });
        }
        let pcfg = PipelineConfig { ports: cfg.ports.len() as u16, ..cfg.pipeline.clone() };
        pcfg.validate()?;
        // Checks done: from here on the interfaces get our XDP program.
        let ports = cfg
            .ports
            .iter()
            .zip(&queues)
            .enumerate()
            .map(|(i, (name, q))| Port::open(i as PortId, name, cfg.xsk.attach, Some(*q)))
            .collect::<Result<Vec<_>, _>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let (denied_tx, denied_rx) = denied_channel();
        // One set of pod-port MAC pins for every worker (see crate::pins).
        let pins = Arc::new(PodPins::new(ports.len()));
        let mut dp = Dataplane {
            ports: ports.clone(),
            attach: cfg.xsk.attach,
            stop: stop.clone(),
            threads: Vec::new(),
            io: Vec::new(),
            pipeline: Vec::new(),
            denied: denied_rx,
            waker: Waker::default(),
            bindings: Vec::new(),
            cores: Vec::new(),
        };
        for index in 0..workers {
            let io = Arc::new(IoCounters::default());
            let pc = Arc::new(WorkerCounters::new(ports.len()));
            let (ready_tx, ready_rx) = mpsc::channel();
            let deny_log = DenyLog::new(denied_tx.clone(), cfg.denied_log_per_second);
            let wake = Arc::new(
                rustix::event::eventfd(
                    0,
                    rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
                )
                .map_err(|e| StartError::Thread { worker: index, source: e.into() })?,
            );
            dp.waker.fds.push(wake.clone());
            let pins = pins.clone();
            let (thread_ports, cfg, pcfg, tables, stop, io2, pc2) = (
                ports.clone(),
                cfg.clone(),
                pcfg.clone(),
                tables.clone(),
                stop.clone(),
                io.clone(),
                pc.clone(),
            );
            let core = (!cfg.cores.is_empty()).then(|| cfg.cores[index % cfg.cores.len()]);
            let handle = std::thread::Builder::new()
                .name(format!("pcl-worker-{index}"))
                .spawn(move || {
                    let pinned = core.is_some_and(pin_current_thread);
                    let started = Pipeline::try_new(&pcfg, tables, pc2)
                        .map(|p| p.with_worker(index).with_deny_log(deny_log).with_pins(pins))
                        .map_err(StartError::from)
                        .and_then(|pipeline| Worker::new(index, &thread_ports, &cfg, pipeline, io2, wake));
                    match started {
                        Ok(mut w) => {
                            let bound = w
                                .sockets
                                .iter()
                                .map(|(port, s)| Binding { worker: index, port: *port, queue: s.queue() })
                                .collect::<Vec<_>>();
                            let _ = ready_tx.send(Ok((bound, pinned)));
                            w.run(&stop, epoch);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                })
                .map_err(|source| StartError::Thread { worker: index, source })?;
            dp.threads.push(handle);
            dp.io.push(io);
            dp.pipeline.push(pc);
            match ready_rx.recv() {
                Ok(Ok((bound, pinned))) => {
                    dp.bindings.extend(bound);
                    dp.cores.push(WorkerCore { worker: index, core, pinned });
                }
                Ok(Err(e)) => {
                    // Our clones of the ports go first, so that shutting down
                    // closes the last descriptors of their XDP links.
                    drop(ports);
                    dp.shutdown();
                    return Err(e);
                }
                Err(_) => {
                    drop(ports);
                    dp.shutdown();
                    return Err(StartError::Thread {
                        worker: index,
                        source: std::io::Error::other("worker exited during start"),
                    });
                }
            }
        }
        Ok(dp)
    }

    /// The ports, in port-id order.
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    /// Every socket the workers bound, by worker then port, as each worker
    /// reported it once bound.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// For each worker, in order, the core it was to be pinned to and whether
    /// pinning worked (`DataplaneConfig::cores`). Callers should report a
    /// failed pinning: the worker runs, but may share a core with anything.
    pub fn cores(&self) -> &[WorkerCore] {
        &self.cores
    }

    /// The flag that stops the workers when set.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The I/O counters summed over the workers.
    pub fn io_counters(&self) -> IoSnapshot {
        let mut total = IoSnapshot::default();
        for c in &self.io {
            total += c.snapshot();
        }
        total
    }

    /// Number of worker threads.
    pub fn worker_count(&self) -> usize {
        self.threads.len()
    }

    /// True while every worker thread is running.
    pub fn workers_alive(&self) -> bool {
        !self.threads.is_empty() && self.threads.iter().all(|t| !t.is_finished())
    }

    /// The pipeline counters of each worker.
    pub fn pipeline_counters_per_worker(&self) -> Vec<CountersSnapshot> {
        self.pipeline.iter().map(|c| c.snapshot()).collect()
    }

    /// A handle that wakes idle workers (see [`Waker`]).
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// Packets denied by policy the workers reported (at most
    /// `denied_log_per_second` per worker). Drain it with `try_recv`, not a
    /// blocking receive: a blocked receiver makes the workers' sends wake it.
    pub fn denied_flows(&self) -> Receiver<DeniedFlow> {
        self.denied.clone()
    }

    /// The lowest table generation the workers use: what
    /// `pipeline_counters().table_generation` says, without a snapshot of
    /// every counter (the control plane polls it after each publication).
    pub fn enforced_generation(&self) -> u64 {
        self.pipeline.iter().map(|c| c.table_generation()).min().unwrap_or(0)
    }

    /// The pipeline counters summed over the workers.
    pub fn pipeline_counters(&self) -> CountersSnapshot {
        let mut total = CountersSnapshot::default();
        for c in &self.pipeline {
            total.add(&c.snapshot());
        }
        total
    }

    /// Stops the workers, closes every socket, closes the ports' XDP links
    /// (which detaches their programs) and makes sure no XDP program is left
    /// on the ports.
    pub fn shutdown(mut self) {
        self.stop_workers();
    }

    fn stop_workers(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // The workers' clones of the ports are gone with their threads; dropping
        // these closes the last descriptors of the XDP links, which detaches the
        // programs. Then make sure nothing else is left on the interfaces.
        let names: Vec<String> = self.ports.drain(..).map(|p| p.name).collect();
        for name in names {
            let _ = xsk::detach_xdp(&name, self.attach);
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.stop_workers();
    }
}
