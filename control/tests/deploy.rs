//! The Kubernetes manifests in `deploy/` are what an operator applies as they are
//! (`kubectl apply -k deploy/`), so they are checked like code:
//!
//! * every manifest parses strictly into the `k8s-openapi` type of its kind (an unknown or
//!   misplaced field fails, as `kubectl apply --validate=strict` would);
//! * `kustomization.yaml` lists exactly the manifest files;
//! * the ConfigMap's `config.yaml` is a valid daemon configuration, and the probes, the
//!   container port and the configured status address agree on one port;
//! * the container is unprivileged, drops every capability and adds exactly the documented
//!   ones; the ClusterRole only reads namespaces, pods and networkpolicies;
//! * `monitoring/` alerts as docs/operations.md says, in PromQL that parses, and passes
//!   `promtool check rules` and its unit tests (`monitoring/alerts.test.yaml`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use control::config::{Config, DEFAULT_STATUS_ADDRESS};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, ResourceQuota, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Deserialize;

const NAMESPACE: &str = "portcullis-system";
const CONFIG_PATH: &str = "/etc/portcullis/config.yaml";
/// The capabilities the container adds: each must be explained in a comment in
/// `daemonset.yaml` and in `docs/deployment.md`.
const CAPABILITIES: [&str; 4] = ["BPF", "IPC_LOCK", "NET_ADMIN", "NET_RAW"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Manifest files of `deploy/` (every `*.yaml`/`*.yml` but the kustomization), by name.
fn manifest_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(deploy())
        .expect("deploy/ exists")
        .map(|e| e.expect("readable entry").file_name().to_string_lossy().into_owned())
        .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && n != "kustomization.yaml")
        .collect();
    names.sort();
    names
}

/// One YAML document into `T`, failing on any field `T` does not know.
fn try_strict<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, String> {
    let mut unknown = Vec::new();
    let de = serde_yaml::Deserializer::from_str(text);
    // serde_ignored writes `?` for every Option on the way: leave those out of the path.
    let value = serde_ignored::deserialize(de, |p| unknown.push(p.to_string().replace(".?", "")))
        .map_err(|e| format!("{file}: {e}"))?;
    if unknown.is_empty() {
        Ok(value)
    } else {
        Err(format!("{file}: unknown fields {unknown:?}"))
    }
}

fn strict<T: DeserializeOwned>(file: &str, text: &str) -> T {
    try_strict(file, text).unwrap_or_else(|e| panic!("{e}"))
}

fn load<T: DeserializeOwned>(file: &str) -> T {
    strict(file, &read(&deploy().join(file)))
}

/// The file holding the one object of `kind`.
fn file_of_kind(kind: &str) -> String {
    let files: Vec<String> = manifest_files()
        .into_iter()
        .filter(|f| {
            let v: serde_yaml::Value = serde_yaml::from_str(&read(&deploy().join(f))).expect("YAML");
            v.get("kind").and_then(|k| k.as_str()) == Some(kind)
        })
        .collect();
    assert_eq!(files.len(), 1, "expected exactly one {kind} in deploy/, found {files:?}");
    files.into_iter().next().unwrap()
}

fn daemonset() -> DaemonSet {
    load(&file_of_kind("DaemonSet"))
}

fn pod_spec(ds: &DaemonSet) -> PodSpec {
    ds.spec.template.spec.clone().expect("DaemonSet has a pod template spec")
}

fn container(ds: &DaemonSet) -> Container {
    let spec = pod_spec(ds);
    assert_eq!(spec.containers.len(), 1, "one container");
    assert!(spec.init_containers.is_none(), "no init containers (they would need their own privileges)");
    spec.containers[0].clone()
}

fn default_port() -> u16 {
    DEFAULT_STATUS_ADDRESS.parse::<SocketAddr>().expect("valid default").port()
}

fn config_map() -> ConfigMap {
    load(&file_of_kind("ConfigMap"))
}

