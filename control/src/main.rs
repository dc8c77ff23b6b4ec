//! The `portcullis` binary: parses the command line and hands each
//! subcommand to the library (`control/src/lib.rs` has the map of the crate).
//!
//! In: arguments; for `run`, the config file (`--config`, else
//! `/etc/portcullis/config.yaml` when present), `NODE_NAME` and
//! `NODE_ADDRESSES` as defaults of `--node-name` and `--node-address`, and
//! `RUST_LOG` (the log filter, `info` without it). Out: answers on stdout
//! (text or JSON), errors on stderr naming file, object and field, logs on
//! stderr for `run`; exit status 0 on success, 2 on any error (input that
//! does not load or validate, a bad batch line, too) and 1 only for
//! `query --exit-code` on a denied connection, so a script cannot take a
//! typo for a denial.

#![forbid(unsafe_code)]

use std::io::{BufRead, BufWriter, Write};
use std::net::IpAddr;

use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use control::report::{self, parse_protocol};
use policy_compiler::{Compiled, Problem, Severity};

/// Portcullis: Kubernetes NetworkPolicy enforcement over AF_XDP.
///
/// `run` is the daemon; `query`, `explain`, `matrix` and `check` answer from manifests alone;
/// `lab` switches real packets between network namespaces (root).
///
/// Exit status: 0 on success; 1 when `query --exit-code` finds the connection denied; 2 on any
/// error (input that does not load or validate, a bad batch line, a bad argument).
#[derive(Parser)]
#[command(name = "portcullis", version = control::VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Is one connection allowed? With no --from, answers JSON-line queries on stdin.
    Query(QueryArgs),
    /// Why is a connection allowed or denied? (every policy and rule involved)
    Explain(FlowArgs),
    /// Pod-by-pod reachability table, computed from the policies.
    Matrix(MatrixArgs),
    /// Validate a state file and print every problem.
    Check(StateArgs),
    /// Pods as network namespaces switched by a real dataplane (root only).
    Lab(control::lab::LabArgs),
    /// The daemon: watch Kubernetes and/or a manifest directory, compile, publish, serve status.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Watch the Kubernetes API (in-cluster config, or the user's kubeconfig).
    #[arg(long)]
    kube: bool,
    /// Watch a directory of manifests (changes apply within a second; a broken file keeps its
    /// last good version in force).
    #[arg(long, value_name = "DIR")]
    manifests: Option<String>,
    /// Configuration file (YAML; every field: docs/configuration.md, or `--print-config`). A file given here must exist.
    /// Without this flag: /etc/portcullis/config.yaml if it exists, otherwise the defaults
    /// (no ports: compile and serve status only).
    #[arg(long, value_name = "FILE")]
    config: Option<String>,
    /// Status endpoint address (overrides the config file).
    #[arg(long)]
    status_address: Option<std::net::SocketAddr>,
    /// Pass pod traffic before the first complete sync (overrides the config file). Risk: traffic
    /// that policy denies passes until the first sync.
    #[arg(long)]
    fail_open: bool,
    /// This node's name (from the downward API): logged at start, to tell nodes'
    /// logs apart; the daemon watches every pod of the cluster either way.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// This node's addresses, added to the config file's `node_addresses` (from the downward
    /// API's `status.hostIPs`; comma-separated in the environment variable). New connections
    /// from them into pods are allowed, as upstream specifies (kubelet probes).
    /// An empty value (a node whose `status.hostIPs` is not filled in yet) gives none.
    #[arg(long = "node-address", env = "NODE_ADDRESSES", value_delimiter = ',', value_parser = node_address)]
    node_addresses: Vec<Option<std::net::IpAddr>>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Check, then exit without attaching anything: the configuration, the interfaces it
    /// names (they exist, and the queues bound cover their RX queues), the workers' cores,
    /// the status token file and the manifest directory. Prints what would run; exits 2 on
    /// the first problem. Needs no privileges (`kubectl exec` into a running pod, or on the
    /// node, before a rollout).
    #[arg(long)]
    check: bool,
    /// Print the configuration a start would use, every field (the file's values, the
    /// defaults of those it leaves out, the flags and environment applied, `workers: auto`
    /// resolved) as YAML that `--config` reads back, then exit. Reference of the fields:
    /// docs/configuration.md.
    #[arg(long, conflicts_with = "check")]
    print_config: bool,
}

