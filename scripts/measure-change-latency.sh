#!/usr/bin/env bash
# Policy-change-to-enforced latency of `portcullis run --manifests`, at several
# cluster sizes. For each policy count N: a manifest directory holds the stars
# cluster (whose pods are real lab namespaces) plus a generated cluster of
# PODS pods and N policies (the compiler benchmarks' generator); the daemon
# runs with the lab's pod links as dataplane ports; then CHANGES single-policy
# edits are made one at a time (each waits until every worker uses the new
# table), alternating between a small namespace and a generated one of 100
# pods (the policy moves between them, so each edit patches both), and the
# daemon's own figures are read from /status: change seen ->
# table published, change seen -> every worker uses it (median, p99, max),
# and the compile time of the last table.
#
# KIND=pod makes each change a pod instead: one pod in the generated
# namespace, with the labels of a pod already there (a new replica), whose
# address alternates between two free ones (the first change adds it).
# KIND=rollout: the same pod, but each change gives it a label set new to
# its namespace (the pod's labels plus `rollout: rN`, as a new ReplicaSet's
# pod-template-hash does): a new identity each time.
# KIND=namespace: each change is a new namespace (with the labels of the
# generated namespace, so other namespaces' policies see its pods) and one pod
# in it, in one file that replaces the previous change's namespace and pod:
# namespace churn, as CI systems make it. Each new namespace's pod is a new
# identity block.
#
#   scripts/measure-change-latency.sh                 # N = 1000 and 10000, 10000 pods
#   POLICIES="10 1000" PODS=2000 CHANGES=20 scripts/measure-change-latency.sh
#   KIND=pod scripts/measure-change-latency.sh
#   KIND=rollout scripts/measure-change-latency.sh
#   KIND=namespace scripts/measure-change-latency.sh
#
# Needs root for the dataplane; without it the daemon runs without ports and
# only change -> published is measured. The manifest source watches the
# directory (inotify), so a file write reaches the daemon when the writer
# closes the file; the figures start when the daemon reads the changed file
# (as for a Kubernetes watch event, when it arrives), and include parsing,
# validating and diffing it.
set -euo pipefail
cd "$(dirname "$0")/.."

POLICIES="${POLICIES:-1000 10000}"
PODS="${PODS:-10000}"
CHANGES="${CHANGES:-100}"
KIND="${KIND:-policy}"
PORT="${PORT:-19879}"