fn daemon_config() -> Config {
    let cm = config_map();
    let text = cm.data.as_ref().and_then(|d| d.get("config.yaml")).expect("ConfigMap has config.yaml");
    Config::parse("deploy ConfigMap config.yaml", text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_manifest_parses_strictly_into_the_type_of_its_kind() {
    let files = manifest_files();
    assert!(!files.is_empty());
    let mut kinds = BTreeSet::new();
    for f in &files {
        let text = read(&deploy().join(f));
        let generic: serde_yaml::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{f}: one YAML document per file: {e}"));
        let kind = generic.get("kind").and_then(|k| k.as_str()).unwrap_or_else(|| panic!("{f}: no kind"));
        let metadata = match kind {
            "Namespace" => strict::<Namespace>(f, &text).metadata,
            "ServiceAccount" => strict::<ServiceAccount>(f, &text).metadata,
            "ClusterRole" => strict::<ClusterRole>(f, &text).metadata,
            "ClusterRoleBinding" => strict::<ClusterRoleBinding>(f, &text).metadata,
            "ResourceQuota" => strict::<ResourceQuota>(f, &text).metadata,
            "ConfigMap" => strict::<ConfigMap>(f, &text).metadata,
            "DaemonSet" => strict::<DaemonSet>(f, &text).metadata,
            other => panic!("{f}: kind {other} has no check here; add its k8s-openapi type"),
        };
        let cluster_scoped = matches!(kind, "Namespace" | "ClusterRole" | "ClusterRoleBinding");
        let name = metadata.name.as_deref().unwrap_or_else(|| panic!("{f}: metadata.name"));
        if kind == "Namespace" {
            assert_eq!(name, NAMESPACE, "{f}");
        }
        assert_eq!(
            metadata.namespace.as_deref(),
            if cluster_scoped { None } else { Some(NAMESPACE) },
            "{f}: {kind} {name} namespace"
        );
        let labels = metadata.labels.unwrap_or_default();
        assert_eq!(labels.get("app.kubernetes.io/name").map(String::as_str), Some("portcullis"), "{f}");
        assert!(kinds.insert(kind.to_string()), "{f}: a second {kind}");
    }
    for needed in
        ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"]
    {
        assert!(kinds.contains(needed), "deploy/ has no {needed}");
    }
}

#[test]
fn strict_parsing_catches_typos_and_misplaced_fields() {
    // The check above is only worth something if a typo fails it, however deep.
    let ds = read(&deploy().join(file_of_kind("DaemonSet")));
    let typo = ds.replacen("hostNetwork: true", "hostNetwork: true\n      hostNetworking: true", 1);
    let e = try_strict::<DaemonSet>("typo", &typo).unwrap_err();
    assert!(e.contains("spec.template.spec.hostNetworking"), "{e}");
    // `drop` one level too high: inside securityContext instead of capabilities.
    let misplaced = ds.replacen("              drop: [\"ALL\"]\n", "", 1).replacen(
        "            readOnlyRootFilesystem: true\n",
        "            readOnlyRootFilesystem: true\n            drop: [\"ALL\"]\n",
        1,
    );
    let e = try_strict::<DaemonSet>("misplaced", &misplaced).unwrap_err();
    assert!(e.contains("securityContext.drop"), "{e}");
    let role = read(&deploy().join(file_of_kind("ClusterRole"))).replacen("verbs:", "verb:", 1);
    assert!(try_strict::<ClusterRole>("role", &role).is_err());
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    api_version: String,
    kind: String,
    resources: Vec<String>,
    #[serde(default)]
    images: Vec<KustomizeImage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KustomizeImage {
    name: String,
    new_name: Option<String>,
    new_tag: Option<String>,
}

#[test]
fn kustomization_lists_every_manifest_and_nothing_else() {
    let k: Kustomization = load("kustomization.yaml");
    assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k.kind, "Kustomization");
    let listed: BTreeSet<&str> = k.resources.iter().map(String::as_str).collect();
    assert_eq!(listed.len(), k.resources.len(), "a resource is listed twice: {:?}", k.resources);
    let files = manifest_files();
    let present: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    assert_eq!(
        listed,
        present,
        "kustomization.yaml resources vs files in deploy/ (missing: {:?}, extra: {:?})",
        present.difference(&listed).collect::<Vec<_>>(),
        listed.difference(&present).collect::<Vec<_>>()
    );
    // The namespace must exist before the objects in it.
    assert_eq!(k.resources.first().map(String::as_str), Some(file_of_kind("Namespace").as_str()));
    // `kustomize edit set image portcullis=...` must reach the DaemonSet's image.
    let image = container(&daemonset()).image.expect("image");
    let image_name = image.rsplit_once(':').map_or(image.as_str(), |(n, _)| n);
    assert_eq!(k.images.len(), 1, "kustomization.yaml sets the one image");
    for i in &k.images {
        assert_eq!(i.name, image_name, "images[].name must match the DaemonSet image {image}");
        assert!(i.new_name.is_some() || i.new_tag.is_some());
    }
}

#[test]
fn configmap_holds_a_valid_config_on_the_default_status_port() {
    let c = daemon_config();
    assert_eq!(c.status_address.port(), default_port(), "config.yaml status_address port");
    assert!(!c.ports.is_empty(), "the example configures ports");
    let cm = config_map();
    assert_eq!(cm.data.as_ref().map(BTreeMap::len), Some(1), "config.yaml only");

    // The container reads that file: the ConfigMap is mounted where --config points.
    let ds = daemonset();
    let spec = pod_spec(&ds);
    let vol = spec
        .volumes
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.config_map.as_ref().map(|c| c.name.as_str()) == cm.metadata.name.as_deref())
        .expect("a volume from the ConfigMap");
    let mount = container(&ds)
        .volume_mounts
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.name == vol.name)
        .expect("the ConfigMap volume is mounted");
    assert_eq!(format!("{}/config.yaml", mount.mount_path), CONFIG_PATH);
    assert_eq!(mount.read_only, Some(true));
}