/// One `--node-address` (or `NODE_ADDRESSES` item): an address, or nothing
/// for an empty one.
fn node_address(s: &str) -> Result<Option<std::net::IpAddr>, String> {
    match s.trim() {
        "" => Ok(None),
        a => a.parse().map(Some).map_err(|e| format!("{a:?}: {e}")),
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Args)]
struct StateArgs {
    /// Cluster state: YAML (multi-document or `kind: List`, as `kubectl get ns,pods,networkpolicies -A -o yaml`
    /// prints it) or JSON; `-` for stdin; a directory reads every *.yaml, *.yml, *.json in it. Repeatable.
    #[arg(long = "state", short = 's', required = true)]
    state: Vec<String>,
    /// Go on when objects fail validation: an invalid NetworkPolicy is enforced fail-closed (it
    /// isolates the pods it selects and allows nothing); an invalid field of another object (a
    /// pod's bad IP or port) is left out, and the object kept. Input that does not read
    /// (YAML syntax, an unknown field, a wrong type) always stops. `check` still exits 2.
    #[arg(long)]
    allow_invalid: bool,
}

/// Protocol, port and address family of a question.
#[derive(Args)]
struct FlowSpec {
    /// TCP, UDP, SCTP, ICMP, ICMPv6 or an IP protocol number [default: TCP].
    #[arg(long)]
    protocol: Option<String>,
    /// Destination port, 1-65535: required for TCP, UDP and SCTP, refused for other protocols.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Address family used for pods given by name (4 or 6); default: IPv4 for ICMP and IPv6 for
    /// ICMPv6, else the family of the other end when it is an IP address, otherwise the source
    /// pod's first family that the destination pod has too.
    #[arg(long, value_parser = parse_family)]
    family: Option<u8>,
}

fn parse_family(s: &str) -> Result<u8, String> {
    control::lab::parse_family_arg(s)
}

#[derive(Args)]
struct FlowArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Source: namespace/pod or an IP address.
    #[arg(long)]
    from: String,
    /// Destination: namespace/pod or an IP address.
    #[arg(long)]
    to: String,
    #[command(flatten)]
    flow: FlowSpec,
}

#[derive(Args)]
struct QueryArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Source: namespace/pod or an IP. Without it (batch mode), queries are read from stdin as JSON
    /// lines, {"src":"10.0.1.1","dst":"10.0.2.2","protocol":"TCP","port":80} (src and dst:
    /// namespace/pod or IP; protocol: name or number, default TCP; port: required for TCP, UDP,
    /// SCTP; family: 4 or 6, optional, as --family), and each gets one JSON line: the answer, or
    /// {"line":N,"error":"..."} for a bad line (malformed JSON or text that is not UTF-8 included).
    /// The exit status is 2 when any line was bad.
    #[arg(long, requires = "to")]
    from: Option<String>,
    /// Destination: namespace/pod or an IP.
    #[arg(long, requires = "from")]
    to: Option<String>,
    #[command(flatten)]
    flow: FlowSpec,
    /// Output format for a single query [default: text] (batch mode always prints JSON lines).
    #[arg(long, value_enum)]
    output: Option<Output>,
    /// A single query exits with status 1 when the connection is denied (as `kubectl auth
    /// can-i` does), for scripts; errors exit with 2, so test for 1:
    /// `portcullis query ... --exit-code; [ $? = 1 ] && echo denied`.
    #[arg(long, requires = "from")]
    exit_code: bool,
}

#[derive(Args)]
struct MatrixArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Protocols, comma-separated.
    #[arg(long, default_value = "TCP", value_delimiter = ',')]
    protocol: Vec<String>,
    /// Destination ports (1-65535), comma-separated. Without it, each destination is probed on its
    /// own first container port of the protocol.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    port: Vec<u16>,
    /// Address family (4 or 6); default: IPv4 for ICMP and IPv6 for ICMPv6, else per pair, the
    /// source's first family that the destination has too.
    #[arg(long, value_parser = parse_family)]
    family: Option<u8>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

