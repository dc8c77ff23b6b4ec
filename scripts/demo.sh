#!/usr/bin/env bash
# The main job on a built-in example: the Calico "stars" tutorial
# (examples/stars/) on real packets.
#
#   1. installs what is missing (scripts/install-deps.sh) and builds portcullis;
#   2. gives every pod of the tutorial a network namespace with its IP, serving
#      its port (`portcullis lab up`), and starts the daemon as the dataplane:
#      `portcullis run --manifests DIR`, the pods' links as its ports;
#   3. drops the tutorial's policies into DIR one step at a time and, after each
#      step, probes every pod from every pod with real TCP connections and
#      prints the reachability matrix, checking it against the compiler's;
#   4. cleans everything up (also on Ctrl-C or error).
#
# The status endpoint stays up while it runs: http://127.0.0.1:9877/status
# (and /metrics, /readyz). Set DEMO_PAUSE=1 to wait for Enter between steps.
#
# Needs root (network namespaces, AF_XDP). Without it, the same steps are
# shown from the compiler alone (`portcullis matrix`), and the script says so,
# unless PORTCULLIS_REQUIRE_ROOT_TESTS=1 (CI), which makes that an error.
set -euo pipefail
cd "$(dirname "$0")/.."
E=examples/stars
STATUS=${DEMO_STATUS_ADDRESS:-127.0.0.1:9877}
STEPS=(
  "01-default-deny.yaml|default-deny in stars and client: nothing reaches them"
  "02-allow-ui.yaml|allow-ui: the management UI reaches every pod; the pods still cannot reach each other"
  "03-backend-policy.yaml|backend-policy: frontend -> backend on TCP 6379"
  "04-frontend-policy.yaml|frontend-policy: client -> frontend on TCP 80"
)