fn probe_port(c: &Container, port: &IntOrString) -> i32 {
    match port {
        IntOrString::Int(p) => *p,
        IntOrString::String(name) => {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .unwrap_or_else(|| panic!("no container port named {name}"))
                .container_port
        }
    }
}

#[test]
fn probes_hit_healthz_and_readyz_on_the_default_status_port() {
    let c = container(&daemonset());
    let want = i32::from(default_port());
    for (probe, path) in [(&c.liveness_probe, "/healthz"), (&c.readiness_probe, "/readyz")] {
        let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("{path} probe"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(probe_port(&c, &get.port), want, "{path} probe port");
        assert!(get.host.is_none(), "probe the pod (= node) address, where [::] listens");
    }
    let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
    assert_eq!(ports, vec![want], "declared container port");
    // The scrape annotations point at the same port and at /metrics.
    let ds = daemonset();
    let annotations =
        ds.spec.template.metadata.and_then(|m| m.annotations).expect("pod template annotations");
    assert_eq!(annotations.get("prometheus.io/scrape").map(String::as_str), Some("true"));
    assert_eq!(annotations.get("prometheus.io/port"), Some(&want.to_string()), "scrape port");
    assert_eq!(annotations.get("prometheus.io/path").map(String::as_str), Some("/metrics"));
}

#[test]
fn container_is_unprivileged_and_adds_exactly_the_documented_capabilities() {
    let ds = daemonset();
    let c = container(&ds);
    let sc = c.security_context.expect("container securityContext");
    assert_ne!(sc.privileged, Some(true), "never privileged");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "drop ALL, and only that");
    let added: Vec<String> = caps.add.unwrap_or_default();
    let added_set: BTreeSet<&str> = added.iter().map(String::as_str).collect();
    assert_eq!(added_set.len(), added.len(), "a capability is added twice: {added:?}");
    assert_eq!(added_set, CAPABILITIES.into_iter().collect(), "added capabilities");

    // Each one is explained where it is granted and in the deployment guide.
    let manifest = read(&deploy().join(file_of_kind("DaemonSet")));
    let guide = read(&repo().join("docs/deployment.md"));
    for cap in CAPABILITIES {
        assert!(
            manifest.lines().any(|l| l.trim_start().starts_with(&format!("# {cap}:"))),
            "daemonset.yaml: no `# {cap}: why` comment"
        );
        assert!(guide.contains(&format!("CAP_{cap}")), "docs/deployment.md does not explain CAP_{cap}");
    }

    // Nothing else that would widen what the pod can reach.
    let spec = pod_spec(&ds);
    assert_eq!(spec.host_network, Some(true), "the ports are host interfaces");
    assert_ne!(spec.host_pid, Some(true));
    assert_ne!(spec.host_ipc, Some(true));
    for v in spec.volumes.iter().flatten() {
        assert!(v.host_path.is_none(), "volume {} mounts a host path", v.name);
    }
}