/// Loads and compiles the state, printing problems with their origins.
/// Errors stop the command unless `--allow-invalid`.
fn load(args: &StateArgs) -> Result<Compiled> {
    let (state, errs) = control::load_paths_all(&args.state);
    if !errs.is_empty() {
        let problems = errs.len();
        eprintln!("{}", control::manifest::LoadErrors(errs));
        // The objects read without a problem are checked too, so that one
        // run names every problem it can (their errors only: a warning such
        // as a namespace missing from the input may be about a broken object).
        let invalid = if state.is_empty() {
            0
        } else {
            let compiled = policy_compiler::compile(&state.namespaces, &state.pods, &state.policies);
            print_problems(&state, &compiled.problems, true)
        };
        let more = match invalid {
            0 => String::new(),
            n => format!(", and {n} invalid object(s) among those read"),
        };
        bail!("{problems} problem(s) in the input{more}; nothing applied");
    }
    for n in &state.notes {
        eprintln!("note: {n}");
    }
    // A few by name, then a count per kind (`kubectl get all` lists many).
    const SKIPPED_SHOWN: usize = 5;
    // Other policy kinds (Calico's, Cilium's, AdminNetworkPolicy) are named
    // apart, each of them: their rules are not enforced here.
    let policy_like = |kind: &str| kind.contains("NetworkPolicy");
    for (kind, origin) in state.skipped.iter().filter(|(k, _)| policy_like(k)) {
        eprintln!(
            "warning: {origin}: kind {kind} is not a Kubernetes NetworkPolicy (networking.k8s.io/v1); \
             its rules are not applied here (Portcullis enforces NetworkPolicy only); skipped"
        );
    }
    let skipped: Vec<_> = state.skipped.iter().filter(|(k, _)| !policy_like(k)).collect();
    for (kind, origin) in skipped.iter().take(SKIPPED_SHOWN) {
        eprintln!("note: {origin}: kind {kind} is not one Portcullis reads (Namespace, Pod, NetworkPolicy); skipped");
    }
    if skipped.len() > SKIPPED_SHOWN {
        let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
        for (kind, _) in &skipped[SKIPPED_SHOWN..] {
            *kinds.entry(kind).or_default() += 1;
        }
        let counts: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        eprintln!("note: {} more objects skipped: {}", skipped.len() - SKIPPED_SHOWN, counts.join(", "));
    }
    // Fields of a newer Kubernetes (`kubectl get -o yaml` of a newer cluster).
    for (e, n) in control::manifest::group_ignored(&state.ignored) {
        let more = if n > 1 { format!(" (and in {} more objects)", n - 1) } else { String::new() };
        eprintln!("warning: {e}{more}");
    }
    if state.namespaces.is_empty() && state.pods.is_empty() && state.policies.is_empty() {
        // As `kubectl apply` refuses an input without objects: an empty or
        // cut-short file is more likely than a question about nothing.
        bail!("the input holds no Namespace, Pod or NetworkPolicy (an empty or cut-short file?): nothing to answer about");
    }
    let compiled = policy_compiler::compile(&state.namespaces, &state.pods, &state.policies);
    // Pods that are not endpoints, named: a question about one fails with "no pod".
    let not_endpoints: Vec<&k8s_openapi::api::core::v1::Pod> = state
        .pods
        .iter()
        .filter(|p| {
            let ns = policy_compiler::validate::namespace_of(&p.metadata);
            compiled.cluster.pod(&ns, p.metadata.name.as_deref().unwrap_or_default()).is_none()
        })
        .collect();
    let left_out: Vec<String> = not_endpoints
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                policy_compiler::validate::namespace_of(&p.metadata),
                p.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    if !left_out.is_empty() {
        let more =
            if left_out.len() > 5 { format!(" and {} more", left_out.len() - 5) } else { String::new() };
        eprintln!(
            "note: {} pod(s) are not policy endpoints (no IP yet, host network, or finished; docs/semantics.md, rules 33 and 34): {}{more}",
            left_out.len(),
            left_out[..left_out.len().min(5)].join(", ")
        );
    }
    // Lints, not problems of the input (valid policies that do nothing,
    // compared with the pods at hand): the first few of each are shown.
    const LINTS_SHOWN: usize = 20;
    let named_ports = report::named_port_warnings(&compiled.cluster);
    // A selector matching only such pods is no mistake.
    static NO_LABELS: policy_compiler::selector::Labels = std::collections::BTreeMap::new();
    let namespaces: Vec<String> =
        not_endpoints.iter().map(|p| policy_compiler::validate::namespace_of(&p.metadata)).collect();
    let others: Vec<(&str, &policy_compiler::selector::Labels)> = not_endpoints
        .iter()
        .zip(&namespaces)
        .map(|(p, ns)| (ns.as_str(), p.metadata.labels.as_ref().unwrap_or(&NO_LABELS)))
        .collect();
    let selectors = report::selector_warnings(&compiled.cluster, &others);
    let problems: Vec<Problem> = compiled
        .problems
        .iter()
        .chain(named_ports.iter().take(LINTS_SHOWN))
        .chain(selectors.iter().take(LINTS_SHOWN))
        .cloned()
        .collect();
    let invalid = print_problems(&state, &problems, false);
    if named_ports.len() > LINTS_SHOWN {
        eprintln!(
            "warning: {} more rule ports name a container port no pod declares (not shown)",
            named_ports.len() - LINTS_SHOWN
        );
    }
    if selectors.len() > LINTS_SHOWN {
        eprintln!(
            "warning: {} more selectors match no pod or namespace of the input (not shown)",
            selectors.len() - LINTS_SHOWN
        );
    }
    if invalid > 0 && !args.allow_invalid {
        bail!(
            "{} invalid object(s); nothing applied (--allow-invalid goes on: an invalid policy is enforced fail-closed, an invalid field of another object is left out)",
            invalid
        );
    }
    Ok(compiled)
}