scripts/install-deps.sh
ulimit -l unlimited 2>/dev/null || true   # AF_XDP UMEMs are locked memory (see test.sh)
# Real packets need root and network namespaces. Without them the demo falls back to the
# compiler alone, unless PORTCULLIS_REQUIRE_ROOT_TESTS=1 (CI): then it fails, here, before
# building (the same rule as the root-only tests).
check=0
scripts/root-check.sh "the demo on real packets" || check=$?
# 2 is root-check's "skip"; any other failure (1, a missing script, a signal) fails.
case $check in 0|2) ;; *) exit 1 ;; esac
cargo build --release -q -p control
# Cargo's output directory (CARGO_TARGET_DIR when set, relative to here if relative).
T="${CARGO_TARGET_DIR:-target}"
case "$T" in /*) ;; *) T="$PWD/$T" ;; esac
P="$T/release/portcullis"

pause() { if [ "${DEMO_PAUSE:-0}" = 1 ] && [ -t 0 ]; then read -r -p "Enter for the next step... " _; fi; }

if [ "$check" -ne 0 ]; then
  echo "Showing the steps from the compiler only."
  state=(-s "$E/00-cluster.yaml")
  echo; echo "== Step 0: no policies"; "$P" matrix "${state[@]}"
  for s in "${STEPS[@]}"; do
    state+=(-s "$E/${s%%|*}")
    echo; echo "== ${s%%|*}: ${s#*|}"; "$P" matrix "${state[@]}"
  done
  exit 0
fi

WORK=$(mktemp -d /tmp/portcullis-demo.XXXXXX)
# A fixed lab directory: it records the daemon and servers a run started, so the
# next run can stop what a killed run left behind. Under /run, which only root
# writes (a directory in /tmp could be another user's, with symlinks in it).
LAB=(--lab-dir /run/portcullis-demo-lab)
cleanup() {
  "$P" lab down "${LAB[@]}" --prefix pcldemo >/dev/null 2>&1 || true
  rm -rf "$WORK" /run/portcullis-demo-lab
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# A demo killed before its trap ran (a timeout's SIGKILL) left its daemon and namespaces behind.
"$P" lab down "${LAB[@]}" --prefix pcldemo >/dev/null 2>&1 || true
mkdir -p "$WORK/policies"
cp "$E/00-cluster.yaml" "$WORK/policies/"

status_field() { # status_field EXPR: evaluates EXPR on the /status JSON (python)
  python3 - "$STATUS" "$1" <<'PY'
import json, sys, urllib.request
s = json.load(urllib.request.urlopen(f"http://{sys.argv[1]}/status", timeout=2))
print(eval(sys.argv[2], {"s": s, "json": json}))
PY
}

wait_enforced() { # waits until a table newer than $1, with every policy in the
  # directory, is used by every worker (a newer table alone could be a recompile
  # of the previous state, published just before the new file was read)
  local want
  want=$(cat "$WORK"/policies/*.yaml | grep -c '^kind: NetworkPolicy' || true)
  for _ in $(seq 100); do
    read -r g p e < <(status_field '"%d %d %d" % (s["table_generation"], s["table"]["policies"], s["dataplane"]["pipeline"]["table_generation"])')
    if [ "$g" -gt "$1" ] && [ "$p" -eq "$want" ] && [ "$e" -ge "$g" ]; then echo "$g"; return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for the daemon to enforce the new policy" >&2
  return 1
}

check_step() { # probes on real packets and compares with the compiler's matrix
  "$P" lab probe "${LAB[@]}" --output json > "$WORK/probe.json"
  "$P" lab probe "${LAB[@]}"
  local state=()
  for f in "$WORK"/policies/*.yaml; do state+=(-s "$f"); done
  "$P" matrix "${state[@]}" --output json > "$WORK/matrix.json"
  python3 - "$WORK/probe.json" "$WORK/matrix.json" <<'PY'
import json, sys
probe, matrix = (json.load(open(f)) for f in sys.argv[1:3])
def cells(m):
    m = m[0] if isinstance(m, list) else m
    pods = m["pods"]
    rows = m.get("allowed") or m.get("connected")
    return {(a, b): rows[i][j] for i, a in enumerate(pods) for j, b in enumerate(pods) if a != b}
p, c = cells(probe), cells(matrix)
# The tutorial's four pods, every ordered pair on both sides: empty matrices would "agree".
if len(c) != 12 or set(p) != set(c):
    print(f"MISMATCH: the compiler gives {len(c)} pairs, the probe {len(p)}; both must be the 12 of the 4 pods")
    sys.exit(1)
diff = [k for k in c if p.get(k) != c[k]]
if diff:
    print("MISMATCH between real packets and the compiler:", diff)
    sys.exit(1)
print(f"real packets agree with the compiler's matrix ({len(c)} pairs)")
PY
}

echo "== Setting up the stars pods in network namespaces, the daemon as their dataplane"
"$P" lab up "${LAB[@]}" --prefix pcldemo -f "$E/00-cluster.yaml" \
  --run-manifests "$WORK/policies" --status-address "$STATUS"
echo
echo "Status endpoint: http://$STATUS/status   metrics: http://$STATUS/metrics"
gen=$(status_field 's["table_generation"]')

echo
echo "== Step 0: no policies: every pod reaches every pod on its port"
check_step
pause
for s in "${STEPS[@]}"; do
  file=${s%%|*}
  echo
  echo "== ${file%.yaml}: ${s#*|}"
  cp "$E/$file" "$WORK/policies/"
  gen=$(wait_enforced "$gen")
  echo "(table generation $gen enforced by every worker)"
  check_step
  pause
done
echo
echo "Why is client -> backend denied?"
"$P" explain -s "$WORK/policies" --from client/client --to stars/backend --port 6379
echo
echo "Dataplane counters:"
status_field 'json.dumps({k: s["dataplane"]["pipeline"][k] for k in ("frames_in", "forwarded", "flooded", "dropped", "drops")})'
