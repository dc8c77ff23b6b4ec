//! `lab apply`: changes the lab's objects (usually policies) while it runs.
//!
//! The files are checked first (nothing changes if one does not load), then
//! copied into `<dir>/applied/` and the dataplane process is sent SIGHUP: it
//! recompiles everything and publishes the new table (see `run_dataplane`).
//! `apply` returns once every worker enforces the new generation. Objects replace
//! same-named ones (kind, namespace, name), as `kubectl apply` does;
//! `--reset` first forgets every earlier `apply`. Pods added or changed this
//! way change labels and policy, not the lab's namespaces: those are made by
//! `lab up` only.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use policy_compiler::Severity;
use thiserror::Error;

use super::cmd::{self, CommandError};
use super::state::{self, LabState};
use super::{policy, DirArgs};
use crate::manifest::LoadErrors;

/// `lab apply` arguments.
#[derive(Args, Debug, Clone)]
pub struct ApplyArgs {
    /// Files to add (YAML/JSON manifests), in order.
    #[arg(long = "file", short = 'f')]
    pub files: Vec<PathBuf>,
    /// Forget every earlier `lab apply` first (back to the cluster file, plus `-f`).
    #[arg(long)]
    pub reset: bool,
    /// State directory.
    #[command(flatten)]
    pub dir: DirArgs,
}

/// `lab apply` failed; the lab is unchanged unless said otherwise.
#[derive(Debug, Error)]
pub enum ApplyError {
    /// No lab here.
    #[error("no lab in {dir} (run `portcullis lab up`)")]
    NoLab {
        /// State directory.
        dir: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file does not load.
    #[error("nothing applied")]
    Load(#[from] LoadErrors),
    /// Copying into the state directory.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The dataplane could not be signalled.
    #[error("signalling the dataplane")]
    Signal(#[from] CommandError),
    /// The lab's dataplane is the daemon (`lab up --run-manifests DIR`), which
    /// reads its own directory and takes no SIGHUP.
    #[error("this lab's dataplane is `portcullis run --manifests`: put the files into its manifest directory instead")]
    Daemon,
    /// The dataplane is not running.
    #[error("the lab's dataplane is not running (see {log})")]
    NoDataplane {
        /// Its log.
        log: PathBuf,
    },
    /// The dataplane refused the files or did not answer in time.
    #[error("the dataplane did not publish the change: {message}")]
    NotPublished {
        /// Why.
        message: String,
    },
}

/// Applies files to a running lab.
pub fn apply(args: &ApplyArgs) -> Result<(), ApplyError> {
    let dir = &args.dir.dir;
    let lab = LabState::load(dir).map_err(|source| ApplyError::NoLab { dir: dir.clone(), source })?;
    let applied = dir.join(state::APPLIED_DIR);
    let mut files = if args.reset { vec![dir.join(state::CLUSTER_FILE)] } else { policy::lab_files(dir) };
    files.extend(args.files.iter().cloned());
    let compiled = policy::load(&files)?.compile();
    for p in &compiled.problems {
        let tag = if p.severity == Severity::Error { " (enforced fail-closed)" } else { "" };
        eprintln!("{p}{tag}");
    }
    if lab.dataplane_pid.is_some() && lab.dataplane_args.is_empty() {
        return Err(ApplyError::Daemon);
    }
    let pid = lab
        .dataplane_pid
        .filter(|p| cmd::is_ours(*p, &dir.to_string_lossy()))
        .ok_or_else(|| ApplyError::NoDataplane { log: dir.join(state::DATAPLANE_LOG) })?;
    let io = |path: &PathBuf| {
        let path = path.clone();
        move |source| ApplyError::Io { path, source }
    };
    if args.reset {
        let _ = std::fs::remove_dir_all(&applied);
    }
    std::fs::create_dir_all(&applied).map_err(io(&applied))?;
    let first = std::fs::read_dir(&applied).map_err(io(&applied))?.count();
    for (n, f) in (first..).zip(&args.files) {
        let name = f.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
        let to = applied.join(format!("{n:04}-{name}"));
        std::fs::copy(f, &to).map_err(io(f))?;
    }
    let before = state::generation(dir).unwrap_or(0);
    let _ = std::fs::remove_file(dir.join(state::RELOAD_ERROR_FILE));
    cmd::signal(pid, "HUP")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(g) = state::generation(dir).filter(|g| *g > before) {
            let s = compiled.table.stats();
            println!("applied: generation {g} ({} policies, {} pods)", s.policies, s.pods);
            return Ok(());
        }
        if let Ok(message) = std::fs::read_to_string(dir.join(state::RELOAD_ERROR_FILE)) {
            return Err(ApplyError::NotPublished { message });
        }
        if Instant::now() > deadline {
            return Err(ApplyError::NotPublished { message: "no new generation after 10 s".into() });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
