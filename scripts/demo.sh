#!/usr/bin/env bash
# The main job on a built-in example: the Calico "stars" tutorial
# (examples/stars/), policies applied step by step, the reachability matrix
# printed after each step.
#
# Today this runs the compiler's matrix (`portcullis matrix`). When the
# dataplane lab is available it is also proven on real packets.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install the Rust toolchain first" >&2
  exit 1
fi
cargo build --release -q -p control
P=target/release/portcullis
E=examples/stars
state=("-s" "$E/00-cluster.yaml")
step() {
  echo
  echo "== $1"
  "$P" matrix "${state[@]}"
}
step "Step 0: no policies: every pod reaches every pod on its port"
state+=("-s" "$E/01-default-deny.yaml")
step "Step 1: default-deny in stars and client: nothing reaches them"
state+=("-s" "$E/02-allow-ui.yaml")
step "Step 2: allow-ui: the management UI reaches every pod, the pods still cannot reach each other"
state+=("-s" "$E/03-backend-policy.yaml")
step "Step 3: backend-policy: frontend -> backend on TCP 6379"
state+=("-s" "$E/04-frontend-policy.yaml")
step "Step 4: frontend-policy: client -> frontend on TCP 80"
echo
echo "Why is client -> backend denied?"
"$P" explain "${state[@]}" --from client/client --to stars/backend --port 6379