/// Prints compiler problems with the origins and lines of their objects, as
/// load errors are printed; returns the number of objects with an error.
fn print_problems(state: &control::manifest::State, problems: &[Problem], errors_only: bool) -> usize {
    let mut invalid = std::collections::BTreeSet::new();
    // Files read again to give each problem the line of its field (stdin cannot be).
    let mut texts: std::collections::HashMap<String, Option<String>> = Default::default();
    let (mut located, mut reparsed) = (0, 0usize);
    for p in problems.iter().filter(|p| !errors_only || p.severity == Severity::Error) {
        // Same shape as load errors: `severity: where[, line]: object: field: message`.
        let origin = state.origin_of(p.object.kind, &p.object.namespace, &p.object.name);
        // Each lookup parses the file again: the first problem gets a line,
        // the next ones (up to 50) while the text parsed for them stays under
        // 16 MiB, the same budget as the reader's own errors (a lookup
        // in a 10 MB JSON list of 10,000 pods and policies takes 0.35 s; the
        // problems not located still name their item, object and field).
        let line = origin.filter(|_| located < control::manifest::MAX_LOCATED).and_then(|o| {
            let first = located == 0;
            // Only a regular file can be read again (a FIFO would wait for a
            // writer that has gone: `-s <(...)`, `mkfifo`).
            let text = texts.entry(o.file.clone()).or_insert_with(|| {
                std::fs::metadata(&o.file)
                    .is_ok_and(|m| m.is_file())
                    .then(|| std::fs::read_to_string(&o.file).ok())
                    .flatten()
            });
            let text = text.as_deref()?;
            reparsed += text.len();
            located += 1;
            (first || reparsed <= control::manifest::MAX_LOCATED_BYTES).then(|| o.line_of(text, &p.field))?
        });
        let at = match (origin, line) {
            (Some(o), Some(l)) => format!("{o}, line {l}: "),
            (Some(o), None) => format!("{o}: "),
            _ => String::new(),
        };
        let severity = if p.severity == Severity::Error { "error" } else { "warning" };
        eprintln!("{severity}: {at}{}: {}: {}", p.object, p.field, p.message);
        if p.severity == Severity::Error {
            invalid.insert((p.object.kind, &p.object.namespace, &p.object.name));
        }
    }
    invalid.len()
}