#[test]
fn cluster_role_only_reads_namespaces_pods_and_networkpolicies() {
    let role: ClusterRole = load(&file_of_kind("ClusterRole"));
    assert!(role.aggregation_rule.is_none());
    // What the watchers use (list, then watch; the health probe is a list): not even `get`.
    let read_only: BTreeSet<&str> = ["list", "watch"].into();
    let mut granted = BTreeSet::new();
    for (i, r) in role.rules.iter().flatten().enumerate() {
        assert!(r.non_resource_urls.is_none() && r.resource_names.is_none(), "rules[{i}]");
        let verbs: BTreeSet<&str> = r.verbs.iter().map(String::as_str).collect();
        assert_eq!(verbs, read_only, "rules[{i}] verbs");
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                assert!(!g.contains('*') && !res.contains('*'), "rules[{i}]: no wildcards");
                granted.insert((g.clone(), res.clone()));
            }
        }
    }
    let want: BTreeSet<(String, String)> =
        [("", "namespaces"), ("", "pods"), ("networking.k8s.io", "networkpolicies")]
            .into_iter()
            .map(|(g, r)| (g.to_string(), r.to_string()))
            .collect();
    assert_eq!(granted, want);

    // Bound to the DaemonSet's service account, cluster-wide.
    let binding: ClusterRoleBinding = load(&file_of_kind("ClusterRoleBinding"));
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(binding.role_ref.name.as_str()), role.metadata.name.as_deref());
    let sa: ServiceAccount = load(&file_of_kind("ServiceAccount"));
    let subjects = binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(subjects[0].name.as_str()), sa.metadata.name.as_deref());
    assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(pod_spec(&daemonset()).service_account_name, sa.metadata.name);
}

/// CPU quantity in millicores.
fn millicores(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().expect("millicores"),
        None => q.parse::<u64>().expect("whole CPUs") * 1000,
    }
}

#[test]
fn daemonset_runs_the_daemon_as_the_docs_describe() {
    let ds = daemonset();
    let spec = pod_spec(&ds);
    let c = container(&ds);
    assert_eq!(
        c.args,
        Some(["run", "--kube", "--config", CONFIG_PATH].map(String::from).to_vec()),
        "container args"
    );
    assert!(c.command.is_none(), "the image's ENTRYPOINT is the binary");
    let node_name = c.env.iter().flatten().find(|e| e.name == "NODE_NAME").expect("NODE_NAME env");
    let field = node_name.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).expect("downward API");
    assert_eq!(field.field_path, "spec.nodeName");

    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(spec.priority_class_name.as_deref(), Some("system-node-critical"));
    let selector = spec.node_selector.clone().unwrap_or_default();
    assert_eq!(selector.get("portcullis.io/dataplane").map(String::as_str), Some("true"));
    // Every taint tolerated (a maintenance NoExecute taint must not evict the enforcer).
    assert!(
        spec.tolerations
            .clone()
            .unwrap_or_default()
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
        "a toleration of every taint"
    );
    assert!(spec.termination_grace_period_seconds.is_some_and(|s| s > 0));

    // Guaranteed QoS with whole CPUs, so the static CPU manager gives exclusive cores, and
    // enough of them for the configured workers plus the control plane.
    let res = c.resources.expect("resources");
    let (req, lim) = (res.requests.expect("requests"), res.limits.expect("limits"));
    assert_eq!(req, lim, "requests == limits (Guaranteed QoS)");
    for r in ["cpu", "memory"] {
        assert!(lim.contains_key(r), "{r} limit");
    }
    let cpu = millicores(&lim["cpu"].0);
    assert_eq!(cpu % 1000, 0, "whole CPUs, for exclusive cores");
    let config = daemon_config();
    let workers = config.worker_cores(&(0..(cpu / 1000) as usize).collect::<Vec<_>>()).len() as u64;
    assert!(cpu / 1000 > workers, "{} CPUs for {workers} workers and the control plane", cpu / 1000);

    // One node at a time, and never two pods on one node (they would fight for the queues).
    let strategy = ds.spec.update_strategy.clone().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let ru = strategy.rolling_update.expect("rollingUpdate");
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(1)));
    assert!(matches!(ru.max_surge, None | Some(IntOrString::Int(0))), "maxSurge 0");
    // The next node waits until this one has been ready (first sync done) for a while.
    assert!(ds.spec.min_ready_seconds.is_some_and(|s| s > 0), "minReadySeconds");
}

