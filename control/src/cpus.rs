//! Keeps the control plane's threads off the dataplane workers' cores.
//!
//! In: the cores `workers:` pins the workers to, and the calling thread's CPU
//! affinity (the container's cpuset). Out: the calling thread's affinity
//! narrowed to the other cores, so every thread it starts afterwards (the
//! tokio runtime, whose tasks watch the sources, compile the tables and
//! serve the status; its blocking pool; the manifest watch) inherits it. Each worker pins itself to its own core when it starts, which
//! the cpuset allows whatever its parent's mask was.
//!
//! Without this, a table compile or a burst of watch events could be
//! scheduled onto a worker's core and stall that worker's queues while it
//! runs; with the workers busy polling, the scheduler would see those cores
//! as the busiest and still use them when the others are taken.

use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// Where the control plane runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ControlCores {
    /// The cores the control threads may use.
    pub cores: Vec<usize>,
    /// True when no core of the cpuset is free of workers, so the control
    /// threads share the workers' cores (and `cores` is the whole cpuset).
    pub shared_with_workers: bool,
}

/// The cores of `allowed` that no worker is pinned to; all of `allowed`,
/// marked shared, when that leaves none.
pub fn split(allowed: &[usize], workers: &[usize]) -> ControlCores {
    let free: Vec<usize> = allowed.iter().copied().filter(|c| !workers.contains(c)).collect();
    if free.is_empty() {
        ControlCores { cores: allowed.to_vec(), shared_with_workers: true }
    } else {
        ControlCores { cores: free, shared_with_workers: false }
    }
}

/// The cores the calling thread may run on.
pub fn current() -> std::io::Result<Vec<usize>> {
    let set = sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

/// Narrows the calling thread's affinity to the cores no worker uses (see
/// [`split`]); call it before starting any other thread. Leaves the affinity
/// as it is when every allowed core has a worker.
pub fn keep_off_workers(workers: &[usize]) -> std::io::Result<ControlCores> {
    let placement = split(&current()?, workers);
    if !placement.shared_with_workers {
        let mut set = CpuSet::new();
        for &c in &placement.cores {
            set.set(c);
        }
        sched_setaffinity(None, &set)?;
    }
    Ok(placement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_plane_gets_the_cores_without_a_worker() {
        let p = split(&[0, 1, 2, 3], &[2, 3]);
        assert_eq!(p, ControlCores { cores: vec![0, 1], shared_with_workers: false });
        // A worker core outside the cpuset changes nothing (that worker runs unpinned).
        let p = split(&[4, 5, 6], &[2, 6]);
        assert_eq!(p, ControlCores { cores: vec![4, 5], shared_with_workers: false });
    }

    #[test]
    fn with_a_worker_on_every_core_the_control_plane_shares_them() {
        let p = split(&[2, 3], &[2, 3]);
        assert_eq!(p, ControlCores { cores: vec![2, 3], shared_with_workers: true });
    }

    #[test]
    fn threads_started_after_the_split_stay_off_the_worker_core() {
        // In a thread of its own, so the test harness's other threads keep their affinity.
        std::thread::spawn(|| {
            let allowed = current().unwrap();
            let worker = allowed[0];
            let p = keep_off_workers(&[worker]).unwrap();
            let child = std::thread::spawn(current).join().unwrap().unwrap();
            if allowed.len() == 1 {
                // One core only: nothing to move to; the affinity is untouched.
                assert!(p.shared_with_workers);
                assert_eq!(child, allowed);
            } else {
                assert!(!p.shared_with_workers);
                assert_eq!(child, allowed[1..].to_vec());
                assert!(!child.contains(&worker));
            }
        })
        .join()
        .unwrap();
    }
}