/// What `run --check` finds: the checks of a start that touch nothing (the
/// configuration is already loaded and checked), and what would run.
fn check_run(config: &control::config::Config, file: Option<&str>, args: &RunArgs) -> Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let file = file.unwrap_or("none (defaults)");
    writeln!(out, "config: {file}")?;
    let sources: Vec<String> = [args.kube.then(|| "the Kubernetes API".to_string())]
        .into_iter()
        .flatten()
        .chain(args.manifests.iter().map(|d| format!("manifests in {d}")))
        .collect();
    control::run::check_start(args.kube, args.manifests.as_deref(), config)?;
    writeln!(out, "policy source: {}", sources.join(" and "))?;
    if config.ports.is_empty() {
        writeln!(out, "ports: none (compile and serve status only)")?;
    } else {
        writeln!(out, "mode: {:?}, enforce: {}", config.mode, config.enforce)?;
        for p in &config.ports {
            let (ifindex, queues, rx) = dataplane::port::Port::plan(&p.interface, Some(p.queues))?;
            writeln!(out, "port {}: ifindex {ifindex}, {queues} of {rx} RX queues bound", p.interface)?;
        }
        let cores = config.worker_cores(&[]);
        // A core outside the cpuset is no error at start (that worker runs
        // unpinned, with a warning): said here too.
        let allowed = control::cpus::current().unwrap_or_default();
        let outside: Vec<usize> = cores.iter().copied().filter(|c| !allowed.contains(c)).collect();
        if outside.is_empty() {
            writeln!(out, "workers on cores: {cores:?}")?;
        } else {
            writeln!(
                out,
                "workers on cores: {cores:?}; warning: {outside:?} not in this process's cpuset {allowed:?}: \
                 those workers would run unpinned"
            )?;
        }
    }
    writeln!(out, "status: {}", config.status_address)?;
    writeln!(out, "ok: nothing attached (--check)")?;
    Ok(out)
}