/// `deploy/monitoring/`: the optional Prometheus Operator manifests. Every
/// alert's expression parses as PromQL and names only metrics that
/// docs/operations.md documents (besides kube-state-metrics' and `up` for the
/// daemon-down alerts); the alerts are those of its "What to alert on" table,
/// each row at least one; the PodMonitor scrapes the DaemonSet's pods on its
/// status port.
#[test]
fn monitoring_manifests_alert_as_the_operations_guide_says() {
    #[derive(Deserialize)]
    struct Doc {
        kind: String,
        spec: serde_yaml::Value,
    }
    let dir = deploy().join("monitoring");
    let kustomization: serde_yaml::Value =
        serde_yaml::from_str(&read(&dir.join("kustomization.yaml"))).unwrap();
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, BTreeSet::from(["podmonitor.yaml".to_string(), "prometheusrule.yaml".to_string()]));
    let ops = read(&repo().join("docs/operations.md"));
    // Metric names in the metrics table (`X` / `_suffix` names a sibling of X).
    let mut documented = BTreeSet::new();
    for line in ops.lines().filter(|l| l.starts_with("| `portcullis_")) {
        let first = line.split(" | ").next().unwrap();
        let mut last = String::new();
        for token in first.split('`').skip(1).step_by(2) {
            let name = match token.strip_prefix('_') {
                Some(suffix) => format!("{}_{suffix}", &last[..last.rfind('_').unwrap()]),
                None => token.to_string(),
            };
            documented.insert(name.clone());
            last = name;
        }
    }
    assert!(documented.contains("portcullis_conntrack_capacity"), "{documented:?}");
    // The alert table's rows.
    let section = ops.split("## What to alert on").nth(1).unwrap().split("\n## ").next().unwrap();
    let rows: Vec<String> = section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| alert ") && !l.starts_with("|---"))
        .map(|l| {
            let name = l.trim_start_matches("| ").split(" | ").next().unwrap();
            let camel: String = name.split(' ').map(|w| w[..1].to_uppercase() + &w[1..]).collect();
            format!("Portcullis{camel}")
        })
        .collect();
    assert!(rows.len() >= 10, "{rows:?}");
    let rule: Doc = serde_yaml::from_str(&read(&dir.join("prometheusrule.yaml"))).unwrap();
    assert_eq!(rule.kind, "PrometheusRule");
    let mut alerts = Vec::new();
    for group in rule.spec["groups"].as_sequence().unwrap() {
        for r in group["rules"].as_sequence().unwrap() {
            let name = r["alert"].as_str().unwrap().to_string();
            let expr = r["expr"].as_str().unwrap();
            promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{name}: {expr}: {e}"));
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            for metric in words.filter(|w| w.starts_with("portcullis_")) {
                assert!(
                    documented.contains(metric),
                    "{name} uses {metric}, not in docs/operations.md's metrics"
                );
            }
            if !name.starts_with("PortcullisDaemonDown") {
                assert!(!expr.contains("kube_") && !expr.contains("up{"), "{name}: {expr}");
            }
            for key in ["summary", "description"] {
                assert!(r["annotations"][key].as_str().is_some_and(|s| !s.is_empty()), "{name} lacks {key}");
            }
            assert!(
                ["critical", "warning", "info"].contains(&r["labels"]["severity"].as_str().unwrap_or("")),
                "{name}: severity"
            );
            alerts.push(name);
        }
    }
    for row in &rows {
        assert!(alerts.iter().any(|a| a.starts_with(row.as_str())), "no alert for the row {row}");
    }
    for a in &alerts {
        assert!(rows.iter().any(|r| a.starts_with(r.as_str())), "{a} is in no row of the table");
    }
    // The PodMonitor selects the DaemonSet's pods and scrapes the port the probes use.
    let monitor: Doc = serde_yaml::from_str(&read(&dir.join("podmonitor.yaml"))).unwrap();
    assert_eq!(monitor.kind, "PodMonitor");
    let ds = daemonset();
    let labels = ds.spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
    for (k, v) in monitor.spec["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(labels.get(k.as_str().unwrap()).map(String::as_str), v.as_str(), "selector {k:?}");
    }
    let endpoint = &monitor.spec["podMetricsEndpoints"][0];
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    let port = endpoint["port"].as_str().unwrap();
    let ports = container(&ds).ports.unwrap_or_default();
    assert!(
        ports
            .iter()
            .any(|p| p.name.as_deref() == Some(port) && p.container_port == i32::from(default_port())),
        "no container port {port} on the status port"
    );
}