cargo build --release -q -p control --bin portcullis
cargo build --release -q -p portcullis-benches --example gen_manifests
# Cargo's output directory (CARGO_TARGET_DIR when set, relative to here if relative).
T="${CARGO_TARGET_DIR:-target}"
case "$T" in /*) ;; *) T="$PWD/$T" ;; esac
P="$T/release/portcullis"
GEN="$T/release/examples/gen_manifests"
ROOT=0
[ "$(id -u)" = 0 ] && ROOT=1

work=""
daemon=""
# A fixed lab directory (root-only, under /run): a run killed before its trap ran
# left a daemon and namespaces that the next run's `lab down` stops.
LABDIR=/run/portcullis-latency-lab
cleanup() {
    if [ -n "$work" ]; then
        if [ "$ROOT" = 1 ]; then "$P" lab down --lab-dir "$LABDIR" --prefix pclat >/dev/null 2>&1 || true; fi
        [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
        rm -rf "$work" "$LABDIR"
    fi
    work=""
    daemon=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ "$ROOT" = 1 ]; then "$P" lab down --lab-dir "$LABDIR" --prefix pclat >/dev/null 2>&1 || true; fi

echo "changes: $KIND"
printf '%-9s %-7s %-11s %-26s %-26s\n' policies pods compile_ms "change->published ms" "change->enforced ms"
printf '%-9s %-7s %-11s %-26s %-26s\n' "" "" "" "(median / p99 / max)" "(median / p99 / max)"
for n in $POLICIES; do
    work="$(mktemp -d /tmp/pcl-latency.XXXXXX)"
    mkdir -p "$work/policies"
    cp examples/stars/00-cluster.yaml "$work/policies/"
    "$GEN" "$PODS" "$n" "$work/policies/generated.json" 2>/dev/null
    if [ "$ROOT" = 1 ]; then
        "$P" lab up -f examples/stars/00-cluster.yaml --lab-dir "$LABDIR" --prefix pclat \
            --run-manifests "$work/policies" --status-address "127.0.0.1:$PORT" >/dev/null
    else
        printf 'status_address: "127.0.0.1:%s"\n' "$PORT" >"$work/config.yaml"
        "$P" run --manifests "$work/policies" --config "$work/config.yaml" 2>"$work/daemon.log" &
        daemon=$!
    fi
    python3 - "$PORT" "$work/policies/change.yaml" "$CHANGES" "$n" "$PODS" "$ROOT" "$KIND" <<'EOF'
import json, os, sys, time, urllib.request
port, path, changes, n, pods, root = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6] == "1"
kind = sys.argv[7]

def status():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            return json.load(r)
    except OSError:
        return None

def wait(pred, what, secs=120):
    end = time.time() + secs
    while time.time() < end:
        s = status()
        if s is not None and pred(s):
            return s
        time.sleep(0.02)
    sys.exit(f"timed out waiting for {what}")

def enforced(s, g):
    if not root:
        return True
    return (s.get("dataplane") or {}).get("pipeline", {}).get("table_generation", 0) >= g

s = wait(lambda s: s["ready"] and enforced(s, s["table_generation"]), "the first table", 300)
# Changes alternate between the small stars namespace (whose pods are real lab
# namespaces) and the first generated namespace with pods (100 pods and about
# N/100 policies at 10,000 pods): the patch rebuilds the changed namespace's sides.
gen = json.load(open(os.path.join(os.path.dirname(path), "generated.json")))
pod = next(o for o in gen["items"] if o["kind"] == "Pod" and o["metadata"]["namespace"] != "kube-system")
targets = [("stars", "role: frontend"), (pod["metadata"]["namespace"], f'app: {pod["metadata"]["labels"]["app"]}')]
for i in range(changes):
    g = s["table_generation"]
    ns, selector = targets[i % 2]
    if kind in ("pod", "rollout", "namespace"):
        ns, labels = pod["metadata"]["namespace"], dict(pod["metadata"]["labels"])
        if kind == "rollout":
            labels["rollout"] = f"r{i}"
        labels = json.dumps(labels)
    prefix = ""
    if kind == "namespace":
        like = next(o for o in gen["items"] if o["kind"] == "Namespace" and o["metadata"]["name"] == ns)
        ns_labels = {k: v for k, v in like["metadata"].get("labels", {}).items() if k != "kubernetes.io/metadata.name"}
        ns = f"latency-ns-{i}"
        prefix = f"""apiVersion: v1
kind: Namespace
metadata: {{name: {ns}, labels: {json.dumps(ns_labels)}}}
---
"""
    doc = prefix + f"""apiVersion: v1
kind: Pod
metadata: {{name: latency-probe, namespace: {ns}, labels: {labels}}}
status: {{podIP: 100.100.0.{1 + i % 2}}}
""" if kind in ("pod", "rollout", "namespace") else f"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: latency-probe, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{{selector}}}}}
  ingress:
  - from: [{{podSelector: {{matchLabels: {{role: client-{i}}}}}}}]
    ports: [{{protocol: TCP, port: 80}}]
"""
    with open(path + ".tmp", "w") as f:
        f.write(doc)
    os.replace(path + ".tmp", path)
    s = wait(lambda s: s["table_generation"] > g and enforced(s, g + 1), f"change {i}")
    time.sleep(0.05)
s = status()
lat = s["latency"]
def fmt(r):
    if not r["samples"]:
        return "-"
    return f'{r["median_ms"]:.1f} / {r["p99_ms"]:.1f} / {r["max_ms"]:.1f}'
print(f'{n:<9} {pods:<7} {s["compile_ms"]:<11.1f} {fmt(lat["change_to_publish"]):<26} '
      f'{fmt(lat["change_to_enforced"]) if root else "(not root)":<26}')
EOF
    [ -n "${KEEP_LOG:-}" ] && cp "$LABDIR/dataplane.log" "$KEEP_LOG.$n" 2>/dev/null; cleanup
done