/// Runs a command; its exit status when it did not fail (`query --exit-code`
/// fails a denied connection without an error).
fn run(cli: Cli) -> Result<ExitCode> {
    // Answers go through one buffer; a reader that stops early (`| head`)
    // ends the command quietly (see `main`).
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut denied = false;
    match cli.command {
        Command::Lab(args) => control::lab::run(args)?,
        Command::Run(args) => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            // Colours only on a terminal: logs in files and journald stay plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let fmt = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(ansi);
            match args.log_format {
                LogFormat::Json => fmt.json().init(),
                LogFormat::Text => fmt.init(),
            }
            control::panics::install(true);
            tracing::info!(version = env!("CARGO_PKG_VERSION"), commit = control::COMMIT, "portcullis");
            let (mut config, from) = control::config::Config::load_for_run(args.config.as_deref())?;
            match &from {
                Some(path) => tracing::info!(config = %path, "configuration file"),
                None => tracing::info!(
                    "no configuration file ({} absent): defaults, no ports",
                    control::config::DEFAULT_CONFIG_PATH
                ),
            }
            if let Some(a) = args.status_address {
                config.status_address = a;
            }
            config.fail_open |= args.fail_open;
            // Addresses written in the file are the operator's; those of the
            // environment come from the DaemonSet, on every node whatever its mode.
            let from_file = !config.node_addresses.is_empty();
            config.node_addresses.extend(args.node_addresses.iter().flatten());
            let dropped = config.drop_unanchored_node_addresses();
            if !dropped.is_empty() {
                let why = "mode wire with no port marked `node: true`: the node's addresses get no exemption \
                           (either side of the wire could send with them); if this node's own stack is behind \
                           one of the ports, mark that port to allow its probes";
                if from_file {
                    tracing::warn!(addresses = ?dropped, "{why}");
                } else {
                    tracing::info!(addresses = ?dropped, "{why}");
                }
            }
            if !config.node_addresses.is_empty() {
                tracing::info!(addresses = ?config.node_addresses, "node addresses: connections from them into pods are allowed");
            }
            let no_pod = config.ports.iter().all(|p| p.pod.is_none());
            if config.mode == control::config::Mode::Switch && no_pod && config.link_prefixes.is_some() {
                tracing::warn!(
                    "link_prefixes has no effect in mode switch when no port names its pod: only pod ports \
                     and wires check neighbour discovery"
                );
            }
            if config.mode == control::config::Mode::Wire && config.link_prefixes.is_none() && config.enforce
            {
                tracing::warn!(
                    "mode wire without link_prefixes: IPv6 neighbour discovery crosses the wire unchecked \
                     (it passes without policy, so a pod can address it beyond the link, past its egress \
                     policy); give the segment's IPv6 prefixes in link_prefixes to keep it on the link"
                );
            }
            if let Some(n) = &args.node_name {
                tracing::info!(node = %n, "node name");
            }
            if !config.ports.is_empty() && config.workers == control::config::Workers::Auto {
                // Without the cpuset, auto would put every worker on core 0.
                let allowed = control::cpus::current().map_err(|e| {
                    anyhow!("workers: auto: cannot read the CPU affinity ({e}); list the worker cores in the config instead")
                })?;
                config.resolve_workers(&allowed);
                tracing::info!(workers = ?config.workers, "workers: auto: one per queue, on the last cores of the cpuset");
                let cores = config.worker_cores(&[]);
                let distinct: std::collections::BTreeSet<_> = cores.iter().collect();
                if distinct.len() < cores.len() {
                    tracing::warn!(
                        workers = ?cores,
                        "workers: auto: fewer cores in the cpuset than queues; workers share cores"
                    );
                }
            }
            if args.print_config {
                write!(out, "{}", serde_yaml::to_string(&config)?)?;
                out.flush()?;
                return Ok(ExitCode::SUCCESS);
            }
            if args.check {
                write!(out, "{}", check_run(&config, from.as_deref(), &args)?)?;
                out.flush()?;
                return Ok(ExitCode::SUCCESS);
            }
            if !config.ports.is_empty() {
                let cores = config.worker_cores(&[]);
                // Before any other thread starts, so that all of them inherit it.
                match control::cpus::keep_off_workers(&cores) {
                    Ok(p) if p.shared_with_workers => tracing::warn!(
                        cores = ?p.cores,
                        workers = ?cores,
                        "every core of the cpuset has a worker: the control plane (watches, compiles, \
                         status) shares their cores and can stall them; give the container one more core"
                    ),
                    Ok(p) => tracing::info!(cores = ?p.cores, "control plane kept off the worker cores"),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read or set the CPU affinity; the control plane may run on worker cores")
                    }
                }
            }
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(control::run::run(control::run::RunOptions {
                kube: args.kube,
                manifests: args.manifests,
                config,
            }))?;
        }
        Command::Check(args) => {
            let c = load(&args)?;
            let s = c.table.stats();
            // Namespaces only pods or policies name are counted, and said to be assumed.
            let assumed = match c.cluster.assumed.len() {
                0 => String::new(),
                n => format!(" ({n} assumed)"),
            };
            // With `--allow-invalid` the input compiles, but a check still
            // fails on invalid objects: its status is the input's.
            let invalid: std::collections::BTreeSet<_> =
                c.problems.iter().filter(|p| p.severity == Severity::Error).map(|p| &p.object).collect();
            let [ingress, egress] = c.table.isolated_pods();
            writeln!(
                out,
                "{}: {}{assumed}, {}, {}; {} isolated for ingress, {egress} for egress",
                if invalid.is_empty() { "ok" } else { "invalid input, compiled anyway" },
                report::count(s.namespaces, "namespace", "namespaces"),
                report::count(s.pods, "pod", "pods"),
                report::count(s.policies, "policy", "policies"),
                report::count(ingress, "pod", "pods"),
            )?;
            if !invalid.is_empty() {
                bail!(
                    "{} invalid object(s); compiled anyway (--allow-invalid: an invalid policy is enforced fail-closed, an invalid field of another object is left out)",
                    invalid.len()
                );
            }
        }
        Command::Query(args) => {
            if args.from.is_none() {
                check_batch_args(&args)?;
            }
            let c = load(&args.state)?;
            match (&args.from, &args.to) {
                (Some(from), Some(to)) => {
                    let (src, dst, proto, port) = resolve_flow(&c, from, to, &args.flow)?;
                    let v = c.table.verdict_both(src, dst, proto, port);
                    denied = args.exit_code && !v.allowed();
                    match args.output.unwrap_or(Output::Text) {
                        Output::Text => {
                            writeln!(out, "{}", report::verdict_line(&c.table, src, dst, proto, port, &v))?
                        }
                        Output::Json => {
                            writeln!(out, "{}", report::verdict_json(&c.table, src, dst, proto, port, &v))?
                        }
                    }
                }
                _ => batch(&c, &mut out)?,
            }
        }
        Command::Explain(args) => {
            let c = load(&args.state)?;
            let (src, dst, proto, port) = resolve_flow(&c, &args.from, &args.to, &args.flow)?;
            write!(out, "{}", report::explain(&c, src, dst, proto, port))?;
        }
        Command::Matrix(args) => {
            let c = load(&args.state)?;
            let ports: Vec<Option<u16>> =
                if args.port.is_empty() { vec![None] } else { args.port.iter().map(|p| Some(*p)).collect() };
            let mut all = Vec::new();
            for p in &args.protocol {
                let proto = parse_protocol(p).map_err(|e| anyhow!(e))?;
                // ICMP over IPv4, ICMPv6 over IPv6.
                let family = report::family_for(proto, args.family).map_err(|e| anyhow!(e))?;
                if policy_compiler::Protocol::from_number(proto).is_none() {
                    // No ports to probe (ICMP, ...): one matrix, whatever --port says.
                    all.push(report::matrix(&c, proto, None, family));
                    continue;
                }
                for port in &ports {
                    all.push(report::matrix(&c, proto, *port, family));
                }
            }
            match args.output {
                Output::Json => {
                    serde_json::to_writer_pretty(&mut out, &all)?;
                    writeln!(out)?;
                }
                Output::Text => {
                    for (i, m) in all.iter().enumerate() {
                        if i > 0 {
                            writeln!(out)?;
                        }
                        write!(out, "{}", m.render())?;
                    }
                }
            }
        }
    }
    // A reader that left early takes the answer, not the exit status: a
    // denial is still 1 (`... --exit-code | head -0`).
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe && denied => {}
        r => r?,
    }
    Ok(if denied { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// Batch mode takes everything but the state from its JSON lines, and stdin is theirs.
fn check_batch_args(args: &QueryArgs) -> Result<()> {
    let f = &args.flow;
    for (given, flag) in [
        (f.protocol.is_some(), "--protocol"),
        (f.port.is_some(), "--port"),
        (f.family.is_some(), "--family"),
        (args.output == Some(Output::Text), "--output text"),
    ] {
        if given {
            bail!("{flag} is for a single query (--from and --to); batch mode reads each query's protocol and port from its JSON line and prints JSON lines");
        }
    }
    // `-`, or a name for it (`/dev/stdin`, `/proc/self/fd/0`): the same file as stdin.
    let stdin_file = |path: &str| {
        use std::os::unix::fs::MetadataExt;
        let id = |m: &std::fs::Metadata| (m.dev(), m.ino());
        matches!((std::fs::metadata(path), std::fs::metadata("/dev/stdin")), (Ok(a), Ok(b)) if id(&a) == id(&b))
    };
    if args.state.state.iter().any(|s| s == "-" || stdin_file(s)) {
        bail!("batch mode reads its queries from stdin, so the state cannot come from stdin too (--state -): give it as a file");
    }
    Ok(())
}

/// Addresses, protocol and port of a single question; both addresses of one family.
fn resolve_flow(c: &Compiled, from: &str, to: &str, f: &FlowSpec) -> Result<(IpAddr, IpAddr, u8, u16)> {
    let proto = parse_protocol(f.protocol.as_deref().unwrap_or("TCP")).map_err(|e| anyhow!(e))?;
    let port = report::flow_port(proto, f.port).map_err(|e| anyhow!(e))?;
    let (src, dst) = report::resolve_pair(c, from, to, proto, f.family).map_err(|e| anyhow!(e))?;
    Ok((src, dst, proto, port))
}

/// One JSON query per line in, one JSON answer per line out. A bad line gets
/// `{"line": N, "error": "..."}` and the batch goes on; the command fails at
/// the end when any line was bad.
fn batch(c: &Compiled, out: &mut impl Write) -> Result<()> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Query {
        src: String,
        dst: String,
        #[serde(default = "tcp")]
        protocol: serde_json::Value,
        /// Read wide, so that 70000 gets the same message as 0.
        #[serde(default)]
        port: Option<i64>,
        /// 4 or 6, for pods given by name (as --family).
        #[serde(default)]
        family: Option<serde_json::Value>,
    }
    fn tcp() -> serde_json::Value {
        serde_json::Value::String("TCP".into())
    }
    // Our own buffer, which says when it is empty without waiting for input.
    let mut stdin = std::io::BufReader::with_capacity(1 << 16, std::io::stdin().lock());
    let (mut queries, mut bad) = (0usize, 0usize);
    let mut raw = Vec::new();
    for i in 0.. {
        raw.clear();
        // Answers already given go out before waiting for more questions, so a
        // program can ask, read the answer, then ask again; a batch on a file
        // or pipe still writes in large blocks.
        if !stdin.buffer().contains(&b'\n') {
            out.flush()?;
        }
        if stdin.read_until(b'\n', &mut raw).context("reading stdin")? == 0 {
            break;
        }
        // A line that is not UTF-8 is a bad line like any other, not the end of the batch.
        let line = std::str::from_utf8(&raw).map_err(|e| {
            format!(
                "not UTF-8 text (byte {} of the line); queries are JSON, which is UTF-8",
                e.valid_up_to() + 1
            )
        });
        // A byte-order mark (Windows tools write one at the start of a file).
        let line = line.map(|l| l.trim_start_matches('\u{feff}'));
        if line.as_ref().is_ok_and(|l| l.trim().is_empty()) {
            continue;
        }
        queries += 1;
        let answer = (|| -> Result<serde_json::Value, String> {
            // serde names Rust types (`i64`); a JSON writer thinks in numbers.
            let text = line?;
            let q: Query = serde_json::from_str(text).map_err(|e| json_error(text, &e))?;
            let family = match &q.family {
                None => None,
                Some(v) => Some(
                    parse_family(v.as_str().map_or(v.to_string(), str::to_string).as_str())
                        .map_err(|e| format!("family: {e}"))?,
                ),
            };
            let proto = match &q.protocol {
                serde_json::Value::String(s) => parse_protocol(s)?,
                // A number as on the command line (the same range and message).
                serde_json::Value::Number(n) => parse_protocol(&n.to_string())?,
                other => return Err(format!("protocol must be a name or number, got {other}")),
            };
            let port = match q.port {
                Some(p) => Some(
                    u16::try_from(p).map_err(|_| format!("port {p} is not a destination port (1-65535)"))?,
                ),
                None => None,
            };
            let port = report::flow_port(proto, port)?;
            let (src, dst) = report::resolve_pair(c, &q.src, &q.dst, proto, family)?;
            let v = c.table.verdict_both(src, dst, proto, port);
            Ok(report::verdict_json(&c.table, src, dst, proto, port, &v))
        })();
        match answer {
            Ok(mut v) => {
                // The line it answers: blank lines get no answer, so counting
                // answers is not counting lines.
                if let Some(o) = v.as_object_mut() {
                    o.insert("line".into(), (i + 1).into());
                }
                serde_json::to_writer(&mut *out, &v)?
            }
            Err(e) => {
                bad += 1;
                serde_json::to_writer(&mut *out, &serde_json::json!({"line": i + 1, "error": e}))?
            }
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    if bad > 0 {
        bail!("{bad} of {queries} queries could not be answered (their lines say why)");
    }
    Ok(())
}

/// A batch line's JSON error, for a person: JSON's words for Rust's types,
/// without serde's position in a one-line text (the answer names the line),
/// and a hint for what a line usually is when it is no query.
fn json_error(text: &str, e: &serde_json::Error) -> String {
    let mut m = e.to_string().replace("expected i64", "expected a number");
    if let Some(at) = m.rfind(" at line ") {
        m.truncate(at);
        if !e.is_eof() {
            m.push_str(&format!(" (column {})", e.column()));
        }
    }
    let t = text.trim();
    if t.starts_with('[') {
        m.push_str(": each line holds one query object, not a list (`jq -c '.[]'` writes them so)");
    } else if e.is_eof() || !t.starts_with('{') {
        m.push_str(": each line holds one whole query object, as `jq -c` writes them");
    }
    m
}

fn main() -> ExitCode {
    // Expected panics (a parser's, turned into errors) stay quiet; `run` logs the others.
    control::panics::install(false);
    match run(Cli::parse()) {
        Ok(status) => status,
        // The reader went away (`portcullis matrix ... | head`): nothing left to say.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // 1 is `query --exit-code`'s "denied": an error must not pass for one.
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>().and_then(|e| e.io_error_kind())
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}