/// The PrometheusRule's `spec` as a plain rule file (what Prometheus and
/// promtool read), with or without the alerts' annotations.
fn rule_file(annotations: bool) -> String {
    let rule: serde_yaml::Value =
        serde_yaml::from_str(&read(&deploy().join("monitoring/prometheusrule.yaml"))).unwrap();
    let mut spec = rule["spec"].clone();
    if !annotations {
        for group in spec["groups"].as_sequence_mut().unwrap() {
            for r in group["rules"].as_sequence_mut().unwrap() {
                r.as_mapping_mut().unwrap().remove("annotations");
            }
        }
    }
    serde_yaml::to_string(&spec).unwrap()
}

/// The alerts under Prometheus' own tools: `promtool check rules` on the rule
/// file (expressions, durations, annotation templates), and `promtool test
/// rules` on deploy/monitoring/alerts.test.yaml, where every alert fires, with
/// the labels it fires with, in one case and stays quiet in another.
#[test]
fn monitoring_alerts_pass_promtool_check_and_unit_tests() {
    if dataplane::testing::root::skip_without("promtool") {
        return;
    }
    let dir = tempfile::Builder::new().prefix("pcl-promtool-").tempdir().unwrap();
    std::fs::write(dir.path().join("full.yaml"), rule_file(true)).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rule_file(false)).unwrap();
    let tests = read(&deploy().join("monitoring/alerts.test.yaml"));
    std::fs::write(dir.path().join("alerts.test.yaml"), &tests).unwrap();
    for args in [["check", "rules", "full.yaml"], ["test", "rules", "alerts.test.yaml"]] {
        let out = std::process::Command::new("promtool").args(args).current_dir(dir.path()).output().unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
        assert!(text.contains("SUCCESS"), "promtool {}:\n{text}", args.join(" "));
    }
    // Every alert has a case where it fires and one where it does not.
    let tests: serde_yaml::Value = serde_yaml::from_str(&tests).unwrap();
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for t in tests["tests"].as_sequence().unwrap() {
        for case in t["alert_rule_test"].as_sequence().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_string();
            if case["exp_alerts"].as_sequence().unwrap().is_empty() {
                quiet.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    let rules: serde_yaml::Value = serde_yaml::from_str(&rule_file(false)).unwrap();
    let alerts: BTreeSet<String> = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .map(|r| r["alert"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(fires, alerts, "alerts with a case that fires");
    assert_eq!(quiet, alerts, "alerts with a case that stays quiet");
}
