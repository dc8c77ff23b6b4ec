#!/usr/bin/env bash
# Runs every test of the project. Installs what the build and the tests need
# first (Debian packages, kernel settings): see scripts/install-deps.sh.
# Tests that need root (network namespaces, AF_XDP) run when root and say
# clearly when they skip for a missing capability; with
# PORTCULLIS_REQUIRE_ROOT_TESTS=1 (as .ci/run sets) a missing capability is a
# failure instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# AF_XDP UMEMs are locked memory: raise this shell's limit, which the tests inherit
# (root with CAP_IPC_LOCK needs none; install-deps.sh warns when neither works).
ulimit -l unlimited 2>/dev/null || true
cargo test --locked --workspace --all-targets "$@"
cargo test --locked --workspace --doc
# Real packets under load (root): Portcullis, the no-enforcement ceiling and the kernel's
# nftables shapes with N = 100 policies, paced so that every allowed frame must arrive and
# no denied one may (the full side-by-side measurement is the same script without --quick).
benches/e2e/side-by-side.sh --quick
# The same for TCP over IPv6: mid-stream ACK segments of a denied flow must not pass either.
FAMILY=6 PROTO=tcp benches/e2e/side-by-side.sh --quick
